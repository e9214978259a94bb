"""What every chunk of one run shares: the run, its campaign, and per-zone send times.

Time-zone arithmetic never happens in SQL: for every zone the members have, Python
computes when a message planned now is due on each channel (quiet hours,
``send_at_local``), once per run; the decision SQL picks the value by the member's zone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.engine import Connection

from campaigns.config.sections import CampaignSettings, SegmentSettings
from campaigns.config.settings import Settings
from campaigns.config.values import parse_clock
from campaigns.planning.caps import leave_quiet_hours, next_local_time
from campaigns.store.models import members


@dataclass(frozen=True)
class RunContext:
    """What every chunk of one run shares: the run, its campaign, and per-zone times.

    A triggered message is a run of one: ``run_id`` None, a campaign made up of the
    template, channels and category, every member as the segment, and the caller's
    ``idempotency_key`` and ``data``.
    """

    run_id: int | None
    campaign_name: str
    campaign: CampaignSettings
    segment: SegmentSettings
    as_of: datetime
    program_zone: str
    zones: tuple[str, ...]
    send_at: dict[str, dict[str, datetime]]
    """``{channel: {zone: when a message planned at as_of is due}}``."""
    idempotency_key: str | None = None
    data: dict[str, Any] | None = None
    decided_at: datetime | None = None
    """The ledger rows' ``created_at``: a run's start for every row of the run (a rerun
    then conflicts with the rows it decided before, in the same monthly partition),
    the moment of deciding for a triggered message (None: now)."""
    statements: dict[bool, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    """The run's decision INSERTs by ``fresh`` (with or without ``ON CONFLICT``), built once
    and executed per chunk with the chunk's bounds as parameters
    (``decisions.chunk_insert``): building one is a few thousand
    SQLAlchemy objects, 20 ms of a core the database would rather have. Not copied by
    ``dataclasses.replace``: a context with another run builds its own."""


def member_zones(conn: Connection) -> list[str]:
    """Valid IANA zones the members have (unknown names fall back to the program zone)."""
    names: list[str] = list(conn.execute(select(members.c.timezone).where(members.c.timezone.is_not(None)).distinct()).scalars())
    valid: list[str] = []
    for name in names:
        try:
            ZoneInfo(name)
            valid.append(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return sorted(valid)


def run_context(
    conn: Connection, settings: Settings, run_id: int, campaign_name: str, as_of: datetime, decided_at: datetime | None = None
) -> RunContext:
    campaign = settings.campaigns[campaign_name]
    zones = tuple(sorted(set(member_zones(conn)) | {settings.program.timezone}))
    segment = settings.segments[campaign.segment]
    return make_context(settings, run_id, campaign_name, campaign, segment, as_of, zones, decided_at=decided_at)


def make_context(
    settings: Settings,
    run_id: int | None,
    campaign_name: str,
    campaign: CampaignSettings,
    segment: SegmentSettings,
    as_of: datetime,
    zones: tuple[str, ...],
    **extra: Any,
) -> RunContext:
    program_zone = settings.program.timezone
    send_at: dict[str, dict[str, datetime]] = {}
    for channel in campaign.channels:
        quiet = settings.quiet_hours.window_for(channel, campaign.category)
        per_zone = {}
        for zone_name in zones:
            zone = ZoneInfo(zone_name)
            due = as_of
            if campaign.send_at_local:
                due = next_local_time(as_of, zone, parse_clock(campaign.send_at_local))
            per_zone[zone_name] = leave_quiet_hours(due, zone, quiet)
        send_at[channel] = per_zone
    return RunContext(run_id, campaign_name, campaign, segment, as_of, program_zone, zones, send_at, **extra)
