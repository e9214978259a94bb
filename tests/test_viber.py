"""Viber Business Messages through Infobip: a campaign delivering on Viber by the members'
phone numbers and consent, and Infobip's delivery reports back through the web service."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import add_member, cli, eventually
from sqlalchemy import select

from campaigns.store.models import deliveries, suppressions
from channels.fakes import FakeInfobip

NOON = "2026-11-24T12:00+03:00"
SECRET = "v" * 24


@pytest.fixture
def infobip() -> Iterator[FakeInfobip]:
    server = FakeInfobip(api_key="ib-key").start()
    yield server
    server.stop()


def _rows(application: Any) -> dict[int, Any]:
    with application.engine.connect() as conn:
        return {row.member_id: row for row in conn.execute(select(deliveries).order_by(deliveries.c.member_id))}


def viber_settings(infobip: FakeInfobip, base: str, web_port: int, monkeypatch: Any, channels: list[str]) -> dict[str, Any]:
    """Settings sending the balance reminder on ``channels`` with Viber through the fake,
    its reports to the web service at ``base`` behind the URL secret."""
    monkeypatch.setenv("LC_IB_KEY", "ib-key")
    monkeypatch.setenv("LC_IB_CALLBACK", SECRET)
    viber = {
        "transport": "infobip",
        "base_url": infobip.url,
        "api_key_env": "LC_IB_KEY",
        "sender": "Romashka",
        "status_callback": f"{base}/webhooks/viber",
        "callback_secret_env": "LC_IB_CALLBACK",
    }
    return {
        "web": {"port": web_port, "public_url": base},
        "channels": {"viber": viber},
        "quiet_hours": {"default": "off", "telegram": "off"},
        "campaigns": {"balance_reminder": {"channels": channels}},
    }


def test_a_campaign_on_viber_and_its_delivery_reports(configured, infobip, web_port, web_server, monkeypatch) -> None:
    # Given members with a phone: three consent to Viber, one only to SMS
    base = f"http://127.0.0.1:{web_port}"
    application = configured(viber_settings(infobip, base, web_port, monkeypatch, ["viber", "sms"]))
    for member_id in (1, 2, 3):
        add_member(application.engine, member_id, phone=f"+7916123450{member_id}", viber_consent=True, sms_consent=True)
    add_member(application.engine, 4, phone="+79161234504", sms_consent=True)

    # When the balance reminder runs
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)

    # Then the Viber members got it on Viber, marked promotional, with their balance and an unsubscribe link
    rows = _rows(application)
    assert {m: (row.channel, row.status) for m, row in rows.items()} == {
        1: ("viber", "sent"),
        2: ("viber", "sent"),
        3: ("viber", "sent"),
        4: ("sms", "sent"),
    }
    sent = {message["to"]: message for message in infobip.messages}
    assert set(sent) == {"79161234501", "79161234502", "79161234503"}
    first = sent["79161234501"]
    assert first["label"] == "PROMOTION" and first["type"] == "TEXT" and first["sender"] == "Romashka"
    assert "500 баллов" in first["text"] and f"{base}/u/" in first["text"]
    assert first["reference"] == str(rows[1].id) and rows[1].provider_message_id == first["id"]
    assert first["callback"] == f"{base}/webhooks/viber?secret={SECRET}"

    # When Infobip reports the messages delivered (and repeats itself)
    web_server(application.settings)
    assert infobip.send_reports("delivered") == [200, 200, 200]
    assert infobip.send_reports("delivered") == [200, 200, 200]
    statuses = lambda: {m: row.status for m, row in _rows(application).items()}  # noqa: E731
    want = {1: "delivered", 2: "delivered", 3: "delivered", 4: "sent"}
    assert eventually(statuses, want) == want

    # And a report without the URL's secret is refused
    forged = httpx.post(
        f"{base}/webhooks/viber", json={"results": [{"messageId": first["id"], "status": {"groupName": "EXPIRED"}}]}
    )
    assert forged.status_code == 403 and forged.json()["field"] == "query.secret"
    malformed = httpx.post(f"{base}/webhooks/viber?secret={SECRET}", json={"results": [{"messageId": "x", "status": {}}]})
    assert malformed.status_code == 400 and malformed.json()["field"] == "body.results[0].status"
    assert statuses() == want


def test_not_a_viber_user_fails_without_suppressing_the_number(configured, infobip, web_port, web_server, monkeypatch) -> None:
    # Given a member sent a Viber message
    base = f"http://127.0.0.1:{web_port}"
    application = configured(viber_settings(infobip, base, web_port, monkeypatch, ["viber"]))
    add_member(application.engine, 1, phone="+79161234501", viber_consent=True)
    add_member(application.engine, 2, phone="+79161234502", viber_consent=True)
    infobip.faults.rejected.add("79161234502")  # Infobip refuses this destination outright
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    web_server(application.settings)

    # When Infobip reports the first undeliverable: the number has no Viber
    assert infobip.send_reports("not_viber_user") == [200]

    # Then that row failed with Infobip's reason, and the number is not suppressed (it still takes SMS)
    assert eventually(lambda: _rows(application)[1].status, "failed") == "failed"
    rows = _rows(application)
    assert "UNDELIVERABLE" in rows[1].reason and "EC_NOT_VIBER_USER" in rows[1].reason
    # While the refused destination failed at once as an invalid recipient, and that one is suppressed
    assert (rows[2].status, rows[2].reason_code) == ("failed", "invalid_recipient")
    with application.engine.connect() as conn:
        assert [row.address for row in conn.execute(select(suppressions.c.address))] == ["+79161234502"]
    assert "UNDELIVERABLE" in cli(application.settings.source, "why", str(rows[1].id)).stdout
