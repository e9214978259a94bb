"""Per-member locks that serialize cap decisions.

Every writer that reserves, moves or gives back a member's cap slot (the planner, a
triggered message, a reroute, a postponed row) takes its members' locks first, in
``member_id`` order, so two of them never decide one member at once and never deadlock.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from campaigns.store.engine import upsert_insert
from campaigns.store.models import cap_locks, members


def lock_member_ids(conn: Connection, member_ids: list[int]) -> None:
    """:func:`lock_members` for the members ``member_ids`` (sorted, so two lockers take
    them in the same order)."""
    if not member_ids:
        return
    conn.execute(
        upsert_insert(conn, cap_locks)
        .from_select(["member_id"], select(members.c.id).where(members.c.id.in_(member_ids)).order_by(members.c.id))
        .on_conflict_do_nothing()
    )
    if conn.dialect.name == "postgresql":
        locked = (
            select(cap_locks.c.member_id)
            .where(cap_locks.c.member_id.in_(member_ids))
            .order_by(cap_locks.c.member_id)
            .with_for_update()
            .subquery()
        )
        conn.execute(select(func.count()).select_from(locked))


def lock_members(conn: Connection, member_range: tuple[int, int]) -> None:
    """Serialize cap decisions per member for the rest of the transaction.

    PostgreSQL: one ``cap_locks`` row per member, locked ``FOR UPDATE`` in id order.
    SQLite: the INSERT makes this transaction the database's single writer at once.
    """
    conn.execute(
        upsert_insert(conn, cap_locks)
        .from_select(
            ["member_id"],
            select(members.c.id).where(members.c.id.between(*member_range)).order_by(members.c.id),
        )
        .on_conflict_do_nothing()
    )
    if conn.dialect.name == "postgresql":
        locked = (
            select(cap_locks.c.member_id)
            .where(cap_locks.c.member_id.between(*member_range))
            .order_by(cap_locks.c.member_id)
            .with_for_update()
            .subquery()
        )
        conn.execute(select(func.count()).select_from(locked))
