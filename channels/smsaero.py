"""SMS through SMS Aero's API v2 (``transport = "smsaero"``).

Sending: ``POST {base_url}/sms/send`` with HTTP basic authentication (the account's
email and API key) and a JSON body (``number`` in international digits, ``text``,
``sign`` = the sender name, ``callbackUrl`` when ``status_callback`` is set). SMS Aero
answers ``{"success": true, "data": {"id", ...}}`` when it takes the message and
``{"success": false, "message": ..., "data": ...}`` when not, with HTTP 200 for a
refused message and 401 for refused credentials. It has no error codes, so the
answer's words decide:

- a validation error naming ``number`` → ``InvalidRecipient`` (suppressed);
- refused credentials (401/403), "insufficient funds"/"balance", a validation error
  naming ``sign`` (sender name not approved) → ``AccountProblem``: transient, retried,
  an alert;
- anything else refused (``text``, moderation) → ``MessageRejected``.

Delivery reports: SMS Aero posts each message's ``callbackUrl`` its status as JSON (or
a form): ``id``, ``status``. 1 delivered ``delivered``; 2 not delivered ``failed``; 6
rejected ``failed``; 0 queued, 3 passed on, 4 awaiting a status, 8 moderation audit only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import requests

from channels.base import DeliveryEvent, EventKind, Inbound, OutgoingMessage, WebhookRequest
from channels.errors import (
    AccountProblem,
    InvalidRecipient,
    MalformedWebhook,
    MessageRejected,
    OutcomeUnknown,
)
from channels.gateway import GatewayOptions, GatewayTransport, Link, Payload
from channels.options import TransportOptions, secret
from channels.webhooks import check_url_secret, form_body, json_body, require_callback_secret, with_secret

STATUSES: dict[int, EventKind | None] = {
    0: None,
    1: EventKind.DELIVERED,
    2: EventKind.FAILED,
    3: None,
    4: None,
    6: EventKind.FAILED,
    8: None,
}
STATUS_WORDS = {0: "queued", 1: "delivered", 2: "not delivered", 3: "passed on", 4: "awaiting status", 6: "rejected"}
STATUS_WORDS[8] = "moderation"
ACCOUNT_WORDS = ("insufficient", "balance", "funds", "credentials", "недостаточно", "баланс")


class SmsAeroOptions(GatewayOptions):
    """``[channels.<name>]`` keys of the ``smsaero`` transport."""

    transport: Literal["smsaero"]
    email: str
    """The SMS Aero account's email (the basic-auth user)."""
    api_key_env: str
    """Environment variable holding the account's API key."""
    status_callback: str | None = None
    """The URL SMS Aero posts each message's status to, exactly as it should call it:
    ``https://<public host>/webhooks/<channel>``; loyalcast adds ``?secret=`` (from
    ``callback_secret_env``) itself."""


class SmsAeroTransport(GatewayTransport):
    name = "smsaero"
    Options = SmsAeroOptions
    send_path = "/sms/send"

    def __init__(self, link: Link, *, email: str, api_key: str, status_callback: str | None) -> None:
        super().__init__(link)
        self.client.session.auth = (email, api_key)
        self.callback_url = with_secret(status_callback, link.callback_secret)

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> SmsAeroTransport:
        assert isinstance(options, SmsAeroOptions)
        key = f"channels.{channel}"
        require_callback_secret(options.status_callback, options.callback_secret_env, key)
        api_key = secret(options.api_key_env, f"{key}.api_key_env", required=True) or ""
        link = Link.from_options(options, key, "https://gate.smsaero.ru/v2")
        return cls(link, email=options.email, api_key=api_key, status_callback=options.status_callback)

    def request(self, message: OutgoingMessage, to: str) -> dict[str, Any]:
        body = {"number": to, "text": message.text or "", "sign": self.sender or "SMS Aero"}
        if self.callback_url:
            body["callbackUrl"] = self.callback_url
        return {"json": body}

    def read(self, response: requests.Response, body: Any, payload: Payload) -> str:
        if not isinstance(body, dict):
            if response.status_code >= 400:
                raise MessageRejected(response.text[:200] or response.reason, provider=self.name, status=response.status_code)
            raise OutcomeUnknown(f"not SMS Aero's JSON answer: {response.text[:200]!r}", provider=self.name, status=200)
        data = body.get("data")
        if body.get("success") is True and response.status_code < 400:
            if not isinstance(data, dict) or data.get("id") is None:
                raise OutcomeUnknown(f"accepted without a message id: {str(body)[:200]}", provider=self.name, status=200)
            return str(data["id"])
        raise self.error(body, response.status_code)

    def error(self, body: dict[str, Any], status: int) -> Exception:
        """The error of the tree a refusal's words and fields mean."""
        message = str(body.get("message") or "refused")
        data = body.get("data")
        fields: dict[str, Any] = data if isinstance(data, dict) else {}
        said = (message + (f" {json.dumps(fields, ensure_ascii=False)}" if fields else ""))[:300]
        where: dict[str, Any] = {"provider": self.name, "status": status}
        if "number" in fields:
            return InvalidRecipient(said, **where)
        if status in (401, 403) or "sign" in fields or any(word in message.lower() for word in ACCOUNT_WORDS):
            return AccountProblem(said, **where)
        return MessageRejected(said, **where)

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """SMS Aero's status post to a message's ``callbackUrl``: ``id`` and ``status``."""
        check_url_secret(self.callback_secret, request, key="callback_secret_env")
        report = json_body(request) if "json" in request.content_type else dict(form_body(request))
        if not isinstance(report, dict):
            raise MalformedWebhook("must be an object", field="body")
        message_id = report.get("id")
        if message_id is None or message_id == "":
            raise MalformedWebhook("required", field="body.id")
        try:
            code = int(report.get("status"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise MalformedWebhook(f"not a status code: {str(report.get('status'))[:20]!r}", field="body.status") from None
        extended = str(report.get("extendStatus") or STATUS_WORDS.get(code, "in progress"))
        return Inbound(
            events=[
                DeliveryEvent(
                    key=f"{message_id}:{code}",
                    kind=STATUSES.get(code),
                    provider_message_id=str(message_id),
                    recipient=str(report.get("number") or "") or None,
                    reason=f"SMS Aero {code} ({extended})",
                    raw=json.dumps(report, ensure_ascii=False),
                )
            ]
        )
