"""Planning a campaign occasion: one ledger decision per member, made by the database.

An occasion is claimed once (``campaign_runs`` is unique on campaign and occasion).
Planning then walks the members in chunks of ids; per chunk, in one transaction:

1. lock the chunk's members (``cap_locks`` rows, in ``member_id`` order, so two planners
   never deadlock and never both see a free cap slot for the same member);
2. one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` writes a ``deliveries`` row for
   every member of the segment in the chunk: the channel (first reachable in the
   campaign's priority list), the status (``queued`` or why not) and a reason. A queued
   row holds its cap slot from the moment it is committed.

Rerunning an occasion (a retry, a redelivered message, a second ``run``) inserts nothing:
the unique ``(run_id, member_id)`` key absorbs it. Nothing here loads members into
Python; the only rows that come back are chunk boundaries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Engine,
    Integer,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.engine import Connection

from campaigns.db import upsert_insert
from campaigns.errors import UnknownCampaign
from campaigns.ledger import Status
from campaigns.models import UTCDateTime, campaign_runs, cap_locks, deliveries, members, suppressions
from campaigns.segments import segment_query
from campaigns.settings import CampaignSettings, Settings

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 3


@dataclass(frozen=True)
class Run:
    id: int
    campaign: str
    occasion: str
    as_of: datetime
    state: str
    created: bool
    """False when the occasion had been claimed before (a rerun decides nothing new)."""


def occasion_for(settings: Settings, as_of: datetime) -> str:
    """The default occasion of a manual run: the program-local date of ``as_of``."""
    return as_of.astimezone(ZoneInfo(settings.program.timezone)).date().isoformat()


def campaign_settings(settings: Settings, name: str) -> CampaignSettings:
    try:
        return settings.campaigns[name]
    except KeyError:
        raise UnknownCampaign(name, list(settings.campaigns)) from None


def claim_run(
    engine: Engine,
    settings: Settings,
    campaign: str,
    *,
    as_of: datetime,
    occasion: str | None = None,
    started_by: str = "cli",
) -> Run:
    """Claim ``(campaign, occasion)``; return the existing run if it was claimed before."""
    campaign_settings(settings, campaign)
    occasion = occasion or occasion_for(settings, as_of)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        inserted = conn.execute(
            upsert_insert(conn, campaign_runs)
            .values(
                campaign=campaign,
                occasion=occasion,
                as_of=as_of,
                started_at=now,
                started_by=started_by,
                dry_run=False,
                state="planning",
            )
            .on_conflict_do_nothing()
            .returning(campaign_runs.c.id)
        ).scalar()
        row = conn.execute(
            select(campaign_runs).where(campaign_runs.c.campaign == campaign, campaign_runs.c.occasion == occasion)
        ).one()
    return Run(row.id, row.campaign, row.occasion, row.as_of, row.state, created=inserted is not None)


def load_run(engine: Engine, run_id: int) -> Run:
    with engine.connect() as conn:
        row = conn.execute(select(campaign_runs).where(campaign_runs.c.id == run_id)).one()
    return Run(row.id, row.campaign, row.occasion, row.as_of, row.state, created=False)


def plan_run(engine: Engine, settings: Settings, run_id: int) -> int:
    """Decide every member of the run's segment; return how many new decisions were made.

    Idempotent: planning a run again (after a crash, or concurrently) adds only the
    decisions that are missing.
    """
    run = load_run(engine, run_id)
    campaign = campaign_settings(settings, run.campaign)
    chunk_size = settings.delivery.plan_chunk_size
    decided = 0
    for member_range in member_chunks(engine, chunk_size):
        decided += _plan_chunk(engine, settings, run, campaign, member_range)
    with engine.begin() as conn:
        considered = conn.execute(
            select(func.count()).select_from(deliveries).where(deliveries.c.run_id == run.id)
        ).scalar_one()
        conn.execute(
            update(campaign_runs)
            .where(campaign_runs.c.id == run.id)
            .values(state="planned", considered=considered, finished_planning_at=datetime.now(timezone.utc))
        )
    log.info("planned run %s (%s/%s): %d new decisions", run.id, run.campaign, run.occasion, decided)
    return decided


def member_chunks(engine: Engine, chunk_size: int) -> list[tuple[int, int]]:
    """Inclusive ``(first_id, last_id)`` ranges of about ``chunk_size`` members each.

    The boundaries are computed by the database (a window function), so only one row
    per chunk comes back.
    """
    numbered = select(members.c.id, func.row_number().over(order_by=members.c.id).label("rn")).subquery()
    with engine.connect() as conn:
        bounds = conn.execute(
            select(numbered.c.id).where(numbered.c.rn % chunk_size == 0).order_by(numbered.c.id)
        ).scalars().all()
        last = conn.execute(select(func.max(members.c.id))).scalar()
        first = conn.execute(select(func.min(members.c.id))).scalar()
    if first is None or last is None:
        return []
    ranges = []
    low = first
    for bound in bounds:
        ranges.append((low, bound))
        low = bound + 1
    if low <= last:
        ranges.append((low, last))
    return ranges


def _plan_chunk(
    engine: Engine, settings: Settings, run: Run, campaign: CampaignSettings, member_range: tuple[int, int]
) -> int:
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with engine.begin() as conn:
                lock_members(conn, member_range)
                result = conn.execute(decision_insert(conn, settings, run, campaign, member_range))
                return max(result.rowcount or 0, 0)
        except OperationalError as exc:
            if attempt == DEADLOCK_RETRIES or not _is_retryable(exc):
                raise
            log.warning("planning chunk %s of run %s: %s; retrying", member_range, run.id, exc.orig)
    raise AssertionError("unreachable")


def _is_retryable(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in {"40P01", "40001"} or "database is locked" in str(exc.orig)


def lock_members(conn: Connection, member_range: tuple[int, int]) -> None:
    """Serialize cap decisions per member for the rest of the transaction.

    PostgreSQL: one ``cap_locks`` row per member, locked ``FOR UPDATE`` in id order.
    SQLite: the INSERT makes this transaction the database's single writer at once.
    """
    conn.execute(
        upsert_insert(conn, cap_locks)
        .from_select(
            ["member_id"],
            select(members.c.id).where(members.c.id.between(*member_range)).order_by(members.c.id),
        )
        .on_conflict_do_nothing()
    )
    if conn.dialect.name == "postgresql":
        locked = (
            select(cap_locks.c.member_id)
            .where(cap_locks.c.member_id.between(*member_range))
            .order_by(cap_locks.c.member_id)
            .with_for_update()
            .subquery()
        )
        conn.execute(select(func.count()).select_from(locked))


STATE_OK = "ok"
STATE_NO_CONTACT = "no contact"
STATE_NO_CONSENT = "no consent"
STATE_SUPPRESSED = "suppressed"


def _contact(segment, channel: str) -> ColumnElement[str]:  # type: ignore[no-untyped-def]
    if channel == "email":
        return segment.c.email
    if channel == "sms":
        return segment.c.phone
    if channel == "telegram":
        return cast(segment.c.telegram_chat_id, String)
    raise ValueError(f"unknown channel {channel!r}")


def decision_insert(
    conn: Connection, settings: Settings, run: Run, campaign: CampaignSettings, member_range: tuple[int, int]
):  # type: ignore[no-untyped-def]
    """The ``INSERT ... SELECT`` that decides (and reserves) one chunk of a run."""
    segment = segment_query(
        settings.segments[campaign.segment],
        as_of=run.as_of,
        default_locale=settings.program.default_locale,
        member_range=member_range,
    ).subquery("segment")
    send_at = run.as_of

    columns: list[ColumnElement] = [segment.c.id.label("member_id")]  # type: ignore[type-arg]
    source = segment
    cap_rules = {}
    for channel in campaign.channels:
        contact = _contact(segment, channel)
        has_contact = and_(contact.is_not(None), contact != "")
        consent = segment.c[f"{channel}_consent"]
        suppressed = exists().where(suppressions.c.channel == channel, suppressions.c.address == contact)
        state = case(
            (not_(has_contact), STATE_NO_CONTACT),
            (not_(consent), STATE_NO_CONSENT),
            (suppressed, STATE_SUPPRESSED),
            else_=STATE_OK,
        )
        columns += [state.label(f"state_{channel}"), contact.label(f"address_{channel}")]
        rules = settings.caps_for(channel, campaign.category)
        if rules:
            rule = rules[0]
            cap_rules[channel] = rule
            used = (
                select(deliveries.c.member_id, func.count().label("used"))
                .where(
                    deliveries.c.holds_slot,
                    deliveries.c.channel == channel,
                    deliveries.c.category == campaign.category,
                    # A rolling window of length W around send_at: any earlier or later
                    # reservation closer than W takes one of the rule's slots.
                    deliveries.c.send_at > send_at - rule.per,
                    deliveries.c.send_at < send_at + rule.per,
                    deliveries.c.member_id.between(*member_range),
                )
                .group_by(deliveries.c.member_id)
                .subquery(f"used_{channel}")
            )
            source = source.outerjoin(used, used.c.member_id == segment.c.id)
            columns.append(func.coalesce(used.c.used, 0).label(f"used_{channel}"))
    decided = select(*columns).select_from(source).subquery("decided")

    channel_expr, status_expr, reason_expr, address_expr = _decision_columns(decided, campaign, cap_rules)
    now = datetime.now(timezone.utc)
    body = select(
        literal(run.id, BigInteger),
        decided.c.member_id,
        channel_expr,
        literal(campaign.category, String),
        literal(campaign.template, String),
        status_expr,
        reason_expr,
        address_expr,
        status_expr == Status.QUEUED.value,
        literal(send_at, UTCDateTime()),
        literal(now, UTCDateTime()),
        literal(now, UTCDateTime()),
        literal(0, Integer),
    ).where(literal(True, Boolean))  # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
    return (
        upsert_insert(conn, deliveries)
        .from_select(
            [
                "run_id", "member_id", "channel", "category", "template", "status", "reason",
                "address", "holds_slot", "send_at", "created_at", "updated_at", "attempts",
            ],
            body,
        )
        .on_conflict_do_nothing(index_elements=["run_id", "member_id"])
    )


def _decision_columns(decided, campaign: CampaignSettings, cap_rules):  # type: ignore[no-untyped-def]
    """CASE expressions for channel, status, reason and address of each member.

    The first channel whose state is ``ok`` is chosen. A capped first choice does not
    fall through to a costlier channel (the cap protects the member, not the budget).
    """
    channels = campaign.channels
    state = {c: decided.c[f"state_{c}"] for c in channels}
    channel_whens, status_whens, reason_whens, address_whens = [], [], [], []
    for index, channel in enumerate(channels):
        is_ok = state[channel] == STATE_OK
        skipped = _skipped_text(state, channels[:index])
        channel_whens.append((is_ok, literal(channel, String)))
        address_whens.append((is_ok, decided.c[f"address_{channel}"]))
        rule = cap_rules.get(channel)
        if rule is None:
            status_whens.append((is_ok, literal(Status.QUEUED.value, String)))
            reason_whens.append((is_ok, literal(f"eligible on {channel}", String) + skipped))
        else:
            over_cap = decided.c[f"used_{channel}"] >= rule.max
            status_whens.append(
                (is_ok, case((over_cap, Status.CAPPED.value), else_=Status.QUEUED.value))
            )
            reason_whens.append(
                (
                    is_ok,
                    case(
                        (over_cap, literal(f"cap {rule.name}", String)),
                        else_=literal(f"eligible on {channel}", String),
                    )
                    + skipped,
                )
            )
    any_state = lambda value: or_(*(state[c] == value for c in channels))  # noqa: E731
    status = case(
        *status_whens,
        (any_state(STATE_SUPPRESSED), Status.SUPPRESSED.value),
        (any_state(STATE_NO_CONSENT), Status.NO_CONSENT.value),
        else_=Status.NO_CONTACT.value,
    )
    everything = _joined(state, channels, "; ")
    reason = case(*reason_whens, else_=everything)
    return case(*channel_whens, else_=None), status, reason, case(*address_whens, else_=None)


def _joined(state, channels, separator: str):  # type: ignore[no-untyped-def]
    expr = None
    for channel in channels:
        part = literal(f"{channel}: ", String) + state[channel]
        expr = part if expr is None else expr + literal(separator, String) + part
    return expr


def _skipped_text(state, earlier: list[str]):  # type: ignore[no-untyped-def]
    if not earlier:
        return literal("", String)
    return literal(" (", String) + _joined(state, earlier, ", ") + literal(")", String)


def queued_batches(engine: Engine, run_id: int, batch_size: int) -> Iterator[list[int]]:
    """Ids of the run's ``queued`` deliveries in batches, streamed from the database."""
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch_size).execute(
            select(deliveries.c.id)
            .where(deliveries.c.run_id == run_id, deliveries.c.status == Status.QUEUED.value)
            .order_by(deliveries.c.id)
        )
        for partition in result.partitions(batch_size):
            yield [row[0] for row in partition]

