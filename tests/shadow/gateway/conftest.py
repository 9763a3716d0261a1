"""Fixtures of the tool gateway's tests: a real upstream MCP server built with the official
SDK's ``MCPServer`` (Streamable HTTP under uvicorn, on a free loopback port) that records
every tool call it receives, and policies that point the sidecar at it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from starlette.types import Receive, Scope, Send

READ_ONLY = ToolAnnotations(read_only_hint=True)


@dataclass(eq=False)
class Upstream:
    """A running upstream. ``calls``: (tool, arguments) in the order received; ``methods``:
    the ``Mcp-Method`` header of every request, in order."""

    server: MCPServer
    url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    # Per ``Mcp-Method``: a request of that method waits for the gate (``arrived`` is set
    # when one is waiting), so a test can change the world while the gateway awaits it.
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    port: int = 0
    stop: Callable[[], Awaitable[None]] | None = None  # ends this server (the fixture's)

    def gate(self, method: str) -> asyncio.Event:
        """Hold ``method`` requests until the returned event is set."""
        self.arrived[method] = asyncio.Event()
        gate = self.gates[method] = asyncio.Event()
        return gate

    def writes(self) -> list[tuple[str, dict[str, Any]]]:
        return [c for c in self.calls if c[0] not in ("get_order", "lookup_customer")]


def backoffice(name: str = "backoffice") -> Upstream:
    """Read tools ``get_order`` (readOnlyHint) and ``lookup_customer`` (readOnlyHint);
    write tools ``issue_refund`` and ``cancel_order`` (no hint)."""
    server = MCPServer(name, log_level="WARNING")
    up = Upstream(server)

    @server.tool(annotations=READ_ONLY)
    def get_order(order_id: str) -> dict[str, Any]:
        """Look up an order."""
        up.calls.append(("get_order", {"order_id": order_id}))
        return {"order_id": order_id, "amount": 42.5, "status": "delivered"}

    @server.tool(annotations=READ_ONLY)
    def lookup_customer(customer_id: str) -> dict[str, Any]:
        up.calls.append(("lookup_customer", {"customer_id": customer_id}))
        return {"customer_id": customer_id, "tier": "gold"}

    @server.tool()
    def issue_refund(order_id: str, amount: float) -> dict[str, Any]:
        """Refund an order (a write)."""
        up.calls.append(("issue_refund", {"order_id": order_id, "amount": amount}))
        return {"refunded": amount, "order_id": order_id}

    @server.tool()
    def cancel_order(order_id: str) -> dict[str, Any]:
        up.calls.append(("cancel_order", {"order_id": order_id}))
        return {"cancelled": order_id}

    return up


UpstreamFactory = Callable[..., Awaitable[Upstream]]
UPSTREAM_TOKEN = "upstream-secret-token"


@pytest.fixture(autouse=True)
def upstream_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credential the policy's ``env:BACKOFFICE_TOKEN`` header names."""
    monkeypatch.setenv("BACKOFFICE_TOKEN", UPSTREAM_TOKEN)


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamFactory]:
    """``await upstream()`` serves :func:`backoffice` (or ``up=`` another) on 127.0.0.1."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(up: Upstream | None = None, *, port: int = 0) -> Upstream:
        """``port``: serve on that port (a restart of an upstream that was stopped)."""
        up = up or backoffice()
        # IPPROTO_TCP named, or asyncio leaves Nagle on (~40 ms per answer).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        inner = up.server.streamable_http_app(json_response=True)
        methods = up.methods
        held = up

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                named = dict(scope["headers"]).get(b"mcp-method")
                if named is not None:
                    methods.append(named.decode())
                    gate = held.gates.get(named.decode())
                    if gate is not None:
                        held.arrived[named.decode()].set()
                        await gate.wait()
            await inner(scope, receive, send)

        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        running.append((server, task))
        for _ in range(3000):  # at most 30 s: a bound against hangs, not a timing
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "the upstream did not start"
        up.url = f"http://127.0.0.1:{port}/mcp"
        up.port = port

        async def stop() -> None:
            server.should_exit = True
            await task

        up.stop = stop
        return up

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, task in running:
        await task  # a task awaited already (stop()) answers at once


def gateway_policy(url: str, *, start: str = "L0", extra: str = "", trust: bool = False) -> str:
    """A policy whose ``refund`` task type uses the backoffice upstream at ``url`` (whose
    ``readOnlyHint`` makes unlisted tools reads only with ``trust``)."""
    return f"""
tools:
  backoffice: {{url: "{url}", headers: {{Authorization: "env:BACKOFFICE_TOKEN"}},
               trust_read_only_hint: {str(trust).lower()}}}
task_types:
  refund:
    compare:
      fields:
        action: {{match: exact}}
      unlisted: ignore
      actions: {{args: {{amount: {{match: number, abs: 0.01}}}}}}
    autonomy:
      start: {start}
      ceiling: L4
      mode: propose
      gates:
        L1: {{agreement: 0.5, min_samples: 1000}}
        L2: {{agreement: 0.5, min_samples: 1000}}
        L3: {{agreement: 0.5, min_samples: 1000}}
        L4: {{agreement: 0.5, min_samples: 1000}}
      audit_rate: 0.5
    tools:
      allow: [get_order, issue_refund, cancel_order]
      read: [get_*]
      write: [issue_refund]
{extra}
"""
