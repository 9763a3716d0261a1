"""An upstream MCP server that vanishes and comes back, through the real sidecar and a real
SDK server: while it is gone every call that needs it answers at once with a JSON-RPC error
naming the upstream (never a hang), is recorded and counted as an error, and is said in the
log; a write is never sent anywhere; the sidecar stays ready (the upstream's outage is not
the sidecar's, and its other task types and the ladder keep working); the first call after
the upstream is back reconnects, without a restart."""

from __future__ import annotations

import logging

import pytest

from tests.shadow.conftest import Sidecar, SidecarFactory
from tests.shadow.gateway.conftest import UpstreamFactory, backoffice, gateway_policy
from tests.shadow.gateway.test_gateway import CALL_REFUND, live_url, rpc, set_level, tool_rows

READ = {"name": "get_order", "arguments": {"order_id": "o-1"}}


async def counted(sc: Sidecar, outcome: str) -> float:
    total = 0.0
    for (name, labels), value in (await sc.metrics()).items():
        if name == "shadow_tool_calls_total" and dict(labels).get("outcome") == outcome:
            total += value
    return total


async def test_a_vanished_upstream_is_an_answered_error_and_it_is_picked_up_again(
    sidecar: SidecarFactory, upstream: UpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    assert (await rpc(sc, url, "tools/call", READ)).status == 200
    assert up.calls == [("get_order", {"order_id": "o-1"})]

    assert up.stop is not None
    await up.stop()
    caplog.set_level(logging.WARNING, logger="shadow.gateway")
    for call in (READ, CALL_REFUND, READ):
        res = await rpc(sc, url, "tools/call", call)
        assert res.status == 200, res.body
        error = res.body["error"]
        assert error["code"] == -32603, res.body
        assert "backoffice" in error["message"], error
    assert up.writes() == []
    rows = (await tool_rows(sc, "e-1"))[-3:]
    assert all("backoffice" in (r["error"] or "") for r in rows), rows
    # The first call went out on the connection that was open: it may have reached the
    # upstream. The next ones found no connection: not sent, and said so.
    assert [r["outcome"] for r in rows] == ["forwarded", "failed", "failed"], rows
    assert rows[1]["tool"] == "issue_refund"
    assert "not sent" in rows[1]["error"]
    assert await counted(sc, "failed") == 2
    said = [r.getMessage() for r in caplog.records if r.name == "shadow.gateway"]
    assert said, "the upstream's outage was not logged"
    assert all("backoffice" in line for line in said), said
    # The sidecar itself is fine: ready, and the ladder answers.
    assert (await sc.get("/readyz")).status == 200
    assert (await sc.get("/v1/autonomy/refund")).body["level"] == "L4"

    again = backoffice()
    again.calls = up.calls
    await upstream(again, port=up.port)
    res = await rpc(sc, url, "tools/call", READ)
    assert res.status == 200, res.body
    assert "error" not in res.body, res.body
    assert up.calls[-1] == ("get_order", {"order_id": "o-1"})
    # The write that was not sent is not remembered: the same call again is sent now (a
    # write remembered with its error would answer that error for the rest of the session).
    res = await rpc(sc, url, "tools/call", CALL_REFUND)
    assert "error" not in res.body, res.body
    assert up.writes() == [("issue_refund", CALL_REFUND["arguments"])]
    res = await rpc(sc, url, "tools/call", CALL_REFUND)  # a retry of a write that was sent
    assert "error" not in res.body, res.body
    assert len(up.writes()) == 1


async def test_a_write_the_level_refuses_is_refused_alike_while_the_upstream_is_gone(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    """At L0 a live session's write is refused by the level, from the catalog the gateway
    holds: with the upstream gone it is refused the same way (not an upstream error), and
    nothing is sent when the upstream is back."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    url = await live_url(sc, "e-2")
    assert (await rpc(sc, url, "tools/list")).status == 200  # the catalog is known
    assert up.stop is not None
    await up.stop()
    res = await rpc(sc, url, "tools/call", CALL_REFUND)
    assert "shadow only" in res.body["error"]["message"], res.body
    again = backoffice()
    await upstream(again, port=up.port)
    assert (await rpc(sc, url, "tools/call", READ)).status == 200
    assert up.writes() == []
    assert again.writes() == []
    writes = [r for r in await tool_rows(sc, "e-2") if r["tool"] == "issue_refund"]
    assert [(r["outcome"], r["level"]) for r in writes] == [("refused", "L0")]
