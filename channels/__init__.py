"""loyalcast's channels: transports that carry rendered messages to providers.

The registry is explicit: a transport exists when it is listed in ``TRANSPORTS``.
``channels`` knows nothing of campaigns; ``build_transport`` takes plain values.
See ``channels/README.md`` for how to add one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from channels.base import OutgoingMessage, SendResult, SendStatus, Transport
from channels.errors import ChannelConfigError
from channels.email import SmtpTransport
from channels.null import NullTransport
from channels.outbox import OutboxTransport
from channels.sms import HttpSmsTransport
from channels.telegram import TelegramTransport

TRANSPORTS: dict[str, type[Transport]] = {
    OutboxTransport.name: OutboxTransport,
    SmtpTransport.name: SmtpTransport,
    HttpSmsTransport.name: HttpSmsTransport,
    TelegramTransport.name: TelegramTransport,
    NullTransport.name: NullTransport,
}


def build_transport(channel: str, transport: str, *, outbox_dir: Path, options: dict[str, Any]) -> Transport:
    """A ready transport for ``channel``; ChannelConfigError names the bad settings key."""
    key = f"channels.{channel}.transport"
    cls = TRANSPORTS.get(transport)
    if cls is None:
        raise ChannelConfigError(key, f"unknown transport {transport!r} (known: {', '.join(sorted(TRANSPORTS))})")
    if channel not in cls.channels:
        raise ChannelConfigError(key, f"transport {transport!r} cannot carry {channel}")
    return cls.from_options(channel, options, outbox_dir=outbox_dir)


__all__ = ["OutgoingMessage", "SendResult", "SendStatus", "Transport", "TRANSPORTS", "build_transport"]
