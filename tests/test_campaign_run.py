"""A real campaign through the memory broker to the outbox, on SQLite and on PostgreSQL."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime, timedelta, timezone
from email import policy

from helpers import add_expiration, add_member, cli, ledger, run_json
from sqlalchemy import delete, func, select

from campaigns.app import runtime
from campaigns.planning.planner import plan_chunks, plan_run
from campaigns.planning.segments import segment_query
from campaigns.store.models import deliveries, suppressions
from campaigns.store.runs import claim_run
from campaigns.tools import demo

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=3)))


def at(days: int) -> str:
    return (START + timedelta(days=days)).isoformat()


def test_rolling_caps_over_time(configured) -> None:
    # Given one member reachable only by email, one only by SMS, one only by Telegram,
    # and one by email and SMS (email comes first in the campaign's priority)
    application = configured()
    config = runtime.config_file()
    engine = application.engine
    add_member(engine, 1, email="one@example.com", email_consent=True)
    add_member(engine, 2, phone="+79160000002", sms_consent=True)
    add_member(engine, 3, telegram_chat_id=3003, telegram_consent=True)
    add_member(engine, 4, email="four@example.com", email_consent=True, phone="+79160000004", sms_consent=True)

    def statuses(days: int) -> dict[int, tuple[str | None, str]]:
        report = run_json(config, "balance_reminder", "--now", at(days))
        return {member: (channel, status) for member, (channel, status, _) in ledger(engine, report["run_id"]).items()}

    # When the balance reminder runs at +0 days, everybody gets it on their first channel
    assert statuses(0) == {1: ("email", "sent"), 2: ("sms", "sent"), 3: ("telegram", "sent"), 4: ("email", "sent")}
    # At +10 days: email (1 per 14 days) and SMS (1 per 30 days) are capped; Telegram (1
    # per 7 days) is not; member 4's capped email does not fall through to SMS
    assert statuses(10) == {1: ("email", "capped"), 2: ("sms", "capped"), 3: ("telegram", "sent"), 4: ("email", "capped")}
    # At +15 days email flows again, SMS does not, and Telegram's +10 was 5 days ago
    assert statuses(15) == {1: ("email", "sent"), 2: ("sms", "capped"), 3: ("telegram", "capped"), 4: ("email", "sent")}
    # At +31 days SMS flows again; the +15 email was 16 days ago, so email flows too
    assert statuses(31) == {1: ("email", "sent"), 2: ("sms", "sent"), 3: ("telegram", "sent"), 4: ("email", "sent")}

    # And a capped decision names the rule
    history = ledger(engine)
    with engine.connect() as conn:
        reasons = conn.execute(select(deliveries.c.reason).where(deliveries.c.status == "capped")).scalars().all()
    rules = ("cap email/marketing: 1 per 14d", "cap sms/marketing: 1 per 30d", "cap telegram/marketing: 1 per 7d")
    assert reasons and all(r.startswith(rules) for r in reasons)
    assert history  # every run left rows


def test_a_backfill_respects_caps_in_both_directions(configured) -> None:
    # Given an SMS sent at +20 days
    application = configured()
    config = runtime.config_file()
    add_member(application.engine, 2, phone="+79160000002", sms_consent=True)
    first = run_json(config, "balance_reminder", "--now", at(20))
    assert first["counts"] == {"sent": {"sms": 1}}
    # When an earlier occasion (+0) is backfilled, the later SMS is inside its window
    backfill = run_json(config, "balance_reminder", "--now", at(0))
    # Then the backfill is capped rather than giving the member two SMS within 30 days
    assert backfill["counts"] == {"capped": {"sms": 1}}


def test_demo_campaign_end_to_end(configured) -> None:
    # Given the demo members on the embedded default
    application = configured()
    config = runtime.config_file()
    engine, settings = application.engine, application.settings
    demo.seed(engine, 400)

    # When the balance reminder runs at noon in Moscow
    noon = "2026-11-23T12:00+03:00"
    report = run_json(config, "balance_reminder", "--now", noon)
    # Then members whose local time is inside quiet hours wait in the ledger
    waiting = report["counts"].get("queued", {})
    assert waiting and set(waiting) <= {"sms", "telegram"}
    # And the same occasion run again the next morning sends them
    report = run_json(config, "balance_reminder", "--now", "2026-11-24T12:00+03:00", "--occasion", report["occasion"])

    # Then every member of the segment has exactly one decision with a reason
    with engine.connect() as conn:
        segment = segment_query(settings.segments["has_balance"], as_of=datetime.fromisoformat(noon), default_locale="ru")
        expected = conn.execute(select(func.count()).select_from(segment.subquery())).scalar_one()
        rows = conn.execute(select(deliveries).where(deliveries.c.run_id == report["run_id"])).all()
    assert len(rows) == expected == report["total"]
    assert all(row.reason for row in rows)
    assert {row.status for row in rows} <= {"sent", "no_consent", "no_contact", "suppressed"}
    assert {"no_consent", "no_contact", "suppressed"} <= set(report["counts"])
    # And messages went out on at least two channels, one outbox file per sent message
    sent = report["counts"]["sent"]
    assert len(sent) >= 2
    outbox = settings.outbox_path
    files = sorted(p for p in outbox.rglob("*") if p.is_file())
    assert len(files) == sum(sent.values())
    assert {p.parent.name: 0 for p in files}.keys() == sent.keys()

    # And an email is a real MIME message addressed to the member, with list headers
    one = email.message_from_bytes(next((outbox / "email").iterdir()).read_bytes(), policy=policy.default)
    assert one["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert one.get_body(("plain",)).get_content().startswith(("Здравствуйте", "Hello"))
    sms = json.loads(next((outbox / "sms").iterdir()).read_text())
    assert sms["to"].startswith("+") and ("балл" in sms["text"] or "point" in sms["text"])

    # When the same occasion runs again, nothing new is decided or sent
    again = run_json(config, "balance_reminder", "--now", noon)
    assert again["run_id"] == report["run_id"] and again["counts"] == report["counts"]
    assert len([p for p in outbox.rglob("*") if p.is_file()]) == len(files)


def test_one_bad_address_does_not_stop_the_batch(configured) -> None:
    # Given three email members, the middle one with an address that cannot work
    application = configured()
    config = runtime.config_file()
    for member_id, address in ((1, "a@example.com"), (2, "broken-address"), (3, "c@example.com")):
        add_member(application.engine, member_id, email=address, email_consent=True)
    # When the campaign runs
    report = run_json(config, "balance_reminder")
    # Then the others are sent, the bad one failed with the reason and is suppressed
    rows = ledger(application.engine, report["run_id"])
    assert rows[1][1] == rows[3][1] == "sent"
    assert rows[2][1] == "failed" and "not an email address" in rows[2][2]
    with application.engine.connect() as conn:
        assert conn.execute(select(suppressions.c.address)).scalars().all() == ["broken-address"]


def test_report_and_why(configured) -> None:
    application = configured()
    config = runtime.config_file()
    add_member(application.engine, 1, email="one@example.com", email_consent=True)
    add_member(application.engine, 2)  # no contact at all
    run_json(config, "balance_reminder", "--now", at(0))
    report = json.loads(cli(config, "report", "--json").stdout)
    assert report["campaign"] == "balance_reminder"
    assert report["counts"] == {"sent": {"email": 1}, "no_contact": {"-": 1}}
    why = json.loads(cli(config, "why", "2", "--json").stdout)
    assert [(d["campaign"], d["status"], d["reason"]) for d in why["deliveries"]] == [
        ("balance_reminder", "no_contact", "telegram: no contact; email: no contact; sms: no contact")
    ]
    assert "no contact" in cli(config, "why", "2").stdout


def test_a_reminder_no_longer_true_at_send_time_is_stale(configured) -> None:
    # Given two members with points expiring, planned for the expiring-points campaign
    from sqlalchemy import update

    from campaigns.planning.batches import queued_batches
    from campaigns.store.models import balances, point_expirations
    from campaigns.store.runs import claim_run

    application = configured(
        {
            "quiet_hours": {"default": "off", "telegram": "off"},
            "segments": {"expiring_soon": {"expiring_within_days": 30, "min_expiring_points": 50}},
            "campaigns": {"expiring": {"segment": "expiring_soon", "template": "balance_reminder", "channels": ["email"]}},
        }
    )
    engine = application.engine
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    for member_id in (1, 2):
        add_member(engine, member_id, points=400, email=f"m{member_id}@example.com", email_consent=True)
        add_expiration(engine, member_id, 300, now + timedelta(days=5))
    run = claim_run(engine, application.settings, "expiring", as_of=now)
    plan_run(engine, application.settings, run.id)
    # When member 2 spends the expiring points between planning and delivery
    with engine.begin() as conn:
        conn.execute(update(point_expirations).where(point_expirations.c.member_id == 2).values(points=20))
        conn.execute(update(balances).where(balances.c.member_id == 2).values(points=120))
    for _, ids in queued_batches(engine, run.id, 100):
        application.deliverer.deliver(ids)
    # Then member 1 gets the reminder and member 2 gets nothing, recorded as stale
    rows = ledger(engine, run.id)
    assert rows[1][1] == "sent"
    assert rows[2][1] == "stale"
    assert rows[2][2] == "20 points now expire within 30 days (the segment needs 50)"
    with engine.connect() as conn:
        held = conn.execute(select(deliveries.c.holds_slot).where(deliveries.c.member_id == 2)).scalar_one()
    assert held is False


def test_suppressions_by_hand(configured) -> None:
    # Given a member who complained about SMS
    application = configured({"quiet_hours": {"default": "off", "telegram": "off"}})
    config = runtime.config_file()
    add_member(application.engine, 1, phone="+79160000001", sms_consent=True)
    cli(config, "suppressions", "add", "sms", "+79160000001", "--reason", "complaint by phone")
    listed = json.loads(cli(config, "suppressions", "list", "--json").stdout)
    assert [(s["channel"], s["address"], s["reason"]) for s in listed] == [("sms", "+79160000001", "complaint by phone")]
    # Then campaigns skip the address, until it is removed
    assert run_json(config, "balance_reminder", "--now", at(0))["counts"] == {"suppressed": {"-": 1}}
    cli(config, "suppressions", "remove", "sms", "+79160000001")
    assert run_json(config, "balance_reminder", "--now", at(1))["counts"] == {"sent": {"sms": 1}}


def test_chunks_planned_on_two_connections_decide_like_one(configured) -> None:
    # Given 1,200 demo members planned in chunks of 100, two chunks at a time
    application = configured({"delivery": {"plan_chunk_size": 100, "plan_connections": 2}})
    engine = application.engine
    demo.seed(engine, 1200, now=START)
    heard: list[int] = []

    def plan(occasion: str, connections: int) -> tuple[int, dict[int, tuple[str | None, str, str]]]:
        settings = application.settings
        settings = settings.model_copy(
            update={"delivery": settings.delivery.model_copy(update={"plan_connections": connections})}
        )
        run = claim_run(engine, settings, "balance_reminder", as_of=START, occasion=occasion)
        chunks = [sum(chunk.counts.values()) for chunk in plan_chunks(engine, settings, run.id)]
        heard.extend(chunks)
        decided = sum(chunks)
        return decided, ledger(engine, run.id)

    # When the occasion is planned that way, and planned again from scratch one chunk at a time
    decided, parallel = plan("two-connections", 2)
    with engine.begin() as conn:
        conn.execute(delete(deliveries))
    decided_serially, serial = plan("one-connection", 1)

    # Then both decide the same for every segment member, and every chunk was reported
    with engine.connect() as conn:
        segment_size = conn.execute(
            select(func.count()).select_from(
                segment_query(application.settings.segments["has_balance"], as_of=START, default_locale="ru").subquery()
            )
        ).scalar_one()
    assert decided == decided_serially == len(parallel) == segment_size > 1000
    assert parallel == serial
    assert sum(heard) == 2 * segment_size and len(heard) >= 2 * 12


def test_each_chunk_is_enqueued_as_soon_as_it_is_planned(configured) -> None:
    # Given 1,200 demo members planned in chunks of 100, batches of up to 500
    from campaigns.app import actors

    application = configured(
        {"quiet_hours": {"default": "off", "telegram": "off"}, "delivery": {"plan_chunk_size": 100, "batch_size": 500}}
    )
    engine = application.engine
    demo.seed(engine, 1200, now=START)
    broker = actors.use_broker(runtime.build_broker(application.settings))
    run = claim_run(engine, application.settings, "balance_reminder", as_of=START)

    # When the plan actor runs
    actors.plan_campaign.fn(run.id, START.isoformat())

    # Then every queued delivery is in exactly one batch, no batch spans two chunks
    # (each chunk's batches were sent when that chunk was committed), and the batches
    # come in member order
    batches = [message.args[0] for message in _messages(broker, "batches")]
    with engine.connect() as conn:
        queued = dict(
            conn.execute(
                select(deliveries.c.id, deliveries.c.member_id).where(
                    deliveries.c.run_id == run.id, deliveries.c.status == "queued"
                )
            ).all()
        )
    assert sorted(i for batch in batches for i in batch) == sorted(queued)
    chunks_of = [{(queued[i] - 1) // 100 for i in batch} for batch in batches]
    assert all(len(chunks) == 1 for chunks in chunks_of)
    assert len(batches) >= 12 > 1200 // 500
    assert [min(c) for c in chunks_of] == sorted(min(c) for c in chunks_of)


def _messages(broker, queue_name: str) -> list:
    """The messages waiting on a StubBroker queue, in order (``dramatiq.Message``)."""
    from dramatiq import Message

    queue = broker.queues[queue_name]
    return [Message.decode(data) for data in list(queue.queue)]
