"""What the fakes share: the fault plan, an HTTP server answering JSON, and posting
back as a provider does."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Faults:
    """What a fake provider does wrong. Thread-safe to change while it runs."""

    transient_rate: float = 0.0
    """Share of requests answered with a transient failure (SMTP 451, HTTP 503)."""
    rate_limit_rate: float = 0.0
    """Share answered "slow down" (HTTP 429 with Retry-After, Telegram retry_after)."""
    retry_after: int = 1
    slow_seconds: float = 0.0
    """Delay before answering (past the client's timeout, an unknown outcome)."""
    rejected: set[str] = field(default_factory=set)
    """Addresses, numbers or chat ids refused as invalid (SMTP 550, HTTP 400, chat not found)."""
    blocked: set[str] = field(default_factory=set)
    """Chat ids that blocked the bot (Telegram 403)."""
    errors: dict[str, str] = field(default_factory=dict)
    """Address → the provider's own error to answer with, by a name the fake knows
    (the SMS gateways: ``invalid``, ``blocked``, ``no_funds``, ``auth``, ``sender``,
    ``duplicate``, ``prohibited``, ``quota``), each in its provider's real shape."""
    seed: int = 7

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        """``"transient"``, ``"rate_limited"`` or None for this request."""
        with self._lock:
            roll = self._random.random()
        if roll < self.transient_rate:
            return "transient"
        if roll < self.transient_rate + self.rate_limit_rate:
            return "rate_limited"
        return None

    def pause(self) -> None:
        if self.slow_seconds:
            time.sleep(self.slow_seconds)


class HttpFake:
    """Base of the HTTP fakes: a threading server, a request log, and JSON answers."""

    def __init__(self, port: int = 0, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, headers, document = fake.handle(self.path, dict(self.headers), body)
                payload = json.dumps(document).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(payload))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> HttpFake:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, message: dict[str, Any]) -> int:
        with self.lock:
            self.messages.append(message)
            return len(self.messages)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        raise NotImplementedError


def basic_auth(headers: dict[str, str]) -> tuple[str, str]:
    """``(user, password)`` of a request's HTTP basic authentication (empty when absent)."""
    value = headers.get("Authorization") or headers.get("authorization") or ""
    if not value.startswith("Basic "):
        return "", ""
    user, _, password = base64.b64decode(value[6:]).decode().partition(":")
    return user, password


def post(url: str, body: bytes, content_type: str, headers: dict[str, str]) -> int:
    """POST as a provider does; the answer's status (an HTTP error is a status too)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
