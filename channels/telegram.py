"""Telegram through python-telegram-bot's Bot API client.

PTB is asyncio; loyalcast's workers send from threads. A ``Bot`` shared across
``asyncio.run()`` calls fails now and then with "Event loop is closed", so each process
keeps exactly one ``Bot`` living on one event loop in a background thread, and worker
threads hand their sends to it (``run_coroutine_threadsafe``) and wait, with a timeout.

Messages use HTML parse mode (templates escape member data) and are at most 4,096
characters. Errors map onto ``channels.errors``: ``Forbidden`` (the member blocked the
bot) and "chat not found" are permanent and suppress the chat; other ``BadRequest``s
reject the message; ``RetryAfter`` is ``RateLimited`` with Telegram's wait; ``TimedOut``
may or may not have delivered (unknown outcome); other network errors are transient.
``BadRequest`` subclasses ``NetworkError``, so it is caught first.
"""

from __future__ import annotations

import asyncio
import logging
import concurrent.futures
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

from telegram import Bot
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from channels.base import OutgoingMessage, SendResult, SendStatus, Transport
from channels.errors import (
    InvalidRecipient,
    MessageRejected,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    RecipientBlocked,
)
from channels.options import seconds, secret

# httpx logs each request's URL at INFO, and a Bot API URL holds the bot's token.
logging.getLogger("httpx").setLevel(logging.WARNING)

MAX_LENGTH = 4096
DEFAULT_BASE_URL = "https://api.telegram.org/bot"


class _BotLoop:
    """One event loop in a daemon thread, and the Bots living on it (one per token and URL)."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _instance: ClassVar["_BotLoop | None"] = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loyalcast-telegram", daemon=True)
        self.thread.start()
        self.bots: dict[tuple[str, str, float], Bot] = {}

    @classmethod
    def get(cls) -> "_BotLoop":
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def bot(self, token: str, base_url: str, timeout: float) -> Bot:
        with self._lock:
            key = (token, base_url, timeout)
            if key not in self.bots:
                request = HTTPXRequest(connection_pool_size=64, read_timeout=timeout, write_timeout=timeout,
                                       connect_timeout=min(timeout, 5.0), pool_timeout=timeout)
                self.bots[key] = Bot(token, base_url=base_url, request=request)
            return self.bots[key]

    def run(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


class TelegramTransport(Transport):
    name = "telegram"
    channels = ("telegram",)
    max_length = MAX_LENGTH

    def __init__(self, token: str, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 10.0) -> None:
        self.token, self.base_url, self.timeout = token, base_url, timeout

    @classmethod
    def from_options(cls, channel: str, options: dict[str, Any], *, outbox_dir: Path) -> "TelegramTransport":
        token = secret(options.get("token_env"), f"channels.{channel}.token_env", required=True)
        return cls(token or "", base_url=options.get("base_url") or DEFAULT_BASE_URL, timeout=seconds(options.get("timeout")))

    def check(self, message: OutgoingMessage) -> None:
        super().check(message)
        try:
            int(message.to)
        except ValueError:
            raise InvalidRecipient(f"not a Telegram chat id: {message.to!r}", provider=self.name,
                                   reached_provider=False) from None

    def prepare(self, message: OutgoingMessage) -> dict[str, Any]:
        return {"chat_id": int(message.to), "text": message.text or "", "parse_mode": ParseMode.HTML,
                "disable_web_page_preview": True}

    def transmit(self, payload: dict[str, Any]) -> Any:
        runner = _BotLoop.get()
        bot = runner.bot(self.token, self.base_url, self.timeout)
        try:
            return runner.run(bot.send_message(**payload), timeout=self.timeout * 3)
        except Forbidden as exc:
            raise RecipientBlocked(exc.message, provider=self.name, status=403) from exc
        except BadRequest as exc:  # before NetworkError: BadRequest is one
            if "chat not found" in exc.message.lower():
                raise InvalidRecipient(exc.message, provider=self.name, status=400) from exc
            raise MessageRejected(exc.message, provider=self.name, status=400) from exc
        except RetryAfter as exc:
            raise RateLimited(exc.message, retry_after=_wait_seconds(exc), provider=self.name, status=429) from exc
        except TimedOut as exc:
            raise OutcomeUnknown(f"timed out: {exc.message}", provider=self.name) from exc
        except (NetworkError, TelegramError) as exc:
            raise ProviderUnavailable(exc.message, provider=self.name) from exc
        except concurrent.futures.TimeoutError as exc:
            raise OutcomeUnknown(f"no answer within {self.timeout * 3:g} s", provider=self.name) from exc

    def result(self, response: Any) -> SendResult:
        return SendResult(SendStatus.SENT, provider_message_id=str(response.message_id))


def _wait_seconds(exc: RetryAfter) -> float:
    # PTB 22 returns seconds as an int and warns that a timedelta is coming; take either.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        wait = exc.retry_after
    return wait.total_seconds() if hasattr(wait, "total_seconds") else float(wait)
