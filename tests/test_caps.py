"""Frequency caps over time, tier overrides, cross-channel rules, deferral, holdout,
quiet hours and the dry run, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from helpers import add_member, add_members, decided, run_json
from sqlalchemy import func, select

from campaigns.app import runtime
from campaigns.errors import ConfigError
from campaigns.planning.dry_run import dry_run
from campaigns.planning.planner import plan_run
from campaigns.store.models import deliveries
from campaigns.store.runs import claim_run

UTC = UTC
NO_QUIET_HOURS = {"quiet_hours": {"default": "off", "telegram": "off", "email": "off"}}


def campaign(category: str, channels: list[str], **extra) -> dict:
    return {"segment": "has_balance", "template": "balance_reminder", "channels": channels, "category": category, **extra}


def plan_at(application, name: str, when: datetime, occasion: str | None = None) -> dict:
    """Claim and plan one occasion (no delivery); ``{member_id: ledger row}``."""
    run = claim_run(application.engine, application.settings, name, as_of=when, occasion=occasion)
    plan_run(application.engine, application.settings, run.id)
    return decided(application.engine, run.id)


def test_rolling_calendar_and_min_gap_over_time(configured) -> None:
    # Given one SMS rule per window kind (each in its own category) and SMS members in
    # Kaliningrad (UTC+2) and Vladivostok (UTC+10)
    application = configured(
        {
            **NO_QUIET_HOURS,
            "caps": [
                {"channel": "sms", "category": "rolling", "window": "rolling", "max": 1, "per": "30d"},
                {"channel": "sms", "category": "calendar", "window": "calendar", "max": 1, "period": "month"},
                {"channel": "sms", "category": "gap", "window": "min_gap", "gap": "14d"},
            ],
            "campaigns": {kind: campaign(kind, ["sms"]) for kind in ("rolling", "calendar", "gap")},
        }
    )
    add_member(application.engine, 1, timezone="Europe/Kaliningrad", phone="+79160000001", sms_consent=True)
    add_member(application.engine, 2, timezone="Asia/Vladivostok", phone="+79160000002", sms_consent=True)
    # +0 is 21 March 20:00 UTC; +10 is 31 March 20:00 UTC: still March in Kaliningrad
    # (22:00) but already April in Vladivostok (06:00 on 1 April)
    start = datetime(2026, 3, 21, 20, 0, tzinfo=UTC)
    expected = {
        "rolling": {0: ("queued", "queued"), 10: ("capped", "capped"), 15: ("capped", "capped"), 31: ("queued", "queued")},
        "gap": {0: ("queued", "queued"), 10: ("capped", "capped"), 15: ("queued", "queued"), 31: ("queued", "queued")},
        "calendar": {0: ("queued", "queued"), 10: ("capped", "queued"), 15: ("queued", "capped"), 31: ("capped", "capped")},
    }
    for day in (0, 10, 15, 31):
        for kind in ("rolling", "calendar", "gap"):
            # When each campaign runs on that day
            rows = plan_at(application, kind, start + timedelta(days=day))
            # Then exactly the members its window allows get through
            assert (rows[1].status, rows[2].status) == expected[kind][day], (kind, day)
            for row in rows.values():
                if row.status == "capped":
                    assert row.reason.startswith(f"cap sms/{kind}:"), row.reason


def test_defer_sends_when_the_window_opens(configured) -> None:
    # Given an SMS rule that defers instead of skipping
    application = configured(
        {
            **NO_QUIET_HOURS,
            "caps": [{"channel": "sms", "max": 1, "per": "30d", "action": "defer"}],
            "campaigns": {"reminder": campaign("marketing", ["sms"])},
        }
    )
    add_member(application.engine, 1, phone="+79160000001", sms_consent=True)
    start = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    assert plan_at(application, "reminder", start)[1].status == "queued"
    # When the campaign runs again 10 days later
    row = plan_at(application, "reminder", start + timedelta(days=10))[1]
    # Then the message is queued for the moment the 30-day window has passed, holding that slot
    assert (row.status, row.holds_slot) == ("queued", True)
    assert row.deferred_from == start + timedelta(days=10)
    assert row.send_at == start + timedelta(days=30)
    assert row.reason.startswith("deferred by cap sms/marketing: 1 per 30d")
    # And a third occasion at +31 days is deferred past the deferred one
    third = plan_at(application, "reminder", start + timedelta(days=31))[1]
    assert third.send_at == start + timedelta(days=60)


def test_deferral_lands_outside_quiet_hours(configured) -> None:
    application = configured(
        {
            "quiet_hours": {"default": "21:00-09:00"},
            "caps": [{"channel": "sms", "window": "min_gap", "gap": "26h", "action": "defer"}],
            "campaigns": {"reminder": campaign("marketing", ["sms"])},
        }
    )
    add_member(application.engine, 1, timezone="Europe/Moscow", phone="+79160000001", sms_consent=True)
    first = plan_at(application, "reminder", datetime(2026, 5, 4, 17, 0, tzinfo=UTC))[1]  # 20:00 Moscow
    assert first.send_at == datetime(2026, 5, 4, 17, 0, tzinfo=UTC)
    second = plan_at(application, "reminder", datetime(2026, 5, 5, 10, 0, tzinfo=UTC))[1]
    # The gap opens at 22:00 Moscow on 5 May, inside quiet hours: due at 09:00 on 6 May
    assert second.send_at == datetime(2026, 5, 6, 6, 0, tzinfo=UTC)


def test_tier_override_cross_channel_rule_and_service_exemption(configured) -> None:
    application = configured(
        {
            **NO_QUIET_HOURS,
            "caps": [
                {"channel": "email", "max": 1, "per": "14d"},
                {"channel": "email", "max": 1, "per": "7d", "tiers": ["gold"]},
                {"channel": "*", "max": 2, "per": "30d"},
            ],
            "campaigns": {
                "mail": campaign("marketing", ["email"]),
                "chat": campaign("marketing", ["telegram"]),
                "notice": campaign("service", ["email"]),
            },
        }
    )
    engine = application.engine
    add_member(engine, 1, tier="basic", email="basic@example.com", email_consent=True)
    add_member(engine, 2, tier="gold", email="gold@example.com", email_consent=True)
    add_member(engine, 3, telegram_chat_id=303, telegram_consent=True)
    start = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    # Email: gold members may get one every 7 days, others every 14
    first = plan_at(application, "mail", start)
    assert (first[1].status, first[2].status) == ("queued", "queued")
    later = plan_at(application, "mail", start + timedelta(days=8))
    assert (later[1].status, later[2].status) == ("capped", "queued")
    assert later[1].reason.startswith("cap email/marketing: 1 per 14d")
    # Telegram has no rule of its own, but the cross-channel rule allows 2 per 30 days
    chat = [plan_at(application, "chat", start + timedelta(days=d))[3] for d in (0, 5, 10)]
    assert [r.status for r in chat] == ["queued", "queued", "capped"]
    assert chat[2].reason.startswith("cap any channel/marketing: 2 per 30d")
    # Service messages are exempt from marketing caps
    notices = [plan_at(application, "notice", start + timedelta(days=d))[1].status for d in (0, 1, 2)]
    assert notices == ["queued", "queued", "queued"]
    # And the cross-channel rule already counts member 2's two marketing emails
    assert plan_at(application, "mail", start + timedelta(days=16))[2].reason.startswith("cap any channel/marketing")


def test_holdout_is_ten_percent_stable_and_spread(configured) -> None:
    # Given 10,000 reachable members and a campaign with a 10% holdout
    application = configured(
        {
            **NO_QUIET_HOURS,
            "caps": [{"channel": "telegram", "category": "other", "max": 1, "per": "1d"}],
            "campaigns": {
                "promo": campaign("marketing", ["telegram"], holdout=0.1),
                "resalted": campaign("marketing", ["telegram"], holdout=0.1, holdout_salt="2027"),
            },
        }
    )
    add_members(application.engine, [{"id": i, "telegram_chat_id": i, "telegram_consent": True} for i in range(1, 10_001)])
    start = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    # When two occasions are planned
    first = {m for m, r in plan_at(application, "promo", start).items() if r.status == "held_out"}
    second = {m for m, r in plan_at(application, "promo", start + timedelta(days=7)).items() if r.status == "held_out"}
    # Then 10% +/- 1% are held out, the same members both times, spread over the id range
    assert 900 <= len(first) <= 1100
    assert first == second
    for decile in range(10):
        share = len([m for m in first if decile * 1000 < m <= (decile + 1) * 1000]) / 1000
        assert 0.06 <= share <= 0.14, (decile, share)
    # And held-out rows hold no cap slot; another salt draws another group
    with application.engine.connect() as conn:
        assert conn.execute(select(func.count()).where(deliveries.c.status == "held_out", deliveries.c.holds_slot)).scalar() == 0
    other = {m for m, r in plan_at(application, "resalted", start).items() if r.status == "held_out"}
    assert 900 <= len(other) <= 1100 and len(other & first) < 250


def test_quiet_hours_end_in_each_members_own_zone(configured) -> None:
    application = configured(
        {
            "quiet_hours": {"default": "21:00-09:00", "telegram": "22:00-08:00", "email": "off"},
            "campaigns": {
                "sms": campaign("marketing", ["sms"]),
                "chat": campaign("marketing", ["telegram"]),
                "notice": campaign("service", ["sms"]),
                "ten": campaign("other", ["sms"], send_at_local="10:00"),
            },
        }
    )
    zones = {1: "Europe/Kaliningrad", 2: "Europe/Moscow", 3: "Asia/Vladivostok", 4: None}
    for member_id, zone in zones.items():
        add_member(
            application.engine,
            member_id,
            timezone=zone,
            phone=f"+7916000000{member_id}",
            sms_consent=True,
            telegram_chat_id=member_id,
            telegram_consent=True,
        )
    # Planned at the same instant: 22:30 Kaliningrad, 23:30 Moscow, 06:30 Vladivostok
    night = datetime(2026, 11, 23, 20, 30, tzinfo=UTC)
    sms = plan_at(application, "sms", night)
    assert {m: r.send_at for m, r in sms.items()} == {
        1: datetime(2026, 11, 24, 7, 0, tzinfo=UTC),  # 09:00 Kaliningrad
        2: datetime(2026, 11, 24, 6, 0, tzinfo=UTC),  # 09:00 Moscow
        3: datetime(2026, 11, 23, 23, 0, tzinfo=UTC),  # 09:00 Vladivostok
        4: datetime(2026, 11, 24, 6, 0, tzinfo=UTC),  # no zone: the program's (Moscow)
    }
    assert all(r.status == "queued" for r in sms.values())
    chat = plan_at(application, "chat", night)
    assert chat[3].send_at == datetime(2026, 11, 23, 22, 0, tzinfo=UTC)  # 08:00 Vladivostok (Telegram's window)
    assert chat[1].send_at == datetime(2026, 11, 24, 6, 0, tzinfo=UTC)  # 22:30 Kaliningrad: waits for 08:00
    # Service messages ignore quiet hours
    assert {r.send_at for r in plan_at(application, "notice", night).values()} == {night}
    # send_at_local: each member at 10:00 on their own clock
    noon = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    ten = plan_at(application, "ten", noon)
    assert {m: r.send_at for m, r in ten.items()} == {
        1: datetime(2026, 11, 24, 8, 0, tzinfo=UTC),
        2: datetime(2026, 11, 24, 7, 0, tzinfo=UTC),
        3: datetime(2026, 11, 24, 0, 0, tzinfo=UTC),
        4: datetime(2026, 11, 24, 7, 0, tzinfo=UTC),
    }


def test_plan_reserves_nothing_and_matches_the_run(configured) -> None:
    from campaigns.tools import demo

    application = configured()
    config = runtime.config_file()
    demo.seed(application.engine, 300, now=datetime(2026, 11, 20, tzinfo=UTC))
    now = "2026-11-23T12:00+03:00"
    run_json(config, "balance_reminder", "--now", "2026-11-13T12:00+03:00")  # history, so caps bite

    def ledger_snapshot():
        with application.engine.connect() as conn:
            return conn.execute(select(deliveries).order_by(deliveries.c.id)).all()

    before = ledger_snapshot()
    # When the balance reminder is planned
    planned = dry_run(application.engine, application.settings, "balance_reminder", as_of=datetime.fromisoformat(now))
    # Then the ledger is unchanged
    assert ledger_snapshot() == before
    assert {"queued", "capped"} <= set(planned.counts)
    # And the run that follows decides exactly what the plan said
    report = run_json(config, "balance_reminder", "--now", now)
    sent_or_queued = {}
    for status, per in report["counts"].items():
        key = "queued" if status in ("sent", "queued", "failed") else status
        for channel, n in per.items():
            sent_or_queued.setdefault(key, {}).setdefault(channel, 0)
            sent_or_queued[key][channel] += n
    assert sent_or_queued == planned.counts
    # And planning an occasion that already ran says so
    again = dry_run(application.engine, application.settings, "balance_reminder", as_of=datetime.fromisoformat(now))
    assert again.already_run == report["run_id"] and again.lines == []


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"channel": "sms", "max": 0, "per": "30d"}, "caps[0].max: Input should be greater than or equal to 1"),
        ({"channel": "sms", "per": "0d"}, "caps[0].per: duration must be longer than zero"),
        ({"channel": "sms", "window": "min_gap", "gap": "-1d"}, "caps[0].gap: invalid duration '-1d'"),
        ({"channel": "sms", "window": "calendar"}, "caps[0].period: required for a calendar window"),
        ({"channel": "sms", "window": "min_gap", "gap": "1d", "per": "2d"}, "caps[0].per: means nothing for a min_gap window"),
        (
            {"channel": "sms", "window": "rolling", "per": "1d", "period": "week"},
            "caps[0].period: means nothing for a rolling window",
        ),
        ({"channel": "fax", "per": "1d"}, "caps[0].channel: unknown channel 'fax'"),
        ({"channel": "sms", "per": "1d", "action": "later"}, "caps[0].action: Input should be 'skip' or 'defer'"),
    ],
)
def test_meaningless_rules_are_rejected(write_settings, rule, expected) -> None:
    from campaigns.config.loading import load_settings

    with pytest.raises(ConfigError) as caught:
        load_settings(write_settings({"caps": [rule]}))
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_contradictory_rules_are_rejected(write_settings) -> None:
    from campaigns.config.loading import load_settings

    path = write_settings(
        {
            "caps": [
                {"channel": "sms", "per": "30d"},
                {"channel": "sms", "max": 2, "per": "30d", "tiers": ["gold"]},
                {"channel": "sms", "per": "7d"},
                {"channel": "sms", "per": "14d", "tiers": ["gold", "silver"]},
            ]
        }
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [
        "caps[2]: contradicts caps[0] (two rolling rules for sms/marketing)",
        "caps[3]: contradicts caps[1] (two rolling rules for sms/marketing for tier 'gold')",
    ]
