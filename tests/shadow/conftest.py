"""Fixtures for the service-level tests: a real agent server and a real sidecar, both on
loopback ports, started by factories that tear everything down after the test.

- ``agent_server(answer)`` starts an aiohttp server that follows the agent contract and
  answers with ``answer(request_json)``: a :class:`Reply` (or an awaitable of one, so a test
  can block an answer on an ``asyncio.Event`` it holds). Every request is recorded with its
  headers before the answer is computed.
- ``sidecar(policy=..., agent=..., **settings)`` builds the real app with
  :func:`shadow.app.build_app` (tmp DuckDB file, own Prometheus registry) and serves it as
  ``shadow run`` does (:class:`shadow.server.Listener`) on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shadow.api import PIPELINE
from shadow.app import build_app
from shadow.config import Settings
from shadow.pipeline import Pipeline
from shadow.policy import Policy, parse_policy
from shadow.roles import digest
from shadow.server import Listener

ADMIN_TOKEN = "s3cret-admin-token"
AGENT_VERSION = "agent@1"

# Two task types: ``refund`` promotes itself (auto) and ``appeal`` waits for approval.
POLICY = """
task_types:
  refund:
    sample_rate: 0.8
    redact: [payload.customer.email]
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L3
      mode: auto
      gates:
        L1: {agreement: 0.5, min_samples: 10}
        L2: {agreement: 0.55, min_samples: 15}
        L3: {agreement: 0.6, min_samples: 20, max_critical: 1000}
      audit_rate: 0.3
  appeal:
    sample_rate: 1.0
    compare:
      fields:
        action: {match: exact, critical: true}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L2
      mode: propose
      gates:
        L1: {agreement: 0.5, min_samples: 5}
        L2: {agreement: 0.55, min_samples: 10}
"""


# -- the agent ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What the fake agent answers: a JSON body (dict/list) or raw bytes, after ``delay``."""

    status: int = 200
    body: object = None
    delay: float = 0.0


def agree_reply(decision: Mapping[str, Any], version: str = AGENT_VERSION) -> Reply:
    return Reply(200, {"decision": dict(decision), "agent_version": version})


Answer = Callable[[dict[str, Any]], Reply | Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class AgentRequest:
    body: dict[str, Any]
    headers: Mapping[str, str]


@dataclass(eq=False)
class AgentServer:
    """A running fake agent. ``release`` is set at teardown so blocked answers finish."""

    answer: Answer
    url: str = ""
    requests: list[AgentRequest] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # event ids whose answer was sent
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def event_ids(self) -> list[str]:
        return [str(r.body.get("event_id")) for r in self.requests]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(AgentRequest(body, dict(request.headers)))
        async with self.arrived:
            self.arrived.notify_all()
        try:
            result = self.answer(body)
            reply = await result if inspect.isawaitable(result) else result
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self.done.append(str(body.get("event_id")))
        if isinstance(reply.body, bytes):
            return web.Response(
                body=reply.body, status=reply.status, content_type="application/json"
            )
        return web.json_response(reply.body, status=reply.status)

    async def wait_for_requests(self, count: int, within: float = 30.0) -> None:
        """Until at least ``count`` requests arrived (a bound against hangs, not a timing)."""
        async with asyncio.timeout(within), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)


AgentServerFactory = Callable[[Answer], Awaitable[AgentServer]]


@pytest.fixture
async def agent_server() -> AsyncIterator[AgentServerFactory]:
    """``await agent_server(answer)`` starts a fake agent on 127.0.0.1; all stop after."""
    started: list[tuple[AgentServer, web.AppRunner]] = []

    async def start(answer: Answer) -> AgentServer:
        server = AgentServer(answer)
        app = web.Application()
        app.router.add_post("/decide", server.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        started.append((server, runner))
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/decide"
        return server

    yield start
    for server, _ in started:
        server.release.set()
    for _, runner in started:
        await runner.cleanup()


# -- the sidecar ----------------------------------------------------------------------------

MetricKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: Any  # parsed JSON when the answer is JSON, else the text
    content_type: str


@dataclass(eq=False)
class Sidecar:
    url: str
    app: web.Application
    settings: Settings
    session: aiohttp.ClientSession
    policy: Policy

    @property
    def pipeline(self) -> Pipeline:
        return self.app[PIPELINE]

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | str | None = None,
        json_body: object = None,
        headers: Mapping[str, str] | None = None,
        skip_content_type: bool = False,
    ) -> HttpResult:
        hdrs = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        skip = ["Content-Type"] if skip_content_type else []
        async with self.session.request(
            method, self.url + path, data=data, headers=hdrs, skip_auto_headers=skip
        ) as resp:
            text = await resp.text()
            body: Any = text
            if resp.content_type == "application/json":
                body = json.loads(text)
            return HttpResult(resp.status, body, resp.content_type)

    async def get(self, path: str, **kw: Any) -> HttpResult:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> HttpResult:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> HttpResult:
        return await self.request("PUT", path, **kw)

    async def post_ndjson(self, path: str, records: Sequence[object]) -> HttpResult:
        data = "".join(json.dumps(r) + "\n" for r in records)
        return await self.post(path, data=data, headers={"Content-Type": "application/x-ndjson"})

    async def agreement(self) -> dict[str, Any]:
        res = await self.get("/v1/agreement")
        assert res.status == 200, res.body
        return dict(res.body)

    async def metrics(self) -> dict[MetricKey, float]:
        """``{(sample name, labels): value}`` parsed from ``/metrics``."""
        res = await self.get("/metrics")
        assert res.status == 200, res.body
        out: dict[MetricKey, float] = {}
        for family in text_string_to_metric_families(str(res.body)):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out


def metric(samples: Mapping[MetricKey, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


SidecarFactory = Callable[..., Awaitable[Sidecar]]


def clean_settings(tmp_path: Path, name: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db": str(tmp_path / f"{name}.duckdb"),
        "admin_token": ADMIN_TOKEN,
        "expire_interval": 3600.0,
        "agent_timeout": 5.0,
        "agent_version": AGENT_VERSION,
        "config": None,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def no_shadow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SHADOW_*`` variables of the developer's shell must not leak into Settings."""
    for key in list(os.environ):
        if key.upper().startswith("SHADOW_"):
            monkeypatch.delenv(key)


@pytest.fixture
async def sidecar(tmp_path: Path, no_shadow_env: None) -> AsyncIterator[SidecarFactory]:
    """``await sidecar(policy=TEXT, agent=URL, **settings)`` serves the real app on
    127.0.0.1:0 with a tmp DuckDB file (``environ=``: build_app's environment instead of the
    process's); everything is torn down after the test."""
    started: list[tuple[Listener, aiohttp.ClientSession]] = []

    async def start(
        *,
        policy: str = POLICY,
        clock: Callable[[], datetime] | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Sidecar:
        settings = clean_settings(tmp_path, f"sidecar{len(started)}", **overrides)
        parsed = parse_policy(policy)
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        if environ is not None:  # the composition root's environment (OTEL_*, env:NAME)
            extra["environ"] = environ
        app = build_app(settings, policy=parsed, registry=CollectorRegistry(), **extra)
        sock = socket.create_server(("127.0.0.1", 0))
        listener = Listener(app, sock, settings, access_log=None, shutdown_timeout=1.0)
        await listener.start()
        session = aiohttp.ClientSession()
        started.append((listener, session))
        url = f"http://127.0.0.1:{listener.port}"
        return Sidecar(url, app, settings, session, parsed)

    yield start
    for listener, session in reversed(started):
        await session.close()
        await listener.close()


# -- raw HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


@dataclass(eq=False)
class RawHttp:
    """One TCP connection speaking HTTP/1.1 by hand, for what a client library will not
    send: malformed request lines, headers or bodies trickled a byte at a time, an
    ``Expect: 100-continue`` whose answer is read before the body is sent. Every read is
    bounded by ``within`` seconds (a guard against hangs, not a timing)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, within: float = 30.0) -> RawResponse:
        """The next response (an interim ``100 Continue`` included), body read by its
        Content-Length."""
        async with asyncio.timeout(within):
            status_line = await self.reader.readline()
            assert status_line.startswith(b"HTTP/1."), status_line
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length) if length else b""
        return RawResponse(int(status_line.split()[1]), headers, body)

    async def closed_by_server(self, within: float = 30.0) -> bool:
        """Read until the server closes the connection; whatever it sent is discarded."""
        async with asyncio.timeout(within):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionError:
                pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


RawHttpFactory = Callable[[str], Awaitable[RawHttp]]


@pytest.fixture
async def raw_http() -> AsyncIterator[RawHttpFactory]:
    """``await raw_http(url)`` opens a :class:`RawHttp` to the host and port of ``url``;
    every connection is closed after the test."""
    opened: list[RawHttp] = []

    async def connect(url: str) -> RawHttp:
        host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        conn = RawHttp(reader, writer)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.close()


def secret_auth(name: str) -> dict[str, str]:
    """The ``Authorization`` header of ``name``'s token in a file :func:`write_tokens` wrote."""
    return {"Authorization": f"Bearer secret-of-{name}"}


def write_tokens(path: Path, tokens: Mapping[str, Mapping[str, Any]]) -> Path:
    """A tokens file (``SHADOW_TOKENS_FILE``) with one entry per name, its body as given
    (``roles``, ``task_types``), and the token ``secret-of-<name>`` (:func:`secret_auth`)."""
    entries = [
        {"name": name, "sha256": digest(f"secret-of-{name}"), **body}
        for name, body in tokens.items()
    ]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path
