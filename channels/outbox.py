"""The outbox transport: every message becomes a file instead of a provider call.

Used by the embedded default (``make demo``) and by marketers' previews. Files are named
by ledger id, so a redelivered batch overwrites rather than duplicates:

- letters (email): ``<dir>/<channel>/<id>.eml``, the exact MIME message SMTP would send;
- text and markup messages: ``<dir>/<channel>/<id>.json`` with ``to``, ``text`` and
  ``reference`` (and ``parse_mode`` for markup); an approved-template channel's file
  holds the ``template`` (name, language, parameters) and, when the member's session is
  open, the free ``text`` that would go instead (``sent_as`` says which).

Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from channels.base import Inbound, OutgoingMessage, SendResult, SendStatus, Transport, WebhookRequest
from channels.errors import ChannelConfigError, ProviderUnavailable
from channels.mime import build_email, flatten, parse_sender
from channels.options import TransportOptions, secret
from channels.specs import CHANNELS, MessageKind, channel_spec
from channels.webhooks import neutral_webhook


class OutboxOptions(TransportOptions):
    """``[channels.<name>]`` keys of the ``outbox`` transport (the default)."""

    transport: Literal["outbox"] = "outbox"
    from_address: str | None = None
    """Sender of letters written to the outbox."""
    sender: str | None = None
    """Sender id of text and markup messages, written into their files."""
    webhook_secret_env: str | None = None
    """Environment variable holding the key that signs delivery reports, bounces and
    complaints posted to ``/webhooks/<channel>`` in loyalcast's neutral JSON format
    (``channels.webhooks``); unset: that webhook is refused."""


class OutboxTransport(Transport):
    name = "outbox"
    channels = tuple(CHANNELS)
    Options = OutboxOptions

    def __init__(
        self,
        directory: Path,
        *,
        sender: str = "loyalcast <noreply@localhost>",
        text_sender: str | None = None,
        webhook_key: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.webhook_key = webhook_key
        self.sender = parse_sender(sender)
        self.text_sender = text_sender

    @classmethod
    def from_options(cls, channel: str, options: TransportOptions, *, outbox_dir: Path) -> OutboxTransport:
        assert isinstance(options, OutboxOptions)
        sender = options.from_address or "loyalcast <noreply@localhost>"
        webhook_key = secret(options.webhook_secret_env, f"channels.{channel}.webhook_secret_env")
        try:
            return cls(outbox_dir, sender=sender, text_sender=options.sender, webhook_key=webhook_key)
        except ValueError as exc:
            raise ChannelConfigError(f"channels.{channel}.from_address", str(exc)) from None

    def prepare(self, message: OutgoingMessage) -> tuple[Path, bytes]:
        folder = self.directory / message.channel
        kind = channel_spec(message.channel).kind
        if kind is MessageKind.LETTER:
            email = build_email(message, sender=self.sender, provider=self.name)
            return folder / f"{message.reference}.eml", flatten(email)
        document: dict[str, Any] = {"reference": message.reference, "to": message.to, "text": message.text}
        if self.text_sender:
            document["sender"] = self.text_sender
        if kind is MessageKind.MARKUP:
            document["parse_mode"] = "HTML"
        if kind is MessageKind.APPROVED:
            if message.approved is not None:
                document["template"] = asdict(message.approved)
            document["sent_as"] = "text" if message.session_open and message.text else "template"
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

    def parse_webhook(self, request: WebhookRequest) -> Inbound:
        """Reports in loyalcast's neutral JSON format, for any channel the outbox carries
        (the message id is the outbox file's name, e.g. ``42.eml``): how a trial run
        plays a provider's delivery reports back."""
        return neutral_webhook(self.webhook_key, request, transport=self.name)
