"""The transports one batch sends through: built on first use, closed at its end."""

from __future__ import annotations

import logging

from campaigns.config.settings import Settings
from channels import Transport
from channels.base import OutgoingMessage

log = logging.getLogger(__name__)


class Transports:
    """The batch's transports, one per channel, opened when first asked for."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._open: dict[str, Transport] = {}
        self._opened: set[str] = set()

    def __getitem__(self, channel: str) -> Transport:
        """The channel's transport, connected (opened on first use)."""
        transport = self._built(channel)
        if channel not in self._opened:
            transport.open()
            self._opened.add(channel)
        return transport

    def check(self, message: OutgoingMessage) -> None:
        """The transport's own check of ``message`` (address form, length), without
        connecting: what the provider would refuse is refused before the row is claimed."""
        self._built(message.channel).check(message)

    def _built(self, channel: str) -> Transport:
        transport = self._open.get(channel)
        if transport is None:
            transport = self.settings.transport(channel)
            self._open[channel] = transport
        return transport

    def close(self) -> None:
        for transport in self._open.values():
            try:
                transport.close()
            except Exception:  # closing must never hide the batch's own outcome
                log.exception("closing transport %s", transport.name)
        self._open.clear()
        self._opened.clear()
