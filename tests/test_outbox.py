"""The outbox transport and the MIME builder it shares with SMTP."""

from __future__ import annotations

import email
import json
from email import policy

import pytest

from channels import build_transport
from channels.base import OutgoingMessage
from channels.errors import ChannelConfigError, InvalidRecipient


def test_email_headers_are_encoded_and_injection_stays_text(tmp_path) -> None:
    # Given a member whose name tries to add a Bcc header
    transport = build_transport(
        "email", "outbox", outbox_dir=tmp_path, options={"from_address": "Ромашка Бонус <bonus@example.com>"}
    )
    message = OutgoingMessage(
        channel="email",
        reference=7,
        to="ann@example.com",
        to_name="Анна\r\nBcc: x@y",
        subject="Баллы\nBcc: z@y",
        text="Текст",
        html="<p>Текст</p>",
        unsubscribe_url="https://u.example/7",
    )
    # When the outbox writes it
    result = transport.send(message)
    parsed = email.message_from_bytes((tmp_path / "email" / "7.eml").read_bytes(), policy=policy.default)
    # Then the message parses, the Cyrillic names decode, and no Bcc header exists
    assert result.provider_message_id == "7.eml"
    assert parsed["Bcc"] is None
    assert parsed["To"].addresses[0].display_name == "Анна Bcc: x@y"
    assert parsed["To"].addresses[0].addr_spec == "ann@example.com"
    assert parsed["From"].addresses[0].display_name == "Ромашка Бонус"
    assert parsed["Subject"] == "Баллы Bcc: z@y"
    assert parsed["List-Unsubscribe"] == "<https://u.example/7>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed.get_body(("plain",)).get_content().strip() == "Текст"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Текст</p>"


def test_bodies_are_readable_utf8_and_long_lines_stay_within_smtp_limits(tmp_path) -> None:
    # Given a short Cyrillic text and an HTML body with one 3,000-byte line
    transport = build_transport("email", "outbox", outbox_dir=tmp_path, options={})
    long_html = "<p>" + "баллы " * 300 + "</p>"
    transport.send(
        OutgoingMessage(
            channel="email", reference=3, to="a@example.com", subject="s", text="На счёте 1 250 баллов", html=long_html
        )
    )
    # When the written message is read back
    raw = (tmp_path / "email" / "3.eml").read_bytes()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    # Then the text is plain UTF-8 in the file, the long line is quoted-printable, and
    # no line of the file is longer than SMTP allows; both bodies decode unchanged
    assert "На счёте 1 250 баллов".encode() in raw
    assert parsed.get_body(("plain",))["Content-Transfer-Encoding"] == "8bit"
    assert parsed.get_body(("html",))["Content-Transfer-Encoding"] == "quoted-printable"
    assert max(len(line) for line in raw.splitlines()) <= 998
    assert parsed.get_body(("html",)).get_content().strip() == long_html


def test_service_mail_has_no_list_headers(tmp_path) -> None:
    transport = build_transport("email", "outbox", outbox_dir=tmp_path, options={})
    transport.send(
        OutgoingMessage(
            channel="email", reference=1, to="a@example.com", subject="s", text="t", marketing=False, unsubscribe_url="https://u"
        )
    )
    parsed = email.message_from_bytes((tmp_path / "email" / "1.eml").read_bytes(), policy=policy.default)
    assert parsed["List-Unsubscribe"] is None


def test_sms_and_telegram_become_json(tmp_path) -> None:
    for channel, to in (("sms", "+79161234567"), ("telegram", "123456")):
        build_transport(channel, "outbox", outbox_dir=tmp_path, options={}).send(
            OutgoingMessage(channel=channel, reference=5, to=to, text="Привет")
        )
        document = json.loads((tmp_path / channel / "5.json").read_text())
        assert (document["to"], document["text"], document["reference"]) == (to, "Привет", 5)


def test_invalid_address_is_a_permanent_error_before_the_provider(tmp_path) -> None:
    transport = build_transport("email", "outbox", outbox_dir=tmp_path, options={})
    with pytest.raises(InvalidRecipient) as caught:
        transport.send(OutgoingMessage(channel="email", reference=1, to="no-at-sign", subject="s", text="t"))
    assert caught.value.reached_provider is False and caught.value.suppress is True


def test_configuration_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ChannelConfigError) as caught:
        build_transport("sms", "carrier-pigeon", outbox_dir=tmp_path, options={})
    assert caught.value.key == "channels.sms.transport"
    with pytest.raises(ChannelConfigError) as caught:
        build_transport("email", "outbox", outbox_dir=tmp_path, options={"from_address": "nobody"})
    assert caught.value.key == "channels.email.from_address"
