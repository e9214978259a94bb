"""A campaign's cron ``schedule`` read in the program's time zone: the fire times the
scheduler starts occasions at, and the next ones the console shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter


def latest_fire(schedule: str, zone: ZoneInfo, now: datetime) -> datetime:
    """The latest fire time at or before ``now`` (UTC)."""
    local = now.astimezone(zone)
    iterator = croniter(schedule, local + timedelta(microseconds=1))
    fire: datetime = iterator.get_prev(datetime)
    return fire.astimezone(UTC)


def next_fires(schedule: str, zone: ZoneInfo, now: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``now``, in ``zone``."""
    iterator = croniter(schedule, now.astimezone(zone))
    return [iterator.get_next(datetime) for _ in range(count)]
