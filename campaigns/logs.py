"""Logging without personal data, as text or one JSON object per line.

Every record passes a filter that masks email addresses and phone numbers wherever they
appear (message, arguments, exception text), so a provider error that quotes an address
cannot leak it. Message bodies are never logged. Use ``extra={...}`` for structured
fields (``delivery_id``, ``channel``, ``status``); they become JSON keys.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-])[A-Za-z0-9.-]*(\.[A-Za-z]{2,})")
PHONE = re.compile(r"(\+?\d{1,3})[\d\s().-]{5,}(\d{2})\b")
STANDARD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def mask(text: str) -> str:
    """``anna.petrova@mail.ru`` -> ``a***@m***.ru``; ``+79161234567`` -> ``+79*******67``."""
    text = EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}***{m.group(3)}", text)
    return PHONE.sub(lambda m: f"{m.group(1)}{'*' * 7}{m.group(2)}", text)


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in STANDARD_FIELDS and isinstance(value, str):
                setattr(record, key, mask(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD_FIELDS and not key.startswith("_"):
                document[key] = value
        if record.exc_text:
            document["error"] = record.exc_text
        return json.dumps(document, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(log_format: str = "text", level: int | str = logging.WARNING, stream: TextIO | None = None) -> logging.Handler:
    """Send loyalcast's (and Dramatiq's) logs to ``stream`` (stderr), masked, as text or JSON.

    Replaces the root logger's handlers (Dramatiq's worker processes install their own
    before importing ``workers``), so every line is masked and in one format.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_libraries()
    return handler


def quiet_libraries() -> None:
    """HTTP clients (httpx, PTB's default, and urllib3 under requests) log requests at
    INFO with their URL, and a Bot API URL carries the bot token: keep such libraries,
    and python-telegram-bot's own loggers, at WARNING."""
    for name in ("httpx", "httpcore", "telegram", "urllib3", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)
