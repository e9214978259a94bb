"""One batch's writes to the ledger as one claim owner (see ``campaigns.store.leases``).

A ``Claimant`` keeps one database connection for the whole batch, in autocommit: the
outcome of the previous row and the claim of the next are one statement that commits at
once, durable before the provider call it guards, with no pool checkout, ping or BEGIN
around it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from campaigns.store import leases
from campaigns.store.ledger import Outcome, ReasonCode, Status, add_suppressions

log = logging.getLogger(__name__)

SETTLE_EVERY = 100


@dataclass
class Pending:
    """Outcomes not yet written (written with the next claim, or at the end)."""

    outcomes: list[Outcome] = field(default_factory=list)
    """Of rows this owner claimed (written with the next claim, or at the end)."""
    settled: list[Outcome] = field(default_factory=list)
    """Of rows that never got to a provider call, still ``queued`` (stale, template
    errors, over budget): written every ``SETTLE_EVERY`` and at the end; a crash
    before that leaves them queued, to be decided again the same way."""
    suppress: list[dict[str, Any]] = field(default_factory=list)

    def clear(self) -> None:
        self.outcomes, self.suppress = [], []


class Claimant:
    """Claims and records rows as ``owner``; use as a context manager."""

    def __init__(self, engine: Engine, lease: timedelta) -> None:
        self.engine = engine
        self.lease = lease
        self.owner = leases.new_owner()
        self._conn: Connection | None = None

    def __enter__(self) -> Claimant:
        self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "Claimant used outside its with block"
        return self._conn

    def open(self, row_id: int, pending: Pending) -> bool:
        """Record ``pending`` and claim ``row_id`` for its provider call, in one durable
        write; False when the row is no longer ``queued`` (another worker has it)."""
        now = datetime.now(UTC)
        if pending.suppress:
            add_suppressions(self.conn, pending.suppress, now)
        if len(pending.settled) >= SETTLE_EVERY:
            self._settle(pending)
        result = leases.step(self.conn, self.owner, pending.outcomes, now=now, next_id=row_id, until=now + self.lease)
        self._check(pending, result.finished)
        pending.clear()
        return result.claimed

    def write(self, pending: Pending) -> None:
        """Write everything ``pending`` holds."""
        if pending.settled:
            self._settle(pending)
        if not pending.outcomes and not pending.suppress:
            return
        now = datetime.now(UTC)
        if pending.suppress:
            add_suppressions(self.conn, pending.suppress, now)
        result = leases.step(self.conn, self.owner, pending.outcomes, now=now)
        self._check(pending, result.finished)
        pending.clear()

    def _settle(self, pending: Pending) -> None:
        leases.settle_each(self.conn, pending.settled, now=datetime.now(UTC))
        pending.settled = []

    def fail_missing(self, ids: list[int]) -> None:
        """Queued rows whose member vanished from the program's table since planning."""
        outcomes = [
            Outcome(i, Status.FAILED, ReasonCode.MEMBER_MISSING, "member no longer exists", holds_slot=False) for i in ids
        ]
        leases.settle_each(self.conn, outcomes, now=datetime.now(UTC))

    @staticmethod
    def _check(pending: Pending, finished: int) -> None:
        if finished < len(pending.outcomes):
            log.warning(
                "%d outcomes not recorded: their claims had expired and were taken back", len(pending.outcomes) - finished
            )
