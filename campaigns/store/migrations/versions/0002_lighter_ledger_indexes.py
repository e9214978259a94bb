"""Lighter ledger: two fewer index entries and no foreign-key check per planned row.

Planning writes one ``deliveries`` row per member, so every index entry and trigger on
that table is paid a million times by a 1,000,000-member campaign. Measured on the
benchmark database (``bench/README.md``: 1,000,000 members, 858,851 decisions, 2 cores):

- the foreign key ``deliveries.run_id -> campaign_runs.id`` fired a check per row
  (131 ms per 20,000-member chunk in EXPLAIN ANALYZE); planning 26.2 s -> 20.8 s without it.
  ``run_id`` is written only by the planner, from a run it has just claimed, and runs
  are never deleted, so the check guarded nothing loyalcast could get wrong;
- ``uq_deliveries_idempotency_key`` indexed the NULL key of every campaign row; it is
  now partial (triggered messages only);
- ``ix_deliveries_member_id`` and the partial ``ix_deliveries_cap_window`` become one
  ``ix_deliveries_member_caps`` on ``(member_id, channel, category, send_at)`` over all
  rows, carrying ``holds_slot`` (PostgreSQL ``INCLUDE``) so cap counts stay index-only.
  Together: 20.8 s -> 17.6 s.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HAS_KEY = sa.text("idempotency_key IS NOT NULL")
HOLDS_SLOT = sa.text("holds_slot")


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("fk_deliveries_run_id_campaign_runs", type_="foreignkey")
        batch.drop_constraint("uq_deliveries_idempotency_key", type_="unique")
    op.create_index(
        "uq_deliveries_idempotency_key",
        "deliveries",
        ["idempotency_key"],
        unique=True,
        postgresql_where=HAS_KEY,
        sqlite_where=HAS_KEY,
    )
    op.drop_index("ix_deliveries_member_id", table_name="deliveries")
    op.drop_index("ix_deliveries_cap_window", table_name="deliveries")
    op.create_index(
        "ix_deliveries_member_caps",
        "deliveries",
        ["member_id", "channel", "category", "send_at"],
        postgresql_include=["holds_slot"],
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_member_caps", table_name="deliveries")
    op.create_index(
        "ix_deliveries_cap_window",
        "deliveries",
        ["member_id", "channel", "category", "send_at"],
        postgresql_where=HOLDS_SLOT,
        sqlite_where=HOLDS_SLOT,
    )
    op.create_index("ix_deliveries_member_id", "deliveries", ["member_id"])
    op.drop_index("uq_deliveries_idempotency_key", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.create_unique_constraint("uq_deliveries_idempotency_key", ["idempotency_key"])
        batch.create_foreign_key("fk_deliveries_run_id_campaign_runs", "campaign_runs", ["run_id"], ["id"])
