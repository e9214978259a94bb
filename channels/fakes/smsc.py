"""SMSC.ru's HTTP API as the fake gateway speaks it: ``POST /sys/send.php`` (form:
``login``, ``psw``, ``phones``, ``mes``, ``sender``, ``id``, ``fmt=3`` for JSON,
``charset=utf-8``), answered with HTTP 200 whatever happened: ``{"id": <id>, "cnt": 1}``
or ``{"error": "<text>", "error_code": <n>, "id": <id>}``. Status reports go to the
account's callback URL as SMSC posts them: a form of ``id``, ``phone``, ``status``,
``time``, ``ts``, ``err``."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from channels.fakes.base import post
from channels.fakes.protocol import Answer, Protocol, ReportTo

ERRORS = {
    "auth": (2, "authorise error"),
    "no_funds": (3, "no money"),
    "quota": (4, "IP temporarily blocked"),
    "prohibited": (6, "message is denied"),
    "sender": (6, "message is denied"),
    "invalid": (7, "invalid number"),
    "blocked": (8, "message to this number cannot be delivered"),
    "duplicate": (9, "duplicate request, wait a minute"),
}
STATUS_CODES = {"delivered": 1, "read": 2, "expired": 3, "failed": 20, "invalid": 22}


class SmscProtocol(Protocol):
    name, path = "smsc", "/sys/send.php"

    def read(self, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        fields = dict(urllib.parse.parse_qsl(body.decode()))
        return {
            "to": fields.get("phones"),
            "text": fields.get("mes"),
            "sender": fields.get("sender"),
            "reference": fields.get("id"),
            "login": fields.get("login"),
            "password": fields.get("psw"),
            "fmt": fields.get("fmt"),
            "charset": fields.get("charset"),
        }

    def error(self, name: str, to: str) -> Answer | None:
        if name not in ERRORS:
            return None
        code, text = ERRORS[name]
        return 200, {}, {"error": text, "error_code": code}

    def accepted(self, message: dict[str, Any], number: int) -> tuple[str, Answer]:
        message_id = str(message.get("reference") or number)
        return message_id, (200, {}, {"id": int(message_id), "cnt": 1})

    def report(self, to: ReportTo, message: dict[str, Any], status: str, error_code: str | None) -> int | None:
        if not to.url:
            return None
        now = int(time.time())
        form = {
            "id": message["id"],
            "phone": str(message["to"]),
            "status": str(STATUS_CODES[status]),
            "time": time.strftime("%d.%m.%Y %H:%M:%S", time.gmtime(now)),
            "ts": str(now),
            "err": error_code or "0",
        }
        return post(to.url, urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded", {})
