"""The expiring-points ladder: reminders at several lead times before points expire.

A campaign with ``kind = "expiring_ladder"`` and ``stages = [30, 7, 1]`` reminds a
member when points expiring on a date D (on the member's clock, points of one date
summed) come within 30, then 7, then 1 day of D. A date's *current stage* is the
smallest stage not shorter than the days left; a member is reminded at most once per
(D, stage), however often the campaign runs: each reminder that is queued records its
(D, stage) pairs in ``ladder_marks``, inside the same member-locked transaction as the
decision, so two occasions running at once cannot both remind.

A run that starts late (first run 5 days before D) sends only the current stage (7),
never a burst of the stages it missed. One message per run covers every date whose
current stage is new, so a member with points expiring on D and D+3 gets a message
for each date as it reaches each stage.

**Merging forward.** A reminder sent today holds a cap slot, and the campaign's cap
rules (``min_gap``, or one message per window) would cap any other reminder due within
that gap, possibly a date's last chance. So when a member has a reminder due today,
every stage of another date (or of the same one) that would become due within the
gap is sent with it, today, and marked as given: two lots a day apart get one
1-day-and-2-day reminder instead of a 1-day reminder and a capped one. The gap is the
longest ``min_gap``, or ``per`` of a rule allowing one message, among the cap rules of
the campaign's category on its channels (:func:`merge_days`).

**Left out.** A member of the segment with points expiring within the ladder's horizon
and nothing to be reminded of gets a ``not_due`` row saying why (every date below
``min_points``, or each date's current stage already reminded), so ``why`` answers
"why did they get nothing?".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.engine import Connection

from campaigns.config.sections import CampaignSettings
from campaigns.config.settings import Settings
from campaigns.config.zones import zone_info
from campaigns.planning.segments import segment_query
from campaigns.store.engine import in_ids, upsert_insert
from campaigns.store.ledger import ReasonCode
from campaigns.store.models import deliveries, ladder_marks, point_expirations


@dataclass(frozen=True)
class Step:
    expires_on: date
    stage: int
    points: float
    days_left: int


@dataclass(frozen=True)
class Candidates:
    due: dict[int, list[Step]]
    """Members with a reminder due, and its steps."""
    left_out: dict[int, tuple[ReasonCode, str]]
    """Members with points expiring in the horizon and no reminder due: code and reason."""


def current_stage(days_left: int, stages: list[int]) -> int | None:
    """The smallest stage with ``days_left <= stage``; None before the first stage or after D."""
    if days_left < 0:
        return None
    reached = [stage for stage in stages if days_left <= stage]
    return min(reached) if reached else None


def points_by_date(lots: list[tuple[datetime, float]], zone: ZoneInfo, after: datetime) -> dict[date, float]:
    """Points of the lots expiring after ``after``, summed per expiry date on the member's clock."""
    totals: dict[date, float] = defaultdict(float)
    for expires_at, points in lots:
        if expires_at > after:
            totals[expires_at.astimezone(zone).date()] += points
    return dict(totals)


def merge_days(settings: Settings, campaign: CampaignSettings) -> int:
    """Days within which a reminder sent now would cap another of the campaign's
    reminders: the longest ``min_gap``, or ``per`` of a rule allowing one message,
    among the cap rules of its category on its channels (0: none would)."""
    longest = timedelta(0)
    for channel in campaign.channels:
        for rule in settings.caps_for(channel, campaign.category):
            if rule.window == "min_gap" and rule.gap is not None:
                longest = max(longest, rule.gap)
            elif rule.window == "rolling" and rule.limit == 1 and rule.per is not None:
                longest = max(longest, rule.per)
    return -(-int(longest.total_seconds()) // 86400)


def horizon_days(settings: Settings, campaign: CampaignSettings) -> int:
    """How far ahead the ladder looks at expiring points: its longest stage, a day, and
    the merge gap (a stage pulled forward may be that far ahead)."""
    return max(campaign.stages or [0]) + 1 + merge_days(settings, campaign)


def due_steps(
    lots: list[tuple[datetime, float]],
    zone: ZoneInfo,
    as_of: datetime,
    campaign: CampaignSettings,
    marked: set[tuple[date, int]],
    merge: int = 0,
) -> list[Step]:
    """The (date, stage) reminders due for one member at ``as_of`` and not given yet;
    when one is, also those that would become due within ``merge`` days (see the
    module's "Merging forward")."""
    stages = campaign.stages or []
    today = as_of.astimezone(zone).date()
    steps: list[Step] = []
    upcoming: list[Step] = []
    for expires_on, points in sorted(points_by_date(lots, zone, as_of).items()):
        if points < campaign.min_points:
            continue
        days_left = (expires_on - today).days
        stage = current_stage(days_left, stages)
        if stage is not None and (expires_on, stage) not in marked:
            steps.append(Step(expires_on, stage, points, days_left))
        for ahead in range(1, merge):
            later = current_stage(days_left - ahead, stages)
            if later is not None and later != stage and (expires_on, later) not in marked:
                upcoming.append(Step(expires_on, later, points, days_left))
                break
    if not steps:
        return []
    given = {(step.expires_on, step.stage) for step in steps}
    return steps + [step for step in upcoming if (step.expires_on, step.stage) not in given]


def left_out(
    lots: list[tuple[datetime, float]],
    zone: ZoneInfo,
    as_of: datetime,
    campaign: CampaignSettings,
    marked: set[tuple[date, int]],
) -> tuple[ReasonCode, str]:
    """Why a member with these lots gets no reminder now (``due_steps`` found none)."""
    stages = campaign.stages or []
    today = as_of.astimezone(zone).date()
    totals = sorted(points_by_date(lots, zone, as_of).items())
    enough = [(day, points) for day, points in totals if points >= campaign.min_points]
    if not enough:
        listed = ", ".join(f"{points:g} on {day.isoformat()}" for day, points in totals[:5])
        return (
            ReasonCode.BELOW_MIN_POINTS,
            f"points expiring ({listed}) are each below the campaign's min_points {campaign.min_points:g}",
        )
    reminded = [
        (day, stage)
        for day, _ in enough
        if (stage := current_stage((day - today).days, stages)) is not None and (day, stage) in marked
    ]
    if reminded:
        listed = ", ".join(f"{day.isoformat()} at {stage} days" for day, stage in reminded[:5])
        return ReasonCode.ALREADY_REMINDED, f"already reminded of {listed}"
    first = min(day - timedelta(days=max(stages)) for day, _ in enough)
    return ReasonCode.STAGE_NOT_REACHED, f"no stage reached yet: the first reminder is due on {first.isoformat()}"


def candidates(
    conn: Connection,
    settings: Settings,
    campaign_name: str,
    as_of: datetime,
    member_range: tuple[int, int],
    zones: tuple[str, ...],
) -> Candidates:
    """Members of the chunk (and of the campaign's segment) with points expiring within
    the horizon: those with a reminder due, and why the others have none. Two queries."""
    campaign = settings.campaigns[campaign_name]
    program_zone = settings.program.timezone
    horizon = as_of + timedelta(days=horizon_days(settings, campaign))
    segment = segment_query(
        settings.segments[campaign.segment],
        as_of=as_of,
        default_locale=settings.program.default_locale,
        member_range=member_range,
    ).subquery("segment")
    lots: dict[int, list[tuple[datetime, float]]] = defaultdict(list)
    zone_of: dict[int, str] = {}
    for lot in conn.execute(
        select(segment.c.id, segment.c.timezone, point_expirations.c.expires_at, point_expirations.c.points)
        .select_from(segment.join(point_expirations, point_expirations.c.member_id == segment.c.id))
        .where(
            point_expirations.c.expires_at > as_of,
            point_expirations.c.expires_at <= horizon,
            point_expirations.c.points > 0,  # NULL or a negative correction is never news
        )
    ):
        lots[lot.id].append((lot.expires_at, float(lot.points)))
        zone_of[lot.id] = lot.timezone if lot.timezone in zones else program_zone
    if not lots:
        return Candidates({}, {})
    marked: dict[int, set[tuple[date, int]]] = defaultdict(set)
    for mark in conn.execute(
        select(ladder_marks.c.member_id, ladder_marks.c.expires_on, ladder_marks.c.stage).where(
            ladder_marks.c.campaign == campaign_name, ladder_marks.c.member_id.between(*member_range)
        )
    ):
        marked[mark.member_id].add((mark.expires_on, mark.stage))
    found: dict[int, list[Step]] = {}
    skipped: dict[int, tuple[ReasonCode, str]] = {}
    merge = merge_days(settings, campaign)
    for member_id, member_lots in lots.items():
        zone = zone_info(zone_of[member_id])
        steps = due_steps(member_lots, zone, as_of, campaign, marked[member_id], merge)
        if steps:
            found[member_id] = steps
        else:
            skipped[member_id] = left_out(member_lots, zone, as_of, campaign, marked[member_id])
    return Candidates(found, skipped)


def record(conn: Connection, campaign_name: str, run_id: int | None, steps: dict[int, list[Step]]) -> int:
    """Mark the steps of the run's members whose reminder is queued (holds a slot)."""
    queued = conn.execute(
        select(deliveries.c.id, deliveries.c.member_id).where(
            deliveries.c.run_id == run_id, deliveries.c.member_id.in_(list(steps)), deliveries.c.holds_slot
        )
    ).all()
    rows = [
        {
            "campaign": campaign_name,
            "member_id": member_id,
            "expires_on": step.expires_on,
            "stage": step.stage,
            "delivery_id": delivery_id,
        }
        for delivery_id, member_id in ((row.id, row.member_id) for row in queued)
        for step in steps[member_id]
    ]
    if rows:
        conn.execute(upsert_insert(conn, ladder_marks).on_conflict_do_nothing(), rows)
    return len(rows)


def marks_for(conn: Connection, delivery_ids: list[int]) -> dict[int, list[tuple[date, int]]]:
    """``{delivery_id: [(expires_on, stage)]}``: what each ladder delivery reminds of."""
    found: dict[int, list[tuple[date, int]]] = defaultdict(list)
    for mark in conn.execute(
        select(ladder_marks.c.delivery_id, ladder_marks.c.expires_on, ladder_marks.c.stage)
        .where(in_ids(conn, ladder_marks.c.delivery_id, delivery_ids))
        .order_by(ladder_marks.c.expires_on)
    ):
        found[mark.delivery_id].append((mark.expires_on, mark.stage))
    return found
