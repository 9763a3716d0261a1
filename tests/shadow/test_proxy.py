"""``shadow proxy``: the host's requests pass through unchanged and matched ones are copied
into the pipeline; a hung store or agent never delays or fails a proxied request.

Everything is real and on loopback: the host app (tests/mirror_host.py), a fake agent, the
sidecar with its DuckDB store and the proxy, served as ``shadow proxy`` serves them. The
store is the real one behind a gate the test can close (``build_app``'s ``open_store``
seam), so "the store is hung" is a fact the test holds, not a timing."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE
from shadow.app import build_app, side_apps
from shadow.errors import ConfigError
from shadow.policy import parse_policy
from shadow.proxy import IDENTITY, refuse_own_address
from shadow.server import Listener
from shadow.sources.mirror import MIRROR
from shadow.store import Store
from tests.conftest import wait_for
from tests.mirror_host import HOST_LOG, POLICY, HostRequest, host_app, traffic
from tests.shadow.conftest import AgentServer, AgentServerFactory, Reply, clean_settings
from tests.shadow.test_cli import assert_usage_error, cli_proc

RESPONSE_RULE = """
  - match: {method: GET, path: "/refunds/{id}"}
    kind: outcome
    event_id: path.id
    decision: {shown: response.body.id, status: response.status}
"""


class GatedStore(Store):
    """The real store, whose writes wait while :attr:`gate` is clear."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def _pass(self) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1

    async def put_events(self, *args: Any, **kwargs: Any) -> Any:
        await self._pass()
        return await super().put_events(*args, **kwargs)

    async def put_outcomes(self, *args: Any, **kwargs: Any) -> Any:
        await self._pass()
        return await super().put_outcomes(*args, **kwargs)

    async def put_dead_letters(self, *args: Any, **kwargs: Any) -> Any:
        await self._pass()
        return await super().put_dead_letters(*args, **kwargs)


@dataclass(eq=False)
class Proxied:
    url: str  # the proxy
    api: str  # the sidecar's API
    host: web.Application
    app: web.Application
    proxy: web.Application
    agent: AgentServer
    agent_gate: asyncio.Event
    session: aiohttp.ClientSession

    @property
    def store(self) -> GatedStore:
        store = self.app[PIPELINE].store
        assert isinstance(store, GatedStore)
        return store

    async def send(self, req: HostRequest) -> tuple[int, Any]:
        method, path, body, headers = req
        async with self.session.request(method, self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def metric(self, name: str, **labels: str) -> float:
        async with self.session.get(self.api + "/metrics") as r:
            text = await r.text()
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0

    async def compared(self) -> int:
        async with self.session.get(self.api + "/v1/agreement") as r:
            doc = await r.json()
        return int(doc["task_types"]["refund_request"]["n"])


ProxiedFactory = Callable[..., Awaitable[Proxied]]


@pytest.fixture
async def proxied(
    tmp_path: Path, agent_server: AgentServerFactory, no_shadow_env: None
) -> AsyncIterator[ProxiedFactory]:
    """``await proxied(policy=..., **settings)``: host, agent, sidecar and proxy, all up."""
    runners: list[web.AppRunner] = []
    listeners: list[Listener] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(
        *, policy: str = POLICY, sock: socket.socket | None = None, **overrides: Any
    ) -> Proxied:
        host = host_app()
        host_runner = web.AppRunner(host, access_log=None, shutdown_timeout=1.0)
        await host_runner.setup()
        runners.append(host_runner)
        await web.TCPSite(host_runner, "127.0.0.1", 0).start()
        upstream = f"http://127.0.0.1:{host_runner.addresses[0][1]}"
        agent_gate = asyncio.Event()
        agent_gate.set()

        async def answer(body: dict[str, Any]) -> Reply:
            await agent_gate.wait()
            return Reply(200, {"decision": {"action": "approve"}, "agent_version": "a@1"})

        agent = await agent_server(answer)
        values = {"agent": agent.url, "proxy_upstream": upstream, "proxy_listen": "127.0.0.1:0"}
        settings = clean_settings(tmp_path, f"proxy{len(listeners)}", **{**values, **overrides})
        app = build_app(
            settings,
            policy=parse_policy(policy),
            registry=CollectorRegistry(),
            open_store=GatedStore,
        )
        main = Listener(app, socket.create_server(("127.0.0.1", 0)), settings, access_log=None)
        listeners.append(await main.start())
        ((_, proxy_app, _),) = side_apps(app)
        sock = sock or socket.create_server(("127.0.0.1", 0))
        side = Listener(proxy_app, sock, settings, access_log=None)
        listeners.append(await side.start())
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Proxied(
            f"http://127.0.0.1:{side.port}",
            f"http://127.0.0.1:{main.port}",
            host,
            app,
            proxy_app,
            agent,
            agent_gate,
            session,
        )

    yield start
    for session in sessions:
        await session.close()
    for listener in reversed(listeners):
        pipeline = listener._app.get(PIPELINE)  # release a gate a test left closed
        if pipeline is not None and isinstance(pipeline.store, GatedStore):
            pipeline.store.gate.set()
        await listener.close()
    for runner in runners:
        await runner.cleanup()


async def test_proxied_traffic_becomes_exact_comparisons_and_a_hung_store_delays_nothing(
    proxied: ProxiedFactory,
) -> None:
    px = await proxied()
    ids = [f"p-{i}" for i in range(30)]
    requests = traffic(ids, seed=11)
    answers = [await px.send(r) for r in requests]
    assert [s for s, _ in answers] == [201 if m == "POST" else 200 for m, *_ in requests]
    assert len(px.host[HOST_LOG].requests) == len(requests)

    async def all_compared() -> bool:
        return await px.compared() == len(ids)

    await wait_for(all_compared, "every proxied case compared")
    await px.app[MIRROR].drained()
    repeated = len(requests) - 2 * len(ids)
    events_sent = sum(1 for m, *_ in requests if m == "POST")
    stored = {"task_type": "refund_request", "source": "proxy"}
    assert await px.metric("shadow_events_total", **stored, result="stored") == len(ids)
    assert await px.metric("shadow_events_total", **stored, result="duplicate") == (
        events_sent - len(ids)
    )
    assert await px.metric("shadow_outcomes_total", source="proxy", result="stored") == len(ids)
    assert repeated > 0
    assert await px.compared() == len(ids)

    # The store hangs (and the agent too): every request completes while the gate is still
    # closed; once it opens, every copy is stored and compared.
    px.store.gate.clear()
    px.agent_gate.clear()
    hung_ids = [f"h-{i}" for i in range(20)]
    hung = traffic(hung_ids, seed=12)
    await px.send(hung[0])  # the consumer takes its copy and waits on the store
    await wait_for(lambda: _holds(px.store), "the store to hold the mirror's write")
    statuses = [s for s, _ in await asyncio.gather(*(px.send(r) for r in hung[1:20]))]
    statuses += [(await px.send(r))[0] for r in hung[20:]]
    assert all(s in (200, 201) for s in statuses)
    assert not px.store.gate.is_set()  # still hung throughout
    assert px.store.waiting > 0
    px.store.gate.set()
    px.agent_gate.set()

    async def hung_compared() -> bool:
        return await px.compared() == len(ids) + len(hung_ids)

    await wait_for(hung_compared, "every case sent while the store hung compared")
    await px.app[MIRROR].drained()
    accepted = 0.0
    for rule in ("POST /refunds", "PUT /refunds/{id}/decision"):
        accepted += await px.metric("shadow_mirror_requests_total", rule=rule, result="accepted")
    assert accepted == len(requests) + len(hung)


async def _holds(store: GatedStore) -> bool:
    return store.waiting > 0


async def test_a_full_queue_drops_copies_never_requests(proxied: ProxiedFactory) -> None:
    px = await proxied(mirror_queue=2)
    px.store.gate.clear()
    requests = traffic([f"q-{i}" for i in range(15)], seed=13, repeat=0)
    await px.send(requests[0])
    await wait_for(lambda: _holds(px.store), "the store to hold the mirror's write")
    statuses = [s for s, _ in await asyncio.gather(*(px.send(r) for r in requests[1:]))]
    assert all(s in (200, 201) for s in statuses)
    dropped = 0.0
    for rule in ("POST /refunds", "PUT /refunds/{id}/decision"):
        dropped += await px.metric("shadow_mirror_requests_total", rule=rule, result="dropped")
    assert dropped == len(requests) - 1 - 2  # one with the store, two queued
    px.store.gate.set()
    await px.app[MIRROR].drained()
    assert await px.store.count("events") + await px.store.count("outcomes") == 3


async def test_answers_pass_through_unchanged_and_stream_both_ways(
    proxied: ProxiedFactory,
) -> None:
    px = await proxied(policy=POLICY + RESPONSE_RULE)
    s = px.session
    async with s.get(
        px.url + "/refunds/x-1?a=1", headers={"Connection": "X-Private", "X-Private": "1"}
    ) as r:
        assert (r.status, r.headers["X-Host"], await r.json()) == (200, "yes", {"id": "x-1"})
    async with s.get(px.url + "/nothing-here") as r:
        assert r.status == 404  # the host's own answer
        assert "json" not in r.headers.get("Content-Type", "")
    async with s.delete(px.url + "/refunds") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"z" * 65536

    async with s.post(px.url + "/upload", data=chunks()) as r:  # 5 MiB, chunked
        assert (await r.json())["bytes"] == 80 * 65536
    async with s.get(px.url + "/download?n=40") as r:  # streamed, no Content-Length
        assert r.headers.get("Content-Length") is None
        assert len(await r.read()) == 40 * 65536
    assert ("GET", "/refunds/x-1") in px.host[HOST_LOG].requests
    # The response rule made an outcome of the host's answer.
    await px.app[MIRROR].drained()
    rule = "GET /refunds/{id}"
    assert await px.metric("shadow_mirror_requests_total", rule=rule, result="accepted") == 1
    assert await px.store.count("outcomes") == 1


async def test_forwarded_headers_and_hop_by_hop_ones(proxied: ProxiedFactory) -> None:
    px = await proxied()
    body = {"refund_id": "f-1"}
    headers = {"X-Forwarded-For": "10.0.0.7", "Connection": "X-Private", "X-Private": "secret"}
    async with px.session.post(px.url + "/refunds", json=body, headers=headers) as r:
        assert r.status == 201
    async with px.session.post(
        px.url + "/refunds", json={"refund_id": "f-2"}, headers={"Via": "1.0 fred"}
    ) as r:
        assert r.status == 201
    got, second = px.host[HOST_LOG].headers
    me = px.proxy[IDENTITY].pseudonym
    assert got["Via"] == f"1.1 {me}"
    assert second["Via"] == f"1.0 fred, 1.1 {me}"
    assert got["X-Forwarded-For"] == "10.0.0.7, 127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http"
    assert "X-Private" not in got
    assert got["Host"] == px.url.removeprefix("http://")


async def test_an_upstream_that_is_down_is_a_502_and_a_copy_of_nothing(
    proxied: ProxiedFactory,
) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{spare.getsockname()[1]}"
    px = await proxied(proxy_upstream=dead)
    async with px.session.post(px.url + "/refunds", json={"refund_id": "d-1"}) as r:
        assert r.status == 502
        assert "upstream" in (await r.json())["error"]
    await px.app[MIRROR].drained()
    accepted = await px.metric(
        "shadow_mirror_requests_total", rule="POST /refunds", result="accepted"
    )
    assert accepted == 0
    assert await px.store.count("events") == 0


async def test_a_body_over_the_limit_is_proxied_and_its_copy_dead_lettered(
    proxied: ProxiedFactory,
) -> None:
    px = await proxied(max_body_bytes=64 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"refund_id": "huge-1", "notes": "'
        for _ in range(8):
            yield b"y" * 32768
        yield b'"}'

    headers = {"Content-Type": "application/json"}
    async with px.session.post(px.url + "/refunds", data=chunks(), headers=headers) as r:
        assert r.status == 201
        assert (await r.json())["bytes"] > 64 * 1024  # the host got all of it
    await px.app[MIRROR].drained()
    rule = "POST /refunds"
    assert await px.metric("shadow_mirror_requests_total", rule=rule, result="too_large") == 1
    (letter,) = await px.store.dead_letters()
    assert (letter["source"], letter["raw"]) == ("proxy", None)
    assert "proxied, not copied" in letter["reason"]


async def test_a_client_that_leaves_mid_body_costs_nothing(proxied: ProxiedFactory) -> None:
    px = await proxied()
    host, port = px.url.removeprefix("http://").split(":")
    for _ in range(3):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /refunds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"refund_id": "gone'
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        del reader
    status, _ = await px.send(("POST", "/refunds", {"refund_id": "after-1"}, {}))
    assert status == 201
    await px.app[MIRROR].drained()
    assert await px.store.count("events") == 1  # only the complete request was copied


# -- the proxy's own answers, against upstreams that misbehave on the wire ----------------------


@dataclass(eq=False)
class RawUpstream:
    url: str
    heads: list[bytes]  # each request's head (request line and headers), as received


RawUpstreamFactory = Callable[[bytes | None], Awaitable[RawUpstream]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstreamFactory]:
    """``await raw_upstream(answer)``: a plain asyncio server on loopback that reads each
    request's head, sends ``answer`` verbatim and hangs up; ``None``: never answers (until
    the test ends)."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()
    done = asyncio.Event()

    async def start(answer: bytes | None) -> RawUpstream:
        heads: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                if answer is None:
                    await done.wait()
                else:
                    writer.write(answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        return RawUpstream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads)

    yield start
    done.set()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.gather(*handlers, return_exceptions=True)


async def _raw_exchange(url: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection to ``url`` and read until the peer closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


async def test_an_upstream_silent_past_the_read_timeout_is_a_504(
    proxied: ProxiedFactory, raw_upstream: RawUpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    silent = await raw_upstream(None)
    px = await proxied(proxy_upstream=silent.url, proxy_read_timeout=0.2)
    async with px.session.get(px.url + "/refunds/s-1") as r:
        assert r.status == 504
        assert "silent" in (await r.json())["error"]
    assert len(silent.heads) == 1  # it was reached: silence, not unreachability
    (line,) = [r for r in caplog.records if r.name == "shadow.proxy"]
    assert "504" in line.getMessage()
    _no_tracebacks(caplog)


async def test_an_upstream_that_hangs_up_mid_body_is_a_502_without_a_traceback(
    proxied: ProxiedFactory, raw_upstream: RawUpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cut = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    px = await proxied(proxy_upstream=cut.url)
    async with px.session.get(px.url + "/refunds/c-1") as r:
        assert r.status == 502
        assert "hung up" in (await r.json())["error"]
    (line,) = [r for r in caplog.records if r.name == "shadow.proxy"]
    assert "502" in line.getMessage()
    assert "\n" not in line.getMessage()
    _no_tracebacks(caplog)


async def test_a_streamed_answer_that_breaks_off_is_cut_without_a_traceback(
    proxied: ProxiedFactory, raw_upstream: RawUpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Over WHOLE: the head is sent on before the body is read, so the client must see the
    # answer cut (its connection closed short of Content-Length), not a 502.
    cut = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
    px = await proxied(proxy_upstream=cut.url)
    got = await _raw_exchange(px.url, b"GET /download HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 1000000" in head.lower()
    assert body == b"x" * 10
    (line,) = [r for r in caplog.records if r.name == "shadow.proxy"]
    assert "broke off" in line.getMessage()
    _no_tracebacks(caplog)


@pytest.mark.parametrize(
    "target", [b"/a/%6F?x=%2F&y=a+b", b"/a/../x", b"/p;q?x", b"/a?", b"//b/%2e%2E/c?%7E"]
)
async def test_the_request_target_is_forwarded_byte_for_byte(
    proxied: ProxiedFactory, raw_upstream: RawUpstreamFactory, target: bytes
) -> None:
    upstream = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    px = await proxied(proxy_upstream=upstream.url)
    request_line = b"GET " + target + b" HTTP/1.1"
    got = await _raw_exchange(px.url, request_line + b"\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 ")
    assert got.endswith(b"\r\n\r\nok")
    (head,) = upstream.heads
    assert head.split(b"\r\n")[0] == request_line


async def test_a_loop_between_two_proxies_is_a_508_after_one_round(
    proxied: ProxiedFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a_sock = socket.create_server(("127.0.0.1", 0))
    b_sock = socket.create_server(("127.0.0.1", 0))
    a_url = f"http://127.0.0.1:{a_sock.getsockname()[1]}"
    b_url = f"http://127.0.0.1:{b_sock.getsockname()[1]}"
    a = await proxied(proxy_upstream=b_url, sock=a_sock)
    b = await proxied(proxy_upstream=a_url, sock=b_sock)
    me, other = a.proxy[IDENTITY].pseudonym, b.proxy[IDENTITY].pseudonym
    assert me != other
    for _ in range(2):  # and again: nothing was used up by the first
        async with a.session.post(a.url + "/refunds", json={"refund_id": "l-1"}) as r:
            assert r.status == 508
            message = (await r.json())["error"]
        assert f"Via: 1.1 {me}, 1.1 {other}" in message  # A, then B, then back at A: refused
    loops = [r for r in caplog.records if r.name == "shadow.proxy" and "loop" in r.getMessage()]
    assert len(loops) == 2  # one per request: detected by A on the request's first return
    _no_tracebacks(caplog)


def test_an_upstream_that_is_the_proxy_itself_is_refused() -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.create_server((host, 0)) as listening:
            port = listening.getsockname()[1]
            for upstream in (f"http://127.0.0.1:{port}", f"http://localhost:{port}/base"):
                with pytest.raises(ConfigError, match="is the proxy itself"):
                    refuse_own_address(upstream, listening)
            refuse_own_address(f"http://127.0.0.1:{port + 1 if port < 65535 else 1}", listening)
            refuse_own_address(f"http://192.0.2.1:{port}", listening)  # not a local address
            refuse_own_address(f"http://no-such-host.invalid:{port}", listening)


def test_shadow_proxy_refuses_to_start_in_front_of_itself(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with socket.socket() as spare:  # a free port for the proxy to listen on
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    res = cli_proc(
        "proxy",
        "--config",
        str(policy),
        "--db",
        str(tmp_path / "s.duckdb"),
        "--port",
        "0",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://localhost:{port}",
    )
    assert_usage_error(res, "is the proxy itself", f"http://localhost:{port}")
