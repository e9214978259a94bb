"""Email to the letter, checked on what the SMTP fake received: 8BITMIME when offered and
quoted-printable otherwise, SMTPUTF8 for internationalized envelope addresses, DKIM
signatures that verify (dkimpy) and survive what relays do, strict parsing and SMTP's
line limits."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from channels import build_transport
from channels.base import OutgoingMessage, SendStatus
from channels.errors import AddressUnsupported, ChannelConfigError
from channels.fakes import FakeSmtpServer

TEXT = "Анна, у вас 1 250 баллов. Сгорят 300 баллов 1 декабря.\n" * 3
HTML = "<html><body><p>Анна, у вас <b>1 250 баллов</b>.</p></body></html>"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """A fresh RSA key (PEM) and its public key as a DNS TXT record's ``p=`` (DER, base64)."""
    folder = tmp_path_factory.mktemp("dkim")
    private = subprocess.run(["openssl", "genrsa", "2048"], check=True, capture_output=True).stdout
    (folder / "key.pem").write_bytes(private)
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(folder / "key.pem"), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return private.decode(), base64.b64encode(public)


def server(**options: Any) -> Iterator[FakeSmtpServer]:
    fake = FakeSmtpServer(**options).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def smtp() -> Iterator[FakeSmtpServer]:
    yield from server()


@pytest.fixture
def smtp_7bit() -> Iterator[FakeSmtpServer]:
    yield from server(eight_bit=False)


def transport(fake: FakeSmtpServer, tmp_path: Path, **options: Any) -> Any:
    settings = {
        "host": fake.address[0],
        "port": fake.address[1],
        "security": "none",
        "from_address": "Ромашка <bonus@example.com>",
    }
    return build_transport("email", "smtp", outbox_dir=tmp_path, options={**settings, **options})


def letter(to: str = "anna@example.com") -> OutgoingMessage:
    return OutgoingMessage(
        channel="email",
        reference=42,
        to=to,
        to_name="Анна Каренина",
        subject="Ваши баллы сгорают через неделю",
        text=TEXT,
        html=HTML,
        unsubscribe_url="https://bonus.example.com/u/token",
    )


def declared(fake: FakeSmtpServer) -> list[list[str]]:
    """Each message's MAIL FROM parameters but SIZE (which smtplib adds when offered)."""
    return [[option for option in options if not option.startswith("SIZE=")] for options in fake.mail_options]


def strict_checks(raw: bytes) -> email.message.EmailMessage:
    """The message parsed by the strict policy, after SMTP's limits are checked on its bytes."""
    assert all(len(line) <= 998 for line in raw.split(b"\r\n")), "a line over 998 octets"
    for word in re.findall(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=", raw):
        assert len(word) <= 75, word
    parsed = email.message_from_bytes(raw, policy=email.policy.strict)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def texts(parsed: email.message.EmailMessage) -> tuple[str, str]:
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


def test_8bit_bodies_go_with_body_8bitmime_when_the_server_offers_it(smtp, tmp_path) -> None:
    # When a Cyrillic letter goes to a server offering 8BITMIME
    with transport(smtp, tmp_path) as sender:
        assert sender.send(letter()).status is SendStatus.SENT
    # Then MAIL FROM declared it, and the body went as 8-bit UTF-8
    assert declared(smtp) == [["BODY=8BITMIME"]]
    raw = smtp.raw[0]
    assert not raw.isascii() and b"Content-Transfer-Encoding: 8bit" in raw
    assert texts(strict_checks(raw)) == (TEXT, HTML)


def test_a_server_without_8bitmime_gets_quoted_printable(smtp_7bit, tmp_path) -> None:
    # When the same letter goes to a server that does not offer 8BITMIME (the fake refuses 8-bit data then)
    with transport(smtp_7bit, tmp_path) as sender:
        result = sender.send(letter())
    # Then it went 7-bit: quoted-printable bodies, the same text, the same Message-ID
    assert declared(smtp_7bit) == [[]]
    raw = smtp_7bit.raw[0]
    assert raw.isascii() and b"Content-Transfer-Encoding: quoted-printable" in raw
    parsed = strict_checks(raw)
    assert texts(parsed) == (TEXT, HTML)
    assert parsed["Message-ID"] == result.provider_message_id


def test_an_internationalized_sender_needs_smtputf8(tmp_path) -> None:
    # Given a From address whose mailbox is not ASCII
    for fake in server(smtputf8=False):
        # Then a server without SMTPUTF8 cannot take it, and says which address
        with (
            pytest.raises(AddressUnsupported) as caught,
            transport(fake, tmp_path, from_address="Ромашка <бонус@example.com>") as t,
        ):
            t.send(letter())
        assert "бонус@example.com" in caught.value.detail and fake.raw == []
    for fake in server():
        # And one with SMTPUTF8 gets it declared
        with transport(fake, tmp_path, from_address="Ромашка <бонус@example.com>") as t:
            t.send(letter())
        assert declared(fake) == [["SMTPUTF8", "BODY=8BITMIME"]] and fake.envelopes[0][0] == "бонус@example.com"


def dns(public: bytes, selector: str = "lc2026", domain: str = "example.com") -> Any:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return b"v=DKIM1; k=rsa; p=" + public if name == f"{selector}._domainkey.{domain}.".encode() else None

    return lookup


def test_dkim_signature_verifies_covers_one_click_and_survives_relays(smtp, tmp_path, dkim_key, monkeypatch) -> None:
    # Given DKIM signing with a key from the environment
    private, public = dkim_key
    monkeypatch.setenv("LC_DKIM_KEY", private)
    options = {"dkim_selector": "lc2026", "dkim_private_key_env": "LC_DKIM_KEY"}
    # When a letter is sent to a server that offers 8BITMIME
    with transport(smtp, tmp_path, **options) as sender:
        sender.send(letter())
    raw = smtp.raw[0]
    # Then what the server received verifies against the published key
    assert raw.startswith(b"DKIM-Signature: ")
    assert dkim.verify(raw, dnsfunc=dns(public))
    signature = email.message_from_bytes(raw)["DKIM-Signature"]
    tags = dict(part.strip().split("=", 1) for part in re.sub(r"\s+", "", signature).split(";") if part)
    assert tags["d"] == "example.com" and tags["s"] == "lc2026" and tags["c"] == "relaxed/relaxed"
    signed = {name.lower() for name in tags["h"].split(":")}
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"} <= signed
    # And the body was written 7-bit, so no relay converts it
    assert raw.isascii() and b"Content-Transfer-Encoding: quoted-printable" in raw
    strict_checks(raw)
    # And what relays do keeps it valid: a Received header on top, a header folded anew, LF line ends
    relayed = b"Received: from relay.example.net by mx.example.org; Tue, 1 Dec 2026 10:00:00 +0000\r\n" + raw
    relayed = relayed.replace(b"\r\nSubject: ", b"\r\nSubject:   ", 1)
    assert dkim.verify(relayed, dnsfunc=dns(public))
    assert dkim.verify(relayed.replace(b"\r\n", b"\n"), dnsfunc=dns(public))
    # While a changed body or subject does not verify
    assert not dkim.verify(raw.replace(b"=D0=90=D0=BD=D0=BD=D0=B0", b"=D0=98=D0=B2=D0=B0=D0=BD", 1), dnsfunc=dns(public))
    tampered = re.sub(rb"\r\nSubject: [^\r]*", b"\r\nSubject: =?utf-8?b?0J/RgNC40LfRiw==?=", raw, count=1)
    assert tampered != raw and not dkim.verify(tampered, dnsfunc=dns(public))


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"dkim_private_key_env": "LC_DKIM_KEY"}, "channels.email.dkim_selector"),
        ({"dkim_selector": "lc2026"}, "channels.email.dkim_private_key_env"),
        ({"dkim_selector": "lc2026", "dkim_private_key_env": "LC_DKIM_UNSET"}, "channels.email.dkim_private_key_env"),
        ({"dkim_selector": "lc2026", "dkim_private_key_env": "LC_DKIM_BAD"}, "channels.email.dkim_private_key_env"),
        (
            {"dkim_selector": "lc2026", "dkim_private_key_env": "LC_DKIM_KEY", "dkim_domain": "other.example"},
            "channels.email.dkim_domain",
        ),
        ({"dkim_selector": "bad selector", "dkim_private_key_env": "LC_DKIM_KEY"}, "channels.email.dkim_selector"),
    ],
)
def test_dkim_configuration_errors_name_the_key(smtp, tmp_path, dkim_key, monkeypatch, options, key) -> None:
    monkeypatch.setenv("LC_DKIM_KEY", dkim_key[0])
    monkeypatch.setenv("LC_DKIM_BAD", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    monkeypatch.delenv("LC_DKIM_UNSET", raising=False)
    with pytest.raises(ChannelConfigError) as caught:
        transport(smtp, tmp_path, **options)
    assert caught.value.key == key


def test_dkim_may_sign_as_a_parent_domain(smtp, tmp_path, dkim_key, monkeypatch) -> None:
    # Given mail from news.example.com signed as example.com (DMARC's relaxed alignment)
    monkeypatch.setenv("LC_DKIM_KEY", dkim_key[0])
    options = {"dkim_selector": "lc2026", "dkim_private_key_env": "LC_DKIM_KEY", "dkim_domain": "example.com"}
    with transport(smtp, tmp_path, from_address="Ромашка <bonus@news.example.com>", **options) as sender:
        sender.send(letter())
    assert dkim.verify(smtp.raw[0], dnsfunc=dns(dkim_key[1]))
