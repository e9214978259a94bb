"""Planning a campaign occasion: one ledger decision per member, made by the database.

An occasion is claimed once (``campaign_runs`` is unique on campaign and occasion).
Planning then walks the members in chunks of ids; per chunk, in one transaction:

1. lock the chunk's members (``cap_locks`` rows, in ``member_id`` order, so two planners
   never deadlock and never both see a free cap slot for the same member);
2. one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` writes a ``deliveries`` row for
   every member of the segment in the chunk: the channel (first reachable in the
   campaign's priority list), the status (``queued`` or why not) and a reason. A queued
   row holds its cap slot from the moment it is committed.

Rerunning an occasion (a retry, a redelivered message, a second ``run``) inserts nothing:
the unique ``(run_id, member_id)`` key absorbs it. Nothing here loads members into
Python; the only rows that come back are chunk boundaries.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.engine import Connection

from campaigns.db import upsert_insert
from campaigns.decisions import RunContext, decide_chunk, run_context
from campaigns.errors import UnknownCampaign
from campaigns.ledger import Status
from campaigns.models import campaign_runs, cap_locks, deliveries, members
from campaigns.settings import CampaignSettings, Settings

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 3


@dataclass(frozen=True)
class Run:
    id: int
    campaign: str
    occasion: str
    as_of: datetime
    state: str
    created: bool
    """False when the occasion had been claimed before (a rerun decides nothing new)."""


def occasion_for(settings: Settings, as_of: datetime) -> str:
    """The default occasion of a manual run: the program-local date of ``as_of``."""
    return as_of.astimezone(ZoneInfo(settings.program.timezone)).date().isoformat()


def campaign_settings(settings: Settings, name: str) -> CampaignSettings:
    try:
        return settings.campaigns[name]
    except KeyError:
        raise UnknownCampaign(name, list(settings.campaigns)) from None


def claim_run(
    engine: Engine,
    settings: Settings,
    campaign: str,
    *,
    as_of: datetime,
    occasion: str | None = None,
    started_by: str = "cli",
) -> Run:
    """Claim ``(campaign, occasion)``; return the existing run if it was claimed before."""
    campaign_settings(settings, campaign)
    occasion = occasion or occasion_for(settings, as_of)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        inserted = conn.execute(
            upsert_insert(conn, campaign_runs)
            .values(
                campaign=campaign,
                occasion=occasion,
                as_of=as_of,
                started_at=now,
                started_by=started_by,
                dry_run=False,
                state="planning",
            )
            .on_conflict_do_nothing()
            .returning(campaign_runs.c.id)
        ).scalar()
        row = conn.execute(
            select(campaign_runs).where(campaign_runs.c.campaign == campaign, campaign_runs.c.occasion == occasion)
        ).one()
    return Run(row.id, row.campaign, row.occasion, row.as_of, row.state, created=inserted is not None)


def load_run(engine: Engine, run_id: int) -> Run:
    with engine.connect() as conn:
        row = conn.execute(select(campaign_runs).where(campaign_runs.c.id == run_id)).one()
    return Run(row.id, row.campaign, row.occasion, row.as_of, row.state, created=False)


def plan_run(
    engine: Engine,
    settings: Settings,
    run_id: int,
    on_decided: Callable[[str, Counter[tuple[str, str]]], None] | None = None,
    on_planned: Callable[[tuple[int, int]], None] | None = None,
) -> int:
    """Decide every member of the run's segment; return how many new decisions were made.

    Idempotent: planning a run again (after a crash, or concurrently) adds only the
    decisions that are missing. ``on_decided(campaign, {(status, channel): n})`` hears
    about each committed chunk's new decisions (metrics); ``on_planned((first_id,
    last_id))`` hears that a chunk of members is decided and committed, in member order,
    so its deliveries can start while later chunks are being planned.
    """
    run = load_run(engine, run_id)
    campaign_settings(settings, run.campaign)
    with engine.connect() as conn:
        ctx = run_context(conn, settings, run.id, run.campaign, run.as_of)
    decided = 0
    for member_range, counts in _plan_chunks(engine, settings, ctx, member_chunks(engine, settings.delivery.plan_chunk_size)):
        decided += sum(counts.values())
        if on_decided is not None and counts:
            on_decided(run.campaign, counts)
        if on_planned is not None:
            on_planned(member_range)
    with engine.begin() as conn:
        considered = conn.execute(
            select(func.count()).select_from(deliveries).where(deliveries.c.run_id == run.id)
        ).scalar_one()
        conn.execute(
            update(campaign_runs)
            .where(campaign_runs.c.id == run.id)
            .values(state="planned", considered=considered, finished_planning_at=datetime.now(timezone.utc))
        )
    log.info("planned run %s (%s/%s): %d new decisions", run.id, run.campaign, run.occasion, decided)
    return decided


def member_chunks(engine: Engine, chunk_size: int) -> list[tuple[int, int]]:
    """Inclusive ``(first_id, last_id)`` ranges of about ``chunk_size`` members each.

    The boundaries are computed by the database (a window function), so only one row
    per chunk comes back.
    """
    numbered = select(members.c.id, func.row_number().over(order_by=members.c.id).label("rn")).subquery()
    with engine.connect() as conn:
        bounds = conn.execute(
            select(numbered.c.id).where(numbered.c.rn % chunk_size == 0).order_by(numbered.c.id)
        ).scalars().all()
        last = conn.execute(select(func.max(members.c.id))).scalar()
        first = conn.execute(select(func.min(members.c.id))).scalar()
    if first is None or last is None:
        return []
    ranges = []
    low = first
    for bound in bounds:
        ranges.append((low, bound))
        low = bound + 1
    if low <= last:
        ranges.append((low, last))
    return ranges


def _plan_chunks(
    engine: Engine, settings: Settings, ctx: RunContext, ranges: list[tuple[int, int]]
) -> Iterator[tuple[tuple[int, int], Counter[tuple[str, str]]]]:
    """Each chunk's member range and new decisions, in order, planned
    ``delivery.plan_connections`` at a time (chunks are independent: each locks only its
    own members).

    The database does the work of a chunk; planning two at once keeps both cores of a
    small database server busy while Python waits on one of them.
    """
    connections = settings.delivery.plan_connections if engine.dialect.name == "postgresql" else 1
    if connections == 1 or len(ranges) < 2:
        for member_range in ranges:
            yield member_range, _plan_chunk(engine, settings, ctx, member_range)
        return
    # The first chunk is decided and committed alone. On an empty ledger (a new
    # installation; statistics that say "no rows") PostgreSQL plans the cap-window
    # lookups as a scan of all of `deliveries` per member, which costs nothing while
    # the table is empty; a second chunk planned at the same moment kept that plan
    # while the first filled the table, and checked each of its members against every
    # row of a transaction still in progress: 224 s for one 20,000-member chunk, against
    # 0.2 s for the chunks planned once the first had committed and the table had pages.
    yield ranges[0], _plan_chunk(engine, settings, ctx, ranges[0])
    ranges = ranges[1:]
    with ThreadPoolExecutor(max_workers=connections, thread_name_prefix="plan") as pool:
        futures = [pool.submit(_plan_chunk, engine, settings, ctx, member_range) for member_range in ranges]
        try:
            for member_range, future in zip(ranges, futures):
                yield member_range, future.result()
        finally:
            # A failed chunk stops the rest; planning the run again completes it.
            for future in futures:
                future.cancel()


def _plan_chunk(
    engine: Engine, settings: Settings, ctx: RunContext, member_range: tuple[int, int]
) -> Counter[tuple[str, str]]:
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with engine.begin() as conn:
                lock_members(conn, member_range)
                return decide_chunk(conn, settings, ctx, member_range)
        except OperationalError as exc:
            if attempt == DEADLOCK_RETRIES or not _is_retryable(exc):
                raise
            log.warning("planning chunk %s of run %s: %s; retrying", member_range, ctx.run_id, exc.orig)
    raise AssertionError("unreachable")


def _is_retryable(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in {"40P01", "40001"} or "database is locked" in str(exc.orig)


def lock_members(conn: Connection, member_range: tuple[int, int]) -> None:
    """Serialize cap decisions per member for the rest of the transaction.

    PostgreSQL: one ``cap_locks`` row per member, locked ``FOR UPDATE`` in id order.
    SQLite: the INSERT makes this transaction the database's single writer at once.
    """
    conn.execute(
        upsert_insert(conn, cap_locks)
        .from_select(
            ["member_id"],
            select(members.c.id).where(members.c.id.between(*member_range)).order_by(members.c.id),
        )
        .on_conflict_do_nothing()
    )
    if conn.dialect.name == "postgresql":
        locked = (
            select(cap_locks.c.member_id)
            .where(cap_locks.c.member_id.between(*member_range))
            .order_by(cap_locks.c.member_id)
            .with_for_update()
            .subquery()
        )
        conn.execute(select(func.count()).select_from(locked))


def queued_batches(
    engine: Engine, run_id: int, batch_size: int, *, due_by: datetime | None = None,
    members: tuple[int, int] | None = None,
) -> Iterator[tuple[datetime, list[int]]]:
    """``(send_at, ids)`` of the run's ``queued`` deliveries, streamed from the database.

    A batch never mixes send times: all its deliveries are due at ``send_at``.
    ``due_by`` leaves out deliveries due later; ``members`` (first and last id,
    inclusive) keeps only those members' deliveries.
    """
    query = select(deliveries.c.id, deliveries.c.send_at).where(
        deliveries.c.run_id == run_id, deliveries.c.status == Status.QUEUED.value
    )
    if members is not None:
        query = query.where(deliveries.c.member_id.between(*members))
    if due_by is not None:
        query = query.where(deliveries.c.send_at <= due_by)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch_size).execute(
            query.order_by(deliveries.c.send_at, deliveries.c.id)
        )
        batch: list[int] = []
        batch_due: datetime | None = None
        for delivery_id, send_at in result:
            if batch and (send_at != batch_due or len(batch) >= batch_size):
                yield batch_due, batch  # type: ignore[misc]
                batch = []
            batch_due = send_at
            batch.append(delivery_id)
        if batch:
            yield batch_due, batch  # type: ignore[misc]


def waiting(engine: Engine, run_id: int, after: datetime) -> tuple[int, datetime | None]:
    """How many of the run's queued deliveries are due after ``after``, and the first such time."""
    with engine.connect() as conn:
        count, first = conn.execute(
            select(func.count(), func.min(deliveries.c.send_at)).where(
                deliveries.c.run_id == run_id,
                deliveries.c.status == Status.QUEUED.value,
                deliveries.c.send_at > after,
            )
        ).one()
    return count, first



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
    sms_sample: list[int] = field(default_factory=list)
    """Members who would get an SMS (up to SMS_SAMPLE), to estimate segments and cost."""

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for line in self.lines:
            per = counts.setdefault(line.status, {})
            per[line.channel] = per.get(line.channel, 0) + line.members
        return counts


def dry_run(
    engine: Engine, settings: Settings, campaign: str, *, as_of: datetime, occasion: str | None = None
) -> DryRun:
    """Decide every member exactly as ``run`` would, then roll every chunk back.

    The same SQL runs under the same member locks, so the counts equal those of a run
    started at the same instant; nothing is reserved, and the ledger is left unchanged.
    """
    campaign_settings(settings, campaign)
    occasion = occasion or occasion_for(settings, as_of)
    with engine.connect() as conn:
        existing = conn.execute(
            select(campaign_runs.c.id).where(campaign_runs.c.campaign == campaign, campaign_runs.c.occasion == occasion)
        ).scalar()
        if existing is not None:
            return DryRun(campaign, occasion, as_of, existing, [])
        ctx = run_context(conn, settings, 0, campaign, as_of)
    totals: dict[tuple[str, str, str], list[Any]] = {}
    sms_sample: list[int] = []
    for member_range in member_chunks(engine, settings.delivery.plan_chunk_size):
        with engine.connect() as conn:
            transaction = conn.begin()
            try:
                run_id = conn.execute(
                    campaign_runs.insert()
                    .values(campaign=campaign, occasion=f"{occasion} (dry run {uuid.uuid4().hex[:8]})", as_of=as_of,
                            started_at=datetime.now(timezone.utc), started_by="plan", dry_run=True, state="planning")
                    .returning(campaign_runs.c.id)
                ).scalar_one()
                lock_members(conn, member_range)
                decide_chunk(conn, settings, replace(ctx, run_id=run_id), member_range)
                if len(sms_sample) < SMS_SAMPLE:
                    sms_sample += conn.execute(
                        select(deliveries.c.member_id)
                        .where(deliveries.c.run_id == run_id, deliveries.c.channel == "sms",
                               deliveries.c.status == Status.QUEUED.value)
                        .order_by(deliveries.c.member_id)
                        .limit(SMS_SAMPLE - len(sms_sample))
                    ).scalars().all()
                deferred = deliveries.c.deferred_from.is_not(None)
                later = deliveries.c.send_at > as_of
                rows = conn.execute(
                    select(deliveries.c.status, deliveries.c.channel, deliveries.c.reason, deferred, later,
                           func.count(), func.min(deliveries.c.send_at), func.max(deliveries.c.send_at))
                    .where(deliveries.c.run_id == run_id)
                    .group_by(deliveries.c.status, deliveries.c.channel, deliveries.c.reason, deferred, later)
                ).all()
            finally:
                transaction.rollback()
        for status, channel, reason, is_deferred, is_later, count, first, last in rows:
            detail = _plan_detail(status, reason, bool(is_deferred), bool(is_later))
            key = (status, channel or "-", detail)
            entry = totals.setdefault(key, [0, first, last])
            entry[0] += count
            entry[1] = min(entry[1], first)
            entry[2] = max(entry[2], last)
    lines = [PlanLine(status, channel, detail, n, first, last) for (status, channel, detail), (n, first, last) in totals.items()]
    lines.sort(key=lambda line: (_STATUS_ORDER.get(line.status, 99), line.channel, line.detail))
    return DryRun(campaign, occasion, as_of, None, lines, sms_sample)


SMS_SAMPLE = 200

_STATUS_ORDER = {status.value: index for index, status in enumerate(Status)}


def _plan_detail(status: str, reason: str, deferred: bool, later: bool) -> str:
    if status == Status.QUEUED.value:
        if deferred:
            return reason.split(" (")[0].split(";")[0]
        return "due later (quiet hours or send_at_local)" if later else "due now"
    if status == Status.CAPPED.value:
        return reason.split(" (")[0].split(";")[0]
    return ""
