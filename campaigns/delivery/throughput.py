"""Provider throughput limits shared by every worker process.

``[channels.<name>] rate_per_second`` caps how many messages all workers together hand
to that channel's provider per second (Telegram allows about 30/s per bot; an SMS
gateway or an SMTP relay states its own in the contract), fractions included: 0.5 is
one message every two seconds.

The limit is kept as a schedule, the generic cell rate algorithm (GCRA, ITU-T I.371):
one value per channel, the earliest instant the next message may go (its "theoretical
arrival time"). Each send reserves the next slot, ``max(that instant, now)``, moves the
instant one interval (``1 / rate`` seconds) on, and waits until its slot. So sends are
at least one interval apart whatever the number of processes, there is no burst at the
edge of a counting window (there is no window), and over any stretch of time the rate
is the configured one exactly. The reservation is one atomic Lua script in Redis, timed
by Redis's own clock so workers on several machines agree; with the ``memory://``
broker an in-process schedule under a lock does the same.

Hitting the limit means "later", never "failed": ``wait`` blocks the sending thread
until its slot. A reserved slot whose worker dies before sending goes unused, which
errs on the side of the provider's contract. With Redis unreachable ``wait`` raises
TransientError before the row is claimed, so it stays queued and is tried again with
backoff; after a ``FLUSHDB`` the schedule starts again from now.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from campaigns import metrics
from campaigns.config.settings import Settings
from channels.errors import TransientError

KEY_PREFIX = "loyalcast-throughput:"
# KEYS[1]: the channel's next free instant (microseconds, Redis clock); ARGV[1]: the
# interval in microseconds. Returns the microseconds to wait before sending.
RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local next_free = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(next_free, now)
redis.call('SET', KEYS[1], tostring(slot + interval), 'PX', math.ceil((slot + interval - now) / 1000) + 1000)
return slot - now
"""


class Schedule(Protocol):
    def reserve(self, channel: str, interval_us: int) -> float:
        """Reserve the channel's next slot; the seconds until it."""
        ...


class LocalSchedule:
    """The schedule of one process (the ``memory://`` broker)."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, channel: str, interval_us: int) -> float:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next.get(channel, 0.0), now)
            self._next[channel] = slot + interval_us / 1_000_000
            return slot - now


class RedisSchedule:
    """The schedule every worker shares, in Redis."""

    def __init__(self, url: str) -> None:
        import redis

        self._client: Any = redis.Redis.from_url(url)
        self._reserve = self._client.register_script(RESERVE)

    def reserve(self, channel: str, interval_us: int) -> float:
        import redis

        try:
            return int(self._reserve(keys=[KEY_PREFIX + channel], args=[interval_us])) / 1_000_000
        except redis.RedisError as exc:
            # Without the shared schedule no worker may send on the channel (each on its
            # own would multiply the rate): the row stays queued and is retried later.
            raise TransientError(f"the throughput schedule in Redis is unreachable ({type(exc).__name__})") from exc


class Throughput:
    """The schedule of every channel that has ``rate_per_second``; built once per process."""

    def __init__(self, settings: Settings, schedule: Schedule | None = None) -> None:
        self.intervals_us = {
            channel: round(1_000_000 / section.rate_per_second)
            for channel, section in settings.channels.items()
            if section.rate_per_second
        }
        if schedule is None:
            url = settings.broker_url
            schedule = LocalSchedule() if url == "memory://" else RedisSchedule(url)
        self.schedule = schedule

    def wait(self, channel: str) -> float:
        """Block until ``channel`` may send one more message; return the seconds waited."""
        interval = self.intervals_us.get(channel)
        if interval is None:
            return 0.0
        delay = self.schedule.reserve(channel, interval)
        if delay > 0:
            time.sleep(delay)
            metrics.throughput_wait(channel, delay)
        return max(delay, 0.0)
