"""Provider throughput limits: fractional rates kept exactly, no burst at any edge,
one schedule shared by every worker through Redis (and in-process with memory://)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import free_port

from campaigns.config.loading import load_settings
from campaigns.delivery.throughput import Throughput
from channels.errors import TransientError


def sends(limiters: list[Throughput], count: int, threads_each: int = 2) -> list[float]:
    """``count`` sends over every limiter's threads; the instants they were let through."""
    let_through: list[float] = []
    lock = threading.Lock()
    remaining = iter(range(count))

    def worker(limiter: Throughput) -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            limiter.wait("telegram")
            with lock:
                let_through.append(time.monotonic())

    threads = [threading.Thread(target=worker, args=(limiter,)) for limiter in limiters for _ in range(threads_each)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(let_through)


def most_in_one_second(instants: list[float]) -> int:
    """The most sends inside any one-second stretch (sliding, not aligned to seconds)."""
    return max(sum(1 for t in instants if start <= t < start + 1.0) for start in instants)


@pytest.fixture
def limited(write_settings: Callable[..., Path]) -> Callable[..., Throughput]:
    def make(rate: float, broker: str) -> Throughput:
        return Throughput(
            load_settings(write_settings({"channels": {"telegram": {"rate_per_second": rate}}, "broker": {"url": broker}}))
        )

    return make


@pytest.mark.parametrize("where", ["memory", "redis"])
def test_a_fractional_rate_is_kept_exactly_with_no_burst(limited, where, request) -> None:
    # Given Telegram limited to 2.5 messages a second, for two workers of two threads
    broker = "memory://" if where == "memory" else request.getfixturevalue("redis_url")
    first = limited(2.5, broker)
    limiters = [first, first] if where == "memory" else [first, limited(2.5, broker)]

    # When eleven messages are sent at once
    instants = sends(limiters, 11)

    # Then their slots are 0.4 s apart (a thread may wake a few ms late): ten intervals
    # take four seconds, and no second holds more than three
    gaps = [b - a for a, b in zip(instants, instants[1:], strict=False)]
    assert min(gaps) >= 0.4 - 0.05, gaps
    assert 4.0 - 0.02 <= instants[-1] - instants[0] <= 4.0 + 0.3
    assert most_in_one_second(instants) == 3  # ceil(2.5), at any edge


def test_half_a_message_a_second_is_one_every_two_seconds(limited, redis_url) -> None:
    # Given an SMS contract of one message every two seconds (0.5/s; it used to round up to 1/s)
    limiter = limited(0.5, redis_url)
    # When three messages are sent, Then the third goes four seconds after the first
    instants = sends([limiter], 3, threads_each=3)
    assert 4.0 - 0.02 <= instants[-1] - instants[0] <= 4.0 + 0.3
    assert min(b - a for a, b in zip(instants, instants[1:], strict=False)) >= 2.0 - 0.05


def test_no_limit_means_no_wait(write_settings) -> None:
    # Given no rate on email, When a hundred sends ask, Then none waits
    limiter = Throughput(load_settings(write_settings({"broker": {"url": "memory://"}})))
    started = time.monotonic()
    assert all(limiter.wait("email") == 0.0 for _ in range(100))
    assert time.monotonic() - started < 0.05


def test_redis_gone_means_later_and_a_flushed_schedule_starts_again(limited, redis_url) -> None:
    # Given a schedule whose Redis does not answer (nothing listens on its port)
    unreachable = limited(1, f"redis://127.0.0.1:{free_port()}/15")
    # When a send asks, Then it is told to come back later (a transient error), not failed
    with pytest.raises(TransientError, match="throughput schedule in Redis is unreachable"):
        unreachable.wait("telegram")

    # Given a schedule in Redis with the next slot ten seconds away (1 every 10 s)
    limiter = limited(0.1, redis_url)
    assert limiter.wait("telegram") == 0.0
    # When Redis is flushed, Then the next send goes at once instead of waiting for a lost slot
    redis.Redis.from_url(redis_url).flushdb()
    started = time.monotonic()
    assert limiter.wait("telegram") == 0.0 and time.monotonic() - started < 0.1
