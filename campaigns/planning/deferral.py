"""Deferral: rows a full ``defer`` cap rule held back, moved to when their windows open.

``decision_insert`` writes such rows ``queued`` with ``deferred_from`` set and the rule
in ``cap_rule``; ``defer_chunk`` then moves each to the first moment every rule of its
channel and category has room again (one query for the rows, one for their slot
holders, one bulk update), or caps it when no window opens within the search horizon.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from campaigns.config.rules import CapRule
from campaigns.config.settings import Settings
from campaigns.config.values import ANY_CHANNEL, Clock
from campaigns.planning.caps import leave_quiet_hours, next_opening
from campaigns.planning.context import RunContext
from campaigns.store.ledger import ReasonCode, Status
from campaigns.store.models import deliveries, members

CAPPED_PREFIX = "cap "
DEFERRED_PREFIX = "deferred by cap "
"""How a capped or deferred row's reason starts, before the rule's name."""


def defer_chunk(conn: Connection, settings: Settings, ctx: RunContext, member_range: tuple[int, int]) -> int:
    """Move the chunk's freshly deferred rows to when their cap windows open."""
    pending = conn.execute(
        select(
            deliveries.c.id,
            deliveries.c.member_id,
            deliveries.c.channel,
            deliveries.c.send_at,
            deliveries.c.reason,
            members.c.tier,
            members.c.timezone,
        )
        .select_from(deliveries.join(members, members.c.id == deliveries.c.member_id))
        .where(
            deliveries.c.idempotency_key == ctx.idempotency_key if ctx.idempotency_key else deliveries.c.run_id == ctx.run_id,
            deliveries.c.member_id.between(*member_range),
            deliveries.c.status == Status.QUEUED.value,
            deliveries.c.deferred_from.is_not(None),
            deliveries.c.send_at == deliveries.c.deferred_from,
        )
    ).all()
    if not pending:
        return 0
    category = ctx.campaign.category
    holders: dict[int, list[tuple[str, str, datetime]]] = defaultdict(list)
    for held in conn.execute(
        select(deliveries.c.member_id, deliveries.c.channel, deliveries.c.category, deliveries.c.send_at).where(
            deliveries.c.member_id.in_([row.member_id for row in pending]),
            deliveries.c.holds_slot,
            deliveries.c.id.not_in([row.id for row in pending]),
        )
    ):
        holders[held.member_id].append((held.channel, held.category, held.send_at))

    updates = []
    for row in pending:
        zone_name = row.timezone if row.timezone in ctx.zones else ctx.program_zone
        zone = ZoneInfo(zone_name)
        rules = settings.caps_for(row.channel, category, row.tier)
        quiet = settings.quiet_hours.window_for(row.channel, category)

        def counted(rule: CapRule, member_id: int = row.member_id, channel: str = row.channel) -> list[datetime]:
            return [
                when
                for held_channel, held_category, when in holders[member_id]
                if held_category == rule.category and (rule.channel == ANY_CHANNEL or held_channel == channel)
            ]

        def adjust(when: datetime, zone: ZoneInfo = zone, quiet: tuple[Clock, Clock] | None = quiet) -> datetime:
            return leave_quiet_hours(when, zone, quiet)

        opening = next_opening(rules, row.send_at, zone, counted, adjust=adjust)
        if opening is None:
            # The row's reason was written by decision_insert as DEFERRED_PREFIX + the rest.
            reason = CAPPED_PREFIX + row.reason.removeprefix(DEFERRED_PREFIX) + "; no window opens within 400 days"
            updates.append(
                {
                    "b_id": row.id,
                    "b_status": Status.CAPPED.value,
                    "b_holds": False,
                    "b_send_at": row.send_at,
                    "b_reason": reason[:500],
                    "b_code": ReasonCode.CAP_NO_WINDOW.value,
                }
            )
        else:
            reason = f"{row.reason}; due {opening.isoformat(timespec='minutes')}"
            updates.append(
                {
                    "b_id": row.id,
                    "b_status": Status.QUEUED.value,
                    "b_holds": True,
                    "b_send_at": opening,
                    "b_reason": reason[:500],
                    "b_code": ReasonCode.CAP_DEFERRED.value,
                }
            )
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            holds_slot=bindparam("b_holds"),
            send_at=bindparam("b_send_at"),
            reason=bindparam("b_reason"),
            reason_code=bindparam("b_code"),
        ),
        updates,
    )
    return len(updates)
