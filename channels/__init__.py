"""loyalcast's channels: transports that carry rendered messages to providers.

The registry is explicit: a transport exists when it is listed in ``TRANSPORTS``.
``channels`` knows nothing of campaigns; ``build_transport`` takes plain values.
See ``channels/README.md`` for how to add one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from channels.base import OutgoingMessage, SendResult, SendStatus, Transport
from channels.email import SmtpTransport
from channels.errors import ChannelConfigError
from channels.null import NullTransport
from channels.options import TransportOptions
from channels.outbox import OutboxTransport
from channels.sms import HttpSmsTransport
from channels.smsaero import SmsAeroTransport
from channels.smsc import SmscTransport
from channels.smsru import SmsRuTransport
from channels.specs import (
    CHANNELS,
    ChannelSpec,
    MessageKind,
    UnknownChannel,
    channel_spec,
)
from channels.telegram import TelegramTransport
from channels.viber import InfobipViberTransport
from channels.whatsapp import WhatsAppCloudTransport

TRANSPORTS: dict[str, type[Transport]] = {
    OutboxTransport.name: OutboxTransport,
    SmtpTransport.name: SmtpTransport,
    HttpSmsTransport.name: HttpSmsTransport,
    SmsRuTransport.name: SmsRuTransport,
    SmscTransport.name: SmscTransport,
    SmsAeroTransport.name: SmsAeroTransport,
    TelegramTransport.name: TelegramTransport,
    InfobipViberTransport.name: InfobipViberTransport,
    WhatsAppCloudTransport.name: WhatsAppCloudTransport,
    NullTransport.name: NullTransport,
}


DEFAULT_TRANSPORT = OutboxTransport.name
"""The transport of a channel whose section names none."""


def build_transport(
    channel: str, transport: str, *, outbox_dir: Path, options: TransportOptions | Mapping[str, Any]
) -> Transport:
    """A ready transport for ``channel`` (no network yet); ChannelConfigError names the
    bad settings key. ``options`` is the transport's validated ``Options`` or the
    section's raw keys, validated here."""
    key = f"channels.{channel}"
    cls = TRANSPORTS.get(transport)
    if cls is None:
        raise ChannelConfigError(f"{key}.transport", f"unknown transport {transport!r} (known: {', '.join(sorted(TRANSPORTS))})")
    if channel not in cls.channels:
        raise ChannelConfigError(f"{key}.transport", f"transport {transport!r} cannot carry {channel}")
    if not isinstance(options, TransportOptions):
        try:
            options = cls.Options.model_validate({**options, "transport": transport})
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise ChannelConfigError(f"{key}.{where}", option_problem(error)) from None
    return cls.from_options(channel, options, outbox_dir=outbox_dir)


def option_problem(error: Any) -> str:
    """One pydantic error of a transport's options, in the words settings errors use."""
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling)"
    if error["type"] == "missing":
        return "required key is missing"
    message: str = error["msg"]
    return message.removeprefix("Value error, ")


__all__ = [
    "CHANNELS",
    "DEFAULT_TRANSPORT",
    "TRANSPORTS",
    "ChannelSpec",
    "MessageKind",
    "OutgoingMessage",
    "SendResult",
    "SendStatus",
    "Transport",
    "TransportOptions",
    "UnknownChannel",
    "build_transport",
    "channel_spec",
]
