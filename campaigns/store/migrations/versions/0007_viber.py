"""The Viber channel: the members' marketing consent for it.

``members.viber_consent`` is added where ``members`` is loyalcast's own table (the
demo's, or a program that let loyalcast create it) and lacks the column; a program
that maps its own table through a view adds the column to the view (``docs/data.md``).
Viber reaches members by their ``phone``, so no new contact column.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _needs_column() -> bool:
    inspector = sa.inspect(op.get_bind())
    if "members" not in inspector.get_table_names():
        return False
    return "viber_consent" not in {column["name"] for column in inspector.get_columns("members")}


def upgrade() -> None:
    if _needs_column():
        with op.batch_alter_table("members") as batch:
            batch.add_column(sa.Column("viber_consent", sa.Boolean, nullable=False, server_default=sa.text("false")))


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "members" in inspector.get_table_names() and "viber_consent" in {c["name"] for c in inspector.get_columns("members")}:
        with op.batch_alter_table("members") as batch:
            batch.drop_column("viber_consent")
