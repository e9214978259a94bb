"""Transport options: the keys of a ``[channels.<name>]`` section, and their value types.

Each transport owns an options model (``Transport.Options``), a subclass of
:class:`TransportOptions` that adds the keys only it reads; loyalcast's settings accept,
per channel, whichever model the section's ``transport`` names. Secrets never appear in
options: a key ending in ``_env`` names the environment variable holding the value,
read by :func:`secret` when the transport is built.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from channels.errors import ChannelConfigError, MissingSecret

_DURATION = re.compile(r"^\s*(\d+)\s*(w|d|h|m|s)\s*$")
_DURATION_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


MAX_DURATION = timedelta(days=3660)
"""Longest duration any setting takes (ten years): longer ones are typos, and would
overflow date arithmetic."""


def parse_duration(value: Any) -> timedelta:
    """``"30d"``, ``"2w"``, ``"12h"``, ``"90m"``, ``"45s"`` (or a timedelta) -> timedelta;
    ValueError for anything else."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '30d' or '12h', got {value!r}")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}: use a number and one of w, d, h, m, s (e.g. '30d')")
    amount, unit = int(match.group(1)), match.group(2)
    try:
        return timedelta(**{_DURATION_UNITS[unit]: amount})
    except (OverflowError, ValueError):
        raise ValueError(f"duration {value!r} is too long (at most {MAX_DURATION.days}d)") from None


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("duration must be longer than zero")
    if value > MAX_DURATION:
        raise ValueError(f"duration of {value.days} days is too long (at most {MAX_DURATION.days}d)")
    return value


def _duration_or_seconds(value: Any) -> timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return parse_duration(value)


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Moscow')") from None
    return name


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]
"""A positive duration written ``"30d"``, ``"12h"``, ... in settings."""

Timeout = Annotated[timedelta, BeforeValidator(_duration_or_seconds), AfterValidator(_positive)]
"""A positive duration, or a number of seconds (``timeout = "10s"`` or ``timeout = 10``)."""


class TransportOptions(BaseModel):
    """Keys every channel section may have, whatever its transport."""

    # A misspelt key is a mistake the operator wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: str
    rate_per_second: float | None = Field(default=None, gt=0)
    """Provider throughput shared by all workers (through Redis), in messages per
    second, fractions exact: sends are spaced ``1 / rate`` seconds apart. None: unlimited."""
    daily_quota: int | None = Field(default=None, gt=0)
    """Most messages the provider takes per day (a contract's daily volume, WhatsApp's
    messaging tier, a sender's daily limit), counted by all workers together in the
    database. Past it messages wait for the next day, never fail. None: no quota."""
    quota_zone: Annotated[str, AfterValidator(_zone)] | None = None
    """IANA time zone whose midnight starts the provider's day (None: the program's)."""
    timeout: Timeout = timedelta(seconds=10)
    """Longest wait for the provider's answer to one request."""
    price_per_segment: float = Field(default=0.0, ge=0)
    """What the provider charges per billed segment, in the program's currency, for
    channels billed per segment (plan's cost estimate)."""

    def opt_in_url(self, token: str) -> str | None:
        """A link by which a member opts in to this channel, carrying loyalcast's signed
        ``token`` back (Telegram's ``/start`` deep link); None when the provider has none."""
        return None


def secret(env_name: str | None, key: str, *, required: bool = False) -> str | None:
    """The value of the environment variable ``env_name`` names; ``key`` is the settings
    key naming it, for the error when it is unset."""
    if not env_name:
        if required:
            raise ChannelConfigError(key, "required: the name of the environment variable holding it")
        return None
    value = os.environ.get(env_name)
    if not value:
        raise MissingSecret(key, f"environment variable {env_name} is not set")
    return value
