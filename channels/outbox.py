"""The outbox transport: every message becomes a file instead of a provider call.

Used by the embedded default (``make demo``) and by marketers' previews. Files are named
by ledger id, so a redelivered batch overwrites rather than duplicates:

- email: ``<dir>/email/<id>.eml`` (the exact MIME message SMTP would send);
- SMS and Telegram: ``<dir>/<channel>/<id>.json`` with ``to``, ``text`` and ``reference``.

Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from channels.base import OutgoingMessage, SendResult, SendStatus, Transport
from channels.errors import ChannelConfigError, ProviderUnavailable
from channels.mime import build_email, flatten, parse_sender


class OutboxTransport(Transport):
    name = "outbox"
    channels = ("email", "sms", "telegram")

    def __init__(self, directory: Path, *, sender: str = "loyalcast <noreply@localhost>") -> None:
        self.directory = Path(directory)
        self.sender = parse_sender(sender)

    @classmethod
    def from_options(cls, channel: str, options: dict[str, Any], *, outbox_dir: Path) -> "OutboxTransport":
        sender = options.get("from_address") or "loyalcast <noreply@localhost>"
        try:
            return cls(outbox_dir, sender=sender)
        except ValueError as exc:
            raise ChannelConfigError(f"channels.{channel}.from_address", str(exc)) from None

    def prepare(self, message: OutgoingMessage) -> tuple[Path, bytes]:
        folder = self.directory / message.channel
        if message.channel == "email":
            email = build_email(message, sender=self.sender, provider=self.name)
            return folder / f"{message.reference}.eml", flatten(email)
        document: dict[str, Any] = {"reference": message.reference, "to": message.to, "text": message.text}
        if message.channel == "telegram":
            document["parse_mode"] = "HTML"
        return folder / f"{message.reference}.json", json.dumps(document, ensure_ascii=False, indent=2).encode()

    def transmit(self, payload: tuple[Path, bytes]) -> Path:
        path, content = payload
        temporary = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(content)
            os.replace(temporary, path)
        except OSError as exc:
            raise ProviderUnavailable(f"cannot write {path}: {exc.strerror}", provider=self.name) from exc
        return path

    def result(self, response: Path) -> SendResult:
        return SendResult(SendStatus.SENT, provider_message_id=response.name)
