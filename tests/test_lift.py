"""The effect of a campaign against its holdout (``loyalcast lift``): numbers checked by
hand and against statsmodels' own result on the raw per-member data."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from helpers import add_members, cli, decided
from scipy.stats import t as student_t
from sqlalchemy import insert
from statsmodels.stats.proportion import confint_proportions_2indep
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from campaigns.app import runtime
from campaigns.planning.planner import plan_run
from campaigns.store.models import point_movements, purchases
from campaigns.store.runs import claim_run
from campaigns.tools.lift import campaign_lift

NO_QUIET_HOURS = {"quiet_hours": {"default": "off", "telegram": "off", "email": "off"}}
OCCASION = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def setup(configured: Any, count: int, holdout: float) -> tuple[runtime.App, list[int], list[int]]:
    """``count`` Telegram members and one planned occasion of a campaign holding out
    ``holdout``; (app, targeted ids, held-out ids)."""
    application = configured(
        {
            **NO_QUIET_HOURS,
            "campaigns": {
                "promo": {
                    "segment": "has_balance",
                    "template": "balance_reminder",
                    "channels": ["telegram"],
                    "category": "marketing",
                    "holdout": holdout,
                }
            },
        }
    )
    add_members(application.engine, [{"id": i, "telegram_chat_id": i, "telegram_consent": True} for i in range(1, count + 1)])
    run = claim_run(application.engine, application.settings, "promo", as_of=OCCASION)
    plan_run(application.engine, application.settings, run.id)
    rows = decided(application.engine, run.id)
    held = sorted(m for m, row in rows.items() if row.status == "held_out")
    return application, sorted(set(rows) - set(held)), held


def move(application: runtime.App, member_id: int, kind: str, points: float, at: datetime = OCCASION + DAY) -> None:
    with application.engine.begin() as conn:
        if kind == "purchase":
            conn.execute(insert(purchases), [{"member_id": member_id, "occurred_at": at, "amount": points}])
        else:
            conn.execute(insert(point_movements), [{"member_id": member_id, "occurred_at": at, "kind": kind, "points": points}])


def wilson(count: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval for a share, written out (Newcombe 1998, method 3)."""
    p = count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_lift_matches_a_hand_computed_example(configured) -> None:
    # Given 20 members, 10 targeted and 10 held out (a 50% holdout in one tier is exact)
    application, targeted, held = setup(configured, 20, 0.5)
    assert len(targeted) == len(held) == 10
    # And in the 14 days after the occasion 4 targeted members redeemed 100, 200, 300 and
    # 400 points, one held-out member 100; 2 targeted and 4 held-out members had 50 expire
    for member_id, points in zip(targeted, (100, 200, 300, 400), strict=False):
        move(application, member_id, "redeem", points)
    move(application, held[0], "redeem", 100)
    for member_id in targeted[-2:] + held[-4:]:
        move(application, member_id, "expire", 50)
    # And movements outside the window, and earnings, which count for nothing
    move(application, targeted[5], "redeem", 1000, at=OCCASION - DAY)
    move(application, held[5], "redeem", 1000, at=OCCASION + 15 * DAY)
    move(application, held[6], "earn", 1000)

    # When the lift is measured after the window
    lift = campaign_lift(application.engine, application.settings, "promo", now=OCCASION + 30 * DAY)

    # Then the share who redeemed is 40% against 10%, with Newcombe's interval built from
    # the two Wilson intervals
    redeemed = lift.metric("redeemed")
    assert (lift.targeted, lift.held_out) == (10, 10)
    assert (redeemed.targeted, redeemed.held_out) == (0.4, 0.1)
    (l1, u1), (l2, u2) = wilson(4, 10), wilson(1, 10)
    difference = 0.4 - 0.1
    expected_low = difference - math.sqrt((0.4 - l1) ** 2 + (u2 - 0.1) ** 2)
    expected_high = difference + math.sqrt((u1 - 0.4) ** 2 + (0.1 - l2) ** 2)
    assert redeemed.difference == pytest.approx(0.3)
    assert (redeemed.low, redeemed.high) == pytest.approx((expected_low, expected_high), abs=1e-9)
    assert (round(redeemed.low, 4), round(redeemed.high, 4)) == (-0.0824, 0.5988)
    assert not redeemed.significant

    # And points redeemed per member are 100 against 10, with Welch's interval: sample
    # variances 200,000 / 9 and 9,000 / 9, Welch-Satterthwaite degrees of freedom
    points = lift.metric("points_redeemed")
    assert (points.targeted, points.held_out, points.difference) == pytest.approx((100, 10, 90))
    v1, v2 = 200_000 / 9 / 10, 9_000 / 9 / 10
    df = (v1 + v2) ** 2 / (v1**2 / 9 + v2**2 / 9)
    half = student_t.ppf(0.975, df) * math.sqrt(v1 + v2)
    assert (points.low, points.high) == pytest.approx((90 - half, 90 + half), abs=1e-9)
    assert (round(points.low, 1), round(points.high, 1)) == (-17.7, 197.7)

    # And breakage is 10 points per targeted member against 20 per held-out one
    expired = lift.metric("points_expired")
    assert (expired.targeted, expired.held_out, expired.difference) == pytest.approx((10, 20, -10))
    # And with no purchases recorded, the purchase measures are left out and said to be
    assert [m.name for m in lift.metrics] == ["redeemed", "points_redeemed", "points_expired"]
    assert "no purchases recorded" in lift.note


def test_lift_equals_statsmodels_on_the_raw_data_over_two_occasions(configured) -> None:
    # Given 600 members, 20% held out, and two occasions a week apart
    application, targeted, held = setup(configured, 600, 0.2)
    second = OCCASION + 7 * DAY
    run = claim_run(application.engine, application.settings, "promo", as_of=second)
    plan_run(application.engine, application.settings, run.id)
    # And random redemptions, expirations and purchases over five weeks
    rng = random.Random(16)
    moves = []
    for member_id in range(1, 601):
        for _ in range(rng.randrange(0, 4)):
            at = OCCASION - 3 * DAY + timedelta(hours=rng.randrange(0, 35 * 24))
            kind = rng.choice(["redeem", "redeem", "expire", "earn", "purchase"])
            moves.append((member_id, kind, float(rng.randrange(10, 500)), at))
    for member_id, kind, points, at in moves:
        move(application, member_id, kind, points, at)

    # When the lift is measured over both occasions with a 10-day window
    window = 10 * DAY
    lift = campaign_lift(application.engine, application.settings, "promo", window=window, now=OCCASION + 60 * DAY)

    # Then it equals statsmodels' result on the raw per member-occasion sums
    def sums(members: list[int], kind: str) -> np.ndarray:
        values = [
            sum(p for m, k, p, at in moves if m == member_id and k == kind and start <= at < start + window)
            for start in (OCCASION, second)
            for member_id in members
        ]
        return np.array(values, dtype=float)

    assert (lift.targeted, lift.held_out) == (2 * len(targeted), 2 * len(held))
    for name, kind in (("points_redeemed", "redeem"), ("points_expired", "expire"), ("amount_purchased", "purchase")):
        a, b = sums(targeted, kind), sums(held, kind)
        compared = CompareMeans(DescrStatsW(a), DescrStatsW(b))
        low, high = compared.tconfint_diff(usevar="unequal")
        metric = lift.metric(name)
        assert metric.difference == pytest.approx(a.mean() - b.mean(), abs=1e-9), name
        assert (metric.low, metric.high) == pytest.approx((low, high), abs=1e-9), name
        assert metric.p_value == pytest.approx(compared.ttest_ind(usevar="unequal")[1], abs=1e-12), name
    for name, kind in (("redeemed", "redeem"), ("purchased", "purchase")):
        a, b = sums(targeted, kind) > 0, sums(held, kind) > 0
        low, high = confint_proportions_2indep(a.sum(), a.size, b.sum(), b.size, method="newcomb", compare="diff")
        metric = lift.metric(name)
        assert metric.difference == pytest.approx(a.mean() - b.mean(), abs=1e-12), name
        assert (metric.low, metric.high) == pytest.approx((low, high), abs=1e-12), name


def test_lift_command_prints_json_and_names_an_open_window(configured) -> None:
    # Given an occasion 5 days ago and a redemption since
    application, targeted, held = setup(configured, 40, 0.25)
    move(application, targeted[0], "redeem", 70)

    # When `loyalcast lift promo --json` runs 5 days after the occasion
    now = (OCCASION + 5 * DAY).isoformat()
    document = json.loads(cli(runtime.config_file(), "lift", "promo", "--json", "--now", now).stdout)

    # Then it reports sizes, the window still open, and each measure with its interval
    assert (document["targeted"], document["held_out"], document["window_days"]) == (30, 10, 14)
    assert document["open_until"] == (OCCASION + 14 * DAY).isoformat()
    redeemed = next(m for m in document["metrics"] if m["name"] == "redeemed")
    assert redeemed["targeted"] == pytest.approx(1 / 30) and redeemed["held_out"] == 0
    assert len(redeemed["ci95"]) == 2 and redeemed["ci95"][0] < redeemed["difference"] < redeemed["ci95"][1]

    # And a campaign with no occasion, or an unknown window, gets a plain answer
    text = cli(runtime.config_file(), "lift", "promo", "--occasion", "2020-01", "--now", now).stdout
    assert "promo has no planned occasion '2020-01' yet" in text
    result = cli(runtime.config_file(), "lift", "promo", "--window", "fortnight", exit_code=2)
    assert "--window" in result.output


def test_less_breakage_is_better_and_more_redemption_too() -> None:
    # Given significant differences in both directions, When judged, Then breakage down is better
    from campaigns.tools.lift import Metric

    def metric(name: str, low: float, high: float) -> Metric:
        return Metric(name, name, "mean", 0, 0, (low + high) / 2, low, high, 0.01)

    assert metric("points_expired", -9, -1).verdict == "better" and metric("points_expired", 1, 9).verdict == "worse"
    assert metric("points_redeemed", 1, 9).verdict == "better" and metric("points_redeemed", -9, -1).verdict == "worse"
    assert metric("points_redeemed", -1, 9).verdict is None
