"""Deciding a queued row again on the channels after its own.

When a member's text cannot fit its channel's segment budget (an SMS longer than the
campaign's ``max_segments`` even with names shortened), failing the row would leave the
member without the reminder on every occasion. Instead the row is decided again on the
campaign's next channels (``[triggered] channels`` for a triggered message), through
the same decision SQL and under the same member lock as planning, so consent,
suppressions, quiet hours and caps all apply. The ledger keeps one row per member and
occasion: the row moves to the new channel (or ends ``failed``/``capped``/... there),
and its reason says it was rerouted and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.engine import Connection, Engine

from campaigns.config.sections import CampaignSettings, SegmentSettings
from campaigns.config.settings import Settings
from campaigns.planning.context import make_context
from campaigns.planning.decisions import decision_rows
from campaigns.planning.deferral import defer_chunk
from campaigns.planning.locks import lock_members
from campaigns.planning.triggered import member_zones, triggered_channels
from campaigns.store.ledger import Status
from campaigns.store.models import campaign_runs, deliveries, members

REASON_LIMIT = 500
REDECIDED = ("channel", "status", "reason_code", "cap_rule", "address", "holds_slot", "send_at", "deferred_from")
"""The columns of :func:`decision_rows` a new decision overwrites (the reason is
prefixed with why the row moved)."""


@dataclass(frozen=True)
class Rerouted:
    """The row after its new decision."""

    status: str
    channel: str | None
    address: str | None
    send_at: datetime
    reason: str


def reroute(engine: Engine, settings: Settings, delivery_id: int, why: str, as_of: datetime) -> Rerouted | None:
    """Decide queued row ``delivery_id`` again on the channels after its own, as of
    ``as_of``; ``why`` (what was wrong on its channel) starts the new reason. None when
    the row is no longer queued there, its channel was the last one, or no later
    channel reaches the member (the row then fails on its own channel)."""
    with engine.begin() as conn:
        row = conn.execute(
            select(
                deliveries.c.run_id,
                deliveries.c.member_id,
                deliveries.c.channel,
                deliveries.c.status,
                deliveries.c.category,
                deliveries.c.template,
                deliveries.c.idempotency_key,
                deliveries.c.data,
            ).where(deliveries.c.id == delivery_id)
        ).first()
        if row is None or row.status != Status.QUEUED.value or row.channel is None:
            return None
        campaign_name, channels, send_at_local = _channels(conn, settings, row)
        if row.channel not in channels or channels[-1] == row.channel:
            return None
        remaining = channels[channels.index(row.channel) + 1 :]
        lock_members(conn, (row.member_id, row.member_id))
        # Its own slot on the old channel must not count against it on the new one.
        conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(holds_slot=False))
        campaign = CampaignSettings(
            segment="(already decided)",
            template=row.template,
            category=row.category,
            channels=remaining,
            send_at_local=send_at_local,
        )
        zone = conn.execute(select(members.c.timezone).where(members.c.id == row.member_id)).scalar()
        ctx = make_context(
            settings,
            row.run_id,
            campaign_name,
            campaign,
            SegmentSettings(),
            as_of,
            member_zones(zone, settings.program.timezone),
            idempotency_key=row.idempotency_key,
            data=row.data,
        )
        decided = conn.execute(decision_rows(conn, settings, ctx, (row.member_id, row.member_id))).first()
        if decided is None or decided.channel is None:
            # The member row is gone, or no later channel reaches them: the row fails
            # over budget (which also gives back its slot, released above).
            return None
        reason = f"rerouted from {row.channel} ({why}); {decided.reason}"[:REASON_LIMIT]
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(
                {column: decided._mapping[column] for column in REDECIDED}
                | {"reason": reason, "updated_at": datetime.now(as_of.tzinfo)}
            )
        )
        if decided.deferred_from is not None:
            defer_chunk(conn, settings, ctx, (row.member_id, row.member_id))
        final = conn.execute(
            select(
                deliveries.c.status, deliveries.c.channel, deliveries.c.address, deliveries.c.send_at, deliveries.c.reason
            ).where(deliveries.c.id == delivery_id)
        ).one()
    return Rerouted(final.status, final.channel, final.address, final.send_at, final.reason)


def _channels(conn: Connection, settings: Settings, row: Row[Any]) -> tuple[str, list[str], str | None]:
    """The row's campaign name, its channel priority and its ``send_at_local``."""
    if row.run_id is None:
        return f"triggered:{row.template}", triggered_channels(settings, row.template), None
    name = conn.execute(select(campaign_runs.c.campaign).where(campaign_runs.c.id == row.run_id)).scalar() or ""
    spec = settings.campaigns.get(name)
    if spec is None:
        return name, [], None
    return name, list(spec.channels), spec.send_at_local
