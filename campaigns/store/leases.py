"""Claims under a lease, one provider call at a time.

The ledger, not the queue, owns a message from decision to outcome. A row's way:

``queued`` --claim--> ``sending`` (``lease_owner``, ``lease_until``, ``claimed_at``, one
more attempt) --finish--> an outcome (``sent``, ``failed``, ``unknown``, ``stale``, or
``queued`` again for a retry).

A worker claims a row at the moment it calls the provider for it, in the same write
that records the outcome of its previous row (``step``): the write is durable before the
call, so every ``sending`` row is a call that may be in flight, and each sending thread
has at most one. After a crash, the rows the dead worker had not reached are still
``queued`` and are simply sent again; its rows in flight end ``unknown`` when their lease
expires (``expire``): they keep their cap slot and are never resent blindly, since the
member may have the message.

Every write is fenced: a row is claimed only from ``queued``, and an outcome lands only
on a row its writer holds (a late true outcome may still replace ``unknown``).

The price is one durable round trip to the database per provider call (before leases a
batch claimed its 500 rows in one statement and wrote outcomes 100 at a time). Measured
with ``make bench-small`` (2 cores shared by PostgreSQL, the workers and sinks that
answer in microseconds): 79% of the transport ceiling before, 52-58% with it, PostgreSQL
CPU 0.15 -> 0.42-0.52 ms a message. Single-threaded the write adds its round trip:
0.24 -> 0.45-0.54 ms of worker CPU and 0.07 -> 0.30-0.37 ms of PostgreSQL CPU a message
(null transport). A separate claim of a group of rows before the calls (tried first) cost
the same and needed a second kind of ``sending`` row, so it was not kept.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import String, bindparam, func, literal, or_, select, text, update
from sqlalchemy.engine import Connection

from campaigns.store.ledger import Outcome, ReasonCode, Status, in_status
from campaigns.store.models import deliveries

if TYPE_CHECKING:
    import psycopg


def new_owner() -> str:
    """A claim owner unique to this process, thread and batch: ``host/pid/thread/token``."""
    host = socket.gethostname()[:40]
    return f"{host}/{os.getpid()}/{threading.current_thread().name[:24]}/{secrets.token_hex(4)}"


# The second half of both statements below: claim the next row (if still queued) and
# say what the first half recorded.
_CLAIM_NEXT = """
    ), claimed AS (
        UPDATE deliveries
        SET status = 'sending', lease_owner = :owner, lease_until = :until, claimed_at = :now,
            attempts = attempts + 1, updated_at = :now
        WHERE id = :next AND status = 'queued'
        RETURNING id
    )
    SELECT (SELECT count(*) FROM finished) AS finished, (SELECT count(*) FROM claimed) AS claimed
"""

# PostgreSQL, the common case (at most one outcome, the previous call's): one statement,
# so one round trip and one commit per provider call. Sent straight to psycopg and
# prepared once per connection: SQLAlchemy's statement handling cost three times the
# database's own work here (0.17 against 0.04 ms of worker CPU a step, measured).
_STEP_ONE = re.sub(
    r":(\w+)",
    r"%(\1)s",
    """
    WITH finished AS (
        UPDATE deliveries AS d
        SET status = :status, reason = coalesce(:reason, d.reason), reason_code = coalesce(:code, d.reason_code),
            holds_slot = :holds, sent_at = :sent, provider_message_id = :provider_id,
            last_error = coalesce(:error, d.last_error), send_at = coalesce(:due, d.send_at),
            lease_until = NULL, updated_at = :now
        WHERE d.id = :id AND d.lease_owner = :owner AND d.status IN ('sending', 'unknown')
        RETURNING d.id
"""
    + _CLAIM_NEXT,
)

# PostgreSQL, several outcomes at once (rows that never reached a call: stale, template
# errors; the end of a batch): arrays unnested into rows.
_STEP_MANY = text(
    """
    WITH finished AS (
        UPDATE deliveries AS d
        SET status = o.status, reason = coalesce(o.reason, d.reason), reason_code = coalesce(o.code, d.reason_code),
            holds_slot = o.holds_slot, sent_at = o.sent_at, provider_message_id = o.provider_message_id,
            last_error = coalesce(o.error, d.last_error), send_at = coalesce(o.due, d.send_at),
            lease_until = NULL, updated_at = :now
        FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS varchar[]), CAST(:reasons AS varchar[]),
                    CAST(:codes AS varchar[]), CAST(:holds AS boolean[]), CAST(:sent AS timestamptz[]),
                    CAST(:provider_ids AS varchar[]), CAST(:errors AS varchar[]), CAST(:dues AS timestamptz[]))
             AS o(id, status, reason, code, holds_slot, sent_at, provider_message_id, error, due)
        WHERE d.id = o.id AND d.lease_owner = :owner AND d.status IN ('sending', 'unknown')
        RETURNING d.id
"""
    + _CLAIM_NEXT
)


@dataclass(frozen=True)
class Step:
    finished: int
    """How many of the outcomes were recorded (the others' rows were no longer held)."""
    claimed: bool
    """Whether the next row is now this owner's to send (False: not ``queued`` any more)."""


def step(
    conn: Connection,
    owner: str,
    outcomes: list[Outcome],
    *,
    now: datetime,
    next_id: int | None = None,
    until: datetime | None = None,
) -> Step:
    """Record ``outcomes`` of ``owner``'s rows and, if ``next_id`` is given, claim it for
    its provider call until ``until``. On PostgreSQL one statement; with ``conn`` in
    autocommit, one commit, durable before the call."""
    if not outcomes and next_id is None:
        return Step(0, False)
    reasons = [None if o.reason is None else o.reason[:500] for o in outcomes]
    errors = [None if o.error is None else o.error[:500] for o in outcomes]
    if conn.dialect.name == "postgresql" and len(outcomes) <= 1:
        one = outcomes[0] if outcomes else None
        cursor = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection).cursor()
        cursor.execute(
            _STEP_ONE,
            {
                "id": None if one is None else one.id,
                "status": None if one is None else one.status.value,
                "reason": reasons[0] if one else None,
                "code": None if one is None or one.code is None else one.code.value,
                "holds": None if one is None else one.holds_slot,
                "sent": None if one is None else one.sent_at,
                "provider_id": None if one is None else one.provider_message_id,
                "error": errors[0] if one else None,
                "due": None if one is None else one.due,
                "owner": owner,
                "now": now,
                "next": next_id,
                "until": until,
            },
            prepare=True,
        )
        finished, claimed = cursor.fetchone() or (0, 0)
        return Step(int(finished), bool(claimed))
    if conn.dialect.name == "postgresql":
        row = conn.execute(
            _STEP_MANY,
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
        return Step(row.finished, bool(row.claimed))
    finished = _finish_each(conn, owner, outcomes, reasons, errors, now) if outcomes else 0
    claimed = False
    if next_id is not None:
        claimed = (
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == next_id, deliveries.c.status == Status.QUEUED.value)
                .values(
                    status=Status.SENDING.value,
                    lease_owner=owner,
                    lease_until=until,
                    claimed_at=now,
                    attempts=deliveries.c.attempts + 1,
                    updated_at=now,
                )
            ).rowcount
            == 1
        )
    return Step(finished, claimed)


def _finish_each(
    conn: Connection, owner: str, outcomes: list[Outcome], reasons: list[str | None], errors: list[str | None], now: datetime
) -> int:
    """The outcomes, one UPDATE executed for many rows (SQLite)."""
    finished: int = conn.execute(
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
    return finished


def settle_each(conn: Connection, outcomes: list[Outcome], *, now: datetime) -> int:
    """Give each still-``queued`` row its own outcome (one UPDATE executed for many)."""
    if not outcomes:
        return 0
    settled: int = conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"), deliveries.c.status == Status.QUEUED.value)
        .values(
            status=bindparam("b_status"),
            reason=func.coalesce(bindparam("b_reason", type_=String), deliveries.c.reason),
            reason_code=func.coalesce(bindparam("b_code", type_=String), deliveries.c.reason_code),
            holds_slot=bindparam("b_holds_slot"),
            last_error=func.coalesce(bindparam("b_error", type_=String), deliveries.c.last_error),
            updated_at=now,
        ),
        [
            {
                "b_id": o.id,
                "b_status": o.status.value,
                "b_reason": None if o.reason is None else o.reason[:500],
                "b_code": None if o.code is None else o.code.value,
                "b_holds_slot": o.holds_slot,
                "b_error": None if o.error is None else o.error[:500],
            }
            for o in outcomes
        ],
    ).rowcount
    return settled


def expire(conn: Connection, *, now: datetime) -> int:
    """End ``unknown`` the rows whose lease expired before ``now``: their worker stopped
    (or hung) during the provider call. Returns how many."""
    reason = (
        literal("the worker ", String)
        + func.coalesce(deliveries.c.lease_owner, "?")
        + literal(" stopped during the provider call; it may have reached the provider, so it is not resent", String)
    )
    unknown: int = conn.execute(
        update(deliveries)
        .where(
            in_status(Status.SENDING),
            or_(deliveries.c.lease_until < now, deliveries.c.lease_until.is_(None)),
        )
        .values(
            status=Status.UNKNOWN.value,
            reason_code=ReasonCode.WORKER_LOST.value,
            reason=reason,
            holds_slot=True,
            lease_until=None,
            updated_at=now,
        )
    ).rowcount
    return unknown


def live_leases(conn: Connection, run_id: int | None, *, now: datetime) -> int:
    """How many of the run's rows (triggered: ``None``) are in a provider call under a live lease."""
    run = deliveries.c.run_id.is_(None) if run_id is None else deliveries.c.run_id == run_id
    count: int = conn.execute(
        select(func.count()).where(in_status(Status.SENDING), run, deliveries.c.lease_until >= now)
    ).scalar_one()
    return count
