"""In-process agents for ``shadow agent check``'s tests (``--agent
tests.shadow.check_agents:NAME``; not tests). Each works its case through the request's
``tools_url`` with the official MCP Python SDK's ``Client``, as an agent author would, and
answers per the agent contract, or breaks it in one named way. The back office is
tests/shadow/gateway/conftest.py's ``backoffice`` (or tests/clients/backoffice.py's typed
one): ``get_order`` a read, ``issue_refund`` a write, ``lookup_customer`` off the
allowlist of the policy the tests use."""

from __future__ import annotations

import contextlib
from typing import Any, cast

from mcp import Client, MCPError
from mcp_types import RequestParamsMeta

USAGE = {"input_tokens": 120, "output_tokens": 12, "cost_usd": 0.0004}


def _order(request: dict[str, Any]) -> str:
    return str(request["payload"].get("order_id", "o-1"))


async def good(request: dict[str, Any]) -> dict[str, Any]:
    """Reads the order, refunds it (one write), answers a decision with usage."""
    order_id = _order(request)
    async with Client(request["tools_url"]) as tools:
        order = await tools.call_tool("get_order", {"order_id": order_id})
        amount = (order.structured_content or {}).get("amount", 0)
        await tools.call_tool("issue_refund", {"order_id": order_id, "amount": amount})
    return {"decision": {"action": "approve"}, "agent_version": "check-good@1", "usage": USAGE}


async def twice(request: dict[str, Any]) -> dict[str, Any]:
    """Refunds twice, the second time on purpose, saying so with a repeat key: fine."""
    order_id = _order(request)
    async with Client(request["tools_url"]) as tools:
        args = {"order_id": order_id, "amount": 1.0}
        for key in (1, 2):
            meta = cast("RequestParamsMeta", {"io.shadow/repeat": key})
            await tools.call_tool("issue_refund", args, meta=meta)
    return {"decision": {"action": "approve"}, "usage": USAGE}


async def retries_a_write(request: dict[str, Any]) -> dict[str, Any]:
    """Sends the same refund twice without a repeat key (a client retry)."""
    order_id = _order(request)
    async with Client(request["tools_url"]) as tools:
        await tools.call_tool("get_order", {"order_id": order_id})
        for _ in range(2):
            await tools.call_tool("issue_refund", {"order_id": order_id, "amount": 42.5})
    return {"decision": {"action": "approve"}, "usage": USAGE}


async def off_the_allowlist(request: dict[str, Any]) -> dict[str, Any]:
    """Reads the order, then asks for a tool the task type may not use (refused: it
    carries on)."""
    order_id = _order(request)
    async with Client(request["tools_url"]) as tools:
        await tools.call_tool("get_order", {"order_id": order_id})
        with contextlib.suppress(MCPError):
            await tools.call_tool("lookup_customer", {"customer_id": "c-1"})
    return {"decision": {"action": "approve"}, "usage": USAGE}


def no_tools(request: dict[str, Any]) -> dict[str, Any]:
    """Never opens its tools URL (sync, as many simple agents are)."""
    return {"decision": {"action": "approve"}, "usage": USAGE}
