"""Delivery status notifications (RFC 3464) read from a bounce mailbox.

A DSN is a ``multipart/report; report-type=delivery-status`` message: a human part, a
``message/delivery-status`` part with one block of fields per recipient (``Action``,
``Status``, ``Final-Recipient``, ``Diagnostic-Code``), and the original message or its
headers (``message/rfc822``, ``text/rfc822-headers``), whose ``Message-ID`` names the
message loyalcast sent.

Normalized (``channels.base.EventKind``): ``Action: failed`` with a ``5.x.x`` status
is a bounce (the address is suppressed), except ``5.2.2`` (mailbox full) and ``5.7.x``
(policy, spam filtering), which fail the message but keep the address; ``failed`` with
``4.x.x`` is a failure; ``delayed`` is deferred; ``delivered``, ``relayed`` and
``expanded`` are delivered.
"""

from __future__ import annotations

import hashlib
import json
from email import message_from_bytes, policy
from email.message import Message

from channels.base import DeliveryEvent, EventKind, Inbound
from channels.errors import MalformedWebhook

KEEP_ADDRESS = ("5.2.2", "5.7.")


def parse_dsn(raw: bytes) -> Inbound:
    """The events of one DSN; MalformedWebhook (naming the part) when ``raw`` is not one."""
    message = message_from_bytes(raw, policy=policy.compat32)
    if message.get_content_type() != "multipart/report" or message.get_param("report-type") != "delivery-status":
        raise MalformedWebhook(
            "not a delivery status notification (multipart/report; report-type=delivery-status)", field="Content-Type"
        )
    status_part = _part(message, "message/delivery-status")
    if status_part is None:
        raise MalformedWebhook("no message/delivery-status part", field="message/delivery-status")
    original = _original_message_id(message)
    blocks = status_part.get_payload()
    if not isinstance(blocks, list) or len(blocks) < 2:
        raise MalformedWebhook("no per-recipient fields", field="message/delivery-status")
    dsn_id = (message.get("Message-ID") or "").strip() or hashlib.sha256(raw).hexdigest()
    events = []
    for block in blocks[1:]:
        if not isinstance(block, Message):
            continue
        recipient = _address(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
        action = (block.get("Action") or "").strip().lower()
        status = (block.get("Status") or "").strip().split(" ")[0]
        diagnostic = " ".join((block.get("Diagnostic-Code") or "").split())
        kind = _kind(action, status)
        if kind is None:
            continue
        reason = f"{action} {status}" + (f": {diagnostic}" if diagnostic else "")
        events.append(
            DeliveryEvent(
                key=f"dsn:{dsn_id}:{recipient}"[:200],
                kind=kind,
                provider_message_id=original,
                recipient=recipient or None,
                reason=reason[:500],
                raw=json.dumps({"action": action, "status": status, "recipient": recipient, "diagnostic": diagnostic}),
            )
        )
    if not events:
        raise MalformedWebhook("no recipient block with a known Action", field="message/delivery-status")
    return Inbound(events=events)


def _kind(action: str, status: str) -> EventKind | None:
    if action == "failed":
        if status.startswith("5.") and not status.startswith(KEEP_ADDRESS):
            return EventKind.BOUNCED
        return EventKind.FAILED
    if action == "delayed":
        return EventKind.DEFERRED
    if action in ("delivered", "relayed", "expanded"):
        return EventKind.DELIVERED
    return None


def _part(message: Message, content_type: str) -> Message | None:
    for part in message.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _original_message_id(message: Message) -> str | None:
    headers = _part(message, "text/rfc822-headers")
    if headers is not None:
        payload = headers.get_payload(decode=True)
        found = message_from_bytes(payload if isinstance(payload, bytes) else b"").get("Message-ID")
        return found.strip() if found else None
    enclosed = _part(message, "message/rfc822")
    if enclosed is not None:
        inner = enclosed.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            found = inner[0].get("Message-ID")
            return found.strip() if found else None
    return None


def _address(field: str) -> str:
    """``rfc822; anna@example.com`` -> ``anna@example.com``."""
    return field.split(";", 1)[-1].strip().strip("<>")
