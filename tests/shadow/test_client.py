"""``shadow.client`` (the host's typed client, blocking and asyncio) against a real sidecar on
loopback: batched gzip NDJSON ingest with per-record errors and their line numbers across
batches, tokens and signatures, routing, sessions and approvals, the API's errors as
exceptions, retries of idempotent calls through a real flaky proxy (and none of the calls that
are not), and no connection at all. The blocking client runs in a worker thread (the sidecar
serves on this test's event loop)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from shadow.client import (
    AsyncClient,
    BadRequest,
    Client,
    Forbidden,
    IngestResult,
    NotFound,
    Unauthorized,
    Unavailable,
)
from shadow.roles import digest
from tests.shadow.conftest import AgentServerFactory, Sidecar, SidecarFactory
from tests.shadow.test_api_autonomy import answer

POLICY = """
task_types:
  refund:
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
"""
ROLES = {"ingest": ["ingest"], "host": ["host"], "viewer": ["viewer"], "boss": ["admin"]}


def secret(name: str) -> str:
    return f"secret-of-{name}"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    entries = [{"name": n, "roles": r, "sha256": digest(secret(n))} for n, r in ROLES.items()]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


@pytest.fixture
async def sc(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> Sidecar:
    agent = await agent_server(answer)
    return await sidecar(policy=POLICY, agent=agent.url, tokens_file=tokens_file, admin_token=None)


def events(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"event_id": f"r-{i}", "task_type": "refund", "payload": {"expect": {"action": "approve"}}}
        for i in range(start, start + count)
    ]


def outcomes(count: int) -> list[dict[str, Any]]:
    return [{"event_id": f"r-{i}", "decision": {"action": "approve"}} for i in range(count)]


Flavour = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["blocking", "asyncio"])
def call(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await call(url, method, *args, **client_options)``: the method of a fresh client of
    either flavour, the blocking one in a worker thread."""
    flavour = request.param

    async def run(url: str, method: str, *args: Any, **options: Any) -> Any:
        if flavour == "blocking":

            def blocking() -> Any:
                with Client(url, **options) as client:
                    return getattr(client, method)(*args)

            return await asyncio.to_thread(blocking)
        async with AsyncClient(url, **options) as client:
            return await getattr(client, method)(*args)

    return run  # type: ignore[return-value]


async def test_batched_gzip_ingest_counts_duplicates_and_numbers_bad_records_across_batches(
    sc: Sidecar, call: Flavour
) -> None:
    token = {"token": secret("ingest"), "batch_size": 7}
    sent = await call(sc.url, "send_events", events(20), **token)
    assert isinstance(sent, IngestResult)
    assert (sent.accepted, sent.results, sent.errors) == (20, {"stored": 20}, [])
    again = await call(sc.url, "send_events", events(20), **token)
    assert again.results == {"duplicate": 20}
    mixed = [*events(9, start=100), {"event_id": "bad", "task_type": "refund"}, *events(3, 200)]
    found = await call(sc.url, "send_events", mixed, **token)
    assert found.accepted == 12
    assert [e["line"] for e in found.errors] == [10]  # line 3 of the second batch of 7
    assert "payload" in found.errors[0]["path"]
    done = await call(sc.url, "send_outcomes", outcomes(20), **token)
    assert done.results == {"stored": 20}
    await sc.pipeline.drain()
    doc = await call(sc.url, "agreement", token=secret("viewer"))
    assert doc["task_types"]["refund"]["n"] == 20


async def test_credentials_and_the_apis_errors_arrive_as_exceptions(
    sc: Sidecar, call: Flavour
) -> None:
    with pytest.raises(Unauthorized) as exc:
        await call(sc.url, "send_events", events(1), token="wrong")
    assert exc.value.status == 401
    with pytest.raises(Forbidden):
        await call(sc.url, "route", "refund", "r-1", token=secret("viewer"))
    with pytest.raises(NotFound):
        await call(sc.url, "route", "nope", "r-1", token=secret("host"))
    with pytest.raises(BadRequest) as bad:
        await call(sc.url, "send_events", [{"event_id": "x"}], token=secret("ingest"))
    assert bad.value.errors  # the per-record errors of a batch with no valid record
    route = await call(sc.url, "route", "refund", "r-1", token=secret("host"))
    assert route["handled_by"] == "blind"
    assert (await call(sc.url, "approvals", token=secret("boss"))) == []
    with pytest.raises(NotFound):
        await call(sc.url, "approve", "no-such-approval", token=secret("boss"))
    doc = await call(sc.url, "agreement", token=secret("viewer"))
    assert "refund" in doc["task_types"]


async def test_signed_ingest(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, call: Flavour
) -> None:
    agent = await agent_server(answer)
    sc = await sidecar(policy=POLICY, agent=agent.url, ingest_signature_secret="k3y")
    sent = await call(sc.url, "send_events", events(3), signature_secret="k3y")
    assert sent.accepted == 3
    with pytest.raises(Unauthorized) as exc:
        await call(sc.url, "send_events", events(3), signature_secret="other")
    assert "signature" in exc.value.message
    plain = await call(sc.url, "send_events", events(1, 50), signature_secret="k3y", gzip=False)
    assert plain.accepted == 1


# -- retries ----------------------------------------------------------------------------------


class Flaky:
    """A real HTTP proxy in front of the sidecar that answers ``fail`` with 503 for the first
    ``failures`` requests, then forwards; it counts what reached it."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream = upstream
        self.failures = failures
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.path}")
        if len(self.seen) <= self.failures:
            return web.json_response({"error": "busy"}, status=503)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )


@pytest.fixture
async def flaky() -> AsyncIterator[Callable[[str, int], Awaitable[tuple[str, Flaky]]]]:
    runners: list[web.AppRunner] = []

    async def start(upstream: str, failures: int) -> tuple[str, Flaky]:
        proxy = Flaky(upstream, failures)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}", proxy

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_idempotent_calls_are_retried_and_stored_once(
    sc: Sidecar, call: Flavour, flaky: Callable[[str, int], Awaitable[tuple[str, Flaky]]]
) -> None:
    url, proxy = await flaky(sc.url, 2)
    sent = await call(url, "send_events", events(5), token=secret("ingest"), backoff=0.0)
    assert sent.results == {"stored": 5}
    assert len(proxy.seen) == 3  # two 503s, then through
    url, proxy = await flaky(sc.url, 5)
    with pytest.raises(Unavailable) as exc:
        await call(url, "send_events", events(5), token=secret("ingest"), retries=2, backoff=0.0)
    assert exc.value.status == 503
    assert len(proxy.seen) == 3  # the first try and two retries


async def test_a_call_that_is_not_idempotent_is_not_retried_once_sent(
    sc: Sidecar, call: Flavour, flaky: Callable[[str, int], Awaitable[tuple[str, Flaky]]]
) -> None:
    url, proxy = await flaky(sc.url, 1)
    with pytest.raises(Unavailable):
        await call(url, "approve", "a-1", token=secret("boss"), backoff=0.0)
    assert proxy.seen == ["POST /v1/approvals/a-1/approve"]


async def test_no_sidecar_at_all_is_unavailable_with_status_zero(call: Flavour) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Unavailable) as exc:
        await call(f"http://127.0.0.1:{port}", "send_events", events(1), retries=1, backoff=0.0)
    assert exc.value.status == 0
    assert "no answer from" in str(exc.value)


def test_importing_the_client_loads_no_store_broker_or_server() -> None:
    code = (
        "import sys, shadow.client; "
        "bad = [m for m in ('duckdb', 'aiokafka', 'aiohttp', 'shadow.store', 'shadow.app') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Client("http://127.0.0.1:1", batch_size=0)
    with pytest.raises(ValueError, match="retries"):
        Client("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        Client("http://127.0.0.1:1", timeout=0)
