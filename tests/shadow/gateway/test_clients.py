"""Real MCP clients through the tool gateway, each against a *typed* write.

The upstream is the SDK ``MCPServer`` of :mod:`tests.clients.backoffice`: its write
``issue_refund`` returns a pydantic ``RefundReceipt``, so it is listed with an
``outputSchema`` whose properties are required, and every client below checks the structured
content of a call's answer against it. Each test runs one shadow case (or, for the last, a
live L2 session) through a real sidecar, with the agent built on a real client library:

- the official MCP Python SDK's ``Client`` (Streamable HTTP, as ``shadow demo`` uses it);
- the official TypeScript SDK (``@modelcontextprotocol/sdk``) in a Node agent process
  (tests/clients/ts/agent.mjs) that serves the agent contract over HTTP;
- pydantic-ai with an offline ``FunctionModel`` and its ``MCPToolset`` on the tools URL;
- the OpenAI Agents SDK with an offline ``Model`` and its ``MCPServerStreamableHttp``, whose
  own retry re-sends a write whose answer came too late (held back by an ingress in front of
  the sidecar, tests/clients/ingress.py): the retry attaches to the captured write;
- the same client on a live L2 session, whose retry of a write held for approval waits on the
  same approval, forwarded once.

The only fake is the LLM (tests/clients/models.py). A case "scores exactly" when its
comparison agrees with the humans', the decision's actions are the one write it captured,
and no write reached the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from shadow.gateway import GATEWAY
from shadow.model import Action, Comparison, ShadowDecision, Verdict
from tests.clients.backoffice import ORDER, RefundReceipt, typed_backoffice, typed_policy
from tests.clients.ingress import Ingress
from tests.clients.models import DECISION, RefundScript
from tests.clients.node_agent import NodeAgent, require_node_agent
from tests.shadow.conftest import AgentServerFactory, Answer, Reply, Sidecar, SidecarFactory
from tests.shadow.gateway.conftest import Upstream, UpstreamFactory

EVENT = "r-1"
REFUND = Action("issue_refund", {"order_id": "o-1", "amount": 42.5})
SHADOW_META = "io.shadow/shadow_result"
# The agent's answer and its tools URL: long bounds, so that a slow shared machine never
# turns into a retried agent call (a fresh case session) in the middle of a test.
SLOW_OK = {"agent_timeout": 60.0, "gateway_session_ttl": 600.0}


# -- helpers ----------------------------------------------------------------------------------


async def typed_case(sc: Sidecar, event_id: str = EVENT) -> None:
    """Case ``event_id`` (order o-1) and the humans' outcome for it: approve, and one refund
    of the order's amount; drained until compared."""
    event = {"event_id": event_id, "task_type": "refund", "payload": {"order_id": "o-1"}}
    outcome = {
        "event_id": event_id,
        "decision": {"action": DECISION},
        "actions": [REFUND.to_json()],
        "decided_by": "ops/jane",
    }
    assert (await sc.post("/v1/events", json_body=event)).status == 202
    assert (await sc.post("/v1/outcomes", json_body=outcome)).status == 202
    await sc.pipeline.drain()


async def scored(sc: Sidecar, event_id: str = EVENT) -> tuple[Comparison, ShadowDecision]:
    """The case's comparison and the agent's decision as stored."""
    comparisons = await sc.pipeline.store.unpublished_comparisons()
    (comparison,) = [c for c in comparisons if c.event_id == event_id]
    pairs = await sc.pipeline.store.pairs_of("refund")
    (decision,) = [row.decision for _, row in pairs if row.decision.event_id == event_id]
    return comparison, decision


async def assert_scores_exactly(sc: Sidecar, up: Upstream, faults: list[str]) -> None:
    """The case agrees with the humans, its actions are the one write its agent's calls
    captured, and no write reached the upstream."""
    assert not faults, "\n".join(faults)
    comparison, decision = await scored(sc)
    assert decision.error is None, decision.error
    assert (comparison.verdict, comparison.mismatches) == (Verdict.AGREE, ()), comparison.fields
    assert decision.tool_calls
    assert decision.actions == (REFUND,)
    assert up.writes() == []
    await sc.app[GATEWAY].flush()
    rows = await sc.pipeline.store.tool_calls(event_id=EVENT)
    captured = [r for r in rows if r["outcome"] == "captured"]
    assert [(r["tool"], r["args"]) for r in captured] == [(REFUND.tool, REFUND.args)]


def describe(exc: BaseException) -> str:
    """An agent's failure in one message, exception groups opened up."""
    return "".join(traceback.format_exception_only(exc)).strip() + "".join(
        f"\n  {describe(inner)}" for inner in getattr(exc, "exceptions", ())
    )


def guarded(
    decide: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
) -> tuple[Answer, list[str]]:
    """An agent answer that records its failures (the test reports them, rather than an
    ``agent_error`` verdict) and then answers without a decision."""
    faults: list[str] = []

    async def answer(body: dict[str, Any]) -> Reply:
        try:
            return Reply(200, await decide(body))
        except Exception as exc:
            faults.append(describe(exc))
            return Reply(200, {"error": "the agent failed"})

    return answer, faults


def assert_shadow_receipt(structured: Any, *, exact: dict[str, Any] | None = None) -> None:
    """What a captured typed write answered: valid against the tool's output schema."""
    RefundReceipt.model_validate(structured, strict=True)
    if exact is not None:
        assert structured == exact


def jsonrpc(request: httpx2.Request) -> dict[str, Any] | None:
    """The JSON-RPC message a client's POST carries, if any."""
    if request.method != "POST":
        return None
    try:
        message = json.loads(request.content)
    except (httpx2.RequestNotRead, ValueError):
        return None
    return message if isinstance(message, dict) else None


def is_write(message: dict[str, Any] | None) -> bool:
    return (
        message is not None
        and message.get("method") == "tools/call"
        and (message.get("params") or {}).get("name") == "issue_refund"
    )


# -- a. the official MCP Python SDK -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SdkWay:
    mode: str = "auto"  # "auto": stateless 2026-07-28; "legacy": the initialize handshake
    suffix: str = ""  # appended to the tools URL
    shadow_result: dict[str, Any] | None = None
    close_after_settle: bool = False  # keep the session open until the case is compared


SDK_WAYS = {
    "stateless": SdkWay(),
    "handshake-closed-after-the-case-settled": SdkWay(mode="legacy", close_after_settle=True),
    "trailing-slash": SdkWay(suffix="/"),
    "mcp-suffix": SdkWay(mode="legacy", suffix="/mcp"),
    "policy-shadow-result": SdkWay(
        shadow_result={"refund_id": "shadow-rf", "amount": 0.0, "status": "issued"}
    ),
}


@pytest.mark.parametrize("way", list(SDK_WAYS.values()), ids=list(SDK_WAYS))
async def test_the_python_sdk_client_scores_a_typed_write_exactly(
    sidecar: SidecarFactory,
    agent_server: AgentServerFactory,
    upstream: UpstreamFactory,
    way: SdkWay,
) -> None:
    up = await upstream(typed_backoffice())
    responses: list[tuple[str, int]] = []  # (method, status) of every HTTP answer it got
    seen: dict[str, Any] = {}
    settled = asyncio.Event()
    sessions: list[asyncio.Task[None]] = []

    async def log(response: httpx2.Response) -> None:
        responses.append((response.request.method, response.status_code))

    async def work(body: dict[str, Any], answered: asyncio.Future[dict[str, Any]]) -> None:
        url = body["tools_url"] + way.suffix
        async with (
            httpx2.AsyncClient(event_hooks={"response": [log]}) as http,
            Client(streamable_http_client(url, http_client=http), mode=way.mode) as tools,
        ):
            listed = {t.name: t for t in (await tools.list_tools()).tools}
            seen["output_schema"] = listed["issue_refund"].output_schema
            order = await tools.call_tool("get_order", {"order_id": body["payload"]["order_id"]})
            amount = order.structured_content["amount"]
            receipt = await tools.call_tool("issue_refund", {"order_id": "o-1", "amount": amount})
            seen["receipt"] = receipt.structured_content
            seen["meta"] = receipt.meta
            answered.set_result({"decision": {"action": DECISION}, "agent_version": "sdk@1"})
            if way.close_after_settle:
                await settled.wait()

    async def decide(body: dict[str, Any]) -> dict[str, Any]:
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        session = asyncio.create_task(work(body, answered))  # owns the client's task group
        sessions.append(session)
        either: list[asyncio.Future[Any]] = [answered, session]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not way.close_after_settle or not answered.done():
            await session  # closed before answering (or failed: raises)
        return answered.result()

    answer, faults = guarded(decide)
    agent = await agent_server(answer)
    policy = typed_policy(up.url, shadow_result=way.shadow_result)
    sc = await sidecar(policy=policy, agent=agent.url, **SLOW_OK)
    await typed_case(sc)
    settled.set()
    for session in sessions:
        try:
            await session
        except Exception as exc:  # failed after answering (closing): reported with the rest
            if describe(exc) not in faults:
                faults.append(describe(exc))

    await assert_scores_exactly(sc, up, faults)
    assert seen["output_schema"]["required"] == ["refund_id", "amount", "status"]
    assert_shadow_receipt(seen["receipt"], exact=way.shadow_result)
    assert (seen["meta"] or {}).get(SHADOW_META) is True
    assert up.calls == [("get_order", {"order_id": "o-1"})]
    if way.mode == "legacy":  # the session's close (after the case settled, where asked)
        assert responses[-1] == ("DELETE", 200)


# -- b. the official TypeScript SDK, in a Node agent ------------------------------------------


@pytest.mark.slow
async def test_the_typescript_sdk_client_scores_a_typed_write_exactly(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """tests/clients/ts/agent.mjs: the SDK ``Client`` with a ``StreamableHTTPClientTransport``
    (the initialize handshake, 2025-11-25) lists the tools, reads, makes the typed write and
    closes its session (DELETE) before answering."""
    node = require_node_agent()
    up = await upstream(typed_backoffice())
    async with NodeAgent(node) as agent:
        sc = await sidecar(policy=typed_policy(up.url), agent=agent.url, **SLOW_OK)
        await typed_case(sc)

    await assert_scores_exactly(sc, up, [str(r["error"]) for r in agent.records if "error" in r])
    (record,) = agent.records
    seen = record["observed"]
    assert seen["tools"] == ["get_order", "issue_refund"]
    assert seen["output_schema"]["required"] == ["refund_id", "amount", "status"]
    assert seen["order"] == ORDER.model_dump()
    assert_shadow_receipt(seen["refund"])
    assert (seen["refund_meta"] or {}).get(SHADOW_META) is True
    assert seen["protocol"] == "2025-11-25"
    assert seen["session"]
    assert seen["exchanges"][-1] == ["DELETE", 200]
    assert seen["closed"]


# -- c. pydantic-ai ---------------------------------------------------------------------------


@pytest.mark.slow  # importing pydantic-ai and FastMCP's client takes seconds
async def test_pydantic_ai_with_its_mcp_toolset_scores_a_typed_write_exactly(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.mcp import MCPToolset

    from tests.clients.models import scripted_function_model

    up = await upstream(typed_backoffice())
    scripts: list[RefundScript] = []

    async def decide(body: dict[str, Any]) -> dict[str, Any]:
        script = RefundScript(body["payload"]["order_id"])
        scripts.append(script)
        toolset: MCPToolset[None] = MCPToolset(body["tools_url"], tool_error_behavior="error")
        agent = Agent(scripted_function_model(script), toolsets=[toolset])
        async with agent:
            run = await agent.run(f"Refund case {body['event_id']}: approve or deny?")
        return {"decision": {"action": run.output}, "agent_version": "pydantic-ai@1"}

    answer, faults = guarded(decide)
    agent = await agent_server(answer)
    sc = await sidecar(policy=typed_policy(up.url), agent=agent.url, **SLOW_OK)
    await typed_case(sc)

    await assert_scores_exactly(sc, up, faults)
    (script,) = scripts
    assert script.offered[0] == ["get_order", "issue_refund"]
    assert script.returns["get_order"] == ORDER.model_dump()
    assert_shadow_receipt(script.returns["issue_refund"])


# -- d. the OpenAI Agents SDK, retrying a write that timed out at the client ------------------


def agents_http_factory(
    on_request: Callable[[httpx2.Request], Awaitable[None]],
) -> Callable[..., httpx2.AsyncClient]:
    """The Agents SDK's ``httpx_client_factory`` with a request hook (to see what it sends)."""

    def factory(
        headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers=headers,
            timeout=timeout if timeout is not None else httpx2.Timeout(30.0),
            auth=auth,
            follow_redirects=False,
            event_hooks={"request": [on_request]},
        )

    return factory


@pytest.mark.slow
async def test_the_openai_agents_sdk_retries_a_timed_out_write_and_it_is_captured_once(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    """The agent reaches the sidecar through an ingress (the sidecar's ``public_url``) that
    holds the answer to the write's first ``tools/call`` until the client sends it again:
    the first call times out at the client (its session read timeout) after the gateway
    captured it, and the SDK's own retry (``max_retry_attempts``) sends the identical call
    on a fresh MCP session of the same tools URL. The gateway attaches the retry to the
    captured write: it answers the same result, and the case has one write."""
    from agents import Agent, RunConfig, Runner
    from agents.mcp import MCPServerStreamableHttp

    from tests.clients.models import ScriptedAgentsModel

    up = await upstream(typed_backoffice())
    scripts: list[RefundScript] = []

    async def decide(body: dict[str, Any]) -> dict[str, Any]:
        script = RefundScript(body["payload"]["order_id"])
        scripts.append(script)
        server = MCPServerStreamableHttp(
            params={"url": body["tools_url"]},
            client_session_timeout_seconds=2.0,
            max_retry_attempts=2,
            retry_backoff_seconds_base=0.0,
            use_structured_content=True,
            cache_tools_list=True,
            failure_error_function=None,  # a failed tool call fails the run, not a model retry
        )
        async with server:
            agent = Agent(name="refunds", model=ScriptedAgentsModel(script), mcp_servers=[server])
            run = await Runner.run(
                agent,
                f"Refund case {body['event_id']}: approve or deny?",
                run_config=RunConfig(tracing_disabled=True),
            )
        return {"decision": {"action": run.final_output}, "agent_version": "openai-agents@1"}

    answer, faults = guarded(decide)
    agent = await agent_server(answer)
    async with Ingress(is_write) as ingress:
        sc = await sidecar(
            policy=typed_policy(up.url), agent=agent.url, public_url=ingress.url, **SLOW_OK
        )
        ingress.target = sc.url
        await typed_case(sc)

    await assert_scores_exactly(sc, up, faults)
    assert ingress.held == 1  # the first answer was late ...
    assert len(ingress.matched) >= 2  # ... so the client sent the write again
    first, retry = ingress.matched[0]["params"], ingress.matched[1]["params"]
    assert (first["name"], first["arguments"]) == (retry["name"], retry["arguments"])
    rows = await sc.pipeline.store.tool_calls(event_id=EVENT)
    assert [r["outcome"] for r in rows if r["tool"] == "issue_refund"][:2] == [
        "captured",
        "repeated",
    ]
    (script,) = scripts
    assert_shadow_receipt(script.returns["issue_refund"])


# -- e. a live L2 write retried by the client -------------------------------------------------


@pytest.mark.slow
async def test_a_live_l2_write_retried_by_the_client_is_one_approval_forwarded_once(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """The host opens a live session at L2; the client's write is held for approval, times
    out at the client (its read timeout is shorter than the gateway's approval wait) and is
    sent again by the client's own retry. One approval, forwarded once, answers the retry."""
    from agents.mcp import MCPServerStreamableHttp

    up = await upstream(typed_backoffice())
    sc = await sidecar(
        policy=typed_policy(up.url, start="L2"), gateway_approval_wait=60.0, **SLOW_OK
    )
    session = await sc.post(
        "/v1/sessions", json_body={"task_type": "refund", "event_id": "e-1"}, headers=sc.admin
    )
    assert session.status == 200, session.body
    assert session.body["level"] == "L2"
    sent: list[dict[str, Any]] = []
    retried = asyncio.Event()

    async def on_request(request: httpx2.Request) -> None:
        message = jsonrpc(request)
        if is_write(message):
            assert message is not None
            sent.append(message)
            if len(sent) >= 2:
                retried.set()

    async def pending() -> list[dict[str, Any]]:
        res = await sc.get("/v1/approvals?status=all", headers=sc.admin)
        assert res.status == 200, res.body
        return list(res.body["approvals"])

    client = MCPServerStreamableHttp(
        params={
            "url": session.body["tools_url"],
            "httpx_client_factory": agents_http_factory(on_request),
        },
        client_session_timeout_seconds=2.0,
        max_retry_attempts=3,
        retry_backoff_seconds_base=0.0,
        use_structured_content=True,
    )
    async with client:
        call = asyncio.create_task(client.call_tool("issue_refund", REFUND.args))
        try:
            async with asyncio.timeout(60):  # a bound against hangs, not a timing
                await retried.wait()
            held = await pending()
            assert [(a["tool"], a["args"], a["status"]) for a in held] == [
                ("issue_refund", REFUND.args, "pending")
            ]
            approved = await sc.post(
                f"/v1/approvals/{held[0]['id']}/approve",
                json_body={"actor": "ops/jane", "reason": "checked"},
                headers=sc.admin,
            )
            assert approved.status == 200, approved.body
            result = await call
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call

    assert not result.is_error, result
    assert result.structured_content == {"refund_id": "rf-1", "amount": 42.5, "status": "issued"}
    (approval,) = await pending()
    assert (approval["status"], approval["decided_by"]) == ("forwarded", "ops/jane")
    assert up.writes() == [(REFUND.tool, REFUND.args)]
    await sc.app[GATEWAY].flush()
    rows = await sc.pipeline.store.tool_calls()
    # One hold; the retry attached to it (its row says so), and the approval forwarded it.
    outcomes = [r["outcome"] for r in rows]
    assert (outcomes.count("held"), outcomes.count("approved")) == (1, 1), outcomes
    assert set(outcomes) == {"held", "repeated", "approved"}, outcomes
    first, retry = sent[0]["params"], sent[1]["params"]
    assert (first["name"], first["arguments"]) == (retry["name"], retry["arguments"])
