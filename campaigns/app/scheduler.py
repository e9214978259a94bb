"""``loyalcast scheduler``: starts campaign occasions when their cron expressions fire.

Each campaign's ``schedule`` is evaluated in the program's time zone. On every tick the
scheduler looks at each campaign's latest fire time F at or before now. The occasion is
F itself (``2026-12-01T11:00:00+03:00``), claimed by inserting the unique
``(campaign, occasion)`` row: whichever scheduler inserts it starts the run, any other
(a second scheduler, a restart, a clock jump back) finds it claimed and does nothing.

An F older than ``scheduler.grace`` was missed (the scheduler was down). The campaign's
``catch_up`` policy decides: ``latest`` runs it if it is younger than
``catch_up_max_age``; otherwise, and with ``skip``, the occasion is recorded as
``skipped`` with the reason, so it is neither run later nor forgotten. Only the latest
missed occasion is considered: a scheduler down for a week does not send a week of
reminders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import Engine, select

from campaigns.config.settings import Settings
from campaigns.store.models import campaign_runs
from campaigns.store.runs import RunState, insert_run

log = logging.getLogger("loyalcast.scheduler")


@dataclass(frozen=True)
class Decision:
    campaign: str
    occasion: str
    action: str
    """``started``, ``skipped`` or ``claimed-elsewhere``."""
    run_id: int | None
    reason: str = ""


def latest_fire(schedule: str, zone: ZoneInfo, now: datetime) -> datetime:
    """The latest fire time at or before ``now`` (UTC)."""
    local = now.astimezone(zone)
    iterator = croniter(schedule, local + timedelta(microseconds=1))
    fire: datetime = iterator.get_prev(datetime)
    return fire.astimezone(UTC)


class Scheduler:
    """Claims and starts due occasions. ``start(run_id, now)`` enqueues the planning."""

    def __init__(
        self, settings: Settings, engine: Engine, start: Callable[[int, datetime], None], name: str = "scheduler"
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.start = start
        self.name = name
        self.zone = ZoneInfo(settings.program.timezone)

    def tick(self, now: datetime) -> list[Decision]:
        decisions = []
        for campaign_name, campaign in sorted(self.settings.campaigns.items()):
            if not campaign.schedule:
                continue
            fire = latest_fire(campaign.schedule, self.zone, now)
            occasion = fire.astimezone(self.zone).isoformat()
            late = now - fire
            if late <= self.settings.scheduler.grace:
                state, reason = RunState.PLANNING, ""
            elif campaign.catch_up == "latest" and late <= campaign.catch_up_max_age:
                state, reason = RunState.PLANNING, f"caught up {_age(late)} late"
            elif campaign.catch_up == "latest":
                state, reason = RunState.SKIPPED, f"missed by {_age(late)}, older than catch_up_max_age"
            else:
                state, reason = RunState.SKIPPED, f"missed by {_age(late)}; catch_up = skip"
            with self.engine.begin() as conn:
                run_id = insert_run(conn, campaign_name, occasion, as_of=now, started_by=self.name, state=state, note=reason)
            if run_id is None:
                continue  # already decided, here or by another scheduler
            if state is RunState.SKIPPED:
                log.warning("skipped %s occasion %s: %s", campaign_name, occasion, reason)
                decisions.append(Decision(campaign_name, occasion, "skipped", run_id, reason))
                continue
            log.info("started %s occasion %s (run %s)%s", campaign_name, occasion, run_id, f": {reason}" if reason else "")
            self.start(run_id, now)
            decisions.append(Decision(campaign_name, occasion, "started", run_id, reason))
        return decisions

    def run_forever(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        tick = self.settings.scheduler.tick.total_seconds()
        log.info(
            "scheduler %s started: %d scheduled campaigns",
            self.name,
            sum(1 for c in self.settings.campaigns.values() if c.schedule),
        )
        while True:
            self.tick(clock())
            time.sleep(tick - (time.time() % tick))  # tick on round seconds, like cron

    def replay(self, start: datetime, until: datetime, step: timedelta) -> Iterator[list[Decision]]:
        """Tick through a simulated timeline as fast as possible (tests, rehearsals)."""
        now = start
        while now <= until:
            yield self.tick(now)
            now += step


def occasions(engine: Engine, campaign: str | None = None) -> list[dict[str, Any]]:
    query = select(campaign_runs).order_by(campaign_runs.c.occasion)
    if campaign:
        query = query.where(campaign_runs.c.campaign == campaign)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
