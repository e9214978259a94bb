"""The expiring-points ladder over many daily runs."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from helpers import add_expiration, add_member
from sqlalchemy import select, update

from campaigns.app import runtime
from campaigns.planning.batches import queued_batches
from campaigns.planning.ladder import current_stage
from campaigns.planning.planner import plan_run
from campaigns.store.models import deliveries, point_expirations
from campaigns.store.runs import claim_run

UTC = UTC
D = date(2026, 12, 20)


def ladder_settings(**extra) -> dict:
    return {
        "quiet_hours": {"default": "off", "telegram": "off"},
        "campaigns": {
            "ladder": {
                "kind": "expiring_ladder",
                "stages": [30, 7, 1],
                "min_points": 100,
                "segment": "has_balance",
                "template": "points_expiring",
                "channels": ["telegram"],
                "category": "expiry",
                **extra,
            }
        },
    }


def run_day(application, day: date, hour: int = 12) -> list[int]:
    """Plan and deliver one daily occasion (12:00 Moscow); the ids of deliveries sent."""
    as_of = datetime(day.year, day.month, day.day, hour - 3, 0, tzinfo=UTC)
    run = claim_run(application.engine, application.settings, "ladder", as_of=as_of, occasion=f"{day}T{hour}")
    plan_run(application.engine, application.settings, run.id)
    sent = []
    for _, ids in queued_batches(application.engine, run.id, 100):
        application.deliverer.deliver(ids)
        sent += ids
    return sent


def test_current_stage() -> None:
    stages = [30, 7, 1]
    assert [current_stage(d, stages) for d in (45, 31, 30, 8, 7, 2, 1, 0, -1)] == [None, None, 30, 30, 7, 7, 1, 1, None]


def test_forty_daily_runs_send_each_stage_once_per_date(configured) -> None:
    # Given a member with 300 points expiring on D and 200 (two lots) on D+3, in Moscow
    application = configured(ladder_settings())
    engine = application.engine
    add_member(engine, 1, points=900, telegram_chat_id=11, telegram_consent=True, locale="ru")
    add_expiration(engine, 1, 300, datetime(2026, 12, 20, 15, 0, tzinfo=UTC))
    add_expiration(engine, 1, 120, datetime(2026, 12, 23, 9, 0, tzinfo=UTC))
    add_expiration(engine, 1, 80, datetime(2026, 12, 23, 20, 0, tzinfo=UTC))  # 23:00 Moscow: still the 23rd
    outbox = runtime.app().settings.outbox_path / "telegram"

    # When the ladder runs every day for 40 days, twice on some days
    messages = {}
    first = D - timedelta(days=35)
    for offset in range(40):
        day = first + timedelta(days=offset)
        for hour in (12, 18) if offset % 3 == 0 else (12,):
            for delivery_id in run_day(application, day, hour):
                messages[(day - D).days] = json.loads((outbox / f"{delivery_id}.json").read_text())["text"]

    # Then exactly one message per (date, stage): 30, 7 and 1 days before D and before D+3
    assert sorted(messages) == [-30, -27, -7, -4, -1, 2]
    assert "20 декабря" in messages[-30] and "300 баллов" in messages[-30] and "23 декабря" not in messages[-30]
    assert "23 декабря" in messages[-27] and "200 баллов" in messages[-27]  # the two lots of D+3 summed
    assert "завтра" in messages[-1] and "300 баллов" in messages[-1]
    assert "завтра" in messages[2] and "200 баллов" in messages[2]
    assert "через 7 дней" in messages[-7]
    with engine.connect() as conn:
        statuses = conn.execute(select(deliveries.c.status)).scalars().all()
    assert statuses == ["sent"] * 6


def test_a_late_first_run_sends_only_the_current_stage(configured) -> None:
    application = configured(ladder_settings())
    add_member(application.engine, 1, telegram_chat_id=11, telegram_consent=True)
    add_expiration(application.engine, 1, 300, datetime(2026, 12, 20, 15, 0, tzinfo=UTC))
    # First run 5 days before D: stage 7 (not 30 and 7)
    assert len(run_day(application, D - timedelta(days=5))) == 1
    assert run_day(application, D - timedelta(days=4)) == []
    assert len(run_day(application, D - timedelta(days=1))) == 1


def test_points_below_the_minimum_get_no_reminder_and_spent_points_are_stale(configured) -> None:
    application = configured(ladder_settings())
    engine = application.engine
    add_member(engine, 1, telegram_chat_id=11, telegram_consent=True)
    add_member(engine, 2, telegram_chat_id=22, telegram_consent=True)
    add_expiration(engine, 1, 99, datetime(2026, 12, 20, 15, 0, tzinfo=UTC))  # below min_points
    add_expiration(engine, 2, 300, datetime(2026, 12, 20, 15, 0, tzinfo=UTC))
    day = D - timedelta(days=7)
    as_of = datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC)
    run = claim_run(engine, application.settings, "ladder", as_of=as_of)
    plan_run(engine, application.settings, run.id)
    with engine.begin() as conn:  # member 2 spends most of the expiring points before delivery
        conn.execute(update(point_expirations).where(point_expirations.c.member_id == 2).values(points=40))
    for _, ids in queued_batches(engine, run.id, 100):
        application.deliverer.deliver(ids)
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.member_id, deliveries.c.status, deliveries.c.reason)).all()
    assert [(m, s) for m, s, _ in rows] == [(2, "stale")]
    assert rows[0].reason == "the points this reminder is about (2026-12-20) are now below the campaign's minimum 100"
