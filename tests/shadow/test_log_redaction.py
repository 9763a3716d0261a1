"""A tools URL's capability (``/mcp/{capability}``) is a credential: no log line the sidecar
writes holds it, while its redacted form (``/mcp/v1.…<6 characters of its MAC>``) lets an
operator tell requests apart.

Everything is real: the sidecar with the tool gateway on loopback, an upstream MCP server
(the SDK's ``MCPServer``), the SDK's ``Client`` and hand-written HTTP for a client that goes
away mid-request, and a real failure under a request: ``shadow run`` as a subprocess whose
file-size limit is lowered to nothing (``prlimit``, as a full disk would), so storing a write
held for approval fails (503; the store says so in one line, not one per request)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from prometheus_client import CollectorRegistry

from shadow.app import build_app
from shadow.policy import parse_policy
from shadow.server import Listener
from tests.conftest import wait_for
from tests.shadow.conftest import RawHttpFactory, clean_settings
from tests.shadow.gateway.conftest import (
    UPSTREAM_TOKEN,
    UpstreamFactory,
    gateway_policy,
    upstream,  # noqa: F401 - the fixture
)
from tests.shadow.test_crash import READY_TRIES, ROOT, free_port

ADMIN = "redaction-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CALL = {"name": "issue_refund", "arguments": {"order_id": "o-1", "amount": 1.0}}


def capability_of(tools_url: str) -> tuple[str, str]:
    """The capability of ``tools_url`` and the form a log may show of its path."""
    token = tools_url.rsplit("/mcp/", 1)[1]
    return token, f"/mcp/v1.…{token.rsplit('.', 1)[1][:6]}"


async def open_session(session: aiohttp.ClientSession, base: str, event_id: str) -> str:
    body = {"task_type": "refund", "event_id": event_id}
    async with session.post(f"{base}/v1/sessions", json=body, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["tools_url"])


async def disconnect_mid_body(raw_http: RawHttpFactory, tools_url: str) -> None:
    """A tools/call whose body never arrives in full: the client goes away."""
    path = "/" + tools_url.split("/", 3)[3]
    conn = await raw_http(tools_url)
    await conn.send(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Length: 4096\r\n\r\n"
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {'.encode()
    )
    await asyncio.sleep(0.2)  # the handler is reading the body (not a timing: any wait works)
    await conn.close()


@pytest.fixture
async def gateway_sidecar(tmp_path: Path, upstream: UpstreamFactory) -> AsyncIterator[str]:  # noqa: F811
    """The sidecar at L0 with the access log on, serving ``refund`` tools from a real
    upstream; yields its base URL."""
    up = await upstream()
    settings = clean_settings(tmp_path, "redact", admin_token=ADMIN)
    app = build_app(
        settings,
        policy=parse_policy(gateway_policy(up.url)),
        registry=CollectorRegistry(),
        environ={"BACKOFFICE_TOKEN": UPSTREAM_TOKEN},
    )
    sock = socket.create_server(("127.0.0.1", 0))
    listener = Listener(app, sock, settings, shutdown_timeout=1.0)  # default access log
    await listener.start()
    try:
        yield f"http://127.0.0.1:{listener.port}"
    finally:
        await listener.close()


async def test_no_log_line_holds_a_capability_in_process(
    gateway_sidecar: str, raw_http: RawHttpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    base = gateway_sidecar
    async with aiohttp.ClientSession() as session:
        tools_url = await open_session(session, base, "r-1")
        token, shown = capability_of(tools_url)
        async with Client(tools_url) as client:
            assert {t.name for t in (await client.list_tools()).tools} >= {"issue_refund"}
        await disconnect_mid_body(raw_http, tools_url)

        def logged(needle: str) -> bool:
            return any(needle in r.getMessage() for r in caplog.records)

        async def disconnect_logged() -> bool:
            return logged("disconnected during POST")

        await wait_for(disconnect_logged, "the disconnect to be logged")
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any(f'"POST {shown} HTTP/1.1" 200' in line for line in access), access
    disconnect = [r.getMessage() for r in caplog.records if "disconnected during" in r.getMessage()]
    assert disconnect == [disconnect[0]]
    assert f"POST {shown} " in disconnect[0]
    assert token not in caplog.text
    assert all(token not in r.getMessage() for r in caplog.records)


@pytest.mark.slow  # a subprocess sidecar
async def test_no_log_line_holds_a_capability_on_a_disconnect_or_a_store_failure(
    tmp_path: Path,
    upstream: UpstreamFactory,  # noqa: F811
    raw_http: RawHttpFactory,
) -> None:
    up = await upstream()
    (tmp_path / "policy.yaml").write_text(gateway_policy(up.url, start="L2"), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(
        SHADOW_ADMIN_TOKEN=ADMIN, SHADOW_GATEWAY_APPROVAL_WAIT="0", BACKOFFICE_TOKEN=UPSTREAM_TOKEN
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadow.cli", "run", "--config", str(tmp_path / "policy.yaml"),
        "--db", str(tmp_path / "logs.duckdb"), "--port", str(port),
        cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    output = asyncio.ensure_future(proc.stdout.read())  # a pipe: no file-size limit applies
    try:
        async with aiohttp.ClientSession() as session:
            await ready(session, base, proc)
            tools_url = await open_session(session, base, "r-1")
            token, shown = capability_of(tools_url)
            await disconnect_mid_body(raw_http, tools_url)
            # A full disk, as far as the sidecar can tell: no file of its may grow.
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, 0))
            answer = await call_tool(session, tools_url)
            assert answer[0] == 503, answer
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    log = (await output).decode(errors="replace")
    assert f"disconnected during POST {shown} " in log, log[-4000:]
    assert log.count("store failing") == 1, log[-4000:]  # the cause, once
    assert token not in log  # and the capability nowhere


async def ready(
    session: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process
) -> None:
    for _ in range(READY_TRIES):
        assert proc.returncode is None, "shadow run exited"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    pytest.fail("shadow run did not become ready")


async def call_tool(session: aiohttp.ClientSession, tools_url: str) -> tuple[int, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {**CALL, "_meta": meta}}
    headers = {"MCP-Protocol-Version": "2026-07-28", "Accept": "application/json"}
    async with session.post(tools_url, json=body, headers=headers) as resp:
        return resp.status, await resp.text()
