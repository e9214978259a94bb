"""Providers' events in the ledger: delivery reports, bounces and complaints.

:func:`record` keeps each event as received in ``provider_events`` (unique per provider
and event key: a provider retrying a callback adds nothing) and applies the new ones to
the ledger row whose ``provider_message_id`` they name, on the same channel:

- a row's status only moves forward, ranked ``sent``/``unknown`` < ``delivered`` <
  ``failed``: ``delivered`` and ``complained`` make a row ``delivered``; ``bounced``
  and ``failed`` make it ``failed`` (reason code ``bounced`` or ``undelivered``, the
  provider's reason); ``deferred`` changes nothing. So the same events in any order
  end in the same status (a late "delivered" never undoes a bounce); of two failures
  the first one recorded gives the reason;
- ``bounced`` and ``complained`` put the address on the suppression list;
- cap slots stay held: a message that left counts against the member's caps.

An event that names no row yet (the report overtook the worker's own "sent") is kept
unmatched and applied by :func:`apply_unmatched`, which the reconciler runs; events
older than ``[web] events_retention`` are removed by :func:`prune`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.engine import Connection

from campaigns.store.engine import in_ids, upsert_insert
from campaigns.store.ledger import ReasonCode, Status, add_suppressions
from campaigns.store.models import deliveries, provider_events
from channels.base import DeliveryEvent, EventKind

RANK = {Status.SENT.value: 0, Status.UNKNOWN.value: 0, Status.DELIVERED.value: 1, Status.FAILED.value: 2}
MOVES = {
    EventKind.DELIVERED: Status.DELIVERED,
    EventKind.COMPLAINED: Status.DELIVERED,
    EventKind.BOUNCED: Status.FAILED,
    EventKind.FAILED: Status.FAILED,
}
SUPPRESSING = (EventKind.BOUNCED, EventKind.COMPLAINED)
UNMATCHED_HORIZON = timedelta(days=7)
"""How long an unmatched event keeps being tried against the ledger."""


@dataclass
class Recorded:
    """What one call did: events new to the ledger, rows moved, addresses suppressed."""

    received: int = 0
    new: int = 0
    applied: int = 0
    suppressed: int = 0


@dataclass(frozen=True)
class _Event:
    id: int
    provider: str
    kind: EventKind | None
    provider_message_id: str | None
    recipient: str | None
    reason: str


def record(conn: Connection, provider: str, events: list[DeliveryEvent], now: datetime) -> Recorded:
    """Keep ``events`` of ``provider`` (a channel) and apply the new ones; one transaction."""
    done = Recorded(received=len(events))
    if not events:
        return done
    unique = {event.key: event for event in events}  # one callback may repeat an event
    rows = [
        {
            "provider": provider,
            "event_key": event.key[:200],
            "event": event.kind.value if event.kind else None,
            "provider_message_id": event.provider_message_id,
            "recipient": (event.recipient or None) and (event.recipient or "")[:320],
            "reason": event.reason[:500],
            "occurred_at": event.occurred_at,
            "received_at": now,
            "raw": event.raw or json.dumps({"key": event.key}),
        }
        for event in unique.values()
    ]
    insert = (
        upsert_insert(conn, provider_events)
        .on_conflict_do_nothing(index_elements=["provider", "event_key"])
        .returning(
            provider_events.c.id,
            provider_events.c.event,
            provider_events.c.provider_message_id,
            provider_events.c.recipient,
            provider_events.c.reason,
        )
    )
    fresh = [
        _Event(r.id, provider, EventKind(r.event) if r.event else None, r.provider_message_id, r.recipient, r.reason)
        for r in conn.execute(insert, rows)
    ]
    done.new = len(fresh)
    applied, suppressed = _apply(conn, fresh, now)
    done.applied, done.suppressed = applied, suppressed
    return done


def apply_unmatched(conn: Connection, now: datetime, limit: int = 5000) -> int:
    """Apply kept events that matched no row when they arrived; how many matched now."""
    found = conn.execute(
        select(provider_events)
        .where(
            provider_events.c.applied_at.is_(None),
            provider_events.c.event.is_not(None),
            provider_events.c.provider_message_id.is_not(None),
            provider_events.c.received_at > now - UNMATCHED_HORIZON,
        )
        .order_by(provider_events.c.id)
        .limit(limit)
    )
    pending = [_Event(r.id, r.provider, EventKind(r.event), r.provider_message_id, r.recipient, r.reason) for r in found]
    applied, _ = _apply(conn, pending, now, suppress_unmatched=False)
    return applied


def prune(conn: Connection, before: datetime) -> int:
    """Remove events received before ``before``; how many."""
    result = conn.execute(delete(provider_events).where(provider_events.c.received_at < before))
    return int(result.rowcount or 0)


def _apply(conn: Connection, events: list[_Event], now: datetime, *, suppress_unmatched: bool = True) -> tuple[int, int]:
    """Move ledger rows and suppress addresses for ``events``; (events matched, suppressions)."""
    outcomes = [e for e in events if e.kind is not None and e.provider_message_id]
    if not outcomes:
        return 0, 0
    by_provider: dict[str, set[str]] = defaultdict(set)
    for event in outcomes:
        by_provider[event.provider].add(event.provider_message_id or "")
    rows: dict[tuple[str, str], Any] = {}
    for provider, message_ids in by_provider.items():
        query = select(
            deliveries.c.id, deliveries.c.channel, deliveries.c.provider_message_id, deliveries.c.status, deliveries.c.address
        ).where(deliveries.c.channel == provider, deliveries.c.provider_message_id.in_(sorted(message_ids)))
        for found in conn.execute(query):
            rows[(found.channel, found.provider_message_id)] = found
    status: dict[int, str] = {}
    moves: list[dict[str, Any]] = []
    matched: list[dict[str, Any]] = []
    suppress: list[dict[str, Any]] = []
    for event in outcomes:
        assert event.kind is not None
        row = rows.get((event.provider, event.provider_message_id or ""))
        address = event.recipient or (row.address if row is not None else None)
        if event.kind in SUPPRESSING and address and (row is not None or suppress_unmatched):
            suppress.append({"channel": event.provider, "address": address, "reason": f"{event.kind.value}: {event.reason}"})
        if row is None:
            continue
        matched.append({"event_id": event.id, "delivery_id": row.id})
        target = MOVES.get(event.kind)
        current = status.get(row.id, row.status)
        if target is None or current not in RANK or RANK[target.value] <= RANK[current]:
            continue
        status[row.id] = target.value
        moves.append(_move(row.id, current, target, event))
    delivered = [move for move in moves if move["new_status"] == Status.DELIVERED.value]
    failed = [move for move in moves if move["new_status"] == Status.FAILED.value]
    guard = and_(deliveries.c.id == bindparam("row_id"), deliveries.c.status == bindparam("was"))
    if delivered:
        conn.execute(update(deliveries).where(guard).values(status=Status.DELIVERED.value, updated_at=now), delivered)
    if failed:
        values: dict[str, Any] = {
            "reason_code": bindparam("new_code"),
            "reason": bindparam("new_reason"),
            "last_error": bindparam("new_reason"),
        }
        conn.execute(update(deliveries).where(guard).values(status=Status.FAILED.value, updated_at=now, **values), failed)
    if matched:
        conn.execute(
            update(provider_events)
            .where(provider_events.c.id == bindparam("event_id"))
            .values(delivery_id=bindparam("delivery_id"), applied_at=now),
            matched,
        )
    if suppress:
        add_suppressions(conn, suppress, now)
    return len(matched), len(suppress)


def _move(row_id: int, current: str, target: Status, event: _Event) -> dict[str, Any]:
    """Parameters of one forward move (the ``was`` guard makes a concurrent move lose)."""
    move: dict[str, Any] = {"row_id": row_id, "was": current, "new_status": target.value}
    if target is Status.FAILED:
        code = ReasonCode.BOUNCED if event.kind is EventKind.BOUNCED else ReasonCode.UNDELIVERED
        kind = event.kind.value if event.kind else "failed"
        move |= {"new_code": code.value, "new_reason": f"{kind} (reported by {event.provider}): {event.reason}"[:500]}
    return move


def events_of(conn: Connection, delivery_ids: list[int]) -> list[Any]:
    """The events matched to ``delivery_ids`` in order of arrival (for ``why``)."""
    if not delivery_ids:
        return []
    query = (
        select(provider_events)
        .where(in_ids(conn, provider_events.c.delivery_id, delivery_ids))
        .order_by(provider_events.c.received_at, provider_events.c.id)
    )
    return list(conn.execute(query))
