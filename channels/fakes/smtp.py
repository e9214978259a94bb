"""A fake SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from channels.fakes.base import Faults, free_port


class _SmtpHandler:
    def __init__(self, server: FakeSmtpServer) -> None:
        self.server = server

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address in self.server.faults.rejected:
            return "550 5.1.1 No such user here"
        if self.server.faults.draw() == "transient":
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.server.eight_bit:
            return responses
        return [line for line in responses if "8BITMIME" not in line]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.server.faults.slow_seconds:  # without blocking the server's event loop
            await asyncio.sleep(self.server.faults.slow_seconds)
        raw = envelope.original_content or b""
        declared = {option.upper() for option in envelope.mail_options}
        if not raw.isascii() and not declared & {"BODY=8BITMIME", "SMTPUTF8"}:
            # RFC 6152: 8-bit data only after BODY=8BITMIME, and only to a server offering it
            return "554 5.6.1 8-bit data without BODY=8BITMIME"
        content = envelope.content if isinstance(envelope.content, bytes) else (envelope.content or "").encode()
        parsed = message_from_bytes(content, policy=policy.default)
        with self.server.lock:
            self.server.messages.append(parsed)
            self.server.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
            self.server.raw.append(raw)
            self.server.mail_options.append(list(envelope.mail_options))
        return "250 2.0.0 Queued"


class FakeSmtpServer:
    """An SMTP server on loopback (no TLS); ``messages`` holds every accepted message and
    ``envelopes`` its ``(MAIL FROM, [RCPT TO, ...])``.

    ``raw`` holds each message's bytes as received and ``mail_options`` its MAIL FROM
    parameters. With ``login=(user, password)`` it requires AUTH (PLAIN or LOGIN) before
    mail; ``smtputf8=False`` leaves the SMTPUTF8 extension out of its EHLO answer, and
    ``eight_bit=False`` 8BITMIME. 8-bit data without ``BODY=8BITMIME`` (or SMTPUTF8) is
    refused, as RFC 6152 allows.
    """

    def __init__(
        self,
        port: int = 0,
        faults: Faults | None = None,
        login: tuple[str, str] | None = None,
        smtputf8: bool = True,
        eight_bit: bool = True,
    ) -> None:
        self.faults = faults or Faults()
        self.eight_bit = eight_bit
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.raw: list[bytes] = []
        self.mail_options: list[list[str]] = []
        self.lock = threading.Lock()
        options: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if login is not None:

            def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
                given = (data.login.decode(), data.password.decode()) if isinstance(data, LoginPassword) else None
                return AuthResult(success=given == login)

            options.update(authenticator=authenticate, auth_required=True, auth_require_tls=False)
        self.controller = Controller(_SmtpHandler(self), hostname="127.0.0.1", port=port or free_port(), **options)

    @property
    def address(self) -> tuple[str, int]:
        return self.controller.hostname, self.controller.port

    def start(self) -> FakeSmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
