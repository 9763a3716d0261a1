"""Calling the agent in shadow mode: transports, retries, a circuit breaker, bounded concurrency.

The contract (DESIGN.md, "Agent call (HTTP)"): the runner sends each (already redacted)
work event as ``{"event_id", "task_type", "payload", "shadow": true}``; over HTTP as a
``POST`` with ``Content-Type: application/json``, ``X-Shadow-Mode: true`` and
``X-Shadow-Event-Id: <event_id>``. The answer's ``decision`` is required; ``actions``,
``confidence``, ``agent_version`` and ``usage`` are optional. Proposed actions are recorded in
the :class:`~shadow.model.ShadowDecision`, never forwarded or executed.

:meth:`AgentRunner.decide` never raises for an agent problem. Every failure becomes
``ShadowDecision.failed`` with a reason a person can act on (``HTTP 503: <body>``,
``timeout after 5.0 s``, ``invalid JSON: ...``, ``invalid agent answer: decision: required...``,
``connection failed after 3 attempts: ...``, ``agent raised ValueError: ...``,
``circuit open: ...``), which the pipeline compares as ``agent_error``.

Knobs (``Settings.agent_*`` and ``breaker_*`` feed them):

``timeout``
    Seconds for one attempt, body included (HTTP and callables alike). A timeout is never
    retried: a slow agent must not get more load.
``max_response_bytes``
    Largest answer accepted (after decompression); a bigger one is a failed decision.
``concurrency``
    Agent calls in flight at once, across every caller of one runner (one semaphore).
    Callers beyond it wait, which is the backpressure sources feel.
``retries``, ``backoff``
    Extra attempts after a *transport* error (``AgentError.retriable``: connection refused or
    reset, DNS, server disconnected), sleeping ``backoff * 2**attempt`` between them. Safe
    because shadow calls have no side effects. HTTP errors, timeouts and bad answers are not
    retried. Retries stop early when the breaker opens meanwhile.
``failure_threshold``, ``reset_after``
    The :class:`CircuitBreaker`: after that many failed decisions in a row, calls are
    rejected at once (no agent call, ``latency_ms=None``) for ``reset_after`` seconds, then
    one trial call decides whether to close again.
``default_version``
    ``agent_version`` of failed decisions before any valid answer named a version; after
    that, the last version seen is used, so errors count against the version that made them.
``clock``, ``sleep``
    Injected monotonic clock (seconds) and sleep, for latency, breaker and backoff.

Errors: transports raise :class:`~shadow.errors.AgentError` (aiohttp's exceptions are
translated in :class:`HttpAgent`); bad specs and knobs raise
:class:`~shadow.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import aiohttp
from yarl import URL

from shadow.errors import AgentError, ConfigError, ValidationError
from shadow.model import ShadowDecision, WorkEvent

__all__ = [
    "AgentRunner",
    "AgentTransport",
    "CallableAgent",
    "CircuitBreaker",
    "HttpAgent",
    "load_agent",
]

_SNIPPET_CHARS = 200  # of an error body or exception text kept in a failure reason
_SNIPPET_BYTES = 4096


def _clip(text: str) -> str:
    """The first 200 characters, on one line (reasons end up in logs, metrics and the API)."""
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "..."


def _kind(value: object) -> str:
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return type(value).__name__


def _never() -> bool:
    return False


def _check_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ConfigError(f"agent timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class AgentTransport(Protocol):
    """Sends one request dict to the agent and returns its answer object.

    Raises :class:`AgentError` for every failure (``retriable`` only for transport errors).
    ``close`` is idempotent."""

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]: ...

    async def close(self) -> None: ...


# -- HTTP ------------------------------------------------------------------------------------


class HttpAgent:
    """``POST``s requests to an agent URL.

    Owns an ``aiohttp.ClientSession`` (created on first use, closed by :meth:`close`) unless
    ``session`` is passed, which then stays the caller's to close. Redirects are not followed
    (a 3xx is a failed call): shadow traffic goes to the configured agent and nowhere else.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_response_bytes: int = 1_048_576,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"agent URL must be http(s)://host[:port]/path, got {url!r}")
        if max_response_bytes < 1:
            raise ConfigError(f"max_response_bytes must be at least 1, got {max_response_bytes}")
        self.url = url
        self._timeout = _check_timeout(timeout)
        self._max_bytes = max_response_bytes
        self._session = session
        self._owns_session = session is None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise AgentError("agent client is closed")
        if self._session is None:
            # No connector limit: the runner's semaphore is the one bound on calls in flight,
            # and a second queue here would eat into each call's timeout.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            body = json.dumps(dict(request), separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise AgentError(f"request is not JSON: {exc}") from None
        headers = {
            "Content-Type": "application/json",
            "X-Shadow-Mode": "true",
            "X-Shadow-Event-Id": str(request.get("event_id", "")),
        }
        session = self._client()
        try:
            async with session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as resp:
                if not 200 <= resp.status < 300:
                    snippet = await resp.content.read(_SNIPPET_BYTES)
                    text = _clip(snippet.decode("utf-8", "replace")) or resp.reason
                    raise AgentError(
                        f"HTTP {resp.status}: {text}" if text else f"HTTP {resp.status}"
                    )
                raw = await self._read_limited(resp)
        # Order matters: aiohttp's ServerTimeoutError is both a TimeoutError and a
        # ClientConnectionError, and a timeout must never be retried.
        except TimeoutError:
            raise AgentError(f"timeout after {self._timeout} s") from None
        except aiohttp.ClientConnectionError as exc:
            raise AgentError(f"connection failed: {_clip(str(exc))}", retriable=True) from None
        except aiohttp.ClientError as exc:
            raise AgentError(f"{type(exc).__name__}: {_clip(str(exc))}") from None
        return _parse_answer(raw)

    async def _read_limited(self, resp: aiohttp.ClientResponse) -> bytes:
        too_big = f"response larger than the limit of {self._max_bytes} bytes"
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            raise AgentError(too_big)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65_536):
            size += len(chunk)
            if size > self._max_bytes:
                raise AgentError(too_big)
            chunks.append(chunk)
        return b"".join(chunks)


def _parse_answer(raw: bytes) -> Mapping[str, Any]:
    if not raw.strip():
        raise AgentError("invalid JSON: empty body")
    try:
        value = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise AgentError(f"invalid JSON: {_clip(str(exc))}") from None
    except RecursionError:
        raise AgentError("invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise AgentError(f"answer is {_kind(value)}, expected a JSON object")
    return value


# -- Python callables ------------------------------------------------------------------------


class CallableAgent:
    """An in-process agent named ``package.module:callable`` (dotted attributes allowed).

    It receives a fresh JSON copy of the request dict and returns the answer dict, which is
    copied through JSON too (so it must be JSON-serialisable, and neither side can mutate
    the other's data). Async callables are awaited; sync ones run in a worker thread
    (``asyncio.to_thread``). ``timeout`` applies to both; a sync agent that overruns cannot be
    interrupted, so its thread runs on until it returns, but the runner stops waiting.
    :meth:`AgentRunner.decide_batch` runs the same steps (:meth:`fresh_copies`,
    :meth:`invoke_async` / :meth:`invoke_sync`, :meth:`answers`) a batch at a time.
    """

    def __init__(self, spec: str, *, timeout: float) -> None:
        self.spec = spec
        self._fn = _resolve(spec)
        self._is_async = inspect.iscoroutinefunction(self._fn) or inspect.iscoroutinefunction(
            type(self._fn).__call__  # an instance with an async __call__
        )
        self._timeout = _check_timeout(timeout)
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True

    @property
    def is_async(self) -> bool:
        return self._is_async

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        fresh = self.fresh_copies([request])[0]
        if isinstance(fresh, AgentError):
            raise fresh
        return await self.invoke(fresh)

    def fresh_copies(self, requests: Sequence[Mapping[str, Any]]) -> list[Any]:
        """A fresh JSON copy of each request (one JSON round trip for the whole list), or the
        :class:`AgentError` saying why that request is not JSON."""
        if self._closed:
            raise AgentError("agent is closed")
        try:
            copies: list[Any] = json.loads(_REQUEST_JSON.encode([dict(r) for r in requests]))
        except (TypeError, ValueError):
            copies = []
            for r in requests:  # find which ones are not JSON
                try:
                    copies.append(json.loads(_REQUEST_JSON.encode(dict(r))))
                except (TypeError, ValueError) as exc:
                    copies.append(AgentError(f"request is not JSON: {exc}"))
        return copies

    async def invoke(self, fresh: dict[str, Any]) -> Mapping[str, Any]:
        """Call the agent with a request it may keep or mutate (a fresh copy)."""
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                if self._is_async:
                    result = await self._fn(fresh)
                else:
                    result = await asyncio.to_thread(self._fn, fresh)
                    if inspect.isawaitable(result):
                        result = await result
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise AgentError(f"timeout after {self._timeout} s") from None
            raise _raised(exc) from None
        return self.answer(result)

    async def invoke_async(self, fresh: dict[str, Any]) -> object:
        """Await an async agent under the timeout; what it returned, unchecked.

        The coroutine is stepped once right away: an agent that answers without waiting on
        anything (nothing a timeout could interrupt) needs no timer. One that waits runs on
        under a deadline counted from the start of the call."""
        start = asyncio.get_running_loop().time()
        coro = self._fn(fresh)
        try:
            first = coro.send(None)
        except StopIteration as done:
            return done.value
        except Exception as exc:
            raise _raised(exc) from None
        deadline = asyncio.timeout_at(start + self._timeout)
        try:
            async with deadline:
                return await _Resumed(coro, first)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise AgentError(f"timeout after {self._timeout} s") from None
            raise _raised(exc) from None

    def answers(self, results: Sequence[object]) -> list[Any]:
        """:meth:`answer` for many results with one JSON round trip: a checked copy of each
        dict, the :class:`AgentError` saying why not, or ``None`` for ``None``, an
        :class:`AgentError` (passed through) or an awaitable (see :meth:`finish`)."""
        out: list[Any] = [None] * len(results)
        dicts: list[int] = []
        maps: list[dict[str, Any]] = []
        for i, r in enumerate(results):
            if r is None or inspect.isawaitable(r):
                continue
            if isinstance(r, AgentError):
                out[i] = r
            elif not isinstance(r, Mapping):
                out[i] = AgentError(f"agent returned {_kind(r)}, expected a dict")
            else:
                dicts.append(i)
                maps.append(r if type(r) is dict else dict(r))
        try:
            copies = json.loads(json.dumps(maps))
        except (TypeError, ValueError, RecursionError):
            for i in dicts:  # find which ones are not JSON
                try:
                    out[i] = self.answer(results[i])
                except AgentError as exc:
                    out[i] = exc
                except RecursionError as exc:
                    out[i] = AgentError(f"agent transport raised RecursionError: {exc}")
            return out
        for i, copy in zip(dicts, copies, strict=True):
            out[i] = copy
        return out

    def invoke_sync(self, fresh: dict[str, Any]) -> object:
        """Call a sync agent on the current (worker) thread; see
        :meth:`AgentRunner.decide_batch`. Returns what it returned, unchecked (an awaitable
        is then awaited by :meth:`finish`). The timeout is checked after the call returns: a
        sync call cannot be interrupted."""
        start = time.monotonic()
        try:
            result = self._fn(fresh)
        except Exception as exc:
            raise _raised(exc) from None
        if not inspect.isawaitable(result) and time.monotonic() - start > self._timeout:
            raise AgentError(f"timeout after {self._timeout} s")
        return result

    async def finish(self, result: object) -> Mapping[str, Any]:
        """:meth:`answer` of a result :meth:`invoke_sync` returned, awaiting it first (under
        the timeout) when the sync callable handed back an awaitable."""
        if inspect.isawaitable(result):
            deadline = asyncio.timeout(self._timeout)
            try:
                async with deadline:
                    result = await result
            except Exception as exc:
                if isinstance(exc, TimeoutError) and deadline.expired():
                    raise AgentError(f"timeout after {self._timeout} s") from None
                raise _raised(exc) from None
        return self.answer(result)

    def answer(self, result: object) -> Mapping[str, Any]:
        """The agent's return value, checked and copied through JSON."""
        if not isinstance(result, Mapping):
            raise AgentError(f"agent returned {_kind(result)}, expected a dict")
        try:
            text = json.dumps(result if type(result) is dict else dict(result))
        except (TypeError, ValueError) as exc:
            raise AgentError(f"agent returned a value that is not JSON: {exc}") from None
        try:
            value: dict[str, Any] = json.loads(text)
        except RecursionError:
            raise AgentError("invalid JSON: nested too deeply") from None
        return value


_REQUEST_JSON = json.JSONEncoder(allow_nan=False)


class _Resumed:
    """Awaits the rest of a coroutine that was stepped once (``yield from`` by hand): what
    it yielded goes to the task driving us, what the task sends or throws goes back."""

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro = coro
        self._next = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._next
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


def _raised(exc: Exception) -> AgentError:
    detail = _clip(str(exc))
    return AgentError(f"agent raised {type(exc).__name__}" + (f": {detail}" if detail else ""))


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, colon, attr = spec.partition(":")
    if (
        not colon
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in attr.split("."))
    ):
        raise ConfigError(f"agent {spec!r} is not module:callable, e.g. mypkg.agents:decide")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                f"agent module {module_name!r} not found; is it installed or on PYTHONPATH?"
            ) from None
        raise ConfigError(f"importing agent module {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise ConfigError(
            f"importing agent module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"agent module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ConfigError(f"agent {spec!r} is not callable (it is {_kind(target)})")
    return target  # type: ignore[no-any-return]


def load_agent(spec: str, *, timeout: float) -> AgentTransport:
    """``http(s)://...`` -> :class:`HttpAgent`; ``pkg.mod:fn`` -> :class:`CallableAgent`."""
    text = spec.strip()
    if text.lower().startswith(("http://", "https://")):
        return HttpAgent(text, timeout=timeout)
    if ":" in text and "://" not in text:
        return CallableAgent(text, timeout=timeout)
    raise ConfigError(f"agent must be an http(s) URL or module:callable, got {spec!r}")


# -- circuit breaker -------------------------------------------------------------------------

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures; open rejects calls for
    ``reset_after`` seconds, then half_open lets ONE trial call through; success closes,
    failure re-opens. Clock injected (callable returning monotonic seconds).

    A trial whose result is never recorded (its caller was cancelled) expires after
    ``reset_after`` seconds, when the next caller gets the trial instead, so the breaker
    cannot stay half-open for ever. A success in any state closes it: the agent answered.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_after < 0:
            raise ConfigError(f"reset_after must be 0 seconds or more, got {reset_after}")
        self.failure_threshold = failure_threshold
        self.reset_after = float(reset_after)
        self._clock = clock
        self._open = False
        self._failures = 0
        self._opened_at = 0.0
        self._trial_at: float | None = None  # when the half-open trial started

    @property
    def state(self) -> BreakerState:
        if not self._open:
            return "closed"
        if self._trial_at is None and self._clock() - self._opened_at < self.reset_after:
            return "open"
        return "half_open"

    @property
    def failures(self) -> int:
        """Consecutive failures recorded since the last success."""
        return self._failures

    @property
    def retry_after(self) -> float:
        """Seconds until a trial call is allowed (0 when closed or already due)."""
        if not self._open:
            return 0.0
        since = self._opened_at if self._trial_at is None else self._trial_at
        return max(0.0, self.reset_after - (self._clock() - since))

    def allow(self) -> bool:
        """May a call go to the agent now? In half_open, True for one trial caller only."""
        if not self._open:
            return True
        now = self._clock()
        since = self._opened_at if self._trial_at is None else self._trial_at
        if now - since < self.reset_after:
            return False
        self._trial_at = now
        return True

    def record_success(self) -> None:
        self._open = False
        self._failures = 0
        self._trial_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._trial_at is not None or (
            not self._open and self._failures >= self.failure_threshold
        ):
            self._open = True
            self._opened_at = self._clock()
            self._trial_at = None
        # A late failure while open (a call that started before it opened) is counted but
        # does not push the trial further out.


# -- runner ----------------------------------------------------------------------------------


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

    async def decide(self, event: WorkEvent) -> ShadowDecision:
        """The agent's decision for ``event``, or a failed one saying why; never raises for
        an agent problem."""
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
                return await self._call(event)
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

    @staticmethod
    def _request(event: WorkEvent) -> dict[str, Any]:
        return {
            "event_id": event.event_id,
            "task_type": event.task_type,
            "payload": event.payload,
            "shadow": True,
        }

    async def _call(self, event: WorkEvent) -> ShadowDecision:
        request = self._request(event)
        start = self._clock()
        answer: Mapping[str, Any] | None = None
        reason = ""
        for attempt in range(self.retries + 1):
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
                reason = f"agent transport raised {type(exc).__name__}: {_clip(str(exc))}"
                break
            await self._sleep(self.backoff * 2**attempt)
        return self._settle(event, answer, reason, (self._clock() - start) * 1000.0)

    def _settle(
        self, event: WorkEvent, answer: Mapping[str, Any] | None, reason: str, latency_ms: float
    ) -> ShadowDecision:
        """The decision for an answer (validated) or a failure; the breaker learns which."""
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
