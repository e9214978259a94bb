"""SMS.ru's HTTP API as the fake gateway speaks it: ``POST /sms/send`` (form: ``api_id``,
``to``, ``msg``, ``from``, ``json=1``), answered with HTTP 200 whatever happened, the
outcome in the body: ``{"status": "OK", "sms": {"<number>": {"status": "OK",
"status_code": 100, "sms_id": ...}}}`` per number, or ``"status": "ERROR"`` with a
``status_code`` at the top (the request) or per number (that number). Delivery reports
go to the account's callback URL as SMS.ru posts them: a form of ``data[]`` entries,
each ``sms_status\\n<sms_id>\\n<code>\\n<unix time>``, expecting ``100`` in answer."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from channels.fakes.base import post
from channels.fakes.protocol import Answer, Protocol, ReportTo

ERRORS = {
    # name: (status_code, where, status_text): "request" errors are top-level, "number" per number
    "auth": (200, "request", "Неправильный api_id"),
    "no_funds": (201, "request", "Не хватает средств на лицевом счету"),
    "sender": (204, "request", "Имя отправителя не согласовано с администрацией"),
    "quota": (206, "request", "Будет превышен или уже превышен дневной лимит на отправку сообщений"),
    "invalid": (202, "number", "Неправильно указан номер телефона получателя, либо на него нет маршрута"),
    "prohibited": (207, "number", "На этот номер нельзя отправлять сообщения"),
    "blocked": (209, "number", "Вы добавили этот номер (или один из номеров) в стоп-лист"),
    "duplicate": (231, "number", "Превышен лимит одинаковых сообщений на этот номер в минуту"),
}
STATUS_CODES = {"delivered": 103, "expired": 104, "failed": 107, "invalid": 150, "read": 110}


class SmsRuProtocol(Protocol):
    name, path = "smsru", "/sms/send"

    def read(self, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        fields = dict(urllib.parse.parse_qsl(body.decode()))
        return {
            "to": fields.get("to"),
            "text": fields.get("msg"),
            "sender": fields.get("from"),
            "reference": None,
            "api_id": fields.get("api_id"),
            "json": fields.get("json"),
        }

    def transient(self) -> Answer:
        text = "Сервис временно недоступен, попробуйте чуть позже"
        return 200, {}, {"status": "ERROR", "status_code": 220, "status_text": text}

    def error(self, name: str, to: str) -> Answer | None:
        if name not in ERRORS:
            return None
        code, where, text = ERRORS[name]
        if where == "request":
            return 200, {}, {"status": "ERROR", "status_code": code, "status_text": text}
        number = {"status": "ERROR", "status_code": code, "status_text": text}
        return 200, {}, {"status": "OK", "status_code": 100, "sms": {to: number}, "balance": 100.5}

    def accepted(self, message: dict[str, Any], number: int) -> tuple[str, Answer]:
        sms_id = f"{200000 + number}-{number}"
        sms = {str(message["to"]): {"status": "OK", "status_code": 100, "sms_id": sms_id}}
        return sms_id, (200, {}, {"status": "OK", "status_code": 100, "sms": sms, "balance": 100.5})

    def report(self, to: ReportTo, message: dict[str, Any], status: str, error_code: str | None) -> int | None:
        if not to.url:
            return None
        code = STATUS_CODES[status]
        entry = f"sms_status\n{message['id']}\n{code}\n{int(time.time())}"
        body = urllib.parse.urlencode([("data[0]", entry)]).encode()
        return post(to.url, body, "application/x-www-form-urlencoded", {})
