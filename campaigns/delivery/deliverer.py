"""Delivering one batch of ledger rows: claim, load, build, send, record.

``deliver_batch(ids)`` is safe to run twice for the same ids (Dramatiq delivers at least
once): the claim (``queued`` -> ``sending``) is a single conditional UPDATE, so only the
first runner of a row sends it. A row left in ``sending`` by a worker that died is not
sent again blindly: a missed reminder is cheaper than a duplicate.

Per batch: one query loads members, balances and runs; one query loads the expiring
points of all the batch's members; outcomes are written in bulk. One bad member (a
template that fails for their data, an invalid address) ends as ``failed`` with the
reason and never stops the rest of the batch.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.engine import Connection

from campaigns import metrics
from campaigns.config.settings import Settings
from campaigns.delivery.message import Lots, MessageBuilder, Steps
from campaigns.delivery.rows import DeliveryRow, Recipient
from campaigns.delivery.throughput import Throughput
from campaigns.delivery.transports import Transports
from campaigns.errors import TemplateError
from campaigns.planning import ladder
from campaigns.store.engine import in_ids
from campaigns.store.ledger import (
    Outcome,
    ReasonCode,
    Status,
    add_suppressions,
    record_outcomes,
)
from campaigns.store.models import (
    balances,
    campaign_runs,
    deliveries,
    members,
    point_expirations,
)
from channels.base import OutgoingMessage, SendResult
from channels.errors import (
    ChannelError,
    InvalidRecipient,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    RecipientBlocked,
    TransientError,
)

log = logging.getLogger(__name__)

FLUSH_EVERY = 100
"""Outcomes are written at least this often, so a killed worker loses little."""


@dataclass
class BatchReport:
    retry_after: float | None = None
    """Seconds until the transiently failed rows of this batch should be retried (None: none)."""


class Deliverer:
    """Sends batches of ledger rows. One instance per process; thread-safe."""

    def __init__(self, settings: Settings, engine: Engine, messages: MessageBuilder) -> None:
        self.settings = settings
        self.engine = engine
        self.messages = messages
        self.throughput = Throughput(settings)

    def deliver(self, ids: list[int]) -> BatchReport:
        report = BatchReport()
        # One transaction (one pooled connection, one pre-ping) claims and loads.
        with self.engine.begin() as conn:
            claimed = self._claim(conn, ids)
            if not claimed:
                return report
            rows = self._load(conn, claimed)
            expiring = self._load_expiring(conn, rows)
            ladders = [row.id for row in rows if self.messages.is_ladder(row.recipient.campaign)]
            reminded = ladder.marks_for(conn, ladders) if ladders else {}
        self._record_missing(claimed, rows)
        transports = Transports(self.settings)
        pending: list[Outcome] = []
        suppress: list[dict[str, Any]] = []
        retry_delays: list[float] = []
        try:
            for row in rows:
                outcome = self._deliver_one(
                    row, expiring.get(row.member_id, []), reminded.get(row.id), transports, suppress, retry_delays
                )
                self._observe(row, outcome)
                pending.append(outcome)
                if len(pending) >= FLUSH_EVERY:
                    self._record(pending, suppress)
                    pending, suppress = [], []
        finally:
            transports.close()
            self._record(pending, suppress)
        if retry_delays:
            report.retry_after = max(retry_delays)
        return report

    # -- steps ---------------------------------------------------------------------

    @staticmethod
    def _claim(conn: Connection, ids: list[int]) -> list[int]:
        now = datetime.now(UTC)
        result = conn.execute(
            update(deliveries)
            .where(in_ids(conn, deliveries.c.id, ids), deliveries.c.status == Status.QUEUED.value)
            .values(status=Status.SENDING.value, attempts=deliveries.c.attempts + 1, updated_at=now)
            .returning(deliveries.c.id)
        )
        return sorted(row[0] for row in result)

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
                "attempt": row.attempts,
            },
        )

    @staticmethod
    def _load(conn: Connection, ids: list[int]) -> list[DeliveryRow]:
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
                members.c.first_name,
                members.c.locale,
                members.c.timezone,
                members.c.tier,
                func.coalesce(balances.c.points, 0).label("balance"),
            )
            .select_from(
                deliveries.join(members, members.c.id == deliveries.c.member_id)
                .outerjoin(balances, balances.c.member_id == deliveries.c.member_id)
                .outerjoin(campaign_runs, campaign_runs.c.id == deliveries.c.run_id)
            )
            .where(in_ids(conn, deliveries.c.id, ids))
            .order_by(deliveries.c.id)
        )
        return [
            DeliveryRow(
                id=r.id,
                channel=r.channel,
                category=r.category,
                template=r.template,
                address=r.address,
                attempts=r.attempts,
                data=r.data,
                # a message speaks for the moment it is due
                recipient=Recipient.from_row(r, member_id=r.member_id, campaign=r.campaign, occasion=r.occasion, as_of=r.send_at),
            )
            for r in conn.execute(query)
        ]

    def _record_missing(self, claimed: list[int], rows: list[DeliveryRow]) -> None:
        """Claimed deliveries whose member row vanished from the program's table since planning."""
        found = {row.id for row in rows}
        missing = [i for i in claimed if i not in found]
        if missing:
            self._record(
                [
                    Outcome(i, Status.FAILED, ReasonCode.MEMBER_MISSING, "member no longer exists", holds_slot=False)
                    for i in missing
                ],
                [],
            )

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
        row: DeliveryRow,
        lots: Lots,
        steps: Steps | None,
        transports: Transports,
        suppress: list[dict[str, Any]],
        retry_delays: list[float],
    ) -> Outcome:
        recipient = row.recipient
        try:
            context = self.messages.context(recipient, row.channel, lots, steps, (row.data or {}) if row.triggered else None)
            stale = self.messages.stale_reason(recipient.campaign, context)
            if stale:
                return Outcome(row.id, Status.STALE, ReasonCode.STALE, stale, holds_slot=False)
            rendered = self.messages.render(row.template, row.channel, context)
            over_budget = self.messages.over_budget(recipient.campaign, row.channel, rendered.text)
            if over_budget:
                return Outcome(row.id, Status.FAILED, ReasonCode.OVER_BUDGET, over_budget, holds_slot=False)
            message = OutgoingMessage(
                channel=row.channel,
                reference=row.id,
                to=row.address,
                text=rendered.text,
                subject=rendered.subject,
                html=rendered.html,
                to_name=recipient.first_name,
                marketing=row.category != "service",
                unsubscribe_url=context["unsubscribe_url"],
            )
            transport = transports[row.channel]
            self.throughput.wait(row.channel)
            started = time.perf_counter()
            try:
                result: SendResult = transport.send(message)
            finally:
                metrics.provider_latency(row.channel, transport.name, time.perf_counter() - started)
        except TemplateError as exc:
            log.warning("delivery %s: %s", row.id, exc)
            return Outcome(row.id, Status.FAILED, ReasonCode.TEMPLATE_ERROR, f"template error: {exc}", holds_slot=False)
        except PermanentError as exc:
            if exc.suppress:
                suppress.append({"channel": row.channel, "address": row.address, "reason": exc.describe()})
            return Outcome(row.id, Status.FAILED, permanent_code(exc), exc.describe(), holds_slot=exc.reached_provider)
        except OutcomeUnknown as exc:
            return Outcome(
                row.id,
                Status.FAILED,
                ReasonCode.OUTCOME_UNKNOWN,
                f"outcome unknown, not resent: {exc.describe()}",
                holds_slot=True,
            )
        except TransientError as exc:
            if row.attempts >= self.settings.delivery.max_attempts:
                reason = f"gave up after {row.attempts} attempts: {exc.describe()}"
                return Outcome(row.id, Status.FAILED, ReasonCode.GAVE_UP, reason, holds_slot=True)
            retry_delays.append(self.backoff(row.attempts, exc))
            return Outcome(
                row.id, Status.QUEUED, ReasonCode.RETRYING, f"attempt {row.attempts} failed: {exc.describe()}", holds_slot=True
            )
        except ChannelError as exc:  # a ChannelError outside the two families is a transport bug
            log.error("delivery %s: unclassified channel error %r", row.id, exc)
            return Outcome(row.id, Status.FAILED, ReasonCode.CHANNEL_ERROR, exc.describe(), holds_slot=True)
        except Exception as exc:
            # One member's bad data must not stop the batch; the traceback goes to the log.
            # The slot is kept: nothing says the provider did not get the message.
            log.exception("delivery %s failed unexpectedly", row.id)
            return Outcome(
                row.id, Status.FAILED, ReasonCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}", holds_slot=True
            )
        return Outcome(
            row.id,
            Status(result.status.value),
            ReasonCode.ELIGIBLE,
            None,
            holds_slot=True,
            sent_at=datetime.now(UTC),
            provider_message_id=result.provider_message_id,
        )

    def backoff(self, attempt: int, error: TransientError) -> float:
        """Seconds before the next attempt: the provider's wait, else exponential with jitter."""
        if isinstance(error, RateLimited):
            return max(error.retry_after, 0.0)
        low = self.settings.delivery.min_backoff.total_seconds()
        high = self.settings.delivery.max_backoff.total_seconds()
        ceiling = min(high, low * 2 ** max(attempt - 1, 0))
        return random.uniform(ceiling / 2, ceiling)

    def _record(self, outcomes: list[Outcome], suppress: list[dict[str, Any]]) -> None:
        if not outcomes and not suppress:
            return
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            if outcomes:
                record_outcomes(conn, outcomes, now)
            if suppress:
                add_suppressions(conn, suppress, now)


def permanent_code(error: PermanentError) -> ReasonCode:
    """The reason code of a permanent provider error."""
    if isinstance(error, InvalidRecipient):
        return ReasonCode.INVALID_RECIPIENT
    if isinstance(error, RecipientBlocked):
        return ReasonCode.RECIPIENT_BLOCKED
    return ReasonCode.REJECTED
