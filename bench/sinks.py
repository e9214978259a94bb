"""Fast sink servers for the benchmark: SMTP, SMS gateway and Telegram Bot API on
loopback that accept and count (``channels.fakes`` without faults). Prints one JSON line
with their addresses, then serves until killed; SIGUSR1 prints the counts."""

from __future__ import annotations

import json
import signal
import sys
import time

from channels.fakes import FakeSmsGateway, FakeSmtpServer, FakeTelegramApi


class _Counting:
    """Keep counts, not messages: a million stored messages would measure the sink."""

    def __init__(self) -> None:
        self.count = 0

    def append(self, _message) -> None:  # type: ignore[no-untyped-def]
        self.count += 1

    def clear(self) -> None:
        self.count = 0

    def __len__(self) -> int:
        return self.count


def main() -> int:
    smtp, sms, telegram = FakeSmtpServer(), FakeSmsGateway(), FakeTelegramApi()
    for server in (smtp, sms, telegram):
        server.messages = _Counting()  # type: ignore[assignment]
        server.start()
    print(json.dumps({"smtp": list(smtp.address), "sms": sms.url, "telegram": telegram.url}), flush=True)
    signal.signal(signal.SIGUSR1, lambda *_: print(json.dumps(
        {"smtp": len(smtp.messages), "sms": len(sms.messages), "telegram": len(telegram.messages)}), flush=True))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
