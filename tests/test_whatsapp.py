"""WhatsApp through the Business Cloud API: approved templates outside the member's 24-hour
window and free text inside it, Meta's signed webhooks (statuses, members' messages, the
subscription check), and every refusal mapped onto the error tree."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO
from helpers import add_member, cli, eventually
from sqlalchemy import select

from campaigns.store import conversations as conversation_store
from campaigns.store.models import conversations, deliveries, preferences, suppressions
from channels import build_transport
from channels.base import ApprovedTemplate, OutgoingMessage
from channels.errors import AccountProblem, InvalidRecipient, MessageRejected, RateLimited
from channels.fakes import FakeWhatsApp

NOON = "2026-11-24T12:00+03:00"
APP_SECRET = "meta-app-secret"
VERIFY = "verify-me-please"
APPROVED = {("balance_reminder", "ru"): 3, ("balance_reminder", "en"): 3}


@pytest.fixture
def meta() -> Iterator[FakeWhatsApp]:
    server = FakeWhatsApp(access_token="wa-token", templates=APPROVED, app_secret=APP_SECRET).start()
    yield server
    server.stop()


def whatsapp_settings(meta: FakeWhatsApp, base: str, web_port: int, monkeypatch: Any, channels: list[str]) -> dict[str, Any]:
    """Settings sending the balance reminder on ``channels``, WhatsApp through the fake,
    its webhooks to the web service at ``base``."""
    monkeypatch.setenv("LC_WA_TOKEN", "wa-token")
    monkeypatch.setenv("LC_WA_SECRET", APP_SECRET)
    monkeypatch.setenv("LC_WA_VERIFY", VERIFY)
    meta.webhook = f"{base}/webhooks/whatsapp"
    whatsapp = {
        "transport": "whatsapp_cloud",
        "base_url": f"{meta.url}/v21.0",
        "phone_number_id": "1000000001",
        "access_token_env": "LC_WA_TOKEN",
        "app_secret_env": "LC_WA_SECRET",
        "verify_token_env": "LC_WA_VERIFY",
    }
    return {
        "web": {"port": web_port, "public_url": base},
        "channels": {"whatsapp": whatsapp},
        "quiet_hours": {"default": "off", "telegram": "off"},
        "campaigns": {"balance_reminder": {"channels": channels}},
    }


def _rows(application: Any) -> dict[int, Any]:
    with application.engine.connect() as conn:
        return {row.member_id: row for row in conn.execute(select(deliveries).order_by(deliveries.c.member_id))}


def test_templates_outside_the_window_free_text_inside_and_reports(configured, meta, web_port, web_server, monkeypatch) -> None:
    # Given four members with a phone: 1 (ru) and 2 (en) consent to WhatsApp, 3 too and
    # wrote to the business an hour ago, 4 only to SMS
    base = f"http://127.0.0.1:{web_port}"
    application = configured(whatsapp_settings(meta, base, web_port, monkeypatch, ["whatsapp", "sms"]))
    add_member(application.engine, 1, phone="+79161234501", whatsapp_consent=True, first_name="Анна")
    add_member(application.engine, 2, phone="+447911123456", whatsapp_consent=True, locale="en", first_name="", points=101)
    add_member(application.engine, 3, phone="+79161234503", whatsapp_consent=True, first_name="Ира")
    add_member(application.engine, 4, phone="+79161234504", sms_consent=True)
    web_server(application.settings)
    assert meta.member_writes("+79161234503", "Здравствуйте, сколько у меня баллов?") == 200
    with application.engine.connect() as conn:
        assert [(r.channel, r.address) for r in conn.execute(select(conversations))] == [("whatsapp", "+79161234503")]

    # When the balance reminder runs
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)

    # Then 1 and 2 got the approved template in their language with their own figures,
    # 3 got the free text (the window is open), and 4 an SMS
    rows = _rows(application)
    assert {m: (row.channel, row.status) for m, row in rows.items()} == {
        1: ("whatsapp", "sent"),
        2: ("whatsapp", "sent"),
        3: ("whatsapp", "sent"),
        4: ("sms", "sent"),
    }
    sent = {message["to"]: message for message in meta.messages}
    anna, english, ira = sent["79161234501"], sent["447911123456"], sent["79161234503"]
    assert anna["type"] == "template" and anna["template"]["name"] == "balance_reminder"
    assert anna["template"]["language"] == {"policy": "deterministic", "code": "ru"}
    assert [p["text"] for p in anna["template"]["components"][0]["parameters"]] == [
        "Анна",
        "500 баллов",
        "https://bonus.example.com",
    ]
    assert english["template"]["language"]["code"] == "en"
    assert [p["text"] for p in english["template"]["components"][0]["parameters"]][:2] == ["Hello", "101 points"]
    assert ira["type"] == "text" and ira["text"].startswith("Ира, на вашем бонусном счёте 500 баллов")
    assert f"{base}/u/" in ira["text"]
    assert anna["reference"] == str(rows[1].id) and rows[1].provider_message_id == anna["id"]

    # When WhatsApp reports them delivered, then read (and repeats itself)
    assert meta.send_reports("delivered") == [200, 200, 200]
    assert meta.send_reports("read") == [200, 200, 200]
    assert meta.send_reports("read") == [200, 200, 200]
    statuses = lambda: {m: row.status for m, row in _rows(application).items()}  # noqa: E731
    want = {1: "delivered", 2: "delivered", 3: "delivered", 4: "sent"}
    assert eventually(statuses, want) == want

    # And a notification without Meta's signature, or a wrong one, is refused; a
    # signed one of the wrong shape is refused naming the field
    forged = {"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {"statuses": []}}]}]}
    assert httpx.post(f"{base}/webhooks/whatsapp", json=forged).status_code == 403
    wrong = httpx.post(
        f"{base}/webhooks/whatsapp", content=json.dumps(forged), headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}
    )
    assert wrong.status_code == 403 and wrong.json()["field"] == "header X-Hub-Signature-256"
    bad = json.dumps({**forged, "entry": [{"changes": [{"value": {"statuses": [{"id": "wamid.x", "status": "lost"}]}}]}]})
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), bad.encode(), hashlib.sha256).hexdigest()
    answer = httpx.post(f"{base}/webhooks/whatsapp", content=bad, headers={"X-Hub-Signature-256": signature})
    assert answer.status_code == 400 and answer.json()["field"] == "body.entry[0].changes[0].value.statuses[0].status"
    assert statuses() == want


def test_meta_checks_the_webhook_with_its_verify_token(configured, meta, web_port, web_server, monkeypatch) -> None:
    # Given the web service with WhatsApp's verify token set
    base = f"http://127.0.0.1:{web_port}"
    application = configured(whatsapp_settings(meta, base, web_port, monkeypatch, ["whatsapp"]))
    web_server(application.settings)
    # When Meta checks the callback URL with the right token, the challenge comes back
    status, answer, challenge = meta.subscribe(f"{base}/webhooks/whatsapp", VERIFY)
    assert (status, answer) == (200, challenge)
    # And with another token, or on a channel that makes no such check, it is refused
    assert meta.subscribe(f"{base}/webhooks/whatsapp", "guess")[0] == 403
    assert meta.subscribe(f"{base}/webhooks/sms", VERIFY)[0] == 404


def test_a_window_about_to_close_sends_the_template(configured, meta, web_port, monkeypatch) -> None:
    # Given a member who wrote 23 h 55 min before the send, and one who wrote 23 h before
    base = f"http://127.0.0.1:{web_port}"
    application = configured(whatsapp_settings(meta, base, web_port, monkeypatch, ["whatsapp"]))
    add_member(application.engine, 1, phone="+79161234501", whatsapp_consent=True)
    add_member(application.engine, 2, phone="+79161234502", whatsapp_consent=True)
    now = datetime.now(UTC)
    with application.engine.begin() as conn:
        conversation_store.record(conn, "whatsapp", "+79161234501", now - timedelta(hours=23, minutes=55))
        conversation_store.record(conn, "whatsapp", "+79161234502", now - timedelta(hours=30))
        conversation_store.record(conn, "whatsapp", "+79161234502", now - timedelta(hours=23))  # a later message wins
        conversation_store.record(conn, "whatsapp", "+79161234502", now - timedelta(hours=40))  # an older one does not
    # And the marketer's preview shows the closing window's member the template as it will be filled
    shown = cli(application.settings.source, "preview", "balance_reminder", "--member", "1").stdout
    assert "approved template balance_reminder (ru)" in shown and "body {{2}} = 500 баллов" in shown
    # When the reminder goes now
    cli(application.settings.source, "run", "balance_reminder")
    # Then the closing window gets the approved template, the open one free text
    sent = {message["to"]: message["type"] for message in meta.messages}
    assert sent == {"79161234501": "template", "79161234502": "text"}


def test_undeliverable_fails_without_suppressing_and_stop_unsubscribes(
    configured, meta, web_port, web_server, monkeypatch
) -> None:
    # Given two members sent the reminder on WhatsApp; WhatsApp cannot deliver to 1
    base = f"http://127.0.0.1:{web_port}"
    application = configured(whatsapp_settings(meta, base, web_port, monkeypatch, ["whatsapp"]))
    add_member(application.engine, 1, phone="+79161234501", whatsapp_consent=True)
    add_member(application.engine, 2, phone="+79161234502", whatsapp_consent=True)
    meta.faults.errors["79161234501"] = "undeliverable"
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    web_server(application.settings)

    # When WhatsApp reports (1 failed with 131026), and member 2 taps "Остановить рассылку"
    assert meta.send_reports("delivered") == [200, 200]
    assert meta.member_writes("79161234502", "Остановить рассылку", kind="button") == 200

    # Then 1 failed with WhatsApp's reason and the number is not suppressed (it still takes SMS)
    assert eventually(lambda: _rows(application)[1].status, "failed") == "failed"
    rows = _rows(application)
    assert rows[1].reason_code == "undelivered" and "131026" in rows[1].reason
    assert rows[2].status == "delivered"
    with application.engine.connect() as conn:
        assert list(conn.execute(select(suppressions))) == []
        choices = [(r.member_id, r.channel, r.category, r.subscribed) for r in conn.execute(select(preferences))]
    # And 2 is unsubscribed from marketing on WhatsApp: the next occasion leaves them out
    assert choices == [(2, "whatsapp", "*", False)]
    cli(application.settings.source, "run", "balance_reminder", "--now", "2026-12-24T12:00+03:00")
    latest = {row.member_id: row for row in _rows_of_latest_run(application)}
    assert latest[2].status == "unsubscribed"


def _rows_of_latest_run(application: Any) -> list[Any]:
    with application.engine.connect() as conn:
        run_id = conn.execute(select(deliveries.c.run_id).order_by(deliveries.c.id.desc()).limit(1)).scalar()
        return list(conn.execute(select(deliveries).where(deliveries.c.run_id == run_id)))


@pytest.mark.parametrize(
    ("named", "error", "status"),
    [
        ("token", AccountProblem, 190),
        ("payment", AccountProblem, 131042),
        ("template_paused", AccountProblem, 132015),
        ("throughput", RateLimited, 130429),
        ("pair_limit", RateLimited, 131056),
        ("spam_limit", RateLimited, 131048),
        ("not_allowed", MessageRejected, 131030),
        ("unavailable", Exception, 131016),
    ],
)
def test_every_refusal_maps_onto_the_error_tree(named, error, status, meta, tmp_path, monkeypatch) -> None:
    # Given the Cloud API answering this number with one of its refusals
    monkeypatch.setenv("LC_WA_TOKEN", "wa-token")
    options = {"base_url": f"{meta.url}/v21.0", "phone_number_id": "1000000001", "access_token_env": "LC_WA_TOKEN"}
    transport = build_transport("whatsapp", "whatsapp_cloud", outbox_dir=tmp_path, options=options)
    meta.faults.errors["79161234567"] = named
    message = OutgoingMessage(
        channel="whatsapp",
        reference=9,
        to="+79161234567",
        text="x",
        approved=ApprovedTemplate("balance_reminder", "ru", body=("a", "b", "c")),
    )
    # When the message goes, then the refusal is the right error with WhatsApp's code
    with pytest.raises(error) as caught:
        transport.send(message)
    assert caught.value.status == status and caught.value.provider == "whatsapp_cloud"
    if named == "unavailable":
        assert type(caught.value).__name__ == "ProviderUnavailable"
    if error is RateLimited:
        assert caught.value.retry_after == (3600 if named == "spam_limit" else 60)
    if error is MessageRejected:
        assert not caught.value.suppress
    assert meta.messages == []


def test_template_problems_are_refused_before_or_by_the_provider(meta, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LC_WA_TOKEN", "wa-token")
    options = {"base_url": f"{meta.url}/v21.0", "phone_number_id": "1000000001", "access_token_env": "LC_WA_TOKEN"}
    transport = build_transport("whatsapp", "whatsapp_cloud", outbox_dir=tmp_path, options=options)

    def send(approved: ApprovedTemplate | None, *, to: str = "+79161234567", session_open: bool = False) -> None:
        transport.send(OutgoingMessage("whatsapp", 1, to, text="hi", approved=approved, session_open=session_open))

    # An unknown template and a wrong number of parameters: the provider's own refusals
    with pytest.raises(MessageRejected) as caught:
        send(ApprovedTemplate("no_such_template", "ru", body=("a",)))
    assert caught.value.status == 132001
    with pytest.raises(MessageRejected) as caught:
        send(ApprovedTemplate("balance_reminder", "ru", body=("a",)))
    assert caught.value.status == 132000
    # No template and a closed window: refused before any call
    with pytest.raises(MessageRejected):
        send(None)
    assert meta.messages == []
    # A number the API refuses is an invalid recipient (suppressed)
    meta.faults.rejected.add("79161234568")
    with pytest.raises(InvalidRecipient) as invalid:
        send(ApprovedTemplate("balance_reminder", "ru", body=("a", "b", "c")), to="+79161234568")
    assert invalid.value.suppress and invalid.value.status == 100
    # And free text inside the window needs no template at all
    send(None, session_open=True)
    assert [m["type"] for m in meta.messages] == ["text"]


def test_check_names_the_declaration_file_and_line(write_settings, tmp_path) -> None:
    # Given a copy of the templates whose WhatsApp declaration uses a variable that does
    # not exist, and one with an unknown key
    templates = tmp_path / "templates"
    for source in (REPO / "templates").rglob("*"):
        if source.is_file():
            target = templates / source.relative_to(REPO / "templates")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    declaration = templates / "balance_reminder" / "ru" / "whatsapp.toml"
    declaration.write_text(declaration.read_text().replace("{{ balance | points }}", "{{ balanse | points }}"))
    english = templates / "balance_reminder" / "en" / "whatsapp.toml"
    english.write_text(english.read_text() + 'footer = ["x"]\n')
    path = write_settings({"templates_dir": str(templates)})
    cli(path, "db", "upgrade")
    # When the marketer checks the templates
    output = cli(path, "check", exit_code=1).stdout
    # Then both problems name the file and the line
    line = _line(declaration, "balanse")
    assert f"balance_reminder/ru/whatsapp.toml:{line}" in output and "body[1]: undefined variable" in output
    assert f"balance_reminder/en/whatsapp.toml:{_line(english, 'footer')}" in output and "footer: unknown key" in output


def _line(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)
