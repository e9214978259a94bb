"""Time zones by name, cached for the life of the process.

``zoneinfo.ZoneInfo(name)`` keeps only the eight most recently used zones alive; a batch
of members from more zones than that re-read tz files from disk on nearly every call
(a fifth of a delivery worker's time in the benchmark's profile).
"""

from __future__ import annotations

from functools import cache
from zoneinfo import ZoneInfo


@cache
def zone_info(name: str) -> ZoneInfo:
    """``ZoneInfo(name)``, kept; raises ``ZoneInfoNotFoundError`` / ``ValueError`` as it does."""
    return ZoneInfo(name)
