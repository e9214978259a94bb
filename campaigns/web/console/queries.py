"""What the console's pages show, read from settings and the ledger.

Every page answers with a handful of set queries, whatever the size of the run: counts
and charts are ``GROUP BY`` over one run's rows (the ledger's index on ``run_id``), a
member's page reads that member's rows. SMS segments and cost of a run are estimated by
rendering a sample of its messages again (the ledger keeps the message's outcome, not
its text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, String, func, literal, select

from campaigns.app.scheduler import next_fires
from campaigns.config.rules import CapRule
from campaigns.config.sections import CampaignSettings
from campaigns.config.settings import Settings
from campaigns.config.values import ANY_CHANNEL
from campaigns.config.zones import zone_info
from campaigns.delivery.message import MessageBuilder
from campaigns.store.ledger import Status
from campaigns.store.models import campaign_runs, deliveries, suppressions
from campaigns.tools.preview import SegmentEstimate, estimate_segments
from campaigns.web.console.charts import Bar
from channels.specs import CHANNELS, channel_spec

LAST_RUNS = 5
NEXT_FIRES = 3
TOP_REASONS = 8
SMS_SAMPLE = 50
SENT = (Status.SENT.value, Status.DELIVERED.value, Status.UNKNOWN.value)
"""Rows whose message left (``unknown``: it may have)."""
SETTLED_WELL = (*SENT, Status.QUEUED.value, Status.SENDING.value)


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


def run(engine: Engine, settings: Settings, messages: MessageBuilder, run_id: int) -> RunView | None:
    """One run: counts per status and channel, sends per hour (or day), the most common
    reasons rows did not go out, SMS segments and cost (estimated from a sample)."""
    with engine.connect() as conn:
        found = conn.execute(select(campaign_runs).where(campaign_runs.c.id == run_id)).first()
        if found is None:
            return None
        counts: dict[str, dict[str, int]] = {}
        for row in conn.execute(
            select(deliveries.c.status, deliveries.c.channel, func.count().label("n"))
            .where(deliveries.c.run_id == run_id)
            .group_by(deliveries.c.status, deliveries.c.channel)
        ):
            counts.setdefault(str(row.status), {})[row.channel or "-"] = int(row.n)
        hour = _hour(engine.dialect.name, deliveries.c.sent_at)
        hourly = conn.execute(
            select(hour.label("hour"), deliveries.c.channel, func.count())
            .where(deliveries.c.run_id == run_id, deliveries.c.sent_at.is_not(None))
            .group_by(hour, deliveries.c.channel)
            .order_by(hour)
        ).all()
        reasons = [
            Reason(str(row.status), str(row.reason_code or "-"), str(row.example or ""), int(row.n))
            for row in conn.execute(
                select(
                    deliveries.c.status,
                    deliveries.c.reason_code,
                    func.min(deliveries.c.reason).label("example"),
                    func.count().label("n"),
                )
                .where(deliveries.c.run_id == run_id, deliveries.c.status.not_in(SETTLED_WELL))
                .group_by(deliveries.c.status, deliveries.c.reason_code)
                .order_by(func.count().desc(), deliveries.c.status)
                .limit(TOP_REASONS)
            )
        ]
        samples: dict[str, list[int]] = {
            channel: list(
                conn.execute(
                    select(deliveries.c.member_id)
                    .where(deliveries.c.run_id == run_id, deliveries.c.channel == channel, deliveries.c.status.in_(SENT))
                    .order_by(deliveries.c.id)
                    .limit(SMS_SAMPLE)
                ).scalars()
            )
            for channel in CHANNELS
            if channel_spec(channel).measure is not None and any(counts.get(s, {}).get(channel) for s in SENT)
        }
    zone = zone_info(settings.program.timezone)
    sends, bucket = _bars(hourly, zone)
    sms = []
    for channel, sample in samples.items():
        recipients = sum(counts.get(s, {}).get(channel, 0) for s in SENT)
        if found.campaign in settings.campaigns and sample:
            sms.append(estimate_segments(engine, messages, found.campaign, channel, sample, recipients, found.as_of))
    channels = sorted({c for per in counts.values() for c in per}, key=lambda c: (c == "-", c))
    return RunView(
        found.id, found.campaign, found.occasion, found.as_of, found.state, counts, channels, sends, bucket, reasons, sms
    )


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
