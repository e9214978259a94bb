"""Leases: the ledger owns a message from decision to outcome.

``deliveries`` gains the columns of a claim (``lease_owner``, ``lease_until``,
``claimed_at``: a worker claims a row in the write that comes right before its provider
call) and ``last_error`` (the latest failed attempt, kept apart from the reason). A row
whose lease expired ends ``unknown`` (see ``campaigns.store.leases``).

``campaign_runs`` gains ``lease_until``: a planner renews it per chunk, so a run left in
``planning`` by a dead planner (or by a plan message that never reached a worker) is
found and planned again.

The index on ``(run_id, status)`` is replaced by a partial index over the rows still on
their way (``queued``, ``sending``): what batches, leases and the reconciler look up,
small however long the ledger grows. Rows an earlier version left in ``sending`` get an
expired lease: they may have reached the provider, so they end ``unknown``, not sent
twice.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)

_OPEN = "status IN ('queued', 'sending')"


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(100), nullable=True, comment="worker holding the claim"))
        batch.add_column(sa.Column("lease_until", Timestamp, nullable=True, comment="the claim expires at"))
        batch.add_column(sa.Column("claimed_at", Timestamp, nullable=True, comment="latest claim by a worker"))
        batch.add_column(sa.Column("last_error", sa.String(500), nullable=True, comment="latest failed attempt"))
        batch.drop_index("ix_deliveries_run_id_status")
        batch.create_index(
            "ix_deliveries_open",
            ["status", "run_id", "send_at"],
            postgresql_where=sa.text(_OPEN),
            sqlite_where=sa.text(_OPEN),
        )
    # Rows a worker of an earlier version left in `sending` may have reached the
    # provider: their lease is over, so the reconciler ends them `unknown` rather than
    # sending them twice.
    op.execute("UPDATE deliveries SET lease_until = updated_at WHERE status = 'sending'")
    with op.batch_alter_table("campaign_runs") as batch:
        batch.add_column(sa.Column("lease_until", Timestamp, nullable=True, comment="the planner's lease expires at"))


def downgrade() -> None:
    with op.batch_alter_table("campaign_runs") as batch:
        batch.drop_column("lease_until")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_open")
        batch.create_index("ix_deliveries_run_id_status", ["run_id", "status"])
        for column in ("last_error", "claimed_at", "lease_until", "lease_owner"):
            batch.drop_column(column)
