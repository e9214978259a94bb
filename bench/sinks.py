"""Fast sink servers for the benchmark: SMTP, an SMS gateway (loyalcast's generic JSON
style) and the Telegram Bot API on loopback, on one asyncio event loop. They accept and
count, and answer as the real services do, but parse no more than the answer needs.

The test fakes (``channels/fakes.py``) parse every message and run a thread per HTTP
connection; as sinks they cost more CPU than the clients under test (an email parsed
with the ``email`` package is about a millisecond), so the sinks, not loyalcast or the
transport ceiling, set every figure. These stay well below the clients' cost.

Prints one JSON line with the addresses, then serves until killed; SIGUSR1 prints the
counts as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import urllib.parse

counts = {"smtp": 0, "sms": 0, "telegram": 0}


class SmtpSink(asyncio.Protocol):
    """Enough ESMTP for ``smtplib``: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.in_data = False
        self.transport.write(b"220 sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                counts["smtp"] += 1
                self.transport.write(b"250 2.0.0 Queued\r\n")  # type: ignore[attr-defined]
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            self.command(line[:4].upper())

    def command(self, verb: bytes) -> None:
        write = self.transport.write  # type: ignore[attr-defined]
        if verb == b"EHLO":
            write(b"250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n")
        elif verb == b"DATA":
            self.in_data = True
            write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            write(b"221 2.0.0 Bye\r\n")
            self.transport.close()
        else:  # HELO, MAIL, RCPT, RSET, NOOP
            write(b"250 OK\r\n")


class HttpSink(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and ``Content-Length`` bodies; ``answer`` builds the reply."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            content_type = ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "content-type":
                    content_type = value.strip()
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            path = head.split(" ", 2)[1]
            status, document = self.answer(path, content_type, body)
            payload = json.dumps(document).encode()
            self.transport.write(  # type: ignore[attr-defined]
                f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )

    def answer(self, path: str, content_type: str, body: bytes) -> tuple[int, dict]:
        raise NotImplementedError


class SmsSink(HttpSink):
    """``POST /send``: the generic JSON gateway loyalcast's ``http_sms`` transport speaks."""

    def answer(self, path: str, content_type: str, body: bytes) -> tuple[int, dict]:
        counts["sms"] += 1
        return 200, {"id": f"gw-{counts['sms']}", "status": "accepted"}


class TelegramSink(HttpSink):
    """The Bot API's ``getMe`` and ``sendMessage``."""

    def answer(self, path: str, content_type: str, body: bytes) -> tuple[int, dict]:
        if path.endswith("/getMe"):
            return 200, {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "sink", "username": "sink_bot"}}
        fields = json.loads(body) if "json" in content_type else dict(urllib.parse.parse_qsl(body.decode()))
        counts["telegram"] += 1
        return 200, {
            "ok": True,
            "result": {
                "message_id": counts["telegram"],
                "date": int(time.time()),
                "text": fields.get("text", ""),
                "chat": {"id": int(fields["chat_id"]), "type": "private"},
            },
        }


async def serve() -> None:
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(SmtpSink, "127.0.0.1", 0, backlog=1024)
    sms = await loop.create_server(SmsSink, "127.0.0.1", 0, backlog=1024)
    telegram = await loop.create_server(TelegramSink, "127.0.0.1", 0, backlog=1024)
    port = {name: server.sockets[0].getsockname()[1] for name, server in (("smtp", smtp), ("sms", sms), ("telegram", telegram))}
    print(
        json.dumps(
            {
                "smtp": ["127.0.0.1", port["smtp"]],
                "sms": f"http://127.0.0.1:{port['sms']}",
                "telegram": f"http://127.0.0.1:{port['telegram']}",
            }
        ),
        flush=True,
    )
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps(counts), flush=True))
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
