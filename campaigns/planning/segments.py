"""Segments from settings, compiled into one set-based SQL query.

A segment is a conjunction of optional filters (``SegmentSettings``). ``segment_query``
turns it into a SELECT over ``members`` joined with ``balances`` and the member's points
expiring within the horizon (aggregated once, by the database, with GROUP BY): there is
never a query per member.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Select, Subquery, and_, exists, func, literal, select, true

from campaigns.config.sections import SegmentSettings
from campaigns.store.models import balances, members, point_expirations, segment_members

MemberRange = tuple[int, int] | tuple[BindParameter[int], BindParameter[int]]
"""A chunk's first and last member id (inclusive): values, or parameters filled in per
chunk when one statement built for a run is executed for each of its chunks."""


def expiring_points_subquery(as_of: datetime, within_days: int, member_range: MemberRange | None = None) -> Subquery:
    """Points per member expiring in ``(as_of, as_of + within_days]``, as a subquery
    with columns ``member_id`` and ``points``."""
    horizon = as_of + timedelta(days=within_days)
    conditions = [
        point_expirations.c.expires_at > as_of,
        point_expirations.c.expires_at <= horizon,
        point_expirations.c.points > 0,
    ]
    if member_range is not None:
        conditions.append(point_expirations.c.member_id.between(*member_range))
    return (
        select(point_expirations.c.member_id, func.sum(point_expirations.c.points).label("points"))
        .where(*conditions)
        .group_by(point_expirations.c.member_id)
        .subquery("expiring")
    )


def segment_query(
    segment: SegmentSettings,
    *,
    as_of: datetime,
    default_locale: str,
    member_range: MemberRange | None = None,
) -> Select[Any]:
    """SELECT of the segment's members as of ``as_of``.

    Columns: every ``members`` column, ``balance`` (0 when the member has no balance
    row) and ``expiring_points`` (points expiring within ``expiring_within_days``, 0
    without that filter). ``member_range`` (inclusive ids) restricts it to one chunk.
    """
    balance = func.coalesce(balances.c.points, 0)
    balance_join = balances.c.member_id == members.c.id
    if member_range is not None:
        # Repeated on balances so PostgreSQL reads the chunk's range of balances by
        # index instead of hashing the whole table once per chunk.
        balance_join = and_(balance_join, balances.c.member_id.between(*member_range))
    source = members.outerjoin(balances, balance_join)
    expiring_col: ColumnElement[Any] = literal(0).label("expiring_points")
    conditions: list[ColumnElement[bool]] = []

    if segment.expiring_within_days is not None:
        expiring = expiring_points_subquery(as_of, segment.expiring_within_days, member_range)
        source = source.outerjoin(expiring, expiring.c.member_id == members.c.id)
        expiring_sum = func.coalesce(expiring.c.points, 0)
        expiring_col = expiring_sum.label("expiring_points")
        conditions.append(expiring_sum >= (segment.min_expiring_points or 0.01))
    if segment.min_balance is not None:
        conditions.append(balance >= segment.min_balance)
    if segment.max_balance is not None:
        conditions.append(balance <= segment.max_balance)
    if segment.tiers is not None:
        conditions.append(members.c.tier.in_(segment.tiers))
    if segment.locales is not None:
        conditions.append(func.coalesce(members.c.locale, default_locale).in_(segment.locales))
    if segment.min_days_since_purchase is not None:
        # Never purchased counts as "long ago".
        cutoff = as_of - timedelta(days=segment.min_days_since_purchase)
        conditions.append((members.c.last_purchase_at <= cutoff) | members.c.last_purchase_at.is_(None))
    if segment.max_days_since_purchase is not None:
        cutoff = as_of - timedelta(days=segment.max_days_since_purchase)
        conditions.append(members.c.last_purchase_at >= cutoff)
    if segment.in_segment is not None:
        conditions.append(
            exists().where(
                segment_members.c.segment == segment.in_segment,
                segment_members.c.member_id == members.c.id,
            )
        )
    if member_range is not None:
        conditions.append(members.c.id.between(*member_range))

    return select(*members.c, balance.label("balance"), expiring_col).select_from(source).where(and_(true(), *conditions))
