"""Telegram through python-telegram-bot's Bot API client.

PTB is asyncio; loyalcast's workers send from threads. A ``Bot`` shared across
``asyncio.run()`` calls fails now and then with "Event loop is closed" (its connections
belong to the loop that opened them), so every sending thread keeps its own event loop,
open while the thread lives, with its own ``Bot`` on it, and runs each send on that loop
with a deadline. (One loop in a background thread that all worker threads hand their
sends to costs a thread switch each way: 1.0 ms of CPU per message against 0.8 ms,
measured against the benchmark's Bot API sink.) The Bots speak HTTP through aiohttp
(``channels.telegram_request``), not PTB's default httpx: 0.2 ms against 0.63 ms.

Messages use HTML parse mode (templates escape member data) and are at most 4,096
characters. Errors map onto ``channels.errors``: ``Forbidden`` (the member blocked the
bot) and "chat not found" are permanent and suppress the chat; other ``BadRequest``s
reject the message; ``RetryAfter`` is ``RateLimited`` with Telegram's wait; ``TimedOut``
may or may not have delivered (unknown outcome); other network errors are transient.
``BadRequest`` subclasses ``NetworkError``, so it is caught first.

The bot's updates (members' ``/start <token>`` and ``/stop``) come back either to the
webhook, ``/webhooks/<channel>``, with the ``secret_token`` verified, or by long polling
(``updates``, for installations without public HTTPS); :func:`parse_update` reads both.
"""

from __future__ import annotations

import asyncio
import atexit
import re
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from channels.base import Inbound, InboundMessage, OutgoingMessage, SendResult, SendStatus, Transport, WebhookRequest
from channels.errors import (
    ChannelConfigError,
    InvalidRecipient,
    MalformedWebhook,
    MessageRejected,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    RecipientBlocked,
    WebhookUnsupported,
)
from channels.options import TransportOptions, secret
from channels.webhooks import check_secret, json_body

if TYPE_CHECKING:
    from telegram import Bot
    from telegram.error import RetryAfter

    from channels.telegram_request import AiohttpRequest

# python-telegram-bot is imported when a Telegram transport first talks to the Bot API,
# not with this module: settings, the planner and the web service read the options and
# parse updates without it (9 MB less per process that never sends on Telegram).

MAX_LENGTH = 4096
SECRET_HEADER = "x-telegram-bot-api-secret-token"
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
ALLOWED_UPDATES = ["message", "my_chat_member"]
DEFAULT_BASE_URL = "https://api.telegram.org/bot"


class _ThreadLoop:
    """One thread's event loop and the Bots living on it (one per token, URL and timeout).

    Closed (connections, then the loop) when the thread ends and drops it.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.bots: dict[tuple[str, str, float], Bot] = {}
        self.requests: list[AiohttpRequest] = []

    def bot(self, token: str, base_url: str, timeout: float) -> Bot:
        key = (token, base_url, timeout)
        if key not in self.bots:
            from telegram import Bot

            from channels.telegram_request import AiohttpRequest

            request = AiohttpRequest(
                read_timeout=timeout, write_timeout=timeout, connect_timeout=min(timeout, 5.0), pool_timeout=timeout
            )
            updates = AiohttpRequest()  # PTB wants one for getUpdates too; it never opens a connection here
            self.requests += [request, updates]
            self.bots[key] = Bot(token, base_url=base_url, request=request, get_updates_request=updates)
        return self.bots[key]

    def run(self, coroutine: Any, timeout: float) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout))

    def close(self) -> None:
        try:
            for request in self.requests:
                shutdown = request.shutdown()
                try:
                    self.loop.run_until_complete(shutdown)
                except RuntimeError:
                    shutdown.close()  # never started (another loop runs here): not "never awaited"
                    raise
        finally:
            self.loop.close()

    def __del__(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.close()
        except RuntimeError:  # dropped in a thread that is running another loop
            self.loop.close()


_threads = threading.local()


def _this_thread() -> _ThreadLoop:
    runner = getattr(_threads, "runner", None)
    if runner is None:
        runner = _threads.runner = _ThreadLoop()
        if threading.current_thread() is threading.main_thread():
            # The main thread's loop (a command polling the bot) would otherwise be closed
            # by garbage collection during interpreter shutdown, after aiohttp's modules.
            atexit.register(runner.close)
    return runner


class TelegramOptions(TransportOptions):
    """``[channels.<name>]`` keys of the ``telegram`` transport."""

    transport: Literal["telegram"]
    token_env: str | None = None
    """Environment variable holding the bot token (required)."""
    base_url: str | None = None
    """Bot API base URL ending in ``/bot`` (default: Telegram's; a local Bot API server
    or a fake in tests)."""
    bot_username: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]{3,31}$")
    """The bot's @username without the @: templates get ``opt_in.telegram``, a
    ``https://t.me/<bot>?start=<token>`` link that links the member's chat."""
    webhook_secret_env: str | None = None
    """Environment variable holding the ``secret_token`` Telegram sends with each
    update to ``/webhooks/telegram`` (``loyalcast telegram webhook`` registers it)."""

    def opt_in_url(self, token: str) -> str | None:
        return f"https://t.me/{self.bot_username}?start={token}" if self.bot_username else None


class TelegramTransport(Transport):
    name = "telegram"
    channels = ("telegram",)
    max_length = MAX_LENGTH
    Options = TelegramOptions
    replies_in_webhook = True

    def __init__(
        self, token: str, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 10.0, webhook_secret: str | None = None
    ) -> None:
        self.token, self.base_url, self.timeout = token, base_url, timeout
        self.webhook_secret = webhook_secret

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> TelegramTransport:
        assert isinstance(options, TelegramOptions)
        token = secret(options.token_env, f"channels.{channel}.token_env", required=True)
        webhook_secret = secret(options.webhook_secret_env, f"channels.{channel}.webhook_secret_env")
        if webhook_secret and not SECRET_TOKEN.fullmatch(webhook_secret):
            raise ChannelConfigError(
                f"channels.{channel}.webhook_secret_env",
                "Telegram's secret_token is 1 to 256 characters of A-Z, a-z, 0-9, _ and -",
            )
        return cls(
            token or "",
            base_url=options.base_url or DEFAULT_BASE_URL,
            timeout=options.timeout.total_seconds(),
            webhook_secret=webhook_secret,
        )

    def prepare(self, message: OutgoingMessage) -> dict[str, Any]:
        return {
            "chat_id": int(message.to),
            "text": message.text or "",
            "parse_mode": "HTML",  # telegram.constants.ParseMode.HTML
            "disable_web_page_preview": True,
        }

    def transmit(self, payload: dict[str, Any]) -> Any:
        from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut

        runner = _this_thread()
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
        except TimeoutError as exc:
            raise OutcomeUnknown(f"no answer within {self.timeout * 3:g} s", provider=self.name) from exc

    def result(self, response: Any) -> SendResult:
        return SendResult(SendStatus.SENT, provider_message_id=str(response.message_id))

    # -- what comes back: the bot's updates ------------------------------------------

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """An update Telegram posted to the webhook: the ``secret_token`` registered
        with ``setWebhook`` must come back in ``X-Telegram-Bot-Api-Secret-Token``."""
        if not self.webhook_secret:
            raise WebhookUnsupported("the Telegram webhook is refused until webhook_secret_env is set (or use long polling)")
        check_secret(self.webhook_secret, request.headers.get(SECRET_HEADER), header="X-Telegram-Bot-Api-Secret-Token")
        found = parse_update(json_body(request))
        return Inbound(messages=[found] if found else [])

    def updates(self, offset: int | None, wait: float) -> tuple[list[InboundMessage], int | None]:
        """Long polling (``getUpdates``): what arrived after ``offset``, waiting up to
        ``wait`` seconds, and the offset that acknowledges it."""
        from telegram.error import NetworkError, TelegramError

        runner = _this_thread()
        bot = runner.bot(self.token, self.base_url, self.timeout)
        try:
            found = runner.run(
                bot.get_updates(offset=offset, timeout=int(wait), allowed_updates=ALLOWED_UPDATES),
                timeout=wait + self.timeout * 3,
            )
        except (NetworkError, TelegramError) as exc:
            raise ProviderUnavailable(exc.message, provider=self.name) from exc
        except TimeoutError as exc:
            raise ProviderUnavailable(
                f"getUpdates gave no answer within {wait + self.timeout * 3:g} s", provider=self.name
            ) from exc
        messages = [m for m in (parse_update(update.to_dict()) for update in found) if m is not None]
        return messages, (max(update.update_id for update in found) + 1 if found else offset)

    def set_webhook(self, url: str | None) -> None:
        """Register ``url`` (with this transport's secret token) for updates, or remove
        the webhook (``None``) so that long polling may take them."""
        from telegram.error import NetworkError, TelegramError

        runner = _this_thread()
        bot = runner.bot(self.token, self.base_url, self.timeout)
        try:
            if url is None:
                runner.run(bot.delete_webhook(), timeout=self.timeout * 3)
            else:
                call = bot.set_webhook(url=url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES)
                runner.run(call, timeout=self.timeout * 3)
        except (NetworkError, TelegramError) as exc:
            raise ProviderUnavailable(exc.message, provider=self.name) from exc


def parse_update(update: Any) -> InboundMessage | None:
    """A member's bot command from one update: a private text message, or the member
    blocking the bot (``my_chat_member`` kicked, read as ``/stop``); None for anything else."""
    if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
        raise MalformedWebhook("an update needs an integer update_id", field="body.update_id")
    key = str(update["update_id"])
    message = update.get("message")
    if isinstance(message, dict):
        chat, sender = message.get("chat") or {}, message.get("from") or {}
        if not isinstance(chat, dict) or chat.get("type") != "private" or not isinstance(chat.get("id"), int):
            return None
        text = message.get("text")
        if not isinstance(text, str):
            return None
        language = sender.get("language_code") if isinstance(sender, dict) else None
        return InboundMessage(key, str(chat["id"]), text[:200], language if isinstance(language, str) else None)
    member = update.get("my_chat_member")
    if isinstance(member, dict):
        chat, status = member.get("chat") or {}, (member.get("new_chat_member") or {}).get("status")
        if isinstance(chat, dict) and isinstance(chat.get("id"), int) and status == "kicked":
            return InboundMessage(key, str(chat["id"]), "/stop")
    return None


def _wait_seconds(exc: RetryAfter) -> float:
    # PTB 22 returns seconds as an int and warns that a timedelta is coming; take either.
    from telegram.warnings import PTBDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        wait = exc.retry_after
    return wait.total_seconds() if hasattr(wait, "total_seconds") else float(wait)
