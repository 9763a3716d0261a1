"""Kit handlers through a real sidecar, whose tool gateway fronts a real MCP server with a
typed write (tests/clients/backoffice.py): the case's MCP session (the official SDK's
client, :meth:`shadow.kit.Case.tools`) scores a case exactly and is closed before the
answer, a ``404`` on closing it is tolerated, and a handler that raises or overruns the
kit's deadline is recorded against the agent with the kit's one-line reason, before the
sidecar's own agent timeout."""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

from shadow.kit import Case
from shadow.model import Verdict
from tests.clients.backoffice import typed_backoffice, typed_policy
from tests.clients.models import DECISION
from tests.shadow.conftest import SidecarFactory
from tests.shadow.gateway.conftest import UpstreamFactory
from tests.shadow.kit.conftest import (
    DEADLINE,
    SLOW_OK,
    KitAgent,
    assert_scores_exactly,
    refund_case,
    scored,
)

# Hop-by-hop and framing headers: each leg sets its own.
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


async def sdk_refund(case: Case) -> dict[str, str]:
    """The refund agent on the case's MCP session: read the order, refund its amount."""
    tools = await case.tools()
    order = await tools.call_tool("get_order", {"order_id": case.payload["order_id"]})
    assert not order.is_error, order
    amount = order.structured_content["amount"]
    refund = await tools.call_tool("issue_refund", {"order_id": "o-1", "amount": amount})
    assert not refund.is_error, refund
    return {"action": DECISION}


async def test_the_cases_mcp_session_scores_a_typed_write_exactly(
    sidecar: SidecarFactory, kit_agent: KitAgent, upstream: UpstreamFactory
) -> None:
    up = await upstream(typed_backoffice())
    agent = await kit_agent(sdk_refund, deadline=DEADLINE)
    sc = await sidecar(policy=typed_policy(up.url), agent=agent, **SLOW_OK)

    await refund_case(sc)

    await assert_scores_exactly(sc, up)


class LegacyFront:
    """A reverse proxy in front of the sidecar (its ``public_url``) that makes the gateway
    look like a handshake-era MCP server (``server/discover`` answered "method not found",
    so the SDK falls back to ``initialize``) whose ``DELETE`` of a session answers ``404``
    (a sidecar that no longer knows the session). ``log``: what happened, in order."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.url = ""
        self.target = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", self._pass)
        self._runner = web.AppRunner(application, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _pass(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        message: Any = json.loads(body) if body else None
        method = message.get("method") if isinstance(message, dict) else None
        if request.method == "DELETE":
            self.log.append("DELETE 404")
            return web.json_response({"error": "no such session"}, status=404)
        if method == "server/discover":
            error = {"code": -32601, "message": "Method not found"}
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "error": error})
        if method is not None:
            self.log.append(method)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=["Content-Type", "Accept-Encoding", "User-Agent"],
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            return web.Response(body=payload, status=upstream.status, headers=out)


async def test_a_handshake_session_is_closed_before_the_answer_and_a_404_tolerated(
    sidecar: SidecarFactory, kit_agent: KitAgent, upstream: UpstreamFactory
) -> None:
    up = await upstream(typed_backoffice())
    log: list[str] = []
    agent = await kit_agent(
        sdk_refund, deadline=DEADLINE, on_answer=lambda status: log.append(f"answered {status}")
    )
    async with LegacyFront(log) as front:
        sc = await sidecar(
            policy=typed_policy(up.url), agent=agent, public_url=front.url, **SLOW_OK
        )
        front.target = sc.url
        await refund_case(sc)

    await assert_scores_exactly(sc, up)
    assert log[0] == "initialize"
    assert log[-2:] == ["DELETE 404", "answered 200"]


async def test_a_handler_that_raises_is_an_agent_error_with_its_reason(
    sidecar: SidecarFactory, kit_agent: KitAgent, upstream: UpstreamFactory
) -> None:
    async def decide(case: Case) -> dict[str, str]:
        await (await case.tools()).call_tool("get_order", {"order_id": "o-1"})
        raise ExceptionGroup("run failed", [ValueError("no amount"), KeyError("order")])

    up = await upstream(typed_backoffice())
    agent = await kit_agent(decide, deadline=DEADLINE)
    sc = await sidecar(policy=typed_policy(up.url), agent=agent, **SLOW_OK)

    await refund_case(sc)

    comparison, decision = await scored(sc)
    assert comparison.verdict is Verdict.AGENT_ERROR
    assert decision.error == "HTTP 500: agent raised ValueError: no amount (+1 more)"
    assert up.writes() == []


async def test_the_kits_deadline_answers_before_the_sidecars_timeout(
    sidecar: SidecarFactory, kit_agent: KitAgent, upstream: UpstreamFactory
) -> None:
    async def decide(case: Case) -> dict[str, str]:
        await (await case.tools()).call_tool("get_order", {"order_id": "o-1"})
        await asyncio.sleep(60)
        return {"action": DECISION}

    up = await upstream(typed_backoffice())
    agent = await kit_agent(decide, deadline=1.0)
    sc = await sidecar(
        policy=typed_policy(up.url), agent=agent, agent_timeout=20.0, gateway_session_ttl=600.0
    )

    await refund_case(sc)

    comparison, decision = await scored(sc)
    assert comparison.verdict is Verdict.AGENT_ERROR
    assert decision.error == "HTTP 504: deadline: no decision within 1.0 s"
    assert decision.latency_ms is not None
    assert decision.latency_ms < 20_000
    assert up.calls == [("get_order", {"order_id": "o-1"})]
