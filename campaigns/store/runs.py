"""Campaign runs: one row per (campaign, occasion), claimed once.

An occasion is a campaign plus a key: the scheduled fire time, or for a manual run the
program-local date unless the caller names another. ``campaign_runs`` is unique on
(campaign, occasion), so whichever caller inserts the row owns the occasion and any
other (a second scheduler, a rerun, a redelivered message) finds it claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update
from sqlalchemy.engine import Connection

from campaigns.config.settings import Settings
from campaigns.config.zones import zone_info
from campaigns.store.engine import upsert_insert
from campaigns.store.models import campaign_runs, deliveries


class RunState(StrEnum):
    """Where a run stands (``campaign_runs.state``; a closed set)."""

    PLANNING = "planning"  # claimed; its members are being decided
    PLANNED = "planned"  # every member of the segment has a ledger decision
    SKIPPED = "skipped"  # a missed scheduled occasion the catch-up policy did not run


@dataclass(frozen=True)
class Run:
    id: int
    campaign: str
    occasion: str
    as_of: datetime
    state: RunState
    created: bool
    """False when the occasion had been claimed before (a rerun decides nothing new)."""
    started_at: datetime
    """When the run was claimed: every ledger row of the run has it as ``created_at``."""


def of_run(run_id: int, started_at: datetime) -> ColumnElement[bool]:
    """The ledger rows of run ``run_id`` started at ``started_at``: they all carry it as
    ``created_at``, so on PostgreSQL the query reads that month's partition alone."""
    return and_(deliveries.c.run_id == run_id, deliveries.c.created_at == started_at)


def occasion_for(settings: Settings, as_of: datetime) -> str:
    """The default occasion of a manual run: the program-local date of ``as_of``."""
    return as_of.astimezone(zone_info(settings.program.timezone)).date().isoformat()


def insert_run(
    conn: Connection,
    campaign: str,
    occasion: str,
    *,
    as_of: datetime,
    started_by: str,
    state: RunState = RunState.PLANNING,
    note: str = "",
    dry_run: bool = False,
) -> int | None:
    """Insert the run row; return its id, or None when the occasion was claimed before."""
    inserted: int | None = conn.execute(
        upsert_insert(conn, campaign_runs)
        .values(
            campaign=campaign,
            occasion=occasion,
            as_of=as_of,
            started_at=datetime.now(UTC),
            started_by=started_by,
            dry_run=dry_run,
            state=state.value,
            note=note,
        )
        .on_conflict_do_nothing()
        .returning(campaign_runs.c.id)
    ).scalar()
    return inserted


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
    settings.campaign(campaign)  # UnknownCampaign before anything is claimed
    occasion = occasion or occasion_for(settings, as_of)
    with engine.begin() as conn:
        inserted = insert_run(conn, campaign, occasion, as_of=as_of, started_by=started_by)
        row = conn.execute(
            select(campaign_runs).where(campaign_runs.c.campaign == campaign, campaign_runs.c.occasion == occasion)
        ).one()
    return Run(row.id, row.campaign, row.occasion, row.as_of, RunState(row.state), inserted is not None, row.started_at)


def load_run(engine: Engine, run_id: int) -> Run:
    with engine.connect() as conn:
        row = conn.execute(select(campaign_runs).where(campaign_runs.c.id == run_id)).one()
    return Run(row.id, row.campaign, row.occasion, row.as_of, RunState(row.state), False, row.started_at)


def renew_plan_lease(engine: Engine, run_id: int, until: datetime) -> None:
    """The run's planner (or the reconciler, for the message it sent) holds it until ``until``."""
    with engine.begin() as conn:
        conn.execute(
            update(campaign_runs)
            .where(campaign_runs.c.id == run_id, campaign_runs.c.state == RunState.PLANNING.value)
            .values(lease_until=until)
        )


def stalled_plans(engine: Engine, *, now: datetime, unclaimed_for: timedelta) -> list[int]:
    """Runs still ``planning`` whose planner's lease ran out (or that no planner ever
    took for ``unclaimed_for``): their plan message was lost or their planner died."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(campaign_runs.c.id)
                .where(
                    campaign_runs.c.state == RunState.PLANNING.value,
                    campaign_runs.c.dry_run.is_(False),
                    or_(
                        campaign_runs.c.lease_until < now,
                        and_(campaign_runs.c.lease_until.is_(None), campaign_runs.c.started_at < now - unclaimed_for),
                    ),
                )
                .order_by(campaign_runs.c.id)
            ).scalars()
        )
