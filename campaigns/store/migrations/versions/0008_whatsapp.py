"""The WhatsApp channel: the members' marketing consent for it, and their conversations.

``members.whatsapp_consent`` is added where ``members`` is loyalcast's own table (the
demo's, or a program that let loyalcast create it) and lacks the column; a program that
maps its own table through a view adds the column to the view (``docs/data.md``).
WhatsApp reaches members by their ``phone``, so no new contact column.

``conversations`` keeps, per (channel, address), when the member last wrote to us: on
WhatsApp that opens a 24-hour window in which free text may go instead of an approved
template.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def _has_column(name: str) -> bool:
    inspector = sa.inspect(op.get_bind())
    return "members" in inspector.get_table_names() and name in {c["name"] for c in inspector.get_columns("members")}


def upgrade() -> None:
    if "members" in sa.inspect(op.get_bind()).get_table_names() and not _has_column("whatsapp_consent"):
        with op.batch_alter_table("members") as batch:
            batch.add_column(sa.Column("whatsapp_consent", sa.Boolean, nullable=False, server_default=sa.text("false")))
    op.create_table(
        "conversations",
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("address", sa.String(320), nullable=False, comment="the member's address on the channel (E.164 phone)"),
        sa.Column("last_inbound_at", Timestamp, nullable=False, comment="when the member last wrote to us"),
        sa.PrimaryKeyConstraint("channel", "address", name="pk_conversations"),
        comment="members' own messages on channels with a session window: free text may follow within it",
    )


def downgrade() -> None:
    op.drop_table("conversations")
    if _has_column("whatsapp_consent"):
        with op.batch_alter_table("members") as batch:
            batch.drop_column("whatsapp_consent")
