"""One input boundary (shadow.checks.text_problem), against the real sidecar on loopback: a
lone UTF-16 surrogate (sent as the JSON escape ``\\ud800``, or as header bytes that are not
UTF-8), NUL, and control characters where an identifier is expected are refused at every
entry with the field named (HTTP 400 / JSON-RPC -32602 / a dead letter / CLI exit 2), and
the sidecar keeps storing, comparing, freezing and forwarding what comes after."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from shadow.cli import main
from shadow.gateway import GATEWAY
from shadow.sources.mirror import MIRROR
from tests.conftest import wait_for
from tests.mirror_host import POLICY as MIRROR_POLICY
from tests.shadow.conftest import (
    ADMIN_TOKEN,
    AgentServerFactory,
    HttpResult,
    RawHttpFactory,
    Reply,
    Sidecar,
    SidecarFactory,
    agree_reply,
    metric,
)
from tests.shadow.gateway import conftest as gateway
from tests.shadow.gateway.conftest import UpstreamFactory, gateway_policy
from tests.shadow.gateway.test_gateway import CALL_REFUND, MODERN, live_url, refund_case, set_level
from tests.shadow.gateway.test_inputs import post_raw, request, rpc_error

# The gateway's fixtures (a real upstream MCP server, and the credential its policy names).
upstream = gateway.upstream
upstream_token = gateway.upstream_token

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
SURROGATE = "lone UTF-16 surrogate"


async def send(sc: Sidecar, method: str, path: str, text: str, **headers: str) -> HttpResult:
    """``text`` as the body, byte for byte: a ``\\ud800`` in it is the JSON escape."""
    return await sc.request(method, path, data=text.encode(), headers={**JSON, **headers})


def refused(res: HttpResult, path: str, *words: str) -> str:
    """The 400 that names ``path`` (``{"error", "errors": [{"path", "message"}]}``)."""
    assert res.status == 400, res
    first = res.body["errors"][0]
    assert first["path"] == path, res.body
    assert res.body["error"] == f"{path}: {first['message']}", res.body
    for word in words:
        assert word in first["message"], res.body
    return str(first["message"])


async def frozen(sc: Sidecar) -> bool:
    res = await sc.get("/v1/autonomy")
    assert res.status == 200, res
    return bool(res.body["frozen"])


async def level(sc: Sidecar, task_type: str) -> str:
    res = await sc.get(f"/v1/autonomy/{task_type}")
    assert res.status == 200, res
    return str(res.body["level"])


# -- ingest -----------------------------------------------------------------------------------


async def test_ingest_refuses_each_bad_record_by_field_and_stores_the_rest(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    sc = await sidecar(agent=agent.url)
    lines = [
        '{"event_id": "ok-1", "task_type": "appeal", "payload": {"amount": 1}}',
        '{"event_id": "s-1", "task_type": "appeal", "payload": {"note": "ab\\ud800"}}',
        # Free text may hold NUL (stored as its escape).
        '{"event_id": "n-1", "task_type": "appeal", "payload": {"note": "a\\u0000"}}',
        '{"event_id": "c-1\\u0001", "task_type": "appeal", "payload": {}}',
        '{"event_id": "g-1", "task_type": "appeal", "payload": {}, "segment": "eu\\u0007"}',
        '{"event_id": "k-1", "task_type": "appeal", "payload": {"\\udc00": 1}}',
        # Free text may hold newlines and tabs.
        '{"event_id": "ok-2", "task_type": "appeal", "payload": {"note": "one\\ntwo\\tthree"}}',
    ]
    res = await sc.post("/v1/events", data="\n".join(lines), headers=NDJSON)
    assert res.status == 202, res
    assert res.body["accepted"] == 3
    errors = [(e["line"], e["path"], e["message"]) for e in res.body["errors"]]
    assert [(line, path) for line, path, _ in errors] == [
        (2, "payload.note"),
        (4, "event_id"),
        (5, "segment"),
        (6, "payload"),
    ]
    assert f"{SURROGATE} \\ud800 at index 2" in errors[0][2]
    assert "control character \\u0001 at index 3" in errors[1][2]
    assert "control character \\u0007 at index 2" in errors[2][2]
    assert f"object key holds a {SURROGATE} \\udc00" in errors[3][2]
    assert await sc.pipeline.store.count("events") == 3

    # One object: refused whole, naming the field.
    one = '{"event_id": "o-1", "decision": {"action": "ap\\ud800prove"}}'
    res = await send(sc, "POST", "/v1/outcomes", one)
    assert res.status == 400, res
    assert [(e["line"], e["path"]) for e in res.body["errors"]] == [(1, "decision.action")]
    outcomes = [
        '{"event_id": "ok-1", "decision": {"action": "approve"}, "decided_by": "ops\\u0000"}',
        '{"event_id": "ok-1", "decision": {"action": "approve"}, '
        '"actions": [{"tool": "issue\\nrefund", "args": {}}]}',
        '{"event_id": "ok-1", "decision": {"action": "approve"}, '
        '"actions": [{"tool": "issue_refund", "args": {"\\ud800": 1}}]}',
        '{"event_id": "ok-2", "decision": {"action": "approve"}, "decided_by": "ops/jane"}',
    ]
    res = await sc.post("/v1/outcomes", data="\n".join(outcomes), headers=NDJSON)
    assert res.status == 202, res
    assert [(e["line"], e["path"]) for e in res.body["errors"]] == [
        (1, "decided_by"),
        (2, "actions[0].tool"),
        (3, "actions[0].args"),
    ]
    # The sidecar goes on: the good outcome for ok-1, then both are compared.
    good = '{"event_id": "ok-1", "decision": {"action": "approve"}}'
    assert (await send(sc, "POST", "/v1/outcomes", good)).status == 202
    async with asyncio.timeout(30):
        await sc.pipeline.drain()
    assert (await sc.agreement())["task_types"]["appeal"]["n"] == 2


# -- the mirror target --------------------------------------------------------------------------


async def test_the_mirror_target_dead_letters_bad_text_by_field_and_stores_the_rest(
    sidecar: SidecarFactory, raw_http: RawHttpFactory
) -> None:
    sc = await sidecar(policy=MIRROR_POLICY)
    # X-Region is the event's segment: its bytes are not UTF-8, so they decode to surrogates.
    body = b'{"refund_id": "m-1", "amount": 1}'
    conn = await raw_http(sc.url)
    await conn.send(
        b"POST /v1/mirror/refunds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Region: eu\xff\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert (await conn.response()).status == 202
    nul = '{"refund_id": "m-2", "amount": 1, "note": "a\\u0000"}'  # free text: stored
    assert (await send(sc, "POST", "/v1/mirror/refunds", nul)).status == 202
    ok = await sc.post("/v1/mirror/refunds", json_body={"refund_id": "m-3", "amount": 2})
    assert ok.status == 202
    await sc.app[MIRROR].drained()
    letters = {d["event_id"]: d for d in await sc.pipeline.store.dead_letters()}
    assert set(letters) == {"m-1"}
    assert f"segment: string holds a {SURROGATE} \\udcff at index 2" in letters["m-1"]["reason"]
    assert await sc.pipeline.store.count("events") == 2
    samples = await sc.metrics()
    assert metric(samples, "shadow_mirror_requests_total", rule="POST /refunds", result="accepted")
    assert (
        metric(samples, "shadow_mirror_requests_total", rule="POST /refunds", result="invalid") == 1
    )


# -- admin writes -------------------------------------------------------------------------------

ADMIN_CASES = [
    # (method, path, raw JSON body, the field named)
    ("PUT", "/v1/autonomy/refund", '{"level": "L1", "reason": "x\\ud800"}', "reason"),
    ("PUT", "/v1/autonomy/refund", '{"level": "L1", "actor": "ops\\njane"}', "actor"),
    ("PUT", "/v1/autonomy/refund", '{"level": "L1\\ud800"}', "level"),
    ("POST", "/v1/autonomy/appeal/approve", '{"proposal_id": "p-\\ud800"}', "proposal_id"),
    ("POST", "/v1/autonomy/appeal/reject", '{"to": "L1", "actor": "o\\u0000ps"}', "actor"),
    ("POST", "/v1/autonomy/refund/reconsider", '{"actor": "\\udcff"}', "actor"),
    ("POST", "/v1/freeze", '{"reason": "incident \\ud800"}', "reason"),
    ("POST", "/v1/freeze", '{"actor": "ops\\u007f"}', "actor"),
    ("POST", "/v1/unfreeze", '{"reason": "\\udfff"}', "reason"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), ADMIN_CASES)
async def test_admin_writes_refuse_bad_text_by_field_and_change_nothing(
    sidecar: SidecarFactory, method: str, path: str, body: str, field: str
) -> None:
    sc = await sidecar()
    refused(await send(sc, method, path, body, **sc.admin), field)
    assert await level(sc, "refund") == "L0"
    assert not await frozen(sc)
    assert (await sc.get("/v1/autonomy/refund/history")).body["entries"] == []


async def test_a_freeze_with_a_surrogate_reason_is_refused_and_a_clean_one_applied(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar()
    res = await send(sc, "POST", "/v1/freeze", '{"reason": "outage \\ud800"}', **sc.admin)
    message = refused(res, "reason", f"{SURROGATE} \\ud800 at index 7")
    assert message.endswith("not valid Unicode")
    assert not await frozen(sc)
    # Free text: a newline is no reason to refuse (it becomes a space in the audit log).
    res = await send(sc, "POST", "/v1/freeze", '{"reason": "outage\\nin eu"}', **sc.admin)
    assert (res.status, res.body) == (200, {"frozen": True})
    assert await frozen(sc)
    (entry,) = (await sc.get("/v1/autonomy/refund/history")).body["entries"]
    assert (entry["action"], entry["reason"]) == ("freeze", "outage in eu")


async def test_an_actor_header_that_is_not_utf8_is_refused_and_freezes_nothing(
    sidecar: SidecarFactory, raw_http: RawHttpFactory
) -> None:
    sc = await sidecar()

    async def freeze(actor: bytes) -> Any:
        conn = await raw_http(sc.url)
        await conn.send(
            b"POST /v1/freeze HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + ADMIN_TOKEN.encode()
            + b"\r\nX-Shadow-Actor: "
            + actor
            + b"\r\nContent-Length: 0\r\n\r\n"
        )
        return await conn.response()

    bad = await freeze(b"ops/\xffjane")
    assert bad.status == 400, bad
    assert bad.json()["errors"][0]["path"] == "X-Shadow-Actor"
    assert f"{SURROGATE} \\udcff at index 4" in bad.json()["error"]
    assert not await frozen(sc)
    assert (await freeze(b"ops/jane")).status == 200
    assert await frozen(sc)
    (entry,) = (await sc.get("/v1/autonomy/refund/history")).body["entries"]
    assert entry["actor"] == "ops/jane"


# -- sessions, approvals, routes -------------------------------------------------------------


async def test_sessions_and_approvals_refuse_bad_text_by_field(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    cases = [
        ("/v1/sessions", '{"task_type": "refund", "event_id": "e-\\ud800"}', "event_id"),
        ("/v1/sessions", '{"task_type": "refund\\u0000", "event_id": "e-1"}', "task_type"),
        ("/v1/sessions", '{"task_type": "refund", "event_id": "e\\t1"}', "event_id"),
        ("/v1/approvals/a-1/reject", '{"reason": "no \\ud800"}', "reason"),
        ("/v1/approvals/a-1/approve", '{"actor": "ops\\u001b[31m"}', "actor"),
    ]
    for path, body, field in cases:
        refused(await send(sc, "POST", path, body, **sc.admin), field)
    # Nothing of them was recorded, and the routing records go on being written.
    res = await sc.post(
        "/v1/sessions", json_body={"task_type": "refund", "event_id": "e-2"}, headers=sc.admin
    )
    assert res.status == 200, res

    async def recorded() -> bool:
        return "e-2" in await sc.pipeline.store.handling_of(["e-2"])

    await wait_for(recorded, "the good session's routing record")
    res = await sc.get("/v1/route/refund?event_id=e-3", headers=sc.admin)
    assert res.status == 200, res


async def test_a_route_event_id_with_a_control_character_names_the_field(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar()
    res = await sc.get("/v1/route/refund?event_id=a%00b", headers=sc.admin)
    refused(res, "event_id", "NUL (\\u0000) at index 1")
    res = await sc.get("/v1/route/refund?event_id=a%0Ab", headers=sc.admin)
    refused(res, "event_id", "control character \\u000a at index 1")
    assert (await sc.get("/v1/route/refund?event_id=a-b", headers=sc.admin)).status == 200


# -- MCP ----------------------------------------------------------------------------------------


def call_text(name: str, arguments: str) -> str:
    """A stateless tools/call whose name and arguments are spliced in as raw JSON text."""
    text = json.dumps(request("tools/call", {"name": "NAME", "arguments": {}}))
    return text.replace('"NAME"', name).replace('"arguments": {}', f'"arguments": {arguments}')


async def test_mcp_requests_with_bad_text_are_refused_by_field_and_record_nothing(
    sidecar: SidecarFactory, upstream: UpstreamFactory, raw_http: RawHttpFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    good_args = '{"order_id": "o-1", "amount": 1.0}'
    cases = [
        (call_text('"\\ud800"', good_args), "params.name", "\\ud800 at index 0"),
        (call_text('"issue\\nrefund"', good_args), "params.name", "control character \\u000a"),
        (
            call_text('"issue_refund"', '{"order_id": "o-1", "amount": 1.0, "note": "abc\\ud800"}'),
            "params.arguments.note",
            f"{SURROGATE} \\ud800 at index 3",
        ),
        (
            call_text('"issue_refund"', '{"order_id": "o-1", "amount": 1.0, "\\udc80": 1}'),
            "params.arguments",
            f"object key holds a {SURROGATE} \\udc80",
        ),
    ]
    for text, path, words in cases:
        message = rpc_error(await post_raw(sc, url, text), -32602)
        assert message.startswith(f"{path}: "), message
        assert words in message, message
    # The id and method are identifiers too.
    method = json.dumps(request("tools/call", CALL_REFUND)).replace("tools/call", "tools/c\\u0000")
    assert rpc_error(await post_raw(sc, url, method), -32600, 400).startswith("method: ")
    # A session id header whose bytes are not UTF-8 (handshake era: no modern envelope).
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    conn = await raw_http(url)
    await conn.send(
        b"POST " + url.removeprefix(sc.url).encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nMcp-Session-Id: s\xff\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answer = await conn.response()
    assert answer.status == 400, answer
    assert answer.json()["error"]["code"] == -32600
    assert answer.json()["error"]["message"].startswith("header Mcp-Session-Id: ")
    assert up.writes() == []
    # Free text may hold a tab; the gateway goes on forwarding and recording calls.
    res = await post_raw(sc, url, call_text('"issue_refund"', '{"order_id": "o\\t1", "amount": 1}'))
    assert res.body["result"]["structuredContent"]["refunded"] == 1.0, res.body
    assert up.writes() == [("issue_refund", {"order_id": "o\t1", "amount": 1.0})]
    await sc.app[GATEWAY].flush()  # the call rows of the refused calls never existed
    rows = await sc.pipeline.store.tool_calls()
    assert [(r["tool"], r["outcome"]) for r in rows] == [("issue_refund", "forwarded")]
    assert await sc.pipeline.store.count("dead_letters") == 0


async def test_a_captured_write_with_a_surrogate_is_refused_and_the_case_still_compared(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    answers: list[Any] = []

    async def agent(body: dict[str, Any]) -> Reply:
        text = call_text('"issue_refund"', '{"order_id": "o-1\\ud800", "amount": 42.5}')
        headers = {**JSON, "MCP-Protocol-Version": MODERN, "Accept": "application/json"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(body["tools_url"], data=text.encode(), headers=headers) as resp,
        ):
            answers.append(await resp.json())
        return Reply(200, {"decision": {"action": "approve"}, "agent_version": "a@1"})

    agent_srv = await agent_server(agent)
    sc = await sidecar(policy=gateway_policy(up.url), agent=agent_srv.url)
    async with asyncio.timeout(30):  # the case must not go back to the agent in a loop
        await refund_case(sc)
    (answer,) = answers
    assert answer["error"]["code"] == -32602, answer
    assert answer["error"]["message"].startswith("params.arguments.order_id: ")
    assert (await sc.agreement())["task_types"]["refund"]["n"] == 1
    assert len(agent_srv.requests) == 1
    assert up.calls == []


# -- the command line -------------------------------------------------------------------------


async def test_the_cli_refuses_bad_text_before_sending_it(
    sidecar: SidecarFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sc = await sidecar()
    monkeypatch.setenv("SHADOW_ADMIN_TOKEN", ADMIN_TOKEN)

    async def shadow(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["autonomy", "--url", sc.url, *argv])
        return code, capsys.readouterr().err

    # Bytes that are not UTF-8 reach argv as lone surrogates (surrogateescape).
    code, err = await shadow("freeze", "--reason", "outage \udcff")
    assert code == 2
    assert err.startswith(f"shadow: error: --reason: string holds a {SURROGATE} \\udcff"), err
    code, err = await shadow("set", "refund", "L1", "--actor", "ops\njane")
    assert code == 2
    assert err.startswith("shadow: error: --actor: string holds the control character"), err
    code, err = await shadow("set", "refund\x00", "L1")
    assert (code, err.startswith("shadow: error: TASK_TYPE: string holds NUL")) == (2, True), err
    assert not await frozen(sc)
    assert await level(sc, "refund") == "L0"
    code, err = await shadow("freeze", "--reason", "outage in eu", "--actor", "ops/jane")
    assert (code, err) == (0, "")
    assert await frozen(sc)
