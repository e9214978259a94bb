"""Providers' daily quotas, counted in the database (``quota_days``).

One row per (channel, provider day) holds how many messages workers have taken from the
day's quota. A worker reserves a block of them at a time (:func:`reserve`, one short
transaction with the row locked), so the count costs one statement per block, not per
message, and survives any Redis flush or worker crash: a block a dead worker held goes
unused, which errs on the side of the provider's contract.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Engine, select, update

from campaigns.store.engine import upsert_insert
from campaigns.store.models import quota_days


def reserve(engine: Engine, channel: str, day: date, quota: int, wanted: int, now: datetime) -> int:
    """Take up to ``wanted`` messages of ``channel``'s ``quota`` for ``day``; how many
    were granted (0: the day's quota is used up)."""
    with engine.begin() as conn:
        conn.execute(
            upsert_insert(conn, quota_days)
            .values(channel=channel, day=day, used=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=["channel", "day"])
        )
        used: int = conn.execute(
            select(quota_days.c.used).where(quota_days.c.channel == channel, quota_days.c.day == day).with_for_update()
        ).scalar_one()
        granted = max(min(wanted, quota - used), 0)
        if granted:
            conn.execute(
                update(quota_days)
                .where(quota_days.c.channel == channel, quota_days.c.day == day)
                .values(used=quota_days.c.used + granted, updated_at=now)
            )
        return granted


def used(engine: Engine, channel: str, day: date) -> int:
    """Messages of ``channel`` taken from ``day``'s quota so far."""
    with engine.connect() as conn:
        found = conn.execute(select(quota_days.c.used).where(quota_days.c.channel == channel, quota_days.c.day == day)).scalar()
    return int(found or 0)
