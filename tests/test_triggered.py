"""Triggered messages: idempotency, clear failures, enqueueing from another service,
and a separate queue that keeps them fast while a campaign is being delivered."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from helpers import add_member, add_members, cli, subprocess_env
from sqlalchemy import func, select

from campaigns.app import runtime
from campaigns.store import schema
from campaigns.store.engine import make_engine
from campaigns.store.models import deliveries

NO_QUIET = {"quiet_hours": {"default": "off", "telegram": "off"}}


def drain(application) -> None:
    from campaigns.app import actors

    runtime.drain_in_process(actors.broker, threads=2)


def send(application, *args, **kwargs) -> None:
    from campaigns.app import actors

    actors.use_broker(runtime.build_broker(application.settings))
    actors.send_triggered.send(*args, **kwargs)
    drain(application)


def rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(deliveries).order_by(deliveries.c.id)).all()


def test_failures_are_recorded_not_crashed(configured) -> None:
    application = configured(NO_QUIET)
    add_member(application.engine, 1, email="a@example.com", email_consent=True)
    # When a developer sends to an unknown member, an unknown template, with data the
    # template cannot render, and with data that is not an object
    send(application, 404, "points_credited", {"points": 5}, "k-unknown-member")
    send(application, 1, "no_such_template", {}, "k-unknown-template")
    send(application, 1, "points_credited", {"pts": 5}, "k-missing-variable")
    send(application, 1, "points_credited", [1, 2], "k-not-an-object")
    # Then each ends as a failed ledger row with the reason; the worker kept going
    reasons = {row.idempotency_key: (row.status, row.reason) for row in rows(application.engine)}
    assert reasons["k-unknown-member"] == ("failed", "unknown member 404")
    assert reasons["k-unknown-template"][0] == "failed"
    assert reasons["k-unknown-template"][1].startswith("unknown template 'no_such_template'")
    assert reasons["k-missing-variable"][0] == "failed"
    assert "points_credited/ru/email.subject:1: undefined variable" in reasons["k-missing-variable"][1]
    assert "points" in reasons["k-missing-variable"][1]
    assert reasons["k-not-an-object"] == ("failed", "data must be a JSON object, got list")


def test_same_key_sends_once_and_service_is_exempt_from_marketing_caps(configured) -> None:
    application = configured(NO_QUIET)
    add_member(application.engine, 1, email="a@example.com", email_consent=True)
    for _ in range(2):
        send(application, 1, "points_credited", {"points": 250}, "order-1")
    send(application, 1, "points_credited", {"points": 100}, "order-2")  # service: no cap
    send(application, 1, "tier_upgraded", {"tier_name": "Gold"}, "tier-1", "marketing")
    send(application, 1, "tier_upgraded", {"tier_name": "Gold"}, "tier-2", "marketing")  # capped: 1 per 14d
    found = [(row.idempotency_key, row.status, row.channel) for row in rows(application.engine)]
    assert found == [
        ("order-1", "sent", "email"),
        (None, "duplicate", None),
        ("order-2", "sent", "email"),
        ("tier-1", "sent", "email"),
        ("tier-2", "capped", "email"),
    ]
    outbox = application.settings.outbox_path / "email"
    assert len(list(outbox.iterdir())) == 3
    text = (outbox / f"{rows(application.engine)[0].id}.eml").read_bytes()
    assert b"250" in text


def test_cli_validates_before_enqueueing(configured) -> None:
    from typer.testing import CliRunner

    from campaigns.app.cli import app as cli_app

    application = configured(NO_QUIET)
    config = runtime.config_file()
    add_member(application.engine, 1, email="a@example.com", email_consent=True)
    for args, message in (
        (["1", "points_credited", "--data", '{"pts": 1}', "--key", "a"], "the data does not fit the template"),
        (["1", "points_credited", "--data", "{oops", "--key", "b"], "not JSON"),
        (["9", "points_credited", "--key", "c"], "no member 9"),
        (["1", "nothing", "--key", "d"], "unknown template 'nothing'"),
    ):
        result = CliRunner().invoke(cli_app, ["--config", str(config), "send", *args])
        assert result.exit_code != 0
        assert message in (result.output + str(result.exception)), (args, result.output, result.exception)
    assert rows(application.engine) == []  # nothing was enqueued
    result = cli(config, "send", "1", "points_credited", "--data", '{"points": 7}', "--key", "ok")
    assert "member 1: sent on email" in result.stdout


# --- through Redis and a real worker process ---------------------------------------------


@pytest.fixture
def redis_config(write_settings, pg_url: str, redis_url: str) -> Path:
    config = write_settings({"database": {"url": pg_url}, "broker": {"url": redis_url}, **NO_QUIET})
    schema.upgrade(make_engine(pg_url))
    return config


@pytest.fixture
def start_worker(redis_config: Path) -> Iterator:
    started = []

    def start(threads: int = 4) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "--processes", "1", "--threads", str(threads), "workers"],
            cwd=REPO,
            env=subprocess_env(redis_config),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


ENQUEUE_FROM_ANOTHER_SERVICE = """
import sys
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=sys.argv[1])
broker.declare_queue("triggered")
for _ in range(3):
    broker.enqueue(dramatiq.Message(
        queue_name="triggered", actor_name="send_triggered",
        args=(1, "points_credited", {"points": 250, "reason": "order A-1"}, "order-A-1"),
        kwargs={}, options={},
    ))
assert not any(name.split(".")[0] in ("campaigns", "channels", "workers") for name in sys.modules)
"""


def test_another_service_enqueues_three_times_concurrently_and_one_is_sent(redis_config, redis_url, pg_url, start_worker) -> None:
    # Given a member and a worker with several threads
    engine = make_engine(pg_url)
    add_member(engine, 1, email="a@example.com", email_consent=True)
    # When a process that imports nothing of loyalcast enqueues the same key three times
    done = subprocess.run(
        [sys.executable, "-c", ENQUEUE_FROM_ANOTHER_SERVICE, redis_url], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    start_worker(threads=4)
    wait_for(lambda: len(rows(engine)) == 3, what="three ledger rows")
    # Then one message was sent and the other two are recorded as duplicates
    found = sorted((row.status, row.channel) for row in rows(engine))
    wait_for(lambda: sorted(r.status for r in rows(engine)) == ["duplicate", "duplicate", "sent"], what="sent")
    assert sorted(r.status for r in rows(engine)) == ["duplicate", "duplicate", "sent"], found
    assert len(list((redis_config.parent / "outbox" / "email").iterdir())) == 1
    engine.dispose()


def test_a_triggered_message_overtakes_a_queued_campaign(redis_config, pg_url, start_worker) -> None:
    # Given 20,000 members and their campaign planned and queued on Redis
    engine = make_engine(pg_url)
    add_members(engine, [{"id": i, "telegram_chat_id": i, "telegram_consent": True} for i in range(1, 20_001)])
    cli(redis_config, "run", "balance_reminder", "--now", "2026-11-23T12:00+03:00")
    runtime.reset()
    worker = start_worker(threads=2)
    # ... with the worker busy delivering it
    sent = lambda: select(func.count()).where(deliveries.c.status == "sent")  # noqa: E731
    with engine.connect() as conn:
        wait_for(lambda: conn.execute(sent()).scalar_one() >= 1000, what="the campaign to be under way")
    # When a triggered message is sent afterwards
    cli(redis_config, "send", "7", "points_credited", "--data", '{"points": 5}', "--key", "late-but-urgent")
    runtime.reset()
    wait_for(
        lambda: len([r for r in rows(engine) if r.status not in ("queued", "sending")]) == 20_001,
        timeout=300,
        what="everything delivered",
    )
    assert worker.poll() is None
    # Then it was delivered before the campaign queue drained
    with engine.connect() as conn:
        urgent = conn.execute(select(deliveries.c.sent_at).where(deliveries.c.idempotency_key == "late-but-urgent")).scalar_one()
        last_campaign = conn.execute(select(func.max(deliveries.c.sent_at)).where(deliveries.c.run_id.is_not(None))).scalar_one()
        after = conn.execute(
            select(func.count()).where(deliveries.c.run_id.is_not(None), deliveries.c.sent_at > urgent)
        ).scalar_one()
    assert urgent < last_campaign
    assert after > 1000, after  # many campaign messages were still waiting behind it
    engine.dispose()


def test_consent_is_marketing_consent(configured) -> None:
    # Given a member with an email address who gave no marketing consent
    application = configured(NO_QUIET)
    add_member(application.engine, 1, email="a@example.com", email_consent=False)
    # When a service message and a marketing one are sent to them
    send(application, 1, "points_credited", {"points": 5, "order_number": "A-1"}, "k-service")
    send(application, 1, "points_credited", {"points": 5, "order_number": "A-1"}, "k-marketing", category="marketing")
    # Then the service message goes out (it needs only the address), the marketing one does not
    statuses = {row.idempotency_key: row.status for row in rows(application.engine)}
    assert statuses == {"k-service": "sent", "k-marketing": "no_consent"}
