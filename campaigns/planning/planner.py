"""Planning a campaign occasion: one ledger decision per member, made by the database.

An occasion is claimed once (``campaign_runs`` is unique on campaign and occasion).
Planning then walks the members in chunks of ids; per chunk, in one transaction:

1. lock the chunk's members (``campaigns.planning.locks``: in ``member_id`` order, so two
   planners never deadlock and never both see a free cap slot for the same member);
2. one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` writes a ``deliveries`` row for
   every member of the segment in the chunk: the channel (first reachable in the
   campaign's priority list), the status (``queued`` or why not) and a reason. A queued
   row holds its cap slot from the moment it is committed.

Rerunning an occasion (a retry, a redelivered message, a second ``run``) inserts nothing:
the unique ``(run_id, member_id, created_at)`` key absorbs it (a run's rows share its
start as ``created_at``); a chunk the run has not touched yet is inserted without
looking for conflicts at all. Nothing here loads members into
Python; the only rows that come back are chunk boundaries.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import OperationalError

from campaigns.config.settings import Settings
from campaigns.planning.context import RunContext, run_context
from campaigns.planning.decisions import decide_chunk
from campaigns.planning.locks import BUCKET, lock_members
from campaigns.store import partitions
from campaigns.store.models import campaign_runs, deliveries, members
from campaigns.store.runs import RunState, load_run, of_run, renew_plan_lease

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 3


@dataclass(frozen=True)
class PlannedChunk:
    """One committed chunk of a run: its members and the new decisions it made."""

    campaign: str
    members: tuple[int, int]
    """First and last member id of the chunk, inclusive."""
    counts: Counter[tuple[str, str]]
    """New ledger rows per ``(status, channel)`` (``"-"`` when no channel was reachable)."""


def plan_chunks(engine: Engine, settings: Settings, run_id: int) -> Iterator[PlannedChunk]:
    """Decide every member of the run's segment, yielding each chunk once it is committed.

    Chunks come in member order, so their deliveries can start while later chunks are
    being planned. When the last chunk has been yielded the run is marked planned.
    Idempotent: planning a run again (after a crash, or concurrently) adds only the
    decisions that are missing. The planner holds the run under a lease
    (``delivery.plan_lease``) renewed per chunk; when it lapses, the reconciler plans
    the run again.
    """
    run = load_run(engine, run_id)
    settings.campaign(run.campaign)
    lease = settings.delivery.plan_lease
    renew_plan_lease(engine, run.id, datetime.now(UTC) + lease)
    partitions.ensure_for(engine, run.started_at)
    with engine.connect() as conn:
        ctx = run_context(conn, settings, run.id, run.campaign, run.as_of, decided_at=run.started_at)
    decided = 0
    for member_range, counts in _plan_chunks(engine, settings, ctx, member_chunks(engine, settings.delivery.plan_chunk_size)):
        decided += sum(counts.values())
        renew_plan_lease(engine, run.id, datetime.now(UTC) + lease)
        partitions.refresh_statistics(engine, run.started_at)
        yield PlannedChunk(run.campaign, member_range, counts)
    with engine.begin() as conn:
        considered = conn.execute(select(func.count()).select_from(deliveries).where(of_run(run.id, run.started_at))).scalar_one()
        conn.execute(
            update(campaign_runs)
            .where(campaign_runs.c.id == run.id)
            .values(state=RunState.PLANNED.value, considered=considered, finished_planning_at=datetime.now(UTC), lease_until=None)
        )
    log.info("planned run %s (%s/%s): %d new decisions", run.id, run.campaign, run.occasion, decided)


def plan_run(engine: Engine, settings: Settings, run_id: int) -> int:
    """Plan the whole run (see ``plan_chunks``); return how many new decisions were made."""
    return sum(sum(chunk.counts.values()) for chunk in plan_chunks(engine, settings, run_id))


ALIGN_FROM = 4 * BUCKET
"""Chunk sizes from which chunk boundaries follow the lock buckets' (a chunk is then at
most a bucket longer than asked)."""


def member_chunks(engine: Engine, chunk_size: int) -> list[tuple[int, int]]:
    """Inclusive ``(first_id, last_id)`` ranges of about ``chunk_size`` members each.

    The boundaries are computed by the database (a window function), so only one row
    per chunk comes back. Chunks of at least :data:`ALIGN_FROM` members end where a
    bucket of member locks ends (``locks.BUCKET``), so chunks planned at once never wait
    for each other's locks (smaller ones may share a bucket and wait: still correct).
    """
    numbered = select(members.c.id, func.row_number().over(order_by=members.c.id).label("rn")).subquery()
    with engine.connect() as conn:
        bounds: list[int] = list(
            conn.execute(select(numbered.c.id).where(numbered.c.rn % chunk_size == 0).order_by(numbered.c.id)).scalars().all()
        )
        last = conn.execute(select(func.max(members.c.id))).scalar()
        first = conn.execute(select(func.min(members.c.id))).scalar()
    if first is None or last is None:
        return []
    ranges = []
    low = first
    for bound in bounds:
        if chunk_size >= ALIGN_FROM:
            bound = (bound // BUCKET + 1) * BUCKET - 1
        if bound < low:
            continue
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
            for member_range, future in zip(ranges, futures, strict=True):
                yield member_range, future.result()
        finally:
            # A failed chunk stops the rest; planning the run again completes it.
            for future in futures:
                future.cancel()


def _plan_chunk(engine: Engine, settings: Settings, ctx: RunContext, member_range: tuple[int, int]) -> Counter[tuple[str, str]]:
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
