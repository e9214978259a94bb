"""Group commit of providers' events: many callbacks, one transaction.

Every webhook request hands its events to :class:`EventWriter` and waits. One writer
task takes whatever has queued up while the previous transaction ran (at most
``max_events``), keeps it in ``provider_events`` in one transaction in a worker thread,
and only then lets each request answer. So an answer of 200 means "in the database": a
provider whose callback got no answer, or a 503 while the database is down, sends it
again, and the unique event key makes that retry harmless. Batching costs no waiting: a
lone callback is written at once.

Applying the kept events to the ledger (a row moved forward per event, an address
suppressed) is the applier's work, in its own transactions right after: a burst of
reports is accepted as fast as it can be kept, and the ledger follows within moments.
Events a stopped process had kept but not applied are applied by the reconciler's next
pass (``apply_unmatched``); applying twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from campaigns import metrics
from campaigns.store.events import apply, keep
from channels.base import DeliveryEvent

log = logging.getLogger(__name__)
RETRY_S = 1.0


@dataclass
class _Pending:
    provider: str
    events: list[DeliveryEvent]
    done: asyncio.Future[int] = field(repr=False)


class EventWriter:
    """Keeps events in group commits (``submit`` returns once they are committed, the
    number new, or raises the database's error) and applies them to the ledger."""

    def __init__(self, engine: Engine, max_events: int = 5000) -> None:
        self.engine, self.max_events = engine, max_events
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._to_apply: list[int] = []
        self._kept = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="loyalcast-event-writer"),
            asyncio.create_task(self._apply_loop(), name="loyalcast-event-applier"),
        ]

    async def stop(self) -> None:
        """Finish what was submitted, apply what was kept (what cannot be applied now is
        left to the reconciler), and stop."""
        if not self._tasks:
            return
        await self._queue.put(None)
        await self._tasks[0]
        self._stopping = True
        self._kept.set()
        await self._tasks[1]
        self._tasks = []

    async def submit(self, provider: str, events: list[DeliveryEvent]) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(provider, events, done))
        return await done

    @property
    def backlog(self) -> int:
        """Events kept and not yet applied by this process."""
        return len(self._to_apply)

    async def _write_loop(self) -> None:
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
                kept = await asyncio.to_thread(self._keep, batch)
            except Exception as exc:  # the database refused: every waiting request answers 503
                log.warning("keeping %d provider events failed: %s", size, exc.__class__.__name__)
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item in batch:
                if not item.done.done():
                    item.done.set_result(len(kept[item.provider]))
            for ids in kept.values():
                self._to_apply.extend(ids)
            self._kept.set()

    def _keep(self, batch: list[_Pending]) -> dict[str, list[int]]:
        by_provider: dict[str, list[DeliveryEvent]] = defaultdict(list)
        for item in batch:
            by_provider[item.provider].extend(item.events)
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            kept = {provider: keep(conn, provider, events, now) for provider, events in by_provider.items()}
        for provider, events in by_provider.items():
            metrics.provider_events(provider, len(kept[provider]), len(events) - len(kept[provider]))
        return kept

    async def _apply_loop(self) -> None:
        while True:
            await self._kept.wait()
            self._kept.clear()
            while self._to_apply:
                ids, self._to_apply = self._to_apply[: self.max_events], self._to_apply[self.max_events :]
                try:
                    await asyncio.to_thread(self._apply, ids)
                except Exception as exc:  # kept, so not lost: tried again, or by the reconciler
                    log.warning("applying %d provider events failed, trying again: %s", len(ids), exc.__class__.__name__)
                    if self._stopping:
                        return
                    self._to_apply[:0] = ids
                    await asyncio.sleep(RETRY_S)
            if self._stopping:
                return

    def _apply(self, ids: list[int]) -> None:
        with self.engine.begin() as conn:
            apply(conn, ids, datetime.now(UTC))
