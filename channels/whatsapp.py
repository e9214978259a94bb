"""WhatsApp through Meta's WhatsApp Business Cloud API (``transport = "whatsapp_cloud"``,
channel ``whatsapp``).

Why a thin ``requests`` client and not a WhatsApp library: sending is one endpoint and
two payload shapes, and the rest of the contract (the error tree, the shared keep-alive
session and timeouts of ``channels.http``, webhooks parsed into loyalcast's events) is
ours either way; the maintained clients (pywa, heyoo) bring their own HTTP stack, an
event loop or a web framework for webhooks, and would hide the error codes this module
has to map one by one.

Sending: ``POST {base_url}/{phone_number_id}/messages`` with ``Authorization: Bearer
<access token>``, ``messaging_product: whatsapp``, ``to`` (international digits) and
either

- ``type: text`` — free text, only while the member's customer service window is open
  (they wrote to us within 24 hours: ``OutgoingMessage.session_open``, decided by the
  deliverer from the messages this channel's webhook received), or
- ``type: template`` — the approved template (``OutgoingMessage.approved``: name,
  language, header/body/button parameters), which is what a business-initiated message
  outside the window must be.

Our ledger id travels as ``biz_opaque_callback_data`` and comes back in status reports.
The answer is ``{"messages": [{"id": "wamid..."}]}``: accepted, not delivered; the
outcome comes later by webhook. Refusals are ``{"error": {"code", "message",
"error_data": {"details"}}}``, mapped by code:

- 4, 80007, 130429 (throughput), 131056 (too many to one number), 131048 (spam rate
  limit) → ``RateLimited`` (a minute; 131056 a minute; 131048 an hour);
- 0, 3, 10, 190, 200-299 (token or permission), 368 (blocked for policy), 131031
  (account locked), 131042 (payment), 133010 (number not registered), 132015 (template
  paused for quality; it resumes) → ``AccountProblem``: retried, and an alert;
- 1, 2, 131000, 131016, 133004 → ``ProviderUnavailable``;
- 131021 (recipient is the sender), 100/131009 naming the ``to`` parameter →
  ``InvalidRecipient``;
- everything else (131026 undeliverable, 131030 not in a test account's allowed list,
  131047 outside the window, 131049/131050 Meta's or the member's marketing limits,
  132000-132016 template problems) → ``MessageRejected``: permanent for this message,
  the number not suppressed (it still takes SMS, and WhatsApp tomorrow).

Webhooks at ``/webhooks/whatsapp``: Meta signs each POST with ``X-Hub-Signature-256``
(HMAC-SHA256 of the body under the app secret, ``app_secret_env``) and checks the URL
once with a GET (``hub.mode=subscribe``, ``hub.verify_token`` = ``verify_token_env``'s
value, answered with ``hub.challenge``). A POST carries ``entry[].changes[].value`` with
``statuses`` (``sent`` audit only; ``delivered`` and ``read`` → delivered; ``failed``
→ failed, its error code in the reason) and ``messages`` (what members wrote: each
opens their 24-hour window, and a stop word unsubscribes them from marketing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import requests
from pydantic import Field

from channels.addresses import normalize_number
from channels.base import (
    ApprovedTemplate,
    DeliveryEvent,
    EventKind,
    Inbound,
    InboundMessage,
    OutgoingMessage,
    SendResult,
    SendStatus,
    Transport,
    WebhookRequest,
)
from channels.errors import (
    AccountProblem,
    ChannelError,
    InvalidRecipient,
    MalformedWebhook,
    MessageRejected,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    WebhookUnsupported,
)
from channels.http import HttpClient, document
from channels.options import TransportOptions, secret
from channels.webhooks import MAX_EVENTS, check_hmac, check_secret, json_body, text, timestamp

SIGNATURE_HEADER = "x-hub-signature-256"
MAX_TEXT = 4096
"""Longest free text WhatsApp takes, in characters."""

RATE_LIMITS: dict[int, float] = {4: 60.0, 80007: 60.0, 130429: 60.0, 131056: 60.0, 131048: 3600.0}
"""Codes that mean "slow down", with the seconds to wait."""
ACCOUNT = {0, 3, 10, 190, 368, 131031, 131042, 133010, 132015, *range(200, 300)}
UNAVAILABLE = {1, 2, 131000, 131016, 133004}
BAD_RECIPIENT = {131021}
STATUSES: dict[str, EventKind | None] = {
    "sent": None,
    "delivered": EventKind.DELIVERED,
    "read": EventKind.DELIVERED,
    "failed": EventKind.FAILED,
    "deleted": None,
    "warning": None,
}
"""WhatsApp's message statuses onto loyalcast's events (``read`` implies delivered)."""


class WhatsAppCloudOptions(TransportOptions):
    """``[channels.whatsapp]`` keys of the ``whatsapp_cloud`` transport."""

    transport: Literal["whatsapp_cloud"]
    base_url: str = "https://graph.facebook.com/v21.0"
    """The Graph API with its version."""
    phone_number_id: str = Field(pattern=r"^\d{1,30}$")
    """The business phone number's id in WhatsApp Manager (not the number itself)."""
    access_token_env: str
    """Environment variable holding a system user's access token."""
    app_secret_env: str | None = None
    """Environment variable holding the Meta app's secret, which signs webhooks
    (``X-Hub-Signature-256``); webhooks are refused while it is unset."""
    verify_token_env: str | None = None
    """Environment variable holding the verify token typed into the app's webhook
    settings; Meta's subscription check is refused while it is unset."""
    default_region: str = "RU"
    """Region for numbers written without a country code."""


class WhatsAppCloudTransport(Transport):
    name = "whatsapp_cloud"
    channels = ("whatsapp",)
    Options = WhatsAppCloudOptions
    max_length: ClassVar[int | None] = MAX_TEXT

    def __init__(
        self,
        *,
        base_url: str,
        phone_number_id: str,
        access_token: str,
        timeout: float,
        default_region: str,
        app_secret: str | None,
        verify_token: str | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.endpoint = f"{self.base_url}/{phone_number_id}/messages"
        self.default_region = default_region
        self.app_secret, self.verify_token = app_secret, verify_token
        self.client = HttpClient(self.name, self.base_url, timeout, {"Authorization": f"Bearer {access_token}"})

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> WhatsAppCloudTransport:
        assert isinstance(options, WhatsAppCloudOptions)
        key = f"channels.{channel}"
        return cls(
            base_url=options.base_url,
            phone_number_id=options.phone_number_id,
            access_token=secret(options.access_token_env, f"{key}.access_token_env", required=True) or "",
            timeout=options.timeout.total_seconds(),
            default_region=options.default_region,
            app_secret=secret(options.app_secret_env, f"{key}.app_secret_env"),
            verify_token=secret(options.verify_token_env, f"{key}.verify_token_env"),
        )

    def check(self, message: OutgoingMessage) -> None:
        super().check(message)
        if message.approved is None and not (message.session_open and message.text):
            raise MessageRejected(
                "no approved template, and the member's 24-hour window is closed: WhatsApp would refuse free text",
                provider=self.name,
            )

    def prepare(self, message: OutgoingMessage) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": normalize_number(message.to, self.default_region).lstrip("+"),
            "biz_opaque_callback_data": str(message.reference),
        }
        if message.session_open and message.text:
            payload.update(type="text", text={"preview_url": False, "body": message.text})
        else:
            assert message.approved is not None  # check() made sure
            payload.update(type="template", template=template_payload(message.approved))
        return payload

    def transmit(self, payload: dict[str, Any]) -> str:
        response = self.client.call("POST", self.endpoint, json=payload)
        body = document(response)
        if response.status_code >= 400 or (isinstance(body, dict) and "error" in body):
            raise refusal(response, body, provider=self.name)
        messages = body.get("messages") if isinstance(body, dict) else None
        first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
        if first is None or not first.get("id"):
            raise OutcomeUnknown(f"the answer names no message: {response.text[:200]!r}", provider=self.name, status=200)
        return str(first["id"])

    def result(self, response: str) -> SendResult:
        return SendResult(SendStatus.SENT, provider_message_id=response)

    def close(self) -> None:
        self.client.close()

    # -- what comes back ---------------------------------------------------------------

    def verify_subscription(self, query: Mapping[str, str]) -> str:
        if not self.verify_token:
            raise WebhookUnsupported("the subscription check is refused until verify_token_env is set for this channel")
        if query.get("hub.mode") != "subscribe":
            raise MalformedWebhook("expected subscribe", field="query.hub.mode")
        check_secret(self.verify_token, query.get("hub.verify_token"), header="query hub.verify_token")
        challenge = query.get("hub.challenge")
        if not challenge:
            raise MalformedWebhook("required", field="query.hub.challenge")
        return challenge[:200]

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """Statuses and members' messages of one notification (any number of entries)."""
        if not self.app_secret:
            raise WebhookUnsupported("webhooks are refused until app_secret_env is set for this channel")
        check_hmac(self.app_secret.encode(), request.body, request.headers.get(SIGNATURE_HEADER), header="X-Hub-Signature-256")
        body = json_body(request)
        if not isinstance(body, dict) or body.get("object") != "whatsapp_business_account":
            raise MalformedWebhook("expected a whatsapp_business_account notification", field="body.object")
        entries = body.get("entry")
        if not isinstance(entries, list) or not entries:
            raise MalformedWebhook("expected a non-empty list", field="body.entry")
        inbound = Inbound()
        for e, entry in enumerate(entries):
            changes = entry.get("changes") if isinstance(entry, dict) else None
            if not isinstance(changes, list):
                raise MalformedWebhook("expected a list", field=f"body.entry[{e}].changes")
            for c, change in enumerate(changes):
                where = f"body.entry[{e}].changes[{c}].value"
                value = change.get("value") if isinstance(change, dict) else None
                if not isinstance(value, dict):
                    raise MalformedWebhook("must be an object", field=where)
                inbound.events += [
                    _status(item, f"{where}.statuses[{n}]") for n, item in enumerate(_list(value, "statuses", where))
                ]
                for n, item in enumerate(_list(value, "messages", where)):
                    message = _message(item, f"{where}.messages[{n}]")
                    if message is not None:
                        inbound.messages.append(message)
        if len(inbound.events) + len(inbound.messages) > MAX_EVENTS:
            raise MalformedWebhook(f"at most {MAX_EVENTS} statuses and messages per request", field="body.entry")
        return inbound


def template_payload(approved: ApprovedTemplate) -> dict[str, Any]:
    """The Cloud API's ``template`` object for an approved template and its parameters."""
    components: list[dict[str, Any]] = []
    if approved.header:
        components.append({"type": "header", "parameters": [{"type": "text", "text": value} for value in approved.header]})
    if approved.body:
        components.append({"type": "body", "parameters": [{"type": "text", "text": value} for value in approved.body]})
    for index, suffix in approved.buttons:
        components.append(
            {"type": "button", "sub_type": "url", "index": str(index), "parameters": [{"type": "text", "text": suffix}]}
        )
    template: dict[str, Any] = {"name": approved.name, "language": {"policy": "deterministic", "code": approved.language}}
    if components:
        template["components"] = components
    return template


def refusal(response: requests.Response, body: Any, *, provider: str) -> ChannelError:
    """The error of the tree a Cloud API refusal means (the module docstring lists the codes)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return MessageRejected(response.text[:300] or response.reason, provider=provider, status=response.status_code)
    code = error.get("code")
    code = code if isinstance(code, int) else -1
    details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
    said = f"({code}) {error.get('message') or error.get('title') or ''}" + (f": {details}" if details else "")
    said = said[:300]
    if code in RATE_LIMITS:
        return RateLimited(said, retry_after=RATE_LIMITS[code], provider=provider, status=code)
    if code in ACCOUNT or response.status_code in (401, 403):
        return AccountProblem(said, provider=provider, status=code)
    if code in UNAVAILABLE:
        return ProviderUnavailable(said, provider=provider, status=code)
    if code in BAD_RECIPIENT or (code in (100, 131009) and "to" in _parameter_named(details or error.get("message"))):
        return InvalidRecipient(said, provider=provider, status=code)
    return MessageRejected(said, provider=provider, status=code)


def _parameter_named(said: Any) -> set[str]:
    """Words of a refusal's details ("Invalid parameter: to" → {"invalid", "parameter", "to"})."""
    return {word.strip(".,:'\"()").lower() for word in str(said or "").split()}


def _list(value: dict[str, Any], name: str, where: str) -> list[Any]:
    items = value.get(name, [])
    if not isinstance(items, list):
        raise MalformedWebhook("expected a list", field=f"{where}.{name}")
    return items


def _status(item: Any, where: str) -> DeliveryEvent:
    if not isinstance(item, dict):
        raise MalformedWebhook("must be an object", field=where)
    message_id = text(item, "id", where, required=True, limit=200)
    status = item.get("status")
    if status not in STATUSES:
        raise MalformedWebhook(f"unknown status {str(status)[:40]!r} (known: {', '.join(STATUSES)})", field=f"{where}.status")
    errors = item.get("errors") if isinstance(item.get("errors"), list) else []
    cause = errors[0] if errors and isinstance(errors[0], dict) else {}
    reason = f"WhatsApp {status}"
    if cause:
        reason += f" ({cause.get('code')} {cause.get('title') or cause.get('message') or ''})".rstrip()
        details = (cause.get("error_data") or {}).get("details") if isinstance(cause.get("error_data"), dict) else None
        if details:
            reason += f": {details}"
    recipient = text(item, "recipient_id", where)
    return DeliveryEvent(
        key=f"{message_id}:{status}",
        kind=STATUSES[str(status)],
        provider_message_id=message_id,
        recipient=f"+{recipient}" if recipient and not recipient.startswith("+") else recipient,
        reason=reason[:500],
        occurred_at=timestamp(_seconds(item.get("timestamp")), f"{where}.timestamp"),
        raw=json.dumps(item, ensure_ascii=False),
    )


def _message(item: Any, where: str) -> InboundMessage | None:
    """What a member wrote: text, a button's text, or an interactive reply's title; a
    message of another type (an image, a location) still opens the window, with no text."""
    if not isinstance(item, dict):
        raise MalformedWebhook("must be an object", field=where)
    message_id = text(item, "id", where, required=True, limit=200)
    sender = text(item, "from", where, required=True, limit=32)
    assert message_id is not None and sender is not None
    if not sender.lstrip("+").isdigit():
        raise MalformedWebhook("must be the member's number in digits", field=f"{where}.from")
    said = ""
    kind = item.get("type")
    content = item.get(kind) if isinstance(kind, str) else None
    if isinstance(content, dict):
        if kind == "text":
            said = str(content.get("body") or "")
        elif kind == "button":
            said = str(content.get("text") or content.get("payload") or "")
        elif kind == "interactive":
            reply = content.get("button_reply") or content.get("list_reply") or {}
            said = str(reply.get("title") or "") if isinstance(reply, dict) else ""
    return InboundMessage(
        key=message_id,
        address="+" + sender.lstrip("+"),
        text=said[:200],
        occurred_at=timestamp(_seconds(item.get("timestamp")), f"{where}.timestamp"),
    )


def _seconds(value: Any) -> Any:
    """WhatsApp writes Unix seconds as a string."""
    return int(value) if isinstance(value, str) and value.isdigit() else value
