"""Production path: PostgreSQL, the Redis broker and a real ``dramatiq`` worker process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from helpers import loyalcast_process as loyalcast
from helpers import subprocess_env


@pytest.fixture
def production_settings(write_settings, pg_url: str, redis_url: str) -> Path:
    return write_settings(
        {
            "database": {"url": pg_url},
            "broker": {"url": redis_url},
            "delivery": {"batch_size": 50},
            "quiet_hours": {"default": "off", "telegram": "off"},  # this test is about the worker path
        }
    )


@pytest.fixture
def worker_process(production_settings: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "--processes", "1", "--threads", "4", "workers"],
        cwd=REPO,
        env=subprocess_env(production_settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_campaign_through_redis_and_a_worker_process(production_settings: Path, worker_process) -> None:
    # Given a PostgreSQL database with demo members and a dramatiq worker on Redis
    loyalcast(production_settings, "db", "upgrade")
    loyalcast(production_settings, "demo", "seed", "--members", "300")

    # When the campaign runs with --wait
    done = loyalcast(production_settings, "run", "balance_reminder", "--wait", "--json")
    report = json.loads(done.stdout[done.stdout.index("{") :])

    # Then the worker process delivered every queued message
    assert worker_process.poll() is None
    assert "queued" not in report["counts"] and "sending" not in report["counts"]
    sent = report["counts"]["sent"]
    assert len(sent) >= 2
    outbox = production_settings.parent / "outbox"
    assert len([p for p in outbox.rglob("*") if p.is_file()]) == sum(sent.values())

    # When the same occasion is run again, nothing new is decided or sent
    again = loyalcast(production_settings, "run", "balance_reminder", "--wait", "--json")
    assert json.loads(again.stdout[again.stdout.index("{") :])["counts"] == report["counts"]
    assert len([p for p in outbox.rglob("*") if p.is_file()]) == sum(sent.values())
