"""Migrations: they build exactly the schema the code declares, keep the ledger's rows,
and go back down."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from campaigns.store import schema
from campaigns.store.engine import make_engine
from campaigns.store.models import metadata

ROW = (
    "INSERT INTO deliveries (run_id, member_id, channel, category, template, status, send_at, created_at, updated_at) "
    "VALUES (1, 5, 'sms', 'marketing', 'balance_reminder', 'queued', '2026-11-01', '2026-11-01', '2026-11-01')"
)


def _not_a_partition(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", "")
    return not (table or "").startswith("deliveries_p")


def test_migrations_build_the_declared_schema_and_keep_rows(database_url: str) -> None:
    # Given a database at the first revision with one ledger row
    engine = make_engine(database_url)
    schema.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO campaign_runs (id, campaign, occasion, as_of, started_at, started_by, state) "
                "VALUES (1, 'balance_reminder', '2026-11-01', '2026-11-01', '2026-11-01', 'test', 'planned')"
            )
        )
        conn.execute(text(ROW))

    # When it is upgraded to the head
    schema.upgrade(engine)

    # Then the schema is exactly what campaigns/models.py declares (the ledger's monthly
    # partitions on PostgreSQL are the parent's), and the row is there
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": _not_a_partition})
        assert compare_metadata(context, metadata) == []
        assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one() == 1
    indexes = {index["name"] for index in inspect(engine).get_indexes("deliveries")}
    assert "ix_deliveries_member_caps" in indexes and "ix_deliveries_cap_window" not in indexes

    # And it goes down to the first revision and up again
    config = schema.alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    assert [fk["name"] for fk in inspect(engine).get_foreign_keys("deliveries")] == ["fk_deliveries_run_id_campaign_runs"]
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision(engine) == schema.HEAD  # commands check HEAD
    engine.dispose()
