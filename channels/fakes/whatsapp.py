"""A fake of Meta's WhatsApp Business Cloud API on loopback.

``POST /v<version>/<phone_number_id>/messages`` with ``Authorization: Bearer <token>``,
answered as the Cloud API does: ``{"messaging_product", "contacts", "messages":
[{"id": "wamid..."}]}``, or ``{"error": {"message", "type", "code", "error_data",
"fbtrace_id"}}``. Like the real service it accepts free text to a number whose 24-hour
window is closed and reports it ``failed`` (131047) afterwards, and it refuses a
template it does not know (132001) or one given the wrong number of parameters (132000)
when told which templates are approved.

The way back, signed as Meta signs it (``X-Hub-Signature-256`` under the app secret):
:meth:`FakeWhatsApp.send_reports` posts statuses of the accepted messages,
:meth:`FakeWhatsApp.member_writes` posts a member's message (which opens their window),
and :meth:`FakeWhatsApp.subscribe` makes the GET subscription check with a challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from channels.fakes.base import Faults, HttpFake, post

PATH = re.compile(r"^/v\d+\.\d+/(\d+)/messages$")
WINDOW_S = 24 * 3600

ERRORS: dict[str, tuple[int, int, str]] = {
    # Faults.errors name: (HTTP status, Cloud API code, message)
    "token": (401, 190, "Error validating access token: Session has expired"),
    "payment": (400, 131042, "Business eligibility payment issue"),
    "not_allowed": (400, 131030, "Recipient phone number not in allowed list"),
    "pair_limit": (400, 131056, "(Business Account, Consumer Account) pair rate limit hit"),
    "spam_limit": (400, 131048, "Spam rate limit hit"),
    "throughput": (400, 130429, "Rate limit hit"),
    "template_paused": (400, 132015, "Template is paused"),
    "unavailable": (400, 131016, "Service unavailable"),
}
"""Refusals a test can ask for by name; ``undeliverable`` (accepted, then reported
failed with 131026) is the asynchronous one."""


def _error(status: int, code: int, message: str, details: str | None = None) -> tuple[int, dict[str, str], Any]:
    error: dict[str, Any] = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code, "fbtrace_id": "Afake"}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return status, {}, {"error": error}


class FakeWhatsApp(HttpFake):
    """``messages`` holds each accepted message: ``to``, ``type``, ``text`` (free text),
    ``template`` (the template object as posted), ``reference`` (our
    ``biz_opaque_callback_data``), ``id`` (the wamid), ``phone_number_id`` and
    ``outside_window`` (free text sent while the window was closed).

    ``templates`` maps approved ``(name, language)`` to their number of body parameters;
    None accepts any template. ``webhook`` and ``app_secret`` are what the app's webhook
    settings hold: where statuses and members' messages go, and the key signing them.
    ``Faults.errors`` names a refusal of :data:`ERRORS`, or ``undeliverable``."""

    def __init__(
        self,
        port: int = 0,
        faults: Faults | None = None,
        *,
        access_token: str | None = None,
        templates: dict[tuple[str, str], int] | None = None,
        webhook: str | None = None,
        app_secret: str = "app-secret",
    ) -> None:
        super().__init__(port, faults)
        self.access_token, self.templates = access_token, templates
        self.webhook, self.app_secret = webhook, app_secret
        self.last_inbound: dict[str, float] = {}
        """Number (digits) → when the member last wrote (Unix seconds)."""
        self._inbound = 0

    # -- the way back ------------------------------------------------------------------

    def _notify(self, value: dict[str, Any]) -> int:
        assert self.webhook, "set FakeWhatsApp.webhook to the app's callback URL first"
        document = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
        }
        body = json.dumps(document).encode()
        signature = "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()
        return post(self.webhook, body, "application/json", {"X-Hub-Signature-256": signature})

    @staticmethod
    def _metadata(phone_number_id: str) -> dict[str, str]:
        return {"display_phone_number": "15550001111", "phone_number_id": phone_number_id}

    def send_reports(self, status: str = "delivered") -> list[int]:
        """Post ``status`` (``sent``, ``delivered``, ``read``, ``failed``) for every message
        accepted so far, one notification each; free text sent outside the window, and a
        number named ``undeliverable``, are reported failed whatever was asked, as
        WhatsApp does. The HTTP status of each post."""
        answers = []
        for message in list(self.messages):
            item: dict[str, Any] = {
                "id": message["id"],
                "status": status,
                "timestamp": str(int(time.time())),
                "recipient_id": message["to"],
                "biz_opaque_callback_data": message["reference"],
            }
            failure = None
            if message["outside_window"]:
                failure = (131047, "Re-engagement message", "Message failed to send because more than 24 hours have passed")
            elif message["undeliverable"] or status == "failed":
                failure = (131026, "Message undeliverable", "Unable to deliver message")
            if failure is not None:
                code, title, details = failure
                item["status"] = "failed"
                item["errors"] = [{"code": code, "title": title, "message": title, "error_data": {"details": details}}]
            value = {"messaging_product": "whatsapp", "metadata": self._metadata(message["phone_number_id"]), "statuses": [item]}
            answers.append(self._notify(value))
        return answers

    def member_writes(self, number: str, text: str, *, phone_number_id: str = "1000000001", kind: str = "text") -> int:
        """A member writes to the business (``number`` as digits or E.164): their window
        opens, and the message is posted to the webhook; its HTTP status."""
        digits = number.lstrip("+")
        now = time.time()
        with self.lock:
            self.last_inbound[digits] = now
            self._inbound += 1
            key = f"wamid.in{self._inbound:06d}"
        message: dict[str, Any] = {"from": digits, "id": key, "timestamp": str(int(now)), "type": kind}
        if kind == "text":
            message["text"] = {"body": text}
        elif kind == "button":
            message["button"] = {"text": text, "payload": text}
        value = {
            "messaging_product": "whatsapp",
            "metadata": self._metadata(phone_number_id),
            "contacts": [{"profile": {"name": "Member"}, "wa_id": digits}],
            "messages": [message],
        }
        return self._notify(value)

    def subscribe(self, url: str, verify_token: str) -> tuple[int, str, str]:
        """Meta's subscription check of ``url``: ``(HTTP status, answer, challenge sent)``."""
        challenge = str(secrets.randbelow(10**9))
        query = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge})
        try:
            with urllib.request.urlopen(f"{url}?{query}", timeout=10) as answer:
                return answer.status, answer.read().decode(), challenge
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), challenge

    # -- the Cloud API ---------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        matched = PATH.match(path.split("?")[0])
        if matched is None:
            return _error(404, 100, f"Unknown path components: {path}")
        token = (headers.get("Authorization") or headers.get("authorization") or "").removeprefix("Bearer ")
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            return _error(400, 100, "Invalid parameter", "the body is not JSON")
        to = str(document.get("to") or "").lstrip("+")
        self.faults.pause()
        fault = self.faults.draw()
        if fault == "transient":
            return 500, {}, {"error": {"message": "An unknown error occurred", "type": "OAuthException", "code": 1}}
        if fault == "rate_limited":
            status, _, answer = _error(429, 130429, "Rate limit hit")
            return status, {"Retry-After": str(self.faults.retry_after)}, answer
        named = self.faults.errors.get(to) or self.faults.errors.get("+" + to)
        if (self.access_token is not None and token != self.access_token) or named == "token":
            return _error(*ERRORS["token"])
        if named in ERRORS:
            return _error(*ERRORS[named])
        if document.get("messaging_product") != "whatsapp":
            return _error(400, 100, "Invalid parameter", "messaging_product must be whatsapp")
        if not to.isdigit() or to in self.faults.rejected or "+" + to in self.faults.rejected:
            return _error(400, 100, "Invalid parameter", "Invalid parameter: to")
        kind = document.get("type")
        template = document.get("template") if kind == "template" else None
        if kind == "template":
            refused = self._refuse_template(template)
            if refused is not None:
                return refused
        elif kind != "text" or not ((document.get("text") or {}).get("body")):
            return _error(400, 131008, "Required parameter is missing", "text.body or a template is required")
        with self.lock:
            opened = self.last_inbound.get(to)
            number = len(self.messages) + 1
            message_id = f"wamid.fake{number:08d}"
            self.messages.append(
                {
                    "to": to,
                    "type": kind,
                    "text": (document.get("text") or {}).get("body") if kind == "text" else None,
                    "template": template,
                    "reference": document.get("biz_opaque_callback_data"),
                    "id": message_id,
                    "phone_number_id": matched.group(1),
                    "outside_window": kind == "text" and (opened is None or time.time() - opened > WINDOW_S),
                    "undeliverable": named == "undeliverable",
                    "token": token,
                }
            )
        answer = {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": message_id}]}
        return 200, {}, answer

    def _refuse_template(self, template: Any) -> tuple[int, dict[str, str], Any] | None:
        if not isinstance(template, dict) or not template.get("name") or not (template.get("language") or {}).get("code"):
            return _error(400, 131008, "Required parameter is missing", "template.name and template.language.code")
        if self.templates is None:
            return None
        key = (template["name"], template["language"]["code"])
        if key not in self.templates:
            return _error(400, 132001, "Template name does not exist in the translation", f"{key[0]} ({key[1]})")
        body: dict[str, Any] = next((c for c in template.get("components") or [] if c.get("type") == "body"), {})
        given = body.get("parameters") or []
        if len(given) != self.templates[key] or any(not (p.get("text") or "").strip() for p in given):
            return _error(400, 132000, "Number of parameters does not match the expected number of params", f"{len(given)} given")
        return None
