"""Base of the SMS gateways that answer HTTP 200 whatever happened (SMS.ru, SMSC.ru,
SMS Aero): the outcome is in the body, so each provider module reads its body into
the error tree by its own codes and words, and a 200 is never a success by itself.

What the three share lives here: one ``HttpClient`` (network, 429 and 5xx mapped as
``channels.http`` says), the number in the international digits they take (E.164
without ``+``), segments counted for billing, and delivery reports authenticated by a
secret in the callback URL (none of them signs its callbacks): the operator registers
``https://<public host>/webhooks/<channel>?secret=<value of callback_secret_env>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from channels.addresses import normalize_number
from channels.base import OutgoingMessage, SendResult, SendStatus, Transport
from channels.http import HttpClient, document
from channels.options import TransportOptions, secret
from channels.smstext import measure


class GatewayOptions(TransportOptions):
    """Keys every such gateway has, beside its own credentials."""

    sender: str | None = None
    """The sender name (alpha name registered with the gateway); the account's default when unset."""
    base_url: str | None = None
    """The API's address (default: the provider's own); the fake's for tests."""
    default_region: str = "RU"
    """Region for numbers written without a country code."""
    callback_secret_env: str | None = None
    """Environment variable holding the secret of the delivery-report URL registered
    with the gateway (``?secret=`` on ``/webhooks/<channel>``); reports are refused
    while it is unset."""


@dataclass(frozen=True)
class Link:
    """How to reach one gateway, from the keys every such gateway has."""

    base_url: str
    timeout: float
    """Longest wait for an answer, in seconds."""
    default_region: str
    sender: str | None
    callback_secret: str | None

    @classmethod
    def from_options(cls, options: GatewayOptions, key: str, default_base_url: str) -> Link:
        """``key`` is the channel's settings key (``channels.sms``), for the secret's error."""
        return cls(
            base_url=(options.base_url or default_base_url).rstrip("/"),
            timeout=options.timeout.total_seconds(),
            default_region=options.default_region,
            sender=options.sender,
            callback_secret=secret(options.callback_secret_env, f"{key}.callback_secret_env"),
        )


class Payload:
    """A prepared send: the request's keyword arguments for ``requests`` and the text's segments."""

    def __init__(self, request: dict[str, Any], segments: int, to: str) -> None:
        self.request, self.segments, self.to = request, segments, to


class GatewayTransport(Transport):
    """A gateway of this family: subclasses set ``name``, ``Options`` and ``send_path``,
    build the request (``request``) and read the answer (``read``)."""

    channels = ("sms",)
    send_path: str = ""

    def __init__(self, link: Link) -> None:
        self.base_url, self.sender = link.base_url, link.sender
        self.default_region = link.default_region
        self.callback_secret = link.callback_secret
        self.client = HttpClient(self.name, self.base_url, link.timeout)

    def request(self, message: OutgoingMessage, to: str) -> dict[str, Any]:
        """The keyword arguments of ``requests`` for this message (``data=`` or ``json=``)."""
        raise NotImplementedError

    def read(self, response: requests.Response, body: Any, payload: Payload) -> str:
        """The provider's message id from its answer, or the error of the tree it says."""
        raise NotImplementedError

    def prepare(self, message: OutgoingMessage) -> Payload:
        to = normalize_number(message.to, self.default_region).lstrip("+")
        return Payload(self.request(message, to), measure(message.text or "").segments, to)

    def transmit(self, payload: Payload) -> tuple[str, int]:
        response = self.client.call("POST", self.base_url + self.send_path, **payload.request)
        return self.read(response, document(response), payload), payload.segments

    def result(self, response: tuple[str, int]) -> SendResult:
        message_id, segments = response
        return SendResult(SendStatus.SENT, provider_message_id=message_id, segments=segments)

    def close(self) -> None:
        self.client.close()
