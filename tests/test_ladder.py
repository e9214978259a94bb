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
from campaigns.store.models import deliveries, ladder_marks, point_expirations
from campaigns.store.runs import claim_run
from campaigns.tools.report import member_history

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
        rows = conn.execute(select(deliveries.c.status, deliveries.c.reason_code).order_by(deliveries.c.id)).all()
    assert [status for status, _ in rows if status != "not_due"] == ["sent"] * 6
    # And every other run recorded why it sent nothing
    # (the 120-point lot of D+3 expires at 09:00 UTC, the occasion's instant that day: 80 are left)
    assert {code for status, code in rows if status == "not_due"} == {"already_reminded", "below_min_points"}


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
    assert sorted((m, s) for m, s, _ in rows) == [(1, "not_due"), (2, "stale")]
    reasons = {m: reason for m, _, reason in rows}
    assert reasons[1] == "points expiring (99 on 2026-12-20) are each below the campaign's min_points 100"
    assert reasons[2] == "the points this reminder is about (2026-12-20) are now below the campaign's minimum 100"


def test_two_lots_a_day_apart_on_sms_get_their_last_chance_together(configured) -> None:
    # Given SMS only, the shipped 3-day gap between expiry SMS, and 60 points expiring on
    # D and 70 on D+1 (both above min_points 50)
    application = configured(
        {
            **ladder_settings(min_points=50, channels=["sms"]),
            "caps": [{"channel": "sms", "category": "expiry", "window": "min_gap", "gap": "3d"}],
        }
    )
    engine = application.engine
    add_member(engine, 1, phone="+79161234567", sms_consent=True, locale="ru")
    add_expiration(engine, 1, 60, datetime(2026, 12, 20, 15, 0, tzinfo=UTC))
    add_expiration(engine, 1, 70, datetime(2026, 12, 21, 15, 0, tzinfo=UTC))
    outbox = runtime.app().settings.outbox_path / "sms"

    # When the ladder runs every day for 35 days
    texts = {}
    for offset in range(35):
        day = D - timedelta(days=33) + timedelta(days=offset)
        for delivery_id in run_day(application, day):
            texts[(day - D).days] = json.loads((outbox / f"{delivery_id}.json").read_text())["text"]

    # Then each stage of the second lot went out together with the first lot's (merged
    # forward), the last chance included, and nothing was capped
    assert sorted(texts) == [-30, -7, -1]
    assert texts[-1].startswith("Member1, завтра сгорает 60 баллов, до 21 декабря ещё 70 баллов.")
    with engine.connect() as conn:
        statuses = conn.execute(select(deliveries.c.status)).scalars().all()
        marks = conn.execute(select(ladder_marks.c.expires_on, ladder_marks.c.stage)).all()
    assert "capped" not in statuses
    assert {(m.expires_on.day, m.stage) for m in marks} == {(20, 30), (20, 7), (20, 1), (21, 30), (21, 7), (21, 1)}
    # And `why` names the dates and stages each reminder was about
    last = [row for row in member_history(engine, 1) if row["status"] == "sent"][-1]
    assert last["reminds"] == [{"expires_on": "2026-12-20", "stage": 1}, {"expires_on": "2026-12-21", "stage": 1}]
