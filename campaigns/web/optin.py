"""Members' bot commands: ``/start <token>`` links the chat, ``/stop`` opts out; and a
stop word on a channel without commands (WhatsApp: "STOP", "стоп") does the same.

The token is the signed opt-in token of ``Settings.opt_in_links`` (Telegram passes the
deep link's ``start`` parameter as ``/start <token>``). Linking records the chat in
``contacts`` with consent and a resubscribe to every category on the channel; ``/stop``
(or blocking the bot) takes the consent back and records an unsubscribe from every
category on the channel, whichever table the chat id came from. The answer is in the
member's language (their locale, else the language Telegram reports, else the program's).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, cast, select
from sqlalchemy.engine import Connection

from campaigns import metrics
from campaigns.config.links import TELEGRAM_START
from campaigns.config.settings import Settings
from campaigns.config.values import ANY
from campaigns.errors import InvalidLink
from campaigns.store import contacts
from campaigns.store.models import members
from campaigns.store.preferences import choose
from campaigns.web.texts import Words, language
from channels.base import InboundMessage
from channels.specs import channel_spec

STOP_WORDS = frozenset({"/stop", "stop", "стоп", "unsubscribe", "отписаться", "stop promotions", "остановить рассылку"})
"""What a member writes (or taps: a template's quick-reply button) to stop marketing on a
channel, compared without case and surrounding punctuation."""


def is_stop(text: str) -> bool:
    return text.strip().strip(".!").casefold() in STOP_WORDS


def stop(conn: Connection, channel: str, message: InboundMessage, now: datetime) -> list[int]:
    """A member's stop word on ``channel``: unsubscribe the members at the message's
    address from every marketing category there; their ids (none for any other text)."""
    if not is_stop(message.text):
        return []
    return _unsubscribe(conn, channel, message.address, f"{channel} stop word", now)


def _unsubscribe(conn: Connection, channel: str, address: str, source: str, now: datetime) -> list[int]:
    ids = set(contacts.withdraw(conn, channel, address, now))
    column = members.c[channel_spec(channel).contact]
    ids |= {row.id for row in conn.execute(select(members.c.id).where(cast(column, String) == address))}
    for member_id in sorted(ids):
        choose(conn, member_id, channel, ANY, subscribed=False, source=source[:32], now=now)
    metrics.preference_changed(source)
    return sorted(ids)


def answer(conn: Connection, settings: Settings, channel: str, message: InboundMessage, now: datetime) -> str:
    """Act on one command; the reply to send to the chat."""
    command, _, argument = message.text.strip().partition(" ")
    command = command.split("@", 1)[0].lower()  # "/start@romashka_bonus_bot" in groups
    program = settings.program
    fallback = language(message.language) if language(message.language) in program.locales else program.default_locale
    if command == "/start" and argument.strip():
        try:
            claim = settings.link_signer().verify(argument.strip(), TELEGRAM_START)
        except InvalidLink:
            return Words(fallback)("bot_bad_link", program=program.name)
        member = conn.execute(select(members.c.id, members.c.locale).where(members.c.id == claim.member_id)).first()
        if member is None:
            return Words(fallback)("bot_bad_link", program=program.name)
        contacts.link(conn, claim.member_id, channel, message.address, source="telegram /start", now=now)
        choose(conn, claim.member_id, channel, ANY, subscribed=True, source="telegram /start", now=now)
        metrics.preference_changed("telegram /start")
        return Words(_locale(settings, member.locale, fallback))("bot_linked", program=program.name)
    if command == "/stop" or is_stop(message.text):
        ids = _unsubscribe(conn, channel, message.address, "telegram /stop", now)
        locale = fallback
        if ids:
            found = conn.execute(select(members.c.locale).where(members.c.id == min(ids))).scalar()
            locale = _locale(settings, found, fallback)
        return Words(locale)("bot_stopped", program=program.name)
    return Words(fallback)("bot_hello", program=program.name)


def _locale(settings: Settings, locale: str | None, fallback: str) -> str:
    return locale if locale in settings.program.locales else fallback
