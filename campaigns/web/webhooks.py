"""``POST /webhooks/<channel>``: what providers send back.

The channel's transport verifies and parses the callback (``Transport.parse_webhook``:
signatures, shapes, the provider's own words normalized to ``channels.base.EventKind``);
this module only routes. Delivery events go through the group-commit writer and are
answered once committed: 200 ``{"received": n, "new": k}``; a provider's retry gets the
same 200 and adds nothing. Members' own messages are acted on in the same request: on a
channel with a session window (WhatsApp) each one opens the member's window
(``conversations``); bot commands are answered where the provider takes the reply in the
webhook's answer (the Bot API's "method in the response": one ``sendMessage`` without a
call of our own); elsewhere a stop word unsubscribes the member from marketing on the
channel, without a reply.

``GET /webhooks/<channel>`` answers a provider's subscription check (WhatsApp's
``hub.challenge``), as the channel's transport decides.

Every refusal is a JSON body ``{"error": ..., "field": ...}``: 400 for a payload that is
not the provider's shape, 403 for a signature that does not match, 404 for a channel
that receives no callbacks, 413 for a body over 1 MB, 503 (with ``Retry-After``) while
the database is unavailable.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from campaigns.config.settings import Settings
from campaigns.store import conversations
from campaigns.web.ingest import EventWriter
from campaigns.web.optin import answer, stop
from channels import Transport
from channels.base import InboundMessage, WebhookRequest
from channels.errors import ChannelConfigError, WebhookRejected
from channels.specs import CHANNELS

log = logging.getLogger(__name__)
MAX_BODY = 1_000_000
BODY_SCHEMA = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}},
        }
    }
}


def problem(status: int, error: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "field": field}, status_code=status, headers=headers)


class Webhooks:
    def __init__(self, settings: Settings, engine: Engine, writer: EventWriter) -> None:
        self.settings, self.engine, self.writer = settings, engine, writer
        self._transports: dict[str, Transport | ChannelConfigError] = {}
        self.router = APIRouter(tags=["providers"])
        self.router.add_api_route(
            "/webhooks/{channel}",
            self.receive,
            methods=["POST"],
            summary="A provider's delivery report, bounce, complaint or bot update",
            openapi_extra=BODY_SCHEMA,
            responses={
                200: {"description": "recorded (or already recorded)"},
                400: {"description": "not the provider's payload; `field` names the part"},
                403: {"description": "signature or shared secret does not match"},
                404: {"description": "unknown channel, or one that receives no callbacks"},
                413: {"description": "body over 1 MB"},
                503: {"description": "the database is unavailable; retry"},
            },
        )

        self.router.add_api_route(
            "/webhooks/{channel}",
            self.verify,
            methods=["GET"],
            summary="A provider's check that the webhook is ours (WhatsApp's hub.challenge)",
            responses={
                200: {"description": "the challenge, as plain text"},
                400: {"description": "not the provider's check; `field` names the part"},
                403: {"description": "the verify token does not match"},
                404: {"description": "unknown channel, or one whose provider makes no such check"},
            },
        )

    async def verify(self, request: Request, channel: str) -> Response:
        if channel not in CHANNELS:
            return problem(404, f"unknown channel {channel[:40]!r} (known: {', '.join(CHANNELS)})", "path.channel")
        try:
            transport = self.transport(channel)
        except ChannelConfigError as exc:
            return problem(404, f"this channel's webhook is not configured: {exc.problem}", exc.key)
        try:
            return PlainTextResponse(transport.verify_subscription(dict(request.query_params)))
        except WebhookRejected as exc:
            return problem(exc.status, exc.detail, exc.field)

    def transport(self, channel: str) -> Transport:
        """The channel's transport, built once (it holds the webhook secrets)."""
        built = self._transports.get(channel)
        if built is None:
            try:
                built = self.settings.transport(channel)
            except ChannelConfigError as exc:
                built = exc
            self._transports[channel] = built
        if isinstance(built, ChannelConfigError):
            raise built
        return built

    async def receive(self, request: Request, channel: str) -> Response:
        if channel not in CHANNELS:
            return problem(404, f"unknown channel {channel[:40]!r} (known: {', '.join(CHANNELS)})", "path.channel")
        try:
            transport = self.transport(channel)
        except ChannelConfigError as exc:
            return problem(404, f"this channel's webhook is not configured: {exc.problem}", exc.key)
        body = await request.body()
        if len(body) > MAX_BODY:
            return problem(413, f"body of {len(body)} bytes; at most {MAX_BODY}", "body")
        url = self.settings.web.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        inbound_request = WebhookRequest(
            url=url,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=body,
            content_type=request.headers.get("content-type", ""),
        )
        try:
            inbound = transport.parse_webhook(inbound_request)
        except WebhookRejected as exc:
            return problem(exc.status, exc.detail, exc.field)
        try:
            new = await self.writer.submit(channel, inbound.events) if inbound.events else 0
            replies = (
                await run_in_threadpool(self._act, channel, inbound.messages, transport.replies_in_webhook)
                if inbound.messages
                else []
            )
        except SQLAlchemyError:
            return problem(503, "the database is unavailable; send this again later", None, {"Retry-After": "5"})
        # Responses built here, not by FastAPI's serializer (a third of a small request's CPU).
        if inbound.reply is not None:
            return PlainTextResponse(inbound.reply)
        if len(replies) == 1:
            chat_id, text = replies[0]
            return JSONResponse({"method": "sendMessage", "chat_id": int(chat_id), "text": text})
        return JSONResponse({"received": len(inbound.events), "new": new})

    def _act(self, channel: str, messages: list[InboundMessage], reply: bool) -> list[tuple[str, str]]:
        """Act on members' messages in one transaction; the replies to send back (bot
        commands, where the provider takes replies in the webhook's answer)."""
        now = datetime.now(UTC)
        window = CHANNELS[channel].session_window
        replies = []
        with self.engine.begin() as conn:
            for message in messages:
                if window is not None:
                    conversations.record(conn, channel, message.address, min(message.occurred_at or now, now))
                if reply:
                    replies.append((message.address, answer(conn, self.settings, channel, message, now)))
                else:
                    stop(conn, channel, message, now)
        return replies
