"""Sharded replay: one history, several worker processes, one report.

:func:`run_sharded` splits the selected cases by a hash of ``event_id`` into ``workers``
partitions (:class:`~replay.history.History` ``shard=(k, n)``). Each worker is a *spawned*
process (it inherits no thread or DuckDB connection of the parent) that opens the history
read-only for its partition and runs the ordinary :class:`~replay.runner.ReplayRunner` with
its own :class:`~shadow.agent.AgentRunner` and :class:`~replay.cache.CachedAgent`: the same
redaction, shadow markers, diff and tallies as a single run. The parent merges the workers'
tallies (:meth:`~replay.report.TaskStats.merge`, order-independent), so the report's numbers
are exactly those of a single-process run over the same history and answers.

Cache
    A DuckDB file written by one process cannot be opened by another, so the parent owns
    the run's cache and serves it to the workers over a pipe each (:class:`_RemoteCache`):
    a worker's lookups and writes are the same calls a single run makes, answered in order,
    and a write is committed (one transaction per batch) before the worker hears back, so
    it holds the single run's rules: every answer of a batch is on disk before the worker's
    next batch makes a call, and nothing answered is asked again. The JSON work stays in
    the workers; the parent only runs DuckDB.
Agent version
    Each worker learns the expected version from the cache like a single run and restarts
    its own pass when the agent now answers as another one. If the workers end up expecting
    different versions (one saw the new version, another only used cached answers of the
    old one), every shard runs again once expecting the new version: a single run would have
    restarted its whole pass.
Stop
    Setting ``stop`` (Ctrl-C) is relayed to the workers, which ignore SIGINT themselves and
    end like a single run (answers in flight cancelled, answers received cached and scored);
    the merged result then says ``complete: False`` and covers exactly the cases scored.
Rate
    ``rate`` is one limit for the whole run, not one per worker: the workers' limiters share
    the next free start time in one ``multiprocessing`` double (:class:`~replay.cache.
    RateLimiter` with a shared slot, on the system-wide monotonic clock), so together they
    start at most ``rate`` agent calls per second.
Limits
    No ``limit`` (the first N cases in ``event_id`` order is a rule over the whole history).
    Progress is the workers' scored counts, polled.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from replay.cache import CachedAgent, CallStats, RateLimiter
from replay.errors import HistoryError, ReplayError
from replay.history import History, ResponseCache, decode_answers, encode_answers
from replay.model import Selection, most_common_version
from replay.report import TaskStats
from replay.runner import ReplayResult, ReplayRunner
from shadow.agent import AgentRunner, load_agent
from shadow.model import ShadowDecision
from shadow.policy import Policy

__all__ = ["ShardJob", "run_sharded"]

_POLL = 0.1  # seconds between progress polls and stop checks
_SCORED, _CALLS, _HITS = 0, 1, 2  # the shared counters' slots


@dataclass(frozen=True, slots=True)
class ShardJob:
    """Everything a worker needs (picklable); ``shard``/``shards``/``expected`` are set per
    worker by :func:`run_sharded`."""

    history: str
    selection: Selection
    policy: Policy
    agent: str
    cache: str = ":memory:"
    timeout: float = 30.0
    concurrency: int = 8
    retries: int = 2
    declared_version: str | None = None
    refresh: bool = False
    batch: int = 500
    examples: int = 5
    rate: float | None = None  # agent calls started per second, over all the workers
    repeats: bool = True  # the policy's repeated cases get their tries (--no-repeats: off)
    shard: int = 0
    shards: int = 1
    expected: str | None = None


@dataclass(slots=True)
class _Outcome:
    result: ReplayResult
    stats: CallStats
    expected: str | None
    confirmed: bool  # a fresh answer told the worker which version the agent is


# -- the worker process ------------------------------------------------------------------------


class _RemoteCache:
    """The parent's cache, seen from a worker: one request on the pipe at a time."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    def _roundtrip(self, msg: tuple[Any, ...]) -> Any:
        self._conn.send(msg)
        status, value = self._conn.recv()
        if status != "ok":
            raise HistoryError(str(value))
        return value

    async def _ask(self, *msg: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(self._roundtrip, msg)

    async def get(self, agent_key: str, hashes: Sequence[str]) -> dict[str, ShadowDecision]:
        return decode_answers(await self._ask("get", agent_key, list(hashes)))

    async def put(
        self,
        agent_key: str,
        answers: Sequence[tuple[str, ShadowDecision]],
        *,
        now: datetime,
        replace: bool = True,
    ) -> None:
        if answers:
            await self._ask("put", agent_key, *encode_answers(answers), now, replace)

    async def versions(self, agent_key: str) -> Counter[str]:
        found: Counter[str] = await self._ask("versions", agent_key)
        return found


def _worker_main(job: ShardJob, conn: Connection, stop: Any, scored: Any, slot: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent relays Ctrl-C through ``stop``
    try:
        outcome = asyncio.run(_work(job, conn, stop, scored, slot))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("failed", exc if isinstance(exc, ReplayError) else _describe(exc)))
    else:
        conn.send(("done", outcome))
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _work(
    job: ShardJob, conn: Connection, stop_flag: Any, scored: Any, slot: Any
) -> _Outcome:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(_POLL):
            if stop_flag.value:
                loop.call_soon_threadsafe(stop.set)
                return

    told = CallStats()  # what this worker has added to the shared counters

    def progress(k: int) -> None:
        now = source.stats
        with scored.get_lock():
            scored[_SCORED] += k
            scored[_CALLS] += now.calls - told.calls
            scored[_HITS] += now.hits - told.hits
        told.calls, told.hits = now.calls, now.hits

    threading.Thread(target=watch, name="replay-shard-stop", daemon=True).start()
    try:
        async with (
            History(
                job.history, job.selection, batch=job.batch, shard=(job.shard, job.shards)
            ) as history,
            AgentRunner(
                load_agent(job.agent, timeout=job.timeout),
                concurrency=job.concurrency,
                retries=job.retries,
                default_version=job.declared_version or "unknown",
            ) as runner,
        ):
            source = CachedAgent(
                runner,
                _RemoteCache(conn),
                spec=job.agent,
                declared_version=job.declared_version,
                refresh=job.refresh,
                limiter=RateLimiter(job.rate, clock=time.monotonic, shared=slot),
                clock=time.monotonic,
                now=lambda: datetime.now(UTC),
            )
            await source.start()
            if job.expected is not None:
                source.expected = job.expected
            result = await ReplayRunner(
                history,
                job.policy,
                source,
                examples=job.examples,
                stop=stop,
                progress=progress,
                repeats=job.repeats,
            ).run()
    finally:
        done.set()
    return _Outcome(result, source.stats, source.expected, source.confirmed)


# -- the parent ------------------------------------------------------------------------------------


async def run_sharded(
    job: ShardJob,
    workers: int,
    *,
    stop: asyncio.Event | None = None,
    progress: Callable[[int], None] | None = None,
    live: CallStats | None = None,
) -> tuple[ReplayResult, CallStats]:
    """Run ``job`` on ``workers`` processes and merge; see the module docstring. ``live``,
    when given, is kept up to date with the workers' agent calls and cache hits while they
    run (for a progress display); the returned stats are the final ones."""
    if workers < 1:
        raise ReplayError(f"workers must be at least 1, got {workers}")
    if job.selection.limit is not None:
        raise ReplayError("a sharded replay cannot apply --limit (a rule over the whole history)")
    start = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    # Shared flags, polled (a multiprocessing Event can hang its setter when a waiting
    # process dies).
    # scored cases, agent calls and cache hits, summed over the workers
    stop_flag, scored = ctx.Value("b", 0), ctx.Array("q", 3)
    slot = ctx.Value("d", 0.0)  # the next free call start (time.monotonic) of --rate
    expected: str | None = None
    rounds = 0
    async with ResponseCache(job.cache) as cache:
        while True:
            rounds += 1
            jobs = [
                replace(job, shard=k, shards=workers, expected=expected) for k in range(workers)
            ]
            relay = _Relay(stop, stop_flag, scored, progress, live)
            polling = asyncio.ensure_future(relay.run())
            try:
                outcomes = await _round(ctx, jobs, cache, stop_flag, scored, slot)
            finally:
                polling.cancel()
                relay.poll()
            seen = Counter(o.expected for o in outcomes if o.confirmed and o.expected)
            expecting = {o.expected for o in outcomes if o.result.scored}
            if rounds > 1 or job.declared_version is not None or len(expecting) <= 1 or not seen:
                break
            # Workers disagree on the version: one saw the agent answer as a new one while
            # another only used cached answers of the old one. Run again expecting the new.
            expected = most_common_version(seen)
            assert expected is not None  # seen is not empty
            with scored.get_lock():
                scored[_SCORED] = 0
    result = _merge([o.result for o in outcomes], rounds)
    result.seconds = time.monotonic() - start
    stats = CallStats()
    for o in outcomes:
        stats.calls += o.stats.calls
        stats.hits += o.stats.hits
        stats.failed += o.stats.failed
        stats.lookups += o.stats.lookups
    return result, stats


async def _round(
    ctx: Any, jobs: list[ShardJob], cache: ResponseCache, stop_flag: Any, scored: Any, slot: Any
) -> list[_Outcome]:
    """Start one worker per job, serve their cache requests, collect their outcomes."""
    procs = []
    serving = []
    try:
        for job in jobs:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(job, theirs, stop_flag, scored, slot),
                name=f"replay-shard-{job.shard}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            procs.append(proc)
            serving.append(asyncio.ensure_future(_serve(mine, cache, proc)))
        return list(await asyncio.gather(*serving))
    finally:
        if not all(t.done() and not t.cancelled() and t.exception() is None for t in serving):
            stop_flag.value = 1  # a worker failed (or we were cancelled): stop the others
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
        for proc in procs:  # a worker that reported has nothing left but to exit
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.terminate()


async def _serve(conn: Connection, cache: ResponseCache, proc: Any) -> _Outcome:
    """Answer one worker's cache requests in order until it reports its outcome."""
    try:
        while True:
            try:
                msg = await asyncio.to_thread(conn.recv)
            except EOFError:
                raise ReplayError(
                    f"replay worker {proc.name} died (exit code {proc.exitcode})"
                ) from None
            kind = msg[0]
            if kind == "done":
                outcome: _Outcome = msg[1]
                return outcome
            if kind == "failed":
                raise (
                    msg[1]
                    if isinstance(msg[1], ReplayError)
                    else ReplayError(f"replay worker {proc.name} failed: {msg[1]}")
                )
            try:
                if kind == "get":
                    reply: Any = await cache.get_texts(msg[1], msg[2])
                elif kind == "put":
                    await cache.put_texts(
                        msg[1], msg[2], msg[3], msg[4], now=msg[5], replace=msg[6]
                    )
                    reply = None
                else:
                    reply = await cache.versions(msg[1])
            except ReplayError as exc:
                conn.send(("error", str(exc)))
            else:
                conn.send(("ok", reply))
    finally:
        conn.close()


class _Relay:
    """Passes ``stop`` on to the workers and their progress back to ``progress``."""

    def __init__(
        self,
        stop: asyncio.Event | None,
        stop_flag: Any,
        scored: Any,
        progress: Callable[[int], None] | None,
        live: CallStats | None = None,
    ) -> None:
        self.stop, self.stop_flag, self.scored, self.progress = stop, stop_flag, scored, progress
        self.live = live
        self.reported = 0

    def poll(self) -> None:
        if self.stop is not None and self.stop.is_set():
            self.stop_flag.value = 1
        with self.scored.get_lock():
            now, calls, hits = self.scored[:]
        if self.live is not None:
            self.live.calls, self.live.hits = calls, hits
        if self.progress is not None and now > self.reported:
            self.progress(now - self.reported)
        self.reported = now

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(_POLL)


def _merge(results: list[ReplayResult], passes: int) -> ReplayResult:
    tasks: dict[str, TaskStats] = {}
    skipped: Counter[str] = Counter()
    for r in results:
        skipped.update(r.skipped)
        for name, t in r.tasks.items():
            if name in tasks:
                tasks[name].merge(t)
            else:
                tasks[name] = t
    stats = results[0].stats
    stats.selected = sum(r.stats.selected for r in results)
    stats.second_opinions = sum(r.stats.second_opinions for r in results)
    return ReplayResult(
        dict(sorted(tasks.items())),
        stats,
        all(r.complete for r in results),
        skipped,
        passes=max(r.passes for r in results) + passes - 1,
    )
