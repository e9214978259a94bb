"""Providers' daily quotas as one worker process spends them.

``[channels.<name>] daily_quota`` is the most messages all workers together may hand
that channel's provider in one of its days (midnight to midnight in ``quota_zone``, the
program's zone by default). The count lives in the database (``campaigns.store.quota``):
this process reserves a block of the day's quota at a time and spends it message by
message, so the database is asked once per block. Blocks shrink with the quota (a
hundredth of it, at most 50), since what a process holds when the day ends, or when it
dies, goes unused: the quota is never exceeded, and falls short by at most a block per
process.

:meth:`DailyQuota.take` is asked before each provider call; past the quota it answers
when the next day starts, and the deliverer moves the message there (quiet hours and
caps applying, ``campaigns.planning.deferral.postpone``): a quota means "tomorrow",
never "failed".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from campaigns.config.settings import Settings
from campaigns.store import quota as store
from channels.errors import TransientError

MAX_BLOCK = 50


@dataclass
class _Held:
    day: date
    left: int
    used_up: bool = False


def next_day(day: date, zone: ZoneInfo) -> datetime:
    """The instant (UTC) the provider's day after ``day`` begins."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)


class DailyQuota:
    """Every channel's daily quota for one process; thread-safe."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.engine = engine
        program_zone = settings.program.timezone
        self.quotas = {
            channel: (section.daily_quota, ZoneInfo(section.quota_zone or program_zone))
            for channel, section in settings.channels.items()
            if section.daily_quota
        }
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    def describe(self, channel: str) -> str:
        quota, zone = self.quotas[channel]
        return f"the daily quota of {channel} ({quota:,} a day, {zone.key})"

    def take(self, channel: str, now: datetime) -> datetime | None:
        """Take one message of ``channel``'s quota for the day of ``now``: None when it
        may go, else the instant (UTC) the next day begins. TransientError when the
        count in the database cannot be reached."""
        found = self.quotas.get(channel)
        if found is None:
            return None
        quota, zone = found
        day = now.astimezone(zone).date()
        with self._lock:
            held = self._held.get(channel)
            if held is None or held.day != day:
                held = self._held[channel] = _Held(day, 0)
            if held.used_up:
                return next_day(day, zone)
            if held.left == 0:
                block = max(1, min(MAX_BLOCK, quota // 100))
                try:
                    held.left = store.reserve(self.engine, channel, day, quota, block, now)
                except SQLAlchemyError as exc:
                    raise TransientError(f"the daily quota count is unreachable ({type(exc).__name__})") from exc
                if held.left == 0:
                    held.used_up = True
                    return next_day(day, zone)
            held.left -= 1
            return None
