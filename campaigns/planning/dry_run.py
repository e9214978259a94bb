"""``loyalcast plan``: what ``run`` would decide now, computed and rolled back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from campaigns.config.settings import Settings
from campaigns.planning.context import run_context
from campaigns.planning.decisions import decide_chunk
from campaigns.planning.deferral import CAPPED_PREFIX, DEFERRED_PREFIX
from campaigns.planning.locks import lock_members
from campaigns.planning.planner import member_chunks
from campaigns.store import partitions
from campaigns.store.ledger import Status
from campaigns.store.models import campaign_runs, deliveries
from campaigns.store.runs import RunState, occasion_for
from channels.specs import channel_spec


@dataclass
class PlanLine:
    status: str
    channel: str
    detail: str
    members: int
    first_due: datetime | None
    last_due: datetime | None


@dataclass
class DryRun:
    """What ``run`` would decide now, computed without keeping anything."""

    campaign: str
    occasion: str
    as_of: datetime
    already_run: int | None
    """Id of the run that already decided this occasion (a run would decide nothing new)."""
    lines: list[PlanLine]
    samples: dict[str, list[int]] = field(default_factory=dict)
    """Per channel billed per segment: members who would get a message there (up to
    SAMPLE each), to estimate segments and cost."""

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for line in self.lines:
            per = counts.setdefault(line.status, {})
            per[line.channel] = per.get(line.channel, 0) + line.members
        return counts


def dry_run(engine: Engine, settings: Settings, campaign: str, *, as_of: datetime, occasion: str | None = None) -> DryRun:
    """Decide every member exactly as ``run`` would, then roll every chunk back.

    The same SQL runs under the same member locks, so the counts equal those of a run
    started at the same instant; nothing is reserved, and the ledger is left unchanged.
    """
    settings.campaign(campaign)
    occasion = occasion or occasion_for(settings, as_of)
    with engine.connect() as conn:
        existing = conn.execute(
            select(campaign_runs.c.id).where(campaign_runs.c.campaign == campaign, campaign_runs.c.occasion == occasion)
        ).scalar()
        if existing is not None:
            return DryRun(campaign, occasion, as_of, existing, [])
        ctx = run_context(conn, settings, 0, campaign, as_of)
    totals: dict[tuple[str, str, str], list[Any]] = {}
    measured = [channel for channel in settings.campaign(campaign).channels if channel_spec(channel).measure]
    samples: dict[str, list[int]] = {channel: [] for channel in measured}
    started = datetime.now(UTC)
    partitions.ensure_for(engine, started)
    for member_range in member_chunks(engine, settings.delivery.plan_chunk_size):
        with engine.connect() as conn:
            transaction = conn.begin()
            try:
                run_id: int = conn.execute(
                    campaign_runs.insert()
                    .values(
                        campaign=campaign,
                        occasion=f"{occasion} (dry run {uuid.uuid4().hex[:8]})",
                        as_of=as_of,
                        started_at=started,
                        started_by="plan",
                        dry_run=True,
                        state=RunState.PLANNING.value,
                    )
                    .returning(campaign_runs.c.id)
                ).scalar_one()
                lock_members(conn, member_range)
                decide_chunk(conn, settings, replace(ctx, run_id=run_id, decided_at=started), member_range)
                for channel, sample in samples.items():
                    if len(sample) < SAMPLE:
                        sample += (
                            conn.execute(
                                select(deliveries.c.member_id)
                                .where(
                                    deliveries.c.run_id == run_id,
                                    deliveries.c.channel == channel,
                                    deliveries.c.status == Status.QUEUED.value,
                                )
                                .order_by(deliveries.c.member_id)
                                .limit(SAMPLE - len(sample))
                            )
                            .scalars()
                            .all()
                        )
                deferred = deliveries.c.deferred_from.is_not(None)
                later = deliveries.c.send_at > as_of
                rows = conn.execute(
                    select(
                        deliveries.c.status,
                        deliveries.c.channel,
                        deliveries.c.cap_rule,
                        deferred,
                        later,
                        func.count(),
                        func.min(deliveries.c.send_at),
                        func.max(deliveries.c.send_at),
                    )
                    .where(deliveries.c.run_id == run_id)
                    .group_by(deliveries.c.status, deliveries.c.channel, deliveries.c.cap_rule, deferred, later)
                ).all()
            finally:
                transaction.rollback()
        for row in rows:
            status, channel, is_deferred, is_later, count, first, last = (
                str(row.status),
                row.channel,
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
            )
            detail = _plan_detail(status, row.cap_rule, bool(is_deferred), bool(is_later))
            key = (status, channel or "-", detail)
            entry = totals.setdefault(key, [0, first, last])
            entry[0] += count
            entry[1] = min(entry[1], first)
            entry[2] = max(entry[2], last)
    lines = [PlanLine(status, channel, detail, n, first, last) for (status, channel, detail), (n, first, last) in totals.items()]
    lines.sort(key=lambda line: (_STATUS_ORDER.get(line.status, 99), line.channel, line.detail))
    return DryRun(campaign, occasion, as_of, None, lines, samples)


SAMPLE = 200

_STATUS_ORDER = {status.value: index for index, status in enumerate(Status)}


def _plan_detail(status: str, cap_rule: str | None, deferred: bool, later: bool) -> str:
    if status == Status.QUEUED.value:
        if deferred:
            return f"{DEFERRED_PREFIX}{cap_rule}"
        return "due later (quiet hours or send_at_local)" if later else "due now"
    if status == Status.CAPPED.value:
        return f"{CAPPED_PREFIX}{cap_rule}"
    return ""
