"""Value types of ``settings.toml``: durations, clock times, quiet windows, time zone,
locale and channel names. Each parser raises ValueError with a message that, prefixed
by its key path, is the line a marketer reads."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated
from zoneinfo import ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from pydantic import AfterValidator, BaseModel, ConfigDict

from campaigns.config.zones import zone_info
from channels.options import Duration, parse_duration
from channels.specs import CHANNELS, UnknownChannel

__all__ = [
    "ANY_CHANNEL",
    "Category",
    "ChannelName",
    "Clock",
    "Duration",
    "LocaleName",
    "Name",
    "QuietWindow",
    "SERVICE",
    "Section",
    "TimeZoneName",
    "format_duration",
    "is_marketing",
    "parse_clock",
    "parse_duration",
]


class Section(BaseModel):
    """Base of every settings table."""

    # A misspelt key is a mistake the marketer wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _name(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 200:
        raise ValueError(f"is {len(value)} characters long (at most 200)")
    return value


Name = Annotated[str, AfterValidator(_name)]
"""A text that must say something (a program's name); runs of white space become one space."""

_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _category(value: str) -> str:
    if not _CATEGORY.fullmatch(value):
        raise ValueError(
            f"invalid category {value!r} (lower-case letters, digits, '_' and '-', e.g. 'marketing', 'expiry', 'service')"
        )
    return value


SERVICE = "service"
"""The category of service messages (a receipt, points credited): they need no marketing
consent (only a reachable, unsuppressed address), carry no unsubscribe header, and
quiet hours skip them by default."""


def is_marketing(category: str) -> bool:
    """Whether messages of ``category`` are marketing: they need the member's marketing
    consent and carry an unsubscribe link. Every category but ``service`` is."""
    return category != SERVICE


Category = Annotated[str, AfterValidator(_category)]
"""A message category (``marketing``, ``expiry``, ``service``), as cap rules and the
ledger name it."""


def known_channel(value: str) -> str:
    if value not in CHANNELS:
        raise ValueError(str(UnknownChannel(value)))
    return value


ChannelName = Annotated[str, AfterValidator(known_channel)]
"""A channel some ``channels.specs`` entry describes."""

ANY_CHANNEL = "*"
"""A cap rule's channel meaning every channel together."""

ANY = "*"
"""A member preference's channel or category meaning every one (``preferences``)."""


def _time_zone(value: str) -> str:
    try:
        zone_info(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Europe/Moscow')") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_time_zone)]


def _locale(value: str) -> str:
    try:
        Locale.parse(value)
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"unknown locale {value!r}") from None
    return value


LocaleName = Annotated[str, AfterValidator(_locale)]

Clock = tuple[int, int]
"""A local time of day, ``(hour, minute)``."""

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: str) -> Clock:
    """``"09:00"`` -> ``(9, 0)``; ValueError for anything but ``HH:MM``."""
    match = _CLOCK.match(value.strip())
    if not match:
        raise ValueError(f"invalid time of day {value!r} (use HH:MM, e.g. '09:00')")
    return int(match.group(1)), int(match.group(2))


def _quiet_window(value: str) -> str:
    if value.strip().lower() == "off":
        return "off"
    parts = value.split("-")
    if len(parts) != 2:
        raise ValueError(f"invalid quiet hours {value!r} (use 'HH:MM-HH:MM', e.g. '21:00-09:00', or 'off')")
    for part in parts:
        parse_clock(part)
    return value.strip()


QuietWindow = Annotated[str, AfterValidator(_quiet_window)]
"""``"HH:MM-HH:MM"`` (may wrap midnight) or ``"off"``."""


def format_duration(value: timedelta) -> str:
    """``timedelta(days=30)`` -> ``"30d"``: the largest unit that divides it."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
