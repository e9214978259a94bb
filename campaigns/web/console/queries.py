"""What the console's pages show, read from settings and the ledger.

Pages answer from a handful of small queries whatever the size of the ledger: a
member's page reads that member's rows; a run's figures (``GROUP BY`` over up to a
million rows, a second or more) come from its snapshot in ``run_summaries``, refreshed
in the background once it is older than ``[web] console_refresh`` (:class:`RunSummaries`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, String, func, literal, select

from campaigns.config.rules import CapRule
from campaigns.config.schedules import next_fires
from campaigns.config.sections import CampaignSettings
from campaigns.config.settings import Settings
from campaigns.config.values import ANY_CHANNEL
from campaigns.config.zones import zone_info
from campaigns.delivery.message import MessageBuilder
from campaigns.store.engine import upsert_insert
from campaigns.store.ledger import LEFT, Status
from campaigns.store.models import campaign_runs, deliveries, run_summaries, suppressions
from campaigns.store.runs import of_run
from campaigns.tools.preview import SegmentEstimate, estimate_segments
from campaigns.web.console.charts import Bar
from channels.specs import CHANNELS, channel_spec

log = logging.getLogger(__name__)
LAST_RUNS = 5
NEXT_FIRES = 3
TOP_REASONS = 8
SMS_SAMPLE = 50
SETTLED_WELL = (*LEFT, Status.QUEUED.value, Status.SENDING.value)
"""Rows that went, or are on their way: the rest have a reason the run page ranks."""


@dataclass(frozen=True)
class RunSummary:
    id: int
    occasion: str
    as_of: datetime
    state: str
    started_by: str | None


@dataclass
class CampaignView:
    name: str
    spec: CampaignSettings
    next_fires: list[datetime]
    caps: list[CapRule]
    runs: list[RunSummary] = field(default_factory=list)


def applying_caps(settings: Settings, spec: CampaignSettings) -> list[CapRule]:
    """The cap rules that count the campaign's messages: its category on one of its
    channels, or on any channel."""
    return [
        rule
        for rule in settings.caps
        if rule.category == spec.category and (rule.channel == ANY_CHANNEL or rule.channel in spec.channels)
    ]


def campaigns(engine: Engine, settings: Settings, now: datetime) -> list[CampaignView]:
    """Every campaign of the settings with its next fire times and latest runs."""
    zone = zone_info(settings.program.timezone)
    views = {
        name: CampaignView(
            name,
            spec,
            next_fires(spec.schedule, zone, now, NEXT_FIRES) if spec.schedule else [],
            applying_caps(settings, spec),
        )
        for name, spec in settings.campaigns.items()
    }
    ranked = (
        select(
            campaign_runs.c.id,
            campaign_runs.c.campaign,
            campaign_runs.c.occasion,
            campaign_runs.c.as_of,
            campaign_runs.c.state,
            campaign_runs.c.started_by,
            func.row_number()
            .over(partition_by=campaign_runs.c.campaign, order_by=(campaign_runs.c.as_of.desc(), campaign_runs.c.id.desc()))
            .label("rank"),
        )
        .where(campaign_runs.c.dry_run.is_(False))
        .subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(select(ranked).where(ranked.c.rank <= LAST_RUNS).order_by(ranked.c.campaign, ranked.c.rank))
        for row in rows:
            if row.campaign in views:
                views[row.campaign].runs.append(RunSummary(row.id, row.occasion, row.as_of, row.state, row.started_by))
    return list(views.values())


@dataclass(frozen=True)
class Reason:
    status: str
    code: str
    example: str
    members: int


@dataclass
class RunView:
    id: int
    campaign: str
    occasion: str
    as_of: datetime
    state: str
    computed_at: datetime
    """When the counts below were read from the ledger (the snapshot's time)."""
    counts: dict[str, dict[str, int]]
    channels: list[str]
    sends: list[Bar]
    bucket: str
    """``hour`` or ``day``: what one bar of ``sends`` covers (program's time zone)."""
    reasons: list[Reason]
    sms: list[SegmentEstimate]

    @property
    def total(self) -> int:
        return sum(sum(per.values()) for per in self.counts.values())


class RunSummaries:
    """Run pages from snapshots (``run_summaries``): a run's counts, sends per hour, top
    reasons and SMS estimate are read from its ledger rows once and kept as one row.

    A snapshot younger than ``fresh`` is served as it is; an older one is served too and
    replaced in the background (one refresh per run at a time in this process), so a
    page over a million rows answers in milliseconds and is at most one refresh behind;
    a run with no snapshot yet is read at once. The page shows the snapshot's time.
    """

    def __init__(self, engine: Engine, settings: Settings, messages: MessageBuilder, fresh: timedelta) -> None:
        self.engine, self.settings, self.messages, self.fresh = engine, settings, messages, fresh
        self._refreshing: set[int] = set()
        self._lock = threading.Lock()

    def view(self, run_id: int) -> RunView | None:
        with self.engine.connect() as conn:
            found = conn.execute(select(campaign_runs).where(campaign_runs.c.id == run_id)).first()
            snapshot = conn.execute(select(run_summaries).where(run_summaries.c.run_id == run_id)).first()
        if found is None:
            return None
        if snapshot is None:
            computed_at, body = self.refresh(run_id)
        else:
            computed_at, body = snapshot.computed_at, snapshot.body
            if datetime.now(UTC) - computed_at > self.fresh:
                self._refresh_later(run_id)
        return self._view(found, computed_at, body)

    def refresh(self, run_id: int) -> tuple[datetime, dict[str, Any]]:
        """Read the run's figures from the ledger and keep them as its snapshot."""
        computed_at = datetime.now(UTC)
        body = summarize(self.engine, self.settings, self.messages, run_id)
        with self.engine.begin() as conn:
            upsert = upsert_insert(conn, run_summaries).values(run_id=run_id, computed_at=computed_at, body=body)
            conn.execute(upsert.on_conflict_do_update(index_elements=["run_id"], set_={"computed_at": computed_at, "body": body}))
        return computed_at, body

    def _refresh_later(self, run_id: int) -> None:
        with self._lock:
            if run_id in self._refreshing:
                return
            self._refreshing.add(run_id)

        def work() -> None:
            try:
                self.refresh(run_id)
            except Exception:  # a failed refresh leaves the old snapshot; the next view retries
                log.exception("console: refreshing the summary of run %s failed", run_id)
            finally:
                with self._lock:
                    self._refreshing.discard(run_id)

        threading.Thread(target=work, name=f"run-summary-{run_id}", daemon=True).start()

    def _view(self, found: Any, computed_at: datetime, body: dict[str, Any]) -> RunView:
        zone = zone_info(self.settings.program.timezone)
        counts: dict[str, dict[str, int]] = body["counts"]
        sends, bucket = _bars(body["hourly"], zone)
        channels = sorted({c for per in counts.values() for c in per}, key=lambda c: (c == "-", c))
        return RunView(
            found.id,
            found.campaign,
            found.occasion,
            found.as_of,
            found.state,
            computed_at,
            counts,
            channels,
            sends,
            bucket,
            [Reason(**reason) for reason in body["reasons"]],
            [SegmentEstimate(**estimate) for estimate in body["sms"]],
        )


def summarize(engine: Engine, settings: Settings, messages: MessageBuilder, run_id: int) -> dict[str, Any]:
    """A run's figures as JSON: ``counts`` per status and channel, ``hourly`` sends
    (``[UTC hour "YYYY-MM-DD HH", channel, n]``), the most common ``reasons`` rows did not
    go out, and ``sms``: segments and cost of the texts sent, estimated by rendering up to
    SMS_SAMPLE of them again (the ledger keeps a message's outcome, not its text)."""
    with engine.connect() as conn:
        run_row = conn.execute(select(campaign_runs).where(campaign_runs.c.id == run_id)).one()
        rows_of_run = of_run(run_id, run_row.started_at)  # that month's partition alone
        counts: dict[str, dict[str, int]] = {}
        for row in conn.execute(
            select(deliveries.c.status, deliveries.c.channel, func.count().label("n"))
            .where(rows_of_run)
            .group_by(deliveries.c.status, deliveries.c.channel)
        ):
            counts.setdefault(str(row.status), {})[row.channel or "-"] = int(row.n)
        hour = _hour(engine.dialect.name, deliveries.c.sent_at)
        hourly = [
            [str(row.hour), row.channel or "-", int(row.n)]
            for row in conn.execute(
                select(hour.label("hour"), deliveries.c.channel, func.count().label("n"))
                .where(rows_of_run, deliveries.c.sent_at.is_not(None))
                .group_by(hour, deliveries.c.channel)
                .order_by(hour)
            )
        ]
        reasons = [
            {
                "status": str(row.status),
                "code": str(row.reason_code or "-"),
                "example": str(row.example or ""),
                "members": int(row.n),
            }
            for row in conn.execute(
                select(
                    deliveries.c.status,
                    deliveries.c.reason_code,
                    func.min(deliveries.c.reason).label("example"),
                    func.count().label("n"),
                )
                .where(rows_of_run, deliveries.c.status.not_in(SETTLED_WELL))
                .group_by(deliveries.c.status, deliveries.c.reason_code)
                .order_by(func.count().desc(), deliveries.c.status)
                .limit(TOP_REASONS)
            )
        ]
        samples: dict[str, list[int]] = {
            channel: list(
                conn.execute(
                    select(deliveries.c.member_id)
                    .where(rows_of_run, deliveries.c.channel == channel, deliveries.c.status.in_(LEFT))
                    .order_by(deliveries.c.member_id)
                    .limit(SMS_SAMPLE)
                ).scalars()
            )
            for channel in CHANNELS
            if channel_spec(channel).measure is not None and any(counts.get(s, {}).get(channel) for s in LEFT)
        }
    sms = []
    for channel, sample in samples.items():
        recipients = sum(counts.get(s, {}).get(channel, 0) for s in LEFT)
        if run_row.campaign in settings.campaigns and sample:
            estimate = estimate_segments(engine, messages, run_row.campaign, channel, sample, recipients, run_row.as_of)
            sms.append(asdict(estimate))
    return {"counts": counts, "hourly": hourly, "reasons": reasons, "sms": sms}


def _hour(dialect: str, column: Any) -> Any:
    """The UTC hour of a timestamp, as text ``YYYY-MM-DD HH`` (grouped in the database)."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), literal("YYYY-MM-DD HH24", String))
    return func.substr(column, 1, 13)


def _bars(hourly: Sequence[Any], zone: Any) -> tuple[list[Bar], str]:
    """Bars per hour in the program's zone over at most two days, else per day."""
    per_hour: dict[datetime, dict[str, int]] = {}
    for text, channel, n in hourly:
        at = datetime.strptime(str(text), "%Y-%m-%d %H").replace(tzinfo=UTC).astimezone(zone)
        per_hour.setdefault(at, {})[channel or "-"] = int(n)
    if not per_hour:
        return [], "hour"
    first, last = min(per_hour), max(per_hour)
    if last - first <= timedelta(hours=48):
        bars, at = [], first
        while at <= last:
            bars.append(Bar(at.strftime("%d.%m %H:00"), per_hour.get(at, {})))
            at += timedelta(hours=1)
        return bars, "hour"
    per_day: dict[str, dict[str, int]] = {}
    day, end = first.date(), last.date()
    while day <= end:
        per_day[day.strftime("%d.%m")] = {}
        day += timedelta(days=1)
    for at, parts in per_hour.items():
        totals = per_day[at.strftime("%d.%m")]
        for channel, n in parts.items():
            totals[channel] = totals.get(channel, 0) + n
    return [Bar(label, parts) for label, parts in per_day.items()], "day"


def member_suppressions(engine: Engine, addresses: dict[str, str]) -> list[dict[str, Any]]:
    """Suppressions of the member's addresses (``{channel: address}``)."""
    if not addresses:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            select(suppressions).where(
                suppressions.c.address.in_(list(addresses.values())),
                suppressions.c.channel.in_(list(addresses)),
            )
        )
        return [dict(row._mapping) for row in rows]
