"""The sidecar's record of how each item was handled, from the routing answers it gave.

``GET /v1/route`` answers from the :class:`~shadow.ladder.Ladder`'s memory; the answer's
``handled_by`` (``agent``, ``assisted`` or ``blind``, see :class:`~shadow.model.Handling`)
decides whether the item's outcome will be evidence, and so does a live tools session
(``POST /v1/sessions``). Either answer is given only once its record is durable:
:meth:`HandlingLog.record` returns after the store committed it, and raises
:class:`~shadow.errors.StoreError` when the write failed (the handlers answer 503 and give no
route). A ``kill -9`` therefore loses no answer that was given.

**Group commit.** A DuckDB write costs milliseconds whatever its size, so records are
written together: while one write is in flight, every record made meanwhile joins the next
batch, and all their requests wait on that one write. Right after a write the next one
waits (at most that write's duration, and ``LINGER_MAX_S``) for as many records as it
carried: the routes it answered come back with their next item a round trip later. Under
load a write therefore carries a record from about every route in flight; the routing rate
is about routes in flight / write latency, so it grows with concurrency until the event
loop is the limit (``make bench``: tests/bench/bench_route.py, against a bare aiohttp app).
The store's thread is shared with ingest and joins: a route also waits for the store work
queued before its write.

**What counts.** The store keeps an item's least independent answer, and ignores a record
made after the item's outcome arrived (or after its comparison was made): a route asked
about an item already decided never changes how it counts (shadow.store.handling). A record
made before the outcome whose write commits after it (in flight meanwhile) still counts and
relabels the comparison made without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shadow.errors import StoreError
from shadow.metrics import Metrics
from shadow.model import Handling, Level
from shadow.store import Routed, Store

__all__ = ["LINGER_MAX_S", "HandlingLog"]

log = logging.getLogger("shadow.handling")

_MAX_ERROR_CHARS = 300
# The most a write waits for company right after the last one (HandlingLog._linger).
LINGER_MAX_S = 0.02


def _one_line(exc: BaseException) -> StoreError:
    """The write's failure as one short line (DuckDB's messages span several)."""
    text = " ".join(str(exc).split())[:_MAX_ERROR_CHARS] or type(exc).__name__
    if not text.startswith("store"):
        text = f"store write failed: {text}"
    return StoreError(text)


class HandlingLog:
    """See the module docstring. ``on_stored`` is called after each write (the Kafka
    publisher's wake-up), ``on_relabelled`` after a write that relabelled comparisons."""

    def __init__(self, store: Store, clock: Callable[[], datetime], metrics: Metrics) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._gathering: list[Routed] = []  # made while a write is in flight: the next batch
        # Settles when _gathering is written, with the event ids of records set aside (not
        # stored: their requests answer 503).
        self._next: asyncio.Future[frozenset[str]] | None = None
        self._inflight: asyncio.Future[frozenset[str]] | None = None  # the batch being written
        self._writer: asyncio.Task[None] | None = None
        self._last_end = float("-inf")  # loop time the last write ended
        self._last_took = 0.0  # how long it took
        self._last_size = 0  # records it carried
        self._enough: asyncio.Event | None = None  # set when as many wait again (_linger)
        self._closed = False
        self.on_stored: list[Callable[[], None]] = []
        self._counters: dict[tuple[str, Handling], Any] = {}  # the routes counter's children
        # Called with the task types of a write that relabelled comparisons already made
        # (the Ladder's refold: its drift fold took them with their old label).
        self.on_relabelled: list[Callable[[set[str]], None]] = []

    async def record(
        self, task_type: str, event_id: str, handled_by: Handling, level: Level
    ) -> None:
        """Record one routing answer; returns once it is durable. Raises
        :class:`StoreError` (one line) when it could not be written, or after
        :meth:`close`: then the answer must not be given."""
        if self._closed:
            raise StoreError("the sidecar is shutting down: routing records are not stored")
        loop = asyncio.get_running_loop()
        self._gathering.append(Routed(event_id, task_type, handled_by, level, self._clock()))
        if self._enough is not None and len(self._gathering) >= self._last_size:
            self._enough.set()
        done = self._next
        if done is None:
            done = self._next = loop.create_future()
        if self._writer is None:
            self._writer = loop.create_task(self._write(), name="shadow-handling")
        # Shielded: a request that goes away must not cancel the others' write.
        aside = await asyncio.shield(done)
        if event_id in aside:
            raise StoreError(
                f"the routing record of {event_id!r} could not be stored (dead-lettered)"
            )
        counter = self._counters.get((task_type, handled_by))
        if counter is None:
            label = self._metrics.task_label(task_type)
            counter = self._counters[(task_type, handled_by)] = self._metrics.routes.labels(
                label, handled_by.value
            )
        counter.inc()

    async def _write(self) -> None:
        """Write batch after batch until nothing waits; the one task owning the writes."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[frozenset[str]] | None = None
        finished = False
        try:
            while self._gathering:
                await self._linger(self._last_end + min(self._last_took, LINGER_MAX_S))
                batch, self._gathering = self._gathering, []
                done, self._next = self._next, None
                assert done is not None
                self._inflight = done
                started = loop.time()
                try:
                    relabelled, aside = await self._store.put_handling_batch(batch)
                except Exception as exc:
                    failure = _one_line(exc)
                    log.error(
                        "%d routing records not stored (answered 503): %s", len(batch), failure
                    )
                    done.set_exception(failure)
                    done.exception()  # retrieved: every waiter re-raises it
                    continue
                finally:
                    self._inflight = None
                    self._last_end = loop.time()
                    self._last_took, self._last_size = self._last_end - started, len(batch)
                done.set_result(aside)
                done = None
                self._after_write(batch, relabelled)
            finished = True
        finally:
            self._writer = None
            if not finished:  # cancelled (the loop closes): nobody may wait forever
                stopped = StoreError("the sidecar stopped before the routing record was written")
                for left in (done, self._next):
                    if left is not None and not left.done():
                        left.set_exception(stopped)
                        left.exception()
                self._next, self._gathering = None, []

    async def _linger(self, deadline: float) -> None:
        """Until ``deadline`` (loop time: the last write's end plus its duration, at most
        ``LINGER_MAX_S``), wait for as many records as the last write carried. Under load
        the routes it answered come back with their next item a round trip later; written
        at the first of them, the rest would wait for that write and then for their own,
        so the first ones waiting a little costs less than a write and halves the writes.
        Idle (the last write long over), a record is written at once."""
        if len(self._gathering) >= self._last_size or asyncio.get_running_loop().time() >= deadline:
            return
        self._enough = asyncio.Event()
        try:
            async with asyncio.timeout_at(deadline):
                await self._enough.wait()
        except TimeoutError:
            pass
        finally:
            self._enough = None

    def _after_write(self, batch: list[Routed], relabelled: int) -> None:
        try:
            if relabelled:
                log.info("%d comparisons relabelled by routing records", relabelled)
                for refold in self.on_relabelled:
                    refold({r.task_type for r in batch})
            for wake in self.on_stored:
                wake()
        except Exception:  # the records are durable; a hook's bug must not stop the writes
            log.exception("a routing record hook failed")

    async def flush(self) -> None:
        """Until every record made so far is written, or its write failed (those routes
        were answered 503, so nothing is owed). The joiner calls it before each join, so a
        comparison is labelled by the records of routes asked before it."""
        for pending in (self._inflight, self._next):
            if pending is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)

    async def close(self) -> None:
        """Refuse new records and wait for the writes under way (shutdown); idempotent."""
        self._closed = True
        while self._writer is not None:
            await asyncio.wait([self._writer])
