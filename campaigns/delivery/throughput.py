"""Provider throughput limits shared by every worker process.

``[channels.<name>] rate_per_second`` caps how many messages all workers together hand
to that channel's provider per second (Telegram allows about 30/s per bot; an SMS
gateway or an SMTP relay states its own in the contract). Counting happens in Redis with
Dramatiq's ``WindowRateLimiter`` (one key per second), so the limit holds across
processes and machines; with the ``memory://`` broker an in-process backend counts.

Hitting the limit means "later", never "failed": ``wait`` blocks the sending thread
until a slot of the current or a following second is free.
"""

from __future__ import annotations

import math
import threading
import time

from dramatiq.rate_limits import WindowRateLimiter
from dramatiq.rate_limits.backends import StubBackend

from campaigns import metrics
from campaigns.config.settings import Settings

POLL_SECONDS = 0.02


class Throughput:
    """One limiter per channel that has ``rate_per_second``; built once per process."""

    def __init__(self, settings: Settings) -> None:
        url = settings.broker_url
        if url == "memory://":
            backend = StubBackend()
        else:
            from dramatiq.rate_limits.backends import RedisBackend

            backend = RedisBackend(url=url)
        self.limiters: dict[str, WindowRateLimiter] = {}
        for channel, section in settings.channels.items():
            if section.rate_per_second:
                # Whole messages per one-second window; a fraction like 0.5/s rounds up to 1.
                limit = max(1, math.floor(section.rate_per_second))
                self.limiters[channel] = WindowRateLimiter(backend, f"loyalcast-throughput-{channel}", limit=limit, window=1)
        self._lock = threading.Lock()

    def wait(self, channel: str) -> float:
        """Block until ``channel`` may send one more message; return the seconds waited."""
        limiter = self.limiters.get(channel)
        if limiter is None:
            return 0.0
        started = time.monotonic()
        while True:
            with limiter.acquire(raise_on_failure=False) as acquired:
                if acquired:
                    waited = time.monotonic() - started
                    if waited:
                        metrics.throughput_wait(channel, waited)
                    return waited
            time.sleep(POLL_SECONDS)
