"""Nothing lost: real processes killed, Redis flushed and stopped, and the ledger still
brings every message to an outcome, once.

Each test runs real ``loyalcast worker`` and ``loyalcast scheduler`` processes (the
scheduler runs the reconciler) against PostgreSQL and Redis, with fake providers in this
process that record every message they accept. No manual command follows a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from conftest import REPO, require_server, shipped_settings
from helpers import add_members, fake_channels, fake_providers, members_a_third_per_channel, subprocess_env
from helpers import loyalcast_process as loyalcast
from sqlalchemy import create_engine, func, select

from campaigns.store import schema
from campaigns.store.engine import make_engine
from campaigns.store.models import campaign_runs, deliveries
from channels.fakes import Faults

MEMBERS = 1_500
PROCESSES, THREADS = 2, 4
SENDING_THREADS = PROCESSES * THREADS
SETTLE_BOUND_S = 120
"""Everything terminal within this long of the workers restarting (the issue's bound)."""


# --- processes ---------------------------------------------------------------------------


class Processes:
    """Child processes of a test, each in its own session so that kill -9 takes a
    dramatiq master with its children; all stopped at the end."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, "-m", "campaigns.app.cli", "--config", str(self.config), *args],
            cwd=REPO,
            env=subprocess_env(self.config),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def kill9(self, name: str) -> None:
        process = self.running.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)  # the master passes it on to its children
        for process in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.running.clear()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def providers() -> Iterator[dict[str, Any]]:
    # Slow enough (10 ms an answer) that a campaign is still sending when it is hit.
    yield from fake_providers(Faults(slow_seconds=0.01, seed=5))


def accepted(providers: dict[str, Any]) -> Counter[tuple[str, str]]:
    """``(channel, address)`` of every message the fakes accepted, with how many times."""
    found: Counter[tuple[str, str]] = Counter()
    for _sender, recipients in list(providers["smtp"].envelopes):
        for address in recipients:
            found["email", address] += 1
    for message in list(providers["sms"].messages):
        found["sms", str(message["to"])] += 1
    for message in list(providers["telegram"].messages):
        found["telegram", str(message["chat_id"])] += 1
    return found


@pytest.fixture
def lossy(write_settings, pg_url: str, providers, monkeypatch, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Settings on PostgreSQL and a Redis broker, real transports to the fakes, short
    leases and a fast reconciler; members seeded. Returns the pieces a test needs."""
    monkeypatch.setenv("LC_TG_TOKEN", "123:fake")
    started: list[Processes] = []

    def make(broker_url: str, schedule: str | None = None, delivery: dict[str, Any] | None = None) -> dict[str, Any]:
        # One campaign, scheduled only when the test says so (the shipped ones would be caught up).
        campaign = {
            k: v for k, v in shipped_settings()["campaigns"]["balance_reminder"].items() if k not in ("schedule", "holdout")
        }
        if schedule:
            campaign["schedule"] = schedule
        config = write_settings(
            {
                "campaigns": {"balance_reminder": campaign},
                "database": {"url": pg_url},
                "broker": {"url": broker_url},
                "channels": fake_channels(providers, email={"timeout": "2s"}, sms={"timeout": "2s"}, telegram={"timeout": "2s"}),
                "quiet_hours": {"default": "off", "telegram": "off"},
                "delivery": {"batch_size": 100, "lease": "5s", "batch_time_limit": "60s", **(delivery or {})},
                "reconciler": {"interval": "1s", "overdue": "3s"},
                "scheduler": {"tick": "1s"},
            },
            drop=("campaigns",),
        )
        engine = make_engine(pg_url)
        schema.upgrade(engine)
        add_members(engine, members_a_third_per_channel(MEMBERS))
        processes = Processes(config, tmp_path)
        started.append(processes)
        return {"config": config, "engine": engine, "processes": processes, "providers": providers}

    yield make
    for processes in started:
        processes.stop_all()


def counts(engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(deliveries.c.status, func.count()).group_by(deliveries.c.status)).all()))


def terminal(engine) -> bool:
    found = counts(engine)
    return sum(found.values()) > 0 and found["queued"] == 0 and found["sending"] == 0


def assert_nothing_lost(engine, providers: dict[str, Any], *, max_unknown: int) -> Counter[str]:
    """0 duplicates, 0 rows on their way, every row that never reached a fake sent, and
    at most ``max_unknown`` rows unknown; returns the counts per status."""
    got = accepted(providers)
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.channel, deliveries.c.address, deliveries.c.status)).all()
    duplicates = {key: n for key, n in got.items() if n > 1}
    assert duplicates == {}, f"{len(duplicates)} messages accepted more than once"
    by_status = Counter(row.status for row in rows)
    assert by_status["queued"] == 0 and by_status["sending"] == 0, by_status
    for row in rows:
        reached = got[row.channel, row.address] == 1
        if row.status == "sent":
            assert reached, f"{row.channel} {row.address} is sent but no provider has it"
        elif row.status == "unknown":
            pass  # may or may not have reached the provider: that is what unknown says
        else:
            assert not reached, f"{row.channel} {row.address} reached a provider but is {row.status}"
    assert by_status["unknown"] <= max_unknown, by_status
    assert by_status["failed"] == 0, by_status
    return by_status


def run_once(pieces: dict[str, Any], *extra: str) -> None:
    loyalcast(pieces["config"], "run", "balance_reminder", "--now", "2026-11-23T12:00+03:00", *extra)


# --- kill -9 ------------------------------------------------------------------------------


@pytest.mark.parametrize("kill_at", [0.05, 0.5])
def test_kill_9_of_every_worker_loses_nothing(lossy, redis_url: str, kill_at: float) -> None:
    # Given workers, a scheduler (with its reconciler) and a campaign being delivered
    pieces = lossy(redis_url)
    engine, processes = pieces["engine"], pieces["processes"]
    processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    processes.start("scheduler", "scheduler")
    run_once(pieces)
    total = MEMBERS
    wait_for(lambda: counts(engine)["sent"] >= kill_at * total, 120, f"{kill_at:.0%} sent")

    # When every worker process, master and children, is killed with SIGKILL
    processes.kill9("worker")
    stranded = counts(engine)
    time.sleep(1)
    # And the workers are started again, with no other command
    processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    settled = wait_for(lambda: terminal(engine), SETTLE_BOUND_S, "every row terminal after the restart")

    # Then every row has its outcome: none twice, none lost, unknown at most one per thread
    final = assert_nothing_lost(engine, pieces["providers"], max_unknown=SENDING_THREADS)
    assert final["sent"] + final["unknown"] == MEMBERS
    print(
        f"\nkill -9 at {kill_at:.0%}: at the kill {dict(stranded)}; settled {settled:.1f} s after the restart; "
        f"final {dict(final)}"
    )


def test_sigterm_finishes_the_calls_in_flight_and_hands_back_the_rest(lossy, redis_url: str) -> None:
    # Given workers delivering a campaign
    pieces = lossy(redis_url)
    engine, processes = pieces["engine"], pieces["processes"]
    worker = processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    processes.start("scheduler", "scheduler")
    run_once(pieces)
    wait_for(lambda: counts(engine)["sent"] >= 0.3 * MEMBERS, 120, "30% sent")

    # When the workers' master gets SIGTERM (a deploy, systemctl stop with KillMode=mixed;
    # Dramatiq kills a worker process that gets a second SIGTERM, so not the whole group)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    stop_seconds = time.monotonic() - started
    processes.running.pop("worker")

    # Then they stop within the stop timeout (slowest channel timeout 2 s + 15 s), with
    # no call left in flight
    assert stop_seconds < 17, stop_seconds
    at_stop = counts(engine)
    assert at_stop["sending"] == 0, at_stop

    # And once workers run again, every row is sent once and none is unknown
    processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    settled = wait_for(lambda: terminal(engine), SETTLE_BOUND_S, "every row terminal")
    final = assert_nothing_lost(engine, pieces["providers"], max_unknown=0)
    assert final["sent"] == MEMBERS
    print(f"\nSIGTERM at 30%: stopped in {stop_seconds:.1f} s, {dict(at_stop)}; settled {settled:.1f} s after the restart")


# --- batches longer than their time limit ---------------------------------------------------


def test_a_batch_longer_than_its_time_limit_hands_back_the_rest(lossy, redis_url: str) -> None:
    # Given batches of 500 that take about 15 s each (30 ms an answer) and a 10 s limit
    pieces = lossy(redis_url, delivery={"batch_size": 500, "batch_time_limit": "10s"})
    pieces["providers"]["faults"].slow_seconds = 0.03
    engine, processes = pieces["engine"], pieces["processes"]
    processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    processes.start("scheduler", "scheduler")

    # When the campaign runs
    run_once(pieces)
    settled = wait_for(lambda: terminal(engine), SETTLE_BOUND_S, "every row terminal")

    # Then each batch stopped in time and handed back the rest: every row sent, once,
    # and Dramatiq never had to interrupt a batch
    final = assert_nothing_lost(engine, pieces["providers"], max_unknown=0)
    assert final["sent"] == MEMBERS
    log = processes.log("worker")
    assert "TimeLimitExceeded" not in log and "batch stopped before its time limit" in log
    print(f"\nbatches of 500 over a 10 s limit: settled {settled:.1f} s; {dict(final)}")


# --- Redis flushed --------------------------------------------------------------------------


def test_flushdb_mid_campaign_loses_nothing(lossy, redis_url: str) -> None:
    # Given a campaign being delivered by workers, with the scheduler's reconciler
    pieces = lossy(redis_url)
    engine, processes = pieces["engine"], pieces["processes"]
    processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    processes.start("scheduler", "scheduler")
    run_once(pieces)
    wait_for(lambda: counts(engine)["sent"] >= 0.2 * MEMBERS, 120, "20% sent")

    # When Redis is flushed, every queued message with it
    redis.Redis.from_url(redis_url).flushdb()
    at_flush = counts(engine)
    settled = wait_for(lambda: terminal(engine), SETTLE_BOUND_S, "every row terminal after FLUSHDB")

    # Then every row still reaches its outcome, once
    final = assert_nothing_lost(engine, pieces["providers"], max_unknown=0)
    assert "broker had lost its messages" in processes.log("scheduler")
    print(f"\nFLUSHDB mid-campaign: at the flush {dict(at_flush)}; settled {settled:.1f} s later; final {dict(final)}")


def test_flushdb_before_planning_loses_nothing(lossy, redis_url: str) -> None:
    # Given a run enqueued while no worker runs
    pieces = lossy(redis_url)
    engine, processes = pieces["engine"], pieces["processes"]
    run_once(pieces)
    with engine.connect() as conn:
        assert conn.execute(select(campaign_runs.c.state)).scalar_one() == "planning"

    # When Redis is flushed before any worker took the plan, then workers and scheduler start
    redis.Redis.from_url(redis_url).flushdb()
    processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    processes.start("scheduler", "scheduler")
    settled = wait_for(lambda: terminal(engine), SETTLE_BOUND_S, "the run planned and delivered")

    # Then the run was planned once, and every member reached
    with engine.connect() as conn:
        assert conn.execute(select(campaign_runs.c.state)).scalars().all() == ["planned"]
    final = assert_nothing_lost(engine, pieces["providers"], max_unknown=0)
    assert final["sent"] > 0
    print(f"\nFLUSHDB before planning: settled {settled:.1f} s after the workers started; final {dict(final)}")


# --- Redis down when the scheduler fires, and two schedulers --------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of this test's own on a free port, without persistence."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "redis-server answering")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.exceptions.ConnectionError:
            return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_server("Redis", "127.0.0.1", 6379)  # the binary comes with the server
    server = RedisServer(_free_port(), tmp_path)
    yield server
    server.stop()


def due_now_schedule(zone: str) -> str:
    """A daily cron expression whose latest fire time is this minute, program time."""
    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    return f"{local.minute} {local.hour} * * *"


def test_redis_down_at_fire_time_the_occasion_is_planned_once_it_is_back(lossy, own_redis: RedisServer) -> None:
    # Given a campaign due this minute and a scheduler started while Redis is down
    pieces = lossy(own_redis.url, schedule=due_now_schedule("Europe/Moscow"))
    engine, processes = pieces["engine"], pieces["processes"]
    scheduler = processes.start("scheduler", "scheduler")
    wait_for(lambda: "unavailable" in processes.log("scheduler"), 60, "the scheduler noticing the outage")
    time.sleep(3)
    # Then the scheduler is alive, the occasion claimed but not recorded as planned
    assert scheduler.poll() is None
    with engine.connect() as conn:
        assert conn.execute(select(campaign_runs.c.state)).scalars().all() == ["planning"]

    # When Redis comes back, with workers
    own_redis.start()
    processes.start("worker", "worker", "-p", "1", "-t", str(THREADS))
    settled = wait_for(lambda: terminal(engine), SETTLE_BOUND_S, "the occasion planned and delivered")

    # Then it was planned once and delivered, with one log line for the outage
    with engine.connect() as conn:
        assert conn.execute(select(campaign_runs.c.state)).scalars().all() == ["planned"]
    assert_nothing_lost(engine, pieces["providers"], max_unknown=0)
    log = processes.log("scheduler")
    assert log.count("unavailable") == 1, log
    assert scheduler.poll() is None
    print(f"\nRedis down at fire time: delivered {settled:.1f} s after Redis came back")


def test_two_schedulers_and_their_reconcilers_start_each_occasion_once(lossy, redis_url: str) -> None:
    # Given two schedulers (each with its reconciler) and workers, a campaign due this minute
    pieces = lossy(redis_url, schedule=due_now_schedule("Europe/Moscow"))
    engine, processes = pieces["engine"], pieces["processes"]
    processes.start("worker", "worker", "-p", str(PROCESSES), "-t", str(THREADS))
    processes.start("scheduler-a", "scheduler", "--name", "a")
    processes.start("scheduler-b", "scheduler", "--name", "b")
    wait_for(lambda: counts(engine)["sent"] >= 0.2 * MEMBERS, 120, "20% sent")

    # When Redis is flushed mid-campaign, so that both reconcilers race to re-drive it
    redis.Redis.from_url(redis_url).flushdb()
    settled = wait_for(lambda: terminal(engine), SETTLE_BOUND_S, "every row terminal")

    # Then the occasion started once and no message went out twice
    with engine.connect() as conn:
        runs = conn.execute(select(campaign_runs.c.campaign, campaign_runs.c.started_by)).all()
    assert len(runs) == 1
    final = assert_nothing_lost(engine, pieces["providers"], max_unknown=0)
    print(f"\ntwo schedulers, FLUSHDB: one run (started by {runs[0].started_by}); settled {settled:.1f} s; {dict(final)}")


# --- the embedded default ---------------------------------------------------------------------


def _quiet_window_ending_soon() -> tuple[str, datetime]:
    """A UTC quiet window that holds now and ends 20-80 s from now, and its end."""
    now = datetime.now(UTC)
    end = (now + timedelta(seconds=80)).replace(second=0, microsecond=0)
    if end - now < timedelta(seconds=20):
        end += timedelta(minutes=1)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    return f"{start:%H:%M}-{end:%H:%M}", end


def test_serve_sends_a_quiet_hours_message_when_its_time_comes(write_settings, tmp_path: Path) -> None:
    # Given the embedded default (SQLite, in-memory broker, outbox) with quiet hours that
    # end within a minute or so, and members in UTC
    window, end = _quiet_window_ending_soon()
    config = write_settings(
        {
            "quiet_hours": {"default": window, "telegram": window, "email": window},
            "reconciler": {"interval": "1s"},
            "scheduler": {"tick": "1s"},
        },
        drop=("campaigns",),  # nothing scheduled: this test is about one triggered message
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'loyalcast.db'}")
    schema.upgrade(engine)
    add_members(engine, [{"id": i, "timezone": "UTC", "phone": f"+7916000000{i}", "sms_consent": True} for i in (1, 2)])
    outbox = tmp_path / "outbox" / "sms"

    # When a marketing message is sent inside quiet hours, before serve runs
    started = time.monotonic()
    done = loyalcast(config, "send", "1", "points_credited", "--data", '{"points": 50}', "--key", "k1", "--category", "marketing")
    # Then the command returns at once, the message due when the window ends
    assert time.monotonic() - started < 30
    assert "queued" in done.stdout and "loyalcast serve" in done.stdout

    # When serve runs, and a second message is sent while it does
    processes = Processes(config, tmp_path)
    try:
        serve = processes.start("serve", "serve")
        time.sleep(2)
        loyalcast(config, "send", "2", "points_credited", "--data", '{"points": 70}', "--key", "k2", "--category", "marketing")
        assert not outbox.exists() or not any(outbox.iterdir()), "sent inside quiet hours"

        # Then both go out once the window has ended, and not before
        wait_for(lambda: outbox.exists() and len(list(outbox.iterdir())) == 2, 150, "both messages in the outbox")
        assert datetime.now(UTC) >= end
        assert serve.poll() is None
    finally:
        processes.stop_all()
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.status, deliveries.c.sent_at)).all()
    assert [row.status for row in rows] == ["sent", "sent"]
    assert all(row.sent_at.replace(tzinfo=UTC) >= end for row in rows)
