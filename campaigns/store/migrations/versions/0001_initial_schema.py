"""Initial schema: loyalcast's tables, and the program's tables where absent.

loyalcast owns campaign_runs, deliveries, suppressions and cap_locks. The program's
tables (members, balances, point_expirations, segment_members) are created only when
the database has none of that name, which is the case for the embedded demo and for a
standalone install; a program that already has them (or views of them) keeps its own.
Downgrade drops loyalcast's tables only.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)
Points = sa.Numeric(precision=14, scale=2, asdecimal=False)
FALSE = sa.text("false")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names()) | set(sa.inspect(op.get_bind()).get_view_names())
    _create_program_tables(existing)

    op.create_table(
        "campaign_runs",
        sa.Column("id", BigId, nullable=False),
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column("occasion", sa.String(100), nullable=False, comment="fire time or program-local date"),
        sa.Column("as_of", Timestamp, nullable=False, comment="the instant the plan was evaluated at"),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("started_by", sa.String(100), nullable=False),
        sa.Column("dry_run", sa.Boolean(), server_default=FALSE, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, comment="planning, planned, skipped"),
        sa.Column("considered", sa.Integer(), server_default="0", nullable=False),
        sa.Column("finished_planning_at", Timestamp, nullable=True),
        sa.Column("note", sa.String(500), server_default="", nullable=False, comment="why skipped, or caught up late"),
        sa.PrimaryKeyConstraint("id", name="pk_campaign_runs"),
        sa.UniqueConstraint("campaign", "occasion", name="uq_campaign_runs_campaign_occasion"),
    )
    op.create_table(
        "cap_locks",
        sa.Column("member_id", BigId, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("member_id", name="pk_cap_locks"),
        comment="one row per member ever planned; planners lock these rows in member_id order",
    )
    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("channel", "address", name="pk_suppressions"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", BigId, nullable=False),
        sa.Column("run_id", BigId, nullable=True),
        sa.Column("member_id", BigId, nullable=False),
        sa.Column("channel", sa.String(16), nullable=True, comment="NULL when no channel was reachable"),
        sa.Column("category", sa.String(50), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), server_default="", nullable=False),
        sa.Column("address", sa.String(320), nullable=True, comment="email, E.164 phone or chat id used"),
        sa.Column("holds_slot", sa.Boolean(), server_default=FALSE, nullable=False, comment="counts against frequency caps"),
        sa.Column("send_at", Timestamp, nullable=False, comment="when the message is due"),
        sa.Column("deferred_from", Timestamp, nullable=True, comment="when it would have been due had a cap not deferred it"),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("sent_at", Timestamp, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("provider_message_id", sa.String(200), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True, comment="triggered messages: the caller's key"),
        sa.Column("data", sa.JSON(), nullable=True, comment="triggered messages: the caller's template data"),
        sa.ForeignKeyConstraint(["run_id"], ["campaign_runs.id"], name="fk_deliveries_run_id_campaign_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("run_id", "member_id", name="uq_deliveries_run_id_member_id"),
        sa.UniqueConstraint("idempotency_key", name="uq_deliveries_idempotency_key"),
    )
    op.create_table(
        "ladder_marks",
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column("member_id", BigId, autoincrement=False, nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=False, comment="expiry date on the member's clock"),
        sa.Column("stage", sa.Integer(), nullable=False, comment="days before expiry"),
        sa.Column("delivery_id", BigId, nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"], name="fk_ladder_marks_delivery_id_deliveries"),
        sa.PrimaryKeyConstraint("campaign", "member_id", "expires_on", "stage", name="pk_ladder_marks"),
        comment="expiring-points reminders already given: at most one per (expiry date, stage)",
    )
    op.create_index(
        "ix_deliveries_cap_window",
        "deliveries",
        ["member_id", "channel", "category", "send_at"],
        postgresql_where=sa.text("holds_slot"),
        sqlite_where=sa.text("holds_slot"),
    )
    op.create_index("ix_deliveries_member_id", "deliveries", ["member_id"])
    op.create_index("ix_deliveries_run_id_status", "deliveries", ["run_id", "status"])


def _create_program_tables(existing: set[str]) -> None:
    if "members" not in existing:
        op.create_table(
            "members",
            sa.Column("id", BigId, autoincrement=False, nullable=False),
            sa.Column("first_name", sa.String(100), server_default="", nullable=False),
            sa.Column("locale", sa.String(16), nullable=True, comment="ru, en, ...; NULL: program default"),
            sa.Column("timezone", sa.String(64), nullable=True, comment="IANA name; NULL: program time zone"),
            sa.Column("tier", sa.String(32), server_default="basic", nullable=False),
            sa.Column("email", sa.String(320), nullable=True),
            sa.Column("phone", sa.String(20), nullable=True, comment="E.164, e.g. +79161234567"),
            sa.Column("telegram_chat_id", sa.BigInteger(), nullable=True),
            sa.Column("email_consent", sa.Boolean(), server_default=FALSE, nullable=False),
            sa.Column("sms_consent", sa.Boolean(), server_default=FALSE, nullable=False),
            sa.Column("telegram_consent", sa.Boolean(), server_default=FALSE, nullable=False),
            sa.Column("last_purchase_at", Timestamp, nullable=True),
            sa.PrimaryKeyConstraint("id", name="pk_members"),
        )
    if "balances" not in existing:
        op.create_table(
            "balances",
            sa.Column("member_id", BigId, autoincrement=False, nullable=False),
            sa.Column("points", Points, nullable=False),
            sa.PrimaryKeyConstraint("member_id", name="pk_balances"),
        )
    if "point_expirations" not in existing:
        op.create_table(
            "point_expirations",
            sa.Column("id", BigId, nullable=False),
            sa.Column("member_id", BigId, nullable=False),
            sa.Column("points", Points, nullable=False),
            sa.Column("expires_at", Timestamp, nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_point_expirations"),
        )
        op.create_index("ix_point_expirations_member_id", "point_expirations", ["member_id"])
        op.create_index("ix_point_expirations_expires_at_member_id", "point_expirations", ["expires_at", "member_id"])
    if "segment_members" not in existing:
        op.create_table(
            "segment_members",
            sa.Column("segment", sa.String(100), nullable=False),
            sa.Column("member_id", BigId, autoincrement=False, nullable=False),
            sa.PrimaryKeyConstraint("segment", "member_id", name="pk_segment_members"),
        )


def downgrade() -> None:
    op.drop_table("ladder_marks")
    op.drop_table("deliveries")
    op.drop_table("suppressions")
    op.drop_table("cap_locks")
    op.drop_table("campaign_runs")
