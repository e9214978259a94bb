"""Time zones by name, cached for the life of the process.

``zoneinfo.ZoneInfo(name)`` keeps only the eight most recently used zones alive; a batch
of members from more zones than that re-read tz files from disk on nearly every call
(a fifth of a delivery worker's time in the benchmark's profile).
"""

from __future__ import annotations

import logging
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)


@cache
def zone_info(name: str) -> ZoneInfo:
    """``ZoneInfo(name)``, kept; raises ``ZoneInfoNotFoundError`` / ``ValueError`` as it does."""
    return ZoneInfo(name)


@lru_cache(maxsize=1024)
def member_zone(zone_name: str | None, program_zone: str) -> str:
    """The member's zone if it is a known IANA name, else the program's."""
    if zone_name:
        try:
            zone_info(zone_name)
            return zone_name
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("unknown member time zone %r; using %s", zone_name, program_zone)
    return program_zone
