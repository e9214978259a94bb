"""Per-member locks that serialize cap decisions.

Every writer that reserves, moves or gives back a member's cap slot (the planner, a
triggered message, a reroute, a postponed row) takes its members' locks first, in
``member_id`` order, so two of them never decide one member at once and never deadlock.

- PostgreSQL: transaction-level advisory locks, one per bucket of :data:`BUCKET`
  consecutive member ids (a planning chunk of 20,000 members takes about 20, a
  triggered message one), taken in bucket order. They live in the server's memory:
  nothing is written, where locking 20,000 ``cap_locks`` rows ``FOR UPDATE`` wrote every
  row's header (a sixth of a chunk's planning time, measured in bench/README.md). Two
  writers whose members share a bucket wait for each other, which the per-member rows
  did not make them do; they are one planning chunk and a triggered message at most.
- SQLite: the ``cap_locks`` insert makes the transaction the database's single writer.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from campaigns.store.engine import upsert_insert
from campaigns.store.models import cap_locks, members

BUCKET = 1024
"""Member ids per PostgreSQL advisory lock."""
LOCK_SPACE = 0x4C43
"""The first key of loyalcast's advisory locks ("LC"), apart from other applications'."""
_LOCK_BUCKETS = text(
    "SELECT count(pg_advisory_xact_lock(:space, b)) FROM "
    "(SELECT b FROM unnest(CAST(:buckets AS integer[])) AS b ORDER BY b OFFSET 0) AS ordered"
)


def _buckets(conn: Connection, buckets: Iterable[int]) -> None:
    ordered = sorted({bucket % 2**31 for bucket in buckets})
    conn.execute(_LOCK_BUCKETS, {"space": LOCK_SPACE, "buckets": ordered})


def lock_member_ids(conn: Connection, member_ids: list[int]) -> None:
    """:func:`lock_members` for the members ``member_ids``."""
    if not member_ids:
        return
    if conn.dialect.name == "postgresql":
        _buckets(conn, (member_id // BUCKET for member_id in member_ids))
        return
    conn.execute(
        upsert_insert(conn, cap_locks)
        .from_select(["member_id"], select(members.c.id).where(members.c.id.in_(member_ids)).order_by(members.c.id))
        .on_conflict_do_nothing()
    )


def lock_members(conn: Connection, member_range: tuple[int, int]) -> None:
    """Serialize cap decisions for the members ``member_range`` (first and last id,
    inclusive) for the rest of the transaction."""
    low, high = member_range
    if conn.dialect.name == "postgresql":
        _buckets(conn, range(low // BUCKET, high // BUCKET + 1))
        return
    conn.execute(
        upsert_insert(conn, cap_locks)
        .from_select(["member_id"], select(members.c.id).where(members.c.id.between(low, high)).order_by(members.c.id))
        .on_conflict_do_nothing()
    )
