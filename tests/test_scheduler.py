"""The scheduler: each occasion starts once, whatever runs at the same time; catch-up."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import REPO

from campaigns.app import runtime
from campaigns.app.scheduler import Scheduler, occasions
from campaigns.store import schema
from campaigns.store.engine import make_engine

UTC = UTC
EVERY_MINUTE = {"schedule": "* * * * *"}


def only(schedules: dict[str, dict]) -> dict:
    """Campaigns (replacing the shipped ones, write with ``drop=("campaigns",)``) with these schedules."""
    return {
        name: {"segment": "has_balance", "template": "balance_reminder", "channels": ["email", "telegram"], **extra}
        for name, extra in schedules.items()
    }


def test_two_schedulers_start_each_occasion_exactly_once(write_settings, pg_url, redis_url) -> None:
    # Given two campaigns firing every minute and every two minutes, on PostgreSQL and Redis
    config = write_settings(
        {
            "database": {"url": pg_url},
            "broker": {"url": redis_url},
            "campaigns": only({"balance_reminder": EVERY_MINUTE, "win_back": {"schedule": "*/2 * * * *"}}),
        },
        drop=("campaigns",),
    )
    schema.upgrade(make_engine(pg_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALCAST_")}
    # When two scheduler processes replay the same ten minutes at once, ticking every 5 s
    command = [
        sys.executable,
        "-m",
        "campaigns.app.cli",
        "--config",
        str(config),
        "scheduler",
        "--replay-from",
        "2026-11-23T10:00:00+03:00",
        "--replay-until",
        "2026-11-23T10:10:00+03:00",
        "--step",
        "5",
    ]
    racers = [
        subprocess.Popen(
            [*command, "--name", f"s{n}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for n in (1, 2)
    ]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), outputs
    # Then every fire time of each campaign was started exactly once, by one of them
    runs = occasions(make_engine(pg_url))
    balance = [r for r in runs if r["campaign"] == "balance_reminder"]
    win_back = [r for r in runs if r["campaign"] == "win_back"]
    assert [r["occasion"] for r in balance] == [f"2026-11-23T10:{m:02d}:00+03:00" for m in range(0, 11)]
    assert [r["occasion"] for r in win_back] == [f"2026-11-23T10:{m:02d}:00+03:00" for m in range(0, 11, 2)]
    started_lines = sum(out.count("started ") for out, _ in outputs)
    assert started_lines == len(runs) == 17
    assert {r["state"] for r in runs} == {"planning"}  # claimed and handed to workers (none run here)


@pytest.mark.parametrize(
    ("policy", "late_minutes", "expected"),
    [
        ({"catch_up": "latest", "catch_up_max_age": "1h"}, 40, "started"),
        ({"catch_up": "latest", "catch_up_max_age": "30m"}, 40, "skipped"),
        ({"catch_up": "skip"}, 40, "skipped"),
        ({"catch_up": "skip"}, 1, "started"),  # on time is not a catch-up
    ],
)
def test_catch_up_after_downtime(write_settings, tmp_path, policy, late_minutes, expected) -> None:
    # Given an hourly campaign and a scheduler that was down at 10:00
    config = write_settings({"campaigns": only({"balance_reminder": {"schedule": "0 * * * *", **policy}})}, drop=("campaigns",))
    application = runtime.configure(config)
    schema.upgrade(application.engine)
    started: list[int] = []
    scheduler = Scheduler(application.settings, application.engine, lambda run_id, now: started.append(run_id))
    # When it starts again some minutes after the fire time
    now = datetime(2026, 11, 23, 7, late_minutes, tzinfo=UTC)  # 10:xx Moscow
    decisions = scheduler.tick(now)
    # Then the policy decides, and the decision is recorded either way
    assert [(d.campaign, d.occasion, d.action) for d in decisions] == [
        ("balance_reminder", "2026-11-23T10:00:00+03:00", expected)
    ]
    runs = occasions(application.engine)
    assert len(runs) == 1 and runs[0]["state"] == ("planning" if expected == "started" else "skipped")
    assert started == ([runs[0]["id"]] if expected == "started" else [])
    if expected == "skipped":
        assert "missed by 40m" in runs[0]["note"]
    # And ticking again (a restart) decides nothing new
    assert scheduler.tick(now + timedelta(seconds=30)) == []
    runtime.reset()


def test_a_scheduled_occasion_runs_end_to_end_on_the_embedded_default(write_settings) -> None:
    config = write_settings(
        {
            "quiet_hours": {"default": "off", "telegram": "off"},
            "campaigns": only({"balance_reminder": {"schedule": "0 11 * * *"}}),
        },
        drop=("campaigns",),
    )
    from helpers import cli

    from campaigns.tools import demo

    cli(config, "db", "upgrade")
    demo.seed(runtime.app().engine, 50, now=datetime(2026, 11, 20, tzinfo=UTC))
    result = cli(
        config,
        "scheduler",
        "--replay-from",
        "2026-11-23T10:59:30+03:00",
        "--replay-until",
        "2026-11-23T11:01:00+03:00",
        "--step",
        "30",
    )
    assert result.stdout.count("started balance_reminder 2026-11-23T11:00:00+03:00") == 1
    report = cli(config, "report", "--json").stdout
    assert '"sent"' in report
    runtime.reset()


def test_one_campaign_failing_to_start_does_not_stop_the_others(write_settings) -> None:
    # Given two campaigns due at the same minute, the first of which cannot be started
    schedule = {"schedule": "0 10 * * *"}
    campaigns = only({"balance_reminder": schedule, "win_back": schedule})
    config = write_settings({"campaigns": campaigns}, drop=("campaigns",))
    application = runtime.configure(config)
    schema.upgrade(application.engine)
    started: list[int] = []

    def start(run_id: int, now: datetime) -> None:
        if not started and run_id == 1:
            raise ValueError("this campaign's start failed")
        started.append(run_id)

    scheduler = Scheduler(application.settings, application.engine, start)
    # When the scheduler ticks at their fire time
    decisions = scheduler.tick(datetime(2026, 11, 23, 7, 0, 30, tzinfo=UTC))
    # Then the other campaign still started
    assert [(d.campaign, d.action) for d in decisions] == [("win_back", "started")]
    assert started == [2]
    runtime.reset()


def test_a_broker_outage_at_fire_time_leaves_the_occasion_planning(write_settings) -> None:
    # Given a campaign due now and a broker that refuses the plan message
    from redis.exceptions import ConnectionError as RedisConnectionError

    config = write_settings({"campaigns": only({"balance_reminder": {"schedule": "0 10 * * *"}})}, drop=("campaigns",))
    application = runtime.configure(config)
    schema.upgrade(application.engine)

    def start(run_id: int, now: datetime) -> None:
        raise RedisConnectionError("Connection refused")

    scheduler = Scheduler(application.settings, application.engine, start)
    # When it ticks
    decisions = scheduler.tick(datetime(2026, 11, 23, 7, 0, 30, tzinfo=UTC))
    # Then the occasion is claimed but stays planning (the reconciler plans it later)
    assert [(d.campaign, d.action) for d in decisions] == [("balance_reminder", "enqueue-failed")]
    assert [run["state"] for run in occasions(application.engine)] == ["planning"]
    runtime.reset()
