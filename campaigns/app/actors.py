"""Dramatiq actors of loyalcast. Thin on purpose: broker setup, then actors that call
into planning and delivery (and, through them, ``channels``); no business rule lives
here.

Importing this module installs the broker the settings name (Dramatiq binds actors to
the broker that is global when they are declared). Workers load it through the
top-level ``workers`` module (``dramatiq workers``, or ``loyalcast worker``); the
settings file comes from ``$LOYALCAST_CONFIG`` (default ``./settings.toml``).

Queues (a worker serves all three unless told otherwise; within a worker, triggered
messages go first, whatever is waiting in the other queues):

- ``triggered``: one message per triggered send (``send_triggered``), priority 0;
- ``plans``: one message per campaign occasion (``plan_campaign``), priority 50;
- ``batches``: campaign deliveries, a batch of ledger ids per message
  (``deliver_batch``), priority 100.

Another service can enqueue a triggered message knowing only the Redis URL; see
``docs/triggered.md``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq

from campaigns import logs, metrics
from campaigns.app import runtime
from campaigns.planning import triggered
from campaigns.planning.batches import queued_batches
from campaigns.planning.planner import plan_chunks
from campaigns.store.runs import load_run

log = logging.getLogger("loyalcast.workers")

broker = runtime.install_broker()
if runtime.running_under_dramatiq():
    logs.configure(runtime.app().settings.logging.format, runtime.app().settings.logging.level.upper())

TRIGGERED_QUEUE = "triggered"
PLANS_QUEUE = "plans"
BATCHES_QUEUE = "batches"
QUEUES = (TRIGGERED_QUEUE, PLANS_QUEUE, BATCHES_QUEUE)
"""Every queue loyalcast's actors use (``loyalcast worker --queue`` takes these)."""


TRIGGERED_TIME_LIMIT_S = 300
"""Dramatiq's time limit for one triggered message (its delivery stops in time within it)."""


@dramatiq.actor(queue_name=TRIGGERED_QUEUE, priority=0, max_retries=10, time_limit=TRIGGERED_TIME_LIMIT_S * 1000)
def send_triggered(
    member_id: int, template: str, data: dict[str, Any] | None, idempotency_key: str, category: str | None = None
) -> None:
    """Decide and deliver one triggered message (see ``campaigns.planning.triggered``)."""
    app = runtime.app()
    decided = triggered.decide(
        app.engine, app.settings, int(member_id), str(template), {} if data is None else data, idempotency_key, category
    )
    if decided.status != "queued":
        log.info("triggered %s for member %s: %s (%s)", template, member_id, decided.status, decided.reason)
        return
    if decided.send_at - datetime.now(UTC) > CARRY_NOW:  # quiet hours, or a deferring cap
        carry(decided.send_at, [decided.delivery_id])
        return
    report = app.deliverer.deliver([decided.delivery_id], deadline=time.monotonic() + TRIGGERED_TIME_LIMIT_S)
    for due, ids in report.later:
        carry(due, ids)


@dramatiq.actor(queue_name=PLANS_QUEUE, priority=50, max_retries=5, time_limit=3_600_000)
def plan_campaign(run_id: int, now: str | None = None) -> None:
    """Decide every member of a claimed run and enqueue its queued deliveries in batches,
    each chunk of members as soon as it is decided (delivery overlaps planning).

    ``now`` (ISO-8601) is the instant the run was started for (``--now``; default: the
    run's ``as_of``): batches are delayed until their deliveries are due relative to it,
    so a trial keeps the spacing quiet hours and caps gave it.

    Planned again after a crash, every chunk's queued deliveries are enqueued again;
    a batch that arrives twice sends nothing twice (the ledger claim decides).
    """
    app = runtime.app()
    reference = datetime.fromisoformat(now) if now else load_run(app.engine, run_id).as_of
    batches = 0
    for chunk in plan_chunks(app.engine, app.settings, run_id):
        if chunk.counts:
            metrics.decisions(chunk.campaign, chunk.counts)
        # A one-shot in-memory broker lives only as long as `loyalcast run`: it gets
        # what is due now; the rest waits in the ledger for `loyalcast serve`.
        batches += enqueue_batches(run_id, reference, due_only=not app.keeps_delayed, members=chunk.members)
    log.info("run %s: %d batches enqueued", run_id, batches)


CARRY_NOW = timedelta(seconds=1)
"""A delivery due sooner than this is sent without a delay."""


def enqueue_batches(run_id: int | None, now: datetime, *, due_only: bool = False, members: tuple[int, int] | None = None) -> int:
    """Send one ``deliver_batch`` message per batch of the run's queued deliveries (of
    ``members``, first and last id, if given; ``run_id`` None: triggered messages),
    delayed until the batch is due (relative to ``now``); return how many were sent."""
    app = runtime.app()
    sent = 0
    due_by = now if due_only else None
    for send_at, ids in queued_batches(app.engine, run_id, app.settings.delivery.batch_size, due_by=due_by, members=members):
        _send_batch(ids, max(int((send_at - now).total_seconds() * 1000), 0))
        sent += 1
    return sent


def carry(due: datetime, ids: list[int]) -> None:
    """Carry ``ids`` in a new ``deliver_batch`` message delayed until ``due``. A one-shot
    in-memory broker does not outlive its command: rows due later stay in the ledger,
    where ``loyalcast serve`` (its reconciler) finds them."""
    app = runtime.app()
    delay = due - datetime.now(UTC)
    if delay > CARRY_NOW and not app.keeps_delayed:
        log.info("%d deliveries due at %s wait in the ledger for `loyalcast serve`", len(ids), due.isoformat())
        return
    _send_batch(ids, max(int(delay.total_seconds() * 1000), 0))


def _send_batch(ids: list[int], delay_ms: int) -> None:
    limit_ms = int(runtime.app().settings.delivery.batch_time_limit.total_seconds() * 1000)
    deliver_batch.send_with_options(args=(ids,), delay=delay_ms or None, time_limit=limit_ms)


@dramatiq.actor(queue_name=BATCHES_QUEUE, priority=100, max_retries=50, time_limit=1_800_000)
def deliver_batch(delivery_ids: list[int]) -> None:
    """Send the still-queued, due deliveries among ``delivery_ids``; carry the rest
    (not yet due, retries, handed back at a stop or near the time limit) in new messages.

    Dramatiq's time limit is ``delivery.batch_time_limit`` (set per message); the batch
    stops claiming early enough to finish its last call before it.
    """
    app = runtime.app()
    limit = app.settings.delivery.batch_time_limit.total_seconds()
    report = app.deliverer.deliver(delivery_ids, deadline=time.monotonic() + limit)
    for due, ids in report.later:
        carry(due, ids)


ACTORS = (send_triggered, plan_campaign, deliver_batch)


def use_broker(new_broker: dramatiq.Broker) -> dramatiq.Broker:
    """Rebind the actors to ``new_broker`` (the CLI and tests switch settings in one process)."""
    global broker
    dramatiq.set_broker(new_broker)
    for actor in ACTORS:
        actor.broker = new_broker
        new_broker.declare_actor(actor)
    broker = new_broker
    return new_broker
