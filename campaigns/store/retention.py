"""Retention: the ledger forgets what ``[ledger] retention`` says is no longer needed.

The cutoff is ``now - retention``, counted from when rows were decided (``created_at``;
a run's rows at its start). Settings validation keeps the retention at least the longest
cap window, the longest a decided message may wait (``Settings.hold_slack``) and the
reporting horizon together, so nothing that could still count against a cap, still be
sent, or still be reported on is ever old enough to go.

- PostgreSQL: a month's partition expires once its last instant is before the cutoff.
  It is dropped, or with ``[ledger] archive`` detached and kept as the table
  ``archived_deliveries_pYYYYMM`` (``pg_dump -t`` it, then drop it). A month that still
  holds a row on its way (queued or sending: a stuck message) is kept, and the reason
  is reported. Each removal waits at most ``LOCK_TIMEOUT`` for its lock on the ledger
  and is otherwise tried again on the next pass.
- SQLite: rows decided before the cutoff are deleted (not those on their way), in
  batches of ``BATCH`` so the single writer is never held long.

With the ledger go the rows only it gave meaning to: runs with nothing left in the
ledger (and their console snapshots), idempotency keys, expiring-points ladder marks,
providers' daily quota counts and members' conversations older than the cutoff, and
providers' raw events received before it (deleted in batches of ``BATCH``: the table
keeps one row per event key so a retried report is recognized, which a partition per
month could not promise across months).

The reconciler enforces it once a day; ``loyalcast ledger prune`` on demand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Engine, Table, and_, delete, func, select, text
from sqlalchemy.exc import OperationalError

from campaigns.config.settings import Settings
from campaigns.store import partitions
from campaigns.store.models import (
    campaign_runs,
    conversations,
    deliveries,
    idempotency_keys,
    ladder_marks,
    provider_events,
    quota_days,
    run_summaries,
)

log = logging.getLogger(__name__)

LOCK_TIMEOUT = "5s"
BATCH = 50_000


@dataclass
class Expired:
    """What one pass removed, and what it kept back and why."""

    cutoff: datetime
    dropped: list[str] = field(default_factory=list)
    """Partitions dropped (PostgreSQL)."""
    archived: list[str] = field(default_factory=list)
    """Partitions detached and renamed ``archived_...`` (``[ledger] archive``)."""
    kept: list[tuple[str, str]] = field(default_factory=list)
    """Expired partitions kept, and why."""
    rows: int = 0
    """Ledger rows removed (PostgreSQL: as the partitions' statistics count them)."""
    runs: int = 0
    keys: int = 0
    marks: int = 0
    events: int = 0
    """Providers' raw events removed (``provider_events``)."""

    def describe(self) -> str:
        parts = []
        if self.dropped:
            parts.append(f"dropped {', '.join(self.dropped)}")
        if self.archived:
            parts.append(f"archived {', '.join(self.archived)}")
        if self.rows:
            parts.append(f"{self.rows:,} ledger rows")
        if self.runs:
            parts.append(f"{self.runs} runs")
        if self.keys:
            parts.append(f"{self.keys} idempotency keys")
        if self.marks:
            parts.append(f"{self.marks} ladder marks")
        if self.events:
            parts.append(f"{self.events:,} provider events")
        for name, why in self.kept:
            parts.append(f"kept {name}: {why}")
        return "; ".join(parts) or "nothing older than the retention"


def enforce(engine: Engine, settings: Settings, now: datetime | None = None, *, dry_run: bool = False) -> Expired:
    """Remove what is older than ``[ledger] retention`` (``dry_run``: only say what)."""
    now = now or datetime.now(UTC)
    cutoff = now - settings.ledger.retention
    expired = Expired(cutoff)
    with engine.connect() as conn:
        partitioned = partitions.is_partitioned(conn)
    if partitioned:
        oldest_kept = _expire_months(engine, settings, expired, dry_run)
    else:
        oldest_kept = cutoff
        if not dry_run:
            expired.rows = _delete_rows(engine, cutoff)
    if not dry_run:
        _prune_the_rest(engine, expired, min(oldest_kept, cutoff), cutoff)
    if expired.dropped or expired.archived or expired.rows:
        log.info("ledger retention (%s): %s", settings.ledger.retention, expired.describe())
    return expired


def _expire_months(engine: Engine, settings: Settings, expired: Expired, dry_run: bool) -> datetime:
    """Drop or archive the months wholly before the cutoff; the start of the oldest
    month the ledger still has (the cutoff when none is older)."""
    with engine.connect() as conn:
        months = partitions.existing(conn)
    oldest_kept = expired.cutoff
    for month in months:
        start = datetime.combine(month.start, datetime.min.time(), tzinfo=UTC)
        end = datetime.combine(month.end, datetime.min.time(), tzinfo=UTC)
        if end > expired.cutoff:
            oldest_kept = min(oldest_kept, start)
            continue
        with engine.connect() as conn:
            on_its_way: int = conn.execute(text(f"SELECT count(*) FROM {month.name} WHERE is_open")).scalar_one()
            rows = conn.execute(text("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE relname = :n"), {"n": month.name})
            estimate = int(rows.scalar_one())
        if on_its_way:
            expired.kept.append((month.name, f"{on_its_way} deliveries still queued or sending"))
            oldest_kept = min(oldest_kept, start)
            continue
        if dry_run:
            (expired.archived if settings.ledger.archive else expired.dropped).append(month.name)
            expired.rows += estimate
            continue
        try:
            with engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                conn.execute(text(f"ALTER TABLE {partitions.PARENT} DETACH PARTITION {month.name}"))
                if settings.ledger.archive:
                    conn.execute(text(f"ALTER TABLE {month.name} RENAME TO archived_{month.name}"))
                else:
                    conn.execute(text(f"DROP TABLE {month.name}"))
        except OperationalError as exc:
            expired.kept.append((month.name, f"busy, tried again next time ({type(exc.orig).__name__})"))
            oldest_kept = min(oldest_kept, start)
            continue
        (expired.archived if settings.ledger.archive else expired.dropped).append(month.name)
        expired.rows += estimate
    return oldest_kept


def _delete_rows(engine: Engine, cutoff: datetime) -> int:
    """SQLite: delete the rows decided before ``cutoff`` that are not on their way."""
    return _delete_in_batches(engine, deliveries, and_(deliveries.c.created_at < cutoff, ~deliveries.c.is_open))


def _delete_in_batches(engine: Engine, table: Table, condition: ColumnElement[bool]) -> int:
    """Delete ``table``'s rows matching ``condition`` :data:`BATCH` at a time, each batch
    its own transaction (so no writer waits long); how many went."""
    removed = 0
    while True:
        with engine.begin() as conn:
            batch = select(table.c.id).where(condition).limit(BATCH)
            count = conn.execute(delete(table).where(table.c.id.in_(batch))).rowcount or 0
        removed += count
        if count < BATCH:
            return removed


def _prune_the_rest(engine: Engine, expired: Expired, before: datetime, cutoff: datetime) -> None:
    """What only the removed rows gave meaning to: ``before`` is the oldest instant the
    ledger still holds rows from."""
    with engine.begin() as conn:
        still_there = select(deliveries.c.run_id).where(deliveries.c.run_id == campaign_runs.c.id).exists()
        gone = select(campaign_runs.c.id).where(campaign_runs.c.started_at < before, ~still_there)
        gone_ids: list[int] = list(conn.execute(gone).scalars())
        if gone_ids:
            conn.execute(delete(run_summaries).where(run_summaries.c.run_id.in_(gone_ids)))
            expired.runs = conn.execute(delete(campaign_runs).where(campaign_runs.c.id.in_(gone_ids))).rowcount or 0
        expired.keys = conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < before)).rowcount or 0
        expired.marks = conn.execute(delete(ladder_marks).where(ladder_marks.c.expires_on < cutoff.date())).rowcount or 0
        conn.execute(delete(quota_days).where(quota_days.c.day < cutoff.date()))
        conn.execute(delete(conversations).where(conversations.c.last_inbound_at < cutoff))
    expired.events = _delete_in_batches(engine, provider_events, provider_events.c.received_at < cutoff)


def month_sizes(engine: Engine) -> list[dict[str, object]]:
    """The ledger's months (PostgreSQL): name, first day, estimated rows, bytes on disk."""
    with engine.connect() as conn:
        months = partitions.existing(conn)
        found = []
        for month in months:
            row = conn.execute(
                text("SELECT greatest(reltuples, 0)::bigint, pg_total_relation_size(oid) FROM pg_class WHERE relname = :n"),
                {"n": month.name},
            ).one()
            found.append(
                {"partition": month.name, "month": month.start.isoformat()[:7], "rows": int(row[0]), "bytes": int(row[1])}
            )
        if not months:
            total = conn.execute(select(func.count()).select_from(deliveries)).scalar_one()
            found.append({"partition": "deliveries", "month": None, "rows": int(total), "bytes": None})
    return found
