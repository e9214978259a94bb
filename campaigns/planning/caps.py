"""Frequency-cap windows and quiet hours: the time arithmetic, in one place.

The planner turns these into SQL constants (one value per member time zone) so the
database can count slot-holding deliveries set-wise; deferral uses the same functions
in Python to find when a window opens. Both therefore agree on what a window is:

- ``rolling`` (``max`` per ``per``) and ``min_gap`` (``gap``): the open interval
  ``(t - span, t + span)`` around the send time ``t``. A message closer than ``span`` on
  either side takes a slot, so a backfill into the past is held to the cap too. With
  ``max = 1`` this is exactly "never two within ``span``"; with ``max > 1`` it is
  stricter than the textbook rolling window, never looser.
- ``calendar``: the calendar week (Monday 00:00) or month containing ``t`` in the
  member's time zone, ``[start, next start)``.

All datetimes are timezone-aware; results are UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from campaigns.config.rules import CapRule
from campaigns.config.values import Clock

UTC = UTC


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=zone).astimezone(UTC)


def window_bounds(rule: CapRule, t: datetime, zone: ZoneInfo) -> tuple[datetime, datetime, bool]:
    """``(low, high, low_inclusive)`` of the rule's window around ``t``; ``high`` is exclusive."""
    if rule.window == "calendar":
        local = t.astimezone(zone).date()
        if rule.period == "week":
            start = local - timedelta(days=local.weekday())
            end = start + timedelta(days=7)
        else:
            start = local.replace(day=1)
            end = (start + timedelta(days=32)).replace(day=1)
        return _local_midnight(start, zone), _local_midnight(end, zone), True
    return t - rule.span, t + rule.span, False


def in_window(rule: CapRule, t: datetime, zone: ZoneInfo, other: datetime) -> bool:
    low, high, inclusive = window_bounds(rule, t, zone)
    return (low <= other if inclusive else low < other) and other < high


def is_free(rule: CapRule, t: datetime, zone: ZoneInfo, holders: Iterable[datetime]) -> bool:
    """Whether one more message at ``t`` stays within ``rule`` given the slot holders' send times."""
    return sum(1 for h in holders if in_window(rule, t, zone, h)) < rule.limit


def _earliest_free_after(rule: CapRule, t: datetime, zone: ZoneInfo, holders: list[datetime]) -> datetime:
    if rule.window == "calendar":
        return window_bounds(rule, t, zone)[1]
    # Moving forward, the first holder to leave the window is the earliest one in it.
    inside = sorted(h for h in holders if in_window(rule, t, zone, h))
    return inside[0] + rule.span if inside else t


def next_opening(
    rules: list[CapRule],
    t: datetime,
    zone: ZoneInfo,
    holders: Callable[[CapRule], list[datetime]],
    latest: datetime,
    adjust: Callable[[datetime], datetime] = lambda moment: moment,
) -> datetime | None:
    """The earliest instant at or after ``t`` and no later than ``latest`` when every
    rule has a free slot.

    ``holders(rule)`` gives the send times the rule counts; ``adjust`` moves a candidate
    out of quiet hours. None when nothing opens by ``latest``.
    """
    current = adjust(t)
    for _ in range(10_000):
        if current > latest:
            return None
        blocking = [rule for rule in rules if not is_free(rule, current, zone, holders(rule))]
        if not blocking:
            return current
        later = max(_earliest_free_after(rule, current, zone, holders(rule)) for rule in blocking)
        current = adjust(max(later, current + timedelta(seconds=1)))
    return None


def _clock(value: Clock) -> time:
    return time(value[0], value[1])


def leave_quiet_hours(t: datetime, zone: ZoneInfo, window: tuple[Clock, Clock] | None) -> datetime:
    """``t`` if it is outside the local quiet window, else the window's end (UTC)."""
    if window is None:
        return t
    start, end = _clock(window[0]), _clock(window[1])
    local = t.astimezone(zone)
    now = local.time().replace(tzinfo=None)
    if start > end:  # wraps midnight, e.g. 21:00-09:00
        if now >= start:
            day = local.date() + timedelta(days=1)
        elif now < end:
            day = local.date()
        else:
            return t
    elif start <= now < end:
        day = local.date()
    else:
        return t
    return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


def next_local_time(t: datetime, zone: ZoneInfo, clock: Clock) -> datetime:
    """The first instant at or after ``t`` that reads ``clock`` on the member's wall clock."""
    local = t.astimezone(zone)
    candidate = datetime.combine(local.date(), _clock(clock), tzinfo=zone)
    if candidate.astimezone(UTC) < t:
        candidate = datetime.combine(local.date() + timedelta(days=1), _clock(clock), tzinfo=zone)
    return candidate.astimezone(UTC)
