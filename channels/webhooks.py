"""Helpers every transport's ``parse_webhook`` shares: signatures, JSON, timestamps,
and loyalcast's provider-neutral event format.

The neutral format is what a mail relay (or any provider, through a small adapter)
posts to ``/webhooks/<channel>``, signed with HMAC-SHA256 of the raw body under a shared
key, hex, in ``X-Loyalcast-Signature: sha256=<hex>``::

    {"events": [{"id": "evt-1", "event": "bounced", "message_id": "<...@example.com>",
                 "recipient": "anna@example.com", "reason": "550 5.1.1 no such user",
                 "timestamp": "2026-12-01T10:00:00Z"}]}

``event`` is one of ``channels.base.EventKind``; ``id`` is optional (without it, the
event's own content identifies it, so a retry of the same body is still recorded once).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from channels.base import DeliveryEvent, EventKind, Inbound, WebhookRequest
from channels.errors import ChannelConfigError, InvalidSignature, MalformedWebhook, WebhookUnsupported

SIGNATURE_HEADER = "x-loyalcast-signature"
MAX_EVENTS = 1000


def signature(key: bytes, body: bytes) -> str:
    """The neutral format's signature header value for ``body``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def check_hmac(key: bytes, body: bytes, given: str | None, *, header: str) -> None:
    """Raise InvalidSignature unless ``given`` is HMAC-SHA256 of ``body`` under ``key``
    (``sha256=<hex>``, bare hex or base64)."""
    if not given:
        raise InvalidSignature("missing signature", field=f"header {header}")
    digest = hmac.new(key, body, hashlib.sha256).digest()
    value = given.strip().removeprefix("sha256=")
    candidates = {digest.hex(), base64.b64encode(digest).decode()}
    if not any(hmac.compare_digest(value, candidate) for candidate in candidates):
        raise InvalidSignature("signature does not match the body", field=f"header {header}")


def check_secret(expected: str, given: str | None, *, header: str) -> None:
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidSignature("shared secret does not match", field=f"header {header}")


def check_url_secret(expected: str | None, request: WebhookRequest, *, key: str) -> None:
    """Raise unless the callback URL's ``secret`` query parameter is ``expected``: how
    loyalcast authenticates a provider that signs nothing (the secret is in the URL
    registered with the provider, so only it and loyalcast know it). ``key`` is the
    settings key that names the secret, for the refusal while it is unset."""
    if not expected:
        raise WebhookUnsupported(f"delivery reports are refused until {key} is set for this channel")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
    given = (query.get("secret") or [""])[0]
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidSignature("the callback URL's secret does not match", field="query.secret")


def require_callback_secret(status_callback: str | None, secret_env: str | None, key: str) -> None:
    """ChannelConfigError unless a per-message ``status_callback`` comes with the
    ``callback_secret_env`` that authenticates its reports (``key``: the channel's settings key)."""
    if status_callback and not secret_env:
        raise ChannelConfigError(f"{key}.callback_secret_env", "required with status_callback (it authenticates the reports)")


def with_secret(url: str | None, secret: str | None) -> str | None:
    """The callback ``url`` with ``secret`` as its ``secret`` query parameter (what
    :func:`check_url_secret` checks); None unless both are set."""
    if not url or not secret:
        return None
    return f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode({'secret': secret})}"


def form_body(request: WebhookRequest) -> list[tuple[str, str]]:
    """A form body's fields in order; MalformedWebhook when it is not a form."""
    try:
        return urllib.parse.parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=bool(request.body))
    except (UnicodeDecodeError, ValueError):
        raise MalformedWebhook("not a form body", field="body") from None


def json_body(request: WebhookRequest) -> Any:
    try:
        return json.loads(request.body)
    except (UnicodeDecodeError, ValueError):
        raise MalformedWebhook("not JSON", field="body") from None


def timestamp(value: Any, where: str) -> datetime | None:
    """An ISO 8601 string or Unix seconds as aware UTC; None when absent."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise MalformedWebhook(f"not a timestamp: {str(value)[:40]!r}", field=where)


def text(item: Mapping[str, Any], name: str, where: str, *, required: bool = False, limit: int = 320) -> str | None:
    value = item.get(name)
    if value is None or value == "":
        if required:
            raise MalformedWebhook("required", field=f"{where}.{name}")
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise MalformedWebhook("must be a string", field=f"{where}.{name}")
    return str(value)[:limit]


def content_key(item: Any) -> str:
    """A stable key for an event the provider gives no id: the hash of its content."""
    return "sha256:" + hashlib.sha256(json.dumps(item, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def parse_neutral(request: WebhookRequest, key: bytes) -> Inbound:
    """Events in loyalcast's neutral format, after checking the signature."""
    check_hmac(key, request.body, request.headers.get(SIGNATURE_HEADER), header="X-Loyalcast-Signature")
    document = json_body(request)
    items = document.get("events") if isinstance(document, dict) and "events" in document else document
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise MalformedWebhook("expected an event object or a non-empty list of them", field="body.events")
    if len(items) > MAX_EVENTS:
        raise MalformedWebhook(f"at most {MAX_EVENTS} events per request", field="body.events")
    events = []
    for index, item in enumerate(items):
        where = f"body.events[{index}]"
        if not isinstance(item, dict):
            raise MalformedWebhook("must be an object", field=where)
        kind = text(item, "event", where, required=True)
        try:
            event = EventKind(kind or "")
        except ValueError:
            known = ", ".join(k.value for k in EventKind)
            raise MalformedWebhook(f"unknown event {kind!r} (known: {known})", field=f"{where}.event") from None
        events.append(
            DeliveryEvent(
                key=text(item, "id", where, limit=200) or content_key(item),
                kind=event,
                provider_message_id=text(item, "message_id", where, required=True, limit=200),
                recipient=text(item, "recipient", where),
                reason=text(item, "reason", where, limit=500) or "",
                occurred_at=timestamp(item.get("timestamp"), f"{where}.timestamp"),
                raw=json.dumps(item, ensure_ascii=False),
            )
        )
    return Inbound(events=events)


def neutral_webhook(key: str | None, request: WebhookRequest, *, transport: str, message_ids: str = "as-is") -> Inbound:
    """A transport's neutral-format webhook: refused (WebhookUnsupported) while no key is
    set. ``message_ids="angle"`` writes ids as email Message-IDs (``<id@host>``), the
    form the SMTP transport records."""
    if not key:
        raise WebhookUnsupported(f"the {transport} transport's webhook is refused until webhook_secret_env is set")
    inbound = parse_neutral(request, key.encode())
    if message_ids == "angle":
        inbound.events[:] = [replace(e, provider_message_id=angle(e.provider_message_id)) for e in inbound.events]
    return inbound


def angle(message_id: str | None) -> str | None:
    if message_id is None:
        return None
    bare = message_id.strip().strip("<>")
    return f"<{bare}>" if "@" in bare else message_id.strip()
