"""Group commit of providers' events: many callbacks, one transaction.

Every webhook request hands its events to :class:`EventWriter` and waits. One writer
task takes whatever has queued up while the previous transaction ran (at most
``max_events``), records it in one transaction in a worker thread, and only then lets
each request answer. So an answer of 200 means "in the database": a provider whose
callback got no answer, or a 503 while the database is down, sends it again, and the
unique event key makes that retry harmless. Batching costs no waiting: a lone callback
is written at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from campaigns import metrics
from campaigns.store.events import Recorded, record
from channels.base import DeliveryEvent

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    provider: str
    events: list[DeliveryEvent]
    done: asyncio.Future[Recorded] = field(repr=False)


class EventWriter:
    """Writes events in group commits; ``submit`` returns once they are committed and
    raises the database's error when the transaction failed."""

    def __init__(self, engine: Engine, max_events: int = 5000) -> None:
        self.engine, self.max_events = engine, max_events
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loyalcast-event-writer")

    async def stop(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

    async def submit(self, provider: str, events: list[DeliveryEvent]) -> Recorded:
        done: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(provider, events, done))
        return await done

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            batch, size = [first], len(first.events)
            while size < self.max_events and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                size += len(item.events)
            try:
                results = await asyncio.to_thread(self._write, batch)
            except Exception as exc:  # the database refused: every waiting request answers 503
                log.warning("recording %d provider events failed: %s", size, exc.__class__.__name__)
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item in batch:
                if not item.done.done():
                    item.done.set_result(results[item.provider])

    def _write(self, batch: list[_Pending]) -> dict[str, Recorded]:
        by_provider: dict[str, list[DeliveryEvent]] = defaultdict(list)
        for item in batch:
            by_provider[item.provider].extend(item.events)
        now = datetime.now(UTC)
        results = {}
        with self.engine.begin() as conn:
            for provider, events in by_provider.items():
                results[provider] = record(conn, provider, events, now)
        for provider, done in results.items():
            metrics.provider_events(provider, done.new, done.received - done.new)
        return results
