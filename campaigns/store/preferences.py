"""Members' own choices: which channels and categories they still want.

A row of ``preferences`` says subscribed or not for one ``(channel, category)``, where
either may be ``*`` (every channel, every marketing category). For a message the most
specific row decides: ``(channel, category)`` over ``(channel, *)`` over
``(*, category)`` over ``(*, *)``; no row means subscribed (the program's consent
columns still apply). Writing a choice removes the member's narrower rows it covers, so
"stop everything" is not undone by an older "keep email marketing", and a later
"resubscribe to email marketing" is a narrower row that wins over "stop everything".

Preferences bind marketing categories only: ``service`` messages (a receipt, a password
reset) are not stopped by an unsubscribe, as they need no marketing consent either.

The planner reads :func:`choice_codes` for a chunk of members in its set-based SQL, the
deliverer re-checks :func:`unsubscribed` at send time, and ``why`` prints
:func:`member_choices`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, Subquery, and_, case, delete, exists, func, literal, or_, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from campaigns.config.values import ANY, SERVICE
from campaigns.store.engine import upsert_insert
from campaigns.store.models import preferences, suppressions


@dataclass(frozen=True)
class Choice:
    """One row of a member's preferences."""

    channel: str
    category: str
    subscribed: bool
    source: str
    changed_at: datetime

    def covers(self, channel: str, category: str) -> bool:
        return self.channel in (channel, ANY) and self.category in (category, ANY)

    @property
    def rank(self) -> int:
        """How specific the row is: the highest rank among those covering a message decides."""
        return (2 if self.channel != ANY else 0) + (1 if self.category != ANY else 0)

    def describe(self) -> str:
        what = "everything" if self.category == ANY else self.category
        where = "every channel" if self.channel == ANY else self.channel
        verb = "subscribed to" if self.subscribed else "unsubscribed from"
        return f"{verb} {what} on {where} on {self.changed_at:%Y-%m-%d} via {self.source}"


def deciding(choices: list[Choice], channel: str, category: str) -> Choice | None:
    """The row that decides ``(channel, category)`` for a member; None: no choice made."""
    covering = [choice for choice in choices if choice.covers(channel, category)]
    return max(covering, key=lambda choice: choice.rank) if covering else None


def is_subscribed(choices: list[Choice], channel: str, category: str) -> bool:
    choice = deciding(choices, channel, category)
    return choice is None or choice.subscribed


RANK = case((preferences.c.channel == ANY, 0), else_=2) + case((preferences.c.category == ANY, 0), else_=1)
"""SQL of :attr:`Choice.rank`: how specific a ``preferences`` row is."""


def unsubscribed(member_id: ColumnElement[Any], channel: Any, category: Any) -> ColumnElement[bool]:
    """SQL: the member has unsubscribed from ``category`` on ``channel`` (values or
    columns), by the most specific row (one index probe of the primary key)."""
    decided = (
        select(preferences.c.subscribed)
        .where(
            preferences.c.member_id == member_id,
            or_(preferences.c.channel == channel, preferences.c.channel == literal(ANY)),
            or_(preferences.c.category == category, preferences.c.category == literal(ANY)),
        )
        .order_by(RANK.desc())
        .limit(1)
        .scalar_subquery()
    )
    return func.coalesce(decided, true()) == literal(False)


def choice_codes(channels: list[str], category: str, member_range: tuple[Any, Any]) -> Subquery:
    """Per member of ``member_range`` (first and last id, values or bound parameters)
    who made any choice covering ``category``, and per channel, the deciding row as one
    number: its :data:`RANK` times two, plus 1 when it says subscribed. The largest
    covering row decides, so an even number is an unsubscribe. One grouped scan of the
    members' rows, for a planner to join, instead of :func:`unsubscribed` per member
    and channel."""
    code = RANK * 2 + case((preferences.c.subscribed, 1), else_=0)
    covering = {
        channel: func.max(case((preferences.c.channel.in_([channel, ANY]), code), else_=literal(None, Integer))).label(channel)
        for channel in channels
    }
    first, last = member_range
    return (
        select(preferences.c.member_id, *covering.values())
        .where(preferences.c.member_id.between(first, last), preferences.c.category.in_([category, ANY]))
        .group_by(preferences.c.member_id)
        .subquery("choices")
    )


def member_choices(conn: Connection, member_id: int) -> list[Choice]:
    rows = conn.execute(
        select(preferences).where(preferences.c.member_id == member_id).order_by(preferences.c.channel, preferences.c.category)
    )
    return [Choice(r.channel, r.category, r.subscribed, r.source, r.changed_at) for r in rows]


def choose(
    conn: Connection, member_id: int, channel: str, category: str, *, subscribed: bool, source: str, now: datetime
) -> None:
    """Record the member's choice for ``(channel, category)`` (either may be ``*``),
    replacing the narrower rows it covers. Idempotent: repeating it changes nothing but
    ``changed_at``."""
    covered = [preferences.c.member_id == member_id]
    if channel != ANY:
        covered.append(preferences.c.channel == channel)
    if category != ANY:
        covered.append(preferences.c.category == category)
    conn.execute(delete(preferences).where(and_(*covered)))
    row = {"subscribed": subscribed, "source": source, "changed_at": now}
    insert = upsert_insert(conn, preferences).values(member_id=member_id, channel=channel, category=category, **row)
    # Two clicks at once: the second one's row simply wins.
    conn.execute(insert.on_conflict_do_update(index_elements=["member_id", "channel", "category"], set_=row))


def withdrawn(rows: Any) -> ColumnElement[str | None]:
    """SQL over ledger ``rows``: ``'suppressed'`` when the row's address is suppressed,
    ``'unsubscribed'`` when the member stopped its (marketing) category on its channel,
    else NULL. The deliverer asks it as a batch loads, so a choice made after planning
    holds for the messages already decided."""
    is_suppressed = exists().where(suppressions.c.channel == rows.c.channel, suppressions.c.address == rows.c.address)
    stopped = and_(rows.c.category != SERVICE, unsubscribed(rows.c.member_id, rows.c.channel, rows.c.category))
    return case((is_suppressed, literal("suppressed")), (stopped, literal("unsubscribed")), else_=literal(None, String))
