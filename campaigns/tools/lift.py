"""Did it work? A campaign's effect against its control group (``loyalcast lift``).

The comparison is *intention to treat*: every member an occasion could reach is either
**targeted** (chosen to be messaged: most were, some were then capped, failed or
withdrawn) or **held out** by the campaign's holdout; both are random draws from the
same reachable members, stratified by tier, so any difference in what they did next is
the campaign's doing. Comparing only the members actually messaged with the held-out
would not be: which members a cap or a bounce removes is not random. Members of the
global control group are left out of both sides (they are a random share of both).

What members did comes from the program's ``point_movements`` (``earn``, ``redeem``,
``expire``; ``docs/data.md``) and, if the program has them, ``purchases``, within
``window`` (14 days by default) after each occasion's ``as_of``. Per side:

- the share of members who redeemed any points, and who purchased;
- points redeemed, points that expired (breakage) and purchase amount per member.

Each difference comes with its 95% confidence interval and p-value from statsmodels:
Newcombe's hybrid score interval for a difference of shares
(``confint_proportions_2indep``), Welch's t interval for a difference of means
(``CompareMeans.tconfint_diff`` with unequal variances). The database does the counting:
per member sums, then for each side the distribution of values (to the whole point or
currency unit), so a million-member occasion comes back as a few thousand rows.
Over several occasions the units are member-occasions, each with its own window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, String, and_, case, func, literal, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Subquery

from campaigns.config.settings import Settings
from campaigns.planning import control
from campaigns.store.ledger import LEFT, ReasonCode
from campaigns.store.models import UTCDateTime, campaign_runs, control_draws, deliveries, point_movements, purchases
from campaigns.store.runs import RunState

WINDOW = timedelta(days=14)
CONFIDENCE = 0.95
TARGETED, HELD_OUT = "targeted", "held_out"
LOWER_IS_BETTER = frozenset({"points_expired"})
"""Measures a campaign should bring down (breakage)."""


@dataclass(frozen=True)
class Metric:
    """One measure compared between the sides: ``targeted - held_out``."""

    name: str
    label: str
    kind: str
    """``share`` (of members, 0..1) or ``mean`` (per member, in points or currency)."""
    targeted: float
    held_out: float
    difference: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def signed(self, value: float) -> str:
        """A difference or bound as printed: ``+9.4%`` for a share, ``+42.4`` per member."""
        return f"{value:+.1%}" if self.kind == "share" else f"{value:+,.1f}"

    def level(self, value: float) -> str:
        """A side's value as printed: ``25.6%`` or ``136.3``."""
        return f"{value:.1%}" if self.kind == "share" else f"{value:,.1f}"

    @property
    def p_text(self) -> str:
        return "<0.001" if self.p_value < 0.001 else f"{self.p_value:.3f}"

    @property
    def verdict(self) -> str | None:
        """``better`` or ``worse`` for the program when the interval excludes zero (more
        redemption and purchases is better, more breakage worse), else None."""
        if not self.significant:
            return None
        up = self.low > 0
        return "better" if up != (self.name in LOWER_IS_BETTER) else "worse"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "kind": self.kind,
            "targeted": self.targeted,
            "held_out": self.held_out,
            "difference": self.difference,
            "ci95": [self.low, self.high],
            "p_value": self.p_value,
            "significant": self.significant,
            "verdict": self.verdict,
        }


@dataclass
class Lift:
    """The effect of a campaign's occasions (or of all marketing, for the global group)."""

    subject: str
    occasions: list[str]
    window: timedelta
    targeted: int
    held_out: int
    messaged: int
    """Targeted member-occasions whose message left."""
    open_until: datetime | None = None
    """A window not over yet: measured up to now, complete at this instant."""
    metrics: list[Metric] = field(default_factory=list)
    note: str = ""

    def metric(self, name: str) -> Metric:
        return next(metric for metric in self.metrics if metric.name == name)

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "occasions": self.occasions,
            "window_days": self.window / timedelta(days=1),
            "targeted": self.targeted,
            "held_out": self.held_out,
            "messaged": self.messaged,
            "open_until": self.open_until.isoformat() if self.open_until else None,
            "confidence": CONFIDENCE,
            "metrics": [metric.as_json() for metric in self.metrics],
            "note": self.note,
        }


@dataclass(frozen=True)
class Occasion:
    run_id: int
    occasion: str
    as_of: datetime


def occasions(engine: Engine, campaign: str) -> list[Occasion]:
    """The campaign's planned occasions, oldest first (dry runs and skipped ones left out)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(campaign_runs.c.id, campaign_runs.c.occasion, campaign_runs.c.as_of)
            .where(
                campaign_runs.c.campaign == campaign,
                campaign_runs.c.dry_run.is_(False),
                campaign_runs.c.state != RunState.SKIPPED.value,
            )
            .order_by(campaign_runs.c.as_of, campaign_runs.c.id)
        )
        return [Occasion(row.id, row.occasion, row.as_of) for row in rows]


def campaign_lift(
    engine: Engine,
    settings: Settings,
    campaign: str,
    *,
    occasion: str | None = None,
    window: timedelta = WINDOW,
    now: datetime | None = None,
) -> Lift:
    """The lift of one occasion of ``campaign``, or of all its occasions together.

    UnknownCampaign for a name settings do not define; a Lift with a ``note`` and no
    metrics when there is nothing to compare (no occasion, no holdout)."""
    settings.campaign(campaign)
    now = now or datetime.now(UTC)
    chosen = [o for o in occasions(engine, campaign) if occasion is None or o.occasion == occasion]
    if not chosen:
        what = f"occasion {occasion!r}" if occasion else "occasion"
        return Lift(campaign, [], window, 0, 0, 0, note=f"{campaign} has no planned {what} yet")
    ends = [min(o.as_of + window, now) for o in chosen]
    open_until = max((o.as_of + window for o in chosen if o.as_of + window > now), default=None)
    bounds = union_all(
        *(
            select(
                literal(o.run_id).label("run_id"),
                literal(o.as_of, UTCDateTime()).label("starts"),
                literal(end, UTCDateTime()).label("ends"),
            )
            for o, end in zip(chosen, ends, strict=True)
        )
    ).subquery("windows")
    side = case(
        (deliveries.c.reason_code == ReasonCode.HELD_OUT.value, literal(HELD_OUT, String)), else_=literal(TARGETED, String)
    )
    cohort = (
        select(
            deliveries.c.member_id,
            side.label("side"),
            bounds.c.starts,
            bounds.c.ends,
            deliveries.c.status.in_(LEFT).label("messaged"),
        )
        .select_from(deliveries.join(bounds, bounds.c.run_id == deliveries.c.run_id))
        .where(deliveries.c.channel.is_not(None), deliveries.c.reason_code != ReasonCode.GLOBAL_CONTROL.value)
        .subquery("cohort")
    )
    lift = measure(engine, campaign, [o.occasion for o in chosen], window, cohort)
    lift.open_until = open_until
    if not lift.held_out and not lift.note:
        lift.note = f"{campaign} held no one out (set holdout in [campaigns.{campaign}]): there is nothing to compare with"
    return lift


def global_lift(engine: Engine, settings: Settings, *, as_of: datetime | None = None, now: datetime | None = None) -> Lift:
    """All marketing against the global control group, over the period containing
    ``as_of`` (default: now), among the members drawn in that period."""
    now = now or datetime.now(UTC)
    period = control.period_of(settings.control, as_of or now, settings.program.timezone)
    draw = control.global_draw(settings, "marketing", period.start)
    subject = f"global control group {period.label}"
    if draw is None:
        return Lift(subject, [], period.end - period.start, 0, 0, 0, note="the global control group is off ([control] share)")
    ends = min(period.end, now)
    cohort = (
        select(
            control_draws.c.member_id,
            case((control_draws.c.held, literal(HELD_OUT, String)), else_=literal(TARGETED, String)).label("side"),
            literal(period.start, UTCDateTime()).label("starts"),
            literal(ends, UTCDateTime()).label("ends"),
            literal(False).label("messaged"),
        )
        .where(control_draws.c.draw == draw.key)
        .subquery("cohort")
    )
    lift = measure(engine, subject, [period.label], period.end - period.start, cohort)
    lift.open_until = period.end if period.end > now else None
    lift.messaged = _messaged_in(engine, draw.key, period.start, ends)
    return lift


def _messaged_in(engine: Engine, draw_key: str, start: datetime, end: datetime) -> int:
    """Members of the draw outside the group sent any marketing message in the period."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count(func.distinct(deliveries.c.member_id))).where(
                    deliveries.c.member_id.in_(
                        select(control_draws.c.member_id).where(control_draws.c.draw == draw_key, ~control_draws.c.held)
                    ),
                    deliveries.c.status.in_(LEFT),
                    deliveries.c.category != "service",
                    deliveries.c.send_at >= start,
                    deliveries.c.send_at < end,
                )
            ).scalar_one()
        )


MEASURES = (
    # name, label, kind, movement kind, measured by the share of members with any
    ("redeemed", "members who redeemed points", "share", "redeem"),
    ("points_redeemed", "points redeemed per member", "mean", "redeem"),
    ("points_expired", "points expired per member (breakage)", "mean", "expire"),
    ("purchased", "members who purchased", "share", "purchase"),
    ("amount_purchased", "purchase amount per member", "mean", "purchase"),
)


def measure(engine: Engine, subject: str, names: list[str], window: timedelta, cohort: Subquery) -> Lift:
    """Compare the sides of ``cohort`` (columns ``member_id``, ``side``, ``starts``,
    ``ends``, ``messaged``: one row per member-occasion) on what its members did."""
    with engine.connect() as conn:
        sizes = {
            (row.side, bool(row.messaged)): int(row.n)
            for row in conn.execute(
                select(cohort.c.side, cohort.c.messaged, func.count().label("n")).group_by(cohort.c.side, cohort.c.messaged)
            )
        }
        has_purchases = conn.execute(select(purchases.c.id).limit(1)).first() is not None
        distributions = _distributions(conn, cohort, has_purchases)
    targeted = sizes.get((TARGETED, True), 0) + sizes.get((TARGETED, False), 0)
    held_out = sizes.get((HELD_OUT, True), 0) + sizes.get((HELD_OUT, False), 0)
    lift = Lift(subject, names, window, targeted, held_out, sizes.get((TARGETED, True), 0))
    if targeted < 2 or held_out < 2:
        if held_out:
            lift.note = "fewer than two members on a side: no interval can be computed"
        return lift
    sizes_by_side = {TARGETED: targeted, HELD_OUT: held_out}
    for name, label, kind, movement in MEASURES:
        if movement == "purchase" and not has_purchases:
            continue
        lift.metrics.append(_compare(name, label, kind, distributions.get(movement, {}), sizes_by_side))
    if not has_purchases:
        lift.note = "no purchases recorded: purchase measures left out"
    return lift


Distribution = dict[str, dict[tuple[float, bool], int]]
"""Per side: ``{(value to the whole unit, value > 0): members}`` (members with none are
left out: they are the side's size less the rest)."""


def _distributions(conn: Connection, cohort: Subquery, has_purchases: bool) -> dict[str, Distribution]:
    moves = [select(point_movements.c.member_id, point_movements.c.occurred_at, point_movements.c.kind, point_movements.c.points)]
    if has_purchases:
        moves.append(
            select(
                purchases.c.member_id,
                purchases.c.occurred_at,
                literal("purchase", String).label("kind"),
                purchases.c.amount.label("points"),
            )
        )
    movements = (union_all(*moves) if len(moves) > 1 else moves[0]).subquery("movements")
    kinds = ["redeem", "expire"] + (["purchase"] if has_purchases else [])
    sums = [func.sum(case((movements.c.kind == kind, movements.c.points), else_=literal(0))).label(kind) for kind in kinds]
    # Only member-occasions with a movement in their window: the rest have zeros.
    per_member = (
        select(cohort.c.side, *sums)
        .select_from(
            cohort.join(
                movements,
                and_(
                    movements.c.member_id == cohort.c.member_id,
                    movements.c.occurred_at >= cohort.c.starts,
                    movements.c.occurred_at < cohort.c.ends,
                ),
            )
        )
        .group_by(cohort.c.member_id, cohort.c.starts, cohort.c.side)
        .cte("per_member")
    )
    # Rounded and compared to zero here once, so that GROUP BY names plain columns
    # (PostgreSQL would not match two copies of ``round(x)`` with separate parameters).
    valued = select(
        per_member.c.side,
        *(func.round(per_member.c[kind]).label(f"{kind}_value") for kind in kinds),
        *((per_member.c[kind] > 0).label(f"{kind}_positive") for kind in kinds),
    ).cte("valued")
    parts = [
        select(
            literal(kind, String).label("kind"),
            valued.c.side,
            valued.c[f"{kind}_value"].label("value"),
            valued.c[f"{kind}_positive"].label("positive"),
            func.count().label("n"),
        ).group_by(valued.c.side, valued.c[f"{kind}_value"], valued.c[f"{kind}_positive"])
        for kind in kinds
    ]
    found: dict[str, Distribution] = {}
    for row in conn.execute(union_all(*parts)):
        found.setdefault(row.kind, {}).setdefault(row.side, {})
        key = (float(row.value or 0), bool(row.positive))
        found[row.kind][row.side][key] = found[row.kind][row.side].get(key, 0) + int(row.n)
    return found


def _compare(name: str, label: str, kind: str, distribution: Distribution, sizes: dict[str, int]) -> Metric:
    # statsmodels (with numpy, scipy and pandas) costs the web process 60 MB: loaded when asked.
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        # statsmodels computes the ratio and odds ratio alongside: both divide by zero
        # when no held-out member did it, which says nothing about the difference.
        return _compare_with(name, label, kind, distribution, sizes)


def _compare_with(name: str, label: str, kind: str, distribution: Distribution, sizes: dict[str, int]) -> Metric:
    import numpy as np
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    alpha = 1 - CONFIDENCE
    if kind == "share":
        count = {side: sum(n for (_, positive), n in distribution.get(side, {}).items() if positive) for side in sizes}
        nobs = sizes
        low, high = confint_proportions_2indep(
            count[TARGETED], nobs[TARGETED], count[HELD_OUT], nobs[HELD_OUT], method="newcomb", compare="diff", alpha=alpha
        )
        p_value = test_proportions_2indep(
            count[TARGETED], nobs[TARGETED], count[HELD_OUT], nobs[HELD_OUT], method="wald", compare="diff"
        ).pvalue
        shares = {side: count[side] / nobs[side] for side in sizes}
        difference = shares[TARGETED] - shares[HELD_OUT]
        return Metric(name, label, kind, shares[TARGETED], shares[HELD_OUT], difference, float(low), float(high), _p(p_value))
    stats = {}
    for side, size in sizes.items():
        values: dict[float, int] = {}
        for (value, _), n in distribution.get(side, {}).items():
            values[value] = values.get(value, 0) + n
        values[0.0] = values.get(0.0, 0) + size - sum(values.values())
        stats[side] = DescrStatsW(np.array(list(values), dtype=float), weights=np.array(list(values.values()), dtype=float))
    compared = CompareMeans(stats[TARGETED], stats[HELD_OUT])
    means = {side: float(stats[side].mean) for side in sizes}
    if stats[TARGETED].var == 0 and stats[HELD_OUT].var == 0:
        # Every member alike on both sides (no one redeemed, say): no spread, no test.
        difference = means[TARGETED] - means[HELD_OUT]
        return Metric(name, label, kind, means[TARGETED], means[HELD_OUT], difference, difference, difference, 1.0)
    low, high = compared.tconfint_diff(alpha=alpha, usevar="unequal")
    p_value = compared.ttest_ind(usevar="unequal")[1]
    return Metric(
        name,
        label,
        kind,
        means[TARGETED],
        means[HELD_OUT],
        means[TARGETED] - means[HELD_OUT],
        float(low),
        float(high),
        _p(p_value),
    )


def _p(value: Any) -> float:
    """A p-value as a float; 1.0 where the test has nothing to go on (both shares 0 or 1)."""
    p = float(value)
    return p if math.isfinite(p) else 1.0
