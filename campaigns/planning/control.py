"""Control groups: a campaign's holdout and the global control group, stratified.

A control group is *drawn*: each member the planner considers gets a place in it once
(``control_draws``) and keeps it for as long as the draw lasts, so a member held out of
one occasion is held out of the next. The draw is stratified by tier (and optionally one
more column of ``members``): inside each stratum, members are taken in the order of a
stable hash of (draw, member id), and every ``1/share``-th position is held out. A
running count per stratum (``control_strata``) carries the position on from one chunk
and one run to the next, so in every stratum the held-out share is the configured one to
within one member, whatever the strata's sizes. (A hash bucket alone gives that share
only on average: in a tier of 500 members a 10% holdout would land anywhere between 7%
and 13%.)

Draws are named: ``campaign:<salt>:<parts>:<column>`` for a holdout, so changing the
share, the column or the salt draws anew; ``global:<salt>:<period>`` for the global
control group, a new group each month, quarter or year. Everything here runs inside the
planner's chunk transaction: a dry run draws and rolls back with the rest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from typing import cast as cast_type

from sqlalchemy import Boolean, ColumnElement, String, cast, exists, func, literal, select
from sqlalchemy.engine import Connection, Result
from sqlalchemy.sql import Subquery

from campaigns.config.sections import ControlSettings
from campaigns.config.settings import Settings
from campaigns.config.values import is_marketing
from campaigns.config.zones import zone_info
from campaigns.store.engine import holdout_bucket, upsert_insert
from campaigns.store.models import control_draws, control_strata

PARTS = 10_000
"""A share is drawn as whole parts per ten thousand (0.1 is 1,000 parts)."""
_Row = TypeVar("_Row", bound=tuple[Any, ...])
STRATUM_SEPARATOR = " | "
KEY_LENGTH = 200


@dataclass(frozen=True)
class Draw:
    """One control group: who is in it is decided once per member and kept."""

    key: str
    share: float
    by: str | None
    label: str
    """How a reason names it: ``"10% holdout"``, ``"global control group (5%, 2026-Q4)"``."""

    @property
    def parts(self) -> int:
        return round(self.share * PARTS)


def _key(text: str) -> str:
    return text if len(text) <= KEY_LENGTH else text[: KEY_LENGTH - 33] + ":" + hashlib.md5(text.encode()).hexdigest()


def campaign_draw(name: str, share: float, salt: str | None, by: str | None) -> Draw | None:
    """The holdout of campaign ``name`` (None without one)."""
    if share <= 0:
        return None
    parts = round(share * PARTS)
    return Draw(_key(f"campaign:{salt or name}:{parts}:{by or 'tier'}"), share, by, f"{share:.0%} holdout")


@dataclass(frozen=True)
class Period:
    """One period of the global control group, in the program's time zone."""

    label: str
    start: datetime
    end: datetime


def period_of(control: ControlSettings, as_of: datetime, program_zone: str) -> Period:
    """The period of ``control.rotation`` that contains ``as_of`` (bounds in UTC)."""
    zone = zone_info(program_zone)
    local = as_of.astimezone(zone).date()
    if control.rotation == "month":
        first, label = date(local.year, local.month, 1), f"{local.year}-{local.month:02d}"
        after = date(local.year + local.month // 12, local.month % 12 + 1, 1)
    elif control.rotation == "quarter":
        quarter = (local.month - 1) // 3
        first, label = date(local.year, 3 * quarter + 1, 1), f"{local.year}-Q{quarter + 1}"
        after = date(local.year + (quarter == 3), (3 * quarter + 3) % 12 + 1, 1)
    else:
        first, label, after = date(local.year, 1, 1), str(local.year), date(local.year + 1, 1, 1)

    def instant(day: date) -> datetime:
        return datetime.combine(day, time(), zone).astimezone(UTC)

    return Period(label, instant(first), instant(after))


def previous_period(control: ControlSettings, period: Period, program_zone: str) -> Period:
    """The period just before ``period``."""
    return period_of(control, period.start - timedelta(seconds=1), program_zone)


def global_draw(settings: Settings, category: str, as_of: datetime) -> Draw | None:
    """The global control group's draw for the period of ``as_of``, when it applies to
    messages of ``category`` (marketing only) and is switched on."""
    control = settings.control
    if control.share <= 0 or not is_marketing(category):
        return None
    period = period_of(control, as_of, settings.program.timezone)
    return Draw(
        _key(f"global:{control.salt}:{period.label}"),
        control.share,
        control.by,
        f"global control group ({control.share:.0%}, {period.label})",
    )


def stratum(segment: Subquery, by: str | None) -> ColumnElement[str]:
    """The member's stratum as text: the tier, or ``"gold | ru"`` with a second column."""
    tier: ColumnElement[str] = segment.c.tier
    if by is None:
        return tier
    return tier + literal(STRATUM_SEPARATOR, String) + func.coalesce(cast(segment.c[by], String), literal("-", String))


def draw_members(conn: Connection, draw: Draw, segment: Subquery) -> int:
    """Give every member of ``segment`` not drawn yet a place in ``draw``; return how many.

    Per stratum, the newcomers are numbered in hash order after the members drawn before
    (``control_strata.members``); position ``n`` is held out when ``floor(n * share)``
    steps up there. Two chunks drawing the same stratum at once may read the same count:
    each is then exact on its own, and the stratum off by at most one member per chunk.
    """
    level = stratum(segment, draw.by)
    order = holdout_bucket(literal(draw.key, String), segment.c.id)
    newcomers = (
        select(
            segment.c.id.label("member_id"),
            level.label("stratum"),
            func.row_number().over(partition_by=level, order_by=(order, segment.c.id)).label("rank"),
        )
        .where(~exists().where(control_draws.c.draw == draw.key, control_draws.c.member_id == segment.c.id))
        .subquery("newcomers")
    )
    before = func.coalesce(
        select(control_strata.c.members)
        .where(control_strata.c.draw == draw.key, control_strata.c.stratum == newcomers.c.stratum)
        .scalar_subquery(),
        0,
    )
    position = before + newcomers.c.rank
    held = (position * draw.parts) // PARTS > ((position - 1) * draw.parts) // PARTS
    rows = select(
        literal(draw.key, String).label("draw"),
        newcomers.c.member_id,
        newcomers.c.stratum,
        cast(held, Boolean).label("held"),
        literal(datetime.now(UTC), control_draws.c.drawn_at.type).label("drawn_at"),
    ).where(literal(True, Boolean))  # SQLite wants a WHERE before ON CONFLICT in INSERT ... SELECT
    insert = (
        upsert_insert(conn, control_draws)
        .from_select(["draw", "member_id", "stratum", "held", "drawn_at"], rows)
        .on_conflict_do_nothing()
        .returning(control_draws.c.stratum, control_draws.c.held)
    )
    counts: dict[str, list[int]] = {}
    if conn.dialect.name == "postgresql":
        inserted = insert.cte("inserted")
        tallied = select(inserted.c.stratum, func.count(), func.count().filter(inserted.c.held)).group_by(inserted.c.stratum)
        for name, members_, held_ in cast_rows(conn.execute(tallied), tuple[str, int, int]):
            counts[name] = [members_, held_]
    else:
        for name, is_held in cast_rows(conn.execute(insert), tuple[str, bool]):
            tally = counts.setdefault(name, [0, 0])
            tally[0] += 1
            tally[1] += int(bool(is_held))
    if counts:
        upsert = upsert_insert(conn, control_strata)
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["draw", "stratum"],
                set_={
                    "members": control_strata.c.members + upsert.excluded.members,
                    "held": control_strata.c.held + upsert.excluded.held,
                },
            ),
            # In one order, so two chunks updating the same strata cannot deadlock.
            [{"draw": draw.key, "stratum": name, "members": n, "held": h} for name, (n, h) in sorted(counts.items())],
        )
    return sum(n for n, _ in counts.values())


def cast_rows(result: Result[Any], shape: type[_Row]) -> list[_Row]:
    """The result's rows, typed as ``shape`` (which the query's columns guarantee)."""
    return cast_type(list[_Row], [tuple(row) for row in result])


def is_held(draw: Draw, member_id: ColumnElement[int]) -> ColumnElement[bool]:
    """Whether the member is held out by ``draw`` (drawn by :func:`draw_members` first)."""
    return exists().where(control_draws.c.draw == draw.key, control_draws.c.member_id == member_id, control_draws.c.held)


@dataclass(frozen=True)
class StratumShare:
    stratum: str
    members: int
    held: int

    @property
    def share(self) -> float:
        return self.held / self.members if self.members else 0.0


@dataclass(frozen=True)
class Turnover:
    """How much of one period's group the next period's group kept."""

    period: str
    held: int
    """Members held out in the earlier period."""
    still_held: int
    """Of those, members held out again in the later period."""


def turnover(conn: Connection, earlier: Draw, later: Draw, period: str) -> Turnover:
    """Members held by ``earlier`` (labelled ``period``) and how many ``later`` holds too."""
    again = control_draws.alias("again")
    held_before = select(control_draws.c.member_id).where(control_draws.c.draw == earlier.key, control_draws.c.held).subquery()
    row = conn.execute(
        select(
            func.count(held_before.c.member_id),
            func.count(again.c.member_id),
        ).select_from(
            held_before.outerjoin(
                again, (again.c.member_id == held_before.c.member_id) & (again.c.draw == later.key) & again.c.held
            )
        )
    ).one()
    return Turnover(period, int(row[0]), int(row[1]))


def strata(conn: Connection, draw_key: str) -> list[StratumShare]:
    """The draw's strata with their sizes and held-out counts, largest first."""
    rows = conn.execute(
        select(control_strata.c.stratum, control_strata.c.members, control_strata.c.held)
        .where(control_strata.c.draw == draw_key)
        .order_by(control_strata.c.members.desc(), control_strata.c.stratum)
    )
    return [StratumShare(name, int(n), int(h)) for name, n, h in cast_rows(rows, tuple[str, int, int])]


@dataclass(frozen=True)
class GroupReport:
    """The global control group of one period: its strata and its turnover."""

    draw: Draw
    period: Period
    strata: list[StratumShare]
    turnover: Turnover


def group_report(conn: Connection, settings: Settings, at: datetime) -> GroupReport | None:
    """The global control group of the period containing ``at`` (None while it is off)."""
    draw = global_draw(settings, "marketing", at)
    if draw is None:
        return None
    zone = settings.program.timezone
    period = period_of(settings.control, at, zone)
    before = previous_period(settings.control, period, zone)
    earlier = global_draw(settings, "marketing", before.start)
    assert earlier is not None  # the same settings: on for the period before too
    return GroupReport(draw, period, strata(conn, draw.key), turnover(conn, earlier, draw, before.label))
