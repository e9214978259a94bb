"""The ledger's monthly partitions (PostgreSQL).

``deliveries`` is partitioned by month of ``created_at`` (migration 0010): the partition
``deliveries_p202612`` holds the rows decided in December 2026 (UTC), and a run's rows
all carry the run's start. A row can only be written into a month whose partition
exists, so every writer makes sure of it first (:class:`Months`, asked by the planner
for its run's month and by a triggered decision for today's, and by the reconciler for
this month and the next each day); creating one takes a lock on the whole ledger for a
moment, so it happens once a month, ahead of time.

``[ledger] retention`` removes whole months (``campaigns.store.retention``). SQLite has
no partitions: its ledger is one table and these functions do nothing there.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, FromClause, column, false, literal_column, select, table, text, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, ProgrammingError

from campaigns.store.models import deliveries

log = logging.getLogger(__name__)

PARENT = "deliveries"
FILLFACTOR = 75
"""Each page keeps a quarter free, so claims and delivery reports update rows in place (HOT)."""
NAME = re.compile(r"^deliveries_p(\d{4})(\d{2})$")


@dataclass(frozen=True, order=True)
class Partition:
    """One month of the ledger: rows decided from ``start`` (inclusive) to ``end``."""

    start: date
    end: date
    name: str


def month_of(instant: datetime) -> date:
    """The first day of ``instant``'s month, in UTC."""
    return instant.astimezone(UTC).date().replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def name_of(month: date) -> str:
    return f"{PARENT}_p{month:%Y%m}"


def is_partitioned(conn: Connection) -> bool:
    """Whether the ledger is partitioned here (PostgreSQL at revision 0010 or later)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(text("SELECT relkind FROM pg_class WHERE relname = :name AND relkind IN ('p', 'r')"), {"name": PARENT})
    return kind.scalar() == "p"


def existing(conn: Connection) -> list[Partition]:
    """The ledger's partitions, oldest first (none on SQLite)."""
    if not is_partitioned(conn):
        return []
    names: list[str] = list(
        conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :parent"
            ),
            {"parent": PARENT},
        ).scalars()
    )
    found = []
    for name in names:
        matched = NAME.match(name)
        if matched:
            start = date(int(matched.group(1)), int(matched.group(2)), 1)
            found.append(Partition(start, next_month(start), name))
    return sorted(found)


def ensure(conn: Connection, month: date) -> bool:
    """Create ``month``'s partition unless it exists; whether it was created."""
    if not is_partitioned(conn) or month in {p.start for p in existing(conn)}:
        return False
    end = next_month(month)
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {name_of(month)} PARTITION OF {PARENT} "
            f"FOR VALUES FROM ('{month.isoformat()} 00:00+00') TO ('{end.isoformat()} 00:00+00') "
            f"WITH (fillfactor = {FILLFACTOR})"
        )
    )
    log.info("ledger partition %s created", name_of(month))
    return True


def covering(conn: Connection, since: datetime, until: datetime) -> list[str] | None:
    """The partitions holding rows decided from ``since`` to ``until``, oldest first;
    None when the ledger is not partitioned (SQLite)."""
    if not is_partitioned(conn):
        return None
    first, last = month_of(since), month_of(until)
    return [p.name for p in existing(conn) if first <= p.start <= last]


def rows_decided_between(conn: Connection, since: datetime, until: datetime, columns: list[str]) -> FromClause:
    """``columns`` of the ledger rows decided from ``since`` to ``until``, to read in a
    correlated lookup: the months' partitions by name on PostgreSQL (``UNION ALL``).

    Naming them, rather than bounding ``created_at``, leaves the lookup no condition but
    its own: with a bound on ``created_at`` the planner could choose to scan the primary
    key ``(id, created_at)`` of a month whose statistics still say it is empty (a month
    being written right now), a scan that grows with every row the plan inserts."""
    names = covering(conn, since, until)
    if names is None:
        return deliveries
    if not names:
        return select(*(literal_column(f"NULL::{_TYPES[c]}").label(c) for c in columns)).where(false()).subquery("none")
    parts: list[Any] = [select(*(column(c) for c in columns)).select_from(table(name)) for name in names]
    return union_all(*parts).subquery("decided") if len(parts) > 1 else parts[0].subquery("decided")


_TYPES = {"member_id": "bigint", "channel": "varchar", "category": "varchar", "send_at": "timestamptz", "holds_slot": "boolean"}


def refresh_statistics(engine: Engine, instant: datetime) -> bool:
    """Analyze ``instant``'s month when its statistics say it is empty and it is not:
    whether it did. A planner calls it after each chunk it wrote. Lookups plan their scans
    from these statistics, and a month analyzed while empty (the next month, created
    ahead, then vacuumed with every other table) would have each one scan the month whole
    while the plan fills it (measured: minutes per chunk instead of a second)."""
    with engine.connect() as conn:
        if not is_partitioned(conn):
            return False
        name = name_of(month_of(instant))
        tuples = conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = :n"), {"n": name}).scalar()
        if tuples is None or tuples > 0 or not conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {name})")).scalar():
            return False
    with engine.begin() as conn:
        conn.execute(text(f"ANALYZE {name}"))
    log.info("ledger partition %s analyzed: its statistics said it was empty", name)
    return True


class Months:
    """Makes sure the ledger has a partition for the months this process writes in;
    asks the database once per month and process. Thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._known: set[date] = set()
        self._lock = threading.Lock()

    def ensure_for(self, instant: datetime) -> None:
        """Make sure rows decided at ``instant`` (and next month's) have a partition."""
        month = month_of(instant)
        if month in self._known:
            return
        with self._lock:
            if month in self._known:
                return
            for wanted in (month, next_month(month)):
                try:
                    with self.engine.begin() as conn:
                        ensure(conn, wanted)
                except (IntegrityError, ProgrammingError):  # another process created it at the same moment
                    log.debug("partition %s was created by another process", name_of(wanted))
            self._known.add(month)


_by_engine: weakref.WeakKeyDictionary[Engine, Months] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


def ensure_for(engine: Engine, instant: datetime) -> None:
    """:meth:`Months.ensure_for` with one :class:`Months` per engine."""
    with _by_engine_lock:
        months = _by_engine.get(engine)
        if months is None:
            months = _by_engine[engine] = Months(engine)
    months.ensure_for(instant)
