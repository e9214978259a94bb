"""Viber Business Messages through Infobip (``transport = "infobip"``, channel ``viber``).

Why an aggregator and not the Viber bot API: a loyalty program knows its members' phone
numbers and their marketing consent, and Viber Business Messages reach a member by
number, as SMS does; the bot API reaches only members who opened the bot and gave it
their Viber id first, so it would need an opt-in flow like Telegram's before a single
message (``ChannelSpec.collected``). A bot transport stays possible beside this one:
its own module, ``channels = ("viber",)``, contacts collected through ``contacts``.

Sending: ``POST {base_url}/viber/2/messages`` (``Authorization: App <api key>``) with
one message: ``sender`` (the Viber service name), ``destinations[{to, messageId}]``
(international digits; our ledger id as ``messageId``), ``content {type: TEXT, text}``,
``options.label`` ``PROMOTION`` for marketing and ``TRANSACTION`` for service messages
(Viber bills and filters by it), and ``webhooks.delivery.url`` when ``status_callback``
is set. Answers: 200 with the message's ``status`` (group ``PENDING``; group
``REJECTED`` is a refusal in a 200, read as such); 400 ``BAD_REQUEST`` naming the
destination is an invalid number; 401/403 are an ``AccountProblem`` (retried, an
alert); 429 and 5xx as ``channels.http`` says.

Delivery reports: Infobip posts ``{"results": [...]}`` to the delivery URL, each with
``messageId`` and ``status.groupName``: ``DELIVERED`` → delivered; ``UNDELIVERABLE``
(not a Viber user, blocked), ``EXPIRED``, ``REJECTED`` → failed, which is what a
campaign's cascade to SMS waits for; ``PENDING`` audit only. A failure never suppresses
the number: the same number still takes SMS, and Viber once installed. Infobip signs
nothing by default, so the URL carries a secret (``callback_secret_env``), as for the
SMS gateways.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import requests
from pydantic import Field

from channels.addresses import normalize_number
from channels.base import DeliveryEvent, EventKind, Inbound, OutgoingMessage, SendResult, SendStatus, Transport, WebhookRequest
from channels.errors import (
    AccountProblem,
    InvalidRecipient,
    MalformedWebhook,
    MessageRejected,
    OutcomeUnknown,
)
from channels.http import HttpClient, detail, document
from channels.options import TransportOptions, secret
from channels.webhooks import MAX_EVENTS, check_url_secret, json_body, require_callback_secret, text, timestamp, with_secret

GROUPS: dict[str, EventKind | None] = {
    "PENDING": None,
    "DELIVERED": EventKind.DELIVERED,
    "UNDELIVERABLE": EventKind.FAILED,
    "EXPIRED": EventKind.FAILED,
    "REJECTED": EventKind.FAILED,
}
"""Infobip's status groups onto loyalcast's events."""


class InfobipViberOptions(TransportOptions):
    """``[channels.viber]`` keys of the ``infobip`` transport."""

    transport: Literal["infobip"]
    base_url: str
    """The account's personal API address (``https://<id>.api.infobip.com``)."""
    api_key_env: str
    """Environment variable holding the API key."""
    sender: str = Field(min_length=1, max_length=100)
    """The Viber service (sender) name registered with Infobip."""
    default_region: str = "RU"
    """Region for numbers written without a country code."""
    validity: int = Field(default=86_400, ge=30, le=1_209_600)
    """Seconds Viber keeps trying to deliver before the message expires (a cascade
    waits for its report); Infobip's ``validityPeriod``."""
    status_callback: str | None = None
    """The URL Infobip posts delivery reports to: ``https://<public host>/webhooks/viber``
    (loyalcast adds ``?secret=`` from ``callback_secret_env``)."""
    callback_secret_env: str | None = None
    """Environment variable holding the secret of the delivery-report URL; reports are
    refused while it is unset."""


class InfobipViberTransport(Transport):
    name = "infobip"
    channels = ("viber",)
    Options = InfobipViberOptions
    max_length: ClassVar[int | None] = 1000
    """Viber Business Messages take up to 1,000 characters of text."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        sender: str,
        timeout: float,
        default_region: str,
        validity: int,
        status_callback: str | None,
        callback_secret: str | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.sender, self.default_region, self.validity = sender, default_region, validity
        self.callback_secret = callback_secret
        self.callback_url = with_secret(status_callback, callback_secret)
        self.client = HttpClient(self.name, self.base_url, timeout, {"Authorization": f"App {api_key}"})

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> InfobipViberTransport:
        assert isinstance(options, InfobipViberOptions)
        key = f"channels.{channel}"
        require_callback_secret(options.status_callback, options.callback_secret_env, key)
        return cls(
            base_url=options.base_url,
            api_key=secret(options.api_key_env, f"{key}.api_key_env", required=True) or "",
            sender=options.sender,
            timeout=options.timeout.total_seconds(),
            default_region=options.default_region,
            validity=options.validity,
            status_callback=options.status_callback,
            callback_secret=secret(options.callback_secret_env, f"{key}.callback_secret_env"),
        )

    def prepare(self, message: OutgoingMessage) -> dict[str, Any]:
        to = normalize_number(message.to, self.default_region).lstrip("+")
        item: dict[str, Any] = {
            "sender": self.sender,
            "destinations": [{"to": to, "messageId": str(message.reference)}],
            "content": {"type": "TEXT", "text": message.text or ""},
            "options": {"label": "PROMOTION" if message.marketing else "TRANSACTION", "validityPeriod": self.validity},
        }
        if self.callback_url:
            item["webhooks"] = {"delivery": {"url": self.callback_url}}
        return {"messages": [item]}

    def transmit(self, payload: dict[str, Any]) -> str:
        response = self.client.call("POST", f"{self.base_url}/viber/2/messages", json=payload)
        body = document(response)
        if response.status_code >= 400:
            raise self._refusal(response, body)
        messages = body.get("messages") if isinstance(body, dict) else None
        first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
        if first is None or not first.get("messageId"):
            raise OutcomeUnknown(f"the answer names no message: {response.text[:200]!r}", provider=self.name, status=200)
        given = first.get("status")
        status: dict[str, Any] = given if isinstance(given, dict) else {}
        if status.get("groupName") == "REJECTED":
            said = f"{status.get('name', 'REJECTED')}: {status.get('description', '')}".strip(": ")
            if "DESTINATION" in str(status.get("name", "")).upper():
                raise InvalidRecipient(said, provider=self.name, status=200)
            raise MessageRejected(said, provider=self.name, status=200)
        return str(first["messageId"])

    def _refusal(self, response: requests.Response, body: Any) -> Exception:
        exception = (body or {}).get("requestError", {}).get("serviceException", {}) if isinstance(body, dict) else {}
        said = str(exception.get("text") or detail(response))[:300] if isinstance(exception, dict) else detail(response)
        status = response.status_code
        if status in (401, 403):
            return AccountProblem(said, provider=self.name, status=status)
        if "destination" in said.lower() or "number" in said.lower():
            return InvalidRecipient(said, provider=self.name, status=status)
        return MessageRejected(said, provider=self.name, status=status)

    def result(self, response: str) -> SendResult:
        return SendResult(SendStatus.SENT, provider_message_id=response)

    def close(self) -> None:
        self.client.close()

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """Infobip's delivery reports: ``{"results": [{messageId, status, error, doneAt}]}``."""
        check_url_secret(self.callback_secret, request, key="callback_secret_env")
        body = json_body(request)
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or not results or len(results) > MAX_EVENTS:
            raise MalformedWebhook(f"expected 1 to {MAX_EVENTS} results", field="body.results")
        events = []
        for index, item in enumerate(results):
            where = f"body.results[{index}]"
            if not isinstance(item, dict):
                raise MalformedWebhook("must be an object", field=where)
            message_id = text(item, "messageId", where, required=True, limit=200)
            status = item.get("status")
            group = status.get("groupName") if isinstance(status, dict) else None
            if group not in GROUPS:
                known = ", ".join(GROUPS)
                raise MalformedWebhook(f"unknown status group {str(group)[:40]!r} (known: {known})", field=f"{where}.status")
            assert isinstance(status, dict)
            error = item.get("error") if isinstance(item.get("error"), dict) else {}
            cause = error.get("name") if error and error.get("name") not in (None, "NO_ERROR") else None
            events.append(
                DeliveryEvent(
                    key=f"{message_id}:{status.get('name') or group}",
                    kind=GROUPS[group],
                    provider_message_id=message_id,
                    recipient=text(item, "to", where),
                    reason=f"Infobip {group} ({status.get('name', '')})" + (f", {cause}" if cause else ""),
                    occurred_at=timestamp(item.get("doneAt"), f"{where}.doneAt"),
                    raw=json.dumps(item, ensure_ascii=False),
                )
            )
        return Inbound(events=events)
