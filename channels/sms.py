"""SMS over an HTTP gateway (``requests``, one keep-alive session per transport).

Two provider styles of one channel:

- ``json``: a generic gateway. POST ``url`` with a JSON object whose field names are
  configurable (``to``, ``text``, ``sender``, ``reference``), an auth header whose value
  comes from an environment variable; the answer's ``id`` (or ``message_id``) is the
  provider message id. The ledger id goes out as the client reference.
- ``twilio``: the Twilio Messages API. Form POST to
  ``{base_url}/2010-04-01/Accounts/{sid}/Messages.json`` with basic auth; the answer's
  ``sid`` is the provider message id. (Twilio has no client reference field.)

Delivery reports come back to ``/webhooks/<channel>`` (``parse_webhook``): Twilio's
status callbacks (``StatusCallback`` is sent with each message when ``status_callback``
is set; ``X-Twilio-Signature`` is verified), or the json style's reports, one object
or a list, with configurable field names and status words, authenticated by an
HMAC-SHA256 of the body or a shared secret in a header.

Numbers are normalized to E.164 with ``phonenumbers`` first: a number that cannot be a
valid one fails permanently before any request and suppresses the address.

Answers map onto ``channels.errors`` (network, 429 and 5xx as ``channels.http`` says);
a 4xx naming the number is ``InvalidRecipient``, other 4xx ``MessageRejected``. A 200 is
never taken for success blindly: the json style reads the answer by its ``answer`` rule
(:class:`AnswerRule`): a non-empty error field is an error whatever the HTTP status,
mapped by its code; an ``ok_field`` that does not say so is an error; and an answer
with neither an error nor a message id is an unknown outcome, not a send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

from channels.addresses import normalize_number
from channels.base import DeliveryEvent, EventKind, Inbound, OutgoingMessage, SendResult, SendStatus, Transport, WebhookRequest
from channels.errors import (
    ChannelConfigError,
    InvalidRecipient,
    InvalidSignature,
    MalformedWebhook,
    MessageRejected,
    OutcomeUnknown,
    PermanentError,
    ProviderUnavailable,
    RecipientBlocked,
    TransientError,
    WebhookUnsupported,
)
from channels.http import HttpClient, detail, document
from channels.options import TransportOptions, secret
from channels.smstext import measure
from channels.webhooks import MAX_EVENTS, check_hmac, check_secret, json_body, text, timestamp

DEFAULT_FIELDS = {"to": "to", "text": "text", "sender": "sender", "reference": "reference"}
DEFAULT_REPORT_FIELDS = {
    "message_id": "id",
    "status": "status",
    "error": "error",
    "event_id": "event_id",
    "timestamp": "timestamp",
}
DEFAULT_REPORT_STATUSES = {
    "delivered": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "rejected": "failed",
    "expired": "failed",
    "invalid": "bounced",
    "enroute": "deferred",
    "buffered": "deferred",
    "accepted": "ignore",
    "sent": "ignore",
}
TWILIO_STATUSES = {
    "delivered": EventKind.DELIVERED,
    "read": EventKind.DELIVERED,
    "undelivered": EventKind.FAILED,
    "failed": EventKind.FAILED,
}
"""Twilio's MessageStatus values that are outcomes; the others (queued, sent, ...) are kept for audit only."""
TWILIO_NO_SUCH_NUMBER = {"30005", "30006"}  # unknown handset, landline or unreachable carrier: suppress
TWILIO_INVALID_NUMBER = {21211, 21214, 21217, 21401, 21407, 21421, 21614}
TWILIO_BLOCKED = {21610}  # the recipient replied STOP


class AnswerRule(BaseModel):
    """json style: how the gateway's answer to a send says success or failure
    (``[channels.<name>.answer]``). Gateways answer errors with HTTP 200 too; this rule,
    not the status, decides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id_field: str = "id"
    """The field holding the gateway's message id (``message_id`` is read too)."""
    error_field: str = "error"
    """A non-empty value here makes the answer an error, whatever the HTTP status."""
    code_field: str = "code"
    """The field holding the error's code."""
    ok_field: str | None = None
    """When set, the answer is a success only if this field holds one of ``ok_values``."""
    ok_values: list[str] = Field(default_factory=list)
    invalid_recipient_codes: list[str] = Field(default_factory=list)
    """Error codes meaning the number can never work: failed, and the number suppressed."""
    blocked_codes: list[str] = Field(default_factory=list)
    """Error codes meaning the member stopped our messages (a stop list): failed, suppressed."""
    transient_codes: list[str] = Field(default_factory=list)
    """Error codes worth retrying later (balance, gateway busy); other codes fail the message."""


class HttpSmsOptions(TransportOptions):
    """``[channels.<name>]`` keys of the ``http_sms`` transport."""

    transport: Literal["http_sms"]
    style: Literal["json", "twilio"] = "json"
    url: str | None = None
    """json style: the gateway's send URL (required)."""
    sender: str | None = None
    """Sender id or From number (required for Twilio)."""
    auth_header: str = "Authorization"
    auth_env: str | None = None
    """json style: environment variable holding the auth header's value."""
    fields: dict[str, str] = Field(default_factory=dict)
    """json style: field names for ``to``, ``text``, ``sender``, ``reference``."""
    answer: AnswerRule = Field(default_factory=AnswerRule)
    """json style: how an answer says success or failure (HTTP 200 bodies included)."""
    default_region: str = "RU"
    """Region for numbers written without a country code."""
    account_sid_env: str | None = None
    auth_token_env: str | None = None
    base_url: str | None = None
    """Twilio API base URL (default: Twilio's)."""
    status_callback: str | None = None
    """Twilio: the URL Twilio posts status callbacks to, exactly as Twilio calls it
    (``https://<public host>/webhooks/<channel>``); its signature covers this URL."""
    report_secret_env: str | None = None
    """json style: environment variable holding the key (HMAC-SHA256 of the body) or the
    shared secret (``report_auth``) of the gateway's delivery reports."""
    report_auth: Literal["hmac-sha256", "shared-secret"] = "hmac-sha256"
    report_header: str = "X-Signature"
    """json style: the header carrying the report's signature or shared secret."""
    report_fields: dict[str, str] = Field(default_factory=dict)
    """json style: field names of a report for ``message_id``, ``status``, ``error``,
    ``event_id``, ``timestamp``."""
    report_statuses: dict[str, Literal["delivered", "bounced", "complained", "failed", "deferred", "ignore"]] = Field(
        default_factory=dict
    )
    """json style: the gateway's status words mapped onto loyalcast's events (added to
    the defaults: delivered, undelivered/failed/rejected/expired, enroute/buffered/accepted)."""


@dataclass(frozen=True)
class ReportRules:
    """How the gateway's delivery reports are verified and read."""

    secret: str | None = None
    """Twilio: the auth token; json style: the HMAC key or shared secret (None: reports refused)."""
    auth: str = "hmac-sha256"
    header: str = "X-Signature"
    fields: dict[str, str] = dc_field(default_factory=lambda: dict(DEFAULT_REPORT_FIELDS))
    statuses: dict[str, str] = dc_field(default_factory=lambda: dict(DEFAULT_REPORT_STATUSES))
    callback_url: str | None = None


class HttpSmsTransport(Transport):
    name = "http_sms"
    channels = ("sms",)
    Options = HttpSmsOptions

    def __init__(
        self,
        *,
        style: str,
        url: str,
        sender: str | None,
        timeout: float,
        headers: dict[str, str],
        fields: dict[str, str],
        default_region: str,
        auth: tuple[str, str] | None = None,
        reports: ReportRules | None = None,
        answer: AnswerRule | None = None,
    ) -> None:
        self.style, self.url, self.sender, self.timeout = style, url, sender, timeout
        self.reports = reports or ReportRules()
        self.answer = answer or AnswerRule()
        self.fields = {**DEFAULT_FIELDS, **fields}
        self.default_region = default_region
        self.client = HttpClient(self.name, url, timeout, headers)
        if auth is not None:
            self.client.session.auth = auth

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> HttpSmsTransport:
        assert isinstance(options, HttpSmsOptions)
        key = f"channels.{channel}"
        timeout = options.timeout.total_seconds()
        region = options.default_region
        if options.style == "twilio":
            sid = secret(options.account_sid_env, f"{key}.account_sid_env", required=True)
            token = secret(options.auth_token_env, f"{key}.auth_token_env", required=True)
            if not options.sender:
                raise ChannelConfigError(f"{key}.sender", "required for Twilio (the From number or sender id)")
            base = (options.base_url or "https://api.twilio.com").rstrip("/")
            return cls(
                style="twilio",
                url=f"{base}/2010-04-01/Accounts/{sid}/Messages.json",
                sender=options.sender,
                timeout=timeout,
                headers={},
                fields={},
                default_region=region,
                auth=(sid or "", token or ""),
                reports=ReportRules(secret=token, callback_url=options.status_callback),
            )
        if not options.url:
            raise ChannelConfigError(f"{key}.url", "required for the http_sms transport (json style)")
        unknown = set(options.fields) - set(DEFAULT_FIELDS)
        if unknown:
            raise ChannelConfigError(
                f"{key}.fields", f"unknown field {sorted(unknown)[0]!r} (known: {', '.join(DEFAULT_FIELDS)})"
            )
        unknown = set(options.report_fields) - set(DEFAULT_REPORT_FIELDS)
        if unknown:
            raise ChannelConfigError(
                f"{key}.report_fields", f"unknown field {sorted(unknown)[0]!r} (known: {', '.join(DEFAULT_REPORT_FIELDS)})"
            )
        reports = ReportRules(
            secret=secret(options.report_secret_env, f"{key}.report_secret_env"),
            auth=options.report_auth,
            header=options.report_header,
            fields={**DEFAULT_REPORT_FIELDS, **options.report_fields},
            statuses={**DEFAULT_REPORT_STATUSES, **{k.lower(): v for k, v in options.report_statuses.items()}},
        )
        headers = {}
        token = secret(options.auth_env, f"{key}.auth_env")
        if token:
            headers[options.auth_header] = token
        return cls(
            style="json",
            url=options.url,
            sender=options.sender,
            timeout=timeout,
            headers=headers,
            fields=options.fields,
            default_region=region,
            reports=reports,
            answer=options.answer,
        )

    def prepare(self, message: OutgoingMessage) -> tuple[dict[str, Any], int]:
        to = normalize_number(message.to, self.default_region)
        segments = measure(message.text or "").segments
        if self.style == "twilio":
            form = {"To": to, "Body": message.text or ""}
            form["From"] = self.sender or ""
            if self.reports.callback_url:
                form["StatusCallback"] = self.reports.callback_url
            return {"data": form}, segments
        body = {self.fields["to"]: to, self.fields["text"]: message.text or "", self.fields["reference"]: str(message.reference)}
        if self.sender:
            body[self.fields["sender"]] = self.sender
        return {"json": body}, segments

    def transmit(self, payload: tuple[dict[str, Any], int]) -> tuple[dict[str, Any], int]:
        request, segments = payload
        response = self.client.call("POST", self.url, **request)
        if response.status_code >= 400:
            raise self._client_error(response)
        answer = document(response)
        return (answer if isinstance(answer, dict) else {}), segments

    def _client_error(self, response: requests.Response) -> Exception:
        said = detail(response)
        body = document(response)
        code = body.get("code") if isinstance(body, dict) else None
        if self.style == "twilio" and code in TWILIO_BLOCKED:
            return RecipientBlocked(said, provider=self.name, status=response.status_code)
        if self.style == "json" and isinstance(body, dict) and body.get(self.answer.error_field):
            return self._answer_error(body, response.status_code)
        invalid = (
            code in TWILIO_INVALID_NUMBER if self.style == "twilio" else "number" in said.lower() or "recipient" in said.lower()
        )
        if invalid:
            return InvalidRecipient(said, provider=self.name, status=response.status_code)
        return MessageRejected(said, provider=self.name, status=response.status_code)

    def _answer_error(self, body: dict[str, Any], http_status: int) -> PermanentError | TransientError:
        """The error an answer's error field (or its ok field) describes, by its code."""
        rule = self.answer
        code = body.get(rule.code_field)
        said = str(body.get(rule.error_field) or (rule.ok_field and body.get(rule.ok_field)) or body)[:300]
        status: int | str = str(code) if code is not None else http_status
        key = str(code) if code is not None else None
        if key in rule.invalid_recipient_codes:
            return InvalidRecipient(said, provider=self.name, status=status)
        if key in rule.blocked_codes:
            return RecipientBlocked(said, provider=self.name, status=status)
        if key in rule.transient_codes:
            return ProviderUnavailable(said, provider=self.name, status=status)
        if "number" in said.lower() or "recipient" in said.lower():
            return InvalidRecipient(said, provider=self.name, status=status)
        return MessageRejected(said, provider=self.name, status=status)

    def result(self, response: tuple[dict[str, Any], int]) -> SendResult:
        answer, segments = response
        if self.style == "twilio":
            return SendResult(SendStatus.SENT, provider_message_id=str(answer.get("sid") or "") or None, segments=segments)
        rule = self.answer
        if answer.get(rule.error_field):
            raise self._answer_error(answer, 200)
        if rule.ok_field and str(answer.get(rule.ok_field)) not in rule.ok_values:
            raise self._answer_error(answer, 200)
        message_id = answer.get(rule.id_field) or answer.get("message_id")
        if not message_id:
            raise OutcomeUnknown(
                f"the answer says neither an error nor a message id ({str(answer)[:200]}); "
                f"set channels.<name>.answer if the gateway names them otherwise",
                provider=self.name,
                status=200,
            )
        return SendResult(SendStatus.SENT, provider_message_id=str(message_id), segments=segments)

    def close(self) -> None:
        self.client.close()

    # -- what comes back -------------------------------------------------------------

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """Twilio: a status callback (form), ``X-Twilio-Signature`` verified over the
        callback URL and the sorted form fields. json style: one report or a list,
        signed (HMAC-SHA256 of the body) or carrying the shared secret in ``report_header``."""
        if not self.reports.secret:
            what = "auth_token_env" if self.style == "twilio" else "report_secret_env"
            raise WebhookUnsupported(f"delivery reports are refused until {what} is set for this channel")
        if self.style == "twilio":
            return Inbound(events=[self._twilio_event(request)])
        return Inbound(events=self._json_events(request))

    def _twilio_event(self, request: WebhookRequest) -> DeliveryEvent:
        try:
            pairs = urllib.parse.parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=bool(request.body))
        except (UnicodeDecodeError, ValueError):
            raise MalformedWebhook("not a form body", field="body") from None
        url = self.reports.callback_url or request.url
        expected = twilio_signature(self.reports.secret or "", url, pairs)
        given = request.headers.get("x-twilio-signature", "")
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise InvalidSignature(
                "does not match the auth token, the callback URL and the form", field="header X-Twilio-Signature"
            )
        form = dict(pairs)
        sid = form.get("MessageSid") or form.get("SmsSid")
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not sid:
            raise MalformedWebhook("required", field="form.MessageSid")
        if not status:
            raise MalformedWebhook("required", field="form.MessageStatus")
        kind = TWILIO_STATUSES.get(status)
        code = form.get("ErrorCode") or ""
        if kind is EventKind.FAILED and code in TWILIO_NO_SUCH_NUMBER:
            kind = EventKind.BOUNCED
        reason = f"Twilio {status}" + (f" (error {code})" if code else "")
        return DeliveryEvent(
            key=f"{sid}:{status}",
            kind=kind,
            provider_message_id=sid,
            recipient=form.get("To"),
            reason=reason,
            raw=request.body.decode(),
        )

    def _json_events(self, request: WebhookRequest) -> list[DeliveryEvent]:
        rules = self.reports
        given = request.headers.get(rules.header.lower())
        if rules.auth == "shared-secret":
            check_secret(rules.secret or "", given, header=rules.header)
        else:
            check_hmac((rules.secret or "").encode(), request.body, given, header=rules.header)
        document = json_body(request)
        items = document if isinstance(document, list) else [document]
        if not items or len(items) > MAX_EVENTS:
            raise MalformedWebhook(f"expected 1 to {MAX_EVENTS} reports", field="body")
        names = rules.fields
        events = []
        for index, item in enumerate(items):
            where = f"body[{index}]" if isinstance(document, list) else "body"
            if not isinstance(item, dict):
                raise MalformedWebhook("must be an object", field=where)
            message_id = text(item, names["message_id"], where, required=True, limit=200)
            status = (text(item, names["status"], where, required=True) or "").lower()
            mapped = rules.statuses.get(status)
            if mapped is None:
                known = ", ".join(sorted(rules.statuses))
                raise MalformedWebhook(f"unknown status {status!r} (known: {known})", field=f"{where}.{names['status']}")
            events.append(
                DeliveryEvent(
                    key=text(item, names["event_id"], where, limit=200) or f"{message_id}:{status}",
                    kind=None if mapped == "ignore" else EventKind(mapped),
                    provider_message_id=message_id,
                    reason=text(item, names["error"], where, limit=500) or f"gateway status {status}",
                    occurred_at=timestamp(item.get(names["timestamp"]), f"{where}.{names['timestamp']}"),
                    raw=json.dumps(item, ensure_ascii=False),
                )
            )
        return events


def twilio_signature(auth_token: str, url: str, form: list[tuple[str, str]]) -> str:
    """``X-Twilio-Signature``: base64 HMAC-SHA1, keyed by the auth token, of the URL
    followed by every form field's name and value, sorted by name."""
    signed = url + "".join(name + value for name, value in sorted(form))
    return base64.b64encode(hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()).decode()
