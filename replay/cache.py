"""Agent answers through the response cache: a re-run pays for nothing twice.

Key
    Each successful answer is cached under ``(agent_key, request_hash)``.
    ``request_hash`` is the hash of exactly what the agent is sent (``event_id``,
    ``task_type`` and the payload *after* the policy's redaction), so a change to the
    history or to the redaction rules is a miss, never a stale hit. It hashes
    :data:`REQUEST_FORMAT` followed by :func:`canonical_request` (injective canonical JSON,
    :func:`shadow.fastjson.dumps_canonical`); the format tag changes whenever the canonical
    text does, so rows written under another format simply miss (the first format, plain
    ``shadow.model.content_hash`` of the request, had no tag).
    ``agent_key`` is ``version:<V>`` when the run declares ``--agent-version V``, else
    ``spec:<URL or module:callable>``. The agent's own ``agent_version`` is only known
    after its first answer, so it cannot be part of a key that is looked up before the
    call; it is stored with every answer instead and checked as follows.
Version check (no ``--agent-version``)
    The run *expects* the version that gave most of the cached answers under the spec.
    Only cached answers of the expected version are hits. The first fresh answer of the
    run confirms or replaces the expectation: if the agent now reports another version
    and cached answers were already used, :class:`VersionChanged` is raised after the
    fresh answers are cached, and the runner starts its pass again (once) under the new
    version, so a report never mixes two versions silently and nothing is called twice.
    Later version changes (e.g. a rolling deploy) are kept and listed in the report.
    With ``--agent-version`` the declared name is trusted as is.
Repeated tries
    A repeated case's try ``k`` (the noise floor: the request marked ``repeat: k``) is
    cached under its own ``request_hash`` (:func:`hash_text` with ``repeat``): never
    answered from the case's first answer or another try, and reused try by try on a
    re-run.
Not cached
    Failed calls (HTTP errors, timeouts, invalid answers): the next run retries them.
Bounded work
    At most ``concurrency`` calls in flight (the :class:`~shadow.agent.AgentRunner`
    semaphore) and at most ``rate`` call starts per second (``None``: no limit; a
    :class:`RateLimiter` with a shared slot makes it one limit over several processes). Setting
    ``stop`` ends a batch early: calls in flight are cancelled, answers already received
    are cached and returned, the rest come back as ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from replay.model import most_common_version
from shadow.agent import AgentRunner
from shadow.fastjson import dumps_canonical
from shadow.model import ShadowDecision, WorkEvent

__all__ = [
    "REQUEST_FORMAT",
    "AnswerStore",
    "CachedAgent",
    "RateLimiter",
    "SharedSlot",
    "VersionChanged",
    "agent_key",
    "request_hash",
]


class AnswerStore(Protocol):
    """Where cached answers live: a :class:`~replay.history.ResponseCache` or, in a worker of
    a sharded run, the parent's one over a pipe (:mod:`replay.shard`)."""

    async def get(self, agent_key: str, hashes: Sequence[str]) -> dict[str, ShadowDecision]: ...

    async def put(
        self,
        agent_key: str,
        answers: Sequence[tuple[str, ShadowDecision]],
        *,
        now: datetime,
        replace: bool = True,
    ) -> None: ...

    async def versions(self, agent_key: str) -> Counter[str]: ...


class VersionChanged(Exception):
    """The agent's version is not the one the cached answers used: start the pass again."""


def agent_key(spec: str, declared_version: str | None = None) -> str:
    return f"version:{declared_version}" if declared_version else f"spec:{spec.strip()}"


# Hashed in front of the canonical request text. Change it whenever that text changes for
# some request (a new encoder, new options), so cached rows of the old text simply miss.
# Version 1 (no tag): shadow.model.content_hash, stdlib json. 2: shadow.fastjson (orjson).
REQUEST_FORMAT = b"replay-request/2\n"


def canonical_request(event: WorkEvent) -> bytes:
    """The canonical JSON (UTF-8) of what the agent receives for ``event`` (payload already
    redacted): ``{event_id, task_type, payload}``, by :func:`shadow.fastjson.dumps_canonical`
    (sorted keys, no spaces; different requests never share a text)."""
    return dumps_canonical(
        {"event_id": event.event_id, "task_type": event.task_type, "payload": event.payload}
    )


def hash_text(canonical: bytes, repeat: int | None = None) -> str:
    """The request hash (hex SHA-256, first 32 chars) of a :func:`canonical_request` text,
    tagged with :data:`REQUEST_FORMAT`; a repeated case's try ``repeat`` (1, 2, ...) has a
    hash of its own (the text followed by a line ``repeat=k``, which no canonical text
    ends with), so a try is never answered from the first answer's entry or another
    try's."""
    tail = b"" if repeat is None else b"\nrepeat=%d" % repeat
    return hashlib.sha256(REQUEST_FORMAT + canonical + tail).hexdigest()[:32]


def request_hash(event: WorkEvent) -> str:
    """Hash of what the agent receives for ``event`` (its payload already redacted): the
    cache key's ``request_hash``."""
    return hash_text(canonical_request(event))


class SharedSlot(Protocol):
    """A float several processes share, with its lock: ``multiprocessing``'s
    ``ctx.Value("d", 0.0)``."""

    value: float

    def get_lock(self) -> Any: ...


class RateLimiter:
    """Spaces call starts at least ``1/rate`` seconds apart (``rate=None``: no limit).

    Each :meth:`acquire` reserves the next free start time (``max(now, next)``) and moves
    ``next`` on by ``1/rate``, then sleeps until its start; idle time is not saved up as a
    burst. With ``shared`` (a :class:`SharedSlot`) the next free start lives there instead,
    reserved under its lock (nothing sleeps holding it), so every limiter given the same
    slot, in any process, draws from *one* limit: the workers of a sharded run together
    start at most ``rate`` calls per second. Their ``clock`` must then be one clock for
    all of them: ``time.monotonic`` is (system-wide on Linux, macOS and Windows).
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        shared: SharedSlot | None = None,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be a positive number of calls per second, got {rate}")
        self._gap = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._shared = shared
        self._next = 0.0

    @property
    def limited(self) -> bool:
        return bool(self._gap)

    def _reserve(self, now: float) -> float:
        if self._shared is None:
            start = max(now, self._next)
            self._next = start + self._gap
            return start
        with self._shared.get_lock():
            start = max(now, self._shared.value)
            self._shared.value = start + self._gap
        return start

    async def acquire(self) -> None:
        if not self._gap:
            return
        now = self._clock()
        start = self._reserve(now)
        if start > now:
            await self._sleep(start - now)


@dataclass(slots=True)
class CallStats:
    calls: int = 0  # agent calls made by this process
    hits: int = 0  # cached answers used
    failed: int = 0  # calls whose answer was an error (not cached)
    lookups: int = 0  # batches looked up in the cache


class CachedAgent:
    """Answers for events: cached ones first, the rest from ``runner``; see the module doc."""

    def __init__(
        self,
        runner: AgentRunner,
        cache: AnswerStore,
        *,
        spec: str,
        declared_version: str | None = None,
        refresh: bool = False,
        rate: float | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float],
        now: Callable[[], datetime],
    ) -> None:
        """``limiter``: a :class:`RateLimiter` to share (a sharded run's workers share one
        limit); else one of ``rate`` calls per second is made on ``clock``."""
        self.runner = runner
        self.cache = cache
        self.key = agent_key(spec, declared_version)
        self.declared = declared_version
        self.refresh = refresh
        self.limiter = limiter if limiter is not None else RateLimiter(rate, clock=clock)
        self.now = now
        self.stats = CallStats()
        self.expected: str | None = declared_version
        self._confirmed = declared_version is not None
        self._used_unconfirmed = False
        self._pending: asyncio.Future[None] | None = None
        self._nothing_cached = False

    async def start(self) -> None:
        """Learn the version the cached answers were given by (the expectation), and whether
        the cache holds any answer under this key at all."""
        if self.refresh:
            return
        versions = await self.cache.versions(self.key)
        # Nothing cached under this key: this pass's lookups could only miss (the run owns
        # the cache file, and a pass never asks about one request twice), so it skips them.
        self._nothing_cached = not versions
        if self.expected is None and versions:
            self.expected = most_common_version(versions)

    @property
    def confirmed(self) -> bool:
        """A fresh answer (or ``--agent-version``) told which version the agent is."""
        return self._confirmed

    def reset(self) -> None:
        """Start of a new pass (after :class:`VersionChanged`)."""
        self._used_unconfirmed = False
        self._nothing_cached = False  # the last pass cached answers: look them up

    async def answers(
        self,
        events: Sequence[WorkEvent],
        stop: asyncio.Event | None = None,
        *,
        texts: Sequence[bytes] | None = None,
        handover: bool = False,
        repeat: int | None = None,
    ) -> list[ShadowDecision | None]:
        """``texts``: the events' :func:`canonical_request` when the caller has them;
        ``handover``: the caller never reads the events' payloads again, so an in-process
        agent may get them without a copy (:meth:`shadow.agent.AgentRunner.decide_batch`).
        ``repeat``: the try number of repeated cases (the request's ``repeat``,
        ``X-Shadow-Repeat`` over HTTP), cached under a key of its own."""
        if texts is None:
            texts = [canonical_request(e) for e in events]
        hashes = [hash_text(t, repeat) for t in texts]
        await self.flush()  # the previous batch's answers are on disk before any new call
        skip = self.refresh or self._nothing_cached
        cached = {} if skip else await self.cache.get(self.key, hashes)
        self.stats.lookups += 0 if skip else 1
        out: list[ShadowDecision | None] = [None] * len(events)
        todo = self._use_hits(cached, hashes, out)
        before = self.expected
        first_live = not self._confirmed
        # Rows of these hashes exist when another version answered them (or --refresh-cache
        # skipped the lookup): only then must the write replace rows.
        overwrite = self.refresh or any(cached.get(hashes[i]) is not None for i in todo)
        await self._call(events, hashes, todo, out, stop, handover, overwrite, repeat)
        changed = first_live and self._confirmed and before is not None
        if changed and self.expected != before and self._used_unconfirmed:
            # Cached answers of the old version were used (in this batch or before): score
            # everything again under the new one. Only the first fresh answer can trigger
            # this, so it happens at most once per run.
            self.reset()
            raise VersionChanged(f"agent now answers as {self.expected}, cache had {before}")
        return out

    def _use_hits(
        self, cached: dict[str, ShadowDecision], hashes: list[str], out: list[ShadowDecision | None]
    ) -> list[int]:
        todo: list[int] = []
        for i, h in enumerate(hashes):
            hit = cached.get(h)
            if hit is not None and (
                self.declared is not None or hit.agent_version == self.expected
            ):
                out[i] = hit
                self.stats.hits += 1
                if not self._confirmed:
                    self._used_unconfirmed = True
            else:
                todo.append(i)
        return todo

    async def _call(
        self,
        events: Sequence[WorkEvent],
        hashes: list[str],
        todo: list[int],
        out: list[ShadowDecision | None],
        stop: asyncio.Event | None,
        handover: bool,
        overwrite: bool,
        repeat: int | None = None,
    ) -> None:
        if not todo:
            return
        fresh: list[tuple[str, ShadowDecision]] = []

        def got(i: int, d: ShadowDecision) -> None:
            self.stats.calls += 1
            if d.error is None:
                fresh.append((hashes[i], d))
                self._observe(d)
            else:
                self.stats.failed += 1
                if self.expected is not None:
                    # Errors count against the version the run is about, whichever
                    # answer the runner happened to see last.
                    d = replace(d, agent_version=self.expected)
            out[i] = d

        if self.limiter.limited or repeat is not None:
            # A try of a repeated case goes through ``decide``, which marks it (the batch
            # call knows no repeats).
            queue = iter(todo)

            async def worker() -> None:
                for i in queue:
                    if stop is not None and stop.is_set():
                        return
                    await self.limiter.acquire()
                    got(i, await self.runner.decide(events[i], repeat=repeat))

            workers: asyncio.Future[Any] = asyncio.gather(
                *(worker() for _ in range(min(self.runner.concurrency, len(todo))))
            )
        else:
            # One batch call: for in-process agents far less work per call (see
            # shadow.agent.AgentRunner.decide_batch); each answer arrives through ``got``.
            workers = asyncio.ensure_future(
                self.runner.decide_batch(
                    [events[i] for i in todo],
                    done=lambda k, d: got(todo[k], d),
                    stop=stop.is_set if stop is not None else None,
                    handover=handover,
                )
            )
        try:
            if stop is None:
                await workers
            else:
                halt: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
                both: set[asyncio.Future[Any]] = {workers, halt}
                try:
                    await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    halt.cancel()
                if not workers.done():
                    workers.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await workers
                else:
                    workers.result()
        finally:
            # Answers already paid for are kept even when the batch is cut short. The write
            # runs while the caller scores the batch; the next call to ``answers`` (or
            # ``flush``) waits for it before asking the agent anything.
            await self.flush()
            self._pending = asyncio.ensure_future(
                self.cache.put(self.key, fresh, now=self.now(), replace=overwrite)
            )

    async def flush(self) -> None:
        """Wait until every answer received so far is committed to the cache."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await asyncio.shield(pending)

    def _observe(self, d: ShadowDecision) -> None:
        if self.declared is not None:
            return
        if not self._confirmed:
            self._confirmed = True
            self.expected = d.agent_version
