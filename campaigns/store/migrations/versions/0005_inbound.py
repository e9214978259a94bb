"""What comes back: members' preferences, linked contacts, providers' events.

- ``preferences``: a member's own choice per (channel, category); ``*`` stands for every
  channel or every marketing category, and the most specific row decides (see
  ``campaigns.store.preferences``).
- ``contacts``: addresses loyalcast collected itself (a Telegram chat linked by
  ``/start``), used where the program's ``members`` row has none.
- ``provider_events``: delivery reports, bounces and complaints as received, unique per
  (provider, event key) so a provider's retry is recorded once.
- ``deliveries.provider_message_id`` is indexed: reports name the provider's id.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "preferences",
        sa.Column("member_id", BigId, primary_key=True, autoincrement=False),
        sa.Column("channel", sa.String(16), primary_key=True, comment="a channel, or * for every channel"),
        sa.Column("category", sa.String(50), primary_key=True, comment="a marketing category, or * for every one"),
        sa.Column("subscribed", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(32), nullable=False, comment="link, one-click, preferences, telegram, complaint"),
        sa.Column("changed_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("member_id", "channel", "category", name="pk_preferences"),
        comment="members' own choices; the most specific row for a (channel, category) decides",
    )
    op.create_table(
        "contacts",
        sa.Column("member_id", BigId, primary_key=True, autoincrement=False),
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("address", sa.String(320), nullable=False, comment="e.g. the Telegram chat id the member linked"),
        sa.Column("consent", sa.Boolean, nullable=False, comment="marketing consent given with the link"),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("linked_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("member_id", "channel", name="pk_contacts"),
        comment="addresses loyalcast collected itself; used where the program's members row has none",
    )
    op.create_index("ix_contacts_channel_address", "contacts", ["channel", "address"])
    op.create_table(
        "provider_events",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False, comment="the channel whose webhook or mailbox received it"),
        sa.Column("event_key", sa.String(200), nullable=False, comment="the provider's id of the event: a retry repeats it"),
        sa.Column("event", sa.String(16), nullable=True, comment="closed set: channels.base.EventKind; NULL: not an outcome"),
        sa.Column("provider_message_id", sa.String(200), nullable=True),
        sa.Column("recipient", sa.String(320), nullable=True),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
        sa.Column("occurred_at", Timestamp, nullable=True),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("delivery_id", BigId, nullable=True, comment="the ledger row it was matched to"),
        sa.Column("applied_at", Timestamp, nullable=True, comment="NULL: no ledger row matched yet"),
        sa.Column("raw", sa.Text, nullable=False, comment="the payload as received, for audit"),
        sa.PrimaryKeyConstraint("id", name="pk_provider_events"),
        sa.UniqueConstraint("provider", "event_key", name="uq_provider_events_provider_event_key"),
        comment="delivery reports, bounces and complaints as providers sent them",
    )
    op.create_index(
        "ix_provider_events_unmatched",
        "provider_events",
        ["provider_message_id"],
        postgresql_where=sa.text("applied_at IS NULL"),
        sqlite_where=sa.text("applied_at IS NULL"),
    )
    op.create_index("ix_provider_events_received_at", "provider_events", ["received_at"])
    op.create_index(
        "ix_deliveries_provider_message_id",
        "deliveries",
        ["provider_message_id"],
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
        sqlite_where=sa.text("provider_message_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_provider_message_id", table_name="deliveries")
    op.drop_table("provider_events")
    op.drop_table("contacts")
    op.drop_table("preferences")
