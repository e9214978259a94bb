"""Claims, leases and the bracket around each provider call.

The ledger, not the queue, owns a message from decision to outcome. A row's way:

``queued`` --claim--> ``sending`` (owner, ``lease_until``; ``call_started_at`` NULL)
--open--> ``sending`` with ``call_started_at`` set (the one row its owner has in flight)
--finish--> an outcome (``sent``, ``failed``, ``unknown``, ``stale``, or ``queued`` again
for a retry).

Opening the bracket of a row and recording the outcome of the owner's previous row are
one write, so a crash leaves at most one row per sending thread whose call may have
reached the provider. Every write is fenced by the owner: a row whose lease expired and
was taken back is neither opened nor finished by its former owner, except that a late
true outcome may replace ``unknown``.

When a lease expires (``expire``): a row whose call never started goes back to
``queued`` and is sent again; a row whose call started ends ``unknown`` (keeps its cap
slot, never resent blindly).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, and_, bindparam, func, literal, or_, select, text, update
from sqlalchemy.engine import Connection

from campaigns.store.engine import in_ids
from campaigns.store.ledger import Outcome, ReasonCode, Status
from campaigns.store.models import deliveries

OPEN = (Status.QUEUED.value, Status.SENDING.value)
"""Statuses of rows still on their way (the partial index ``ix_deliveries_open``)."""


def new_owner() -> str:
    """A claim owner unique to this process, thread and call: ``host/pid/thread/token``."""
    host = socket.gethostname()[:40]
    return f"{host}/{os.getpid()}/{threading.current_thread().name[:24]}/{secrets.token_hex(4)}"


def claim(conn: Connection, ids: list[int], owner: str, *, now: datetime, until: datetime) -> list[int]:
    """Claim the still-``queued`` rows among ``ids`` for ``owner`` until ``until``; return them."""
    result = conn.execute(
        update(deliveries)
        .where(in_ids(conn, deliveries.c.id, ids), deliveries.c.status == Status.QUEUED.value)
        .values(
            status=Status.SENDING.value,
            lease_owner=owner,
            lease_until=until,
            claimed_at=now,
            call_started_at=None,
            updated_at=now,
        )
        .returning(deliveries.c.id)
    )
    return sorted(row[0] for row in result)


def release(conn: Connection, ids: list[int], owner: str, *, now: datetime) -> list[int]:
    """Hand back ``owner``'s claimed rows among ``ids`` whose call never started (to ``queued``)."""
    if not ids:
        return []
    result = conn.execute(
        update(deliveries)
        .where(
            in_ids(conn, deliveries.c.id, ids),
            deliveries.c.lease_owner == owner,
            deliveries.c.status == Status.SENDING.value,
            deliveries.c.call_started_at.is_(None),
        )
        .values(status=Status.QUEUED.value, lease_until=None, updated_at=now)
        .returning(deliveries.c.id)
    )
    return sorted(row[0] for row in result)


# PostgreSQL: the outcomes (arrays unnested into rows) and the next bracket in one
# statement, so one round trip and one commit per provider call.
_STEP = text("""
    WITH finished AS (
        UPDATE deliveries AS d
        SET status = o.status, reason = coalesce(o.reason, d.reason), reason_code = coalesce(o.code, d.reason_code),
            holds_slot = o.holds_slot, sent_at = o.sent_at, provider_message_id = o.provider_message_id,
            last_error = coalesce(o.error, d.last_error), send_at = coalesce(o.due, d.send_at),
            lease_until = NULL, call_started_at = NULL, updated_at = :now
        FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS varchar[]), CAST(:reasons AS varchar[]),
                    CAST(:codes AS varchar[]), CAST(:holds AS boolean[]), CAST(:sent AS timestamptz[]),
                    CAST(:provider_ids AS varchar[]), CAST(:errors AS varchar[]), CAST(:dues AS timestamptz[]))
             AS o(id, status, reason, code, holds_slot, sent_at, provider_message_id, error, due)
        WHERE d.id = o.id AND d.lease_owner = :owner AND d.status IN ('sending', 'unknown')
        RETURNING d.id
    ), opened AS (
        UPDATE deliveries
        SET call_started_at = :now, lease_until = :until, attempts = attempts + 1, updated_at = :now
        WHERE id = :next AND lease_owner = :owner AND status = 'sending'
        RETURNING id
    )
    SELECT (SELECT count(*) FROM finished) AS finished, (SELECT count(*) FROM opened) AS opened
""")


@dataclass(frozen=True)
class Step:
    finished: int
    """How many of the outcomes were recorded (the others' leases had been taken back)."""
    opened: bool
    """Whether the next row's call may start (False: the row is no longer this owner's)."""


def step(
    conn: Connection,
    owner: str,
    outcomes: list[Outcome],
    *,
    now: datetime,
    next_id: int | None = None,
    until: datetime | None = None,
) -> Step:
    """Record ``outcomes`` of ``owner``'s rows and, if ``next_id`` is given, open its call's
    bracket (``call_started_at``, one more attempt, lease renewed until ``until``)."""
    if not outcomes and next_id is None:
        return Step(0, False)
    reasons = [None if o.reason is None else o.reason[:500] for o in outcomes]
    errors = [None if o.error is None else o.error[:500] for o in outcomes]
    if conn.dialect.name == "postgresql":
        row = conn.execute(
            _STEP,
            {
                "ids": [o.id for o in outcomes],
                "statuses": [o.status.value for o in outcomes],
                "reasons": reasons,
                "codes": [None if o.code is None else o.code.value for o in outcomes],
                "holds": [o.holds_slot for o in outcomes],
                "sent": [o.sent_at for o in outcomes],
                "provider_ids": [o.provider_message_id for o in outcomes],
                "errors": errors,
                "dues": [o.due for o in outcomes],
                "owner": owner,
                "now": now,
                "next": next_id,
                "until": until,
            },
        ).one()
        return Step(row.finished, bool(row.opened))
    finished = 0
    if outcomes:
        finished = conn.execute(
            update(deliveries)
            .where(
                deliveries.c.id == bindparam("b_id"),
                deliveries.c.lease_owner == owner,
                or_(deliveries.c.status == Status.SENDING.value, deliveries.c.status == Status.UNKNOWN.value),
            )
            .values(
                status=bindparam("b_status"),
                reason=func.coalesce(bindparam("b_reason", type_=String), deliveries.c.reason),
                reason_code=func.coalesce(bindparam("b_code", type_=String), deliveries.c.reason_code),
                holds_slot=bindparam("b_holds_slot"),
                sent_at=bindparam("b_sent_at"),
                provider_message_id=bindparam("b_provider_message_id"),
                last_error=func.coalesce(bindparam("b_error", type_=String), deliveries.c.last_error),
                send_at=func.coalesce(bindparam("b_due", type_=deliveries.c.send_at.type), deliveries.c.send_at),
                lease_until=None,
                call_started_at=None,
                updated_at=now,
            ),
            [
                {
                    "b_id": o.id,
                    "b_status": o.status.value,
                    "b_reason": reason,
                    "b_code": None if o.code is None else o.code.value,
                    "b_holds_slot": o.holds_slot,
                    "b_sent_at": o.sent_at,
                    "b_provider_message_id": o.provider_message_id,
                    "b_error": error,
                    "b_due": o.due,
                }
                for o, reason, error in zip(outcomes, reasons, errors, strict=True)
            ],
        ).rowcount
    opened = False
    if next_id is not None:
        opened = (
            conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == next_id,
                    deliveries.c.lease_owner == owner,
                    deliveries.c.status == Status.SENDING.value,
                )
                .values(call_started_at=now, lease_until=until, attempts=deliveries.c.attempts + 1, updated_at=now)
            ).rowcount
            == 1
        )
    return Step(finished, opened)


@dataclass(frozen=True)
class Expired:
    requeued: list[tuple[int, int | None, datetime]]
    """``(id, run_id, send_at)`` of rows whose call never started, back to ``queued``."""
    unknown: int
    """Rows whose call had started, now ``unknown``."""


def expire(conn: Connection, *, now: datetime) -> Expired:
    """Settle the rows whose lease expired before ``now`` (see the module docstring)."""
    lapsed = and_(
        deliveries.c.status == Status.SENDING.value,
        or_(deliveries.c.lease_until < now, deliveries.c.lease_until.is_(None)),
    )
    requeued = conn.execute(
        update(deliveries)
        .where(lapsed, deliveries.c.call_started_at.is_(None))
        .values(status=Status.QUEUED.value, lease_until=None, updated_at=now)
        .returning(deliveries.c.id, deliveries.c.run_id, deliveries.c.send_at)
    ).all()
    reason = (
        literal("the worker ", String)
        + func.coalesce(deliveries.c.lease_owner, "?")
        + literal(" stopped during the provider call; it may have reached the provider, so it is not resent", String)
    )
    unknown = conn.execute(
        update(deliveries)
        .where(lapsed, deliveries.c.call_started_at.is_not(None))
        .values(
            status=Status.UNKNOWN.value,
            reason_code=ReasonCode.WORKER_LOST.value,
            reason=reason,
            holds_slot=True,
            lease_until=None,
            updated_at=now,
        )
    ).rowcount
    return Expired([(r.id, r.run_id, r.send_at) for r in requeued], unknown)


def live_leases(conn: Connection, run_id: int | None, *, now: datetime) -> int:
    """How many of the run's rows (triggered: ``None``) are claimed under a lease still running."""
    run = deliveries.c.run_id.is_(None) if run_id is None else deliveries.c.run_id == run_id
    count: int = conn.execute(
        select(func.count()).where(deliveries.c.status == Status.SENDING.value, run, deliveries.c.lease_until >= now)
    ).scalar_one()
    return count
