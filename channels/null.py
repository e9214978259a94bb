"""The null transport: accepts every message and sends nothing.

For measuring loyalcast's own cost (rendering, ledger, queue) without any provider I/O
(``bench/``), and for rehearsing a campaign end to end without sending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from channels.base import OutgoingMessage, SendResult, SendStatus, Transport
from channels.options import TransportOptions
from channels.specs import CHANNELS


class NullOptions(TransportOptions):
    """``[channels.<name>]`` keys of the ``null`` transport: only the common ones."""

    transport: Literal["null"]


class NullTransport(Transport):
    name = "null"
    channels = tuple(CHANNELS)
    Options = NullOptions

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> NullTransport:
        return cls()

    def prepare(self, message: OutgoingMessage) -> OutgoingMessage:
        return message

    def transmit(self, payload: OutgoingMessage) -> int:
        return payload.reference

    def result(self, response: int) -> SendResult:
        return SendResult(SendStatus.SENT, provider_message_id=f"null-{response}")
