"""SMS through SMS.ru (``transport = "smsru"``).

Sending: ``POST {base_url}/sms/send`` as a form (``api_id``, ``to`` in international
digits, ``msg``, ``from`` when a sender is set, ``json=1``). SMS.ru answers HTTP 200
whatever happened: ``status`` ``ERROR`` with a ``status_code`` at the top refuses the
request; otherwise ``sms[<number>]`` says per number ``OK`` with its ``sms_id`` or
``ERROR`` with a code. Codes (SMS.ru's list) onto the error tree:

- 202 wrong number, 207 no route to this number → ``InvalidRecipient`` (suppressed);
- 209 the number is in the account's stop list → ``RecipientBlocked`` (suppressed);
- 200 wrong api_id, 201 balance exhausted, 204 sender name not approved, 300–302
  authorization → ``AccountProblem``: transient, retried, an alert;
- 206 the account's daily limit, 230 the number's daily limit → ``RateLimited`` for an hour;
- 220 service unavailable, 500 → ``ProviderUnavailable``;
- 231/232 the same text to this number within the minute/day → ``DuplicateRequest``: not resent;
- anything else (203 no text, 205 too long, ...) → ``MessageRejected``.

Delivery reports: SMS.ru posts the account's callback URL a form of ``data[<n>]``
entries, each ``sms_status\\n<sms_id>\\n<code>\\n<time>``, and retries until the answer
is ``100``. 103 delivered and 110 read are ``delivered``; 104–108 ``failed`` (expired,
deleted by the operator, handset failure, unknown, rejected); 150 no route ``bounced``;
100–102 (queued, passed on, in transit) are kept for audit only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import requests

from channels.base import DeliveryEvent, EventKind, Inbound, OutgoingMessage, WebhookRequest
from channels.errors import (
    AccountProblem,
    DuplicateRequest,
    InvalidRecipient,
    MalformedWebhook,
    MessageRejected,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    RecipientBlocked,
)
from channels.gateway import GatewayOptions, GatewayTransport, Link, Payload
from channels.options import TransportOptions, secret
from channels.webhooks import check_url_secret, form_body, timestamp

INVALID = {202, 207}
BLOCKED = {209}
ACCOUNT = {200, 201, 204, 300, 301, 302}
LIMITS = {206, 230}
UNAVAILABLE = {220, 500}
DUPLICATE = {231, 232}
LIMIT_WAIT = 3600.0
"""Seconds before a send refused by a daily limit is tried again."""

STATUSES: dict[int, EventKind | None] = {
    100: None,
    101: None,
    102: None,
    103: EventKind.DELIVERED,
    104: EventKind.FAILED,
    105: EventKind.FAILED,
    106: EventKind.FAILED,
    107: EventKind.FAILED,
    108: EventKind.FAILED,
    110: EventKind.DELIVERED,
    150: EventKind.BOUNCED,
}
STATUS_WORDS = {
    103: "delivered",
    104: "expired",
    105: "deleted by the operator",
    106: "handset failure",
    107: "not delivered, reason unknown",
    108: "rejected",
    110: "read",
    150: "no route to this number",
}
DATA_FIELD = re.compile(r"^data\[\d*\]$")


class SmsRuOptions(GatewayOptions):
    """``[channels.<name>]`` keys of the ``smsru`` transport."""

    transport: Literal["smsru"]
    api_id_env: str
    """Environment variable holding the account's api_id."""
    test: bool = False
    """SMS.ru's test mode: requests are checked and answered, nothing is sent or billed."""


class SmsRuTransport(GatewayTransport):
    name = "smsru"
    Options = SmsRuOptions
    send_path = "/sms/send"

    def __init__(self, link: Link, *, api_id: str, test: bool) -> None:
        super().__init__(link)
        self.api_id, self.test = api_id, test

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> SmsRuTransport:
        assert isinstance(options, SmsRuOptions)
        key = f"channels.{channel}"
        api_id = secret(options.api_id_env, f"{key}.api_id_env", required=True) or ""
        return cls(Link.from_options(options, key, "https://sms.ru"), api_id=api_id, test=options.test)

    def request(self, message: OutgoingMessage, to: str) -> dict[str, Any]:
        form = {"api_id": self.api_id, "to": to, "msg": message.text or "", "json": "1"}
        if self.sender:
            form["from"] = self.sender
        if self.test:
            form["test"] = "1"
        return {"data": form}

    def read(self, response: requests.Response, body: Any, payload: Payload) -> str:
        if not isinstance(body, dict):  # the request arrived; what became of it the answer does not say
            raise OutcomeUnknown(
                f"not SMS.ru's JSON answer: {response.text[:200]!r}", provider=self.name, status=response.status_code
            )
        if body.get("status") != "OK":
            raise self.error(body)
        numbers = body.get("sms")
        answer = numbers.get(payload.to) if isinstance(numbers, dict) else None
        if not isinstance(answer, dict) and isinstance(numbers, dict) and len(numbers) == 1:
            answer = next(iter(numbers.values()))  # SMS.ru writes the number as it normalized it
        if not isinstance(answer, dict):
            raise OutcomeUnknown(f"the answer has no result for {payload.to}: {str(body)[:200]}", provider=self.name, status=200)
        if answer.get("status") != "OK" or not answer.get("sms_id"):
            raise self.error(answer)
        return str(answer["sms_id"])

    def error(self, body: dict[str, Any]) -> Exception:
        """The error of the tree an ``ERROR`` answer's ``status_code`` means."""
        try:
            code = int(body.get("status_code") or 0)
        except (TypeError, ValueError):
            code = 0
        said = str(body.get("status_text") or f"status_code {code}")[:300]
        where: dict[str, Any] = {"provider": self.name, "status": code}
        if code in INVALID:
            return InvalidRecipient(said, **where)
        if code in BLOCKED:
            return RecipientBlocked(said, **where)
        if code in ACCOUNT:
            return AccountProblem(said, **where)
        if code in LIMITS:
            return RateLimited(said, retry_after=LIMIT_WAIT, **where)
        if code in UNAVAILABLE:
            return ProviderUnavailable(said, **where)
        if code in DUPLICATE:
            return DuplicateRequest(said, **where)
        return MessageRejected(said, **where)

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """SMS.ru's status callback: ``data[<n>]`` entries; answered ``100``."""
        check_url_secret(self.callback_secret, request, key="callback_secret_env")
        events = []
        for name, value in form_body(request):
            if not DATA_FIELD.match(name):
                continue
            lines = value.split("\n")
            if lines[0].strip() != "sms_status":
                continue  # SMS.ru posts other kinds (call checks) to the same URL
            if len(lines) < 3 or not lines[1].strip() or not lines[2].strip().isdigit():
                raise MalformedWebhook(
                    "expected sms_status, the sms_id and a status code on separate lines", field=f"form.{name}"
                )
            sms_id, code = lines[1].strip(), int(lines[2])
            when = lines[3].strip() if len(lines) > 3 else ""
            events.append(
                DeliveryEvent(
                    key=f"{sms_id}:{code}",
                    kind=STATUSES.get(code),
                    provider_message_id=sms_id,
                    reason=f"SMS.ru {code} ({STATUS_WORDS.get(code, 'in progress')})",
                    occurred_at=timestamp(int(when), f"form.{name}") if when.isdigit() else None,
                    raw=value,
                )
            )
        return Inbound(events=events, reply="100")
