"""A campaign's cascade after the fact: Viber not delivered within the window, or reported
failed, falls back to one SMS, with SMS's consent, caps and quiet hours; delivered in
time, nothing more."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from helpers import add_member, cli, eventually
from sqlalchemy import insert, select

from campaigns.app import actors, runtime
from campaigns.app.reconciler import Reconciler
from campaigns.store import partitions
from campaigns.store.models import deliveries
from channels.fakes import FakeInfobip, FakeSmsGateway

SECRET = "c" * 24
MOSCOW = ZoneInfo("Europe/Moscow")


@pytest.fixture
def fakes() -> Iterator[tuple[FakeInfobip, FakeSmsGateway]]:
    viber, sms = FakeInfobip().start(), FakeSmsGateway().start()
    yield viber, sms
    viber.stop()
    sms.stop()


def _rows(application: Any) -> list[Any]:
    with application.engine.connect() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.id)))


def _reconcile(application: Any, now: datetime) -> Any:
    broker = actors.use_broker(runtime.build_broker(application.settings))
    result = Reconciler(application, broker).run_once(now)
    runtime.drain_in_process(broker, threads=2)
    return result


def _report(base: str, message_id: str, group: str, name: str) -> None:
    result = {"messageId": message_id, "status": {"groupName": group, "name": name}, "error": {"name": "EC_NOT_VIBER_USER"}}
    answer = httpx.post(f"{base}/webhooks/viber?secret={SECRET}", json={"results": [result]})
    assert answer.status_code == 200, answer.text


def test_viber_not_delivered_falls_back_to_one_sms(configured, fakes, web_port, web_server, monkeypatch) -> None:
    viber, sms = fakes
    monkeypatch.setenv("LC_IB_KEY", "ib-key")
    monkeypatch.setenv("LC_IB_CALLBACK", SECRET)
    base = f"http://127.0.0.1:{web_port}"
    now = datetime.now(UTC)
    late = now + timedelta(hours=3, minutes=1)
    # SMS's quiet hours are around the moment the window closes, so a late fallback waits for morning
    local = late.astimezone(MOSCOW)
    quiet = f"{local - timedelta(hours=1):%H:%M}-{local + timedelta(hours=2):%H:%M}"
    application = configured(
        {
            "web": {"port": web_port, "public_url": base},
            "channels": {
                "viber": {
                    "transport": "infobip",
                    "base_url": viber.url,
                    "api_key_env": "LC_IB_KEY",
                    "sender": "Romashka",
                    "status_callback": f"{base}/webhooks/viber",
                    "callback_secret_env": "LC_IB_CALLBACK",
                },
                "sms": {"transport": "http_sms", "url": f"{sms.url}/send", "sender": "ROMASHKA"},
            },
            "quiet_hours": {"default": "off", "telegram": "off", "viber": "off", "sms": quiet},
            "campaigns": {
                "balance_reminder": {"channels": ["viber", "sms"], "fallback": {"on": "viber", "to": "sms", "after": "3h"}}
            },
        }
    )
    # Given five members on Viber: 1 will read it, 2 never reports, 3 has no Viber,
    # 4 had a marketing SMS ten days ago (the 30-day SMS cap is full), 5 gave no SMS consent
    for member_id in range(1, 6):
        add_member(application.engine, member_id, phone=f"+7916123450{member_id}", viber_consent=True, sms_consent=member_id != 5)
    earlier = now - timedelta(days=10)
    partitions.ensure_for(application.engine, earlier)  # the ledger's month of that decision
    with application.engine.begin() as conn:
        conn.execute(
            insert(deliveries).values(
                member_id=4,
                channel="sms",
                category="marketing",
                template="balance_reminder",
                status="sent",
                reason="an earlier campaign",
                reason_code="eligible",
                address="+79161234504",
                holds_slot=True,
                send_at=earlier,
                sent_at=earlier,
                created_at=earlier,
                updated_at=earlier,
            )
        )
    cli(application.settings.source, "run", "balance_reminder")
    first = {row.member_id: row for row in _rows(application) if row.channel == "viber"}
    assert {m: row.status for m, row in first.items()} == dict.fromkeys(range(1, 6), "sent")

    # When Infobip reports member 1's delivered and member 3's undeliverable
    web_server(application.settings)
    _report(base, first[1].provider_message_id, "DELIVERED", "DELIVERED_TO_HANDSET")
    _report(base, first[3].provider_message_id, "UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED")
    reported = lambda: [r.status for r in _rows(application) if r.member_id in (1, 3) and r.channel == "viber"]  # noqa: E731
    assert eventually(reported, ["delivered", "failed"]) == ["delivered", "failed"]

    # And the reconciler passes a minute later
    soon = _reconcile(application, now + timedelta(minutes=1))

    # Then only the failed one fell back, at once, as one SMS
    assert soon.fallbacks == 1
    fallback = {row.member_id: row for row in _rows(application) if row.idempotency_key}
    assert set(fallback) == {3}
    assert (fallback[3].channel, fallback[3].status) == ("sms", "sent")
    assert fallback[3].reason.startswith(f"fallback for delivery {first[3].id} (viber not delivered within 3h: failed")
    assert [message["to"] for message in sms.messages] == ["+79161234503"]

    # When the window closes with no report for the others
    closed = _reconcile(application, late)

    # Then each undelivered one falls back once, through SMS's rules, and the delivered one does not
    assert closed.fallbacks == 3
    fallback = {row.member_id: row for row in _rows(application) if row.idempotency_key}
    assert set(fallback) == {2, 3, 4, 5}
    assert fallback[2].status == "queued" and fallback[2].reason_code == "eligible"
    assert fallback[2].send_at.astimezone(MOSCOW).strftime("%H:%M") == (local + timedelta(hours=2)).strftime("%H:%M")
    assert "no delivery report" in fallback[2].reason  # and it waits for the end of SMS's quiet hours (above)
    assert (fallback[4].status, fallback[4].reason_code) == ("capped", "capped")
    assert (fallback[5].status, fallback[5].reason_code) == ("no_consent", "no_consent")
    assert 1 not in fallback

    # And another pass adds nothing: at most one fallback per decision
    assert _reconcile(application, late + timedelta(minutes=5)).fallbacks == 0
    assert sum(1 for row in _rows(application) if row.idempotency_key) == 4

    # And `why` tells the chain
    why = cli(application.settings.source, "why", "2").stdout
    assert f"fell back to sms: delivery {fallback[2].id}" in why and f"fallback for delivery {first[2].id}" in why


def test_fallback_settings_are_checked(write_settings) -> None:
    from campaigns.config.loading import load_settings
    from campaigns.errors import ConfigError

    def problems(changes: dict[str, Any]) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load_settings(write_settings(changes))
        return list(caught.value.problems)

    # A fallback from a channel the campaign does not use, to itself
    rule = {"on": "viber", "to": "viber", "after": "3h"}
    assert problems({"campaigns": {"balance_reminder": {"channels": ["email", "sms"], "fallback": rule}}}) == [
        "campaigns.balance_reminder.fallback.on: 'viber' is not one of the campaign's channels (email, sms)",
        "campaigns.balance_reminder.fallback.to: falls back to the channel it falls back from",
    ]
    # To a channel the template has no text for
    rule = {"on": "email", "to": "viber", "after": "3h"}
    assert problems({"campaigns": {"win_back": {"fallback": rule}}}) == [
        "campaigns.win_back.fallback.to: template 'win_back' has no viber.txt for channel 'viber'"
    ]
    # After no time at all
    rule = {"on": "email", "to": "sms", "after": "0h"}
    assert problems({"campaigns": {"win_back": {"fallback": rule}}}) == [
        "campaigns.win_back.fallback.after: duration must be longer than zero"
    ]
