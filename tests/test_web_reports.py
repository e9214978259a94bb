"""What providers report back: Twilio status callbacks, the JSON gateway's delivery
reports, email bounces by webhook and from a bounce mailbox (RFC 3464), applied to the
ledger once, in any order."""

from __future__ import annotations

import json
import mailbox
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from helpers import add_member, cli, eventually, fake_channels, fake_providers, run_json
from sqlalchemy import func, select, update

from campaigns.store import events
from campaigns.store.models import deliveries, provider_events, suppressions
from channels.base import DeliveryEvent, EventKind
from channels.fakes import Faults
from channels.sms import twilio_signature
from channels.webhooks import signature

NOON = "2026-11-24T12:00+03:00"
REPORT_KEY = "r" * 32


@pytest.fixture
def providers() -> Iterator[dict[str, Any]]:
    yield from fake_providers(Faults(seed=3))


def test_twilio_signature_matches_twilios_published_example() -> None:
    form = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ]
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, form) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12345", url, list(reversed(form))) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def _sms_members(application: Any, count: int = 3) -> None:
    for member_id in range(1, count + 1):
        add_member(application.engine, member_id, phone=f"+7916123450{member_id}", sms_consent=True)


def _sms_rows(application: Any) -> list[Any]:
    with application.engine.connect() as conn:
        return list(conn.execute(select(deliveries).where(deliveries.c.channel == "sms").order_by(deliveries.c.id)))


def _event_count(application: Any) -> int:
    with application.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(provider_events)).scalar_one())


def test_twilio_status_callbacks_move_rows_to_delivered_once_and_forged_ones_are_refused(
    configured, providers, web_port, web_server, monkeypatch
) -> None:
    # Given SMS sent through Twilio's API with a status callback to loyalcast web
    monkeypatch.setenv("LC_TW_SID", "AC" + "1" * 32)
    monkeypatch.setenv("LC_TW_TOKEN", "twilio-auth-token")
    base = f"http://127.0.0.1:{web_port}"
    sms = {
        "transport": "http_sms",
        "style": "twilio",
        "base_url": providers["sms"].url,
        "account_sid_env": "LC_TW_SID",
        "auth_token_env": "LC_TW_TOKEN",
        "sender": "+15005550006",
        "status_callback": f"{base}/webhooks/sms",
    }
    application = configured(
        {
            "web": {"port": web_port, "public_url": base},
            "channels": {"sms": sms},
            "quiet_hours": {"default": "off", "telegram": "off"},
            "campaigns": {"balance_reminder": {"channels": ["sms"]}},
        }
    )
    _sms_members(application)
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    assert [row.status for row in _sms_rows(application)] == ["sent"] * 3
    web_server(application.settings)

    # When Twilio reports them delivered (and retries every callback once)
    assert providers["sms"].send_reports("delivered") == [200] * 3
    assert providers["sms"].send_reports("delivered") == [200] * 3

    # Then every row is delivered, and each event is kept once
    statuses = lambda: [row.status for row in _sms_rows(application)]  # noqa: E731
    assert eventually(statuses, ["delivered"] * 3) == ["delivered"] * 3
    assert _event_count(application) == 3

    # And a callback with a wrong signature is refused and changes nothing
    form = {"MessageSid": _sms_rows(application)[0].provider_message_id, "MessageStatus": "undelivered"}
    forged = httpx.post(f"{base}/webhooks/sms", data=form, headers={"X-Twilio-Signature": "bm9wZQ=="})
    assert forged.status_code == 403 and forged.json()["field"] == "header X-Twilio-Signature"
    unsigned = httpx.post(f"{base}/webhooks/sms", data=form)
    assert unsigned.status_code == 403
    assert [row.status for row in _sms_rows(application)] == ["delivered"] * 3

    # And an "undelivered" for an unknown number later fails the row and suppresses the number
    assert providers["sms"].send_reports("undelivered", error_code="30005") == [200] * 3
    assert eventually(statuses, ["failed"] * 3) == ["failed"] * 3
    rows = _sms_rows(application)
    assert [(row.status, row.reason_code) for row in rows] == [("failed", "bounced")] * 3
    assert "error 30005" in rows[0].reason
    with application.engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(suppressions).where(suppressions.c.channel == "sms")).scalar_one() == 3
        )
    why = cli(application.settings.source, "why", "1").stdout
    assert "delivered" in why and "bounced" in why


def test_json_gateway_reports_signed_with_hmac(configured, providers, web_port, web_server, monkeypatch) -> None:
    # Given SMS sent through the generic JSON gateway, whose reports are signed with a key
    monkeypatch.setenv("LC_SMS_REPORT_KEY", REPORT_KEY)
    base = f"http://127.0.0.1:{web_port}"
    channels = fake_channels(providers, sms={"report_secret_env": "LC_SMS_REPORT_KEY"})
    application = configured(
        {
            "web": {"port": web_port, "public_url": base},
            "channels": {"sms": channels["sms"]},
            "quiet_hours": {"default": "off", "telegram": "off"},
            "campaigns": {"balance_reminder": {"channels": ["sms"]}},
        }
    )
    _sms_members(application, 2)
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    web_server(application.settings)
    providers["sms"].report_url, providers["sms"].report_key = f"{base}/webhooks/sms", REPORT_KEY

    # When the gateway reports the first delivered and the second failed
    first, second = _sms_rows(application)
    assert providers["sms"].send_reports("delivered") == [200, 200]
    body = json.dumps({"id": second.provider_message_id, "status": "undelivered", "error": "absent subscriber"}).encode()
    answer = httpx.post(
        f"{base}/webhooks/sms",
        content=body,
        headers={"Content-Type": "application/json", "X-Signature": signature(REPORT_KEY.encode(), body)},
    )
    assert answer.status_code == 200

    # Then the rows say so (a failure after delivered wins: status only moves forward)
    assert eventually(lambda: [row.status for row in _sms_rows(application)], ["delivered", "failed"]) == ["delivered", "failed"]
    rows = _sms_rows(application)
    assert rows[0].status == "delivered"
    assert (rows[1].status, rows[1].reason_code) == ("failed", "undelivered") and "absent subscriber" in rows[1].reason

    # And a report signed with another key, or not JSON, is refused naming the field
    bad = httpx.post(f"{base}/webhooks/sms", content=body, headers={"X-Signature": signature(b"x" * 32, body)})
    assert bad.status_code == 403 and bad.json()["field"] == "header X-Signature"
    junk = b"not json"
    broken = httpx.post(f"{base}/webhooks/sms", content=junk, headers={"X-Signature": signature(REPORT_KEY.encode(), junk)})
    assert broken.status_code == 400 and broken.json()["field"] == "body"
    unknown = json.dumps({"id": "x", "status": "teleported"}).encode()
    answer = httpx.post(f"{base}/webhooks/sms", content=unknown, headers={"X-Signature": signature(REPORT_KEY.encode(), unknown)})
    assert answer.status_code == 400 and answer.json()["field"] == "body.status"


def _email_application(configured, providers, web_port, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LC_MAIL_HOOK_KEY", REPORT_KEY)
    base = f"http://127.0.0.1:{web_port}"
    channels = fake_channels(providers, email={"webhook_secret_env": "LC_MAIL_HOOK_KEY"})
    application = configured(
        {
            "web": {"port": web_port, "public_url": base},
            "channels": {"email": channels["email"]},
            "campaigns": {"balance_reminder": {"channels": ["email"]}},
        }
    )
    add_member(application.engine, 1, email="anna@example.com", email_consent=True)
    add_member(application.engine, 2, email="boris@example.com", email_consent=True)
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    with application.engine.connect() as conn:
        rows = {r.address: r for r in conn.execute(select(deliveries).where(deliveries.c.channel == "email"))}
    assert {r.status for r in rows.values()} == {"sent"}
    return application, base, rows


def test_email_bounce_and_complaint_webhook_suppress_the_address(
    configured, providers, web_port, web_server, monkeypatch
) -> None:
    # Given two sent emails
    application, base, rows = _email_application(configured, providers, web_port, monkeypatch)
    web_server(application.settings)

    # When the relay posts a hard bounce for one and a complaint for the other (ids without brackets)
    body = json.dumps(
        {
            "events": [
                {
                    "id": "e1",
                    "event": "bounced",
                    "message_id": rows["anna@example.com"].provider_message_id.strip("<>"),
                    "recipient": "anna@example.com",
                    "reason": "550 5.1.1 no such user",
                },
                {"id": "e2", "event": "complained", "message_id": rows["boris@example.com"].provider_message_id},
            ]
        }
    ).encode()
    headers = {"Content-Type": "application/json", "X-Loyalcast-Signature": signature(REPORT_KEY.encode(), body)}
    assert httpx.post(f"{base}/webhooks/email", content=body, headers=headers).json() == {"received": 2, "new": 2}
    assert httpx.post(f"{base}/webhooks/email", content=body, headers=headers).json() == {"received": 2, "new": 0}

    # Then the bounce fails its row and both addresses are suppressed
    def statuses() -> dict[str, tuple[str, str]]:
        with application.engine.connect() as conn:
            return {r.address: (r.status, r.reason_code) for r in conn.execute(select(deliveries))}

    wanted = {"anna@example.com": ("failed", "bounced"), "boris@example.com": ("delivered", "eligible")}
    assert eventually(statuses, wanted) == wanted
    with application.engine.connect() as conn:
        suppressed = {r.address: r.reason for r in conn.execute(select(suppressions))}
    assert set(suppressed) == {"anna@example.com", "boris@example.com"}
    assert suppressed["anna@example.com"].startswith("bounced: 550 5.1.1")

    # And the next campaign does not write to them
    report = run_json(application.settings.source, "balance_reminder", "--now", NOON, "--occasion", "again")
    assert report["counts"] == {"suppressed": {"-": 2}}


def _dsn(message_id: str, recipient: str, action: str, status: str) -> bytes:
    """A delivery status notification as Postfix writes one (RFC 3464)."""
    return f"""From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: bounces@example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-{recipient}-{action}@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net. Your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Tue, 24 Nov 2026 12:00:01 +0300

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address
    rejected: User unknown

--B
Content-Type: text/rfc822-headers

Message-ID: {message_id}
From: bonus@example.com
To: {recipient}
Subject: balance

--B--
""".replace("\n", "\r\n").encode()


def test_dsn_from_a_maildir_fails_the_row_and_suppresses_once(configured, providers, web_port, monkeypatch, tmp_path) -> None:
    # Given two sent emails and a bounce mailbox with a hard bounce, a delay and a stray mail
    application, _, rows = _email_application(configured, providers, web_port, monkeypatch)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(_dsn(rows["anna@example.com"].provider_message_id, "anna@example.com", "failed", "5.1.1"))
    box.add(_dsn(rows["boris@example.com"].provider_message_id, "boris@example.com", "delayed", "4.4.1"))
    box.add(b"From: someone@example.net\nSubject: out of office\n\nI am away.\n")

    # When the bounce mailbox is read, twice
    first = cli(application.settings.source, "bounces", "read", "--maildir", str(tmp_path / "bounces")).stdout
    second = cli(application.settings.source, "bounces", "read", "--maildir", str(tmp_path / "bounces")).stdout

    # Then the hard bounce failed its row and suppressed the address; the delay changed nothing
    assert "3 mails read: 2 new events recorded, 1 not delivery status notifications" in first
    assert "0 mails read" in second
    with application.engine.connect() as conn:
        status = {r.address: (r.status, r.reason_code) for r in conn.execute(select(deliveries))}
        suppressed = [r.address for r in conn.execute(select(suppressions))]
    assert status == {"anna@example.com": ("failed", "bounced"), "boris@example.com": ("sent", "eligible")}
    assert suppressed == ["anna@example.com"]


def test_events_end_the_same_in_any_order_and_early_ones_wait_for_their_row(configured) -> None:
    application = configured()
    add_member(application.engine, 1, phone="+79161234501", sms_consent=True)
    now = datetime.now(UTC)
    with application.engine.begin() as conn:
        ids = []
        for n in range(2):
            ids.append(
                conn.execute(
                    deliveries.insert().values(
                        run_id=None,
                        member_id=1,
                        channel="sms",
                        category="marketing",
                        template="t",
                        status="sent",
                        reason="eligible on sms",
                        reason_code="eligible",
                        address="+79161234501",
                        holds_slot=True,
                        send_at=now,
                        created_at=now,
                        updated_at=now,
                        provider_message_id=f"m{n}",
                        attempts=1,
                    )
                ).inserted_primary_key[0]
            )
    delivered = DeliveryEvent("d", EventKind.DELIVERED, "m0")
    failed = DeliveryEvent("f", EventKind.FAILED, "m0", reason="expired")

    # Given the same two events in both orders, on two rows
    with application.engine.begin() as conn:
        events.record(conn, "sms", [delivered, failed], now)
        events.record(conn, "sms", [DeliveryEvent("f1", EventKind.FAILED, "m1", reason="expired")], now)
        events.record(conn, "sms", [DeliveryEvent("d1", EventKind.DELIVERED, "m1")], now)
    with application.engine.connect() as conn:
        final = [conn.execute(select(deliveries.c.status).where(deliveries.c.id == i)).scalar_one() for i in ids]
    # Then both rows end failed
    assert final == ["failed", "failed"]

    # Given a report that arrives before the worker recorded the message as sent
    with application.engine.begin() as conn:
        early = events.record(conn, "sms", [DeliveryEvent("early", EventKind.DELIVERED, "m-late")], now)
        conn.execute(update(deliveries).where(deliveries.c.id == ids[0]).values(status="sent", provider_message_id="m-late"))
    assert (early.new, early.applied) == (1, 0)
    # When the reconciler's pass applies unmatched events (a minute on: younger ones are the web's)
    with application.engine.begin() as conn:
        assert events.apply_unmatched(conn, now) == 0
        matched = events.apply_unmatched(conn, now + timedelta(minutes=2))
    # Then it matches now
    assert matched == 1
    with application.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.status).where(deliveries.c.id == ids[0])).scalar_one() == "delivered"

    # And events past the retention are pruned
    with application.engine.begin() as conn:
        assert events.prune(conn, now + timedelta(seconds=1)) == 5
