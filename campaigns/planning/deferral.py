"""Deferral: queued rows moved to when their windows open.

- ``defer_chunk``: rows a full ``defer`` cap rule held back. ``decision_insert`` writes
  them ``queued`` with ``deferred_from`` set and the rule in ``cap_rule``; each moves to
  the first moment every rule of its channel and category has room again (one query for
  the rows, one for their slot holders, one bulk update), or is capped when no window
  opens within the search horizon.
- ``postpone``: rows a provider cannot take before some instant (its daily quota is
  used up until tomorrow). Each moves to the first moment from then that is outside the
  member's quiet hours and where every cap rule has room, its own slot aside, under the
  members' locks: moving a slot later must not crowd a message already planned there.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.engine import Connection

from campaigns.config.rules import CapRule
from campaigns.config.settings import Settings
from campaigns.config.values import ANY_CHANNEL, Clock, format_duration
from campaigns.config.zones import member_zone, zone_info
from campaigns.planning.caps import leave_quiet_hours, next_opening
from campaigns.planning.context import RunContext
from campaigns.planning.locks import lock_member_ids
from campaigns.store.ledger import ReasonCode, Status
from campaigns.store.models import deliveries, members

CAPPED_PREFIX = "cap "
DEFERRED_PREFIX = "deferred by cap "
"""How a capped or deferred row's reason starts, before the rule's name."""


@dataclass(frozen=True)
class _Moving:
    """A queued row to move, with what its new time depends on."""

    id: int
    member_id: int
    channel: str
    category: str
    tier: str | None
    zone: ZoneInfo
    start: datetime
    """The earliest instant it may move to."""
    decided_at: datetime
    """Its ``created_at``: it may not move further than ``Settings.hold_slack`` after it."""


def _openings(conn: Connection, settings: Settings, rows: list[_Moving]) -> dict[int, datetime | None]:
    """Each row's first instant at or after its ``start`` outside its quiet hours where
    every cap rule of its channel and category has room, counting the members' other
    slot-holding rows and the rows moved before it; None when no window opens within
    ``Settings.hold_slack`` of the row's decision (so cap lookups, which read rows
    decided no earlier than a window's start less that, always find it). One query."""
    holders: dict[int, list[tuple[str, str, datetime]]] = defaultdict(list)
    reach = settings.longest_cap_window + settings.hold_slack
    for held in conn.execute(
        select(deliveries.c.member_id, deliveries.c.channel, deliveries.c.category, deliveries.c.send_at).where(
            deliveries.c.member_id.in_(sorted({row.member_id for row in rows})),
            deliveries.c.holds_slot,
            deliveries.c.id.not_in([row.id for row in rows]),
            # A holder whose window reaches these rows' starts was decided no earlier.
            deliveries.c.created_at >= min(row.start for row in rows) - reach,
        )
    ):
        holders[held.member_id].append((held.channel, held.category, held.send_at))
    found: dict[int, datetime | None] = {}
    for row in rows:
        rules = settings.caps_for(row.channel, row.category, row.tier)
        quiet = settings.quiet_hours.window_for(row.channel, row.category)

        def counted(rule: CapRule, member_id: int = row.member_id, channel: str = row.channel) -> list[datetime]:
            return [
                when
                for held_channel, held_category, when in holders[member_id]
                if held_category == rule.category and (rule.channel == ANY_CHANNEL or held_channel == channel)
            ]

        def adjust(when: datetime, zone: ZoneInfo = row.zone, quiet: tuple[Clock, Clock] | None = quiet) -> datetime:
            return leave_quiet_hours(when, zone, quiet)

        opening = next_opening(rules, row.start, row.zone, counted, row.decided_at + settings.hold_slack, adjust=adjust)
        found[row.id] = opening
        if opening is not None:  # a later row of the same member counts this one where it lands
            holders[row.member_id].append((row.channel, row.category, opening))
    return found


def postpone(engine: Engine, settings: Settings, ids: list[int], not_before: datetime, why: str) -> dict[int, datetime | None]:
    """Move the still-queued rows among ``ids`` to their first opening at or after
    ``not_before`` (``why``: the reason, added to each row's); each row's new due
    instant, or None for a row capped because no window opens."""
    with engine.begin() as conn:
        members_of = select(deliveries.c.member_id).where(deliveries.c.id.in_(ids)).distinct()
        lock_member_ids(conn, sorted(r.member_id for r in conn.execute(members_of)))
        found = conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.member_id,
                deliveries.c.channel,
                deliveries.c.category,
                deliveries.c.reason,
                deliveries.c.created_at,
                members.c.tier,
                members.c.timezone,
            )
            .select_from(deliveries.join(members, members.c.id == deliveries.c.member_id))
            .where(deliveries.c.id.in_(ids), deliveries.c.status == Status.QUEUED.value, deliveries.c.channel.is_not(None))
            .order_by(deliveries.c.member_id, deliveries.c.id)
        ).all()
        program_zone = settings.program.timezone
        rows = [
            _Moving(
                r.id,
                r.member_id,
                r.channel,
                r.category,
                r.tier,
                zone_info(member_zone(r.timezone, program_zone)),
                not_before,
                r.created_at,
            )
            for r in found
        ]
        openings = _openings(conn, settings, rows) if rows else {}
        reasons = {r.id: r.reason for r in found}
        updates = []
        for row_id, opening in openings.items():
            if opening is None:
                updates.append(_capped(row_id, reasons[row_id], f"{why}; {_no_window(settings)}", not_before))
            else:
                reason = f"{reasons[row_id]}; {why}: due {opening.isoformat(timespec='minutes')}"
                updates.append(_moved(row_id, reason, opening, ReasonCode.QUOTA_DEFERRED))
        _write(conn, updates)
        return openings


def _capped(row_id: int, reason: str, why: str, send_at: datetime) -> dict[str, object]:
    """A row no window opens for: capped, its slot given back. A row a cap deferred keeps
    its rule's words ("cap sms/marketing ...")."""
    if reason.startswith(DEFERRED_PREFIX):
        text = CAPPED_PREFIX + reason.removeprefix(DEFERRED_PREFIX) + f"; {why}"
    else:
        text = f"{reason}; {why}"
    return {
        "b_id": row_id,
        "b_status": Status.CAPPED.value,
        "b_holds": False,
        "b_send_at": send_at,
        "b_reason": text[:500],
        "b_code": ReasonCode.CAP_NO_WINDOW.value,
    }


def _no_window(settings: Settings) -> str:
    return f"no window opens within {format_duration(settings.hold_slack)} of the decision"


def _moved(row_id: int, reason: str, opening: datetime, code: ReasonCode) -> dict[str, object]:
    return {
        "b_id": row_id,
        "b_status": Status.QUEUED.value,
        "b_holds": True,
        "b_send_at": opening,
        "b_reason": reason[:500],
        "b_code": code.value,
    }


def _write(conn: Connection, updates: list[dict[str, object]]) -> None:
    if not updates:
        return
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"), deliveries.c.status == Status.QUEUED.value)
        .values(
            status=bindparam("b_status"),
            holds_slot=bindparam("b_holds"),
            send_at=bindparam("b_send_at"),
            reason=bindparam("b_reason"),
            reason_code=bindparam("b_code"),
        ),
        updates,
    )


def defer_chunk(conn: Connection, settings: Settings, ctx: RunContext, member_range: tuple[int, int]) -> int:
    """Move the chunk's freshly deferred rows to when their cap windows open."""
    pending = conn.execute(
        select(
            deliveries.c.id,
            deliveries.c.member_id,
            deliveries.c.channel,
            deliveries.c.send_at,
            deliveries.c.reason,
            deliveries.c.created_at,
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
    rows = [
        _Moving(
            row.id,
            row.member_id,
            row.channel,
            ctx.campaign.category,
            row.tier,
            ZoneInfo(row.timezone if row.timezone in ctx.zones else ctx.program_zone),
            row.send_at,
            row.created_at,
        )
        for row in pending
    ]
    reasons = {row.id: row.reason for row in pending}
    starts = {row.id: row.send_at for row in pending}
    updates = []
    for row_id, opening in _openings(conn, settings, rows).items():
        if opening is None:
            # The row's reason was written by decision_insert as DEFERRED_PREFIX + the rest.
            updates.append(_capped(row_id, reasons[row_id], _no_window(settings), starts[row_id]))
        else:
            updates.append(
                _moved(
                    row_id, f"{reasons[row_id]}; due {opening.isoformat(timespec='minutes')}", opening, ReasonCode.CAP_DEFERRED
                )
            )
    _write(conn, updates)
    return len(updates)
