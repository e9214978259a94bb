"""SMS Aero's API v2 as the fake gateway speaks it: ``POST /v2/sms/send`` with HTTP basic
authentication (the account's email and API key; JSON: ``number``, ``text``, ``sign``,
``callbackUrl``), answered ``{"success": true, "data": {"id", "status", ...}, "message":
null}``, or ``{"success": false, "data": ..., "message": "<why>"}`` with HTTP 200 for a
refused message (401 for refused credentials). Status reports go to the message's
``callbackUrl`` as JSON ``{"id", "number", "status", "extendStatus", "dateSend"}``."""

from __future__ import annotations

import json
import time
from typing import Any

from channels.fakes.base import basic_auth, post
from channels.fakes.protocol import Answer, Protocol, ReportTo

STATUS_CODES = {"delivered": (1, "delivery success"), "failed": (2, "delivery failure"), "expired": (2, "delivery failure")}
STATUS_CODES["invalid"] = (6, "message rejected")


def refused(message: str, data: Any = None, status: int = 200) -> Answer:
    return status, {}, {"success": False, "data": data, "message": message}


class SmsAeroProtocol(Protocol):
    name, path = "smsaero", "/v2/sms/send"

    def read(self, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        fields = json.loads(body or b"{}")
        email, key = basic_auth(headers)
        return {
            "to": fields.get("number"),
            "text": fields.get("text"),
            "sender": fields.get("sign"),
            "reference": None,
            "callback": fields.get("callbackUrl"),
            "email": email,
            "api_key": key,
        }

    def error(self, name: str, to: str) -> Answer | None:
        if name == "auth":
            return refused("Your request was made with invalid credentials.", status=401)
        if name == "no_funds":
            return refused("Insufficient funds.")
        if name == "sender":
            return refused("Validation error.", {"sign": ["Sign is not approved."]})
        if name == "invalid":
            return refused("Validation error.", {"number": ["Number is invalid."]})
        if name == "prohibited":
            return refused("Validation error.", {"text": ["Text contains forbidden words."]})
        return None

    def accepted(self, message: dict[str, Any], number: int) -> tuple[str, Answer]:
        data = {
            "id": number,
            "from": message["sender"],
            "number": message["to"],
            "text": message["text"],
            "status": 8,
            "extendStatus": "moderation",
            "channel": "DIRECT",
            "cost": 5.49,
            "dateCreate": int(time.time()),
            "dateSend": int(time.time()),
        }
        return str(number), (200, {}, {"success": True, "data": data, "message": None})

    def report(self, to: ReportTo, message: dict[str, Any], status: str, error_code: str | None) -> int | None:
        if not message.get("callback"):
            return None
        code, words = STATUS_CODES[status]
        report = {"id": int(message["id"]), "number": message["to"], "status": code, "extendStatus": words}
        report["dateSend"] = int(time.time())
        return post(message["callback"], json.dumps(report).encode(), "application/json", {})
