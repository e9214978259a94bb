"""A fake SMS gateway on loopback speaking every SMS protocol loyalcast has a transport
for, each at its provider's own path: the generic JSON style (``POST /send``), Twilio's
Messages API, SMS.ru (``/sms/send``), SMSC.ru (``/sys/send.php``) and SMS Aero
(``/v2/sms/send``). A protocol (:class:`Protocol`, one module each) reads its request,
answers in its provider's shape, errors included, and posts its provider's delivery
reports back (:meth:`FakeSmsGateway.send_reports`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from typing import Any

from channels.fakes.base import Faults, HttpFake, basic_auth, post
from channels.fakes.protocol import Answer, Protocol, ReportTo
from channels.fakes.smsaero import SmsAeroProtocol
from channels.fakes.smsc import SmscProtocol
from channels.fakes.smsru import SmsRuProtocol


class JsonProtocol(Protocol):
    """The generic JSON style: ``{"to", "text", "sender", "reference"}`` in, ``{"id",
    "status"}`` out; reports ``{"id", "status", "error"}`` signed with HMAC-SHA256."""

    name, path = "json", "/send"

    def read(self, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        fields = json.loads(body or b"{}")
        return {name: fields.get(name) for name in ("to", "text", "sender", "reference")}

    def error(self, name: str, to: str) -> Answer | None:
        if name == "invalid":
            return 400, {}, {"message": f"invalid recipient number {to}"}
        if name == "no_funds":  # a gateway that says errors with 200, as many do
            return 200, {}, {"error": "insufficient balance", "code": "balance"}
        return None

    def accepted(self, message: dict[str, Any], number: int) -> tuple[str, Answer]:
        return f"gw-{number}", (200, {}, {"id": f"gw-{number}", "status": "accepted"})

    def report(self, to: ReportTo, message: dict[str, Any], status: str, error_code: str | None) -> int | None:
        if not to.url:
            return None
        body = json.dumps({"id": message["id"], "status": status, "error": error_code}).encode()
        signature = hmac.new(to.key.encode(), body, hashlib.sha256).hexdigest()
        return post(to.url, body, "application/json", {"X-Signature": f"sha256={signature}"})


class TwilioProtocol(Protocol):
    """Twilio's ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form: To, From, Body,
    StatusCallback); status callbacks signed with ``X-Twilio-Signature``."""

    name, path = "twilio", "/2010-04-01/Accounts/"

    def read(self, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        fields = dict(urllib.parse.parse_qsl(body.decode()))
        account, token = basic_auth(headers)
        return {
            "to": fields.get("To"),
            "text": fields.get("Body"),
            "sender": fields.get("From"),
            "reference": None,
            "callback": fields.get("StatusCallback"),
            "account": account,
            "token": token,
        }

    def error(self, name: str, to: str) -> Answer | None:
        if name == "invalid":
            return 400, {}, {"code": 21211, "message": f"The 'To' number {to} is not a valid phone number."}
        if name == "blocked":
            return 400, {}, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"}
        return None

    def accepted(self, message: dict[str, Any], number: int) -> tuple[str, Answer]:
        sid = f"SM{number:032x}"
        return sid, (201, {}, {"sid": sid, "status": "queued"})

    def report(self, to: ReportTo, message: dict[str, Any], status: str, error_code: str | None) -> int | None:
        if not message.get("callback"):
            return None
        form = {"MessageSid": message["id"], "MessageStatus": status, "To": message["to"], "From": message["sender"]}
        form["AccountSid"] = message["account"]
        if error_code:
            form["ErrorCode"] = error_code
        signed = message["callback"] + "".join(k + v for k, v in sorted(form.items()))
        digest = hmac.new(message["token"].encode(), signed.encode(), hashlib.sha1).digest()
        headers = {"X-Twilio-Signature": base64.b64encode(digest).decode()}
        return post(message["callback"], urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded", headers)


class FakeSmsGateway(HttpFake):
    """Every protocol of :data:`PROTOCOLS` on one port, each at its provider's path.

    ``messages`` holds each accepted message (``to``, ``text``, ``sender``,
    ``reference``, ``headers``, ``id``, ``protocol``). Delivery reports go back as the
    real ones do (:meth:`send_reports`): to the URL each message named (Twilio, SMS
    Aero) or to ``report_url``, the URL an account registers with the provider (the
    JSON style, keyed by ``report_key``; SMS.ru; SMSC)."""

    report_url: str | None = None
    report_key: str = ""

    def __init__(self, port: int = 0, faults: Faults | None = None) -> None:
        super().__init__(port, faults)
        self.protocols: list[Protocol] = [JsonProtocol(), TwilioProtocol(), SmsRuProtocol(), SmscProtocol(), SmsAeroProtocol()]

    def send_reports(self, status: str = "delivered", *, error_code: str | None = None) -> list[int]:
        """Report ``status`` (the provider's own word for the JSON style and Twilio; for
        the others ``delivered``, ``failed``, ``expired`` or ``invalid``, sent as the
        provider's code) for every message accepted so far; the HTTP status of each post."""
        answers = []
        by_name = {protocol.name: protocol for protocol in self.protocols}
        for message in list(self.messages):
            answer = by_name[message["protocol"]].report(ReportTo(self.report_url, self.report_key), message, status, error_code)
            if answer is not None:
                answers.append(answer)
        return answers

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        route = urllib.parse.urlsplit(path).path
        protocol = next((p for p in self.protocols if route == p.path or route.startswith(p.path.rstrip("/") + "/")), None)
        if protocol is None:
            return 404, {}, {"message": f"no such path {route}"}
        message = protocol.read(path, headers, body)
        to = str(message.get("to") or "")
        self.faults.pause()
        fault = self.faults.draw()
        if fault == "transient":
            return protocol.transient()
        if fault == "rate_limited":
            return 429, {"Retry-After": str(self.faults.retry_after)}, {"message": "too many requests"}
        forms = {to, to.lstrip("+"), "+" + to.lstrip("+")}  # the gateways take numbers without "+"
        if forms & self.faults.rejected:
            return protocol.rejected(to)
        named = next((self.faults.errors[form] for form in forms if form in self.faults.errors), None)
        if named:
            answer = protocol.error(named, to)
            if answer is not None:
                return answer
        with self.lock:
            message_id, answer = protocol.accepted(message, len(self.messages) + 1)
            self.messages.append({**message, "headers": headers, "id": message_id, "protocol": protocol.name})
        return answer
