"""Enforcement at the moment of deciding, and one write per write: a demotion or a freeze
while a call awaits (the catalog listing, a trusted hint's listing, the upstream connection,
an approval's claim) refuses the write with nothing sent; a client's identical retry attaches
to the first call (captured, held or forwarded once). Real sidecar, real SDK upstreams whose
requests a test can hold (:meth:`Upstream.gate`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shadow.gateway import GATEWAY
from shadow.model import WorkEvent
from tests.shadow.conftest import AgentServerFactory, HttpResult, Sidecar, SidecarFactory
from tests.shadow.gateway.conftest import Upstream, UpstreamFactory, backoffice, gateway_policy
from tests.shadow.gateway.test_gateway import (
    CALL_REFUND,
    live_url,
    rpc,
    set_level,
    tool_rows,
)
from tests.shadow.gateway.test_hostile import flippable

READ = {"name": "get_order", "arguments": {"order_id": "o-1"}}
CANCEL = {"name": "cancel_order", "arguments": {"order_id": "o-1"}}
TRIES = 1000  # bounds against hangs, not timings


async def arrived(up: Upstream, method: str) -> None:
    await asyncio.wait_for(up.arrived[method].wait(), timeout=30)


async def freeze(sc: Sidecar) -> None:
    res = await sc.post("/v1/freeze", json_body={"reason": "incident"}, headers=sc.admin)
    assert res.status == 200, res.body


def refusal(res: HttpResult) -> str:
    assert "error" in res.body, res.body
    return str(res.body["error"]["message"])


async def initialize(sc: Sidecar, url: str) -> str:
    """A handshake-era session on ``url``: its ``Mcp-Session-Id``."""
    legacy = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    async with sc.session.post(url, json=legacy) as res:
        assert res.status == 200, await res.text()
        return res.headers["Mcp-Session-Id"]


CHANGES = {"demotion": lambda sc: set_level(sc, "L1"), "freeze": freeze}


# -- decided at the moment of deciding -------------------------------------------------------


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_change_while_the_catalog_is_listed_refuses_the_write(
    change: str, sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """The first call after a start waits for the catalog listing; an L4 write whose level
    drops (or the sidecar freezes) meanwhile is refused, and its row says the level then."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    release = up.gate("tools/list")
    call = asyncio.ensure_future(rpc(sc, url, "tools/call", CALL_REFUND))
    await arrived(up, "tools/list")
    await CHANGES[change](sc)
    release.set()
    why = refusal(await call)
    assert ("at L1" in why) if change == "demotion" else ("frozen" in why)
    assert up.writes() == []
    (row,) = await tool_rows(sc, "e-1")
    assert row["outcome"] == "refused"
    assert row["level"] == ("L1" if change == "demotion" else "L0")


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_change_while_a_trusted_hint_is_listed_refuses_the_write(
    change: str, sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """``cancel_order`` is unlisted and was listed read-only by its trusted upstream; the
    upstream re-labels it a write, so the next call lists it again (class TTL 0) to classify
    it. A change while that listing is awaited refuses the write."""
    up = await upstream(flippable())
    sc = await sidecar(policy=gateway_policy(up.url, trust=True), gateway_class_ttl=0.0)
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    assert (await rpc(sc, url, "tools/list")).status == 200  # the catalog is held now
    up.server.remove_tool("cancel_order")

    def cancel_order(order_id: str) -> dict[str, Any]:
        up.calls.append(("cancel_order", {"order_id": order_id}))
        return {"cancelled": order_id}

    up.server.add_tool(cancel_order)  # a write now
    release = up.gate("tools/list")
    call = asyncio.ensure_future(rpc(sc, url, "tools/call", CANCEL))
    await arrived(up, "tools/list")
    await CHANGES[change](sc)
    release.set()
    refusal(await call)
    assert up.calls == []
    (row,) = await tool_rows(sc, "e-1")
    assert (row["class"], row["outcome"]) == ("write", "refused")


async def broken_then_gated(up: Upstream, sc: Sidecar, url: str, start: UpstreamFactory) -> Any:
    """Stop the upstream, let a read fail (the gateway's connection is broken), serve it
    again on its port with its connection handshake held: the next call must reconnect."""
    assert up.stop is not None
    await up.stop()
    failed = await rpc(sc, url, "tools/call", READ)
    assert failed.body["error"]["code"] == -32603, failed.body
    again = backoffice()
    again.calls = up.calls  # one record of what reached the back office
    release = again.gate("server/discover")
    await start(again, port=up.port)
    return again, release


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_change_while_the_upstream_reconnects_refuses_the_write(
    change: str, sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """The last check runs after the connection is ready, right before sending."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    assert (await rpc(sc, url, "tools/list")).status == 200
    again, release = await broken_then_gated(up, sc, url, upstream)
    call = asyncio.ensure_future(rpc(sc, url, "tools/call", CALL_REFUND))
    await arrived(again, "server/discover")
    await CHANGES[change](sc)
    release.set()
    assert "not sent" in refusal(await call)
    assert up.writes() == []
    rows = await tool_rows(sc, "e-1")
    assert rows[-1]["outcome"] == "refused"
    assert "not sent" in rows[-1]["error"]
    assert rows[-1]["level"] == ("L1" if change == "demotion" else "L0")


async def test_a_demotion_after_an_approval_is_claimed_refuses_the_held_write(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """Approving checks the level, claims the approval, then sends: a demotion between the
    claim and the send (here: while the upstream reconnects) ends it refused, nothing sent."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=0.0)
    await set_level(sc, "L2")
    url = await live_url(sc, "e-1")
    held = await rpc(sc, url, "tools/call", CALL_REFUND)
    approval_id = held.body["result"]["structuredContent"]["approval_id"]
    again, release = await broken_then_gated(up, sc, url, upstream)
    approve = asyncio.ensure_future(
        sc.post(f"/v1/approvals/{approval_id}/approve", json_body={}, headers=sc.admin)
    )
    await arrived(again, "server/discover")
    await set_level(sc, "L1")
    release.set()
    res = await approve
    assert res.status == 409, res.body
    assert "below L2" in res.body["error"]
    assert up.writes() == []
    done = (await sc.get(f"/v1/approvals/{approval_id}", headers=sc.admin)).body
    assert done["status"] == "refused"


# -- one write per write -----------------------------------------------------------------------


async def test_an_identical_retried_live_write_is_sent_once_and_a_repeat_key_sends_again(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    answers = await asyncio.gather(*(rpc(sc, url, "tools/call", CALL_REFUND) for _ in range(6)))
    again = await rpc(sc, url, "tools/call", CALL_REFUND)
    for res in (*answers, again):
        assert res.body["result"]["structuredContent"]["refunded"] == 1.0, res.body
    assert len(up.writes()) == 1
    # The same arguments with keys in another order are the same write.
    reordered = {"name": "issue_refund", "arguments": {"amount": 1.0, "order_id": "o-1"}}
    await rpc(sc, url, "tools/call", reordered)
    assert len(up.writes()) == 1
    for key in (1, 2, 2):
        params = {**CALL_REFUND, "_meta": {"io.shadow/repeat": key}}
        assert "result" in (await rpc(sc, url, "tools/call", params)).body
    assert len(up.writes()) == 3  # the first, then keys 1 and 2 once each
    outcomes = [r["outcome"] for r in await tool_rows(sc, "e-1")]
    assert outcomes.count("forwarded") == 3
    assert outcomes.count("repeated") == 8  # 5 at once, 1 after, the reordered, key 2 again
    # Another case's identical write is its own.
    other = await live_url(sc, "e-2")
    await rpc(sc, other, "tools/call", CALL_REFUND)
    assert len(up.writes()) == 4


async def test_a_retried_held_write_attaches_to_its_approval_and_is_sent_once(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """The client gives up waiting (``pending``) and calls again, twice at once: still one
    approval; once approved, one write reaches the upstream and a later retry answers its
    result."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=0.05)
    await set_level(sc, "L2")
    url = await live_url(sc, "e-1")
    first = await rpc(sc, url, "tools/call", CALL_REFUND)
    pending = first.body["result"]["structuredContent"]
    assert pending["status"] == "pending"
    assert pending["args_digest"].startswith("sha256:")
    retries = await asyncio.gather(*(rpc(sc, url, "tools/call", CALL_REFUND) for _ in range(4)))
    for res in retries:
        assert res.body["result"]["structuredContent"]["approval_id"] == pending["approval_id"]
    listed = (await sc.get("/v1/approvals?status=all", headers=sc.admin)).body["approvals"]
    assert len(listed) == 1
    assert listed[0]["args"] == CALL_REFUND["arguments"]
    assert listed[0]["args_digest"] == pending["args_digest"]
    res = await sc.post(
        f"/v1/approvals/{pending['approval_id']}/approve", json_body={}, headers=sc.admin
    )
    assert res.status == 200, res.body
    late = await rpc(sc, url, "tools/call", CALL_REFUND)
    assert late.body["result"]["structuredContent"]["refunded"] == 1.0
    assert up.writes() == [("issue_refund", {"order_id": "o-1", "amount": 1.0})]
    history = (await sc.get("/v1/autonomy/refund/history")).body["entries"]
    (approved,) = [e for e in history if e["action"] == "tool_approve"]
    assert approved["evidence"]["args_digest"] == pending["args_digest"]


async def test_a_retried_shadow_write_is_captured_once(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    gateway = sc.app[GATEWAY]
    event = WorkEvent("s-1", "refund", {})
    url = gateway.shadow_tools_url(event)
    assert url is not None
    await asyncio.gather(*(rpc(sc, url, "tools/call", CALL_REFUND) for _ in range(3)))
    await rpc(sc, url, "tools/call", {**CALL_REFUND, "_meta": {"io.shadow/repeat": "b"}})
    from shadow.model import ShadowDecision

    settled = gateway.settle(event, ShadowDecision("s-1", "a@1", {"action": "approve"}))
    assert [a.tool for a in settled.actions] == ["issue_refund", "issue_refund"]
    assert up.calls == []


# -- what a session is ------------------------------------------------------------------------


async def test_tools_url_forms_and_closing_a_settled_session(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    from mcp import Client

    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    gateway = sc.app[GATEWAY]
    event = WorkEvent("s-1", "refund", {})
    url = gateway.shadow_tools_url(event)
    assert url is not None
    for form in (url + "/", url + "/mcp"):
        for mode in ("auto", "legacy"):
            async with Client(form, mode=mode) as client:
                assert [t.name for t in (await client.list_tools()).tools]
    # A handshake session, then the case settles: the session is gone, and closing it is fine.
    sid = await initialize(sc, url)
    assert len(gateway.mcp_sessions) >= 1
    from shadow.model import ShadowDecision

    gateway.settle(event, ShadowDecision("s-1", "a@1", {"action": "approve"}))
    assert len(gateway.mcp_sessions) == 0
    gone = await sc.request("DELETE", url.removeprefix(sc.url), headers={"Mcp-Session-Id": sid})
    assert gone.status == 200
    forged = url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB")
    assert (await sc.request("DELETE", forged.removeprefix(sc.url))).status == 404


async def test_one_capability_cannot_fill_the_handshake_session_table(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    sids = [await initialize(sc, url) for _ in range(40)]
    gateway = sc.app[GATEWAY]
    assert len(gateway.mcp_sessions) == 16
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    oldest = await sc.request(
        "POST", url.removeprefix(sc.url), json_body=ping, headers={"Mcp-Session-Id": sids[0]}
    )
    newest = await sc.request(
        "POST", url.removeprefix(sc.url), json_body=ping, headers={"Mcp-Session-Id": sids[-1]}
    )
    assert (oldest.status, newest.status) == (404, 200)
    # Another case still opens sessions.
    assert await initialize(sc, await live_url(sc, "e-2"))


# -- what is kept --------------------------------------------------------------------------------


async def test_off_allowlist_calls_are_audited_a_bounded_number_of_times(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    url = await live_url(sc, "e-1")
    for i in range(30):
        call = {"name": "lookup_customer", "arguments": {"customer_id": f"c-{i}"}}
        assert "allowlist" in refusal(await rpc(sc, url, "tools/call", call))
    await sc.app[GATEWAY].flush()
    history = (await sc.get("/v1/autonomy/refund/history?limit=1000")).body["entries"]
    refused = [e for e in history if e["action"] == "tool_refused"]
    assert len(refused) == 20
    assert refused[0]["actor"] == "gateway"
    assert refused[0]["evidence"]["tool"] == "lookup_customer"
    assert up.calls == []


async def test_tool_arguments_the_policy_redacts_are_never_stored(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    extra = "      redact: {issue_refund: [order_id]}\n"
    sc = await sidecar(policy=gateway_policy(up.url, extra=extra), gateway_approval_wait=0.0)
    gateway = sc.app[GATEWAY]
    event = WorkEvent("s-1", "refund", {})
    url = gateway.shadow_tools_url(event)
    assert url is not None
    await rpc(sc, url, "tools/call", CALL_REFUND)
    from shadow.model import ShadowDecision

    settled = gateway.settle(event, ShadowDecision("s-1", "a@1", {"action": "approve"}))
    assert [a.args for a in settled.actions] == [{"amount": 1.0}]
    await set_level(sc, "L4")
    live = await live_url(sc, "e-1")
    await rpc(sc, live, "tools/call", CALL_REFUND)
    assert up.writes() == [("issue_refund", {"order_id": "o-1", "amount": 1.0})]  # sent whole
    await set_level(sc, "L2")
    held = await rpc(sc, await live_url(sc, "e-2"), "tools/call", CALL_REFUND)
    approval_id = held.body["result"]["structuredContent"]["approval_id"]
    row = (await sc.get(f"/v1/approvals/{approval_id}", headers=sc.admin)).body
    assert row["args"] == {"amount": 1.0}
    res = await sc.post(f"/v1/approvals/{approval_id}/approve", json_body={}, headers=sc.admin)
    assert res.status == 200, res.body
    assert up.writes()[-1] == ("issue_refund", {"order_id": "o-1", "amount": 1.0})
    for r in await tool_rows(sc):
        assert "order_id" not in r["args"], r
    for stored in await sc.pipeline.store.approvals(status=None):
        assert "order_id" not in stored.args


async def test_an_upstream_result_over_the_limit_is_an_error_not_passed_on(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = backoffice()

    @up.server.tool()
    def get_big(n: int) -> str:
        return "x" * n

    up = await upstream(up)
    extra = ""
    policy = gateway_policy(up.url, extra=extra).replace(
        "allow: [get_order, issue_refund, cancel_order]",
        "allow: [get_order, issue_refund, cancel_order, get_big]",
    )
    sc = await sidecar(policy=policy, gateway_max_result_bytes=4096)
    url = await live_url(sc, "e-1")
    small = await rpc(sc, url, "tools/call", {"name": "get_big", "arguments": {"n": 100}})
    assert "result" in small.body
    big = await rpc(sc, url, "tools/call", {"name": "get_big", "arguments": {"n": 100_000}})
    assert "gateway_max_result_bytes" in refusal(big)


async def test_every_session_lists_from_one_shared_catalog(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """``tools/list`` of many sessions within the catalog window costs one upstream listing."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_class_ttl=3600.0)
    urls = [await live_url(sc, f"e-{i}") for i in range(12)]
    answers = await asyncio.gather(*(rpc(sc, url, "tools/list") for url in urls))
    for res in answers:
        assert [t["name"] for t in res.body["result"]["tools"]] == [
            "get_order",
            "issue_refund",
            "cancel_order",
        ]
    assert up.methods.count("tools/list") == 1


async def test_a_retry_while_the_approved_write_is_being_sent_waits_for_its_result(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """The approval is claimed and its write is at the upstream (held there by a gate) when
    the client retries: the retry attaches to that one write and answers its result."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=20.0)
    await set_level(sc, "L2")
    url = await live_url(sc, "e-1")
    first = asyncio.ensure_future(rpc(sc, url, "tools/call", CALL_REFUND))
    for _ in range(TRIES):
        if sc.app[GATEWAY].approvals.pending:
            break
        await asyncio.sleep(0.01)
    (held,) = sc.app[GATEWAY].approvals.pending
    release = up.gate("tools/call")
    approve = asyncio.ensure_future(
        sc.post(f"/v1/approvals/{held.id}/approve", json_body={}, headers=sc.admin)
    )
    await arrived(up, "tools/call")  # being forwarded now
    retry = asyncio.ensure_future(rpc(sc, url, "tools/call", CALL_REFUND))
    await asyncio.sleep(0.1)  # give the retry its chance to (wrongly) answer early
    assert not retry.done()
    release.set()
    assert (await approve).status == 200
    for res in (await first, await retry):
        assert res.body["result"]["structuredContent"]["refunded"] == 1.0, res.body
    assert len(up.writes()) == 1


async def test_the_runner_closes_the_case_session_as_soon_as_the_agent_answers(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    """The agent runner owns each attempt's tool session from open to close: the decision it
    returns already carries the writes captured through it, and the tools URL is closed by
    then (no later call adds to the case while its decision waits to be stored)."""
    from mcp import Client

    from tests.shadow.conftest import Reply

    up = await upstream()
    urls: list[str] = []

    async def agent(body: dict[str, Any]) -> Reply:
        urls.append(body["tools_url"])
        async with Client(body["tools_url"]) as client:
            await client.call_tool("issue_refund", {"order_id": "o-9", "amount": 9.0})
        return Reply(200, {"decision": {"action": "approve"}, "agent_version": "a@1"})

    agent_srv = await agent_server(agent)
    sc = await sidecar(policy=gateway_policy(up.url), agent=agent_srv.url)
    runner = sc.pipeline.agent
    assert runner is not None
    decision = await runner.decide(WorkEvent("d-1", "refund", {}))
    assert decision.tool_calls
    assert [(a.tool, a.args) for a in decision.actions] == [
        ("issue_refund", {"order_id": "o-9", "amount": 9.0})
    ]
    late = await rpc(sc, urls[0], "tools/call", CALL_REFUND)
    assert late.status == 404
    assert up.writes() == []
