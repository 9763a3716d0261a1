"""The tool gateway end to end, with the official MCP SDK on both sides: an HTTP agent that
follows the agent contract and opens the SDK's ``Client`` on its ``tools_url``, and an
upstream built with the SDK's ``MCPServer`` that records every call it receives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from mcp import Client, MCPError

from shadow.gateway import GATEWAY
from tests.shadow.conftest import (
    AgentServerFactory,
    HttpResult,
    Reply,
    Sidecar,
    SidecarFactory,
    metric,
)
from tests.shadow.gateway.conftest import UpstreamFactory, backoffice, gateway_policy

CALL_REFUND = {"name": "issue_refund", "arguments": {"order_id": "o-1", "amount": 1.0}}
MODERN = "2026-07-28"


async def rpc(
    sc: Sidecar,
    url: str,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> HttpResult:
    """One raw stateless (2026-07-28) request, or ``body`` as given."""
    if body is None:
        meta = {
            **(params or {}).get("_meta", {}),
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": method,
            "params": {**(params or {}), "_meta": meta},
        }
    hdrs = {"MCP-Protocol-Version": MODERN, "Accept": "application/json, text/event-stream"}
    hdrs.update(headers or {})
    return await sc.request("POST", url.removeprefix(sc.url), json_body=body, headers=hdrs)


def session_body(event_id: str, task_type: str = "refund") -> dict[str, str]:
    return {"task_type": task_type, "event_id": event_id}


async def live_url(sc: Sidecar, event_id: str) -> str:
    res = await sc.post("/v1/sessions", json_body=session_body(event_id), headers=sc.admin)
    assert res.status == 200, res.body
    return str(res.body["tools_url"])


async def set_level(sc: Sidecar, level: str) -> None:
    res = await sc.put("/v1/autonomy/refund", json_body={"level": level}, headers=sc.admin)
    assert res.status == 200, res.body


async def refund(url: str, amount: float = 42.5, *, mode: str = "auto") -> Any:
    """The result of one issue_refund call, or the MCPError it was answered with."""
    async with Client(url, mode=mode) as client:
        try:
            return await client.call_tool("issue_refund", {"order_id": "o-1", "amount": amount})
        except MCPError as exc:
            return exc


async def refund_case(sc: Sidecar) -> None:
    """Case r-1 (order o-1) and the humans' outcome for it, a refund of 42.5; until compared."""
    event = {"event_id": "r-1", "task_type": "refund", "payload": {"order": "o-1"}}
    outcome = {
        "event_id": "r-1",
        "decision": {"action": "approve"},
        "actions": [{"tool": "issue_refund", "args": {"order_id": "o-1", "amount": 42.5}}],
    }
    assert (await sc.post("/v1/events", json_body=event)).status == 202
    assert (await sc.post("/v1/outcomes", json_body=outcome)).status == 202
    await sc.pipeline.drain()


def refused(answer: Any, why: str) -> bool:
    return isinstance(answer, MCPError) and why in str(answer)


async def tool_rows(sc: Sidecar, event_id: str | None = None) -> list[dict[str, Any]]:
    await sc.app[GATEWAY].flush()
    return await sc.pipeline.store.tool_calls(event_id=event_id)


# -- shadow ------------------------------------------------------------------------------------


async def test_in_shadow_reads_reach_the_upstream_and_writes_are_compared_not_forwarded(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    seen: list[dict[str, Any]] = []

    async def agent(body: dict[str, Any]) -> Reply:
        async with Client(body["tools_url"]) as client:
            order = await client.call_tool("get_order", {"order_id": "o-1"})
            amount = order.structured_content["amount"]
            answer = await client.call_tool("issue_refund", {"order_id": "o-1", "amount": amount})
            seen.append({"order": order.structured_content, "refund": answer.structured_content})
        # The answer lists no action: the calls it made are what is compared.
        return Reply(200, {"decision": {"action": "approve"}, "agent_version": "a@1"})

    agent_srv = await agent_server(agent)
    sc = await sidecar(policy=gateway_policy(up.url), agent=agent_srv.url)
    await refund_case(sc)

    request = agent_srv.requests[0]
    assert request.body["tools_url"] == request.headers["X-Shadow-Tools-Url"]
    assert seen == [
        {
            "order": {"order_id": "o-1", "amount": 42.5, "status": "delivered"},
            "refund": {"status": "recorded", "shadow": True},
        }
    ]
    assert up.calls == [("get_order", {"order_id": "o-1"})]  # zero writes reached it
    agreement = await sc.agreement()
    assert agreement["task_types"]["refund"]["agree"] == 1
    (comparison,) = await sc.pipeline.store.unpublished_comparisons()
    # The answer has no ``actions`` key: it declared nothing, so there is nothing to note.
    assert [f for f in comparison.fields if f.path == "actions.declared"] == []
    rows = await tool_rows(sc, "r-1")
    assert [(r["tool"], r["class"], r["outcome"]) for r in rows] == [
        ("get_order", "read", "forwarded"),
        ("issue_refund", "write", "captured"),
    ]
    # The session closed when the agent answered: the URL works no more.
    late = await rpc(sc, request.body["tools_url"], "tools/call", CALL_REFUND)
    assert late.status == 404
    assert "closed" in late.body["error"]["message"]
    assert up.writes() == []


async def test_a_retried_agent_call_compares_only_the_kept_attempts_writes(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """The first attempt writes through its tools URL, then its connection drops (a transport
    error, retried); the retry writes again and answers. The comparison sees one write, and
    the abandoned attempt's tools URL works no more."""
    up = await upstream()
    urls: list[str] = []

    async def decide(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        urls.append(body["tools_url"])
        async with Client(body["tools_url"]) as client:
            await client.call_tool("issue_refund", {"order_id": "o-1", "amount": 42.5})
        if len(urls) == 1:
            assert request.transport is not None
            request.transport.close()  # the sidecar sees the server disconnect: retried
        return web.json_response({"decision": {"action": "approve"}, "agent_version": "a@1"})

    app = web.Application()
    app.router.add_post("/decide", decide)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        agent = f"http://127.0.0.1:{runner.addresses[0][1]}/decide"
        sc = await sidecar(policy=gateway_policy(up.url), agent=agent, agent_backoff=0.0)
        await refund_case(sc)
    finally:
        await runner.cleanup()
    (comparison,) = await sc.pipeline.store.unpublished_comparisons()
    assert comparison.mismatches == (), comparison.fields
    assert [f for f in comparison.fields if f.path == "actions.declared"] == []
    assert (await sc.agreement())["task_types"]["refund"]["agree"] == 1
    assert up.calls == []
    assert len(urls) == 2  # a fresh session for the retry:
    assert urls[0] != urls[1]
    assert (await rpc(sc, urls[0], "tools/call", CALL_REFUND)).status == 404


async def test_a_captured_write_that_differs_from_the_humans_is_a_disagreement(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()

    async def agent(body: dict[str, Any]) -> Reply:
        async with Client(body["tools_url"], mode="legacy") as client:
            await client.call_tool("issue_refund", {"order_id": "o-1", "amount": 99.0})
        actions = [{"tool": "issue_refund", "args": {"order_id": "o-1", "amount": 42.5}}]
        return Reply(200, {"decision": {"action": "approve"}, "actions": actions})

    agent_srv = await agent_server(agent)
    sc = await sidecar(policy=gateway_policy(up.url), agent=agent_srv.url)
    await sc.post("/v1/events", json_body={"event_id": "r-2", "task_type": "refund", "payload": {}})
    await sc.post(
        "/v1/outcomes",
        json_body={
            "event_id": "r-2",
            "decision": {"action": "approve"},
            "actions": [{"tool": "issue_refund", "args": {"amount": 42.5}}],
        },
    )
    await sc.pipeline.drain()
    doc = (await sc.agreement())["task_types"]["refund"]
    assert (doc["n"], doc["agree"]) == (1, 0)  # the declared 42.5 does not count, the call does
    assert up.calls == []
    (comparison,) = await sc.pipeline.store.unpublished_comparisons()
    (note,) = [f for f in comparison.fields if f.path == "actions.declared"]
    assert "its tool calls were [issue_refund]" in note.reason  # declared, and different


# -- live levels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "why"),
    [("L0", "refund is at L0: shadow only"), ("L1", "refund is at L1: suggestions only")],
)
async def test_live_writes_are_refused_at_l0_and_l1_with_the_reason(
    sidecar: SidecarFactory, upstream: UpstreamFactory, level: str, why: str
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, level)
    url = await live_url(sc, "e-1")
    assert refused(await refund(url), why)
    async with Client(url) as client:
        read = await client.call_tool("get_order", {"order_id": "o-1"})
    assert read.structured_content["amount"] == 42.5
    assert up.writes() == []


async def test_at_l2_a_write_waits_for_approval_and_is_forwarded_exactly_once(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=0.0)
    await set_level(sc, "L2")
    first = await refund(await live_url(sc, "e-1"), 10.0)
    second = await refund(await live_url(sc, "e-2"), 20.0)
    assert first.structured_content["status"] == "pending"
    assert up.writes() == []
    listed = await sc.get("/v1/approvals", headers=sc.admin)
    ids = [a["id"] for a in listed.body["approvals"]]
    assert ids == [
        first.structured_content["approval_id"],
        second.structured_content["approval_id"],
    ]
    samples = await sc.metrics()
    assert metric(samples, "shadow_tool_approvals_pending", task_type="refund") == 2

    body = {"actor": "ops/jane", "reason": "checked the order"}
    approvals = await asyncio.gather(
        *(
            sc.post(f"/v1/approvals/{ids[0]}/approve", json_body=body, headers=sc.admin)
            for _ in range(8)
        )
    )
    assert sorted(a.status for a in approvals) == [200] + [409] * 7
    rejected = await sc.post(
        f"/v1/approvals/{ids[1]}/reject", json_body={"reason": "wrong amount"}, headers=sc.admin
    )
    assert rejected.status == 200
    again = await sc.post(f"/v1/approvals/{ids[1]}/approve", json_body=body, headers=sc.admin)
    assert again.status == 409
    assert up.writes() == [("issue_refund", {"order_id": "o-1", "amount": 10.0})]
    done = (await sc.get(f"/v1/approvals/{ids[0]}", headers=sc.admin)).body
    assert (done["status"], done["decided_by"]) == ("forwarded", "ops/jane")
    assert done["result"]["structuredContent"]["refunded"] == 10.0
    history = (await sc.get("/v1/autonomy/refund/history")).body
    actions = {e["action"] for e in history["entries"]}
    assert {"tool_approve", "tool_rejected"} <= actions
    rows = await tool_rows(sc)
    assert [r["outcome"] for r in rows] == ["held", "held", "approved", "rejected"]


async def test_at_l2_a_call_approved_while_it_waits_answers_the_upstreams_result(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=20.0)
    await set_level(sc, "L2")
    call = asyncio.ensure_future(refund(await live_url(sc, "e-1"), 7.0))
    for _ in range(1000):  # a bound against hangs, not a timing
        if sc.app[GATEWAY].approvals.pending:
            break
        await asyncio.sleep(0.02)
    pending = (await sc.get("/v1/approvals", headers=sc.admin)).body["approvals"][0]
    res = await sc.post(f"/v1/approvals/{pending['id']}/approve", json_body={}, headers=sc.admin)
    assert res.status == 200
    result = await call
    assert result.structured_content == {"refunded": 7.0, "order_id": "o-1"}
    assert up.writes() == [("issue_refund", {"order_id": "o-1", "amount": 7.0})]


async def test_a_held_write_that_nobody_approves_expires_and_is_never_forwarded(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(
        policy=gateway_policy(up.url), gateway_approval_wait=5.0, gateway_approval_timeout=0.2
    )
    await set_level(sc, "L2")
    assert refused(await refund(await live_url(sc, "e-1")), "expired")
    rows = (await sc.get("/v1/approvals?status=expired", headers=sc.admin)).body["approvals"]
    assert len(rows) == 1
    res = await sc.post(f"/v1/approvals/{rows[0]['id']}/approve", json_body={}, headers=sc.admin)
    assert res.status == 409
    assert up.writes() == []


async def test_at_l3_audit_items_are_held_and_the_others_forwarded_at_l4_all_are(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=0.0)
    await set_level(sc, "L3")
    ladder = sc.pipeline.ladder
    audited = next(f"e-{i}" for i in range(100) if ladder.route("refund", f"e-{i}")["audit"])
    plain = next(f"e-{i}" for i in range(100) if not ladder.route("refund", f"e-{i}")["audit"])
    held = await refund(await live_url(sc, audited), 1.0)
    assert held.structured_content["status"] == "pending"
    done = await refund(await live_url(sc, plain), 2.0)
    assert done.structured_content["refunded"] == 2.0
    await set_level(sc, "L4")
    done = await refund(await live_url(sc, audited), 3.0)
    assert done.structured_content["refunded"] == 3.0
    assert [w[1]["amount"] for w in up.writes()] == [2.0, 3.0]


async def test_a_freeze_refuses_every_write_at_once_held_ones_included(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=0.0)
    await set_level(sc, "L2")
    url = await live_url(sc, "e-1")
    held = await refund(url)
    approval_id = held.structured_content["approval_id"]
    assert (await sc.post("/v1/freeze", json_body={}, headers=sc.admin)).status == 200
    row = (await sc.get(f"/v1/approvals/{approval_id}", headers=sc.admin)).body
    assert row["status"] == "refused"
    assert refused(await refund(url), "frozen")
    res = await sc.post(f"/v1/approvals/{approval_id}/approve", json_body={}, headers=sc.admin)
    assert res.status == 409
    await sc.post("/v1/unfreeze", json_body={}, headers=sc.admin)
    await set_level(sc, "L4")  # the next call sees the new level, no restart
    assert (await refund(url, 5.0)).structured_content["refunded"] == 5.0
    assert up.writes() == [("issue_refund", {"order_id": "o-1", "amount": 5.0})]


# -- allowlist, listing -----------------------------------------------------------------------


async def test_tools_outside_the_allowlist_are_not_listed_refused_and_audited(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    for mode in ("auto", "legacy"):
        async with Client(url, mode=mode) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == ["get_order", "issue_refund", "cancel_order"]
            with pytest.raises(MCPError, match="not on refund's allowlist"):
                await client.call_tool("lookup_customer", {"customer_id": "c-1"})
    assert up.calls == []
    rows = await tool_rows(sc)
    assert [(r["tool"], r["outcome"]) for r in rows] == [("lookup_customer", "refused")] * 2
    samples = await sc.metrics()
    labels = {"task_type": "refund", "tool": "other", "class": "other", "outcome": "refused"}
    assert metric(samples, "shadow_tool_calls_total", **labels) == 2


async def test_two_upstreams_sharing_a_name_are_prefixed_and_routed_to_their_owner(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    a = await upstream(backoffice("a"))
    b = await upstream(backoffice("b"))
    policy = gateway_policy(a.url).replace(
        "task_types:", f'  archive: {{url: "{b.url}"}}\ntask_types:', 1
    )
    policy = policy.replace(
        "allow: [get_order, issue_refund, cancel_order]",
        "allow: [backoffice.get_order, archive.cancel_order]",
    )
    sc = await sidecar(policy=policy)
    await set_level(sc, "L4")
    async with Client(await live_url(sc, "e-1")) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == ["archive.cancel_order", "backoffice.get_order"]
        await client.call_tool("archive.cancel_order", {"order_id": "o-9"})
        await client.call_tool("backoffice.get_order", {"order_id": "o-9"})
        with pytest.raises(MCPError, match="allowlist"):
            await client.call_tool("cancel_order", {"order_id": "o-9"})
    assert b.calls == [("cancel_order", {"order_id": "o-9"})]
    assert a.calls == [("get_order", {"order_id": "o-9"})]


async def test_the_cli_lists_approves_and_rejects_held_writes(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    import os
    import sys

    from tests.shadow.conftest import ADMIN_TOKEN

    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=0.0)
    await set_level(sc, "L2")
    ids = [
        (await refund(await live_url(sc, f"e-{i}"), float(i))).structured_content["approval_id"]
        for i in range(2)
    ]
    env = {**os.environ, "SHADOW_ADMIN_TOKEN": ADMIN_TOKEN}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadow.cli", "approvals", *args, "--url", sc.url,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return int(proc.returncode or 0), out.decode()

    code, out = await cli("list")
    assert code == 0
    assert ids[0] in out
    assert ids[1] in out
    # Two held refunds of different amounts do not look alike: each shows its arguments and
    # the start of its digest.
    flat = " ".join(out.split())
    assert '"amount": 0.0' in flat
    assert '"amount": 1.0' in flat
    assert flat.count("sha256:") == 2
    assert (await cli("approve", ids[0], "--actor", "ops/jane"))[1].startswith(
        f"{ids[0]}: forwarded"
    )
    code, out = await cli("reject", ids[1])
    assert code == 2
    assert "--reason is required" in out
    assert (await cli("reject", ids[1], "--reason", "no"))[0] == 0
    assert up.writes() == [("issue_refund", {"order_id": "o-1", "amount": 0.0})]
