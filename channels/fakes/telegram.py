"""A fake Telegram Bot API server on loopback."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from channels.fakes.base import Faults, HttpFake


class FakeTelegramApi(HttpFake):
    """The Bot API at ``/bot<token>/<method>``: ``getMe`` and ``sendMessage``, and the
    update side: ``setWebhook`` (with ``secret_token``), ``deleteWebhook`` and
    ``getUpdates`` (long polling with ``offset`` and ``timeout``; refused with 409 while
    a webhook is set, as Telegram does).

    :meth:`member_sends` plays a member writing to the bot (``/start <token>``): with a
    webhook set, the update is posted to it with the secret token, and a ``sendMessage``
    in the answer (the Bot API's reply-in-response) is recorded like a sent message;
    otherwise it waits for ``getUpdates``."""

    def __init__(self, port: int = 0, faults: Faults | None = None) -> None:
        super().__init__(port, faults)
        self.updates: list[dict[str, Any]] = []
        self.webhook: tuple[str, str | None] | None = None
        self._next_update = 1
        self._arrived = threading.Condition(self.lock)

    def member_sends(self, chat_id: int, text: str, *, language: str | None = "ru", blocked: bool = False) -> int | None:
        """A private message (or, with ``blocked``, the member blocking the bot); the
        webhook's HTTP status when one is set, else None (queued for getUpdates)."""
        with self.lock:
            update: dict[str, Any] = {"update_id": self._next_update}
            self._next_update += 1
            chat = {"id": chat_id, "type": "private", "first_name": "Member"}
            sender = {"id": chat_id, "is_bot": False, "first_name": "Member", **({"language_code": language} if language else {})}
            if blocked:
                update["my_chat_member"] = {
                    "chat": chat,
                    "from": sender,
                    "date": int(time.time()),
                    "old_chat_member": {"status": "member", "user": {"id": 1, "is_bot": True, "first_name": "loyalcast"}},
                    "new_chat_member": {
                        "status": "kicked",
                        "until_date": 0,
                        "user": {"id": 1, "is_bot": True, "first_name": "loyalcast"},
                    },
                }
            else:
                update["message"] = {"message_id": update["update_id"], "date": int(time.time()), "chat": chat, "from": sender}
                update["message"]["text"] = text
            webhook = self.webhook
            if webhook is None:
                self.updates.append(update)
                self._arrived.notify_all()
                return None
        url, secret = webhook
        request = urllib.request.Request(
            url,
            data=json.dumps(update).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **({"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                document = json.loads(answer.read() or b"{}")
                status: int = answer.status
        except urllib.error.HTTPError as exc:
            return exc.code
        if isinstance(document, dict) and document.get("method") == "sendMessage":
            self.record({"chat_id": str(document.get("chat_id")), "text": document.get("text", ""), "via": "webhook answer"})
        return status

    def _updates(self, fields: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        offset = int(fields.get("offset") or 0)
        wait = min(float(fields.get("timeout") or 0), 5.0)
        with self.lock:
            if self.webhook is not None:
                conflict = (
                    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
                )
                return 409, {}, {"ok": False, "error_code": 409, "description": conflict}
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            if not self.updates and wait:
                self._arrived.wait(wait)
            return 200, {}, {"ok": True, "result": list(self.updates)}

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        method = path.rsplit("/", 1)[-1]
        content_type = headers.get("Content-Type", headers.get("content-type", ""))
        if "json" in content_type:
            fields = json.loads(body or b"{}")
        else:
            fields = dict(urllib.parse.parse_qsl(body.decode()))
        if method == "getUpdates":
            return self._updates(fields)
        if method == "setWebhook":
            with self.lock:
                self.webhook = (str(fields["url"]), fields.get("secret_token")) if fields.get("url") else None
            return 200, {}, {"ok": True, "result": True, "description": "Webhook was set"}
        if method == "deleteWebhook":
            with self.lock:
                self.webhook = None
            return 200, {}, {"ok": True, "result": True, "description": "Webhook was deleted"}
        if method == "getMe":
            return (
                200,
                {},
                {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "loyalcast", "username": "loyalcast_bot"}},
            )
        if method != "sendMessage":
            return 404, {}, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
        chat_id = str(fields.get("chat_id"))
        self.faults.pause()
        fault = self.faults.draw()
        if fault == "transient":
            return 502, {}, {"ok": False, "error_code": 502, "description": "Bad Gateway"}
        if fault == "rate_limited":
            wait = self.faults.retry_after
            return (
                429,
                {},
                {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {wait}",
                    "parameters": {"retry_after": wait},
                },
            )
        if chat_id in self.faults.blocked:
            return 403, {}, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}
        if chat_id in self.faults.rejected:
            return 400, {}, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
        text = fields.get("text", "")
        if len(text) > 4096:
            return 400, {}, {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}
        number = self.record({"chat_id": chat_id, "text": text, "parse_mode": fields.get("parse_mode"), "received": time.time()})
        return (
            200,
            {},
            {
                "ok": True,
                "result": {
                    "message_id": number,
                    "date": int(time.time()),
                    "text": text,
                    "chat": {"id": int(chat_id), "type": "private"},
                    "from": {"id": 1, "is_bot": True, "first_name": "loyalcast"},
                },
            },
        )
