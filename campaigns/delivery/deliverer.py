"""Delivering one batch of ledger rows: load, then per row claim, send, record.

``deliver(ids)`` is safe to run twice, at once or later, for the same ids (Dramatiq
delivers at least once, and the reconciler re-drives rows whose message was lost): a
row is sent only by the worker whose claim took it from ``queued``
(``campaigns.store.leases``).

Per batch, one query loads the queued rows with their members, balances and runs and
one loads the members' expiring points. Each row is claimed as its turn comes, in the
one write that records the previous row's outcome, right before its provider call, so a
crash leaves at most one row per sending thread whose outcome is unknown and every row
not yet reached still ``queued``. One bad member (a template that fails for
their data, an invalid address, checked by the transport before the claim) ends as
``failed`` with the reason and never stops the rest of the batch. A text over its
channel's segment budget is decided again on the campaign's next channel
(``campaigns.planning.reroute``) and, when that is due now, sent in the same batch.

A batch stops early, handing back the rows it has not reached, when its worker is
shutting down or its time limit is near; ``BatchReport.later`` says what to carry again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from campaigns import metrics
from campaigns.config.settings import Settings
from campaigns.config.values import is_marketing
from campaigns.delivery.claimant import Claimant, Pending
from campaigns.delivery.message import Lots, MessageBuilder, Steps
from campaigns.delivery.quota import DailyQuota
from campaigns.delivery.rows import DeliveryRow, Recipient
from campaigns.delivery.throughput import Throughput
from campaigns.delivery.transports import Transports
from campaigns.errors import TemplateError
from campaigns.planning import ladder
from campaigns.planning.deferral import postpone
from campaigns.planning.reroute import reroute
from campaigns.store.conversations import is_open
from campaigns.store.engine import in_ids
from campaigns.store.ledger import Outcome, ReasonCode, Status
from campaigns.store.models import (
    balances,
    campaign_runs,
    conversations,
    deliveries,
    members,
    point_expirations,
)
from campaigns.store.preferences import withdrawn
from channels.base import OutgoingMessage, SendResult
from channels.errors import (
    AccountProblem,
    AddressUnsupported,
    ChannelError,
    DuplicateRequest,
    InvalidRecipient,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    RecipientBlocked,
    TransientError,
)
from channels.specs import channel_spec

log = logging.getLogger(__name__)

CALL_MARGIN = 5.0
"""Seconds beyond a channel's timeout that a provider call and its write may take."""


@dataclass
class BatchReport:
    later: list[tuple[datetime, list[int]]] = field(default_factory=list)
    """``(due, ids)`` to carry again in new messages: retries, and the rows handed back
    when the batch stopped early."""
    handed_back: int = 0
    """Rows not reached before the batch had to stop (still ``queued``, among ``later``)."""

    @property
    def stopped_early(self) -> bool:
        return self.handed_back > 0

    def carry(self, due: datetime, ids: list[int]) -> None:
        if ids:
            self.later.append((due, ids))


class Deliverer:
    """Sends batches of ledger rows. One instance per process; thread-safe.

    ``stopping`` is set when the worker is shutting down: a batch then finishes the
    call in flight and hands back the rest.
    """

    def __init__(
        self, settings: Settings, engine: Engine, messages: MessageBuilder, stopping: threading.Event | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.messages = messages
        self.throughput = Throughput(settings)
        self.quota = DailyQuota(settings, engine)
        self.stopping = stopping or threading.Event()
        self.call_budget = settings.slowest_timeout.total_seconds() + CALL_MARGIN
        """Seconds a batch keeps in hand before its deadline: the slowest call and its write."""

    def deliver(self, ids: list[int], deadline: float | None = None) -> BatchReport:
        """Send the still-queued rows among ``ids``; ``deadline`` (a ``time.monotonic()``
        instant) is when the batch must have stopped."""
        report = BatchReport()
        with self.engine.connect() as conn:
            rows, missing = self._load(conn, ids)
            if not rows and not missing:
                return report
            expiring = self._load_expiring(conn, rows)
            ladders = [row.id for row in rows if self.messages.is_ladder(row.recipient.campaign)]
            reminded = ladder.marks_for(conn, ladders) if ladders else {}
        with Claimant(self.engine, self.settings.delivery.lease) as claimant:
            if missing:
                claimant.fail_missing(missing)
            self._send_rows(claimant, rows, expiring, reminded, deadline, report)
        return report

    def _send_rows(
        self,
        claimant: Claimant,
        rows: list[DeliveryRow],
        expiring: dict[int, Lots],
        reminded: dict[int, Steps],
        deadline: float | None,
        report: BatchReport,
    ) -> None:
        """Send each row, claimed as its turn comes; fill ``report``."""
        # When a row is due is the message's business (its delay, relative to the
        # instant a trial runs for): what arrives is sent.
        transports = Transports(self.settings)
        pending = Pending()
        retries: list[Outcome] = []
        over_quota: dict[tuple[str, datetime], list[int]] = defaultdict(list)
        try:
            for index, row in enumerate(rows):
                if self._must_stop(deadline):
                    # Not yet claimed: still queued, carried in a new message.
                    report.handed_back = len(rows) - index
                    report.carry(datetime.now(UTC), [r.id for r in rows[index:]])
                    if not self.stopping.is_set():
                        log.warning(
                            "batch stopped before its time limit: %d of %d deliveries handed back "
                            "(delivery.batch_size may be too large for delivery.batch_time_limit at this provider speed)",
                            report.handed_back,
                            len(rows),
                        )
                    break
                lots, steps = expiring.get(row.member_id, []), reminded.get(row.id)
                outcome, claimed = self._deliver_one(claimant, row, lots, steps, transports, pending)
                while outcome is not None and outcome.code is ReasonCode.OVER_BUDGET and not claimed:
                    moved = reroute(self.engine, self.settings, row.id, outcome.reason or "", row.recipient.as_of)
                    if moved is None:
                        break  # no channel left: the row fails over budget
                    outcome = None  # the new decision is written
                    if moved.status != Status.QUEUED.value or moved.channel is None:
                        break
                    if moved.send_at > datetime.now(UTC):
                        report.carry(moved.send_at, [row.id])
                        break
                    row = replace(row, channel=moved.channel, address=moved.address or "")
                    outcome, claimed = self._deliver_one(claimant, row, lots, steps, transports, pending)
                if outcome is None:
                    continue
                if outcome.code is ReasonCode.QUOTA_DEFERRED and not claimed:
                    assert outcome.due is not None
                    over_quota[(row.channel, outcome.due)].append(row.id)
                    continue
                self._observe(row, outcome)
                (pending.outcomes if claimed else pending.settled).append(outcome)
                if outcome.status is Status.QUEUED:
                    retries.append(outcome)
                if pending.suppress:
                    claimant.write(pending)
        finally:
            transports.close()
            claimant.write(pending)
        if retries:
            report.carry(max(o.due or datetime.now(UTC) for o in retries), [o.id for o in retries])
        for (channel, tomorrow), ids in over_quota.items():
            self._postpone(channel, tomorrow, ids, report)

    def _postpone(self, channel: str, tomorrow: datetime, ids: list[int], report: BatchReport) -> None:
        """Move rows past ``channel``'s used-up daily quota to ``tomorrow`` or later
        (each member's quiet hours and caps applying) and carry them there."""
        why = f"{self.quota.describe(channel)} was used up"
        moved = postpone(self.engine, self.settings, ids, tomorrow, why)
        metrics.quota_deferred(channel, len(ids))
        log.info("%s: %d deliveries wait for %s", why, len(ids), tomorrow.isoformat(timespec="minutes"))
        by_due: dict[datetime, list[int]] = defaultdict(list)
        for row_id, due in moved.items():
            if due is not None:
                by_due[due].append(row_id)
        for due, due_ids in sorted(by_due.items()):
            report.carry(due, due_ids)

    # -- steps ---------------------------------------------------------------------

    def _must_stop(self, deadline: float | None) -> bool:
        if self.stopping.is_set():
            return True
        return deadline is not None and time.monotonic() + self.call_budget > deadline

    @staticmethod
    def _observe(row: DeliveryRow, outcome: Outcome) -> None:
        metrics.outcome(row.channel, outcome.status.value)
        if outcome.status == Status.QUEUED:
            metrics.retry(row.channel)
        if not log.isEnabledFor(logging.INFO):  # skip building the record's fields
            return
        # The address is masked by the logging filter; the text is never logged.
        log.info(
            "delivery %s to %s on %s: %s",
            row.id,
            row.address,
            row.channel,
            outcome.status.value,
            extra={
                "delivery_id": row.id,
                "member_id": row.member_id,
                "channel": row.channel,
                "status": outcome.status.value,
                "to": row.address,
                "attempt": row.attempts + 1,
            },
        )

    @staticmethod
    def _load(conn: Connection, ids: list[int]) -> tuple[list[DeliveryRow], list[int]]:
        """The queued rows among ``ids`` with their members, and the ids whose member is gone."""
        query = (
            select(
                deliveries.c.id,
                deliveries.c.member_id,
                deliveries.c.channel,
                deliveries.c.category,
                deliveries.c.template,
                deliveries.c.address,
                deliveries.c.attempts,
                deliveries.c.send_at,
                deliveries.c.data,
                campaign_runs.c.campaign,
                campaign_runs.c.occasion,
                members.c.id.label("member_found"),
                members.c.first_name,
                members.c.locale,
                members.c.timezone,
                members.c.tier,
                func.coalesce(balances.c.points, 0).label("balance"),
                withdrawn(deliveries).label("withdrawn"),
                conversations.c.last_inbound_at,
            )
            .select_from(
                deliveries.outerjoin(members, members.c.id == deliveries.c.member_id)
                .outerjoin(balances, balances.c.member_id == deliveries.c.member_id)
                .outerjoin(campaign_runs, campaign_runs.c.id == deliveries.c.run_id)
                .outerjoin(
                    conversations,
                    (conversations.c.channel == deliveries.c.channel) & (conversations.c.address == deliveries.c.address),
                )
            )
            .where(in_ids(conn, deliveries.c.id, ids), deliveries.c.status == Status.QUEUED.value)
            .order_by(deliveries.c.id)
        )
        rows: list[DeliveryRow] = []
        missing: list[int] = []
        for r in conn.execute(query):
            if r.member_found is None:
                missing.append(r.id)
                continue
            rows.append(
                DeliveryRow(
                    id=r.id,
                    channel=r.channel,
                    category=r.category,
                    template=r.template,
                    address=r.address,
                    attempts=r.attempts,
                    data=r.data,
                    withdrawn=r.withdrawn,
                    # a message speaks for the moment it is due
                    recipient=Recipient.from_row(
                        r, member_id=r.member_id, campaign=r.campaign, occasion=r.occasion, as_of=r.send_at
                    ),
                    last_inbound_at=r.last_inbound_at,
                )
            )
        return rows, missing

    def _load_expiring(self, conn: Connection, rows: list[DeliveryRow]) -> dict[int, Lots]:
        """Point lots of the batch's members expiring within the widest horizon any row needs."""
        if not rows:
            return {}
        as_of = min(row.recipient.as_of for row in rows)
        campaigns = {row.recipient.campaign for row in rows}
        horizons = {campaign: timedelta(days=self.messages.horizon_days(campaign)) for campaign in campaigns}
        horizon = max(row.recipient.as_of + horizons[row.recipient.campaign] for row in rows)
        member_ids = sorted({row.member_id for row in rows})
        query = (
            select(point_expirations.c.member_id, point_expirations.c.expires_at, point_expirations.c.points)
            .where(
                in_ids(conn, point_expirations.c.member_id, member_ids),
                point_expirations.c.expires_at > as_of,
                point_expirations.c.points > 0,
                point_expirations.c.expires_at <= horizon,
            )
            .order_by(point_expirations.c.member_id, point_expirations.c.expires_at)
        )
        found: dict[int, Lots] = defaultdict(list)
        for lot in conn.execute(query):
            found[lot.member_id].append((lot.expires_at, float(lot.points)))
        return found

    def _deliver_one(
        self,
        claimant: Claimant,
        row: DeliveryRow,
        lots: Lots,
        steps: Steps | None,
        transports: Transports,
        pending: Pending,
    ) -> tuple[Outcome | None, bool]:
        """The row's outcome, and whether it was claimed for a provider call (an outcome
        reached before that settles a row that is still ``queued``); no outcome when
        another worker claimed the row first."""
        recipient = row.recipient
        attempt = row.attempts + 1
        called = False
        if row.withdrawn:
            status = Status.SUPPRESSED if row.withdrawn == Status.SUPPRESSED.value else Status.UNSUBSCRIBED
            reason = f"{row.withdrawn} on {row.channel} between the decision and the send; not sent"
            return Outcome(row.id, status, ReasonCode.WITHDRAWN, reason, holds_slot=False), called
        try:
            context = self.messages.context(
                recipient, row.channel, lots, steps, (row.data or {}) if row.triggered else None, category=row.category
            )
            stale = self.messages.stale_reason(recipient.campaign, context)
            if stale:
                return Outcome(row.id, Status.STALE, ReasonCode.STALE, stale, holds_slot=False), called
            rendered = self.messages.render(row.template, row.channel, context)
            over_budget = self.messages.over_budget(recipient.campaign, row.channel, rendered.text)
            if over_budget:
                return Outcome(row.id, Status.FAILED, ReasonCode.OVER_BUDGET, over_budget, holds_slot=False), called
            message = OutgoingMessage(
                channel=row.channel,
                reference=row.id,
                to=row.address,
                text=rendered.text,
                subject=rendered.subject,
                html=rendered.html,
                to_name=context["member"]["first_name"] or None,
                marketing=is_marketing(row.category),
                unsubscribe_url=context["unsubscribe_url"],
                approved=rendered.approved,
                session_open=is_open(row.last_inbound_at, channel_spec(row.channel).session_window, datetime.now(UTC)),
            )
            transports.check(message)  # a malformed address fails here, before a claim or a connection
            tomorrow = self.quota.take(row.channel, datetime.now(UTC))
            if tomorrow is not None:
                # Not claimed: the caller moves it to tomorrow, quiet hours and caps applying.
                return Outcome(row.id, Status.QUEUED, ReasonCode.QUOTA_DEFERRED, None, holds_slot=True, due=tomorrow), False
            self.throughput.wait(row.channel)
            if not claimant.open(row.id, pending):
                return None, False  # no longer queued: another worker (a duplicate message) has it
            called = True
            # Opened after the claim: connecting to the provider is part of the attempt.
            transport = transports[row.channel]
            started = time.perf_counter()
            try:
                result: SendResult = transport.send(message)
            finally:
                metrics.provider_latency(row.channel, transport.name, time.perf_counter() - started)
        except TemplateError as exc:
            log.warning("delivery %s: %s", row.id, exc)
            return Outcome(row.id, Status.FAILED, ReasonCode.TEMPLATE_ERROR, f"template error: {exc}", holds_slot=False), called
        except PermanentError as exc:
            if exc.suppress:
                pending.suppress.append({"channel": row.channel, "address": row.address, "reason": exc.describe()})
            return Outcome(row.id, Status.FAILED, permanent_code(exc), exc.describe(), holds_slot=exc.reached_provider), called
        except OutcomeUnknown as exc:
            what = (
                "the provider refused it as a repeat of a request it already has; most likely sent by that one"
                if isinstance(exc, DuplicateRequest)
                else "no answer from the provider; it may have been delivered"
            )
            return Outcome(
                row.id,
                Status.UNKNOWN,
                ReasonCode.OUTCOME_UNKNOWN,
                f"{what}, so it is not resent: {exc.describe()}",
                holds_slot=True,
                error=exc.describe(),
            ), called
        except TransientError as exc:
            if isinstance(exc, AccountProblem):
                log.error("ALERT %s (%s): %s; messages wait and are retried", row.channel, exc.provider, exc.describe())
                metrics.provider_alert(row.channel, exc.provider)
            error = f"attempt {attempt}: {exc.describe()}"
            if attempt >= self.settings.delivery.max_attempts:
                reason = f"gave up after {attempt} attempts: {exc.describe()}"
                return Outcome(row.id, Status.FAILED, ReasonCode.GAVE_UP, reason, holds_slot=True, error=error), called
            due = datetime.now(UTC) + timedelta(seconds=self.backoff(attempt, exc))
            # The decision's reason and code stay; the failure is the row's last_error.
            return Outcome(row.id, Status.QUEUED, None, None, holds_slot=True, error=error, due=due), called
        except ChannelError as exc:  # a ChannelError outside the two families is a transport bug
            log.error("delivery %s: unclassified channel error %r", row.id, exc)
            return Outcome(row.id, Status.FAILED, ReasonCode.CHANNEL_ERROR, exc.describe(), holds_slot=called), called
        except Exception as exc:
            # One member's bad data must not stop the batch; the traceback goes to the log.
            # Once the call has started the slot is kept: the provider may have the message.
            log.exception("delivery %s failed unexpectedly", row.id)
            return Outcome(
                row.id,
                Status.FAILED,
                ReasonCode.INTERNAL_ERROR,
                f"internal error: {type(exc).__name__}: {exc}",
                holds_slot=called,
            ), called
        return Outcome(
            row.id,
            Status(result.status.value),
            None,
            None,
            holds_slot=True,
            sent_at=datetime.now(UTC),
            provider_message_id=result.provider_message_id,
        ), called

    def backoff(self, attempt: int, error: TransientError) -> float:
        """Seconds before the next attempt: the provider's wait, else exponential with jitter."""
        if isinstance(error, RateLimited):
            return max(error.retry_after, 0.0)
        low = self.settings.delivery.min_backoff.total_seconds()
        high = self.settings.delivery.max_backoff.total_seconds()
        ceiling = min(high, low * 2 ** max(attempt - 1, 0))
        return random.uniform(ceiling / 2, ceiling)


def permanent_code(error: PermanentError) -> ReasonCode:
    """The reason code of a permanent provider error."""
    if isinstance(error, InvalidRecipient):
        return ReasonCode.INVALID_RECIPIENT
    if isinstance(error, RecipientBlocked):
        return ReasonCode.RECIPIENT_BLOCKED
    if isinstance(error, AddressUnsupported):
        return ReasonCode.ADDRESS_UNSUPPORTED
    return ReasonCode.REJECTED
