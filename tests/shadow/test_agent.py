"""The agent runner against real aiohttp servers on loopback (no mocks of aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shadow.agent import (
    AgentRunner,
    AgentTransport,
    CallableAgent,
    CircuitBreaker,
    HttpAgent,
    load_agent,
)
from shadow.errors import AgentError, ConfigError
from shadow.model import Action, Usage, WorkEvent

EVENT = WorkEvent("r-1029", "refund_request", {"amount": 42.5, "customer": {"tier": "gold"}})
ANSWER: dict[str, Any] = {
    "decision": {"action": "approve", "amount": 42.5},
    "actions": [{"tool": "issue_refund", "args": {"amount": 42.5}}],
    "confidence": 0.93,
    "agent_version": "refund-agent@7",
    "usage": {"input_tokens": 812, "output_tokens": 64, "cost_usd": 0.0021},
}


def event(i: int) -> WorkEvent:
    return WorkEvent(f"e{i}", "refund_request", {"amount": i})


class Clock:
    """Monotonic seconds that only move when a test (or the fake sleep) moves them."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# -- a real agent server, started and torn down by a fixture factory ------------------------

Handler = Callable[["AgentServer", web.Request], Awaitable[web.StreamResponse]]


class AgentServer:
    """Counts and records every request server-side and tracks concurrent requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.url = ""
        self.bodies: list[bytes] = []
        self.headers: list[Mapping[str, str]] = []
        self.active = 0
        self.max_active = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()  # slow handlers wait on this; set at teardown

    @property
    def count(self) -> int:
        return len(self.bodies)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            return await self.handler(self, request)
        finally:
            self.active -= 1


ServeFactory = Callable[[Handler], Awaitable[AgentServer]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFactory]:
    """``await serve(handler)`` starts a real aiohttp agent on 127.0.0.1; all stop after."""
    started: list[tuple[AgentServer, web.AppRunner]] = []

    async def start(handler: Handler) -> AgentServer:
        server = AgentServer(handler)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        started.append((server, runner))
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}/decide"
        return server

    yield start
    for server, runner in started:
        server.release.set()
        await runner.cleanup()


def answer(body: object = ANSWER, status: int = 200) -> Handler:
    async def handler(server: AgentServer, request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return handler


def raw(body: bytes, status: int = 200) -> Handler:
    async def handler(server: AgentServer, request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type="application/json")

    return handler


async def slow(server: AgentServer, request: web.Request) -> web.StreamResponse:
    await asyncio.wait_for(server.release.wait(), 10)
    return web.json_response(ANSWER)


async def chunked_big(server: AgentServer, request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()  # chunked: no Content-Length to reject it up front
    await resp.prepare(request)
    await resp.write(b'{"decision": {"note": "')
    for _ in range(8):
        await resp.write(b"x" * 512)
    await resp.write(b'"}}')
    await resp.write_eof()
    return resp


async def redirect(server: AgentServer, request: web.Request) -> web.StreamResponse:
    if request.path == "/decide":
        raise web.HTTPTemporaryRedirect("/elsewhere")
    return web.json_response(ANSWER)


def drop_first(n: int) -> Handler:
    """Drops the connection (no response) for the first n requests, then answers."""

    async def handler(server: AgentServer, request: web.Request) -> web.StreamResponse:
        if server.count <= n:
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0)
        return web.json_response(ANSWER)

    return handler


def state(breaker: CircuitBreaker) -> str:
    """The state as a plain str, so successive checks are not narrowed away by mypy."""
    return breaker.state


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/decide"


def http_runner(url: str, *, timeout: float = 2.0, **kwargs: Any) -> AgentRunner:
    max_bytes = kwargs.pop("max_response_bytes", 1_048_576)
    return AgentRunner(HttpAgent(url, timeout=timeout, max_response_bytes=max_bytes), **kwargs)


# -- the HTTP contract -----------------------------------------------------------------------


async def test_agent_receives_exact_body_and_shadow_headers(serve: ServeFactory) -> None:
    server = await serve(answer())
    async with http_runner(server.url) as runner:
        await runner.decide(EVENT)
    assert server.count == 1
    assert json.loads(server.bodies[0]) == {
        "event_id": "r-1029",
        "task_type": "refund_request",
        "payload": {"amount": 42.5, "customer": {"tier": "gold"}},
        "shadow": True,
    }
    headers = server.headers[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Shadow-Mode"] == "true"
    assert headers["X-Shadow-Event-Id"] == "r-1029"


async def test_valid_answer_is_parsed_and_actions_only_recorded(serve: ServeFactory) -> None:
    clock = Clock()

    async def timed(server: AgentServer, request: web.Request) -> web.StreamResponse:
        clock.advance(0.25)
        return web.json_response(ANSWER)

    server = await serve(timed)
    async with http_runner(server.url, clock=clock) as runner:
        d = await runner.decide(EVENT)
        assert runner.breaker.state == "closed"
    assert d.error is None
    assert d.event_id == "r-1029"
    assert d.decision == {"action": "approve", "amount": 42.5}
    assert d.actions == (Action("issue_refund", {"amount": 42.5}),)
    assert d.confidence == 0.93
    assert d.agent_version == "refund-agent@7"
    assert d.usage == Usage(812, 64, 0.0021)
    assert d.latency_ms == pytest.approx(250.0)
    assert server.count == 1  # the proposed action went nowhere else


async def test_version_falls_back_to_last_seen_then_default(serve: ServeFactory) -> None:
    replies: list[tuple[int, object]] = [
        (200, {"decision": {"a": 1}}),
        (500, "down"),
        (200, {"decision": {"a": 1}, "agent_version": "a@2"}),
        (200, {"decision": {"a": 1}}),
        (500, "down"),
    ]

    async def scripted(server: AgentServer, request: web.Request) -> web.StreamResponse:
        status, body = replies[server.count - 1]
        return web.json_response(body, status=status)

    server = await serve(scripted)
    async with http_runner(server.url, default_version="boot") as runner:
        versions = [(await runner.decide(event(i))).agent_version for i in range(5)]
    assert versions == ["boot", "boot", "a@2", "a@2", "a@2"]


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (answer({"error": "boom"}, status=500), 'HTTP 500: {"error": "boom"}'),
        (raw(b"no such agent", status=404), "HTTP 404: no such agent"),
        (raw(b"", status=502), "HTTP 502: Bad Gateway"),
        (raw(b"x" * 1000, status=503), "HTTP 503: " + "x" * 200 + "..."),
        (redirect, "HTTP 307: "),
        (raw(b'{"decision": '), "invalid JSON: Expecting value: line 1 column 14"),
        (raw(b""), "invalid JSON: empty body"),
        (answer([{"decision": {}}]), "answer is an array, expected a JSON object"),
        (
            answer({"actions": []}),
            "invalid agent answer: decision: required; expected a JSON object",
        ),
        (
            answer({"decision": "approve", "confidence": 7}),
            "invalid agent answer: decision: expected a JSON object, got a string; "
            "confidence: expected a number in [0.0, 1.0], got 7",
        ),
        (answer({"decision": {"note": "x" * 5000}}), "response larger than the limit of 4096"),
        (chunked_big, "response larger than the limit of 4096 bytes"),
    ],
    ids=[
        "500",
        "404",
        "502-empty",
        "503-long-body",
        "redirect",
        "invalid-json",
        "empty-body",
        "json-array",
        "no-decision",
        "invalid-fields",
        "oversized",
        "oversized-chunked",
    ],
)
async def test_bad_answers_become_failed_decisions_without_retry(
    serve: ServeFactory, handler: Handler, reason: str
) -> None:
    server = await serve(handler)
    clock = Clock()
    async with http_runner(
        server.url, max_response_bytes=4096, retries=2, clock=clock, sleep=clock.sleep
    ) as runner:
        d = await runner.decide(EVENT)
        assert runner.breaker.failures == 1
    assert d.decision is None
    assert d.error is not None
    assert d.error.startswith(reason)
    assert d.agent_version == "unknown"
    assert d.latency_ms is not None
    assert server.count == 1
    assert clock.slept == []


async def test_timeout_is_a_failed_decision_and_never_retried(serve: ServeFactory) -> None:
    server = await serve(slow)
    async with http_runner(server.url, timeout=0.2, retries=3) as runner:
        d = await runner.decide(EVENT)
    assert d.error == "timeout after 0.2 s"
    assert server.count == 1


async def test_connection_refused_is_retried_with_backoff(serve: ServeFactory) -> None:
    clock = Clock()
    runner = http_runner(closed_port_url(), retries=2, backoff=0.2, clock=clock, sleep=clock.sleep)
    async with runner:
        d = await runner.decide(EVENT)
    assert d.error is not None
    assert d.error.startswith("connection failed: Cannot connect to host 127.0.0.1")
    assert d.error.endswith("(after 3 attempts)")
    assert clock.slept == pytest.approx([0.2, 0.4])  # 3 attempts, 2 sleeps
    assert d.latency_ms == pytest.approx(600.0)  # backoff is inside the measured call


async def test_server_disconnect_is_retried_until_an_answer(serve: ServeFactory) -> None:
    server = await serve(drop_first(2))
    clock = Clock()
    async with http_runner(server.url, retries=2, clock=clock, sleep=clock.sleep) as runner:
        d = await runner.decide(EVENT)
    assert d.error is None
    assert d.decision == ANSWER["decision"]
    assert server.count == 3
    assert clock.slept == pytest.approx([0.2, 0.4])


async def test_retries_give_up_after_retries_plus_one_attempts(serve: ServeFactory) -> None:
    server = await serve(drop_first(100))
    clock = Clock()
    async with http_runner(server.url, retries=1, clock=clock, sleep=clock.sleep) as runner:
        d = await runner.decide(EVENT)
    assert d.error is not None
    assert d.error.startswith("connection failed: ")
    assert d.error.endswith("(after 2 attempts)")
    assert server.count == 2


# -- bounded concurrency ---------------------------------------------------------------------


async def test_concurrency_is_bounded_across_all_callers(serve: ServeFactory) -> None:
    async def busy(server: AgentServer, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.03)
        return web.json_response({"decision": json.loads(await request.read())["payload"]})

    server = await serve(busy)
    events = [event(i) for i in range(50)]
    seen_in_flight: list[int] = []
    async with http_runner(server.url, concurrency=4) as runner:

        async def watch() -> None:
            while True:
                seen_in_flight.append(runner.in_flight)
                if runner.saturated:
                    seen_in_flight.append(-1)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        batches, singles = await asyncio.gather(
            asyncio.gather(
                *(runner.decide_many(events[a:b]) for a, b in ((0, 15), (15, 30), (30, 40)))
            ),
            asyncio.gather(*(runner.decide(e) for e in events[40:])),
        )
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        assert runner.in_flight == 0
    results = [d for batch in batches for d in batch] + singles
    assert [d.event_id for d in results] == [e.event_id for e in events]  # input order kept
    assert [d.decision for d in results] == [e.payload for e in events]
    assert server.count == 50
    assert server.max_active == 4
    assert max(seen_in_flight) == 4
    assert -1 in seen_in_flight  # saturated was observed


async def test_decide_many_of_nothing_is_empty(serve: ServeFactory) -> None:
    server = await serve(answer())
    async with http_runner(server.url) as runner:
        assert await runner.decide_many([]) == []
    assert server.count == 0


# -- circuit breaker -------------------------------------------------------------------------


async def test_breaker_opens_rejects_without_calls_and_recovers(serve: ServeFactory) -> None:
    healthy = False

    async def flaky(server: AgentServer, request: web.Request) -> web.StreamResponse:
        if healthy:
            return web.json_response(ANSWER)
        return web.Response(status=500, text="down")

    server = await serve(flaky)
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after=10.0, clock=clock)
    async with http_runner(server.url, retries=0, breaker=breaker, clock=clock) as runner:
        for i in range(3):
            assert (await runner.decide(event(i))).error == "HTTP 500: down"
        assert state(breaker) == "open"

        rejected = await runner.decide(event(3))
        assert rejected.error == (
            "circuit open: agent failed 3 times in a row; retrying after 10.0 s"
        )
        assert rejected.latency_ms is None
        clock.advance(4)
        rejected = await runner.decide(event(4))
        assert rejected.error is not None
        assert rejected.error.endswith("retrying after 6.0 s")
        assert server.count == 3  # no calls while open

        clock.advance(6)
        assert state(breaker) == "half_open"
        assert (await runner.decide(event(5))).error == "HTTP 500: down"  # the trial fails
        assert state(breaker) == "open"
        assert (await runner.decide(event(6))).error is not None
        assert server.count == 4

        clock.advance(10)
        healthy = True
        assert (await runner.decide(event(7))).error is None  # the trial succeeds
        assert state(breaker) == "closed"
        assert breaker.failures == 0
        assert (await runner.decide(event(8))).error is None
        assert server.count == 6


async def test_half_open_lets_exactly_one_trial_through(serve: ServeFactory) -> None:
    server = await serve(slow)
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after=5.0, clock=clock)
    breaker.record_failure()
    clock.advance(5)
    async with http_runner(server.url, breaker=breaker, clock=clock) as runner:
        trial = asyncio.create_task(runner.decide(event(1)))
        await server.entered.wait()
        other = await runner.decide(event(2))
        assert other.error == (
            "circuit open: agent failed 1 time in a row; a trial call is in flight"
        )
        server.release.set()
        assert (await trial).error is None
    assert state(breaker) == "closed"
    assert server.count == 1


def test_breaker_counts_consecutive_failures_only() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after=1.0, clock=clock)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert breaker.retry_after == 1.0


def test_breaker_abandoned_trial_expires() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after=2.0, clock=clock)
    breaker.record_failure()
    clock.advance(2)
    assert breaker.allow()  # the trial
    assert not breaker.allow()
    assert state(breaker) == "half_open"
    clock.advance(2)  # its caller never reported back
    assert breaker.allow()


def test_breaker_and_runner_reject_bad_knobs() -> None:
    with pytest.raises(ConfigError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ConfigError, match="reset_after"):
        CircuitBreaker(reset_after=-1)
    agent = CallableAgent("tests.shadow.test_agent:sync_agent", timeout=1)
    with pytest.raises(ConfigError, match="concurrency"):
        AgentRunner(agent, concurrency=0)
    with pytest.raises(ConfigError, match="retries"):
        AgentRunner(agent, retries=-1)
    with pytest.raises(ConfigError, match="timeout"):
        HttpAgent("http://127.0.0.1/x", timeout=0)


# -- Python callables ------------------------------------------------------------------------

NOT_CALLABLE = 42
SLOW_SYNC_RELEASE = threading.Event()
MUTATED_SAW: list[dict[str, Any]] = []


def sync_agent(request: dict[str, Any]) -> dict[str, Any]:
    assert threading.current_thread() is not threading.main_thread()
    amount = request["payload"]["amount"]
    return {"decision": {"action": "approve", "amount": amount}, "agent_version": "py-sync@1"}


async def async_agent(request: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {**ANSWER, "agent_version": "py-async@1", "decision": {"id": request["event_id"]}}


class AsyncAgentObject:
    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"decision": {"shadow": request["shadow"]}}


async_object = AsyncAgentObject()


def raising_agent(request: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("amount missing")


def bare_raising_agent(request: dict[str, Any]) -> dict[str, Any]:
    raise KeyError


def own_timeout_agent(request: dict[str, Any]) -> dict[str, Any]:
    raise TimeoutError("upstream LLM timed out")


def mutating_agent(request: dict[str, Any]) -> dict[str, Any]:
    MUTATED_SAW.append(json.loads(json.dumps(request)))
    request["payload"].clear()
    request["shadow"] = False
    return {"decision": {"action": "approve"}}


def slow_sync_agent(request: dict[str, Any]) -> dict[str, Any]:
    SLOW_SYNC_RELEASE.wait(10)
    return {"decision": {}}


async def slow_async_agent(request: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(10)
    return {"decision": {}}


def list_agent(request: dict[str, Any]) -> list[int]:
    return [1, 2]


def not_json_agent(request: dict[str, Any]) -> dict[str, Any]:
    return {"decision": {"at": datetime(2026, 1, 1, tzinfo=UTC)}}


def callable_runner(name: str, *, timeout: float = 2.0, **kwargs: Any) -> AgentRunner:
    return AgentRunner(CallableAgent(f"tests.shadow.test_agent:{name}", timeout=timeout), **kwargs)


async def test_sync_callable_runs_in_a_thread() -> None:
    async with callable_runner("sync_agent") as runner:
        d = await runner.decide(EVENT)
    assert d.error is None
    assert d.decision == {"action": "approve", "amount": 42.5}
    assert d.agent_version == "py-sync@1"


@pytest.mark.parametrize("name", ["async_agent", "async_object"])
async def test_async_callables_are_awaited(name: str) -> None:
    async with callable_runner(name) as runner:
        d = await runner.decide(EVENT)
    assert d.error is None
    assert d.decision in ({"id": "r-1029"}, {"shadow": True})


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("raising_agent", "agent raised ValueError: amount missing"),
        ("bare_raising_agent", "agent raised KeyError"),
        ("own_timeout_agent", "agent raised TimeoutError: upstream LLM timed out"),
        ("list_agent", "agent returned an array, expected a dict"),
        ("not_json_agent", "agent returned a value that is not JSON: Object of type datetime"),
        ("slow_async_agent", "timeout after 0.1 s"),
    ],
)
async def test_callable_failures_become_failed_decisions(name: str, reason: str) -> None:
    clock = Clock()
    async with callable_runner(name, timeout=0.1, clock=clock, sleep=clock.sleep) as runner:
        d = await runner.decide(EVENT)
    assert d.error is not None
    assert d.error.startswith(reason)
    assert clock.slept == []  # never retried


async def test_slow_sync_callable_times_out() -> None:
    SLOW_SYNC_RELEASE.clear()
    try:
        async with callable_runner("slow_sync_agent", timeout=0.1) as runner:
            d = await runner.decide(EVENT)
    finally:
        SLOW_SYNC_RELEASE.set()  # let the worker thread finish
    assert d.error == "timeout after 0.1 s"


async def test_callable_gets_a_fresh_copy_and_cannot_corrupt_the_event() -> None:
    MUTATED_SAW.clear()
    payload_before = json.loads(json.dumps(EVENT.payload))
    async with callable_runner("mutating_agent") as runner:
        first, second = await runner.decide_many([EVENT, EVENT])
    assert first.error is None
    assert second.error is None
    assert EVENT.payload == payload_before
    expected = {**EVENT.to_json(), "shadow": True}
    assert [expected, expected] == MUTATED_SAW


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.shadow.no_such_module:decide", "agent module 'tests.shadow.no_such_module' not"),
        ("tests.shadow.test_agent:missing", "has no attribute 'missing'"),
        ("tests.shadow.test_agent:NOT_CALLABLE", "is not callable (it is int)"),
        ("tests.shadow.test_agent", "is not module:callable"),
        ("tests.shadow.test_agent:", "is not module:callable"),
        (":sync_agent", "is not module:callable"),
    ],
)
def test_bad_callable_specs_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        CallableAgent(spec, timeout=1)
    assert message in str(info.value)


# -- load_agent, close -----------------------------------------------------------------------


async def test_load_agent_dispatches_on_the_spec() -> None:
    for url in ("http://127.0.0.1:8080/decide", "HTTPS://agent.internal/v1/decide"):
        agent = load_agent(url, timeout=1)
        assert isinstance(agent, HttpAgent)
        await agent.close()
    agent = load_agent("tests.shadow.test_agent:sync_agent", timeout=1)
    assert isinstance(agent, CallableAgent)
    assert await agent.call({"event_id": "e", "payload": {"amount": 1}}) == {
        "decision": {"action": "approve", "amount": 1},
        "agent_version": "py-sync@1",
    }


@pytest.mark.parametrize("spec", ["ftp://agent/decide", "agent", "", "grpc://agent:1"])
def test_load_agent_rejects_other_specs(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(spec, timeout=1)
    assert str(info.value) == f"agent must be an http(s) URL or module:callable, got {spec!r}"


def test_http_agent_needs_a_host() -> None:
    with pytest.raises(ConfigError, match="agent URL must be"):
        load_agent("http://", timeout=1)


async def test_http_agent_close_is_idempotent_and_final(serve: ServeFactory) -> None:
    server = await serve(answer())
    agent = HttpAgent(server.url, timeout=2)
    assert (await agent.call({"event_id": "e1"}))["agent_version"] == "refund-agent@7"
    await agent.close()
    await agent.close()
    with pytest.raises(AgentError, match="closed") as info:
        await agent.call({"event_id": "e2"})
    assert not info.value.retriable
    assert server.count == 1


async def test_http_agent_leaves_a_borrowed_session_open(serve: ServeFactory) -> None:
    server = await serve(answer())
    async with aiohttp.ClientSession() as session:
        async with HttpAgent(server.url, timeout=2, session=session) as agent:
            await agent.call({"event_id": "e1"})
        assert not session.closed


class CountingTransport:
    """A real, in-memory transport that counts closes."""

    def __init__(self) -> None:
        self.closes = 0

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"decision": {"ok": True}}

    async def close(self) -> None:
        self.closes += 1


class BrokenTransport:
    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        raise RuntimeError("bug in a plug-in transport")

    async def close(self) -> None:
        pass


async def test_runner_close_is_idempotent_and_refuses_new_work() -> None:
    transport = CountingTransport()
    runner = AgentRunner(transport)
    assert (await runner.decide(EVENT)).decision == {"ok": True}
    await runner.close()
    await runner.close()
    assert transport.closes == 1
    with pytest.raises(AgentError, match="closed"):
        await runner.decide(EVENT)
    with pytest.raises(AgentError, match="closed"):
        await runner.decide_many([EVENT])


async def test_runner_close_waits_for_calls_in_flight(serve: ServeFactory) -> None:
    server = await serve(slow)
    runner = http_runner(server.url)
    pending = asyncio.create_task(runner.decide(EVENT))
    await server.entered.wait()
    closing = asyncio.create_task(runner.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    server.release.set()
    assert (await pending).error is None
    await closing


async def test_a_broken_transport_never_makes_decide_raise() -> None:
    transport: AgentTransport = BrokenTransport()
    async with AgentRunner(transport) as runner:
        d = await runner.decide(EVENT)
    assert d.error == "agent transport raised RuntimeError: bug in a plug-in transport"
