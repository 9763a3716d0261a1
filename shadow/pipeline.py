"""The pipeline: ingest → store → agent (shadow) → store → joiner → promoter → metrics.

One :class:`Pipeline` per process, shared by every source (HTTP ingest, files, Kafka) and
by ``shadow demo``. Records come in through its :class:`~shadow.intake.Intake`
(:attr:`Pipeline.intake`: reject, redact, sample, store, count; sources and handlers are
given the intake, not the pipeline); the pipeline owns what happens after:

- The agent never runs on the ingest path: stored events flagged ``needs_agent`` are the
  work queue. A feeder takes the events ``submit_events`` just stored from memory (at most
  two batches are kept; no store read) and otherwise reads them from the store (so a
  restart or an overflow resumes, and memory stays bounded; the store is also read at
  least every second while the memory feed runs, so nothing it missed waits).
  ``agent_concurrency`` workers call the agent (an in-process agent gets a store batch at
  a time through ``AgentRunner.decide_batch``), and one writer stores decisions in
  batches, then completes joins and re-evaluates the ladder after each batch of comparisons.
- Outcomes trigger joins in a background task too, so a burst of outcomes never waits for
  comparisons or promotion.
- Expiry runs every ``expire_interval`` seconds with ``join_ttl``.

Backpressure for pull sources: the backlog is the stored events awaiting the agent
(:meth:`shadow.store.Store.awaiting_agent`); Kafka pauses its partitions on a threshold of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

from shadow.agent import AgentRunner
from shadow.budgets import price
from shadow.config import DEFAULT_DEAD_LETTER_RAW_PREFIX, Settings
from shadow.errors import ShadowError
from shadow.handling import HandlingLog
from shadow.intake import Intake
from shadow.joiner import Joiner, JoinReport
from shadow.ladder import Ladder
from shadow.metrics import Metrics
from shadow.model import Comparison, ShadowDecision, WorkEvent
from shadow.policy import Policy
from shadow.promotion import LadderState
from shadow.store import PutStatus, Store
from shadow.supervisor import Supervisor
from shadow.tracing import NO_TRACING, Tracer

__all__ = ["Pipeline", "PipelineObserver"]

log = logging.getLogger("shadow.pipeline")

REPEAT_QUEUE = 10_000  # repeated cases waiting for their tries, at most
REPEAT_WORKERS = 4  # cases repeated at once, at most (each one's tries in turn)


class PipelineObserver(Protocol):
    """Told what the pipeline stored (the Kafka publisher implements it). Both calls must
    return at once and never raise: an observer queues its own work, so a slow or broken
    broker never slows the pipeline."""

    def comparisons_stored(self, comparisons: Sequence[Comparison]) -> None: ...

    def ladder(self, states: Mapping[str, LadderState]) -> None: ...


class Pipeline:
    """Wires the stages together; see the module docstring. Use as an async context
    manager (or ``start``/``stop``); ``clock`` returns aware datetimes."""

    def __init__(
        self,
        *,
        settings: Settings,
        policy: Policy,
        store: Store,
        agent: AgentRunner | None,
        metrics: Metrics,
        clock: Callable[[], datetime],
        observers: Sequence[PipelineObserver] = (),
        promote: bool = True,
        scan_every: float = 1.0,
        supervisor: Supervisor | None = None,
        ladder: Ladder | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self.settings = settings
        # The case's trace (shadow.tracing): ingest spans from the intake, each comparison's
        # trace id kept by the joiner, the verdict as the evaluation event after each join.
        self.tracer = tracer
        self.policy = policy
        self.store = store
        self.agent = agent
        self.metrics = metrics
        self.clock = clock
        self.observers = tuple(observers)
        # Its loops run in a group of the sidecar's supervisor (shadow.supervisor).
        self._group = (supervisor or Supervisor(metrics)).group("pipeline")
        self._stopped = False
        prefix = settings.dead_letter_raw_prefix
        if prefix is None:
            prefix = 0 if policy.redacts else DEFAULT_DEAD_LETTER_RAW_PREFIX
        # Ingest (reject, redact, sample, store, count): what sources and handlers use.
        self.intake = Intake(
            policy=policy,
            store=store,
            metrics=metrics,
            clock=clock,
            raw_prefix=prefix,
            samples=agent is not None,
            hooks=self,
            tracer=tracer,
        )
        # How items were handled, from the routing answers (GET /v1/route): whether their
        # outcomes are evidence. Written before each join.
        self.handling = HandlingLog(store, clock, metrics)
        for observer in self.observers:
            wake = getattr(observer, "handling_recorded", None)
            if wake is not None:
                self.handling.on_stored.append(wake)
        self.joiner = Joiner(
            store,
            policy,
            clock,
            batch=max(settings.batch_size, 1000),
            before=self.handling.flush,
            trace_of=tracer.trace_id if tracer.enabled else None,
        )
        # The one owner of autonomy (the composition root builds it first: the tool gateway
        # reads it too).
        if ladder is None:
            # promote=False: a Kafka replica, whose ladder follows the promoter's levels.
            ladder = Ladder(
                store,
                policy,
                clock,
                metrics=metrics,
                observers=self.observers,
                decides=promote,
                join_ttl=timedelta(seconds=settings.join_ttl),
            )
        self.ladder = ladder
        self.handling.on_relabelled.append(self.ladder.refold)
        # Room for a whole store batch: the feeder reads the backlog a batch at a time (one
        # query per batch, not per handful), while memory stays bounded by batch_size.
        self._work: asyncio.Queue[WorkEvent] = asyncio.Queue(
            maxsize=max(settings.agent_concurrency * 2, settings.batch_size)
        )
        self._results: asyncio.Queue[tuple[WorkEvent, ShadowDecision]] = asyncio.Queue()
        self._inflight: set[str] = set()
        # Repeated cases (shadow.noise) waiting for their extra tries: (event, tries). Full,
        # a case is not repeated (logged), never waited for.
        self._repeats: asyncio.Queue[tuple[WorkEvent, int]] = asyncio.Queue(maxsize=REPEAT_QUEUE)
        # Sampled events submit_events just stored, for the feeder (see _awaiting).
        self._fresh: dict[str, WorkEvent] = {}  # by event_id, oldest first
        self._fresh_max = 2 * max(settings.batch_size, settings.agent_concurrency)
        self._next_scan = 0.0
        self._scan_every = scan_every  # seconds between store reads while memory feeds
        self._join_ids: set[str] = set()
        self._agent_wake = asyncio.Event()
        self._join_wake = asyncio.Event()
        self._busy = 0  # writer/joiner batches being processed
        self.comparisons = 0  # made by this process (for progress displays)
        self.started = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._stopped:
            raise ShadowError("this pipeline was stopped; build a new one to start again")
        if self.started:
            return self
        self.started = True
        await self.store.save_policy(self.policy.text, self.policy.hash)
        for entry in await self.joiner.new_epochs():  # before the ladder reads the evidence
            log.info("%s: %s", entry.task_type, entry.reason)
        await self.ladder.load()
        await self._after_join(await self.joiner.join())  # finish what a crash interrupted
        # Comparisons stored just before a crash may owe the ladder a (demotion) decision even
        # when the sweep above made none; deciding now is idempotent.
        await self.evaluate()
        spawn = self._group.spawn
        spawn("join", self._join_loop)
        spawn("expire", self._expire_loop)
        if self.agent is not None:
            spawn("writer", self._writer)
            if any(t.repeat_rate > 0 for t in self.policy.task_types.values()):
                for i in range(min(self.settings.agent_concurrency, REPEAT_WORKERS)):
                    spawn("repeats", self._repeat_loop, name=f"repeats-{i}")
            if self.agent.batches:
                spawn("feeder", self._batch_feeder)
            else:
                spawn("feeder", self._feeder)
                for i in range(self.settings.agent_concurrency):
                    spawn("agent", self._worker, name=f"agent-{i}")
        return self

    async def stop(self) -> None:
        """Idempotent, and never raises what a loop raised (the supervisor logged it): stops
        the loops, then writes the routing records it holds. Work not finished stays in the
        store and resumes in the next process. A stopped pipeline does not start again."""
        self._stopped = True
        await self._group.stop()
        try:
            await self.handling.close()
        except Exception:
            log.exception("storing the last routing records failed")

    async def not_ready(self) -> str | None:
        """Why ``/readyz`` must fail (not started, the store does not answer), or ``None``."""
        if not self.started:
            return "pipeline not started"
        failing = self.store.failing
        if failing is not None:
            return f"store failing: {failing}"
        try:
            await self.store.schema_version()
        except Exception as exc:  # any store failure means not ready; say which
            return f"store unavailable: {exc}"
        return None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what the intake tells the background work (IntakeHooks) ----------------------------

    def events_stored(self, events: Sequence[WorkEvent]) -> None:
        """Sampled events just stored: the agent's memory feed (at most ``_fresh_max``;
        beyond that the feeder reads the store next)."""
        for event in events:
            if len(self._fresh) < self._fresh_max:
                self._fresh[event.event_id] = event
            else:
                self._next_scan = 0.0
        self._agent_wake.set()

    def outcomes_stored(self, event_ids: Sequence[str]) -> None:
        # An event still with the agent (or queued for it in memory) has no decision to join
        # yet: the writer joins it after storing its decision, when this outcome is stored.
        self._schedule_join(
            [e for e in event_ids if e not in self._inflight and e not in self._fresh]
        )

    # -- background work --------------------------------------------------------------------

    def _repeat(self, events: Sequence[WorkEvent]) -> None:
        """Queue the cases whose first decision was just stored and that their task type's
        ``repeat_rate`` repeats (a stable hash of the event id)."""
        for event in events:
            task = self.policy.for_task(event.task_type)
            if task is None or not task.repeated(event.event_id):
                continue
            try:
                self._repeats.put_nowait((event, task.repeats))
            except asyncio.QueueFull:  # a measurement, not evidence: skipped, not waited for
                log.warning("repeat queue full: %s is not repeated", event.event_id)
                self.metrics.repeat_skipped(event.task_type, "queue_full")

    async def _repeat_loop(self) -> None:
        """The agent's extra tries of repeated cases (shadow.noise), stored apart from the
        evidence (``repeats``: never a decision, a comparison or a join). A case's tries run
        one after the other, each after the one before settled, and only once its first
        decision was stored (its shadow session closed), so at most one shadow session of a
        case is open at a time: a repeat's tool calls go through its own shadow session,
        whose writes are captured, never forwarded."""
        assert self.agent is not None
        while True:
            event, tries = await self._repeats.get()
            try:
                answers = []
                for attempt in range(1, tries + 1):
                    decision = await self.agent.decide(event, repeat=attempt)
                    answers.append((decision, event.task_type, attempt))
                try:
                    await self.store.put_repeats(answers, now=self.clock())
                except Exception as exc:  # a repeat is a measurement: lost, it is only missing
                    log.warning("repeats of %s not stored: %s", event.event_id, exc)
                    self.metrics.repeat_skipped(event.task_type, "not_stored")
            finally:
                self._repeats.task_done()

    async def repeats_done(self) -> None:
        """Wait until every repeated case queued so far has had its tries stored (or
        counted as not stored). :meth:`drain` does not wait for them: they are a
        measurement, never evidence."""
        await self._repeats.join()

    def _schedule_join(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            self._join_ids.update(event_ids)
            self._join_wake.set()

    async def _awaiting(self, limit: int) -> tuple[list[WorkEvent], bool]:
        """Up to ``limit`` stored events awaiting the agent and not in flight: those
        ``submit_events`` just stored, from memory; from the store (which has every one of
        them) at start, after the memory feed overflowed, while a read came back full, and
        at least every ``scan_every`` seconds. The flag is true when they were read from
        the store (objects nobody else holds).

        The memory feed is emptied right after each store read (in the loop step the read
        returns in): everything it held then was stored before the read ran (one store
        thread), so it is in the result or beyond its limit, still in the store. So an event
        is never handed out twice, and one the memory feed dropped waits at most
        ``scan_every``."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_scan:
            out: list[WorkEvent] = []
            while self._fresh and len(out) < limit:
                event = self._fresh.pop(next(iter(self._fresh)))
                if event.event_id not in self._inflight:
                    out.append(event)
            return out, False
        events = await self.store.events_awaiting_agent(limit=limit + len(self._inflight))
        self._fresh.clear()
        full = len(events) >= limit + len(self._inflight)
        self._next_scan = 0.0 if full else loop.time() + self._scan_every
        return [e for e in events if e.event_id not in self._inflight][:limit], True

    async def _feeder(self) -> None:
        assert self.agent is not None
        while True:
            room = self._work.maxsize - self._work.qsize()
            if room <= 0:
                await asyncio.sleep(0.005)
                continue
            fresh, _ = await self._awaiting(room)
            if not fresh:
                self._agent_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._agent_wake.wait(), timeout=1.0)
                continue
            for event in fresh:
                self._inflight.add(event.event_id)
                await self._work.put(event)

    async def _batch_feeder(self) -> None:
        """In-process agents: a store batch at a time through ``decide_batch`` (the same
        decisions as one call per event, far less work per call). At most two batches are
        between the store and the writer."""
        assert self.agent is not None
        size = self.settings.batch_size
        while True:
            if len(self._inflight) >= 2 * size:
                await asyncio.sleep(0.005)
                continue
            fresh, own = await self._awaiting(size)
            if not fresh:
                self._agent_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._agent_wake.wait(), timeout=1.0)
                continue
            self._inflight.update(e.event_id for e in fresh)
            try:
                # Events read from the store are not used again here; those from memory
                # share their payloads with the submitter, so the agent gets copies.
                decisions = await self.agent.decide_batch(fresh, handover=own)
            except BaseException:
                self._inflight.difference_update(e.event_id for e in fresh)
                raise
            for event, decision in zip(fresh, decisions, strict=True):
                if decision is None:  # the runner is closing: left for the next start
                    self._inflight.discard(event.event_id)
                else:
                    self._results.put_nowait((event, decision))

    async def _worker(self) -> None:
        assert self.agent is not None
        while True:
            event = await self._work.get()
            decision = await self.agent.decide(event)
            await self._results.put((event, decision))

    async def _writer(self) -> None:
        while True:
            batch = [await self._results.get()]
            self._busy += 1
            try:
                while len(batch) < self.settings.batch_size:
                    try:
                        batch.append(self._results.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                # Tokens without a cost are priced now, from the policy's price table.
                batch = [(e, self._priced(e.task_type, d)) for e, d in batch]
                put = await self.store.put_decisions(
                    [(d, e.task_type) for e, d in batch], now=self.clock()
                )
                for event, decision in batch:
                    self.metrics.decision(event.task_type, decision)
                    self._inflight.discard(event.event_id)
                self._breaker_gauge()
                self._schedule_join([e.event_id for e, _ in batch])
                stored = zip(batch, put, strict=True)
                self._repeat([e for (e, _), r in stored if r.status is PutStatus.STORED])
                self._group.recovered("writer")
            except Exception as exc:
                # The events stay awaiting a decision: the feeder hands them out again.
                self._group.retrying("writer", exc, retry_in=1.0)
                for event, _ in batch:
                    self._inflight.discard(event.event_id)
                await asyncio.sleep(1.0)
            finally:
                self._busy -= 1

    def _priced(self, task_type: str, decision: ShadowDecision) -> ShadowDecision:
        """``decision`` with its cost priced (shadow.budgets.price) when the agent reported
        tokens but no cost: by its usage's model, else the task type's ``model``."""
        if decision.usage.cost_source != "unknown":
            return decision
        task = self.policy.for_task(task_type)
        usage = price(decision.usage, task.model if task else None, self.policy.prices)
        return decision if usage is decision.usage else replace(decision, usage=usage)

    def _breaker_gauge(self) -> None:
        if self.agent is not None:
            self.metrics.breaker_open.set(1 if self.agent.breaker.state == "open" else 0)

    async def _join_loop(self) -> None:
        while True:
            await self._join_wake.wait()
            self._join_wake.clear()
            ids, self._join_ids = list(self._join_ids), set()
            if not ids:
                continue
            self._busy += 1
            try:
                await self._after_join(await self.joiner.join(ids))
                self._group.recovered("join")
            except Exception as exc:
                self._group.retrying("join", exc, retry_in=1.0)
                self._join_ids.update(ids)
                await asyncio.sleep(1.0)
                self._join_wake.set()
            finally:
                self._busy -= 1

    async def _after_join(self, report: JoinReport) -> None:
        for c in report.comparisons:
            self.metrics.comparison(c)
        by_key = {(c.event_id, c.agent_version): c.task_type for c in report.comparisons}
        for r in report.reversals:
            self.metrics.reversal(by_key.get((r.event_id, r.agent_version), "other"))
        for task_type in report.conflicts:
            self.metrics.handling_conflicts.labels(self.metrics.task_label(task_type)).inc()
        self.comparisons += len(report.comparisons)
        self.tracer.evaluated(report.comparisons)
        if report.comparisons:
            for observer in self.observers:
                observer.comparisons_stored(report.comparisons)
            self.ladder.observe(report.comparisons)
            await self.evaluate()

    async def scrape(self) -> None:
        """Every gauge for a scrape (``/metrics``) and the expiry loop: the Ladder's (which it
        also sets itself after each change) and the pending-join and acceptance gauges,
        which scan whole tables and so are left out of the per-batch path."""
        self.ladder.announce()
        self.metrics.pending_joins(await self.store.pending())
        self.metrics.acceptance(await self.store.acceptance())

    async def _expire_loop(self) -> None:
        ttl = timedelta(seconds=self.settings.join_ttl)
        while True:
            await asyncio.sleep(self.settings.expire_interval)
            try:
                await self.joiner.expire(ttl)
                # Join health moves with time (events pass their TTL): re-decide on it.
                await self.ladder.evaluate(health=True)
                await self.purge()
                await self.scrape()
                self._group.recovered("expire")
            except Exception as exc:
                self._group.retrying("expire", exc, retry_in=self.settings.expire_interval)

    async def purge(self) -> None:
        """Retention: delete closed cases and dead letters older than ``retention`` (0:
        nothing); runs after each expiry (see :mod:`shadow.store.retention`)."""
        if not self.settings.retention:
            return
        cutoff = self.clock() - timedelta(seconds=self.settings.retention)
        purged = await self.store.purge(cutoff=cutoff, limit=max(self.settings.batch_size, 1000))
        self.metrics.purged_rows(purged.by_table())
        if purged.total:
            log.info(
                "retention: deleted %d events, %d outcomes, %d decisions and %d dead letters "
                "older than %s",
                purged.events,
                purged.outcomes,
                purged.decisions,
                purged.dead_letters,
                cutoff.isoformat(),
            )

    async def evaluate(self) -> None:
        """Re-decide the ladder now on the store's evidence (a ladder that follows re-reads
        the levels instead); the Ladder announces the result itself."""
        await self.ladder.evaluate()

    async def drain(self, *, poll: float = 0.02) -> None:
        """Wait until every stored event has its decision and every ready join is done."""
        while True:
            idle = (
                not self._inflight
                and self._work.empty()
                and self._results.empty()
                and not self._join_ids
                and self._busy == 0
            )
            # The store query yields to the loop, so re-check the in-memory state after it.
            if (
                idle
                and (self.agent is None or await self._nothing_awaits_agent())
                and not (self._join_ids or self._busy or self._inflight)
            ):
                return
            await asyncio.sleep(poll)

    async def _nothing_awaits_agent(self) -> bool:
        return await self.store.awaiting_agent() == 0
