"""Addresses loyalcast collected itself (``contacts``): a Telegram chat a member linked
by following their signed ``/start`` link.

The program's ``members`` row stays the first source: a collected address is used only
where that column is empty (see ``campaigns.planning.decisions``). Linking gives the
channel's marketing consent (the member asked for the bot); ``/stop`` takes it back and
records an unsubscribe from every category on the channel (``preferences``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from campaigns.store.engine import upsert_insert
from campaigns.store.models import contacts


def link(conn: Connection, member_id: int, channel: str, address: str, *, source: str, now: datetime) -> None:
    """Link ``address`` to the member on ``channel`` with consent (replacing an earlier one)."""
    row = {"address": address, "consent": True, "source": source, "updated_at": now}
    insert = upsert_insert(conn, contacts).values(member_id=member_id, channel=channel, linked_at=now, **row)
    conn.execute(insert.on_conflict_do_update(index_elements=["member_id", "channel"], set_={**row, "linked_at": now}))


def withdraw(conn: Connection, channel: str, address: str, now: datetime) -> list[int]:
    """Take back the consent of every member linked to ``address``; their ids."""
    result = conn.execute(
        update(contacts)
        .where(contacts.c.channel == channel, contacts.c.address == address)
        .values(consent=False, updated_at=now)
        .returning(contacts.c.member_id)
    )
    return sorted(row.member_id for row in result)


def linked(conn: Connection, member_id: int) -> list[Any]:
    """The member's collected addresses (for ``why`` and the preference page)."""
    return list(conn.execute(select(contacts).where(contacts.c.member_id == member_id).order_by(contacts.c.channel)))
