"""The channel contract: what every transport receives, returns and raises.

A :class:`Transport` delivers one kind of message (``email``, ``sms`` or ``telegram``)
to one kind of provider. The base class fixes the order of steps in :meth:`Transport.send`;
a provider module fills in the steps:

1. ``check(message)``   reject what the provider would reject anyway (length, and the
   address form of ``channels.addresses``), before any call;
2. ``prepare(message)`` turn the message into the provider's payload;
3. ``transmit(payload)``  make the provider call; map provider failures to ``channels.errors``;
4. ``result(response)`` normalize the provider's answer into a :class:`SendResult`.

What comes back goes through ``parse_webhook``: each transport verifies and parses its
own provider's callbacks into :class:`DeliveryEvent` (a closed set of kinds,
:class:`EventKind`) and :class:`InboundMessage`, the way each django-anymail backend
owns its tracking webhook.

Transports know nothing of campaigns, members or the ledger: they get a :class:`OutgoingMessage`
and either return a result or raise an error from ``channels.errors``. They may hold a
connection between sends (``open``/``close``; one batch is sent between them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from channels.addresses import check_address
from channels.errors import MessageRejected, WebhookUnsupported
from channels.options import TransportOptions


class SendStatus(StrEnum):
    """The closed set of successful outcomes a transport reports."""

    SENT = "sent"  # the provider accepted the message
    DELIVERED = "delivered"  # the provider confirmed delivery to the recipient


@dataclass(frozen=True)
class ApprovedTemplate:
    """A message template the provider approved beforehand (WhatsApp's message
    templates), filled for one recipient: the provider holds the wording, we send its
    name, language and parameters. Parameters are plain text, already rendered."""

    name: str
    language: str
    """The provider's language code of the approved translation (``ru``, ``en_US``)."""
    header: tuple[str, ...] = ()
    body: tuple[str, ...] = ()
    buttons: tuple[tuple[int, str], ...] = ()
    """``(index, url suffix)`` of the template's dynamic URL buttons."""

    def describe(self) -> str:
        """The template and its parameters as people read them (previews, the outbox)."""
        lines = [f"approved template {self.name} ({self.language})"]
        lines += [f"  header {{{{{n}}}}} = {value}" for n, value in enumerate(self.header, 1)]
        lines += [f"  body {{{{{n}}}}} = {value}" for n, value in enumerate(self.body, 1)]
        lines += [f"  button {index} url suffix = {value}" for index, value in self.buttons]
        return "\n".join(lines)


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message for one recipient.

    ``reference`` is the ledger id: transports pass it to the provider as the client
    reference where the API has one, and use it to name outbox files. ``approved`` is
    the provider-approved template of a channel that has one; ``session_open`` says the
    member wrote to us within the channel's session window, so ``text`` may go as free
    text instead.
    """

    channel: str
    reference: int
    to: str
    text: str | None = None
    subject: str | None = None
    html: str | None = None
    to_name: str | None = None
    marketing: bool = True
    unsubscribe_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    approved: ApprovedTemplate | None = None
    session_open: bool = False


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    provider_message_id: str | None = None
    segments: int | None = None
    """Billing units where the provider counts them (SMS segments)."""


class EventKind(StrEnum):
    """The closed set of what a provider reports about a message it accepted."""

    DELIVERED = "delivered"  # reached the recipient (handset, mailbox, chat)
    BOUNCED = "bounced"  # permanently undeliverable to this address: suppress it
    COMPLAINED = "complained"  # the recipient reported it as spam: suppress the address
    FAILED = "failed"  # not delivered this time (the address may still work)
    DEFERRED = "deferred"  # delayed; the provider keeps trying


@dataclass(frozen=True)
class DeliveryEvent:
    """One normalized report. ``key`` identifies it at the provider (a retried callback
    repeats it); ``kind`` None is a status that is not an outcome (Twilio's ``sent``),
    kept for audit only."""

    key: str
    kind: EventKind | None
    provider_message_id: str | None
    recipient: str | None = None
    reason: str = ""
    occurred_at: datetime | None = None
    raw: str = ""


@dataclass(frozen=True)
class InboundMessage:
    """Something a member sent us (a bot command, a reply): who, what, in which
    language, and when (None: as it arrives)."""

    key: str
    address: str
    text: str
    language: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class WebhookRequest:
    """A provider's callback as received. ``url`` is the public URL the provider called
    (what signatures cover, behind a reverse proxy too); header names are lower case."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str = ""


@dataclass
class Inbound:
    """What one callback carried."""

    events: list[DeliveryEvent] = field(default_factory=list)
    messages: list[InboundMessage] = field(default_factory=list)
    reply: str | None = None
    """The plain-text answer the provider expects once the callback is recorded (SMS.ru
    retries until it reads ``100``); None: loyalcast's JSON answer."""


class Transport(ABC):
    """Base of every transport. Subclasses set ``name``, ``channels`` and ``Options`` and
    fill the steps."""

    name: ClassVar[str]
    channels: ClassVar[tuple[str, ...]]
    """Channels (``channels.specs``) this transport can carry."""
    Options: ClassVar[type[TransportOptions]]
    """The model of this transport's ``[channels.<name>]`` keys; its ``transport`` field
    is ``Literal[name]``."""
    default_region: str = "RU"
    """Where a phone number in a local format is read (ISO 3166 code; the SMS transport's
    ``default_region`` option)."""
    max_length: ClassVar[int | None] = None
    """Longest text body the provider accepts, in characters (None: no limit)."""

    @classmethod
    @abstractmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> Transport:
        """Build from the channel's validated options (an instance of ``Options``); raise
        ChannelConfigError naming the key for what the model cannot check (secrets in
        the environment, keys that depend on each other). No network."""

    def send(self, message: OutgoingMessage) -> SendResult:
        """Deliver ``message``; return a SendResult or raise a ``channels.errors`` error."""
        self.check(message)
        payload = self.prepare(message)
        response = self.transmit(payload)
        return self.result(response)

    def check(self, message: OutgoingMessage) -> None:
        if message.channel not in self.channels:
            raise MessageRejected(f"transport {self.name} does not carry {message.channel}", provider=self.name)
        check_address(message.channel, message.to, provider=self.name, default_region=self.default_region)
        if self.max_length is not None and message.text is not None and len(message.text) > self.max_length:
            raise MessageRejected(f"text is {len(message.text)} characters, the limit is {self.max_length}", provider=self.name)

    @abstractmethod
    def prepare(self, message: OutgoingMessage) -> Any: ...

    @abstractmethod
    def transmit(self, payload: Any) -> Any: ...

    @abstractmethod
    def result(self, response: Any) -> SendResult: ...

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """Verify and normalize a callback this provider sent to ``/webhooks/<channel>``;
        raise ``WebhookRejected`` (signature, shape) and record nothing. Transports that
        receive no callbacks keep this default."""
        raise WebhookUnsupported(f"the {self.name} transport receives no callbacks")

    def verify_subscription(self, query: Mapping[str, str]) -> str:
        """Answer a provider's check that ``/webhooks/<channel>`` is ours (a GET with
        a challenge, as WhatsApp's ``hub.challenge``): the text to answer with, or
        ``WebhookRejected``. Transports whose provider does no such check keep this."""
        raise WebhookUnsupported(f"the {self.name} transport receives no subscription checks")

    replies_in_webhook: ClassVar[bool] = False
    """The provider takes a reply to a member's message in the webhook's own answer
    (Telegram's "method in the response"): bot commands are answered there."""

    def open(self) -> None:  # noqa: B027  # optional hook: most transports hold nothing between sends
        """Acquire what a batch of sends shares (a connection). Optional."""

    def close(self) -> None:  # noqa: B027  # optional hook, the pair of open()
        """Release what ``open`` acquired. Must be safe to call twice."""

    def __enter__(self) -> Transport:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
