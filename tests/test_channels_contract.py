"""One contract, every transport: result shape, error mapping, timeouts, length limits
and configuration errors, each against a fake provider speaking the real protocol."""

from __future__ import annotations

import email
import email.header
import email.policy
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from channels import build_transport
from channels.base import ApprovedTemplate, OutgoingMessage, SendResult, SendStatus, Transport
from channels.errors import (
    AddressUnsupported,
    ChannelConfigError,
    InvalidRecipient,
    MessageRejected,
    OutcomeUnknown,
    PermanentError,
    ProviderUnavailable,
    RateLimited,
    RecipientBlocked,
    TransientError,
)
from channels.fakes import FakeInfobip, FakeSmsGateway, FakeSmtpServer, FakeTelegramApi, FakeWhatsApp, Faults
from channels.mime import build_email, flatten, parse_sender


@dataclass
class Provider:
    """A transport wired to a running fake, and how to address a message to it."""

    name: str
    transport: Transport
    faults: Faults
    accepted: Callable[[], list]
    to: str
    channel: str
    blocks: bool = False  # the fake can say "the member blocked us"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Any]]:
    servers = {
        "smtp": FakeSmtpServer().start(),
        "sms": FakeSmsGateway().start(),
        "telegram": FakeTelegramApi().start(),
        "viber": FakeInfobip().start(),
        "whatsapp": FakeWhatsApp(access_token="wa-token", templates={("balance_reminder", "ru"): 2}).start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


def make(name: str, fakes: dict[str, Any], tmp_path: Path, timeout: float = 2.0) -> Provider:
    os.environ.update(LC_TEST_TG="123:abc", LC_TEST_SID="AC123", LC_TEST_TOKEN="secret", LC_TEST_GW="Bearer gw")
    for server in fakes.values():
        server.faults.__init__()  # a clean fault plan for every test
        server.messages.clear()
        for log in ("envelopes", "raw", "mail_options"):
            getattr(server, log, []).clear()
    smtp, sms, telegram = fakes["smtp"], fakes["sms"], fakes["telegram"]
    if name == "smtp":
        transport = build_transport(
            "email",
            "smtp",
            outbox_dir=tmp_path,
            options={
                "host": smtp.address[0],
                "port": smtp.address[1],
                "security": "none",
                "timeout": timeout,
                "from_address": "Ромашка <bonus@example.com>",
            },
        )
        return Provider(name, transport, smtp.faults, lambda: smtp.messages, "anna@example.com", "email")
    if name in ("sms-json", "sms-twilio"):
        options: dict[str, Any] = {"url": f"{sms.url}/send", "auth_env": "LC_TEST_GW", "sender": "ROMASHKA", "timeout": timeout}
        if name == "sms-twilio":
            options = {
                "style": "twilio",
                "base_url": sms.url,
                "sender": "+15005550006",
                "timeout": timeout,
                "account_sid_env": "LC_TEST_SID",
                "auth_token_env": "LC_TEST_TOKEN",
            }
        transport = build_transport("sms", "http_sms", outbox_dir=tmp_path, options=options)
        return Provider(name, transport, sms.faults, lambda: sms.messages, "+79161234567", "sms")
    if name in GATEWAYS:
        credentials = {
            "smsru": {"api_id_env": "LC_TEST_GW"},
            "smsc": {"login": "romashka", "password_env": "LC_TEST_GW"},
            "smsaero": {"email": "bonus@example.com", "api_key_env": "LC_TEST_GW"},
        }[name]
        base = f"{sms.url}/v2" if name == "smsaero" else sms.url
        options = {"base_url": base, "sender": "ROMASHKA", "timeout": timeout, **credentials}
        transport = build_transport("sms", name, outbox_dir=tmp_path, options=options)
        return Provider(name, transport, sms.faults, lambda: sms.messages, "+79161234567", "sms")
    if name == "viber":
        options = {"base_url": fakes["viber"].url, "api_key_env": "LC_TEST_GW", "sender": "Romashka", "timeout": timeout}
        transport = build_transport("viber", "infobip", outbox_dir=tmp_path, options=options)
        return Provider(name, transport, fakes["viber"].faults, lambda: fakes["viber"].messages, "+79161234567", "viber")
    if name == "whatsapp":
        os.environ["LC_TEST_WA"] = "wa-token"
        options = {
            "base_url": f"{fakes['whatsapp'].url}/v21.0",
            "phone_number_id": "1000000001",
            "access_token_env": "LC_TEST_WA",
            "timeout": timeout,
        }
        transport = build_transport("whatsapp", "whatsapp_cloud", outbox_dir=tmp_path, options=options)
        return Provider(name, transport, fakes["whatsapp"].faults, lambda: fakes["whatsapp"].messages, "+79161234567", "whatsapp")
    if name == "telegram":
        transport = build_transport(
            "telegram",
            "telegram",
            outbox_dir=tmp_path,
            options={"token_env": "LC_TEST_TG", "base_url": f"{telegram.url}/bot", "timeout": timeout},
        )
        return Provider(name, transport, telegram.faults, lambda: telegram.messages, "4242", "telegram", blocks=True)
    raise AssertionError(name)


GATEWAYS = ["smsru", "smsc", "smsaero"]
"""The SMS gateways that answer HTTP 200 whatever happened."""
PROVIDERS = ["smtp", "sms-json", "sms-twilio", *GATEWAYS, "telegram", "viber", "whatsapp"]
REMINDER = ApprovedTemplate("balance_reminder", "ru", body=("Анна", "500 баллов"))
"""The approved template a WhatsApp message outside the member's window goes as."""


def message(provider: Provider, text: str = "Привет, <b>Анна</b>") -> OutgoingMessage:
    return OutgoingMessage(
        channel=provider.channel,
        reference=77,
        to=provider.to,
        text=text,
        subject="Баллы" if provider.channel == "email" else None,
        to_name="Анна",
        approved=REMINDER if provider.channel == "whatsapp" else None,
    )


@pytest.mark.parametrize("name", PROVIDERS)
def test_result_shape(name, fakes, tmp_path) -> None:
    provider = make(name, fakes, tmp_path)
    with provider.transport as transport:
        result = transport.send(message(provider))
    assert isinstance(result, SendResult) and result.status is SendStatus.SENT
    assert isinstance(result.provider_message_id, str) and result.provider_message_id
    assert len(provider.accepted()) == 1
    if provider.channel == "sms":
        assert result.segments == 1
        sent = provider.accepted()[0]
        assert sent["to"] == ("79161234567" if name in GATEWAYS else "+79161234567")
        if name in ("sms-json", "smsc"):
            assert sent["reference"] == "77"  # the ledger id is the client reference
        if name == "sms-json":
            assert sent["headers"]["Authorization"] == "Bearer gw"
        if name in GATEWAYS:
            assert sent["protocol"] == name and sent["sender"] == "ROMASHKA" and sent["text"] == "Привет, <b>Анна</b>"


@pytest.mark.parametrize("name", PROVIDERS)
def test_transient_failure(name, fakes, tmp_path) -> None:
    provider = make(name, fakes, tmp_path)
    provider.faults.transient_rate = 1.0
    with pytest.raises(TransientError) as caught, provider.transport as transport:
        transport.send(message(provider))
    assert isinstance(caught.value, ProviderUnavailable)
    assert caught.value.provider == provider.transport.name and caught.value.detail
    if name != "telegram":  # python-telegram-bot reports a 5xx by its text only ("Bad Gateway")
        assert caught.value.status is not None


@pytest.mark.parametrize("name", [n for n in PROVIDERS if n != "smtp"])
def test_rate_limited_carries_the_wait(name, fakes, tmp_path) -> None:
    provider = make(name, fakes, tmp_path)
    provider.faults.rate_limit_rate, provider.faults.retry_after = 1.0, 3
    with pytest.raises(RateLimited) as caught, provider.transport as transport:
        transport.send(message(provider))
    assert caught.value.retry_after == 3 and caught.value.status == 429


@pytest.mark.parametrize("name", PROVIDERS)
def test_rejected_recipient_is_permanent_and_suppresses(name, fakes, tmp_path) -> None:
    provider = make(name, fakes, tmp_path)
    provider.faults.rejected.add(provider.to)
    with pytest.raises(PermanentError) as caught, provider.transport as transport:
        transport.send(message(provider))
    assert isinstance(caught.value, InvalidRecipient) and caught.value.suppress
    assert caught.value.reached_provider


def test_blocked_bot_is_permanent_and_suppresses(fakes, tmp_path) -> None:
    provider = make("telegram", fakes, tmp_path)
    provider.faults.blocked.add(provider.to)
    with pytest.raises(RecipientBlocked) as caught:
        provider.transport.send(message(provider))
    assert caught.value.suppress and caught.value.status == 403


@pytest.mark.parametrize("name", PROVIDERS)
def test_answer_slower_than_the_timeout_is_an_unknown_outcome(name, fakes, tmp_path) -> None:
    provider = make(name, fakes, tmp_path, timeout=0.5)
    provider.faults.slow_seconds = 2.0
    with pytest.raises(OutcomeUnknown), provider.transport as transport:
        transport.send(message(provider))


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("sms-json", "+7 000"),
        ("sms-twilio", "hello"),
        ("smsru", "+7 12"),
        ("smsc", "x"),
        ("telegram", "@anna"),
        ("viber", "+7 1"),
        ("whatsapp", "+7 1"),
    ],
)
def test_an_impossible_address_fails_before_the_provider(name, bad, fakes, tmp_path) -> None:
    provider = make(name, fakes, tmp_path)
    with pytest.raises(InvalidRecipient) as caught:
        provider.transport.send(OutgoingMessage(channel=provider.channel, reference=1, to=bad, text="x"))
    assert caught.value.reached_provider is False
    assert provider.accepted() == []


def test_telegram_length_limit(fakes, tmp_path) -> None:
    provider = make("telegram", fakes, tmp_path)
    provider.transport.send(message(provider, "ж" * 4096))
    with pytest.raises(MessageRejected):
        provider.transport.send(message(provider, "ж" * 4097))
    assert len(provider.accepted()) == 1


def test_telegram_sends_from_many_threads_each_on_its_own_loop(fakes, tmp_path) -> None:
    # Given one Telegram transport shared by worker threads, as in a worker process
    provider = make("telegram", fakes, tmp_path)
    results: list[SendResult] = []
    errors: list[BaseException] = []

    def send_five() -> None:
        try:
            for _ in range(5):
                results.append(provider.transport.send(message(provider)))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    # When two waves of four threads send (the first wave's threads and loops are gone
    # before the second starts)
    for _wave in range(2):
        threads = [threading.Thread(target=send_five) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    # Then every message reached the Bot API once, with no "Event loop is closed"
    assert errors == []
    assert len(results) == 40 and all(r.status is SendStatus.SENT for r in results)
    assert len(provider.accepted()) == 40


def test_smtp_envelope_comes_from_the_message_and_the_body_travels_unchanged(fakes, tmp_path) -> None:
    # Given a two-part email whose text has a line starting with "From " and a line that
    # looks like a MIME boundary
    provider = make("smtp", fakes, tmp_path)
    text = "Hello\nFrom the team\n--=_lc0123\n"
    outgoing = OutgoingMessage(
        channel="email", reference=5, to="anna@example.com", to_name="Анна", subject="Баллы", text=text, html="<p>Hello</p>"
    )
    # When it goes over SMTP
    with provider.transport as transport:
        transport.send(outgoing)
    # Then the envelope names the sender and the member, the body is unchanged (no mbox
    # ">From" quoting), and both parts decode
    [received] = fakes["smtp"].messages
    assert fakes["smtp"].envelopes == [("bonus@example.com", ["anna@example.com"])]
    assert received.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    assert received.get_body(("html",)).get_content().strip() == "<p>Hello</p>"
    assert received["To"].addresses[0].display_name == "Анна"


def _smtp(server: FakeSmtpServer, tmp_path) -> Any:
    options = {"host": server.address[0], "port": server.address[1], "security": "none", "from_address": "x@example.com"}
    return build_transport("email", "smtp", outbox_dir=tmp_path, options=options)


def test_an_internationalized_mailbox_goes_with_smtputf8(tmp_path) -> None:
    # Given an SMTP server that offers SMTPUTF8
    server = FakeSmtpServer(smtputf8=True).start()
    try:
        # When a letter goes to a Cyrillic mailbox at a Cyrillic domain
        with _smtp(server, tmp_path) as transport:
            transport.send(OutgoingMessage(channel="email", reference=1, to="анна@пример.рф", to_name="Анна", text="x"))
        # Then it is accepted, the domain in IDNA and the mailbox as written, in the envelope and the To header
        assert server.envelopes == [("x@example.com", ["анна@xn--e1afmkfd.xn--p1ai"])]
        to = server.messages[0]["To"].addresses[0].addr_spec  # 8-bit header bytes parse surrogate-escaped
        assert to.encode("ascii", "surrogateescape").decode("utf-8") == "анна@xn--e1afmkfd.xn--p1ai"
    finally:
        server.stop()


def test_an_internationalized_mailbox_without_smtputf8_is_refused_but_not_suppressed(tmp_path) -> None:
    # Given an SMTP server without SMTPUTF8
    server = FakeSmtpServer(smtputf8=False).start()
    try:
        with pytest.raises(AddressUnsupported) as caught, _smtp(server, tmp_path) as transport:
            transport.send(OutgoingMessage(channel="email", reference=1, to="анна@пример.рф", text="x"))
        # Then nothing reached the provider and the address stays usable elsewhere
        assert caught.value.reached_provider is False and caught.value.suppress is False
        assert server.messages == []
        # And an ASCII mailbox at an IDN domain needs no SMTPUTF8 at all
        with _smtp(server, tmp_path) as transport:
            transport.send(OutgoingMessage(channel="email", reference=2, to="anna@пример.рф", text="x"))
        assert server.envelopes == [("x@example.com", ["anna@xn--e1afmkfd.xn--p1ai"])]
    finally:
        server.stop()


def test_no_header_line_exceeds_998_octets(tmp_path) -> None:
    # Given names and subjects far longer than a header line may be, ASCII and Cyrillic
    for name, subject in (("A" * 100_000, "S" * 5_000), ("Я" * 100_000, "Тема " * 2_000)):
        message = OutgoingMessage(channel="email", reference=1, to="a@example.com", to_name=name, subject=subject, text="x")
        # When the letter is built
        data = flatten(build_email(message, sender=parse_sender("Ромашка <b@example.com>"), provider="smtp"), linesep="\r\n")
        # Then every line fits RFC 5322's limit
        assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_smtp_reuses_one_connection_and_reopens_a_dropped_one(fakes, tmp_path) -> None:
    provider = make("smtp", fakes, tmp_path)
    transport = provider.transport
    with transport:
        transport.send(message(provider))
        first = transport._connection  # type: ignore[attr-defined]
        transport.send(message(provider))
        assert transport._connection is first  # type: ignore[attr-defined]
        first.sock.close()  # the server hung up between two messages
        transport.send(message(provider))
    assert len(provider.accepted()) == 3


@pytest.mark.parametrize(
    ("channel", "transport", "options", "key"),
    [
        ("email", "smtp", {"from_address": "x@example.com"}, "channels.email.host"),
        ("email", "smtp", {"host": "127.0.0.1"}, "channels.email.from_address"),
        (
            "email",
            "smtp",
            {"host": "h", "from_address": "x@example.com", "password_env": "LC_UNSET"},
            "channels.email.password_env",
        ),
        ("sms", "http_sms", {}, "channels.sms.url"),
        ("sms", "http_sms", {"url": "http://x", "fields": {"phone": "msisdn"}}, "channels.sms.fields"),
        (
            "sms",
            "http_sms",
            {"style": "twilio", "sender": "+1", "auth_token_env": "LC_TEST_TOKEN"},
            "channels.sms.account_sid_env",
        ),
        ("sms", "smsru", {}, "channels.sms.api_id_env"),
        ("sms", "smsru", {"api_id_env": "LC_UNSET"}, "channels.sms.api_id_env"),
        ("sms", "smsc", {"password_env": "LC_TEST_TOKEN"}, "channels.sms.login"),
        ("sms", "smsaero", {"email": "a@example.com", "api_key_env": "LC_UNSET"}, "channels.sms.api_key_env"),
        (
            "sms",
            "smsaero",
            {"email": "a@example.com", "api_key_env": "LC_TEST_TOKEN", "status_callback": "https://x/webhooks/sms"},
            "channels.sms.callback_secret_env",
        ),
        ("email", "smsru", {"api_id_env": "LC_TEST_TOKEN"}, "channels.email.transport"),
        ("viber", "infobip", {"api_key_env": "LC_TEST_TOKEN", "sender": "R"}, "channels.viber.base_url"),
        ("viber", "infobip", {"base_url": "http://x", "api_key_env": "LC_UNSET", "sender": "R"}, "channels.viber.api_key_env"),
        (
            "viber",
            "infobip",
            {
                "base_url": "http://x",
                "api_key_env": "LC_TEST_TOKEN",
                "sender": "R",
                "status_callback": "https://x/webhooks/viber",
            },
            "channels.viber.callback_secret_env",
        ),
        ("sms", "infobip", {}, "channels.sms.transport"),
        ("whatsapp", "whatsapp_cloud", {"access_token_env": "LC_TEST_TOKEN"}, "channels.whatsapp.phone_number_id"),
        (
            "whatsapp",
            "whatsapp_cloud",
            {"phone_number_id": "1", "access_token_env": "LC_UNSET"},
            "channels.whatsapp.access_token_env",
        ),
        (
            "whatsapp",
            "whatsapp_cloud",
            {"phone_number_id": "1", "access_token_env": "LC_TEST_TOKEN", "app_secret_env": "LC_UNSET"},
            "channels.whatsapp.app_secret_env",
        ),
        ("sms", "whatsapp_cloud", {}, "channels.sms.transport"),
        ("telegram", "telegram", {}, "channels.telegram.token_env"),
        ("telegram", "telegram", {"token_env": "LC_UNSET"}, "channels.telegram.token_env"),
        ("telegram", "smtp", {}, "channels.telegram.transport"),
    ],
)
def test_configuration_errors_name_the_key(channel, transport, options, key, tmp_path) -> None:
    os.environ.pop("LC_UNSET", None)
    os.environ["LC_TEST_TOKEN"] = "secret"
    with pytest.raises(ChannelConfigError) as caught:
        build_transport(channel, transport, outbox_dir=tmp_path, options=options)
    assert caught.value.key == key


def test_settings_report_transport_problems_at_start(write_settings) -> None:
    from campaigns.config.loading import load_settings
    from campaigns.errors import ConfigError

    # Given a Telegram section that names no variable for its token
    path = write_settings({"channels": {"telegram": {"transport": "telegram"}}})
    # Then the settings do not load, and the key is named
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == ["channels.telegram.token_env: required: the name of the environment variable holding it"]


def test_a_missing_secret_stops_only_what_contacts_the_provider(write_settings) -> None:
    from campaigns.config.loading import load_settings
    from campaigns.errors import ConfigError

    # Given a Telegram token variable that is not set
    path = write_settings({"channels": {"telegram": {"transport": "telegram", "token_env": "LC_NOT_SET"}}})
    os.environ.pop("LC_NOT_SET", None)
    # When the settings load (what check, preview, plan and report need)
    settings = load_settings(path)
    # Then only asking for the secrets (run, send, serve, worker) names it
    with pytest.raises(ConfigError) as caught:
        settings.require_secrets()
    assert caught.value.problems == ["channels.telegram.token_env: environment variable LC_NOT_SET is not set"]


def test_smtp_logs_in_with_credentials_from_the_environment(tmp_path, monkeypatch) -> None:
    server = FakeSmtpServer(login=("loyalcast", "s3cret")).start()
    try:
        monkeypatch.setenv("LC_SMTP_USER", "loyalcast")
        options = {
            "host": server.address[0],
            "port": server.address[1],
            "security": "none",
            "from_address": "x@example.com",
            "username_env": "LC_SMTP_USER",
            "password_env": "LC_SMTP_PASSWORD",
            "timeout": 2,
        }
        monkeypatch.setenv("LC_SMTP_PASSWORD", "s3cret")
        message = OutgoingMessage(channel="email", reference=1, to="a@example.com", subject="s", text="t")
        with build_transport("email", "smtp", outbox_dir=tmp_path, options=options) as transport:
            transport.send(message)
        assert len(server.messages) == 1
        monkeypatch.setenv("LC_SMTP_PASSWORD", "wrong")
        with pytest.raises(ProviderUnavailable) as caught:
            with build_transport("email", "smtp", outbox_dir=tmp_path, options=options) as transport:
                transport.send(message)
        assert caught.value.provider == "smtp"  # refused logins are transient: credentials get fixed
        assert len(server.messages) == 1
    finally:
        server.stop()


def test_encoded_words_stay_within_75_characters_and_names_fold(tmp_path) -> None:
    # Given Cyrillic subjects of every length up to 200 characters, a 100-character
    # display name on both sides and a Cyrillic custom header
    sender = parse_sender("Ромашка Бонус — программа лояльности сети магазинов у дома на каждый день <b@example.com>")
    for length in range(1, 201, 7):
        message = OutgoingMessage(
            channel="email",
            reference=length,
            to="ann@example.com",
            to_name=("Анна-Мария Константинопольская " * 4)[:100],
            subject=("Ваши баллы сгорают, Анна — потратьте их " * 6)[:length],
            text="Текст",
            headers={"X-Campaign-Title": "Напоминание о баллах " * 5},
        )
        # When the email is built and written out
        data = flatten(build_email(message, sender=sender, provider="smtp"), linesep="\r\n")
        head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
        # Then every RFC 2047 encoded word is at most 75 characters and every line at most 78
        words = re.findall(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=", head)
        assert words and max(len(word) for word in words) <= 75, (length, [len(w) for w in words])
        assert max(len(line) for line in head.split("\r\n")) <= 78, length
        # And the strict parser reads the names, subject and header back whole
        parsed = email.message_from_bytes(data, policy=email.policy.strict)
        assert parsed["Subject"] == (message.subject or "").strip()  # a trailing space is not kept
        assert parsed["To"].addresses[0].addr_spec == "ann@example.com"
        # (the display names by RFC 2047's own rule, whitespace between adjacent encoded
        # words ignored: the header registry's phrase parser keeps it)
        raw = email.message_from_bytes(data, policy=email.policy.compat32)
        for header, name in (("To", message.to_name), ("From", sender.display_name)):
            phrase = raw[header].rsplit("<", 1)[0].strip()
            assert str(email.header.make_header(email.header.decode_header(phrase))) == name, header
        assert parsed["X-Campaign-Title"] == message.headers["X-Campaign-Title"].strip()
