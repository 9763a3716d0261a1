"""The demo's back office as a real MCP server, and the demo agent that works through it.

This is the one module of :mod:`shadow.demo` that does I/O (the rest is pure).

:class:`BackOffice` is an official-SDK ``MCPServer`` served with uvicorn on a free loopback
port (an async context manager; :attr:`BackOffice.url` once entered). It holds the systems of
record of the demo's cases and offers, per task type, one read tool and the write tools the
humans' actions use:

=================  ==============  =====================================================
task type          read            writes
=================  ==============  =====================================================
refund_request     ``get_order``   ``issue_refund``, ``send_email``, ``open_case``
invoice_match      ``get_invoice`` ``approve_payment``, ``flag_exception``
claim_appeal       ``get_claim``   ``overturn_denial``, ``uphold_denial``,
                                   ``refer_to_medical_director``
=================  ==============  =====================================================

Reads carry ``readOnlyHint``; every tool counts the calls it receives
(:attr:`BackOffice.calls`). A write that arrives is carried out on the records (an order
refunded, an invoice paid, ...) and kept in :attr:`BackOffice.writes`: in ``shadow demo`` the
sidecar's tool gateway must capture every write, so the demo checks that none arrived.
Reads answer what a system of record holds, never what the policy redacts (e-mail, IBAN,
the member's name and date of birth).

:class:`ToolAgent` (``shadow.demo.backoffice:tool_agent``) is the reference agent with tools:
for a ``share`` of the cases whose request carries a ``tools_url`` (chosen by a hash of the
event id), it opens the SDK ``Client`` on that URL, reads the case's record, decides with
:func:`shadow.demo.reference_agent`'s rules on it, and makes its writes as tool calls (the
same actions its answer lists). The other cases are answered without tools, and so is a
repeated case's extra try (the request's ``repeat``, :mod:`shadow.noise`): the demo's tool
counts are its cases' first answers, one session each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import zlib
from collections import Counter
from collections.abc import Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self

import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

from shadow.demo import reference_agent
from shadow.demo.cases import JSON, DemoCase

__all__ = [
    "DEFAULT_TOOL_SHARE",
    "READ_TOOLS",
    "WRITE_TOOLS",
    "BackOffice",
    "ToolAgent",
    "tool_agent",
]

#: Per task type, the read tool the agent looks its case up with.
READ_TOOLS: Final[Mapping[str, str]] = {
    "refund_request": "get_order",
    "invoice_match": "get_invoice",
    "claim_appeal": "get_claim",
}
#: Per task type, the write tools its actions use.
WRITE_TOOLS: Final[Mapping[str, tuple[str, ...]]] = {
    "refund_request": ("issue_refund", "send_email", "open_case"),
    "invoice_match": ("approve_payment", "flag_exception"),
    "claim_appeal": ("overturn_denial", "uphold_denial", "refer_to_medical_director"),
}
#: The share of cases the demo agent works through its tools (the others it answers from
#: the request alone): every MCP call crosses the sidecar's HTTP endpoint and, for reads,
#: the back office's, so tools on every case would make ``shadow demo`` several times slower.
DEFAULT_TOOL_SHARE: Final = 0.05
# The protocol revision the agent's client pins: the sidecar speaks it, and a pinned
# revision spares the ``server/discover`` probe on every case's fresh session.
_REVISION: Final = "2026-07-28"

_TIMEOUT: Final = 30.0  # seconds, per request of the agent's MCP client

_READ: Final = ToolAnnotations(read_only_hint=True)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every case's client: building one loads the CA store, which costs
    far more than the loopback calls themselves (the tools URL is plain HTTP in the demo, but
    an agent pointed at an https sidecar verifies it the same way)."""
    return ssl.create_default_context()


class BackOffice:
    """The systems of record of ``cases`` behind one MCP server (see the module docstring).

    ``calls``: tool name -> calls received; ``writes``: (tool, arguments) of each write
    received, in order."""

    def __init__(self, cases: Iterable[DemoCase], *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.orders: dict[str, JSON] = {}
        self.invoices: dict[str, JSON] = {}
        self.claims: dict[str, JSON] = {}
        for case in cases:
            p = case.event["payload"]
            if case.task_type == "refund_request":
                self.orders[p["order_id"]] = _order_record(p)
            elif case.task_type == "invoice_match":
                self.invoices[p["invoice"]["id"]] = _invoice_record(p)
            elif case.task_type == "claim_appeal":
                self.claims[p["claim"]["id"]] = _claim_record(p)
        self.calls: Counter[str] = Counter()
        self.writes: list[tuple[str, JSON]] = []
        self.server = MCPServer("demo-backoffice", log_level="WARNING")
        self._uvicorn: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.url = ""
        self._register()

    @property
    def reads_received(self) -> int:
        return sum(self.calls[t] for t in READ_TOOLS.values())

    @property
    def writes_received(self) -> int:
        return len(self.writes)

    # -- serving ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Serve on ``host`` at a free port (bound here, so no other process can take it)."""
        if self._task is not None:
            return
        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP,
        # and without it each keep-alive response waits out a delayed ACK (~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock = sock
        try:
            sock.bind((self.host, 0))
            port = sock.getsockname()[1]
            app = self.server.streamable_http_app(json_response=True)
            server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
            self._uvicorn = server
            self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
            for _ in range(3000):  # at most 30 s: a bound against a hang, not a timing
                if server.started or self._task.done():
                    break
                await asyncio.sleep(0.01)
            if not server.started:
                raise RuntimeError("the demo back office did not start")
        except BaseException:
            await self.close()
            raise
        self.url = f"http://{self.host}:{port}/mcp"

    async def close(self) -> None:
        """Idempotent: stops serving, waits for the server to finish, closes its socket."""
        server, task, sock = self._uvicorn, self._task, self._sock
        self._uvicorn, self._task, self._sock = None, None, None
        if server is not None:
            server.should_exit = True
        if task is not None:
            # SystemExit: how uvicorn ends a server whose start-up failed.
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await task
        if sock is not None:
            sock.close()

    # -- tools --------------------------------------------------------------------------------

    def _write(self, tool: str, args: JSON) -> None:
        self.calls[tool] += 1
        self.writes.append((tool, args))

    def _register(self) -> None:
        tool = self.server.tool

        @tool(annotations=_READ)
        def get_order(order_id: str) -> dict[str, Any]:
            """An order and its customer's standing (no contact details)."""
            self.calls["get_order"] += 1
            return _found(self.orders, "order", order_id)

        @tool()
        def issue_refund(order_id: str, amount: float, currency: str) -> dict[str, Any]:
            """Refund ``amount`` of an order to the customer's payment method."""
            self._write(
                "issue_refund", {"order_id": order_id, "amount": amount, "currency": currency}
            )
            order = _found(self.orders, "order", order_id)
            order["refunded"] = round(float(order.get("refunded", 0.0)) + amount, 2)
            return {"order_id": order_id, "refunded": amount, "currency": currency}

        @tool()
        def send_email(template: str) -> dict[str, Any]:
            """Send the customer one of the refund desk's templated e-mails."""
            self._write("send_email", {"template": template})
            return {"sent": template}

        @tool()
        def open_case(queue: str, order_id: str) -> dict[str, Any]:
            """Open a case for a person in ``queue`` (risk, customer_care, ...)."""
            self._write("open_case", {"queue": queue, "order_id": order_id})
            return {"queue": queue, "case": f"CASE-{order_id}"}

        @tool(annotations=_READ)
        def get_invoice(invoice_id: str) -> dict[str, Any]:
            """An invoice, its purchase order and the bank feed's candidate payment lines."""
            self.calls["get_invoice"] += 1
            return _found(self.invoices, "invoice", invoice_id)

        @tool()
        def approve_payment(invoice_id: str, payment_ids: list[str]) -> dict[str, Any]:
            """Book the payment lines as settling the invoice."""
            self._write("approve_payment", {"invoice_id": invoice_id, "payment_ids": payment_ids})
            _found(self.invoices, "invoice", invoice_id)["settled_by"] = payment_ids
            return {"invoice_id": invoice_id, "status": "settled"}

        @tool()
        def flag_exception(invoice_id: str, exception: str) -> dict[str, Any]:
            """Put the invoice on the exceptions list (short_paid, unpaid, over_po)."""
            self._write("flag_exception", {"invoice_id": invoice_id, "exception": exception})
            _found(self.invoices, "invoice", invoice_id)["exception"] = exception
            return {"invoice_id": invoice_id, "status": "exception"}

        @tool(annotations=_READ)
        def get_claim(claim_id: str) -> dict[str, Any]:
            """A denied claim, the member's coverage and the appeal's documentation."""
            self.calls["get_claim"] += 1
            return _found(self.claims, "claim", claim_id)

        @tool()
        def overturn_denial(claim_id: str, payable_amount: float) -> dict[str, Any]:
            """Overturn the denial and pay ``payable_amount``."""
            self._write("overturn_denial", {"claim_id": claim_id, "payable_amount": payable_amount})
            _found(self.claims, "claim", claim_id)["appeal_result"] = "overturned"
            return {"claim_id": claim_id, "paid": payable_amount}

        @tool()
        def uphold_denial(claim_id: str) -> dict[str, Any]:
            """Uphold the denial: the appeal is closed unpaid."""
            self._write("uphold_denial", {"claim_id": claim_id})
            _found(self.claims, "claim", claim_id)["appeal_result"] = "upheld"
            return {"claim_id": claim_id, "status": "upheld"}

        @tool()
        def refer_to_medical_director(claim_id: str) -> dict[str, Any]:
            """Send the appeal to the medical director's review queue."""
            self._write("refer_to_medical_director", {"claim_id": claim_id})
            _found(self.claims, "claim", claim_id)["appeal_result"] = "referred"
            return {"claim_id": claim_id, "status": "referred"}


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the demo's process owns Ctrl-C (which ends the
    demo, and the demo closes this server)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _found(records: dict[str, JSON], kind: str, key: str) -> JSON:
    record = records.get(key)
    if record is None:
        raise ValueError(f"no {kind} {key!r}")  # the SDK answers it as a tool error
    return record


def _order_record(p: Mapping[str, Any]) -> JSON:
    customer = {k: v for k, v in p["customer"].items() if k != "email"}
    fields = ("order_id", "amount", "currency", "days_since_purchase", "item_category")
    return {**{k: p[k] for k in fields}, "customer": customer, "status": "delivered"}


def _invoice_record(p: Mapping[str, Any]) -> JSON:
    return {
        "invoice": dict(p["invoice"]),
        "purchase_order": dict(p["purchase_order"]),
        "payments": [dict(x) for x in p["payments"]],
        "tolerance": dict(p["tolerance"]),
    }


def _claim_record(p: Mapping[str, Any]) -> JSON:
    member = {k: v for k, v in p["member"].items() if k not in ("name", "date_of_birth")}
    return {
        "claim": dict(p["claim"]),
        "member": member,
        "coverage": dict(p["coverage"]),
    }


# -- the agent with tools ----------------------------------------------------------------------

_LOOKUP: Final[Mapping[str, tuple[str, Any]]] = {
    "refund_request": ("order_id", lambda p: p["order_id"]),
    "invoice_match": ("invoice_id", lambda p: p["invoice"]["id"]),
    "claim_appeal": ("claim_id", lambda p: p["claim"]["id"]),
}


class ToolAgent:
    """The reference agent working a ``share`` of its cases through the request's tools URL
    (see the module docstring). Async; an in-process agent (``module:callable``)."""

    def __init__(self, share: float = DEFAULT_TOOL_SHARE) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.share = share

    def uses_tools(self, event_id: str) -> bool:
        """Whether this case is in the sampled share (a hash of its event id)."""
        return zlib.crc32(event_id.encode()) % 10_000 < round(self.share * 10_000)

    async def __call__(self, request: Mapping[str, Any]) -> dict[str, Any]:
        url = request.get("tools_url")
        task_type = request.get("task_type")
        if (
            not isinstance(url, str)
            or task_type not in _LOOKUP
            or request.get("repeat") is not None
            or not self.uses_tools(str(request.get("event_id")))
        ):
            return reference_agent(request)
        payload = request.get("payload")
        if not isinstance(payload, Mapping):
            raise ValueError("the demo agent needs a payload object")
        arg, key = _LOOKUP[str(task_type)]
        async with (
            httpx2.AsyncClient(verify=_tls(), timeout=httpx2.Timeout(_TIMEOUT)) as http,
            Client(
                streamable_http_client(url, http_client=http), mode=_REVISION, cache=None
            ) as tools,
        ):
            found = await tools.call_tool(READ_TOOLS[str(task_type)], {arg: key(payload)})
            record = found.structured_content
            if found.is_error or not isinstance(record, dict):
                raise ValueError(f"{READ_TOOLS[str(task_type)]} failed: {found.content!r}")
            # The system of record's answer wins over what the event said.
            answer = reference_agent({**request, "payload": {**payload, **record}})
            for action in answer["actions"]:
                done = await tools.call_tool(action["tool"], action["args"])
                if done.is_error:
                    raise ValueError(f"{action['tool']} failed: {done.content!r}")
        return answer


tool_agent: Final = ToolAgent()
"""``shadow.demo.backoffice:tool_agent``, the agent of ``shadow demo``."""
