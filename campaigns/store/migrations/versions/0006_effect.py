"""Measuring effect: the program's point movements and purchases, and control groups.

- ``point_movements`` and ``purchases``: optional program tables ``loyalcast lift``
  reads (created here only where absent: a program that has them, or views of them,
  keeps its own; see ``docs/data.md``);
- ``control_draws``: each member's place in a control group (a campaign's holdout, or
  one period of the global control group), drawn once and kept;
- ``control_strata``: running counts per (draw, stratum), so the members drawn next keep
  every stratum's held-out share exact;
- ``run_summaries``: the console's snapshot of a run (derived from the ledger, replaced
  when stale), so a run page over a million rows answers from one small row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Points = sa.Numeric(precision=14, scale=2, asdecimal=False)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names()) | set(inspector.get_view_names())
    if "point_movements" not in existing:
        op.create_table(
            "point_movements",
            sa.Column("id", BigId, nullable=False),
            sa.Column("member_id", BigId, nullable=False),
            sa.Column("occurred_at", Timestamp, nullable=False),
            sa.Column("kind", sa.String(16), nullable=False, comment="earn, redeem or expire"),
            sa.Column("points", Points, nullable=False, comment="positive; kind says which way"),
            sa.PrimaryKeyConstraint("id", name="pk_point_movements"),
            comment="optional: the program's point movements, read by `loyalcast lift`",
        )
        op.create_index("ix_point_movements_member_id_occurred_at", "point_movements", ["member_id", "occurred_at"])
    if "purchases" not in existing:
        op.create_table(
            "purchases",
            sa.Column("id", BigId, nullable=False),
            sa.Column("member_id", BigId, nullable=False),
            sa.Column("occurred_at", Timestamp, nullable=False),
            sa.Column("amount", Points, nullable=False, comment="in the program's currency"),
            sa.PrimaryKeyConstraint("id", name="pk_purchases"),
            comment="optional: the program's purchases, read by `loyalcast lift`",
        )
        op.create_index("ix_purchases_member_id_occurred_at", "purchases", ["member_id", "occurred_at"])
    op.create_table(
        "control_draws",
        sa.Column("draw", sa.String(200), nullable=False, comment="campaign:<salt> or global:<salt>:<period>"),
        sa.Column("member_id", BigId, autoincrement=False, nullable=False),
        sa.Column("stratum", sa.String(200), nullable=False, comment="the member's tier (and extra column) when drawn"),
        sa.Column("held", sa.Boolean, nullable=False, comment="in the control group"),
        sa.Column("drawn_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("draw", "member_id", name="pk_control_draws"),
        comment="each member's place in a control group, drawn once and kept",
    )
    op.create_table(
        "control_strata",
        sa.Column("draw", sa.String(200), nullable=False),
        sa.Column("stratum", sa.String(200), nullable=False),
        sa.Column("members", sa.BigInteger, nullable=False, comment="members drawn in the stratum so far"),
        sa.Column("held", sa.BigInteger, nullable=False, comment="of them, held out"),
        sa.PrimaryKeyConstraint("draw", "stratum", name="pk_control_strata"),
        comment="running counts per stratum: the next members drawn keep its held share exact",
    )

    op.create_table(
        "run_summaries",
        sa.Column("run_id", BigId, autoincrement=False, nullable=False),
        sa.Column("computed_at", Timestamp, nullable=False),
        sa.Column("body", sa.JSON, nullable=False, comment="counts, sends per hour, top reasons, SMS estimate"),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_summaries"),
        comment="the console's snapshot of a run's ledger rows, derived and replaceable (the ledger is the truth)",
    )


def downgrade() -> None:
    op.drop_table("run_summaries")
    op.drop_table("control_strata")
    op.drop_table("control_draws")
