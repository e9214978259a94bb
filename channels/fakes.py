"""Fake providers speaking the real protocols on loopback, for tests and for trying real
transports locally (``loyalcast fakes``): an SMTP server (aiosmtpd), an SMS gateway
(the generic JSON style and Twilio's Messages API) and a Telegram Bot API server.

Each records what it accepted and can be told to fail (``Faults``): a share of
transient failures, "slow down" answers with a wait, answers slower than any timeout,
rejected recipients, blocked chats. Failures are drawn from a seeded generator, so a
test sees the same sequence every run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Faults:
    """What a fake provider does wrong. Thread-safe to change while it runs."""

    transient_rate: float = 0.0
    """Share of requests answered with a transient failure (SMTP 451, HTTP 503)."""
    rate_limit_rate: float = 0.0
    """Share answered "slow down" (HTTP 429 with Retry-After, Telegram retry_after)."""
    retry_after: int = 1
    slow_seconds: float = 0.0
    """Delay before answering (past the client's timeout, an unknown outcome)."""
    rejected: set[str] = field(default_factory=set)
    """Addresses, numbers or chat ids refused as invalid (SMTP 550, HTTP 400, chat not found)."""
    blocked: set[str] = field(default_factory=set)
    """Chat ids that blocked the bot (Telegram 403)."""
    seed: int = 7

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        """``"transient"``, ``"rate_limited"`` or None for this request."""
        with self._lock:
            roll = self._random.random()
        if roll < self.transient_rate:
            return "transient"
        if roll < self.transient_rate + self.rate_limit_rate:
            return "rate_limited"
        return None

    def pause(self) -> None:
        if self.slow_seconds:
            time.sleep(self.slow_seconds)


# --- SMTP -------------------------------------------------------------------------------


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

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.server.faults.slow_seconds:  # without blocking the server's event loop
            await asyncio.sleep(self.server.faults.slow_seconds)
        content = envelope.content if isinstance(envelope.content, bytes) else (envelope.content or "").encode()
        parsed = message_from_bytes(content, policy=policy.default)
        with self.server.lock:
            self.server.messages.append(parsed)
            self.server.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
        return "250 2.0.0 Queued"


class FakeSmtpServer:
    """An SMTP server on loopback (no TLS); ``messages`` holds every accepted message and
    ``envelopes`` its ``(MAIL FROM, [RCPT TO, ...])``.

    With ``login=(user, password)`` it requires AUTH (PLAIN or LOGIN) before mail;
    ``smtputf8=False`` leaves the SMTPUTF8 extension out of its EHLO answer.
    """

    def __init__(
        self, port: int = 0, faults: Faults | None = None, login: tuple[str, str] | None = None, smtputf8: bool = True
    ) -> None:
        self.faults = faults or Faults()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        options: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if login is not None:

            def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
                given = (data.login.decode(), data.password.decode()) if isinstance(data, LoginPassword) else None
                return AuthResult(success=given == login)

            options.update(authenticator=authenticate, auth_required=True, auth_require_tls=False)
        self.controller = Controller(_SmtpHandler(self), hostname="127.0.0.1", port=port or _free_port(), **options)

    @property
    def address(self) -> tuple[str, int]:
        return self.controller.hostname, self.controller.port

    def start(self) -> FakeSmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


# --- HTTP servers -------------------------------------------------------------------------


class _HttpFake:
    """Base of the HTTP fakes: a threading server, a request log, and JSON answers."""

    def __init__(self, port: int = 0, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, headers, document = fake.handle(self.path, dict(self.headers), body)
                payload = json.dumps(document).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(payload))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> _HttpFake:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, message: dict[str, Any]) -> int:
        with self.lock:
            self.messages.append(message)
            return len(self.messages)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        raise NotImplementedError


class FakeSmsGateway(_HttpFake):
    """``POST /send`` (JSON: to, text, sender, reference) and Twilio's
    ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form: To, From, Body,
    StatusCallback).

    Delivery reports go back as the real ones do: :meth:`send_reports` posts Twilio's
    status callback (form, ``X-Twilio-Signature`` keyed by the auth token the message
    was sent with) to each message's ``StatusCallback``, or the json style's report
    (``{"id", "status", "error"}``, HMAC-SHA256 of the body in ``X-Signature``) to
    ``report_url`` under ``report_key``."""

    report_url: str | None = None
    report_key: str = ""

    def send_reports(self, status: str = "delivered", *, error_code: str | None = None) -> list[int]:
        """Report ``status`` for every message accepted so far; the HTTP status of each post."""
        answers = []
        for message in list(self.messages):
            if message.get("twilio"):
                if not message.get("callback"):
                    continue
                form = {"MessageSid": message["id"], "MessageStatus": status, "To": message["to"], "From": message["sender"]}
                form["AccountSid"] = message["account"]
                if error_code:
                    form["ErrorCode"] = error_code
                signed = message["callback"] + "".join(k + v for k, v in sorted(form.items()))
                digest = hmac.new(message["token"].encode(), signed.encode(), hashlib.sha1).digest()
                headers = {"X-Twilio-Signature": base64.b64encode(digest).decode()}
                answers.append(
                    _post(
                        message["callback"], urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded", headers
                    )
                )
            elif self.report_url:
                body = json.dumps({"id": message["id"], "status": status, "error": error_code}).encode()
                signature = hmac.new(self.report_key.encode(), body, hashlib.sha256).hexdigest()
                answers.append(_post(self.report_url, body, "application/json", {"X-Signature": f"sha256={signature}"}))
        return answers

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        twilio = path.startswith("/2010-04-01/Accounts/")
        fields = dict(urllib.parse.parse_qsl(body.decode())) if twilio else json.loads(body or b"{}")
        to = fields.get("To") if twilio else fields.get("to")
        self.faults.pause()
        fault = self.faults.draw()
        if fault == "transient":
            return 503, {}, {"message": "gateway overloaded"}
        if fault == "rate_limited":
            return 429, {"Retry-After": str(self.faults.retry_after)}, {"message": "too many requests"}
        if to in self.faults.rejected:
            if twilio:
                return 400, {}, {"code": 21211, "message": f"The 'To' number {to} is not a valid phone number."}
            return 400, {}, {"message": f"invalid recipient number {to}"}
        with self.lock:
            number = len(self.messages) + 1
            message = {
                "to": to,
                "text": fields.get("Body") if twilio else fields.get("text"),
                "sender": fields.get("From") if twilio else fields.get("sender"),
                "reference": None if twilio else fields.get("reference"),
                "headers": headers,
                "id": f"SM{number:032x}" if twilio else f"gw-{number}",
                "twilio": twilio,
            }
            if twilio:
                account, _, token = _basic_auth(headers)
                message |= {"callback": fields.get("StatusCallback"), "account": account, "token": token}
            self.messages.append(message)
        if twilio:
            return 201, {}, {"sid": message["id"], "status": "queued"}
        return 200, {}, {"id": message["id"], "status": "accepted"}


class FakeTelegramApi(_HttpFake):
    """The Bot API at ``/bot<token>/<method>``: ``getMe`` and ``sendMessage``, and the
    update side: ``setWebhook`` (with ``secret_token``), ``deleteWebhook`` and
    ``getUpdates`` (long polling with ``offset`` and ``timeout``; refused with 409 while
    a webhook is set, as Telegram does).

    :meth:`member_sends` plays a member writing to the bot (``/start <token>``): with a
    webhook set, the update is posted to it with the secret token, and a ``sendMessage``
    in the answer (the Bot API's reply-in-response) is recorded like a sent message;
    otherwise it waits for ``getUpdates``."""

    def __init__(self, port: int = 0, faults: Faults | None = None) -> None:
        super().__init__(port, faults)
        self.updates: list[dict[str, Any]] = []
        self.webhook: tuple[str, str | None] | None = None
        self._next_update = 1
        self._arrived = threading.Condition(self.lock)

    def member_sends(self, chat_id: int, text: str, *, language: str | None = "ru", blocked: bool = False) -> int | None:
        """A private message (or, with ``blocked``, the member blocking the bot); the
        webhook's HTTP status when one is set, else None (queued for getUpdates)."""
        with self.lock:
            update: dict[str, Any] = {"update_id": self._next_update}
            self._next_update += 1
            chat = {"id": chat_id, "type": "private", "first_name": "Member"}
            sender = {"id": chat_id, "is_bot": False, "first_name": "Member", **({"language_code": language} if language else {})}
            if blocked:
                update["my_chat_member"] = {
                    "chat": chat,
                    "from": sender,
                    "date": int(time.time()),
                    "old_chat_member": {"status": "member", "user": {"id": 1, "is_bot": True, "first_name": "loyalcast"}},
                    "new_chat_member": {
                        "status": "kicked",
                        "until_date": 0,
                        "user": {"id": 1, "is_bot": True, "first_name": "loyalcast"},
                    },
                }
            else:
                update["message"] = {"message_id": update["update_id"], "date": int(time.time()), "chat": chat, "from": sender}
                update["message"]["text"] = text
            webhook = self.webhook
            if webhook is None:
                self.updates.append(update)
                self._arrived.notify_all()
                return None
        url, secret = webhook
        request = urllib.request.Request(
            url,
            data=json.dumps(update).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **({"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                document = json.loads(answer.read() or b"{}")
                status: int = answer.status
        except urllib.error.HTTPError as exc:
            return exc.code
        if isinstance(document, dict) and document.get("method") == "sendMessage":
            self.record({"chat_id": str(document.get("chat_id")), "text": document.get("text", ""), "via": "webhook answer"})
        return status

    def _updates(self, fields: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        offset = int(fields.get("offset") or 0)
        wait = min(float(fields.get("timeout") or 0), 5.0)
        with self.lock:
            if self.webhook is not None:
                conflict = (
                    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
                )
                return 409, {}, {"ok": False, "error_code": 409, "description": conflict}
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            if not self.updates and wait:
                self._arrived.wait(wait)
            return 200, {}, {"ok": True, "result": list(self.updates)}

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        method = path.rsplit("/", 1)[-1]
        content_type = headers.get("Content-Type", headers.get("content-type", ""))
        if "json" in content_type:
            fields = json.loads(body or b"{}")
        else:
            fields = dict(urllib.parse.parse_qsl(body.decode()))
        if method == "getUpdates":
            return self._updates(fields)
        if method == "setWebhook":
            with self.lock:
                self.webhook = (str(fields["url"]), fields.get("secret_token")) if fields.get("url") else None
            return 200, {}, {"ok": True, "result": True, "description": "Webhook was set"}
        if method == "deleteWebhook":
            with self.lock:
                self.webhook = None
            return 200, {}, {"ok": True, "result": True, "description": "Webhook was deleted"}
        if method == "getMe":
            return (
                200,
                {},
                {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "loyalcast", "username": "loyalcast_bot"}},
            )
        if method != "sendMessage":
            return 404, {}, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
        chat_id = str(fields.get("chat_id"))
        self.faults.pause()
        fault = self.faults.draw()
        if fault == "transient":
            return 502, {}, {"ok": False, "error_code": 502, "description": "Bad Gateway"}
        if fault == "rate_limited":
            wait = self.faults.retry_after
            return (
                429,
                {},
                {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {wait}",
                    "parameters": {"retry_after": wait},
                },
            )
        if chat_id in self.faults.blocked:
            return 403, {}, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}
        if chat_id in self.faults.rejected:
            return 400, {}, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
        text = fields.get("text", "")
        if len(text) > 4096:
            return 400, {}, {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}
        number = self.record({"chat_id": chat_id, "text": text, "parse_mode": fields.get("parse_mode"), "received": time.time()})
        return (
            200,
            {},
            {
                "ok": True,
                "result": {
                    "message_id": number,
                    "date": int(time.time()),
                    "text": text,
                    "chat": {"id": int(chat_id), "type": "private"},
                    "from": {"id": 1, "is_bot": True, "first_name": "loyalcast"},
                },
            },
        )


def _basic_auth(headers: dict[str, str]) -> tuple[str, str, str]:
    value = headers.get("Authorization") or headers.get("authorization") or ""
    if not value.startswith("Basic "):
        return "", "", ""
    user, _, password = base64.b64decode(value[6:]).decode().partition(":")
    return user, "", password


def _post(url: str, body: bytes, content_type: str, headers: dict[str, str]) -> int:
    """POST as a provider does; the answer's status (an HTTP error is a status too)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
