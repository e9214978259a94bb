"""The Russian SMS gateways (SMS.ru, SMSC.ru, SMS Aero) and the JSON style's answer rule:
every error body a gateway answers with HTTP 200 is recorded as the right failure,
never as ``sent``; delivery reports come back through the web service."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import add_member, cli, eventually, fake_providers
from sqlalchemy import select

from campaigns.store.models import deliveries, suppressions
from channels import build_transport
from channels.base import OutgoingMessage, SendStatus
from channels.errors import (
    AccountProblem,
    ChannelError,
    DuplicateRequest,
    InvalidRecipient,
    MessageRejected,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    RecipientBlocked,
)
from channels.fakes import FakeSmsGateway, Faults

NOON = "2026-11-24T12:00+03:00"
NUMBER = "+79161234567"
SECRET = "s" * 24


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeSmsGateway]:
    server = FakeSmsGateway().start()
    yield server
    server.stop()


def options(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A gateway's ``[channels.sms]`` keys pointed at the fake at ``url``."""
    credentials = {
        "smsru": {"transport": "smsru", "api_id_env": "LC_GW_KEY", "base_url": url},
        "smsc": {"transport": "smsc", "login": "romashka", "password_env": "LC_GW_KEY", "base_url": url},
        "smsaero": {"transport": "smsaero", "email": "bonus@example.com", "api_key_env": "LC_GW_KEY", "base_url": f"{url}/v2"},
    }[name]
    return {**credentials, "sender": "ROMASHKA", **extra}


def send(gateway: FakeSmsGateway, name: str, tmp_path: Path, error: str | None) -> Any:
    os.environ["LC_GW_KEY"] = "gw-key"
    gateway.faults.__init__(errors={NUMBER: error} if error else {})  # type: ignore[misc]
    settings = options(name, gateway.url)
    transport = build_transport("sms", settings.pop("transport"), outbox_dir=tmp_path, options=settings)
    with transport:
        return transport.send(OutgoingMessage(channel="sms", reference=9, to=NUMBER, text="Баллы сгорают"))


ERROR_BODIES = [
    # gateway, the fake's error, what loyalcast raises, the provider's code
    ("smsru", "invalid", InvalidRecipient, 202),
    ("smsru", "prohibited", InvalidRecipient, 207),
    ("smsru", "blocked", RecipientBlocked, 209),
    ("smsru", "no_funds", AccountProblem, 201),
    ("smsru", "auth", AccountProblem, 200),
    ("smsru", "sender", AccountProblem, 204),
    ("smsru", "quota", RateLimited, 206),
    ("smsru", "duplicate", DuplicateRequest, 231),
    ("smsc", "invalid", InvalidRecipient, 7),
    ("smsc", "blocked", InvalidRecipient, 8),
    ("smsc", "no_funds", AccountProblem, 3),
    ("smsc", "auth", AccountProblem, 2),
    ("smsc", "quota", RateLimited, 4),
    ("smsc", "prohibited", MessageRejected, 6),
    ("smsc", "duplicate", DuplicateRequest, 9),
    ("smsaero", "invalid", InvalidRecipient, 200),
    ("smsaero", "no_funds", AccountProblem, 200),
    ("smsaero", "auth", AccountProblem, 401),
    ("smsaero", "sender", AccountProblem, 200),
    ("smsaero", "prohibited", MessageRejected, 200),
]


@pytest.mark.parametrize(("name", "error", "raised", "code"), ERROR_BODIES)
def test_every_error_body_is_the_right_failure_never_a_send(gateway, tmp_path, name, error, raised, code) -> None:
    # Given a gateway answering a send with one of its error bodies (HTTP 200 but for SMS Aero's 401)
    # When loyalcast sends through it
    with pytest.raises(ChannelError) as caught:
        send(gateway, name, tmp_path, error)
    # Then the error is the tree's class for it, with the provider's code and words
    assert type(caught.value) is raised, caught.value
    assert caught.value.status == code and caught.value.provider == name and caught.value.detail
    assert gateway.messages == []  # and the fake accepted nothing
    if raised is InvalidRecipient or raised is RecipientBlocked:
        assert caught.value.suppress  # type: ignore[attr-defined]


def test_what_the_error_tree_promises_for_each_family(gateway, tmp_path) -> None:
    # An account problem waits (transient), a duplicate is not resent (unknown), a daily limit waits an hour
    assert issubclass(AccountProblem, ProviderUnavailable)
    assert issubclass(DuplicateRequest, OutcomeUnknown)
    with pytest.raises(RateLimited) as caught:
        send(gateway, "smsru", tmp_path, "quota")
    assert caught.value.retry_after == 3600


@pytest.mark.parametrize("name", ["smsru", "smsc", "smsaero"])
def test_requests_have_the_providers_shape(gateway, tmp_path, name) -> None:
    # When a message is sent
    result = send(gateway, name, tmp_path, None)
    # Then it went in the provider's own shape, and the id is the provider's
    sent = gateway.messages[-1]
    assert result.status is SendStatus.SENT and result.provider_message_id == sent["id"] and result.segments == 1
    assert sent["to"] == "79161234567" and sent["text"] == "Баллы сгорают" and sent["sender"] == "ROMASHKA"
    if name == "smsru":
        assert sent["api_id"] == "gw-key" and sent["json"] == "1"
    if name == "smsc":
        assert (sent["login"], sent["password"], sent["fmt"], sent["charset"]) == ("romashka", "gw-key", "3", "utf-8")
        assert sent["reference"] == "9" and sent["id"] == "9"  # the ledger id is SMSC's message id
    if name == "smsaero":
        assert (sent["email"], sent["api_key"]) == ("bonus@example.com", "gw-key")


# --- the generic JSON style's answer rule ------------------------------------------------


def json_transport(gateway: FakeSmsGateway, tmp_path: Path, answer: dict[str, Any] | None = None) -> Any:
    settings: dict[str, Any] = {"url": f"{gateway.url}/send"}
    if answer is not None:
        settings["answer"] = answer
    return build_transport("sms", "http_sms", outbox_dir=tmp_path, options=settings)


def test_json_style_reads_errors_in_a_200_body(gateway, tmp_path) -> None:
    # Given a JSON gateway that answers "insufficient balance" with HTTP 200
    gateway.faults.__init__(errors={NUMBER: "no_funds"})  # type: ignore[misc]
    message = OutgoingMessage(channel="sms", reference=1, to=NUMBER, text="x")
    # Then by default it is a failure, not a send
    with pytest.raises(MessageRejected) as caught:
        json_transport(gateway, tmp_path).send(message)
    assert caught.value.detail == "insufficient balance" and caught.value.status == "balance"
    # And a rule can say the code is worth retrying
    with pytest.raises(ProviderUnavailable):
        json_transport(gateway, tmp_path, {"transient_codes": ["balance"]}).send(message)


def test_json_style_ok_field_and_a_200_that_says_nothing(gateway, tmp_path) -> None:
    gateway.faults.__init__()  # type: ignore[misc]
    message = OutgoingMessage(channel="sms", reference=1, to=NUMBER, text="x")
    # Given a rule that wants status "queued" (the fake says "accepted")
    with pytest.raises(MessageRejected) as caught:
        json_transport(gateway, tmp_path, {"ok_field": "status", "ok_values": ["queued"]}).send(message)
    assert "accepted" in caught.value.detail
    # And one that names the id field otherwise: an answer without an id is not taken for a send
    with pytest.raises(OutcomeUnknown):
        json_transport(gateway, tmp_path, {"id_field": "msg_id"}).send(message)
    # While the right rule sends
    rule = {"ok_field": "status", "ok_values": ["accepted"]}
    assert json_transport(gateway, tmp_path, rule).send(message).status is SendStatus.SENT


# --- a campaign through each gateway, reports back through the web service ---------------


@pytest.fixture
def providers() -> Iterator[dict[str, Any]]:
    yield from fake_providers(Faults(seed=5))


def _rows(application: Any) -> dict[int, Any]:
    with application.engine.connect() as conn:
        return {row.member_id: row for row in conn.execute(select(deliveries).where(deliveries.c.channel == "sms"))}


OUTCOMES = {
    # member: the fake's error for their number; what each gateway makes of it (status, reason code)
    1: None,
    2: "invalid",
    3: "no_funds",
    4: "duplicate",
    5: "blocked",
}
EXPECTED = {
    "smsru": {2: ("failed", "invalid_recipient"), 3: ("failed", "gave_up"), 4: ("unknown", "outcome_unknown")}
    | {5: ("failed", "recipient_blocked")},
    "smsc": {2: ("failed", "invalid_recipient"), 3: ("failed", "gave_up"), 4: ("unknown", "outcome_unknown")}
    | {5: ("failed", "invalid_recipient")},
    # SMS Aero has no "duplicate" or "blocked" answer: those members' messages go out
    "smsaero": {2: ("failed", "invalid_recipient"), 3: ("failed", "gave_up"), 4: ("sent", None), 5: ("sent", None)},
}


@pytest.mark.parametrize("name", ["smsru", "smsc", "smsaero"])
def test_a_campaign_through_each_gateway_records_every_answer_and_its_reports(
    name, configured, providers, web_port, web_server, monkeypatch
) -> None:
    # Given five members whose numbers the gateway answers five ways
    monkeypatch.setenv("LC_GW_KEY", "gw-key")
    monkeypatch.setenv("LC_GW_CALLBACK", SECRET)
    base = f"http://127.0.0.1:{web_port}"
    gateway = providers["sms"]
    extra: dict[str, Any] = {"callback_secret_env": "LC_GW_CALLBACK"}
    if name == "smsaero":
        extra["status_callback"] = f"{base}/webhooks/sms"
    application = configured(
        {
            "web": {"port": web_port, "public_url": base},
            "channels": {"sms": options(name, gateway.url, **extra)},
            "quiet_hours": {"default": "off", "telegram": "off"},
            "delivery": {"max_attempts": 1},  # an account problem gives up at once here (it is retried in production)
            "campaigns": {"balance_reminder": {"channels": ["sms"]}},
        }
    )
    for member_id, error in OUTCOMES.items():
        add_member(application.engine, member_id, phone=f"+7916123450{member_id}", sms_consent=True)
        if error:
            providers["faults"].errors[f"+7916123450{member_id}"] = error

    # When the campaign runs
    run = cli(application.settings.source, "run", "balance_reminder", "--now", NOON)

    # Then only what the gateway accepted is sent; every error body is its failure
    rows = _rows(application)
    expected = {1: ("sent", None), **EXPECTED[name]}
    assert {m: (row.status, row.reason_code if row.status != "sent" else None) for m, row in rows.items()} == expected
    accepted = {m for m, (status, _) in expected.items() if status == "sent"}
    assert {rows[m].provider_message_id for m in accepted} == {message["id"] for message in gateway.messages}
    assert "ALERT sms (" + name + ")" in run.output  # the exhausted balance is raised as an alert
    with application.engine.connect() as conn:
        suppressed = {row.address for row in conn.execute(select(suppressions.c.address))}
    assert "+79161234502" in suppressed and "+79161234503" not in suppressed

    # When the gateway reports the accepted messages delivered (and repeats itself)
    web_server(application.settings)
    if name != "smsaero":  # SMS.ru and SMSC post to the URL registered with the account
        gateway.report_url = f"{base}/webhooks/sms?secret={SECRET}"
    assert gateway.send_reports("delivered") == [200] * len(accepted)
    assert gateway.send_reports("delivered") == [200] * len(accepted)

    # Then those rows are delivered, the others unchanged
    statuses = lambda: {m: row.status for m, row in _rows(application).items()}  # noqa: E731
    want = {m: ("delivered" if m in accepted else status) for m, (status, _) in expected.items()}
    assert eventually(statuses, want) == want

    # And a report without the URL's secret, or with another, is refused and changes nothing
    for url in (f"{base}/webhooks/sms", f"{base}/webhooks/sms?secret=wrong"):
        forged = httpx.post(url, data={"id": "1", "status": "20", "data[0]": "sms_status\n1\n107"})
        assert forged.status_code == 403 and forged.json()["field"] == "query.secret"
    assert statuses() == want


def test_sms_ru_reads_its_callback_format_and_is_answered_100(configured, providers, web_port, web_server, monkeypatch) -> None:
    # Given SMS.ru as the SMS channel, the web service up
    monkeypatch.setenv("LC_GW_KEY", "gw-key")
    monkeypatch.setenv("LC_GW_CALLBACK", SECRET)
    base = f"http://127.0.0.1:{web_port}"
    application = configured(
        {
            "web": {"port": web_port, "public_url": base},
            "channels": {"sms": options("smsru", providers["sms"].url, callback_secret_env="LC_GW_CALLBACK")},
            "quiet_hours": {"default": "off", "telegram": "off"},
            "campaigns": {"balance_reminder": {"channels": ["sms"]}},
        }
    )
    add_member(application.engine, 1, phone="+79161234501", sms_consent=True)
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    sms_id = _rows(application)[1].provider_message_id
    web_server(application.settings)

    # When SMS.ru posts two entries at once, one of another kind, one saying "no route to this number"
    form = [("data[0]", "callcheck_status\n201-1\n401"), ("data[1]", f"sms_status\n{sms_id}\n150\n1764000000")]
    answer = httpx.post(f"{base}/webhooks/sms?secret={SECRET}", data=dict(form))

    # Then it is answered with the 100 SMS.ru waits for, and the row bounced, the number suppressed
    assert answer.status_code == 200 and answer.text == "100"
    assert eventually(lambda: _rows(application)[1].status, "failed") == "failed"
    row = _rows(application)[1]
    assert row.reason_code == "bounced" and "SMS.ru 150" in row.reason
    with application.engine.connect() as conn:
        assert [r.address for r in conn.execute(select(suppressions.c.address))] == ["+79161234501"]

    # And an entry that is not SMS.ru's shape names the field
    bad = httpx.post(f"{base}/webhooks/sms?secret={SECRET}", data={"data[0]": "sms_status\nno code"})
    assert bad.status_code == 400 and bad.json()["field"] == "form.data[0]"
