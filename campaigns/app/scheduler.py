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

``run_forever`` also runs the reconciler every ``reconciler.interval``. PostgreSQL or
Redis unavailable: one log line when the outage starts, one when it ends, retries with
backoff in between; an occasion whose planning could not be enqueued stays ``planning``
(never recorded as planned) and the reconciler plans it once the broker is back. One
campaign failing to schedule never stops the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select

from campaigns.app.outages import BROKER_OUTAGES, OUTAGES, brief, service
from campaigns.config.schedules import latest_fire
from campaigns.config.settings import Settings
from campaigns.store.models import campaign_runs
from campaigns.store.runs import RunState, insert_run

log = logging.getLogger("loyalcast.scheduler")


@dataclass(frozen=True)
class Decision:
    campaign: str
    occasion: str
    action: str
    """``started``, ``skipped`` or ``enqueue-failed`` (claimed; the reconciler plans it)."""
    run_id: int | None
    reason: str = ""


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
        """Start (or skip) every campaign occasion due at ``now``.

        A database outage stops the tick (``Outage``); anything else wrong with one
        campaign is logged with its name and the others go on. A run whose planning
        could not be enqueued (the broker is down) stays ``planning``: the reconciler
        plans it once the broker is back.
        """
        decisions = []
        for campaign_name, campaign in sorted(self.settings.campaigns.items()):
            if not campaign.schedule:
                continue
            try:
                decision = self._tick_one(campaign_name, campaign.schedule, campaign.catch_up, campaign.catch_up_max_age, now)
            except OUTAGES:
                raise
            except Exception:
                log.exception("campaign %s: scheduling failed; the other campaigns go on", campaign_name)
                continue
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _tick_one(
        self, campaign_name: str, schedule: str, catch_up: str, catch_up_max_age: timedelta, now: datetime
    ) -> Decision | None:
        fire = latest_fire(schedule, self.zone, now)
        occasion = fire.astimezone(self.zone).isoformat()
        late = now - fire
        if late <= self.settings.scheduler.grace:
            state, reason = RunState.PLANNING, ""
        elif catch_up == "latest" and late <= catch_up_max_age:
            state, reason = RunState.PLANNING, f"caught up {_age(late)} late"
        elif catch_up == "latest":
            state, reason = RunState.SKIPPED, f"missed by {_age(late)}, older than catch_up_max_age"
        else:
            state, reason = RunState.SKIPPED, f"missed by {_age(late)}; catch_up = skip"
        with self.engine.begin() as conn:
            run_id = insert_run(conn, campaign_name, occasion, as_of=now, started_by=self.name, state=state, note=reason)
        if run_id is None:
            return None  # already decided, here or by another scheduler
        if state is RunState.SKIPPED:
            log.warning("skipped %s occasion %s: %s", campaign_name, occasion, reason)
            return Decision(campaign_name, occasion, "skipped", run_id, reason)
        log.info("started %s occasion %s (run %s)%s", campaign_name, occasion, run_id, f": {reason}" if reason else "")
        try:
            self.start(run_id, now)
        except BROKER_OUTAGES as exc:
            log.warning(
                "run %s (%s %s) is claimed but its planning could not be enqueued (%s); "
                "the reconciler plans it once the broker is back",
                run_id,
                campaign_name,
                occasion,
                brief(exc),
            )
            return Decision(campaign_name, occasion, "enqueue-failed", run_id, brief(exc))
        return Decision(campaign_name, occasion, "started", run_id, reason)

    def run_forever(
        self,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        reconcile: Callable[[datetime], object] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Tick every ``scheduler.tick`` and reconcile every ``reconciler.interval``
        until ``stop`` is set. PostgreSQL or Redis unavailable: one log line when the
        outage starts and one when it ends, retries with backoff in between."""
        stop = stop or threading.Event()
        tick = self.settings.scheduler.tick.total_seconds()
        every = self.settings.reconciler.interval.total_seconds()
        log.info(
            "scheduler %s started: %d scheduled campaigns",
            self.name,
            sum(1 for c in self.settings.campaigns.values() if c.schedule),
        )
        next_tick = next_reconcile = 0.0
        outage: Outage | None = None
        while not stop.is_set():
            try:
                if time.monotonic() >= next_tick:
                    self.tick(clock())
                    next_tick = time.monotonic() + tick - (time.time() % tick)  # on round seconds, like cron
                if reconcile is not None and time.monotonic() >= next_reconcile:
                    reconcile(clock())
                    next_reconcile = time.monotonic() + every
            except OUTAGES as exc:
                if outage is None:
                    log.error("%s unavailable: %s; retrying with backoff until it is back", service(exc), brief(exc))
                    outage = Outage(time.monotonic())
                stop.wait(outage.backoff())
                continue
            if outage is not None:
                log.warning("dependencies are back after %.0f s of outage", time.monotonic() - outage.started)
                outage = None
            stop.wait(max(0.05, min(next_tick, next_reconcile if reconcile else next_tick) - time.monotonic()))

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


@dataclass
class Outage:
    """A period in which PostgreSQL or Redis could not be reached."""

    started: float
    attempts: int = 0

    def backoff(self) -> float:
        """Seconds before the next try: 1, 2, 4, ... up to 60."""
        self.attempts += 1
        return float(min(60, 2 ** (self.attempts - 1)))


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
