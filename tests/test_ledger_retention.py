"""The ledger over time: monthly partitions on PostgreSQL, retention that never forgets a
row a cap, a waiting message or a report still needs, and the same decisions whether or
not the ledger is partitioned."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import add_members, cli
from sqlalchemy import insert, select, text

from campaigns.config.loading import load_settings
from campaigns.errors import ConfigError
from campaigns.planning.decisions import RUN_MEMBER
from campaigns.planning.planner import plan_run
from campaigns.store import partitions, retention, schema
from campaigns.store.engine import make_engine, upsert_insert
from campaigns.store.models import campaign_runs, deliveries, idempotency_keys, provider_events
from campaigns.store.runs import claim_run

NOW = datetime(2026, 10, 15, 12, 0, tzinfo=UTC)
SHORT = {"ledger": {"retention": "64d", "reporting_horizon": "1d"}}
"""The shortest retention the shipped caps allow: SMS's 30-day window, 33 days a message
may wait after its decision (that window, two days, a day of retries), a day of reports."""


def ledger_row(
    member_id: int, decided: datetime, *, status: str = "delivered", send_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "run_id": None,
        "member_id": member_id,
        "channel": "sms",
        "category": "marketing",
        "template": "balance_reminder",
        "status": status,
        "reason": "history",
        "reason_code": "eligible",
        "address": f"+7916123{member_id:04d}",
        "holds_slot": status in ("queued", "sent", "delivered"),
        "send_at": send_at or decided,
        "created_at": decided,
        "updated_at": decided,
    }


def write_history(engine: Any, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        partitions.ensure_for(engine, row["created_at"])
    with engine.begin() as conn:
        conn.execute(insert(deliveries), rows)


def test_retention_never_drops_what_a_cap_or_a_waiting_message_needs(configured) -> None:
    # Given the shortest retention the caps allow (64 days: cutoff 2026-08-12 12:00) and
    # four members' SMS history:
    application = configured(SHORT)
    engine = application.engine
    add_members(engine, [{"id": m, "phone": f"+7916123{m:04d}", "sms_consent": True} for m in (1, 2, 3, 4)])
    write_history(
        engine,
        [
            # 1: decided 56 days ago, deferred 31 days: due 25 days ago, inside the 30-day window
            ledger_row(1, datetime(2026, 8, 20, tzinfo=UTC), send_at=datetime(2026, 9, 20, tzinfo=UTC)),
            # 2: sent in June, long out of every window
            ledger_row(2, datetime(2026, 6, 1, tzinfo=UTC)),
            # 3: queued in May and never sent (a stuck message still on its way)
            ledger_row(3, datetime(2026, 5, 10, tzinfo=UTC), status="queued"),
            # 4: delivered in July
            ledger_row(4, datetime(2026, 7, 1, tzinfo=UTC)),
        ],
    )
    with engine.begin() as conn:
        conn.execute(
            insert(idempotency_keys), [{"key": "old", "delivery_id": None, "created_at": datetime(2026, 4, 1, tzinfo=UTC)}]
        )
        # and two delivery reports, received in June and in September
        conn.execute(
            insert(provider_events),
            [
                {"provider": "sms", "event_key": key, "event": "delivered", "received_at": received, "raw": "{}"}
                for key, received in (("june", datetime(2026, 6, 1, tzinfo=UTC)), ("september", datetime(2026, 9, 1, tzinfo=UTC)))
            ],
        )

    # When retention runs as of 2026-10-15
    expired = retention.enforce(engine, application.settings, NOW)

    # Then what no window needs is gone; the row inside the window and the waiting one stay
    with engine.connect() as conn:
        left = sorted(conn.execute(select(deliveries.c.member_id)).scalars())
        keys = list(conn.execute(select(idempotency_keys.c.key)).scalars())
        events = list(conn.execute(select(provider_events.c.event_key)).scalars())
        partitioned = partitions.is_partitioned(conn)
    assert left == [1, 3] and keys == []
    # (and the report received before the cutoff, not the one after it)
    assert events == ["september"] and expired.events == 1
    if partitioned:
        # (whole months: June and July dropped; May kept for its waiting row, said why)
        assert expired.dropped == ["deliveries_p202606", "deliveries_p202607"]
        assert expired.kept == [("deliveries_p202605", "1 deliveries still queued or sending")]
        with engine.connect() as conn:
            assert [p.name for p in partitions.existing(conn)][:2] == ["deliveries_p202605", "deliveries_p202608"]
    else:
        assert expired.rows == 2

    # And the kept row still caps member 1 on the next occasion; the others get their SMS
    path = application.settings.source
    counts = json.loads(cli(path, "run", "balance_reminder", "--now", NOW.isoformat(), "--json").stdout)["counts"]
    assert counts["capped"] == {"sms": 1}
    with engine.connect() as conn:
        capped = conn.execute(select(deliveries.c.member_id).where(deliveries.c.status == "capped")).scalars().all()
    assert capped == [1]


def test_ledger_prune_says_what_it_would_remove_and_what_it_keeps(configured) -> None:
    # Given a delivered row from June and a retention of 64 days
    application = configured(SHORT)
    write_history(application.engine, [ledger_row(2, datetime(2026, 6, 1, tzinfo=UTC))])
    # When the operator asks first, then prunes
    dry = cli(application.settings.source, "ledger", "prune", "--dry-run").stdout
    assert "retention 64d" in dry and "would remove" in dry
    with application.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.id)).all() != []  # a dry run removes nothing
    done = json.loads(cli(application.settings.source, "ledger", "prune", "--json").stdout)
    # Then the row is gone, and the report names what went
    assert "deliveries_p202606" in done["dropped"] or done["rows"] == 1
    with application.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.id)).all() == []


def test_a_retention_too_short_for_the_caps_is_refused(write_settings) -> None:
    path = write_settings({"ledger": {"retention": "60d"}})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [
        "ledger.retention: 60d is shorter than the longest cap window (30d), the longest a decided message may wait "
        "(33d) and ledger.reporting_horizon (90d) together: at least 153d"
    ]


def history(members: int, seed: int = 11) -> list[dict[str, Any]]:
    """Three months of varied history before NOW: channels, holders and not, messages
    due days after their decision, some still queued."""
    chance = random.Random(seed)
    rows = []
    for member_id in range(1, members + 1):
        for _ in range(chance.randrange(0, 5)):
            decided = NOW - timedelta(days=chance.uniform(1, 95))
            status = chance.choice(["delivered", "sent", "capped", "no_consent", "queued", "failed"])
            row = ledger_row(member_id, decided, status=status, send_at=decided + timedelta(hours=chance.uniform(0, 60)))
            row["channel"] = chance.choice(["sms", "email", "telegram"])
            rows.append(row)
    return rows


@pytest.mark.postgres
def test_partitioned_and_unpartitioned_ledgers_decide_alike(write_settings, pg_url, tmp_path) -> None:
    # Given the same 300 members and the same three months of history in an unpartitioned
    # ledger (SQLite) and a partitioned one (PostgreSQL)
    members = [
        {
            "id": m,
            "email": f"m{m}@example.com",
            "phone": f"+7916123{m:04d}",
            "telegram_chat_id": 10_000 + m if m % 3 else None,
            "email_consent": m % 2 == 0,
            "sms_consent": m % 5 != 0,
            "telegram_consent": m % 3 == 1,
            "timezone": ["Europe/Moscow", "Asia/Vladivostok", "Europe/Kaliningrad"][m % 3],
        }
        for m in range(1, 301)
    ]
    rows = history(300)
    decided = {}
    for name, url in (("sqlite", f"sqlite:///{tmp_path / 'unpartitioned.db'}"), ("postgresql", pg_url)):
        settings = load_settings(write_settings({"database": {"url": url}}, name=f"{name}.toml"))
        engine = make_engine(settings.database_url)
        schema.upgrade(engine)
        add_members(engine, members)
        write_history(engine, rows)
        with engine.connect() as conn:
            assert partitions.is_partitioned(conn) is (name == "postgresql")
        # When the balance reminder is planned as of NOW
        run = claim_run(engine, settings, "balance_reminder", as_of=NOW, occasion="same")
        plan_run(engine, settings, run.id)
        with engine.connect() as conn:
            decided[name] = {
                r.member_id: (r.channel, r.status, r.reason_code, r.cap_rule, r.send_at)
                for r in conn.execute(select(deliveries).where(deliveries.c.run_id == run.id))
            }
        engine.dispose()
    # Then both ledgers decide every member the same way, caps included
    assert len(decided["sqlite"]) == 300
    assert {status for _, status, *_ in decided["sqlite"].values()} >= {"queued", "capped"}
    assert decided["postgresql"] == decided["sqlite"]


def test_migration_keeps_the_ledger_and_its_promises(database_url) -> None:
    # Given a ledger at revision 0009: a run whose chunks were decided a minute apart,
    # a month earlier, and a triggered message with its idempotency key
    engine = make_engine(database_url)
    schema.upgrade(engine, "0009")
    started = datetime(2026, 9, 30, 23, 59, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(campaign_runs),
            [
                {
                    "id": 7,
                    "campaign": "balance_reminder",
                    "occasion": "2026-10-01",
                    "as_of": started,
                    "started_at": started,
                    "started_by": "cli",
                    "state": "planned",
                }
            ],
        )
        old = [ledger_row(m, started + timedelta(minutes=m)) | {"run_id": 7} for m in (1, 2, 3)]
        old.append(ledger_row(4, datetime(2026, 8, 3, tzinfo=UTC)) | {"idempotency_key": "order-42"})
        for row in old:
            conn.execute(
                text(
                    "INSERT INTO deliveries (run_id, member_id, channel, category, template, status, reason, reason_code, "
                    "address, holds_slot, send_at, created_at, updated_at, idempotency_key) VALUES (:run_id, :member_id, "
                    ":channel, :category, :template, :status, :reason, :reason_code, :address, :holds_slot, :send_at, "
                    ":created_at, :updated_at, :idempotency_key)"
                ),
                {"idempotency_key": None, **row},
            )
        before = {r.id: r.member_id for r in conn.execute(text("SELECT id, member_id FROM deliveries"))}

    # When it is upgraded
    schema.upgrade(engine)

    # Then every row is there with its id, a run's rows carry the run's start, the key is kept,
    with engine.connect() as conn:
        after = {r.id: (r.member_id, r.created_at, r.is_open) for r in conn.execute(select(deliveries))}
        key = conn.execute(select(idempotency_keys)).one()
        months = [p.name for p in partitions.existing(conn)]
    assert {i: m for i, (m, *_) in after.items()} == before
    assert {created for member, created, _ in after.values() if member != 4} == {started}
    assert key.key == "order-42" and after[key.delivery_id][0] == 4
    if engine.dialect.name == "postgresql":
        assert months[:2] == ["deliveries_p202608", "deliveries_p202609"]
    # and the id sequence goes on, and a rerun of the occasion decides nothing new
    partitions.ensure_for(engine, datetime.now(UTC))
    with engine.begin() as conn:
        new = conn.execute(insert(deliveries).returning(deliveries.c.id), [ledger_row(5, datetime.now(UTC))]).scalar_one()
        rerun = upsert_insert(conn, deliveries).on_conflict_do_nothing(index_elements=RUN_MEMBER)
        conn.execute(rerun, ledger_row(1, started) | {"run_id": 7})
        assert conn.execute(text("SELECT count(*) FROM deliveries WHERE run_id = 7")).scalar_one() == 3
    assert new > max(before)
    engine.dispose()
