"""A provider's daily quota: all workers together never hand it more messages in one of
its days; what is over waits for the next day, quiet hours and caps applying, and is
never failed."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import add_member, cli
from sqlalchemy import insert, select

from campaigns.delivery.deliverer import Deliverer
from campaigns.errors import ConfigError
from campaigns.planning.deferral import postpone
from campaigns.store import partitions
from campaigns.store.models import deliveries, quota_days

NOON = "2026-11-24T12:00+03:00"


def quota_settings(quota: int) -> dict[str, object]:
    """SMS to the outbox with a daily quota counted in UTC days, and SMS quiet hours."""
    return {
        "channels": {"sms": {"transport": "outbox", "sender": "ROMASHKA", "daily_quota": quota, "quota_zone": "UTC"}},
        "quiet_hours": {"default": "off", "sms": "21:00-09:00"},
        "campaigns": {"balance_reminder": {"channels": ["sms"]}},
    }


def _rows(application: Any) -> dict[int, Any]:
    with application.engine.connect() as conn:
        return {row.member_id: row for row in conn.execute(select(deliveries))}


def test_messages_past_the_quota_wait_for_the_next_day(configured) -> None:
    # Given a quota of two SMS a day and five members: three in Moscow, two in Vladivostok
    application = configured(quota_settings(2))
    zones = {1: "Europe/Moscow", 2: "Europe/Moscow", 3: "Europe/Moscow", 4: "Asia/Vladivostok", 5: "Asia/Vladivostok"}
    for member_id, zone in zones.items():
        add_member(application.engine, member_id, phone=f"+7916123450{member_id}", sms_consent=True, timezone=zone)

    # When the balance reminder runs
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON, exit_code=0)

    # Then two went, and the other three are still queued: none failed
    rows = _rows(application)
    statuses = sorted(row.status for row in rows.values())
    assert statuses == ["queued", "queued", "queued", "sent", "sent"]
    with application.engine.connect() as conn:
        [used] = conn.execute(select(quota_days)).all()
    assert used.channel == "sms" and used.used == 2
    # And each waits for the provider's next day, left later still by its own quiet hours
    tomorrow = datetime.combine(used.day + timedelta(days=1), time(0), tzinfo=UTC)
    for member_id, row in rows.items():
        if row.status != "queued":
            continue
        local = tomorrow.astimezone(ZoneInfo(zones[member_id]))
        expected = tomorrow if 9 <= local.hour < 21 else datetime.combine(local.date(), time(9), tzinfo=local.tzinfo)
        assert row.send_at == expected, member_id
        assert row.reason_code == "quota_deferred" and row.holds_slot
        assert "daily quota of sms (2 a day, UTC) was used up" in row.reason

    # When another worker process picks the waiting rows up today anyway
    waiting = [row.id for row in rows.values() if row.status == "queued"]
    report = Deliverer(application.settings, application.engine, application.messages).deliver(waiting)
    # Then the quota counted in the database holds for it too: nothing more went
    assert sorted(row.status for row in _rows(application).values()) == statuses
    assert sorted(i for _, ids in report.later for i in ids) == sorted(waiting)
    member = next(m for m, row in rows.items() if row.status == "queued")
    assert '"quota_deferred"' in cli(application.settings.source, "why", str(member), "--json").stdout


def test_a_postponed_message_never_crowds_one_planned_later(configured) -> None:
    # Given a member whose marketing SMS (one per 30 days) is queued now, and another
    # marketing SMS already planned for two days from now
    application = configured(quota_settings(100))
    add_member(application.engine, 1, phone="+79161234501", sms_consent=True)
    now = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    later = now + timedelta(days=2)

    def row(send_at: datetime, run: int) -> dict[str, object]:
        return {
            "run_id": run,
            "member_id": 1,
            "channel": "sms",
            "category": "marketing",
            "template": "balance_reminder",
            "status": "queued",
            "reason": "eligible on sms",
            "reason_code": "eligible",
            "address": "+79161234501",
            "holds_slot": True,
            "send_at": send_at,
            "created_at": now,
            "updated_at": now,
        }

    partitions.ensure_for(application.engine, now)  # the ledger's month of those decisions
    with application.engine.begin() as conn:
        first = conn.execute(insert(deliveries).returning(deliveries.c.id), [row(now, 1)]).scalar_one()
        conn.execute(insert(deliveries), [row(later, 2)])
        third = conn.execute(insert(deliveries).returning(deliveries.c.id), [row(now, 3)]).scalar_one()

    # When the first is postponed to tomorrow (its provider's quota is used up today)
    moved = postpone(application.engine, application.settings, [first], now + timedelta(days=1), "quota used up")

    # Then it does not land inside the later one's 30-day window: it goes 30 days after it
    assert moved == {first: later + timedelta(days=30)}
    # And one that would have to wait longer after its decision than a message may
    # (Settings.hold_slack: the longest window, two days and the retries, 33 days here)
    # is capped instead, its slot given back: cap lookups never look that far back
    assert application.settings.hold_slack == timedelta(days=33)
    assert postpone(application.engine, application.settings, [third], now + timedelta(days=1), "quota used up") == {third: None}
    with application.engine.connect() as conn:
        capped = conn.execute(select(deliveries).where(deliveries.c.id == third)).one()
    assert (capped.status, capped.reason_code, capped.holds_slot) == ("capped", "cap_no_window", False)
    assert capped.reason.endswith("quota used up; no window opens within 33d of the decision")


def test_a_quota_zone_must_be_a_time_zone(write_settings) -> None:
    from campaigns.config.loading import load_settings

    path = write_settings({"channels": {"sms": {"transport": "outbox", "daily_quota": 5, "quota_zone": "Moscow"}}})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems[0].startswith("channels.sms.quota_zone: unknown time zone 'Moscow'")
