"""The tool gateway's spans (shadow/gateway/core.py, shadow/tracing.py): each tools/call an
agent makes through a case's tools URL is a span of that case's trace, parented to the case
even when the agent propagates nothing; a real agent with the official MCP SDK's client, a
real upstream, a real OTLP/HTTP receiver (tests/otlp_sink.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from mcp import Client
from mcp_types import RequestParamsMeta

from shadow.otlp import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, STATUS_ERROR
from shadow.tracing import case_ids
from tests.otlp_sink import otlp_sink
from tests.shadow.conftest import AgentServerFactory, Reply, SidecarFactory
from tests.shadow.gateway.conftest import UpstreamFactory, gateway_policy
from tests.shadow.test_tracing import (
    PHOENIX_LIKE,
    case_and_outcome,
    metric,
    of_trace,
    otel,
    wait_for,
)


async def test_one_trace_per_case_with_the_agent_call_its_tool_calls_and_the_verdict(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()

    async def agent(body: dict[str, Any]) -> Reply:
        # The SDK client propagates no trace context: the gateway parents the calls itself.
        async with Client(body["tools_url"]) as client:
            order = await client.call_tool("get_order", {"order_id": "o-1"})
            amount = order.structured_content["amount"] - 2.5  # the human refunds 42.5
            await client.call_tool("issue_refund", {"order_id": "o-1", "amount": amount})
        return Reply(200, {"decision": {"action": "approve"}, "agent_version": "a@1"})

    async with otlp_sink() as sink:
        agent_srv = await agent_server(agent)
        sc = await sidecar(
            policy=gateway_policy(up.url),
            agent=agent_srv.url,
            environ=otel(sink.url),
            trace_url=PHOENIX_LIKE,
        )
        await case_and_outcome(sc)
        trace, ingest_id, agent_id = (x.hex() for x in case_ids("shadow-test", "r-1"))
        await wait_for(lambda: "evaluate refund" in of_trace(sink, trace), "the verdict's span")
        spans = of_trace(sink, trace)

        # The agent was handed the invoke_agent span as its parent.
        assert agent_srv.requests[0].headers["traceparent"] == f"00-{trace}-{agent_id}-01"
        (ingest,) = spans["ingest refund"]
        assert (ingest.span_id, ingest.parent_id, ingest.kind) == (ingest_id, "", KIND_INTERNAL)
        assert ingest.attributes["shadow.event_id"] == "r-1"
        assert ingest.attributes["shadow.source"] == "http"
        assert ingest.resource["service.name"] == "shadow-test"

        (call,) = spans["invoke_agent refund"]
        assert (call.span_id, call.parent_id, call.kind) == (agent_id, ingest_id, KIND_CLIENT)
        assert call.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert call.attributes["gen_ai.agent.name"] == "refund"
        assert call.attributes["gen_ai.agent.version"] == "a@1"
        assert call.attributes["gen_ai.provider.name"] == "shadow"
        assert call.attributes["shadow.tool_calls"] is True
        assert call.end_ns >= call.start_ns >= ingest.start_ns

        (read,) = spans["tools/call get_order"]
        (write,) = spans["tools/call issue_refund"]
        for tool_span, tool, outcome in (
            (read, "get_order", "forwarded"),
            (write, "issue_refund", "captured"),
        ):
            assert tool_span.parent_id == agent_id  # parented although nothing was propagated
            assert tool_span.kind == KIND_SERVER
            assert tool_span.attributes["mcp.method.name"] == "tools/call"
            assert tool_span.attributes["gen_ai.tool.name"] == tool
            assert tool_span.attributes["gen_ai.operation.name"] == "execute_tool"
            assert tool_span.attributes["shadow.tool.outcome"] == outcome
            assert "error.type" not in tool_span.attributes
            assert call.start_ns <= tool_span.start_ns <= tool_span.end_ns <= call.end_ns
        assert read.attributes["shadow.tool.class"] == "read"
        assert write.attributes["shadow.tool.class"] == "write"

        (verdict,) = spans["evaluate refund"]
        assert verdict.parent_id == agent_id
        ((name, result),) = verdict.events
        assert name == "gen_ai.evaluation.result"
        assert result["gen_ai.evaluation.name"] == "human_agreement"
        assert result["gen_ai.evaluation.score.label"] == "disagree"
        assert result["gen_ai.evaluation.score.value"] == 0.0
        assert "40.0" in result["gen_ai.evaluation.explanation"]
        assert "42.5" in result["gen_ai.evaluation.explanation"]
        assert set(spans) == {
            "ingest refund",
            "invoke_agent refund",
            "tools/call get_order",
            "tools/call issue_refund",
            "evaluate refund",
        }
        assert {s.trace_id for s in sink.spans} == {trace}  # one case, one trace

        case = await sc.get("/v1/cases/r-1", headers=sc.admin)
        assert case.body["trace_id"] == trace
        assert case.body["trace_url"] == PHOENIX_LIKE.replace("{trace_id}", trace)
        assert [c["trace_id"] for c in case.body["comparisons"]] == [trace]
        assert metric(sc, "shadow_trace_spans_exported_total") == 5


async def test_an_agents_own_span_parents_its_tool_call_and_errors_are_typed(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    trace = case_ids("shadow-test", "r-1")[0].hex()

    async def agent(body: dict[str, Any]) -> Reply:
        # An instrumented agent: its own span (a child of the traceparent it was sent),
        # propagated in params._meta as the MCP semantic conventions say.
        # (RequestParamsMeta is an open TypedDict, which mypy does not read as open.)
        mine = cast(RequestParamsMeta, {"traceparent": f"00-{trace}-00000000000000aa-01"})
        elsewhere = cast(RequestParamsMeta, {"traceparent": f"00-{'ab' * 16}-00000000000000bb-01"})
        async with Client(body["tools_url"]) as client:
            await client.call_tool("get_order", {"order_id": "o-1"}, meta=mine)
            await client.call_tool(
                "issue_refund", {"order_id": "o-1", "amount": 42.5}, meta=elsewhere
            )
            refused = await client.call_tool("lookup_customer", {"customer_id": "c-1"})
            assert refused.is_error
        return Reply(200, {"decision": {"action": "approve"}})

    async with otlp_sink() as sink:
        agent_srv = await agent_server(agent)
        sc = await sidecar(
            policy=gateway_policy(up.url), agent=agent_srv.url, environ=otel(sink.url)
        )
        await case_and_outcome(sc)
        await wait_for(lambda: "evaluate refund" in of_trace(sink, trace), "the verdict's span")
        spans = of_trace(sink, trace)
        agent_id = case_ids("shadow-test", "r-1")[2].hex()
        (read,) = spans["tools/call get_order"]
        assert read.parent_id == "00000000000000aa"  # the agent's span, in the case's trace
        (write,) = spans["tools/call issue_refund"]
        assert write.parent_id == agent_id  # another trace: the case keeps it, linked
        assert write.links == [("ab" * 16, "00000000000000bb")]
        (refused,) = spans["tools/call lookup_customer"]
        assert refused.attributes["shadow.tool.outcome"] == "refused"
        assert refused.status == STATUS_ERROR
        assert refused.attributes["error.type"] == "-32001"
        assert refused.attributes["rpc.response.status_code"] == "-32001"
        assert "allowlist" in refused.status_message


# -- a real backend: Arize Phoenix ----------------------------------------------------------------

PHOENIX = Path(__file__).resolve().parents[3] / ".venv-phoenix" / "bin" / "phoenix"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def phoenix(tmp_path: Path) -> AsyncIterator[str]:
    """Arize Phoenix (PyPI ``arize-phoenix``, in .venv-phoenix: `make tools` makes it) serving
    on free loopback ports with its working directory (its SQLite database) under tmp;
    yields its base URL. Missing: skipped locally, a failure under CI=true."""
    if not PHOENIX.exists():
        message = f"{PHOENIX} not found; make tools installs arize-phoenix there"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
        "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{tmp_path / 'phoenix' / 'phoenix.db'}",
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    (tmp_path / "phoenix").mkdir()
    log = (tmp_path / "phoenix.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(PHOENIX), "serve", env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(1800):  # at most 180 s: a bound against hangs, not a timing
                if proc.returncode is not None:
                    break
                try:
                    async with session.get(f"{url}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("Phoenix did not start")
        assert proc.returncode is None, (tmp_path / "phoenix.log").read_text()[-2000:]
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def phoenix_spans(url: str, project: str) -> list[dict[str, Any]]:
    """Every span Phoenix holds for ``project`` (its REST API, page by page)."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    async with aiohttp.ClientSession() as session:
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            async with session.get(f"{url}/v1/projects/{project}/spans", params=params) as resp:
                if resp.status == 404:  # the project appears with its first span
                    return []
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            out += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return out


@pytest.mark.slow
async def test_phoenix_receives_one_trace_per_case_with_the_agent_tools_and_verdict(
    sidecar: SidecarFactory,
    agent_server: AgentServerFactory,
    upstream: UpstreamFactory,
    phoenix: str,
) -> None:
    up = await upstream()

    async def agent(body: dict[str, Any]) -> Reply:
        async with Client(body["tools_url"]) as client:
            order = await client.call_tool("get_order", {"order_id": "o-1"})
            amount = order.structured_content["amount"]
            if body["event_id"] == "r-2":
                amount -= 2.5  # the second case disagrees with the humans
            await client.call_tool("issue_refund", {"order_id": "o-1", "amount": amount})
        return Reply(200, {"decision": {"action": "approve"}, "agent_version": "a@1"})

    agent_srv = await agent_server(agent)
    env = otel(phoenix, OTEL_RESOURCE_ATTRIBUTES="openinference.project.name=shadow-test")
    sc = await sidecar(policy=gateway_policy(up.url), agent=agent_srv.url, environ=env)
    await case_and_outcome(sc, "r-1")
    await case_and_outcome(sc, "r-2")
    traces = {e: case_ids("shadow-test", e)[0].hex() for e in ("r-1", "r-2")}

    spans: list[dict[str, Any]] = []
    for _ in range(600):  # at most 60 s: Phoenix writes what it receives in the background
        spans = await phoenix_spans(phoenix, "shadow-test")
        if sum(1 for s in spans if s["name"].startswith("evaluate")) == 2:
            break
        await asyncio.sleep(0.1)
    assert {s["context"]["trace_id"] for s in spans} == set(traces.values())
    for event_id, trace in traces.items():
        mine = {s["name"]: s for s in spans if s["context"]["trace_id"] == trace}
        assert set(mine) == {
            "ingest refund",
            "invoke_agent refund",
            "tools/call get_order",
            "tools/call issue_refund",
            "evaluate refund",
        }, event_id
        call = mine["invoke_agent refund"]
        assert call["attributes"]["gen_ai.operation.name"] == "invoke_agent"
        assert call["parent_id"] == mine["ingest refund"]["context"]["span_id"]
        for tool in ("get_order", "issue_refund"):
            tool_span = mine[f"tools/call {tool}"]
            assert tool_span["parent_id"] == call["context"]["span_id"]
            assert tool_span["attributes"]["mcp.method.name"] == "tools/call"
            assert tool_span["attributes"]["gen_ai.tool.name"] == tool
        verdict = mine["evaluate refund"]
        assert verdict["parent_id"] == call["context"]["span_id"]
        (event,) = verdict["events"]
        assert event["name"] == "gen_ai.evaluation.result"
        label = event["attributes"]["gen_ai.evaluation.score.label"]
        assert label == ("agree" if event_id == "r-1" else "disagree")
        assert event["attributes"]["gen_ai.evaluation.name"] == "human_agreement"
    disagreement = next(
        s
        for s in spans
        if s["name"] == "evaluate refund" and s["context"]["trace_id"] == traces["r-2"]
    )
    assert "40.0" in disagreement["events"][0]["attributes"]["gen_ai.evaluation.explanation"]
