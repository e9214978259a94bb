"""Control groups: the stratified campaign holdout and the rotating global control group,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from helpers import add_members, cli, decided
from sqlalchemy import select

from campaigns.app import runtime
from campaigns.planning.planner import plan_run
from campaigns.store.models import control_draws
from campaigns.store.runs import claim_run

NO_QUIET_HOURS = {"quiet_hours": {"default": "off", "telegram": "off", "email": "off"}}
TIERS = {"basic": 6_130, "silver": 2_450, "gold": 1_120, "platinum": 300}
"""Uneven tiers of 10,000 members, the smallest one thirtieth of the base."""


def campaign(category: str, **extra: object) -> dict[str, object]:
    return {"segment": "has_balance", "template": "balance_reminder", "channels": ["telegram"], "category": category, **extra}


def tiered_members(count_by_tier: dict[str, int], first_id: int = 1) -> list[dict[str, object]]:
    """Members of each tier, interleaved over the id range, half of them in English."""
    tiers = [tier for tier, count in count_by_tier.items() for _ in range(count)]
    # Shuffled (with a fixed seed) so that no tier is one contiguous id range
    random.Random(first_id).shuffle(tiers)
    return [
        {
            "id": first_id + i,
            "tier": tier,
            "locale": "en" if i % 2 else "ru",
            "telegram_chat_id": first_id + i,
            "telegram_consent": True,
        }
        for i, tier in enumerate(tiers)
    ]


def plan_at(application: runtime.App, name: str, when: datetime) -> dict[int, object]:
    run = claim_run(application.engine, application.settings, name, as_of=when)
    plan_run(application.engine, application.settings, run.id)
    return decided(application.engine, run.id)


def held_by_tier(rows: dict[int, object], tier_of: dict[int, str], status: str = "held_out") -> Counter[str]:
    return Counter(tier_of[member_id] for member_id, row in rows.items() if row.status == status)  # type: ignore[attr-defined]


def test_stratified_holdout_is_within_one_point_in_every_tier(configured) -> None:
    # Given 10,000 members in four uneven tiers and a campaign holding out 10%, planned
    # in chunks of 1,000 members
    application = configured(
        {**NO_QUIET_HOURS, "delivery": {"plan_chunk_size": 1000}, "campaigns": {"promo": campaign("marketing", holdout=0.1)}}
    )
    rows = tiered_members(TIERS)
    add_members(application.engine, rows)
    tier_of = {int(row["id"]): str(row["tier"]) for row in rows}  # type: ignore[call-overload]

    # When the first occasion is planned
    start = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    first = plan_at(application, "promo", start)

    # Then every tier is held out in 10% of its members, within one point
    held = held_by_tier(first, tier_of)
    for tier, size in TIERS.items():
        assert abs(held[tier] / size - 0.1) <= 0.01, (tier, held[tier], size)
    # And the held-out rows say why, and hold no cap slot
    held_rows = [row for row in first.values() if row.status == "held_out"]
    assert {row.reason for row in held_rows} == {"control group (10% holdout) on telegram"}
    assert not any(row.holds_slot for row in held_rows)

    # When a later occasion is planned
    second = plan_at(application, "promo", start + timedelta(days=7))
    # Then the same members are held out
    assert {m for m, r in second.items() if r.status == "held_out"} == {m for m, r in first.items() if r.status == "held_out"}


def test_newcomers_continue_each_strata_share(configured) -> None:
    # Given a 20% holdout drawn over 1,000 members of two tiers
    application = configured({**NO_QUIET_HOURS, "campaigns": {"promo": campaign("marketing", holdout=0.2)}})
    first = tiered_members({"basic": 700, "gold": 300})
    add_members(application.engine, first)
    start = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    before = {m for m, r in plan_at(application, "promo", start).items() if r.status == "held_out"}

    # When 37 gold and 13 basic members join and the next occasion is planned
    joined = tiered_members({"gold": 37, "basic": 13}, first_id=2001)
    add_members(application.engine, joined)
    rows = plan_at(application, "promo", start + timedelta(days=7))

    # Then each tier is still held out in 20% to within one member of the whole tier
    tier_of = {int(row["id"]): str(row["tier"]) for row in first + joined}  # type: ignore[call-overload]
    held = held_by_tier(rows, tier_of)
    assert abs(held["gold"] - 0.2 * 337) <= 1 and abs(held["basic"] - 0.2 * 713) <= 1, held
    # And no member drawn before changed side; each member was drawn once
    assert {m for m, r in rows.items() if r.status == "held_out" and m <= 1000} == before
    with application.engine.connect() as conn:
        drawn = conn.execute(select(control_draws.c.member_id)).scalars().all()
    assert sorted(drawn) == sorted(tier_of)


def test_holdout_by_a_second_column(configured) -> None:
    # Given a holdout stratified by tier and locale
    application = configured({**NO_QUIET_HOURS, "campaigns": {"promo": campaign("marketing", holdout=0.1, holdout_by="locale")}})
    rows = tiered_members({"basic": 3_000, "gold": 1_000})
    add_members(application.engine, rows)

    # When it is planned
    decided_rows = plan_at(application, "promo", datetime(2026, 6, 1, 9, 0, tzinfo=UTC))

    # Then each (tier, locale) is held out in 10% within one member
    stratum = {int(row["id"]): f"{row['tier']} | {row['locale']}" for row in rows}  # type: ignore[call-overload]
    held = held_by_tier(decided_rows, stratum)
    sizes = Counter(stratum.values())
    assert set(sizes) == {"basic | ru", "basic | en", "gold | ru", "gold | en"}
    for name, size in sizes.items():
        assert abs(held[name] - size / 10) <= 1, (name, held[name], size)


def test_global_control_group_excludes_marketing_for_its_period(configured, tmp_path) -> None:
    # Given a 5% global control group rotated each quarter, a marketing campaign with its
    # own 10% holdout and a service campaign
    application = configured(
        {
            **NO_QUIET_HOURS,
            "control": {"share": 0.05, "rotation": "quarter"},
            "campaigns": {"promo": campaign("marketing", holdout=0.1), "notice": campaign("service")},
        }
    )
    rows = tiered_members({"basic": 3_000, "gold": 1_000})
    add_members(application.engine, rows)
    tier_of = {int(row["id"]): str(row["tier"]) for row in rows}  # type: ignore[call-overload]

    # When both run in November 2026
    november = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
    promo = plan_at(application, "promo", november)
    notice = plan_at(application, "notice", november)

    # Then 5% of each tier is in the global group, recorded with its own code and reason
    in_group = {m for m, r in promo.items() if r.reason_code == "global_control"}
    held = held_by_tier(promo, tier_of)
    group_by_tier = Counter(tier_of[m] for m in in_group)
    assert group_by_tier == {"basic": 150, "gold": 50}
    assert {promo[m].reason for m in in_group} == {"global control group (5%, 2026-Q4) on telegram"}
    assert all(promo[m].status == "held_out" for m in in_group)
    # And the campaign's own holdout is drawn independently (members of both groups count
    # once, as global control)
    assert held["basic"] - group_by_tier["basic"] < 300 < held["basic"]
    # And the service message reaches the global group
    assert all(notice[m].status == "queued" for m in in_group)

    # When marketing runs again in the same quarter, and in the next one
    december = plan_at(application, "promo", november + timedelta(days=30))
    january = plan_at(application, "promo", datetime(2027, 1, 12, 9, 0, tzinfo=UTC))
    # Then the group holds for the quarter, and the next quarter draws a new one of the same size
    assert {m for m, r in december.items() if r.reason_code == "global_control"} == in_group
    next_group = {m for m, r in january.items() if r.reason_code == "global_control"}
    assert len(next_group) == 200 and len(next_group & in_group) < 40

    # And `loyalcast control` reports the group per stratum with its turnover
    report = json.loads(cli(runtime.config_file(), "control", "--json", "--now", "2027-01-12T12:00+03:00").stdout)
    assert report["period"] == "2027-Q1"
    assert {(s["stratum"], s["members"], s["held"]) for s in report["strata"]} == {("basic", 3000, 150), ("gold", 1000, 50)}
    assert report["previous"] == {"period": "2026-Q4", "held": 200, "still_held": len(next_group & in_group)}

    # And `loyalcast lift --global` compares the period's group with the members drawn beside it
    document = json.loads(cli(runtime.config_file(), "lift", "--global", "--json", "--now", "2027-01-20T12:00+03:00").stdout)
    assert document["subject"] == "global control group 2027-Q1"
    assert (document["targeted"], document["held_out"]) == (3_800, 200)
    assert document["open_until"] == "2027-03-31T21:00:00+00:00"
