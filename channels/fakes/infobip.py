"""A fake of Infobip's Viber Business Messages API on loopback: ``POST
/viber/2/messages`` (``Authorization: App <key>``), answered as Infobip does (the
message ``PENDING``, or 400 ``BAD_REQUEST`` for a destination it refuses, 401 for a
wrong key), and delivery reports posted to each message's ``webhooks.delivery.url``
(:meth:`FakeInfobip.send_reports`)."""

from __future__ import annotations

import json
import time
from typing import Any

from channels.fakes.base import Faults, HttpFake, post

REPORTS = {
    # what a test asks for: (groupId, groupName, id, name, error name)
    "delivered": (3, "DELIVERED", 5, "DELIVERED_TO_HANDSET", "NO_ERROR"),
    "seen": (3, "DELIVERED", 5, "DELIVERED_TO_HANDSET", "NO_ERROR"),
    "not_viber_user": (2, "UNDELIVERABLE", 9, "UNDELIVERABLE_NOT_DELIVERED", "EC_NOT_VIBER_USER"),
    "expired": (4, "EXPIRED", 15, "EXPIRED_EXPIRED", "EC_TTL_EXPIRED"),
}


def _error(status: int, message_id: str, text: str) -> tuple[int, dict[str, str], Any]:
    return status, {}, {"requestError": {"serviceException": {"messageId": message_id, "text": text}}}


class FakeInfobip(HttpFake):
    """``messages`` holds each accepted message: ``to``, ``text``, ``sender``, ``label``,
    ``reference`` (our ``messageId``), ``id``, ``callback``, ``key``. ``Faults.errors``
    names ``invalid`` (400, a destination refused) and ``auth`` (401)."""

    def __init__(self, port: int = 0, faults: Faults | None = None, api_key: str | None = None) -> None:
        super().__init__(port, faults)
        self.api_key = api_key

    def send_reports(self, status: str = "delivered") -> list[int]:
        """Report ``status`` (a key of :data:`REPORTS`) for every message accepted so
        far that named a delivery URL; the HTTP status of each post."""
        group_id, group, status_id, name, error = REPORTS[status]
        answers = []
        for message in list(self.messages):
            if not message.get("callback"):
                continue
            result = {
                "messageId": message["id"],
                "to": message["to"],
                "sender": message["sender"],
                "sentAt": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime()),
                "doneAt": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime()),
                "status": {"groupId": group_id, "groupName": group, "id": status_id, "name": name},
                "error": {"groupId": 0 if error == "NO_ERROR" else 1, "name": error},
                "channel": "VIBER_BM",
            }
            answers.append(post(message["callback"], json.dumps({"results": [result]}).encode(), "application/json", {}))
        return answers

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        if path.split("?")[0] != "/viber/2/messages":
            return _error(404, "NOT_FOUND", f"no such path {path}")
        key = (headers.get("Authorization") or headers.get("authorization") or "").removeprefix("App ")
        document = json.loads(body or b"{}")
        item = (document.get("messages") or [{}])[0]
        destination = (item.get("destinations") or [{}])[0]
        to = str(destination.get("to") or "")
        self.faults.pause()
        fault = self.faults.draw()
        if fault == "transient":
            return _error(503, "SERVICE_UNAVAILABLE", "Service temporarily unavailable")
        if fault == "rate_limited":
            return (
                429,
                {"Retry-After": str(self.faults.retry_after)},
                {"requestError": {"serviceException": {"text": "Too many requests"}}},
            )
        forms = {to, "+" + to}
        named = next((self.faults.errors[form] for form in forms if form in self.faults.errors), None)
        if (self.api_key is not None and key != self.api_key) or named == "auth":
            return _error(401, "UNAUTHORIZED", "Invalid login details")
        if forms & self.faults.rejected or named == "invalid":
            return _error(400, "BAD_REQUEST", f"Invalid destination address {to}")
        content = item.get("content") or {}
        with self.lock:
            number = len(self.messages) + 1
            message_id = f"ib-{number:08d}"
            self.messages.append(
                {
                    "to": to,
                    "text": content.get("text"),
                    "type": content.get("type"),
                    "sender": item.get("sender"),
                    "label": (item.get("options") or {}).get("label"),
                    "reference": destination.get("messageId"),
                    "id": message_id,
                    "callback": ((item.get("webhooks") or {}).get("delivery") or {}).get("url"),
                    "key": key,
                }
            )
        status = {
            "groupId": 1,
            "groupName": "PENDING",
            "id": 7,
            "name": "PENDING_ENROUTE",
            "description": "Message sent to next instance",
        }
        return 200, {}, {"bulkId": f"bulk-{number}", "messages": [{"messageId": message_id, "status": status, "destination": to}]}
