"""Email over SMTP (``smtplib``): plain, STARTTLS or SSL, with authentication.

One connection is opened per batch (``open``) and reused for every message of it; a
connection the server dropped is opened again once before the send counts as failed.
Every socket operation has a timeout, because a Dramatiq time limit cannot interrupt a
blocked socket.

Bodies go 8bit with ``BODY=8BITMIME`` when the server offers it, and are rebuilt
quoted-printable when it does not; an internationalized address (either envelope
address) needs SMTPUTF8, and without it the address is ``AddressUnsupported``. With
``dkim_selector`` and ``dkim_private_key_env`` every message is DKIM-signed
(``channels.signing``), its body then always 7-bit so that relays leave it as signed.

Reply codes map onto ``channels.errors``: a 5xx for a recipient is permanent and
suppresses the address, a 4xx is transient; a timeout or a dropped connection after the
message data was sent is an unknown outcome (the server may have queued it).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field

from channels.addresses import envelope_address
from channels.base import Inbound, OutgoingMessage, SendResult, SendStatus, Transport, WebhookRequest
from channels.errors import (
    AddressUnsupported,
    ChannelConfigError,
    InvalidRecipient,
    MessageRejected,
    OutcomeUnknown,
    ProviderUnavailable,
)
from channels.mime import build_email, flatten, parse_sender
from channels.options import TransportOptions, secret
from channels.signing import DkimKeyError, Signer, aligned
from channels.webhooks import neutral_webhook

DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}


class Envelope(NamedTuple):
    """What one SMTP transaction sends: envelope addresses and the message's bytes;
    ``seven_bit`` builds the same message with 7-bit bodies (for a server without 8BITMIME)."""

    sender: str
    recipient: str
    data: bytes
    message_id: str
    seven_bit: Callable[[], bytes]


class SmtpOptions(TransportOptions):
    """``[channels.<name>]`` keys of the ``smtp`` transport."""

    transport: Literal["smtp"]
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    """Default: 25, 587 or 465 by ``security``."""
    security: Literal["none", "starttls", "ssl"] = "starttls"
    from_address: str
    username_env: str | None = None
    password_env: str | None = None
    unsubscribe_mailto: str | None = None
    """Address for the ``mailto:`` form of ``List-Unsubscribe``."""
    webhook_secret_env: str | None = None
    """Environment variable holding the key that signs delivery reports, bounces and
    complaints posted to ``/webhooks/<channel>`` in loyalcast's neutral JSON format
    (``channels.webhooks``); unset: that webhook is refused."""
    dkim_selector: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")
    """DKIM: the selector whose ``<selector>._domainkey.<domain>`` TXT record holds the public key."""
    dkim_private_key_env: str | None = None
    """DKIM: environment variable holding the private key (PEM, RSA)."""
    dkim_domain: str | None = None
    """DKIM: the signing domain (``d=``); default: the From address's domain. It must be
    that domain or a parent of it, or DMARC will not count the signature."""


class SmtpTransport(Transport):
    name = "smtp"
    channels = ("email",)
    Options = SmtpOptions

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str,
        sender: str,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        unsubscribe_mailto: str | None = None,
        webhook_key: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.webhook_key = webhook_key
        self.signer = signer
        self.host, self.port, self.security, self.timeout = host, port, security, timeout
        self.sender = parse_sender(sender)
        self.username, self.password = username, password
        self.unsubscribe_mailto = unsubscribe_mailto
        self._connection: smtplib.SMTP | None = None

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> SmtpTransport:
        assert isinstance(options, SmtpOptions)
        key = f"channels.{channel}"
        username = secret(options.username_env, f"{key}.username_env")
        password = secret(options.password_env, f"{key}.password_env")
        try:
            sender = parse_sender(options.from_address)
        except ValueError as exc:
            raise ChannelConfigError(f"{key}.from_address", str(exc)) from None
        try:
            return cls(
                options.host,
                options.port or DEFAULT_PORTS[options.security],
                security=options.security,
                sender=options.from_address,
                timeout=options.timeout.total_seconds(),
                username=username,
                password=password,
                unsubscribe_mailto=options.unsubscribe_mailto,
                webhook_key=secret(options.webhook_secret_env, f"{key}.webhook_secret_env"),
                signer=_signer(options, key, sender.domain),
            )
        except ValueError as exc:
            raise ChannelConfigError(f"{key}.from_address", str(exc)) from None

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """Bounces, complaints and deliveries in loyalcast's neutral JSON format (a relay's
        adapter posts them, signed); DSNs from a bounce mailbox go through ``channels.dsn``."""
        return neutral_webhook(self.webhook_key, request, transport=self.name, message_ids="angle")

    # -- connection --------------------------------------------------------------------

    def open(self) -> None:
        if self._connection is not None:
            return
        try:
            if self.security == "ssl":
                connection: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    connection.starttls(context=ssl.create_default_context())
            if self.username:
                connection.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise ProviderUnavailable(
                f"authentication failed: {_text(exc.smtp_error)}", provider=self.name, status=exc.smtp_code
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise ProviderUnavailable(f"cannot connect to {self.host}:{self.port}: {exc}", provider=self.name) from exc
        self._connection = connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (OSError, smtplib.SMTPException):
                connection.close()

    # -- steps -------------------------------------------------------------------------

    def prepare(self, message: OutgoingMessage) -> Envelope:
        email = self._build(message, seven_bit=self.signer is not None)
        message_id = str(email["Message-ID"])
        recipient = envelope_address(message.to, self.name)

        def seven_bit() -> bytes:
            return self._bytes(self._build(message, seven_bit=True, message_id=message_id))

        return Envelope(self.sender.addr_spec, recipient, self._bytes(email), message_id, seven_bit)

    def _build(self, message: OutgoingMessage, *, seven_bit: bool, message_id: str | None = None) -> Message:
        return build_email(
            message,
            sender=self.sender,
            provider=self.name,
            mailto_unsubscribe=self.unsubscribe_mailto,
            seven_bit=seven_bit,
            message_id=message_id,
        )

    def _bytes(self, email: Message) -> bytes:
        # Flattened here and sent with sendmail(): send_message() would parse the
        # addresses back out of the headers we just wrote.
        data = flatten(email, linesep="\r\n")
        return self.signer.sign(data) if self.signer is not None else data

    def _mail_options(self, payload: Envelope) -> tuple[list[str], bytes]:
        """MAIL FROM's options for this server, and the bytes to send it: SMTPUTF8 for an
        internationalized address (AddressUnsupported without it), BODY=8BITMIME for
        8-bit data, or the message rebuilt 7-bit when the server does not offer it."""
        assert self._connection is not None
        self._connection.ehlo_or_helo_if_needed()
        options: list[str] = []
        data = payload.data
        if not (payload.recipient.isascii() and payload.sender.isascii()):
            if not self._connection.has_extn("smtputf8"):
                address = payload.recipient if not payload.recipient.isascii() else payload.sender
                raise AddressUnsupported(
                    f"{address!r} needs SMTPUTF8, which {self.host}:{self.port} does not offer", provider=self.name
                )
            options.append("SMTPUTF8")
        if not data.isascii():
            if self._connection.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            else:
                data = payload.seven_bit()
        return options, data

    def transmit(self, payload: Envelope) -> str:
        for attempt in (1, 2):
            self.open()
            assert self._connection is not None
            try:
                options, data = self._mail_options(payload)
                self._connection.sendmail(payload.sender, [payload.recipient], data, mail_options=options)
                return payload.message_id
            except smtplib.SMTPServerDisconnected as exc:
                self._connection = None
                if attempt == 2:
                    raise OutcomeUnknown(f"connection dropped while sending: {exc}", provider=self.name) from exc
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                raise self._recipient_error(code, text) from exc
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code >= 500:
                    raise MessageRejected(_text(exc.smtp_error), provider=self.name, status=exc.smtp_code) from exc
                raise ProviderUnavailable(_text(exc.smtp_error), provider=self.name, status=exc.smtp_code) from exc
            except TimeoutError as exc:
                self._drop()
                raise OutcomeUnknown(f"no answer within {self.timeout:g} s", provider=self.name) from exc
            except OSError as exc:
                self._drop()
                raise ProviderUnavailable(str(exc), provider=self.name) from exc
        raise AssertionError("unreachable")

    def _recipient_error(self, code: int, text: bytes) -> Exception:
        if code >= 500:
            return InvalidRecipient(_text(text), provider=self.name, status=code)
        return ProviderUnavailable(_text(text), provider=self.name, status=code)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def result(self, response: str) -> SendResult:
        return SendResult(SendStatus.SENT, provider_message_id=response)


def _signer(options: SmtpOptions, key: str, from_domain: str) -> Signer | None:
    """The DKIM signer the options describe, or None; ChannelConfigError names the key."""
    if options.dkim_selector is None and options.dkim_private_key_env is None:
        if options.dkim_domain is not None:
            raise ChannelConfigError(f"{key}.dkim_selector", "required with dkim_domain (and dkim_private_key_env)")
        return None
    if options.dkim_selector is None:
        raise ChannelConfigError(f"{key}.dkim_selector", "required with dkim_private_key_env")
    private_key = secret(options.dkim_private_key_env, f"{key}.dkim_private_key_env", required=True) or ""
    domain = options.dkim_domain or from_domain
    if not aligned(from_domain, domain):
        raise ChannelConfigError(
            f"{key}.dkim_domain", f"{domain!r} is neither the From domain {from_domain!r} nor a parent of it (DMARC alignment)"
        )
    try:
        return Signer(domain, options.dkim_selector, private_key.encode())
    except DkimKeyError as exc:
        raise ChannelConfigError(f"{key}.dkim_private_key_env", str(exc)) from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
