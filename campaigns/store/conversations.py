"""Members' conversations on channels with a session window (``conversations``).

A member who writes to us on WhatsApp opens its customer service window: for 24 hours
(``ChannelSpec.session_window``) the provider takes free text from us; outside it only
an approved template. The web service records each member message here as it arrives
(the latest instant per address wins, whatever order messages come in); the deliverer
reads the instant with the batch it loads, in the same query.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy.engine import Connection

from campaigns.store.engine import upsert_insert
from campaigns.store.models import conversations

SESSION_MARGIN = timedelta(minutes=10)
"""A window closing sooner than this is treated as closed: the message may wait in a
batch or a retry, and free text arriving after the window fails at the provider."""


def record(conn: Connection, channel: str, address: str, at: datetime) -> None:
    """The member at ``address`` wrote on ``channel`` at ``at``."""
    insert = upsert_insert(conn, conversations).values(channel=channel, address=address, last_inbound_at=at)
    # SQLite's max() of two arguments is PostgreSQL's greatest().
    later = func.greatest if conn.dialect.name == "postgresql" else func.max
    latest = later(conversations.c.last_inbound_at, insert.excluded.last_inbound_at)
    conn.execute(insert.on_conflict_do_update(index_elements=["channel", "address"], set_={"last_inbound_at": latest}))


def is_open(last_inbound_at: datetime | None, window: timedelta | None, now: datetime) -> bool:
    """Whether a session that began with a member message at ``last_inbound_at`` still
    takes free text at ``now`` (with :data:`SESSION_MARGIN` to spare)."""
    if last_inbound_at is None or window is None:
        return False
    return now < last_inbound_at + window - SESSION_MARGIN
