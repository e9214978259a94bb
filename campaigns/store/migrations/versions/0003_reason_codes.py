"""Reason codes: every ledger row says why in a closed code beside its human text.

``reason_code`` is one of ``campaigns.store.ledger.ReasonCode``; ``cap_rule`` names the
frequency cap rule that capped or deferred the row. Code reads these two columns and
never the text. Rows written before this revision get a code from their status (the
closest the old text allows without parsing it): ``queued``/``sending``/``sent``/
``delivered`` -> ``eligible``, ``failed`` -> ``legacy``, and each decision not to send
its own status's code.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_FROM_STATUS = {
    "queued": "eligible",
    "sending": "eligible",
    "sent": "eligible",
    "delivered": "eligible",
    "failed": "legacy",
    "held_out": "held_out",
    "capped": "capped",
    "no_consent": "no_consent",
    "no_contact": "no_contact",
    "suppressed": "suppressed",
    "duplicate": "duplicate_key",
    "stale": "stale",
}


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column(
                "reason_code",
                sa.String(32),
                nullable=False,
                server_default="legacy",
                comment="closed set: campaigns.store.ledger.ReasonCode",
            )
        )
        batch.add_column(
            sa.Column("cap_rule", sa.String(200), nullable=True, comment="the cap rule that capped or deferred the row")
        )
    deliveries = sa.table("deliveries", sa.column("status", sa.String), sa.column("reason_code", sa.String))
    op.execute(
        deliveries.update().values(
            reason_code=sa.case(*((deliveries.c.status == s, c) for s, c in _FROM_STATUS.items()), else_="legacy")
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("cap_rule")
        batch.drop_column("reason_code")
