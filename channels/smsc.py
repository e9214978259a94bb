"""SMS through SMSC.ru (``transport = "smsc"``).

Sending: ``POST {base_url}/sys/send.php`` as a form (``login``, ``psw``, ``phones`` in
international digits, ``mes``, ``sender`` when set, ``id`` = the ledger id, so SMSC's
message id is ours, ``fmt=3`` for a JSON answer, ``charset=utf-8``). SMSC answers HTTP
200 whatever happened: ``{"id", "cnt"}`` when accepted, ``{"error", "error_code"}``
when not. Codes (SMSC's list) onto the error tree:

- 7 wrong number format, 8 cannot be delivered to this number → ``InvalidRecipient``;
- 2 login or password refused, 3 balance exhausted → ``AccountProblem``: transient,
  retried, an alert;
- 4 this IP is blocked for a while after too many errors → ``RateLimited`` for a minute;
- 9 the same request more than once within a minute → ``DuplicateRequest``: the earlier
  request carried it, not resent;
- 1 parameters, 5 date format, 6 text or sender name forbidden, others → ``MessageRejected``.

Delivery reports: SMSC posts the account's status-handler URL a form of ``id``,
``phone``, ``status``, ``ts``, ``err``. 1 delivered, 2 read and 4 link opened are
``delivered``; 3 expired, 20 undeliverable, 23 forbidden, 24 no money ``failed``; 22
wrong number and 25 unavailable number ``bounced``; -1 and 0 (waiting, passed to the
operator) audit only.
"""

from __future__ import annotations

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
    RateLimited,
)
from channels.gateway import GatewayOptions, GatewayTransport, Link, Payload
from channels.options import TransportOptions, secret
from channels.webhooks import check_url_secret, form_body, timestamp

INVALID = {7, 8}
ACCOUNT = {2, 3}
BLOCKED_IP = 4
DUPLICATE = 9
BLOCKED_IP_WAIT = 60.0
"""Seconds before a send refused while SMSC blocks our address is tried again."""
MAX_ID = 2_147_483_647
"""SMSC's message ids are 32-bit; a larger ledger id is left for SMSC to number."""

STATUSES: dict[int, EventKind | None] = {
    -1: None,
    0: None,
    1: EventKind.DELIVERED,
    2: EventKind.DELIVERED,
    3: EventKind.FAILED,
    4: EventKind.DELIVERED,
    20: EventKind.FAILED,
    22: EventKind.BOUNCED,
    23: EventKind.FAILED,
    24: EventKind.FAILED,
    25: EventKind.BOUNCED,
}
STATUS_WORDS = {
    1: "delivered",
    2: "read",
    3: "expired",
    4: "link opened",
    20: "undeliverable",
    22: "wrong number",
    23: "forbidden",
    24: "no money on the account",
    25: "number unavailable",
}


class SmscOptions(GatewayOptions):
    """``[channels.<name>]`` keys of the ``smsc`` transport."""

    transport: Literal["smsc"]
    login: str
    """The SMSC account's login."""
    password_env: str
    """Environment variable holding the account's password (or its lower-case MD5, which SMSC also takes)."""


class SmscTransport(GatewayTransport):
    name = "smsc"
    Options = SmscOptions
    send_path = "/sys/send.php"

    def __init__(self, link: Link, *, login: str, password: str) -> None:
        super().__init__(link)
        self.login, self.password = login, password

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> SmscTransport:
        assert isinstance(options, SmscOptions)
        key = f"channels.{channel}"
        password = secret(options.password_env, f"{key}.password_env", required=True) or ""
        return cls(Link.from_options(options, key, "https://smsc.ru"), login=options.login, password=password)

    def request(self, message: OutgoingMessage, to: str) -> dict[str, Any]:
        form = {"login": self.login, "psw": self.password, "phones": to, "mes": message.text or "", "fmt": "3"}
        form["charset"] = "utf-8"
        if 0 < message.reference <= MAX_ID:
            form["id"] = str(message.reference)
        if self.sender:
            form["sender"] = self.sender
        return {"data": form}

    def read(self, response: requests.Response, body: Any, payload: Payload) -> str:
        if response.status_code >= 400:
            body = body if isinstance(body, dict) else {"error": response.text[:200] or response.reason}
            raise self.error(body, default_status=response.status_code)
        if not isinstance(body, dict):
            raise OutcomeUnknown(f"not SMSC's JSON answer: {response.text[:200]!r}", provider=self.name, status=200)
        if "error" in body or "error_code" in body:
            raise self.error(body)
        if body.get("id") is None:
            raise OutcomeUnknown(f"the answer has neither an id nor an error: {str(body)[:200]}", provider=self.name, status=200)
        return str(body["id"])

    def error(self, body: dict[str, Any], default_status: int = 200) -> Exception:
        """The error of the tree an answer's ``error_code`` means."""
        try:
            code = int(body.get("error_code") or 0)
        except (TypeError, ValueError):
            code = 0
        said = str(body.get("error") or f"error_code {code}")[:300]
        where: dict[str, Any] = {"provider": self.name, "status": code or default_status}
        if code in INVALID:
            return InvalidRecipient(said, **where)
        if code in ACCOUNT:
            return AccountProblem(said, **where)
        if code == BLOCKED_IP:
            return RateLimited(said, retry_after=BLOCKED_IP_WAIT, **where)
        if code == DUPLICATE:
            return DuplicateRequest(said, **where)
        return MessageRejected(said, **where)

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """SMSC's status handler call: one message's ``id``, ``phone``, ``status``."""
        check_url_secret(self.callback_secret, request, key="callback_secret_env")
        form = dict(form_body(request))
        message_id = form.get("id", "").strip()
        status = form.get("status", "").strip()
        if not message_id:
            raise MalformedWebhook("required", field="form.id")
        try:
            code = int(status)
        except ValueError:
            raise MalformedWebhook(f"not a status code: {status[:20]!r}", field="form.status") from None
        error = form.get("err", "").strip()
        reason = f"SMSC {code} ({STATUS_WORDS.get(code, 'in progress')})" + (f", error {error}" if error not in ("", "0") else "")
        ts = form.get("ts", "").strip()
        return Inbound(
            events=[
                DeliveryEvent(
                    key=f"{message_id}:{code}",
                    kind=STATUSES.get(code),
                    provider_message_id=message_id,
                    recipient=form.get("phone"),
                    reason=reason,
                    occurred_at=timestamp(int(ts), "form.ts") if ts.isdigit() else None,
                    raw=request.body.decode(errors="replace"),
                )
            ]
        )
