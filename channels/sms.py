"""SMS over an HTTP gateway (``requests``, one keep-alive session per transport).

Two provider styles of one channel:

- ``json``: a generic gateway. POST ``url`` with a JSON object whose field names are
  configurable (``to``, ``text``, ``sender``, ``reference``), an auth header whose value
  comes from an environment variable; the answer's ``id`` (or ``message_id``) is the
  provider message id. The ledger id goes out as the client reference.
- ``twilio``: the Twilio Messages API. Form POST to
  ``{base_url}/2010-04-01/Accounts/{sid}/Messages.json`` with basic auth; the answer's
  ``sid`` is the provider message id. (Twilio has no client reference field.)

Numbers are normalized to E.164 with ``phonenumbers`` first: a number that cannot be a
valid one fails permanently before any request and suppresses the address.

Answers map onto ``channels.errors``: 429 with ``Retry-After`` is ``RateLimited``; 5xx,
refused connections and connect timeouts are transient; a read timeout (the request
left, no answer came) is an unknown outcome and is not resent blindly; a 4xx naming the
number is ``InvalidRecipient``, other 4xx ``MessageRejected``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import requests
from pydantic import Field

from channels.addresses import normalize_number
from channels.base import OutgoingMessage, SendResult, SendStatus, Transport
from channels.errors import (
    ChannelConfigError,
    InvalidRecipient,
    MessageRejected,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    RecipientBlocked,
)
from channels.options import TransportOptions, secret
from channels.smstext import measure

DEFAULT_FIELDS = {"to": "to", "text": "text", "sender": "sender", "reference": "reference"}
TWILIO_INVALID_NUMBER = {21211, 21214, 21217, 21401, 21407, 21421, 21614}
TWILIO_BLOCKED = {21610}  # the recipient replied STOP


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
    default_region: str = "RU"
    """Region for numbers written without a country code."""
    account_sid_env: str | None = None
    auth_token_env: str | None = None
    base_url: str | None = None
    """Twilio API base URL (default: Twilio's)."""


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
    ) -> None:
        self.style, self.url, self.sender, self.timeout = style, url, sender, timeout
        self.fields = {**DEFAULT_FIELDS, **fields}
        self.default_region = default_region
        self.session = requests.Session()
        # Proxy variables (HTTPS_PROXY, NO_PROXY) are read once, here, instead of on
        # every request with ~/.netrc along with them (3% of a sending worker's time).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.url))
        self.session.trust_env = False
        self.session.headers.update(headers)
        if auth is not None:
            self.session.auth = auth

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
            )
        if not options.url:
            raise ChannelConfigError(f"{key}.url", "required for the http_sms transport (json style)")
        unknown = set(options.fields) - set(DEFAULT_FIELDS)
        if unknown:
            raise ChannelConfigError(
                f"{key}.fields", f"unknown field {sorted(unknown)[0]!r} (known: {', '.join(DEFAULT_FIELDS)})"
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
        )

    def prepare(self, message: OutgoingMessage) -> tuple[dict[str, Any], int]:
        to = normalize_number(message.to, self.default_region)
        segments = measure(message.text or "").segments
        if self.style == "twilio":
            form = {"To": to, "Body": message.text or ""}
            form["From"] = self.sender or ""
            return {"data": form}, segments
        body = {self.fields["to"]: to, self.fields["text"]: message.text or "", self.fields["reference"]: str(message.reference)}
        if self.sender:
            body[self.fields["sender"]] = self.sender
        return {"json": body}, segments

    def transmit(self, payload: tuple[dict[str, Any], int]) -> tuple[dict[str, Any], int]:
        request, segments = payload
        try:
            response = self.session.post(self.url, timeout=(min(self.timeout, 5.0), self.timeout), **request)
        except requests.ConnectTimeout as exc:
            raise ProviderUnavailable(f"connect timeout: {exc}", provider=self.name) from exc
        except requests.ReadTimeout as exc:
            raise OutcomeUnknown(f"no answer within {self.timeout:g} s", provider=self.name) from exc
        except requests.ConnectionError as exc:
            raise ProviderUnavailable(f"connection failed: {exc}", provider=self.name) from exc
        if response.status_code == 429:
            raise RateLimited(_detail(response), retry_after=_retry_after(response), provider=self.name, status=429)
        if response.status_code >= 500:
            raise ProviderUnavailable(_detail(response), provider=self.name, status=response.status_code)
        if response.status_code >= 400:
            raise self._client_error(response)
        try:
            document = response.json()
        except ValueError:
            document = {}
        return document, segments

    def _client_error(self, response: requests.Response) -> Exception:
        detail = _detail(response)
        code = None
        try:
            code = response.json().get("code")
        except ValueError:
            pass
        if self.style == "twilio" and code in TWILIO_BLOCKED:
            return RecipientBlocked(detail, provider=self.name, status=response.status_code)
        invalid = (
            code in TWILIO_INVALID_NUMBER
            if self.style == "twilio"
            else "number" in detail.lower() or "recipient" in detail.lower()
        )
        if invalid:
            return InvalidRecipient(detail, provider=self.name, status=response.status_code)
        return MessageRejected(detail, provider=self.name, status=response.status_code)

    def result(self, response: tuple[dict[str, Any], int]) -> SendResult:
        document, segments = response
        message_id = document.get("sid") or document.get("id") or document.get("message_id")
        return SendResult(SendStatus.SENT, provider_message_id=str(message_id) if message_id else None, segments=segments)

    def close(self) -> None:
        self.session.close()


def _detail(response: requests.Response) -> str:
    try:
        document = response.json()
        return str(document.get("message") or document.get("error") or document)[:300]
    except ValueError:
        return response.text[:300] or response.reason


def _retry_after(response: requests.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", "1")), 0.0)
    except ValueError:
        return 1.0
