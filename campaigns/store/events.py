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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, literal, select, text, update
from sqlalchemy.engine import Connection

from campaigns.store.engine import in_ids, upsert_insert
from campaigns.store.ledger import ReasonCode, Status
from campaigns.store.models import UTCDateTime, deliveries, provider_events, suppressions
from channels.base import DeliveryEvent, EventKind

BELOW_DELIVERED = (Status.SENT.value, Status.UNKNOWN.value)
BELOW_FAILED = (Status.SENT.value, Status.UNKNOWN.value, Status.DELIVERED.value)
DELIVERED_BY = (EventKind.DELIVERED.value, EventKind.COMPLAINED.value)
FAILED_BY = (EventKind.BOUNCED.value, EventKind.FAILED.value)
SUPPRESSED_BY = (EventKind.BOUNCED.value, EventKind.COMPLAINED.value)
UNMATCHED_HORIZON = timedelta(days=7)
"""How long an unmatched event keeps being tried against the ledger."""
REACH = timedelta(days=120)
"""A report names a message decided at most this long before it arrives (a message may
wait up to ``Settings.hold_slack`` to be sent, then its reports come within days): on
PostgreSQL matching reads only those months of the ledger."""
UNMATCHED_AFTER = timedelta(minutes=1)
"""The reconciler leaves younger events to the web process that kept them (it applies
them right after): two appliers on the same rows would only wait for each other."""


@dataclass
class Recorded:
    """What one call did: events received, new to the ledger, and matched to a row."""

    received: int = 0
    new: int = 0
    applied: int = 0


def record(conn: Connection, provider: str, events: list[DeliveryEvent], now: datetime) -> Recorded:
    """Keep ``events`` of ``provider`` (a channel) and apply the new ones; one transaction,
    a fixed number of statements however many events."""
    fresh = keep(conn, provider, events, now)
    return Recorded(received=len(events), new=len(fresh), applied=apply(conn, fresh, now))


def keep(conn: Connection, provider: str, events: list[DeliveryEvent], now: datetime) -> list[int]:
    """Keep ``events`` of ``provider`` as received, skipping those kept before; the ids
    of the new ones, for :func:`apply` (the web service applies them right after, and
    the reconciler whatever a stopped process left)."""
    if not events:
        return []
    unique = {event.key[:200]: event for event in events}  # one callback may repeat an event
    rows = [
        {
            "provider": provider,
            "event_key": key,
            "event": event.kind.value if event.kind else None,
            "provider_message_id": event.provider_message_id,
            "recipient": (event.recipient or "")[:320] or None,
            "reason": event.reason[:500],
            "occurred_at": event.occurred_at,
            "received_at": now,
            "raw": event.raw or json.dumps({"key": event.key}),
        }
        for key, event in unique.items()
    ]
    return _insert_new(conn, rows)


_COLUMNS = ("provider", "event_key", "event", "provider_message_id", "recipient", "reason", "occurred_at", "received_at", "raw")
_UNNEST = text(
    f"INSERT INTO provider_events ({', '.join(_COLUMNS)}) "
    "SELECT * FROM unnest(CAST(:provider AS text[]), CAST(:event_key AS text[]), CAST(:event AS text[]), "
    "CAST(:provider_message_id AS text[]), CAST(:recipient AS text[]), CAST(:reason AS text[]), "
    "CAST(:occurred_at AS timestamptz[]), CAST(:received_at AS timestamptz[]), CAST(:raw AS text[])) "
    "ON CONFLICT (provider, event_key) DO NOTHING RETURNING id"
)


def _insert_new(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` skipping events already kept; the new rows' ids.

    On PostgreSQL one statement of arrays (``unnest``), whose text is the same for every
    batch: a multi-row VALUES differs with the batch's size, so psycopg parsed each one
    anew (a third of the web process's time under load)."""
    if conn.dialect.name == "postgresql":
        columns = {name: [row[name] for row in rows] for name in _COLUMNS}
        return [row.id for row in conn.execute(_UNNEST, columns)]
    insert = (
        upsert_insert(conn, provider_events)
        .on_conflict_do_nothing(index_elements=["provider", "event_key"])
        .returning(provider_events.c.id)
    )
    return [row.id for row in conn.execute(insert, rows)]


def apply_unmatched(conn: Connection, now: datetime, limit: int = 5000) -> int:
    """Apply kept events, at least a minute old, that matched no row when they arrived
    (or that a stopped web process kept and never applied); how many matched now."""
    found = conn.execute(
        select(provider_events.c.id)
        .where(
            provider_events.c.applied_at.is_(None),
            provider_events.c.event.is_not(None),
            provider_events.c.provider_message_id.is_not(None),
            provider_events.c.received_at > now - UNMATCHED_HORIZON,
            provider_events.c.received_at <= now - UNMATCHED_AFTER,
        )
        .order_by(provider_events.c.id)
        .limit(limit)
    )
    return apply(conn, [row.id for row in found], now)


def prune(conn: Connection, before: datetime) -> int:
    """Remove events received before ``before``; how many."""
    result = conn.execute(delete(provider_events).where(provider_events.c.received_at < before))
    return int(result.rowcount or 0)


def apply(conn: Connection, event_ids: list[int], now: datetime) -> int:
    """Apply the kept events ``event_ids`` to the ledger, set-based: match them to rows,
    move rows forward, suppress addresses, mark the matched events; how many matched."""
    if not event_ids:
        return 0
    events = provider_events
    these = in_ids(conn, events.c.id, event_ids)
    recent = deliveries.c.created_at >= now - REACH
    # 1. match: the row on the event's channel with the provider's message id
    conn.execute(
        update(events)
        .where(
            these,
            events.c.delivery_id.is_(None),
            deliveries.c.channel == events.c.provider,
            deliveries.c.provider_message_id == events.c.provider_message_id,
            recent,
        )
        .values(delivery_id=deliveries.c.id)
    )
    # 2. delivered (a complaint is a delivered message, too)
    delivered = select(events.c.delivery_id).where(these, events.c.event.in_(DELIVERED_BY))
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(delivered), deliveries.c.status.in_(BELOW_DELIVERED), recent)
        .values(status=Status.DELIVERED.value, updated_at=now)
    )
    # 3. failed, with the first failure's reason
    first_failure = (
        select(func.min(events.c.id))
        .where(these, events.c.event.in_(FAILED_BY), events.c.delivery_id.is_not(None))
        .group_by(events.c.delivery_id)
    )
    reason = func.substr(
        events.c.event + literal(" (reported by ") + events.c.provider + literal("): ") + events.c.reason, 1, 500
    )
    code = case((events.c.event == EventKind.BOUNCED.value, ReasonCode.BOUNCED.value), else_=ReasonCode.UNDELIVERED.value)
    conn.execute(
        update(deliveries)
        .where(
            events.c.id.in_(first_failure),
            deliveries.c.id == events.c.delivery_id,
            deliveries.c.status.in_(BELOW_FAILED),
            recent,
        )
        .values(status=Status.FAILED.value, reason_code=code, reason=reason, last_error=reason, updated_at=now)
    )
    # 4. bounces and complaints suppress the address (the event's, else the row's)
    address = func.coalesce(events.c.recipient, deliveries.c.address)
    suppress = (
        select(
            events.c.provider,
            address,
            func.substr(events.c.event + literal(": ") + events.c.reason, 1, 500),
            literal(now, UTCDateTime()),
        )
        .select_from(events.outerjoin(deliveries, deliveries.c.id == events.c.delivery_id))
        .where(these, events.c.event.in_(SUPPRESSED_BY), address.is_not(None))
        .distinct()
    )
    conn.execute(
        upsert_insert(conn, suppressions)
        .from_select(["channel", "address", "reason", "created_at"], suppress)
        .on_conflict_do_nothing()
    )
    # 5. the matched events are applied; the others wait for their row (apply_unmatched)
    result = conn.execute(
        update(events).where(these, events.c.delivery_id.is_not(None), events.c.applied_at.is_(None)).values(applied_at=now)
    )
    return int(result.rowcount or 0)


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
