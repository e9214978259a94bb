"""The cap promise under races: real processes and threads planning against PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO
from helpers import add_members
from sqlalchemy import text

from campaigns.store import schema
from campaigns.store.engine import make_engine

PROCESSES = 4
THREADS = 4
MEMBERS = 2000

VIOLATIONS = text("""
    SELECT count(*) FROM deliveries a
    JOIN deliveries b ON a.member_id = b.member_id AND a.channel = b.channel
                     AND a.category = b.category AND a.id < b.id
    WHERE a.holds_slot AND b.holds_slot
      AND abs(extract(epoch FROM a.send_at - b.send_at)) < CASE a.channel WHEN 'sms' THEN 30 ELSE 14 END * 86400
""")


def test_no_member_gets_two_capped_messages_in_one_window(write_settings, pg_url: str) -> None:
    # Given 2,000 members reachable by SMS and email, and two marketing campaigns that
    # prefer SMS and email respectively, with small planning chunks to interleave more
    config = write_settings(
        {
            "database": {"url": pg_url},
            "quiet_hours": {"default": "off", "telegram": "off"},
            "delivery": {"plan_chunk_size": 200},
            "caps": [{"channel": "sms", "max": 1, "per": "30d"}, {"channel": "email", "max": 1, "per": "14d"}],
            "triggered": {"channels": ["email", "sms"]},
            "campaigns": {
                "sms_first": {"segment": "has_balance", "template": "balance_reminder", "channels": ["sms", "email"]},
                "email_first": {"segment": "has_balance", "template": "balance_reminder", "channels": ["email", "sms"]},
            },
        }
    )
    engine = make_engine(pg_url)
    schema.upgrade(engine)
    add_members(
        engine,
        [
            {"id": i, "email": f"m{i}@example.com", "email_consent": True, "phone": f"+7916{i:07d}", "sms_consent": True}
            for i in range(1, MEMBERS + 1)
        ],
    )

    # When 4 processes x 4 threads plan three overlapping occasions of each campaign, twice
    # each, while a thread per process sends 150 triggered marketing messages
    racers = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "race_planner.py"), str(config), str(seed), str(THREADS)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(PROCESSES)
    ]
    for racer in racers:
        _, errors = racer.communicate(timeout=600)
        assert racer.returncode == 0, errors

    with engine.connect() as conn:
        # Then no member holds two slots of one channel inside that channel's window
        assert conn.execute(VIOLATIONS).scalar_one() == 0
        # And the caps were not met by sending nothing: every member holds exactly one SMS
        # and one email slot (a triggered email took some of them), and every occasion
        # decided every member once
        per_member = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE channel = 'sms'), count(*) FILTER (WHERE channel = 'email') "
                "FROM deliveries WHERE holds_slot GROUP BY member_id"
            )
        ).all()
        assert len(per_member) == MEMBERS and set(per_member) == {(1, 1)}
        assert conn.execute(text("SELECT count(*) FROM deliveries WHERE run_id IS NOT NULL")).scalar_one() == 6 * MEMBERS
        triggered = conn.execute(text("SELECT status, count(*) FROM deliveries WHERE run_id IS NULL GROUP BY status")).all()
        assert sum(n for _, n in triggered) == PROCESSES * 150
        assert dict(triggered).get("queued", 0) > 0  # some triggered messages won the race for a slot
        assert conn.execute(text("SELECT count(*) FROM campaign_runs")).scalar_one() == 6
    engine.dispose()
