"""Segment filters compile to one SQL query that selects exactly the right members."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from helpers import add_expiration, add_member
from sqlalchemy import insert

from campaigns.config.sections import SegmentSettings
from campaigns.planning.segments import segment_query
from campaigns.store.models import segment_members

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


@pytest.fixture
def population(configured):
    application = configured()
    engine = application.engine
    add_member(engine, 1, points=50, tier="basic", locale="ru", last_purchase_at=NOW - timedelta(days=5))
    add_member(engine, 2, points=150, tier="silver", locale="en", last_purchase_at=NOW - timedelta(days=100))
    add_member(engine, 3, points=5000, tier="gold", locale=None, last_purchase_at=None)
    add_member(engine, 4, points=0, tier="basic", locale="ru", last_purchase_at=NOW - timedelta(days=400))
    add_expiration(engine, 1, 40, NOW + timedelta(days=3))
    add_expiration(engine, 2, 100, NOW + timedelta(days=10))
    add_expiration(engine, 2, 30, NOW + timedelta(days=40))
    add_expiration(engine, 3, 300, NOW + timedelta(days=29))
    add_expiration(engine, 3, 300, NOW - timedelta(days=1))  # already expired
    with engine.begin() as conn:
        conn.execute(insert(segment_members), [{"segment": "rfm_champions", "member_id": 3}])
    return engine


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, [1, 2, 3, 4]),
        ({"min_balance": 100}, [2, 3]),
        ({"max_balance": 100}, [1, 4]),
        ({"tiers": ["silver", "gold"]}, [2, 3]),
        ({"locales": ["ru"]}, [1, 3, 4]),  # member 3 has no locale: the program default (ru)
        ({"min_days_since_purchase": 90}, [2, 3, 4]),  # never purchased counts as long ago
        ({"max_days_since_purchase": 30}, [1]),
        ({"in_segment": "rfm_champions"}, [3]),
        ({"expiring_within_days": 30}, [1, 2, 3]),
        ({"expiring_within_days": 30, "min_expiring_points": 50}, [2, 3]),
        ({"expiring_within_days": 7}, [1]),
        ({"expiring_within_days": 60, "min_expiring_points": 130}, [2, 3]),
        ({"min_balance": 100, "max_days_since_purchase": 200, "tiers": ["silver"]}, [2]),
    ],
)
def test_filters(population, filters, expected) -> None:
    query = segment_query(SegmentSettings(**filters), as_of=NOW, default_locale="ru")
    with population.connect() as conn:
        rows = conn.execute(query.order_by("id")).all()
    assert [row.id for row in rows] == expected


def test_expiring_points_are_summed_within_the_horizon(population) -> None:
    query = segment_query(SegmentSettings(expiring_within_days=60), as_of=NOW, default_locale="ru")
    with population.connect() as conn:
        rows = {row.id: row.expiring_points for row in conn.execute(query)}
    assert rows == {1: 40, 2: 130, 3: 300}
