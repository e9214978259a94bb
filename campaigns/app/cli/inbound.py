"""What comes back: ``web``, ``telegram poll|webhook``, ``bounces read``, ``events prune``."""

from __future__ import annotations

import html
import logging
import mailbox
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from campaigns.app.cli.common import app, configured_app, err, out, require_schema
from campaigns.errors import LoyalcastError
from campaigns.store import events
from campaigns.web.optin import answer
from channels.base import OutgoingMessage
from channels.dsn import parse_dsn
from channels.errors import ChannelError, MalformedWebhook
from channels.telegram import TelegramTransport

telegram_app = typer.Typer(help="The Telegram bot's updates: members' /start and /stop.", no_args_is_help=True)
bounces_app = typer.Typer(help="Delivery status notifications from a bounce mailbox.", no_args_is_help=True)
events_app = typer.Typer(help="Providers' events kept for audit.", no_args_is_help=True)
app.add_typer(telegram_app, name="telegram")
app.add_typer(bounces_app, name="bounces")
app.add_typer(events_app, name="events")


@app.command()
def web() -> None:
    """Serve members' unsubscribe and preference pages and providers' webhooks
    (``[web]`` host and port) until Ctrl-C or SIGTERM."""
    from campaigns.web import server

    application = configured_app()
    require_schema(application)
    logging.getLogger("campaigns.web.access").setLevel(logging.INFO)
    settings = application.settings
    err.print(f"loyalcast web on http://{settings.web.host}:{settings.web.port} (public URL {settings.web.public_url})")
    server.run(settings)


def _telegram(channel: str) -> TelegramTransport:
    application = configured_app()
    require_schema(application)
    transport = application.settings.transport(channel)
    if not isinstance(transport, TelegramTransport):
        raise LoyalcastError(f"channels.{channel}.transport is {transport.name!r}: updates need the telegram transport")
    return transport


@telegram_app.command("poll")
def telegram_poll(
    channel: Annotated[str, typer.Option(help="The channel whose bot to poll.")] = "telegram",
    wait: Annotated[int, typer.Option(min=0, max=50, help="Seconds each getUpdates waits for news (long polling).")] = 30,
    once: Annotated[bool, typer.Option(help="Take what is waiting, answer it, and exit.")] = False,
) -> None:
    """Take the bot's updates by long polling (no public HTTPS needed): link chats on
    ``/start <token>``, opt out on ``/stop``, answer each in the member's language.
    Removes a registered webhook first (Telegram serves one or the other)."""
    application = configured_app()
    transport = _telegram(channel)
    transport.set_webhook(None)
    offset: int | None = None
    err.print("polling Telegram for updates; Ctrl-C stops" if not once else "taking waiting Telegram updates")
    try:
        while True:
            try:
                messages, offset = transport.updates(offset, 0 if once else wait)
            except ChannelError as exc:
                err.print(f"getUpdates failed, trying again: {exc}")
                continue
            for message in messages:
                with application.engine.begin() as conn:
                    reply = answer(conn, application.settings, channel, message, datetime.now(UTC))
                try:
                    transport.send(OutgoingMessage(channel=channel, reference=0, to=message.address, text=html.escape(reply)))
                except ChannelError as exc:  # the link is recorded; only the courtesy reply failed
                    err.print(f"reply to a chat failed: {exc}")
            if once:
                transport.updates(offset, 0)  # acknowledge what was answered
                out.print(f"{len(messages)} updates answered")
                return
    except KeyboardInterrupt:
        return


@telegram_app.command("webhook")
def telegram_webhook(
    channel: Annotated[str, typer.Option(help="The channel whose bot to set up.")] = "telegram",
    remove: Annotated[bool, typer.Option("--remove", help="Remove the webhook (to poll instead).")] = False,
) -> None:
    """Register ``<[web] public_url>/webhooks/<channel>`` as the bot's webhook, with the
    secret token of ``webhook_secret_env`` (Telegram sends it back with every update)."""
    application = configured_app()
    transport = _telegram(channel)
    if remove:
        transport.set_webhook(None)
        out.print("webhook removed")
        return
    if not transport.webhook_secret:
        raise LoyalcastError(f"channels.{channel}.webhook_secret_env: set it first (the webhook refuses updates without it)")
    url = f"{application.settings.web.public_url}/webhooks/{channel}"
    transport.set_webhook(url)
    out.print(f"webhook set to {url}")


@bounces_app.command("read")
def bounces_read(
    maildir: Annotated[Path, typer.Option(help="The bounce mailbox, a Maildir (fetchmail or getmail can fill one from IMAP).")],
    channel: Annotated[str, typer.Option(help="The channel the bounces are for.")] = "email",
) -> None:
    """Read new delivery status notifications (RFC 3464) from a Maildir into the ledger:
    bounces fail their message and suppress the address. Each mail read is marked seen
    (moved to ``cur/``), so the next run reads only new ones; reading one again adds nothing."""
    application = configured_app()
    require_schema(application)
    if not (maildir / "new").is_dir():
        raise LoyalcastError(f"--maildir: {maildir} is not a Maildir (no new/ folder)")
    box = mailbox.Maildir(maildir, create=False)
    read = kept = skipped = 0
    for key in list(box.iterkeys()):
        message = box.get_message(key)
        if message.get_subdir() != "new":
            continue
        read += 1
        try:
            inbound = parse_dsn(box.get_bytes(key))
        except MalformedWebhook as exc:
            skipped += 1
            err.print(f"{maildir / 'new' / key}: skipped: {exc}")
        else:
            with application.engine.begin() as conn:
                kept += events.record(conn, channel, inbound.events, datetime.now(UTC)).new
        message.set_subdir("cur")
        message.add_flag("S")
        box[key] = message
    out.print(f"{read} mails read: {kept} new events recorded, {skipped} not delivery status notifications")


@events_app.command("prune")
def events_prune() -> None:
    """Remove providers' events older than ``[web] events_retention`` (the reconciler
    also does this once a day)."""
    application = configured_app()
    require_schema(application)
    with application.engine.begin() as conn:
        removed = events.prune(conn, datetime.now(UTC) - application.settings.web.events_retention)
    out.print(f"{removed} events removed")
