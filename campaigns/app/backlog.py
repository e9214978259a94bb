"""What the broker still holds, as far as the reconciler needs to know.

Two questions, answered for the Redis broker and for the in-memory one:

- ``waiting(broker, queue)``: messages on ``queue`` no worker has taken yet (ready or
  delayed). While some wait, a due row with no message may simply be behind them.
- ``lost_since_last_look(broker)``: whether the broker lost what it held since the last
  look (Redis flushed, or restarted without persistence; a new in-memory broker). A key
  written beside Dramatiq's own answers it: whatever removes Dramatiq's messages
  removes it too.
"""

from __future__ import annotations

import secrets

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name

EPOCH_KEY = "loyalcast.epoch"


def waiting(broker: dramatiq.Broker, queue_name: str) -> int:
    """Messages on ``queue_name`` (and its delay queue) that no worker has fetched."""
    if isinstance(broker, RedisBroker):
        client = broker.client
        namespace = broker.namespace
        return int(client.llen(f"{namespace}:{queue_name}")) + int(client.llen(f"{namespace}:{dq_name(queue_name)}"))
    if isinstance(broker, StubBroker):
        total = 0
        for name in (queue_name, dq_name(queue_name)):
            queue = broker.queues.get(name)
            total += queue.qsize() if queue is not None else 0
        return total
    raise TypeError(f"no backlog probe for {type(broker).__name__}")


def lost_since_last_look(broker: dramatiq.Broker) -> bool:
    """True when the broker holds no mark of an earlier look (first look included), and
    leaves one for the next."""
    if isinstance(broker, RedisBroker):
        placed = broker.client.set(f"{broker.namespace}:{EPOCH_KEY}", secrets.token_hex(8), nx=True)
        return bool(placed)
    if isinstance(broker, StubBroker):
        if getattr(broker, "_loyalcast_epoch", None) is None:
            broker._loyalcast_epoch = secrets.token_hex(8)  # type: ignore[attr-defined]  # our mark on Dramatiq's object
            return True
        return False
    raise TypeError(f"no epoch probe for {type(broker).__name__}")
