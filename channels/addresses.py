"""What a member's address must look like on each channel, checked by every transport
(the outbox included) before any provider call: an address that cannot work fails
``InvalidRecipient`` with ``reached_provider=False``, so it gives its cap slot back.

- ``email``: one ``@``, no spaces or control characters, a mailbox of at most 64 and an
  address of at most 254 characters; the domain goes in IDNA (``пример.рф`` ->
  ``xn--e1afmkfd.xn--p1ai``). A mailbox that is not ASCII needs the server's SMTPUTF8.
- ``sms``: a number ``phonenumbers`` finds valid, local formats read in the transport's
  ``default_region``; sent as E.164.
- ``telegram``: a chat id, a non-zero 64-bit integer (groups and channels are negative).
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

from channels.errors import InvalidRecipient
from channels.specs import channel_spec

CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
"""Runs of control characters: never part of an address or a header."""


def envelope_address(address: str, provider: str) -> str:
    """The email address as SMTP sends it (the domain in IDNA); InvalidRecipient for
    what cannot be an address."""
    if address.count("@") != 1 or CONTROL.search(address) or " " in address:
        raise _invalid(f"not an email address: {address!r}", provider)
    local, domain = address.split("@")
    if not local or not domain or len(local) > 64 or len(address) > 254:
        raise _invalid(f"not an email address: {address!r}", provider)
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise _invalid(f"not an email address: {address!r} (the domain is not valid IDNA)", provider) from None
    return f"{local}@{domain}"


@lru_cache(maxsize=256)  # check() and prepare() both need it for the same message
def normalize_number(raw: str, default_region: str = "RU") -> str:
    """E.164 form of ``raw``; ValueError when it cannot be a valid number."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {raw!r} ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"not a valid phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def chat_id(raw: str, provider: str) -> int:
    """The Telegram chat id ``raw`` names; InvalidRecipient when it cannot be one."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value == 0 or not -(2**63) <= value < 2**63:
        raise _invalid(f"not a Telegram chat id: {raw!r}", provider)
    return value


def check_address(channel: str, address: str, *, provider: str, default_region: str = "RU") -> None:
    """Raise InvalidRecipient (before any provider call) when ``address`` cannot work on ``channel``."""
    contact = channel_spec(channel).contact
    if contact == "email":
        envelope_address(address, provider)
    elif contact == "phone":
        try:
            normalize_number(address, default_region)
        except ValueError as exc:
            raise _invalid(str(exc), provider) from None
    elif contact == "telegram_chat_id":
        chat_id(address, provider)


def _invalid(detail: str, provider: str) -> InvalidRecipient:
    return InvalidRecipient(detail, provider=provider, reached_provider=False)
