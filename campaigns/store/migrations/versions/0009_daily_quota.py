"""Providers' daily quotas: ``quota_days`` counts what workers took from each day's quota.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_days",
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("day", sa.Date, nullable=False, comment="the provider's day (its quota_zone's calendar)"),
        sa.Column("used", sa.Integer, nullable=False, comment="messages workers took from the day's quota"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "day", name="pk_quota_days"),
        comment="providers' daily quotas as used: workers reserve blocks of a day's quota here",
    )


def downgrade() -> None:
    op.drop_table("quota_days")
