"""The reconciler: finds work the ledger holds and no message carries, and drives it again.

Redis and worker memory may vanish at any instant; the ledger does not. Each pass, in
this order (every step is idempotent, and two reconcilers racing do no harm: a row is
only ever sent by the worker whose claim took it):

1. **Expired leases** (``campaigns.store.leases.expire``): a row claimed for a provider
   call by a worker that stopped (or hung) ends ``unknown``; the rows it had not reached
   are still ``queued`` and are found by the next steps.
2. **A broker that lost its messages** (``backlog.lost_since_last_look``: Redis flushed
   or restarted empty, a new in-memory broker): every queued row, due or not, is
   enqueued again (delayed until due), and every run still planning is planned again.
3. **Orphans**: queued rows due for longer than ``reconciler.overdue``, on a run no
   worker holds a lease on, while nothing waits in the batches queue, have lost their
   message (a killed worker's, a dead-lettered one) and are enqueued again. While
   messages wait, a due row may simply be behind them, so nothing is added. On the
   in-memory broker (``serve``) the queue is this process's own, so a row is an orphan
   as soon as it is due (another command queued it).
4. **Stalled plans**: a run still ``planning`` whose planner lease lapsed (its planner
   died, or its plan message never reached a worker) is planned again, when no other
   plan message waits; the reconciler takes the lease for the message it sends.

Between steps 1 and 2 it applies providers' events that matched no ledger row when they
arrived (a delivery report faster than the worker's own "sent"), once a day removes
events older than ``[web] events_retention``, creates next month's ledger partition and
enforces ``[ledger] retention`` (``campaigns.store.retention``), and decides the campaigns' fallbacks that
are due (``campaigns.planning.cascade``: a message not delivered in time, once more on
another channel), enqueued delayed until due.

It runs inside ``loyalcast scheduler`` and ``loyalcast serve`` every
``reconciler.interval``, and once with ``loyalcast reconcile``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import dramatiq

from campaigns import metrics
from campaigns.app import actors, backlog, runtime
from campaigns.planning import cascade
from campaigns.planning.batches import open_runs, overdue
from campaigns.store import events, leases, partitions, retention
from campaigns.store.runs import renew_plan_lease, stalled_plans

log = logging.getLogger("loyalcast.reconciler")


@dataclass
class Pass:
    """What one pass found and did."""

    broker_lost: bool = False
    unknown: int = 0
    """Rows whose call had started when their lease expired, now ``unknown``."""
    overdue: int = 0
    """Queued rows due for longer than ``reconciler.overdue`` (before this pass re-drove them)."""
    redriven_runs: list[int | None] = field(default_factory=list)
    """Runs whose queued rows were enqueued again (None: triggered messages)."""
    messages: int = 0
    """``deliver_batch`` messages sent."""
    replanned: list[int] = field(default_factory=list)
    matched_events: int = 0
    """Providers' events kept unmatched (they arrived before the worker recorded the
    send) that matched a ledger row in this pass."""
    fallbacks: int = 0
    """Fallback messages decided (on another channel, for messages not delivered in time)."""
    expired: retention.Expired | None = None
    """What the day's retention pass removed (the first pass of a day)."""

    @property
    def acted(self) -> bool:
        return bool(self.broker_lost or self.unknown or self.messages or self.replanned or self.fallbacks)

    def describe(self) -> str:
        parts = []
        if self.broker_lost:
            parts.append("the broker had lost its messages")
        if self.unknown:
            parts.append(f"{self.unknown} calls in flight of lost workers ended unknown")
        if self.messages:
            runs = ", ".join("triggered" if r is None else str(r) for r in self.redriven_runs)
            parts.append(f"{self.messages} batches enqueued again (runs {runs})")
        if self.replanned:
            parts.append(f"runs {', '.join(map(str, self.replanned))} planned again")
        if self.matched_events:
            parts.append(f"{self.matched_events} early delivery reports matched")
        if self.fallbacks:
            parts.append(f"{self.fallbacks} fallbacks decided for messages not delivered in time")
        return "; ".join(parts) or "nothing to do"


class Reconciler:
    def __init__(self, application: runtime.App, broker: dramatiq.Broker) -> None:
        self.app = application
        self.broker = broker
        self._pruned_on: date | None = None

    def run_once(self, now: datetime | None = None) -> Pass:
        now = now or datetime.now(UTC)
        settings = self.app.settings
        engine = self.app.engine
        result = Pass(broker_lost=backlog.lost_since_last_look(self.broker))

        with engine.begin() as conn:
            result.unknown = leases.expire(conn, now=now)
        # Delivery reports that overtook the worker's own "sent", and the audit trail's age limit.
        with engine.begin() as conn:
            result.matched_events = events.apply_unmatched(conn, now)
            if self._pruned_on != now.date():
                events.prune(conn, now - settings.web.events_retention)
        if self._pruned_on != now.date():
            # Once a day: next month's partition ahead of time, and the ledger's retention.
            partitions.ensure_for(engine, now)
            result.expired = retention.enforce(engine, settings, now)
            self._pruned_on = now.date()

        for fallback in cascade.fall_back(engine, settings, now):
            result.fallbacks += 1
            if fallback.status == "queued":
                actors.carry(fallback.send_at, [fallback.delivery_id])

        # On the in-memory broker the queue is this process's own: a due row it holds
        # no message for was queued by another command and is sent at once.
        cutoff = now if self.app.in_memory else now - settings.reconciler.overdue
        late = overdue(engine, cutoff)
        result.overdue = sum(o.rows for o in late)
        if result.broker_lost:
            for run_id in open_runs(engine):
                self._redrive(result, run_id, now, due_only=not self.app.keeps_delayed)
        elif late and backlog.waiting(self.broker, actors.BATCHES_QUEUE) == 0:
            with engine.connect() as conn:
                idle = [o.run_id for o in late if leases.live_leases(conn, o.run_id, now=now) == 0]
            for run_id in idle:
                self._redrive(result, run_id, now, due_only=True)

        stalled = stalled_plans(engine, now=now, unclaimed_for=settings.reconciler.overdue)
        if stalled and (result.broker_lost or backlog.waiting(self.broker, actors.PLANS_QUEUE) == 0):
            for run_id in stalled:
                renew_plan_lease(engine, run_id, now + settings.delivery.plan_lease)
                actors.plan_campaign.send(run_id)
                result.replanned.append(run_id)

        metrics.reconciled(result.overdue, len(stalled), result.unknown)
        if result.acted:
            log.warning("reconciler: %s", result.describe())
        return result

    def _redrive(self, result: Pass, run_id: int | None, now: datetime, *, due_only: bool) -> None:
        sent = actors.enqueue_batches(run_id, now, due_only=due_only)
        if sent:
            result.redriven_runs.append(run_id)
            result.messages += sent
