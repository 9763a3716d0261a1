"""A back office with a *typed* write, for the real MCP clients' tests
(tests/shadow/gateway/test_clients.py).

``issue_refund`` returns a pydantic model, so the SDK's ``MCPServer`` lists it with an
``outputSchema`` whose properties are required (``refund_id``, ``amount``, ``status`` fixed to
``"issued"``), and every client library checks the structured content it gets against that
schema: a captured write must answer something valid, or the client itself fails the call.
``get_order`` is a typed read (``readOnlyHint``, and ``get_*`` is a read in the policy);
``issue_refund`` carries no hint and the policy does not list it: a write, as every tool is
that the policy does not make a read.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from tests.shadow.gateway.conftest import READ_ONLY, Upstream

__all__ = [
    "ORDER",
    "Order",
    "RefundReceipt",
    "typed_backoffice",
    "typed_policy",
]


class Order(BaseModel):
    order_id: str
    amount: float
    status: str


class RefundReceipt(BaseModel):
    refund_id: str
    amount: float
    status: Literal["issued"]


ORDER = Order(order_id="o-1", amount=42.5, status="delivered")


def typed_backoffice() -> Upstream:
    """An :class:`Upstream` (start it with the ``upstream`` fixture) serving ``get_order``
    and the typed write ``issue_refund``; every call it receives is in ``calls``."""
    server = MCPServer("typed-backoffice", log_level="WARNING")
    up = Upstream(server)
    serial = itertools.count(1)

    @server.tool(annotations=READ_ONLY)
    async def get_order(order_id: str) -> Order:
        """Look up an order."""
        up.calls.append(("get_order", {"order_id": order_id}))
        return ORDER.model_copy(update={"order_id": order_id})

    @server.tool()
    async def issue_refund(order_id: str, amount: float) -> RefundReceipt:
        """Refund an order (a write)."""
        up.calls.append(("issue_refund", {"order_id": order_id, "amount": amount}))
        return RefundReceipt(refund_id=f"rf-{next(serial)}", amount=amount, status="issued")

    return up


def typed_policy(
    url: str, *, start: str = "L0", shadow_result: dict[str, Any] | None = None
) -> str:
    """A policy whose ``refund`` task type works through the typed back office at ``url``;
    the humans' refunds compare on the tool and its amount (within a cent)."""
    result = ""
    if shadow_result is not None:
        result = f"      shadow_result: {{issue_refund: {_flow(shadow_result)}}}\n"
    return f"""
tools:
  backoffice: {{url: "{url}"}}
task_types:
  refund:
    compare:
      fields:
        action: {{match: exact, critical: true}}
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
      audit_rate: 0.0
    tools:
      allow: [get_order, issue_refund]
      read: [get_*]
{result}"""


def _flow(value: dict[str, Any]) -> str:
    """``value`` as a YAML flow mapping (JSON is one)."""
    import json

    return json.dumps(value)
