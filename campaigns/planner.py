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
from collections.abc import Iterator
from dataclasses import dataclass
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


def plan_run(engine: Engine, settings: Settings, run_id: int) -> int:
    """Decide every member of the run's segment; return how many new decisions were made.

    Idempotent: planning a run again (after a crash, or concurrently) adds only the
    decisions that are missing.
    """
    run = load_run(engine, run_id)
    campaign_settings(settings, run.campaign)
    with engine.connect() as conn:
        ctx = run_context(conn, settings, run.id, run.campaign, run.as_of)
    decided = 0
    for member_range in member_chunks(engine, settings.delivery.plan_chunk_size):
        decided += _plan_chunk(engine, settings, ctx, member_range)
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


def _plan_chunk(engine: Engine, settings: Settings, ctx: RunContext, member_range: tuple[int, int]) -> int:
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
    engine: Engine, run_id: int, batch_size: int, *, due_by: datetime | None = None
) -> Iterator[tuple[datetime, list[int]]]:
    """``(send_at, ids)`` of the run's ``queued`` deliveries, streamed from the database.

    A batch never mixes send times: all its deliveries are due at ``send_at``.
    ``due_by`` leaves out deliveries due later.
    """
    query = select(deliveries.c.id, deliveries.c.send_at).where(
        deliveries.c.run_id == run_id, deliveries.c.status == Status.QUEUED.value
    )
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

