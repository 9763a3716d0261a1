"""The sidecar's record of how each item was handled, from the routing answers it gave.

``GET /v1/route`` answers from the :class:`~shadow.ladder.Ladder`'s memory; the answer's
``handled_by`` (``agent``, ``assisted`` or ``blind``, see :class:`~shadow.model.Handling`)
is what decides whether the item's outcome will be evidence. :class:`HandlingLog` keeps
those answers off the answer path: :meth:`HandlingLog.record` only puts the answer in
memory (an item routed twice keeps its least independent answer) and schedules a write
within ``flush_after`` seconds (0.5); the joiner flushes before each join, so an outcome that
arrives right after its routing answer is still compared with the sidecar's record. The
store relabels comparisons already made when a record arrives late (shadow.store.handling).

What is lost: answers given in the last ``flush_after`` seconds before a crash (kill -9)
and not yet written by a join.
Those items then count as never routed (blind) unless their outcome states how they were
handled; docs/api.md says so and advises hosts acting above L1 to state ``handled_by``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shadow.metrics import Metrics
from shadow.model import Handling, Level
from shadow.store import Routed, Store

__all__ = ["FLUSH_AFTER_S", "HandlingLog"]

log = logging.getLogger("shadow.handling")

# A write costs DuckDB a few milliseconds whatever its size (index upkeep, the relabel): at
# most two a second off the join path keeps the store thread (and the GIL) free for routing.
FLUSH_AFTER_S = 0.5
# Above this many unwritten answers a write starts at once (a flood of routes, a slow store);
# answers are never dropped: dropping one would let an echoed outcome count as evidence.
_FLUSH_AT = 10_000


class HandlingLog:
    """See the module docstring. ``on_stored`` is called after each write (the Kafka
    publisher's wake-up), ``on_relabelled`` after a write that relabelled comparisons."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        metrics: Metrics,
        *,
        flush_after: float = FLUSH_AFTER_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._flush_after = flush_after
        self._pending: dict[str, Routed] = {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_stored: list[Callable[[], None]] = []
        self._counters: dict[tuple[str, Handling], Any] = {}  # the routes counter's children
        # Called with the task types of a write that relabelled comparisons already made
        # (the Ladder's refold: its drift fold took them with their old label).
        self.on_relabelled: list[Callable[[set[str]], None]] = []

    def record(self, task_type: str, event_id: str, handled_by: Handling, level: Level) -> None:
        """Remember one routing answer (returns at once; never touches the store)."""
        counter = self._counters.get((task_type, handled_by))
        if counter is None:
            label = self._metrics.task_label(task_type)
            counter = self._counters[(task_type, handled_by)] = self._metrics.routes.labels(
                label, handled_by.value
            )
        counter.inc()
        seen = self._pending.get(event_id)
        if seen is None or handled_by.rank > seen.handled_by.rank:
            self._pending[event_id] = Routed(event_id, task_type, handled_by, level, self._clock())
        if len(self._pending) >= _FLUSH_AT:
            self._start_flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._flush_after, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._background(), name="shadow-handling"
            )

    async def _background(self) -> None:
        try:
            # Answers recorded while a write is in flight found this task running and
            # started none: write them too before ending, or they would wait in memory for
            # the next join (on a replica that compares none of those items: forever).
            while self._pending:
                await self.flush()
        except Exception:
            log.exception("storing routing records failed; retrying")
            await asyncio.sleep(1.0)
            self._start_flush()

    async def flush(self) -> None:
        """Write every answer recorded so far (the joiner calls it before each join). On a
        store error the answers stay in memory for the next flush, and it raises."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            try:
                relabelled = await self._store.put_handling(list(batch.values()))
            except BaseException:
                for eid, r in batch.items():  # newer answers recorded meanwhile stay
                    seen = self._pending.get(eid)
                    if seen is None or r.handled_by.rank > seen.handled_by.rank:
                        self._pending[eid] = r
                raise
        if relabelled:
            log.info("%d comparisons relabelled by late routing records", relabelled)
            for refold in self.on_relabelled:
                refold({r.task_type for r in batch.values()})
        for wake in self.on_stored:
            wake()

    async def close(self) -> None:
        """Write what is left (shutdown); idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
