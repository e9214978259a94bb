"""A ledger that can forget: monthly partitions, idempotency keys of their own, HOT claims.

PostgreSQL: ``deliveries`` becomes a table partitioned by month of ``created_at``
(``deliveries_pYYYYMM``), so ``[ledger] retention`` drops (or detaches) whole months and
cap lookups read only the months a window can reach. Its rows are copied over, the
``id`` sequence kept. A partitioned table's unique indexes must hold the partition key:

- a run's rows all take the run's ``started_at`` as ``created_at`` (rows written before
  this revision are given it as they are copied), so ``(run_id, member_id, created_at)``
  is unique exactly when ``(run_id, member_id)`` is: a rerun still decides nothing new;
- idempotency keys move to a table of their own, ``idempotency_keys`` (the key is its
  primary key, unique across every month); ``deliveries.idempotency_key`` keeps a plain
  index for lookups;
- ``ladder_marks`` loses its foreign key to ``deliveries`` (rows expire with their month).

Both databases: ``is_open`` (stored, generated from ``status``) replaces ``status`` in the
index of rows on their way, so no index reads ``status``: a claim (queued → sending) and
a delivery report (sent → delivered) are HOT updates, written beside the row without new
index entries (PostgreSQL partitions keep a quarter of each page free for them).

On a large ledger the copy takes a while (about 450,000 rows a second on two cores):
stop workers, web and scheduler while ``loyalcast db upgrade`` runs.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FILLFACTOR = 75
COLUMN_NAMES = (
    "id run_id member_id channel category template status reason reason_code cap_rule address holds_slot send_at "
    "deferred_from created_at updated_at sent_at attempts provider_message_id lease_owner lease_until claimed_at "
    "last_error idempotency_key data"
).split()
COLUMNS = ", ".join(COLUMN_NAMES)
IS_OPEN = "status IN ('queued', 'sending')"


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(200), nullable=False, comment="the caller's idempotency key of a triggered message"),
        sa.Column(
            "delivery_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
            comment="the ledger row the key decided (NULL while deciding)",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_idempotency_keys"),
        comment="every idempotency key used, unique across the ledger's partitions; kept as long as the ledger",
    )
    op.execute(
        "INSERT INTO idempotency_keys (key, delivery_id, created_at) "
        "SELECT idempotency_key, id, created_at FROM deliveries WHERE idempotency_key IS NOT NULL"
    )
    with op.batch_alter_table("ladder_marks") as batch:
        batch.drop_constraint("fk_ladder_marks_delivery_id_deliveries", type_="foreignkey")
    if op.get_bind().dialect.name == "postgresql":
        _partition()
    else:
        _sqlite_upgrade()


def _months(first: date, last: date) -> list[date]:
    months, current = [], first.replace(day=1)
    while current <= last:
        months.append(current)
        current = date(current.year + current.month // 12, current.month % 12 + 1, 1)
    return months


def _partition() -> None:
    bind = op.get_bind()
    op.execute(
        f"""
        CREATE TABLE deliveries_partitioned (
            id bigint NOT NULL DEFAULT nextval('deliveries_id_seq'),
            run_id bigint,
            member_id bigint NOT NULL,
            channel varchar(16),
            category varchar(50) NOT NULL,
            template varchar(100) NOT NULL,
            status varchar(16) NOT NULL,
            reason varchar(500) NOT NULL DEFAULT '',
            reason_code varchar(32) NOT NULL DEFAULT 'legacy',
            cap_rule varchar(200),
            address varchar(320),
            holds_slot boolean NOT NULL DEFAULT false,
            send_at timestamptz NOT NULL,
            deferred_from timestamptz,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            sent_at timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            provider_message_id varchar(200),
            lease_owner varchar(100),
            lease_until timestamptz,
            claimed_at timestamptz,
            last_error varchar(500),
            idempotency_key varchar(200),
            data json,
            is_open boolean GENERATED ALWAYS AS ({IS_OPEN}) STORED
        ) PARTITION BY RANGE (created_at)
        """
    )
    # Months from the oldest row (as copied: a run's rows at its start) to next month.
    oldest = bind.execute(
        sa.text("SELECT min(coalesce(r.started_at, d.created_at)) FROM deliveries d LEFT JOIN campaign_runs r ON r.id = d.run_id")
    ).scalar()
    now = datetime.now(UTC)
    first = min(oldest, now) if oldest is not None else now
    for month in _months(first.date(), date(now.year + now.month // 12, now.month % 12 + 1, 1)):
        end = date(month.year + month.month // 12, month.month % 12 + 1, 1)
        op.execute(
            f"CREATE TABLE deliveries_p{month:%Y%m} PARTITION OF deliveries_partitioned "
            f"FOR VALUES FROM ('{month.isoformat()} 00:00+00') TO ('{end.isoformat()} 00:00+00') WITH (fillfactor = {FILLFACTOR})"
        )
    copied = ", ".join("coalesce(r.started_at, d.created_at)" if name == "created_at" else f"d.{name}" for name in COLUMN_NAMES)
    op.execute(
        f"INSERT INTO deliveries_partitioned ({COLUMNS}) "
        f"SELECT {copied} FROM deliveries d LEFT JOIN campaign_runs r ON r.id = d.run_id"
    )
    op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY NONE")
    op.execute("DROP TABLE deliveries")
    op.execute("ALTER TABLE deliveries_partitioned RENAME TO deliveries")
    op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id")
    _comments()
    op.execute("ALTER TABLE deliveries ADD CONSTRAINT pk_deliveries PRIMARY KEY (id, created_at)")
    op.execute(
        "ALTER TABLE deliveries ADD CONSTRAINT uq_deliveries_run_id_member_id_created_at UNIQUE (run_id, member_id, created_at)"
    )
    _indexes()
    op.execute("ANALYZE deliveries")


def _comments() -> None:
    for column, comment in {
        "channel": "NULL when no channel was reachable",
        "reason_code": "closed set: campaigns.store.ledger.ReasonCode",
        "cap_rule": "the cap rule that capped or deferred the row",
        "address": "email, E.164 phone or chat id used",
        "holds_slot": "counts against frequency caps",
        "send_at": "when the message is due",
        "deferred_from": "when it would have been due had a cap not deferred it",
        "lease_owner": "worker holding the claim",
        "lease_until": "the claim expires at",
        "claimed_at": "latest claim by a worker",
        "last_error": "latest failed attempt",
        "idempotency_key": "triggered messages: the caller's key",
        "data": "triggered messages: the caller's template data",
        "is_open": "queued or sending: still on its way",
    }.items():
        quoted = comment.replace("'", "''")
        op.execute(f"COMMENT ON COLUMN deliveries.{column} IS '{quoted}'")


def _indexes() -> None:
    op.create_index(
        "ix_deliveries_idempotency_key",
        "deliveries",
        ["idempotency_key"],
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_deliveries_open",
        "deliveries",
        ["run_id", "send_at"],
        postgresql_where=sa.text("is_open"),
        sqlite_where=sa.text("is_open = 1"),
    )
    op.create_index(
        "ix_deliveries_provider_message_id",
        "deliveries",
        ["provider_message_id"],
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
        sqlite_where=sa.text("provider_message_id IS NOT NULL"),
    )
    op.create_index(
        "ix_deliveries_member_caps",
        "deliveries",
        ["member_id", "channel", "category", "send_at"],
        postgresql_include=["holds_slot"],
    )


def _sqlite_upgrade() -> None:
    op.execute(
        "UPDATE deliveries SET created_at = (SELECT r.started_at FROM campaign_runs r WHERE r.id = deliveries.run_id) "
        "WHERE run_id IS NOT NULL AND EXISTS (SELECT 1 FROM campaign_runs r WHERE r.id = deliveries.run_id)"
    )
    op.drop_index("uq_deliveries_idempotency_key", table_name="deliveries")
    op.drop_index("ix_deliveries_open", table_name="deliveries")
    with op.batch_alter_table("deliveries", recreate="always") as batch:
        batch.add_column(
            sa.Column("is_open", sa.Boolean, sa.Computed(IS_OPEN, persisted=True), comment="queued or sending: still on its way")
        )
        batch.drop_constraint("uq_deliveries_run_id_member_id", type_="unique")
        batch.create_unique_constraint("uq_deliveries_run_id_member_id_created_at", ["run_id", "member_id", "created_at"])
    op.drop_index("ix_deliveries_provider_message_id", table_name="deliveries")
    op.drop_index("ix_deliveries_member_caps", table_name="deliveries")
    _indexes()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE TABLE deliveries_plain (LIKE deliveries INCLUDING DEFAULTS INCLUDING COMMENTS EXCLUDING GENERATED)")
        op.execute("ALTER TABLE deliveries_plain DROP COLUMN is_open")
        op.execute(f"INSERT INTO deliveries_plain ({COLUMNS}) SELECT {COLUMNS} FROM deliveries")
        op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY NONE")
        op.execute("DROP TABLE deliveries")
        op.execute("ALTER TABLE deliveries_plain RENAME TO deliveries")
        op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id")
        op.execute("ALTER TABLE deliveries ADD CONSTRAINT pk_deliveries PRIMARY KEY (id)")
    else:
        op.drop_index("ix_deliveries_idempotency_key", table_name="deliveries")
        op.drop_index("ix_deliveries_open", table_name="deliveries")
        op.drop_index("ix_deliveries_provider_message_id", table_name="deliveries")
        op.drop_index("ix_deliveries_member_caps", table_name="deliveries")
        with op.batch_alter_table("deliveries", recreate="always") as batch:
            batch.drop_constraint("uq_deliveries_run_id_member_id_created_at", type_="unique")
            batch.drop_column("is_open")
    with op.batch_alter_table("deliveries") as batch:
        batch.create_unique_constraint("uq_deliveries_run_id_member_id", ["run_id", "member_id"])
    op.create_index(
        "uq_deliveries_idempotency_key",
        "deliveries",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_deliveries_open",
        "deliveries",
        ["status", "run_id", "send_at"],
        postgresql_where=sa.text("status IN ('queued', 'sending')"),
        sqlite_where=sa.text("status IN ('queued', 'sending')"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_deliveries_provider_message_id",
            "deliveries",
            ["provider_message_id"],
            postgresql_where=sa.text("provider_message_id IS NOT NULL"),
        )
        op.create_index(
            "ix_deliveries_member_caps",
            "deliveries",
            ["member_id", "channel", "category", "send_at"],
            postgresql_include=["holds_slot"],
        )
    else:
        op.create_index(
            "ix_deliveries_provider_message_id",
            "deliveries",
            ["provider_message_id"],
            sqlite_where=sa.text("provider_message_id IS NOT NULL"),
        )
        op.create_index("ix_deliveries_member_caps", "deliveries", ["member_id", "channel", "category", "send_at"])
    with op.batch_alter_table("ladder_marks") as batch:
        batch.create_foreign_key("fk_ladder_marks_delivery_id_deliveries", "deliveries", ["delivery_id"], ["id"])
    op.drop_table("idempotency_keys")
