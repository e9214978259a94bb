"""The reconciler, leases, handing back and the lifecycle a row shows, in one process
on SQLite and on PostgreSQL (the races with real processes are in test_nothing_lost.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import load
from helpers import add_member, cli, ledger
from sqlalchemy import select, update

from campaigns.app import actors, runtime
from campaigns.app.reconciler import Reconciler
from campaigns.errors import ConfigError
from campaigns.planning.planner import plan_run
from campaigns.store.models import campaign_runs, deliveries
from campaigns.store.runs import claim_run

NOW = datetime.now(UTC)
NO_QUIET = {"quiet_hours": {"default": "off", "telegram": "off"}}


def three_members(application) -> None:
    add_member(application.engine, 1, email="one@example.com", email_consent=True)
    add_member(application.engine, 2, phone="+79160000002", sms_consent=True)
    add_member(application.engine, 3, telegram_chat_id=3003, telegram_consent=True)


def planned_run(application) -> int:
    """A run planned an hour ago whose messages never reached the broker."""
    run = claim_run(application.engine, application.settings, "balance_reminder", as_of=NOW - timedelta(hours=1))
    plan_run(application.engine, application.settings, run.id)
    return run.id


def reconcile(application) -> object:
    broker = actors.use_broker(runtime.build_broker(application.settings))
    result = Reconciler(application, broker).run_once()
    runtime.drain_in_process(broker, threads=2)
    return result


def outbox_files(application) -> list[str]:
    return sorted(p.name for p in application.settings.outbox_path.rglob("*") if p.is_file())


def test_queued_rows_no_message_carries_are_sent_once(configured) -> None:
    # Given a planned run whose deliveries are queued and carried by no message
    application = configured(NO_QUIET)
    three_members(application)
    run_id = planned_run(application)
    assert {status for _, status, _ in ledger(application.engine, run_id).values()} == {"queued"}

    # When the reconciler runs
    first = reconcile(application)
    # Then each is sent once
    assert {status for _, status, _ in ledger(application.engine, run_id).values()} == {"sent"}
    assert first.messages >= 1 and run_id in first.redriven_runs
    assert len(outbox_files(application)) == 3

    # And another pass finds nothing to do
    second = reconcile(application)
    assert second.messages == 0 and second.unknown == 0 and len(outbox_files(application)) == 3


def test_an_expired_lease_ends_unknown_and_is_not_resent(configured) -> None:
    # Given a run whose first row was in a provider call when its worker died
    application = configured(NO_QUIET)
    three_members(application)
    run_id = planned_run(application)
    with application.engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.member_id == 1)
            .values(status="sending", lease_owner="host/1/t/dead", lease_until=NOW - timedelta(seconds=1), attempts=1)
        )
    # Then the report warns about it
    report = json.loads(cli(runtime.config_file(), "report", "--run", str(run_id), "--json").stdout)
    assert any("provider call when their worker stopped" in w for w in report["warnings"])

    # When the reconciler runs
    result = reconcile(application)

    # Then that row ends unknown, keeps its cap slot and is not sent; the others are sent
    assert result.unknown == 1
    with application.engine.connect() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.member_id == 1)).one()
    assert (row.status, row.reason_code, row.holds_slot) == ("unknown", "worker_lost", True)
    assert "host/1/t/dead stopped during the provider call" in row.reason
    assert {m: s for m, (_, s, _) in ledger(application.engine, run_id).items()} == {1: "unknown", 2: "sent", 3: "sent"}
    assert not any(name.startswith(f"{row.id}.") for name in outbox_files(application))


def test_a_run_stuck_in_planning_is_planned_again(configured) -> None:
    # Given an occasion claimed a while ago whose plan message was lost (nothing decided)
    application = configured(NO_QUIET)
    three_members(application)
    run = claim_run(application.engine, application.settings, "balance_reminder", as_of=NOW - timedelta(hours=1))
    with application.engine.begin() as conn:
        conn.execute(update(campaign_runs).where(campaign_runs.c.id == run.id).values(started_at=NOW - timedelta(minutes=10)))

    # When the reconciler runs
    result = reconcile(application)

    # Then the run is planned and delivered
    assert result.replanned == [run.id]
    with application.engine.connect() as conn:
        assert conn.execute(select(campaign_runs.c.state).where(campaign_runs.c.id == run.id)).scalar_one() == "planned"
    assert {status for _, status, _ in ledger(application.engine, run.id).values()} == {"sent"}


@pytest.mark.parametrize("how", ["stopping", "deadline"])
def test_a_batch_that_must_stop_hands_back_what_it_has_not_reached(configured, how: str) -> None:
    # Given a planned run's queued rows
    application = configured(NO_QUIET)
    three_members(application)
    run_id = planned_run(application)
    ids = sorted(ledger_ids(application, run_id))

    # When its worker is shutting down, or its time limit is too near for one more call
    if how == "stopping":
        application.stopping.set()
        report = application.deliverer.deliver(ids)
        application.stopping.clear()
    else:
        report = application.deliverer.deliver(ids, deadline=time.monotonic() + 1)

    # Then nothing was claimed or sent, and every row is handed back to be carried again
    assert report.stopped_early and report.handed_back == 3 and [row_ids for _, row_ids in report.later] == [ids]
    assert {status for _, status, _ in ledger(application.engine, run_id).values()} == {"queued"}
    assert outbox_files(application) == []


def ledger_ids(application, run_id: int) -> list[int]:
    with application.engine.connect() as conn:
        return list(conn.execute(select(deliveries.c.id).where(deliveries.c.run_id == run_id)).scalars())


def test_two_deliverers_on_the_same_rows_send_each_once(configured) -> None:
    # Given a planned run and two workers handed the same batch (a duplicated message)
    application = configured(NO_QUIET)
    three_members(application)
    run_id = planned_run(application)
    ids = ledger_ids(application, run_id)
    import threading

    threads = [threading.Thread(target=application.deliverer.deliver, args=(ids,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then each row was sent exactly once
    assert {status for _, status, _ in ledger(application.engine, run_id).values()} == {"sent"}
    assert len(outbox_files(application)) == 3
    with application.engine.connect() as conn:
        assert set(conn.execute(select(deliveries.c.attempts)).scalars()) == {1}


def test_why_shows_a_rows_lifecycle(configured) -> None:
    # Given a row sent on its second attempt after a failed one
    application = configured(NO_QUIET)
    add_member(application.engine, 1, email="one@example.com", email_consent=True)
    run_id = planned_run(application)
    with application.engine.begin() as conn:
        conn.execute(update(deliveries).values(attempts=1, last_error="attempt 1: smtp: 451 try again later"))
    reconcile(application)

    # When the operator asks why
    shown = cli(runtime.config_file(), "why", "1").stdout

    # Then the reason still says why it was sent there, and the attempts are apart
    row = ledger(application.engine, run_id)[1]
    assert row[1] == "sent" and row[2].startswith("eligible on email")
    for part in ("decided", "due", "claimed", "2 provider calls", "last error: attempt 1: smtp: 451", "accepted by the provider"):
        assert part in shown, shown


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"campaigns": {"balance_reminder": {"schedule": "0 11 31 2 *"}}}, "campaigns.balance_reminder.schedule"),
        ({"delivery": {"lease": "15s"}}, "delivery.lease: 15 s is shorter than twice the slowest channel timeout"),
        ({"delivery": {"batch_time_limit": "30s"}}, "delivery.batch_time_limit: must be longer than delivery.lease"),
        ({"delivery": {"min_backoff": "1m", "max_backoff": "30s"}}, "delivery.max_backoff: shorter than delivery.min_backoff"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_their_key(write_settings, changes, message: str) -> None:
    # Given a settings file with one impossible value
    path = write_settings(changes)
    # When it is loaded, Then the error names the key
    with pytest.raises(ConfigError) as error:
        load(path)
    assert message in str(error.value)
    if "schedule" in message:
        assert "never fires" in str(error.value)


def test_the_reconcilers_findings_are_prometheus_metrics(configured) -> None:
    # Given metrics on, and a run with one lost call and rows no message carries
    import socket

    from campaigns import metrics

    application = configured({**NO_QUIET, "metrics": {"enabled": True}})
    three_members(application)
    planned_run(application)
    with application.engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.member_id == 1)
            .values(status="sending", lease_owner="host/1/t/dead", lease_until=NOW - timedelta(seconds=1))
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics.serve_reconciler_metrics("127.0.0.1", port)
    before = _sample(port, "loyalcast_lost_calls_total")

    # When a pass runs
    reconcile(application)

    # Then the exposition shows what it found
    assert _sample(port, "loyalcast_lost_calls_total") == before + 1
    assert _sample(port, "loyalcast_overdue_deliveries") == 2  # the two queued rows, before the pass re-drove them
    assert _sample(port, "loyalcast_stalled_runs") == 0
    metrics.set_enabled(False)


def _sample(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))
