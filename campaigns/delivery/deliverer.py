"""Delivering one batch of ledger rows: claim, load, render, send, record.

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
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from sqlalchemy import Engine, String, bindparam, func, select, text, update
from sqlalchemy.engine import Connection

from campaigns import metrics

from campaigns.planning import ladder
from campaigns.store.engine import in_ids, upsert_insert
from campaigns.errors import TemplateError
from campaigns.store.ledger import Status
from campaigns.store.models import balances, campaign_runs, deliveries, members, point_expirations, suppressions
from campaigns.delivery.rendering import Renderer
from campaigns.config.settings import Settings
from campaigns.delivery.throughput import Throughput
from campaigns.config.zones import zone_info
from channels import build_transport
from channels.base import OutgoingMessage, SendResult, Transport
from channels.smstext import measure
from channels.errors import ChannelError, OutcomeUnknown, PermanentError, RateLimited, TransientError

log = logging.getLogger(__name__)

FLUSH_EVERY = 100
"""Outcomes are written at least this often, so a killed worker loses little."""


@dataclass
class Outcome:
    id: int
    status: Status
    reason: str | None
    """None keeps the planning reason (why this channel was chosen)."""
    holds_slot: bool
    sent_at: datetime | None = None
    provider_message_id: str | None = None


@dataclass
class BatchReport:
    retry_after: float | None = None
    """Seconds until the transiently failed rows of this batch should be retried (None: none)."""


class Transports:
    """The batch's transports, built on first use and closed at the end of the batch."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._open: dict[str, Transport] = {}

    def __getitem__(self, channel: str) -> Transport:
        transport = self._open.get(channel)
        if transport is None:
            section = self.settings.channel(channel)
            transport = build_transport(
                channel, section.transport, outbox_dir=self.settings.outbox_path, options=section.model_dump()
            )
            transport.open()
            self._open[channel] = transport
        return transport

    def close(self) -> None:
        for transport in self._open.values():
            try:
                transport.close()
            except Exception:  # closing must never hide the batch's own outcome
                log.exception("closing transport %s", transport.name)
        self._open.clear()


class Deliverer:
    """Sends batches of ledger rows. One instance per process; thread-safe."""

    def __init__(self, settings: Settings, engine: Engine, renderer: Renderer) -> None:
        self.settings = settings
        self.engine = engine
        self.renderer = renderer
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
            ladders = [row.id for row in rows if self._is_ladder(row.campaign)]
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
        now = datetime.now(timezone.utc)
        result = conn.execute(
            update(deliveries)
            .where(in_ids(conn, deliveries.c.id, ids), deliveries.c.status == Status.QUEUED.value)
            .values(status=Status.SENDING.value, attempts=deliveries.c.attempts + 1, updated_at=now)
            .returning(deliveries.c.id)
        )
        return sorted(row[0] for row in result)

    def _is_ladder(self, campaign: str | None) -> bool:
        spec = self.settings.campaigns.get(campaign or "")
        return spec is not None and spec.kind == "expiring_ladder"

    @staticmethod
    def _observe(row: Any, outcome: Outcome) -> None:
        metrics.outcome(row.channel, outcome.status.value)
        if outcome.status == Status.QUEUED:
            metrics.retry(row.channel)
        if not log.isEnabledFor(logging.INFO):  # skip building the record's fields
            return
        # The address is masked by the logging filter; the text is never logged.
        log.info(
            "delivery %s to %s on %s: %s", row.id, row.address, row.channel, outcome.status.value,
            extra={"delivery_id": row.id, "member_id": row.member_id, "channel": row.channel,
                   "status": outcome.status.value, "to": row.address, "attempt": row.attempts},
        )

    @staticmethod
    def _load(conn: Connection, ids: list[int]) -> list[Any]:
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
                deliveries.c.run_id,
                deliveries.c.data,
                campaign_runs.c.campaign,
                campaign_runs.c.occasion,
                campaign_runs.c.as_of,
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
        return conn.execute(query).all()

    def _record_missing(self, claimed: list[int], rows: list[Any]) -> None:
        """Claimed deliveries whose member row vanished from the program's table since planning."""
        found = {row.id for row in rows}
        missing = [i for i in claimed if i not in found]
        if missing:
            self._record([Outcome(i, Status.FAILED, "member no longer exists", holds_slot=False) for i in missing], [])

    def _load_expiring(self, conn: Connection, rows: list[Any]) -> dict[int, list[tuple[datetime, float]]]:
        """Point lots of the batch's members expiring within the widest horizon any row needs."""
        if not rows:
            return {}
        as_of = min(self._as_of(row) for row in rows)
        horizons = {campaign: timedelta(days=self.horizon_days(campaign)) for campaign in {row.campaign for row in rows}}
        horizon = max(self._as_of(row) + horizons[row.campaign] for row in rows)
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
        found: dict[int, list[tuple[datetime, float]]] = defaultdict(list)
        for member_id, expires_at, points in conn.execute(query):
            found[member_id].append((expires_at, float(points)))
        return found

    @staticmethod
    def _as_of(row: Any) -> datetime:
        """The instant a message speaks for: when it is due (on the run's clock)."""
        due = getattr(row, "send_at", None)
        return due or row.as_of or datetime.now(timezone.utc)

    def horizon_days(self, campaign: str | None) -> int:
        """How far ahead a campaign's messages look at expiring points: a ladder's
        longest stage, the segment's ``expiring_within_days``, else
        ``delivery.expiring_horizon_days``."""
        spec = self.settings.campaigns.get(campaign or "")
        if spec is not None and spec.stages:
            return max(spec.stages) + 1
        segment = self.settings.segments.get(spec.segment) if spec else None
        if segment is not None and segment.expiring_within_days:
            return segment.expiring_within_days
        return self.settings.delivery.expiring_horizon_days

    def _deliver_one(self, row: Any, lots, steps, transports: Transports, suppress: list, retry_delays: list) -> Outcome:  # type: ignore[no-untyped-def]
        try:
            context = self.context(row, lots, steps, (row.data or {}) if row.run_id is None else None)
            stale = self.stale_reason(row, context)
            if stale:
                return Outcome(row.id, Status.STALE, stale, holds_slot=False)
            rendered = self.renderer.render(row.template, row.channel, context)
            over_budget = self.sms_over_budget(row.campaign, row.channel, rendered.text)
            if over_budget:
                return Outcome(row.id, Status.FAILED, over_budget, holds_slot=False)
            message = OutgoingMessage(
                channel=row.channel,
                reference=row.id,
                to=row.address,
                text=rendered.text,
                subject=rendered.subject,
                html=rendered.html,
                to_name=row.first_name,
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
            return Outcome(row.id, Status.FAILED, f"template error: {exc}", holds_slot=False)
        except PermanentError as exc:
            if exc.suppress:
                suppress.append({"channel": row.channel, "address": row.address, "reason": exc.describe()})
            return Outcome(row.id, Status.FAILED, exc.describe(), holds_slot=exc.reached_provider)
        except OutcomeUnknown as exc:
            return Outcome(row.id, Status.FAILED, f"outcome unknown, not resent: {exc.describe()}", holds_slot=True)
        except TransientError as exc:
            if row.attempts >= self.settings.delivery.max_attempts:
                reason = f"gave up after {row.attempts} attempts: {exc.describe()}"
                return Outcome(row.id, Status.FAILED, reason, holds_slot=True)
            retry_delays.append(self.backoff(row.attempts, exc))
            return Outcome(row.id, Status.QUEUED, f"attempt {row.attempts} failed: {exc.describe()}", holds_slot=True)
        except ChannelError as exc:  # a ChannelError outside the two families is a transport bug
            log.error("delivery %s: unclassified channel error %r", row.id, exc)
            return Outcome(row.id, Status.FAILED, exc.describe(), holds_slot=True)
        except Exception as exc:
            # One member's bad data must not stop the batch; the traceback goes to the log.
            # The slot is kept: nothing says the provider did not get the message.
            log.exception("delivery %s failed unexpectedly", row.id)
            return Outcome(row.id, Status.FAILED, f"internal error: {type(exc).__name__}: {exc}", holds_slot=True)
        return Outcome(
            row.id,
            Status(result.status.value),
            None,
            holds_slot=True,
            sent_at=datetime.now(timezone.utc),
            provider_message_id=result.provider_message_id,
        )

    def stale_reason(self, row: Any, context: dict[str, Any]) -> str | None:
        """Why the reminder is no longer true (balance and expiring points were just
        reloaded), judged by the campaign's segment; None when it still holds."""
        spec = self.settings.campaigns.get(row.campaign or "")
        segment = self.settings.segments.get(spec.segment) if spec else None
        if segment is None:
            return None
        reminder = context["reminder"]
        if reminder is not None and not reminder["dates"]:
            return (f"the points this reminder is about ({', '.join(reminder['planned'])}) are now below "
                    f"the campaign's minimum {spec.min_points:g}")
        balance, expiring = context["balance"], context["expiring"]["total"]
        if segment.min_balance is not None and balance < segment.min_balance:
            return f"balance is now {balance}, below the segment's minimum {segment.min_balance:g}"
        if segment.max_balance is not None and balance > segment.max_balance:
            return f"balance is now {balance}, above the segment's maximum {segment.max_balance:g}"
        if segment.expiring_within_days is not None:
            needed = segment.min_expiring_points or 0.01
            if expiring < needed:
                return (f"{expiring} points now expire within {segment.expiring_within_days} days "
                        f"(the segment needs {needed:g})")
        return None

    def sms_over_budget(self, campaign: str | None, channel: str, text: str | None) -> str | None:
        """Why an SMS may not go out (longer than the campaign's ``max_segments``), else None."""
        if channel != "sms" or text is None:
            return None
        spec = self.settings.campaigns.get(campaign or "")
        limit = spec.max_segments if spec else 2
        length = measure(text)
        if length.segments <= limit:
            return None
        return (f"SMS is {length.segments} segments ({length.encoding}, {length.characters} characters); "
                f"the campaign allows {limit}")

    def backoff(self, attempt: int, error: TransientError) -> float:
        """Seconds before the next attempt: the provider's wait, else exponential with jitter."""
        if isinstance(error, RateLimited):
            return max(error.retry_after, 0.0)
        low = self.settings.delivery.min_backoff.total_seconds()
        high = self.settings.delivery.max_backoff.total_seconds()
        ceiling = min(high, low * 2 ** max(attempt - 1, 0))
        return random.uniform(ceiling / 2, ceiling)

    def context(
        self,
        row: Any,
        lots: list[tuple[datetime, float]],
        steps: list[tuple[date, int]] | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What a template sees for one member (documented in docs/templates.md).

        ``steps`` are the (expiry date, stage) pairs an expiring-points ladder reminder
        is about; they become ``reminder``, with the points as they are now. ``data``
        defaults to the campaign's ``data`` table.
        """
        program = self.settings.program
        locale = row.locale if row.locale in program.locales else program.default_locale
        zone = _zone(row.timezone, program.timezone)
        as_of = self._as_of(row)
        horizon = as_of + timedelta(days=self.horizon_days(row.campaign))
        per_date: dict[Any, float] = defaultdict(float)
        for expires_at, points in lots:
            if not as_of < expires_at <= horizon:
                continue
            per_date[expires_at.astimezone(zone_info(zone)).date()] += points
        dates = [{"date": day, "points": _tidy(points)} for day, points in sorted(per_date.items())]
        reminder = None
        if steps is not None:
            spec = self.settings.campaigns.get(row.campaign or "")
            minimum = spec.min_points if spec else 0
            today = as_of.astimezone(zone_info(zone)).date()
            now_by_date = ladder.points_by_date(lots, zone_info(zone), as_of)
            due = [
                {"date": day, "points": _tidy(now_by_date.get(day, 0)), "stage": stage, "days_left": (day - today).days}
                for day, stage in steps if now_by_date.get(day, 0) >= max(minimum, 0.01)
            ]
            reminder = {
                "dates": due,
                "total": _tidy(sum(item["points"] for item in due)),
                "stage": min((item["stage"] for item in due), default=None),
                "planned": [day.isoformat() for day, _ in steps],
            }
        return {
            "member": {"id": row.member_id, "first_name": row.first_name, "tier": row.tier, "locale": locale},
            "balance": _tidy(float(row.balance)),
            "expiring": {
                "total": _tidy(sum(item["points"] for item in dates)),
                "nearest_date": dates[0]["date"] if dates else None,
                "dates": dates,
            },
            "program": {"name": program.name, "site_url": program.site_url},
            "unsubscribe_url": self.settings.unsubscribe_url(row.member_id, row.channel),
            "campaign": {"name": row.campaign, "occasion": row.occasion},
            "reminder": reminder,
            "data": data if data is not None else self._campaign_data(row.campaign),
            "now": as_of,
            "locale": locale,
            "timezone": zone,
        }

    def _campaign_data(self, campaign: str | None) -> dict[str, Any]:
        spec = self.settings.campaigns.get(campaign or "")
        return dict(spec.data) if spec else {}

    def _record(self, outcomes: list[Outcome], suppress: list[dict[str, Any]]) -> None:
        if not outcomes and not suppress:
            return
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            if outcomes:
                record_outcomes(conn, outcomes, now)
            if suppress:
                add_suppressions(conn, suppress, now)


# PostgreSQL: the outcomes of a flush in one statement (arrays unnested into rows)
# instead of one UPDATE per delivery.
_OUTCOMES_FROM_ARRAYS = text("""
    UPDATE deliveries AS d
    SET status = o.status, reason = coalesce(o.reason, d.reason), holds_slot = o.holds_slot,
        sent_at = o.sent_at, provider_message_id = o.provider_message_id, updated_at = :now
    FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS varchar[]), CAST(:reasons AS varchar[]),
                CAST(:holds AS boolean[]), CAST(:sent AS timestamptz[]), CAST(:provider_ids AS varchar[]))
         AS o(id, status, reason, holds_slot, sent_at, provider_message_id)
    WHERE d.id = o.id
""")


def record_outcomes(conn: Connection, outcomes: list[Outcome], now: datetime) -> None:
    """Write each outcome's status, reason (None keeps the row's), slot, sent time and
    provider id to its ledger row."""
    reasons = [None if o.reason is None else o.reason[:500] for o in outcomes]
    if conn.dialect.name == "postgresql":
        conn.execute(_OUTCOMES_FROM_ARRAYS, {
            "ids": [o.id for o in outcomes], "statuses": [o.status.value for o in outcomes], "reasons": reasons,
            "holds": [o.holds_slot for o in outcomes], "sent": [o.sent_at for o in outcomes],
            "provider_ids": [o.provider_message_id for o in outcomes], "now": now,
        })
        return
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            reason=func.coalesce(bindparam("b_reason", type_=String), deliveries.c.reason),
            holds_slot=bindparam("b_holds_slot"),
            sent_at=bindparam("b_sent_at"),
            provider_message_id=bindparam("b_provider_message_id"),
            updated_at=now,
        ),
        [
            {"b_id": o.id, "b_status": o.status.value, "b_reason": reason, "b_holds_slot": o.holds_slot,
             "b_sent_at": o.sent_at, "b_provider_message_id": o.provider_message_id}
            for o, reason in zip(outcomes, reasons)
        ],
    )


def add_suppressions(conn: Connection, entries: list[dict[str, Any]], now: datetime) -> None:
    """Insert ``(channel, address, reason)`` entries; existing ones keep their first reason."""
    conn.execute(
        upsert_insert(conn, suppressions).on_conflict_do_nothing(),
        [{**entry, "reason": entry["reason"][:500], "created_at": now} for entry in entries],
    )


@lru_cache(maxsize=1024)
def _zone(member_zone: str | None, program_zone: str) -> str:
    if member_zone:
        try:
            zone_info(member_zone)
            return member_zone
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("unknown member time zone %r; using %s", member_zone, program_zone)
    return program_zone


def _tidy(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 2)
