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
from datetime import UTC, datetime
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


@dramatiq.actor(queue_name=TRIGGERED_QUEUE, priority=0, max_retries=10, time_limit=300_000)
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
    wait_ms = int((decided.send_at - datetime.now(UTC)).total_seconds() * 1000)
    if wait_ms > 1000:  # quiet hours, or a deferring cap
        deliver_batch.send_with_options(args=([decided.delivery_id],), delay=wait_ms)
        return
    report = app.deliverer.deliver([decided.delivery_id])
    if report.retry_after is not None:
        deliver_batch.send_with_options(args=([decided.delivery_id],), delay=int(report.retry_after * 1000))


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
        # The in-memory broker lives only as long as `loyalcast run`: it gets what is
        # due now; the rest waits in the ledger for the occasion to be run again.
        batches += enqueue_batches(run_id, reference, due_only=app.in_memory, members=chunk.members)
    log.info("run %s: %d batches enqueued", run_id, batches)


def enqueue_batches(run_id: int, now: datetime, *, due_only: bool = False, members: tuple[int, int] | None = None) -> int:
    """Send one ``deliver_batch`` message per batch of the run's queued deliveries (of
    ``members``, first and last id, if given), delayed until the batch is due (relative
    to ``now``); return how many were sent."""
    app = runtime.app()
    sent = 0
    due_by = now if due_only else None
    for send_at, ids in queued_batches(app.engine, run_id, app.settings.delivery.batch_size, due_by=due_by, members=members):
        delay_ms = max(int((send_at - now).total_seconds() * 1000), 0)
        deliver_batch.send_with_options(args=(ids,), delay=delay_ms or None)
        sent += 1
    return sent


@dramatiq.actor(queue_name=BATCHES_QUEUE, priority=100, max_retries=50, time_limit=1_800_000)
def deliver_batch(delivery_ids: list[int]) -> None:
    """Send the still-queued deliveries among ``delivery_ids``; retry the transient failures."""
    report = runtime.app().deliverer.deliver(delivery_ids)
    if report.retry_after is not None:
        # Only rows put back to ``queued`` are claimed again by the retried message.
        raise dramatiq.Retry(delay=int(report.retry_after * 1000))


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
