"""What demo members did: point movements and purchases, before and after occasions.

``history`` gives every demo member two months of ordinary behaviour before the seed's
``now`` (purchases, the points they earned, some redeemed); ``loyalcast demo seed``
writes it. ``outcomes`` (``loyalcast demo outcomes``) adds what members did in the
window after each occasion that has run, reading the ledger: members the campaign
targeted and messaged redeem a little more often and let fewer points expire than the
members it held out, so ``loyalcast lift`` has a real effect to measure. Every number
is drawn from a random generator seeded by (seed, run, member): the same ledger always
gives the same outcomes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from campaigns.store.ledger import LEFT, ReasonCode
from campaigns.store.models import campaign_runs, deliveries, point_movements, purchases
from campaigns.tools.lift import WINDOW

HISTORY_DAYS = 60
CHUNK = 5_000
Row = dict[str, Any]


@dataclass(frozen=True)
class Behaviour:
    """Chances over one window (a member-occasion), by side."""

    redeem: float
    purchase: float
    expire: float


BASELINE = Behaviour(redeem=0.16, purchase=0.30, expire=0.12)
MESSAGED_BEHAVIOUR = Behaviour(redeem=0.24, purchase=0.33, expire=0.08)
"""A reminder works a little: more redeem, a few more buy, fewer let points lapse."""


def history(member_id: int, *, now: datetime, seed: int) -> tuple[list[Row], list[Row]]:
    """``(point movements, purchases)`` of one member over the :data:`HISTORY_DAYS` before ``now``."""
    rng = random.Random(f"{seed}:history:{member_id}")
    moves: list[Row] = []
    bought: list[Row] = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 4))):
        at = now - timedelta(days=rng.uniform(0, HISTORY_DAYS))
        amount = round(min(rng.lognormvariate(7.4, 0.7), 50_000), 2)
        bought.append({"member_id": member_id, "occurred_at": at, "amount": amount})
        moves.append({"member_id": member_id, "occurred_at": at, "kind": "earn", "points": round(amount * 0.05)})
    if rng.random() < BASELINE.redeem:
        at = now - timedelta(days=rng.uniform(0, HISTORY_DAYS))
        moves.append({"member_id": member_id, "occurred_at": at, "kind": "redeem", "points": rng.randrange(100, 1_000, 50)})
    return moves, bought


def _member_occasion(
    rng: random.Random, member_id: int, starts: datetime, ends: datetime, messaged: bool
) -> tuple[list[Row], list[Row]]:
    chances = MESSAGED_BEHAVIOUR if messaged else BASELINE
    span = (ends - starts).total_seconds()

    def moment() -> datetime:
        return starts + timedelta(seconds=rng.uniform(0, span))

    moves: list[Row] = []
    bought: list[Row] = []
    if rng.random() < chances.purchase:
        at, amount = moment(), round(min(rng.lognormvariate(7.4, 0.7), 50_000), 2)
        bought.append({"member_id": member_id, "occurred_at": at, "amount": amount})
        moves.append({"member_id": member_id, "occurred_at": at, "kind": "earn", "points": round(amount * 0.05)})
    if rng.random() < chances.redeem:
        moves.append({"member_id": member_id, "occurred_at": moment(), "kind": "redeem", "points": rng.randrange(100, 1_000, 50)})
    if rng.random() < chances.expire:
        moves.append({"member_id": member_id, "occurred_at": moment(), "kind": "expire", "points": rng.randrange(50, 600, 10)})
    return moves, bought


@dataclass(frozen=True)
class OutcomeReport:
    occasions: int
    member_occasions: int
    movements: int
    purchases: int


def outcomes(engine: Engine, *, now: datetime | None = None, seed: int = 42, window: timedelta = WINDOW) -> OutcomeReport:
    """Replace what members did since the first occasion with outcomes drawn from the
    ledger: for each planned occasion, each member it could reach, within ``window``
    after it (and before ``now``)."""
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        runs = conn.execute(
            select(campaign_runs.c.id, campaign_runs.c.as_of)
            .where(campaign_runs.c.dry_run.is_(False), campaign_runs.c.as_of < now)
            .order_by(campaign_runs.c.as_of)
        ).all()
    if not runs:
        return OutcomeReport(0, 0, 0, 0)
    with engine.begin() as conn:
        since = runs[0].as_of
        conn.execute(delete(point_movements).where(point_movements.c.occurred_at >= since))
        conn.execute(delete(purchases).where(purchases.c.occurred_at >= since))
    totals = [0, 0, 0]
    for run in runs:
        ends = min(run.as_of + window, now)
        for batch in _cohort(engine, run.id):
            moves: list[Row] = []
            bought: list[Row] = []
            for member_id, messaged in batch:
                rng = random.Random(f"{seed}:{run.id}:{member_id}")
                m, b = _member_occasion(rng, member_id, run.as_of, ends, messaged)
                moves += m
                bought += b
            with engine.begin() as conn:
                if moves:
                    conn.execute(insert(point_movements), moves)
                if bought:
                    conn.execute(insert(purchases), bought)
            totals[0] += len(batch)
            totals[1] += len(moves)
            totals[2] += len(bought)
    return OutcomeReport(len(runs), *totals)


def _cohort(engine: Engine, run_id: int) -> Iterator[list[tuple[int, bool]]]:
    """The run's reachable members as ``(member id, messaged)``, a chunk at a time."""
    after = -1
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.member_id, deliveries.c.status.in_(LEFT))
                .where(
                    deliveries.c.run_id == run_id,
                    deliveries.c.member_id > after,
                    deliveries.c.channel.is_not(None),
                    deliveries.c.reason_code != ReasonCode.GLOBAL_CONTROL.value,
                )
                .order_by(deliveries.c.member_id)
                .limit(CHUNK)
            ).all()
        if not rows:
            return
        yield [(int(row.member_id), bool(row[1])) for row in rows]
        after = int(rows[-1].member_id)
