"""The runner: bounded concurrency, timeouts, transport-error retries with backoff and the
breaker, one decision per event (or a batch, for in-process agents)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from shadow.agent.base import AgentTransport, _never, describe
from shadow.agent.breaker import CircuitBreaker
from shadow.agent.inproc import CallableAgent
from shadow.errors import AgentError, ConfigError, ValidationError
from shadow.model import ShadowDecision, WorkEvent
from shadow.tracing import NO_TRACING, Tracer


class ToolSessions(Protocol):
    """The tool gateway as the runner sees it (:class:`shadow.gateway.Gateway`): a shadow
    session's tools URL for each agent request, and, once the agent has answered, the
    decision with the writes captured through it as its actions (the session closed)."""

    def shadow_tools_url(self, event: WorkEvent) -> str | None: ...

    def settle(self, event: WorkEvent, decision: ShadowDecision) -> ShadowDecision: ...


class AgentRunner:
    """Turns work events into shadow decisions through one transport.

    At most ``concurrency`` agent calls are in flight across all callers. ``close`` stops new
    calls (``decide`` then raises :class:`AgentError`: a closed runner is a programming error,
    not an agent failure to be counted), waits for calls in flight (each bounded by the
    transport's timeout) and closes the transport. It is idempotent.
    """

    def __init__(
        self,
        transport: AgentTransport,
        *,
        concurrency: int = 8,
        retries: int = 2,
        backoff: float = 0.2,
        breaker: CircuitBreaker | None = None,
        default_version: str = "unknown",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tools: ToolSessions | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"agent concurrency must be at least 1, got {concurrency}")
        if retries < 0:
            raise ConfigError(f"agent retries must be 0 or more, got {retries}")
        if backoff < 0:
            raise ConfigError(f"agent backoff must be 0 seconds or more, got {backoff}")
        self.transport = transport
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.default_version = default_version
        self._breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        self._clock = clock
        self._sleep = sleep
        # The tool gateway (shadow.gateway): each attempt's shadow session, opened for its
        # request (``tools_url``, and ``X-Shadow-Tools-Url`` over HTTP) and closed by this
        # runner as soon as the agent has answered, the writes captured through it becoming
        # the decision's actions. The runner owns the session from open to close.
        self._tools = tools
        # Each settled decision is the case's ``invoke_agent`` span (shadow.tracing).
        self._tracer = tracer
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_version: str | None = None
        self._closing = False
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Agent calls running now (retries and backoff included)."""
        return self._in_flight

    @property
    def saturated(self) -> bool:
        return self._in_flight >= self.concurrency

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def batches(self) -> bool:
        """True when :meth:`decide_batch` is the cheaper path (an in-process agent)."""
        return isinstance(self.transport, CallableAgent)

    @property
    def version(self) -> str:
        """The version failed decisions are recorded under right now."""
        return self._last_version or self.default_version

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        await self._idle.wait()
        if not self._closed:
            self._closed = True
            await self.transport.close()

    def _check_open(self) -> None:
        if self._closing:
            raise AgentError("agent runner is closed")

    async def decide_many(self, events: Sequence[WorkEvent]) -> list[ShadowDecision]:
        """Decisions in the order of ``events``; calls share the runner's concurrency limit."""
        self._check_open()
        tasks = [asyncio.ensure_future(self.decide(e)) for e in events]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def decide_batch(
        self,
        events: Sequence[WorkEvent],
        *,
        done: Callable[[int, ShadowDecision], None] | None = None,
        stop: Callable[[], bool] | None = None,
        handover: bool = False,
    ) -> list[ShadowDecision | None]:
        """Decisions for ``events``, in order: the verdicts :meth:`decide` gives, with far
        less work per call for in-process agents (replay's batches).

        ``done(i, d)`` runs for each decision as it is settled, so a caller that cancels the
        batch still gets every answer already made. Events not started because ``stop()``
        turned true (or the runner is closing) stay ``None``.

        Any transport but :class:`CallableAgent` (HTTP): ``concurrency`` workers call
        :meth:`decide`, unchanged.

        :class:`CallableAgent`: the agent still gets a fresh JSON copy of each request and
        its answer is still copied through JSON and validated, but per batch:

        - the requests are copied in one JSON round trip; with ``handover=True`` the caller
          declares the events' payloads its own to give away (objects it never reads again,
          e.g. freshly parsed), and they are passed without a copy;
        - *async* callables are awaited by ``concurrency`` workers holding one of the
          runner's slots each for the batch, every call under its own timeout; *sync* ones
          run in ``concurrency`` contiguous chunks, one worker-thread hop per chunk instead
          of one per call (a sync call that overruns the timeout cannot be interrupted: it is
          waited for, then counted as a timeout);
        - the answers are copied in one JSON round trip and validated in event order;
        - the breaker is asked once before the batch (open: every event is rejected without
          a call); during the batch, calling stops after the failures in a row
          (exceptions, timeouts, non-dict answers) that would open it, and the rest are
          rejected; then the breaker learns every result in event order, so afterwards it
          is in the state :meth:`decide` would have left it in. Answers that fail
          validation count as failures then, not while the batch runs.

        Retries never apply to in-process agents (their failures are not transport errors).
        """
        self._check_open()
        out: list[ShadowDecision | None] = [None] * len(events)

        def deliver(i: int, d: ShadowDecision) -> None:
            out[i] = d
            if done is not None:
                done(i, d)

        halted = stop if stop is not None else _never
        width = min(self.concurrency, len(events))
        if not width:
            return out
        t = self.transport
        if not isinstance(t, CallableAgent):
            todo = iter(range(len(events)))

            async def worker() -> None:
                for i in todo:
                    if halted() or self._closing:
                        return
                    deliver(i, await self.decide(events[i]))

            await asyncio.gather(*(worker() for _ in range(width)))
            return out
        if not self._breaker.allow():
            for i, e in enumerate(events):
                deliver(i, self._rejected(e))
            return out
        requests = [self._request(e) for e in events]
        fresh = requests if handover else t.fresh_copies(requests)
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._inproc(t, events, fresh, deliver, halted, width)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        return out

    async def _inproc(
        self,
        t: CallableAgent,
        events: Sequence[WorkEvent],
        fresh: list[Any],
        deliver: Callable[[int, ShadowDecision], None],
        halted: Callable[[], bool],
        width: int,
    ) -> None:
        n = len(events)
        budget = max(1, self._breaker.failure_threshold - self._breaker.failures)
        results: list[tuple[object, float, float] | None] = [None] * n
        quit_ = [False]
        in_a_row = [0]
        clock = self._clock

        def keep(i: int, res: object, start: float) -> None:
            results[i] = (res, start, clock())
            if isinstance(res, AgentError) or not (
                isinstance(res, Mapping) or inspect.isawaitable(res)
            ):
                in_a_row[0] += 1
                if in_a_row[0] >= budget:
                    quit_[0] = True
            else:
                in_a_row[0] = 0

        async def worker(todo: Iterator[int]) -> None:
            async with self._slots:
                for i in todo:
                    if quit_[0] or halted() or self._closing:
                        return
                    start = clock()
                    f = fresh[i]
                    try:
                        if isinstance(f, AgentError):
                            raise f
                        res = await t.invoke_async(f)
                    except AgentError as exc:
                        res = exc
                    keep(i, res, start)

        def chunk(lo: int, hi: int) -> None:  # on a worker thread
            for i in range(lo, hi):
                if quit_[0] or halted() or self._closing:
                    return
                start = clock()
                f = fresh[i]
                try:
                    if isinstance(f, AgentError):
                        raise f
                    res = t.invoke_sync(f)
                except AgentError as exc:
                    res = exc
                keep(i, res, start)

        interrupted = False
        try:
            if t.is_async:
                todo = iter(range(n))
                await asyncio.gather(*(worker(todo) for _ in range(width)))
            else:
                size = -(-n // width)
                await asyncio.gather(
                    *(asyncio.to_thread(chunk, lo, min(lo + size, n)) for lo in range(0, n, size))
                )
        except BaseException:
            interrupted = True
            raise
        finally:
            quit_[0] = True  # threads stop after the call they are in
            stopped = interrupted or halted() or self._closing
            await self._settle_all(t, events, results, deliver, stopped)

    async def _settle_all(
        self,
        t: CallableAgent,
        events: Sequence[WorkEvent],
        results: list[tuple[object, float, float] | None],
        deliver: Callable[[int, ShadowDecision], None],
        stopped: bool,
    ) -> None:
        answers = t.answers([r[0] if r is not None else None for r in results])
        for i, got in enumerate(results):
            if got is None:
                if not stopped:  # calling stopped at the breaker's threshold
                    deliver(i, self._rejected(events[i]))
                continue
            res, start, end = got
            answer = answers[i]
            if inspect.isawaitable(res):  # a sync callable handed back an awaitable
                try:
                    answer = await t.finish(res)
                except AgentError as exc:
                    answer = exc
            reason = str(answer) if isinstance(answer, AgentError) else ""
            ok = None if isinstance(answer, AgentError) else answer
            deliver(i, self._settle(events[i], ok, reason, (end - start) * 1000.0))

    async def decide(self, event: WorkEvent, *, repeat: int | None = None) -> ShadowDecision:
        """The agent's decision for ``event``, or a failed one saying why; never raises for
        an agent problem. ``repeat``: the try number of a repeated case (shadow.noise), sent
        as the request's ``repeat`` (``X-Shadow-Repeat`` over HTTP); its tool calls go
        through a shadow session of its own like any case's, and it is not traced."""
        self._check_open()
        if self._breaker.state == "open":  # reject without queueing for a slot
            return self._rejected(event)
        async with self._slots:
            self._check_open()
            if not self._breaker.allow():
                return self._rejected(event)
            self._in_flight += 1
            self._idle.clear()
            try:
                return await self._call(event, repeat)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

    def _rejected(self, event: WorkEvent) -> ShadowDecision:
        b = self._breaker
        if b.state == "half_open":
            when = "a trial call is in flight"
        else:
            when = f"retrying after {b.retry_after:.1f} s"
        times = "time" if b.failures == 1 else "times"
        reason = f"circuit open: agent failed {b.failures} {times} in a row; {when}"
        return ShadowDecision.failed(event.event_id, self.version, reason, latency_ms=None)

    def _request(self, event: WorkEvent, repeat: int | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {
            "event_id": event.event_id,
            "task_type": event.task_type,
            "payload": event.payload,
            "shadow": True,
        }
        if repeat is not None:
            request["repeat"] = repeat
        if self._tools is not None:
            url = self._tools.shadow_tools_url(event)
            if url is not None:
                request["tools_url"] = url
        return request

    async def _call(self, event: WorkEvent, repeat: int | None = None) -> ShadowDecision:
        start = self._clock()
        answer: Mapping[str, Any] | None = None
        reason = ""
        for attempt in range(self.retries + 1):
            # A fresh request each attempt: with a tool gateway, a new shadow session, so the
            # writes an abandoned attempt made through its tools URL are not the case's.
            request = self._request(event, repeat)
            try:
                answer = await self.transport.call(request)
                break
            except AgentError as exc:
                reason = str(exc)
                if not exc.retriable:
                    break
                if attempt == self.retries or self._breaker.state == "open":
                    tries = attempt + 1
                    reason = f"{reason} (after {tries} attempt{'s' if tries > 1 else ''})"
                    break
            except Exception as exc:  # a third-party transport that broke its contract
                reason = f"agent transport raised {describe(exc)}"
                break
            await self._sleep(self.backoff * 2**attempt)
        ms = (self._clock() - start) * 1000.0
        return self._settle(event, answer, reason, ms, traced=repeat is None)

    def _settle(
        self,
        event: WorkEvent,
        answer: Mapping[str, Any] | None,
        reason: str,
        latency_ms: float,
        *,
        traced: bool = True,
    ) -> ShadowDecision:
        """The decision for an answer (validated) or a failure; the breaker learns which;
        the case's tool session closes here (its captured writes are the actions), and the
        call becomes the case's ``invoke_agent`` span."""
        decision = self._decision(event, answer, reason, latency_ms)
        if self._tools is not None:
            decision = self._tools.settle(event, decision)
        if traced:
            self._tracer.agent_called(event, decision)
        return decision

    def _decision(
        self, event: WorkEvent, answer: Mapping[str, Any] | None, reason: str, latency_ms: float
    ) -> ShadowDecision:
        if answer is not None:
            try:
                decision = ShadowDecision.from_agent_response(
                    event.event_id, answer, default_version=self.version, latency_ms=latency_ms
                )
            except ValidationError as exc:
                reason = f"invalid agent answer: {exc}"
            else:
                self._last_version = decision.agent_version
                self._breaker.record_success()
                return decision
        self._breaker.record_failure()
        return ShadowDecision.failed(event.event_id, self.version, reason, latency_ms=latency_ms)
