"""A run's queued deliveries as batches for ``deliver_batch``, streamed from the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from campaigns.store.ledger import Status, in_status
from campaigns.store.models import deliveries


def queued_batches(
    engine: Engine,
    run_id: int | None,
    batch_size: int,
    *,
    due_by: datetime | None = None,
    members: tuple[int, int] | None = None,
) -> Iterator[tuple[datetime, list[int]]]:
    """``(send_at, ids)`` of the run's ``queued`` deliveries, streamed from the database.

    A batch never mixes send times: all its deliveries are due at ``send_at``.
    ``due_by`` leaves out deliveries due later; ``members`` (first and last id,
    inclusive) keeps only those members' deliveries. ``run_id`` None: triggered messages.
    """
    run = deliveries.c.run_id.is_(None) if run_id is None else deliveries.c.run_id == run_id
    query = select(deliveries.c.id, deliveries.c.send_at).where(run, in_status(Status.QUEUED))
    if members is not None:
        query = query.where(deliveries.c.member_id.between(*members))
    if due_by is not None:
        query = query.where(deliveries.c.send_at <= due_by)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch_size).execute(query.order_by(deliveries.c.send_at, deliveries.c.id))
        batch: list[int] = []
        batch_due: datetime | None = None
        for row in result:
            if batch_due is not None and (row.send_at != batch_due or len(batch) >= batch_size):
                yield batch_due, batch
                batch = []
            batch_due = row.send_at
            batch.append(row.id)
        if batch_due is not None and batch:
            yield batch_due, batch


def waiting(engine: Engine, run_id: int, after: datetime) -> tuple[int, datetime | None]:
    """How many of the run's queued deliveries are due after ``after``, and the first such time."""
    with engine.connect() as conn:
        row = conn.execute(
            select(func.count(), func.min(deliveries.c.send_at)).where(
                deliveries.c.run_id == run_id,
                in_status(Status.QUEUED),
                deliveries.c.send_at > after,
            )
        ).one()
    count: int = row[0]
    first: datetime | None = row[1]
    return count, first


@dataclass(frozen=True)
class Overdue:
    run_id: int | None
    """None: triggered messages."""
    rows: int
    first_due: datetime


def overdue(engine: Engine, due_before: datetime) -> list[Overdue]:
    """Queued deliveries due before ``due_before``, per run (read from the open-rows index)."""
    with engine.connect() as conn:
        result = conn.execute(
            select(deliveries.c.run_id, func.count(), func.min(deliveries.c.send_at))
            .where(in_status(Status.QUEUED), deliveries.c.send_at < due_before)
            .group_by(deliveries.c.run_id)
        ).all()
    return [Overdue(row[0], row[1], row[2]) for row in result]


def open_runs(engine: Engine) -> list[int | None]:
    """Runs (None: triggered messages) with any queued delivery, due or not."""
    with engine.connect() as conn:
        found: list[int | None] = list(
            conn.execute(select(deliveries.c.run_id).where(in_status(Status.QUEUED)).distinct()).scalars()
        )
    return found
