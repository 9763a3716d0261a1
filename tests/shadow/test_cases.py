"""``GET /v1/cases/{event_id}`` (shadow.cases_api, shadow.store.cases) through the real app:
a real sidecar (build_app, aiohttp, DuckDB file), a real fake agent on loopback and, for the
tool calls, the gateway's real upstream MCP server. A case shows its event (redacted), each
agent version's decision with latency and cost, every outcome revision, the comparison
with its per-field reasons, how it was handled and the gateway's tool calls; hostile ids
are refused, unknown ones are 404, and no field the policy redacts is ever in the answer."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from mcp import Client

from shadow.keys import GATEWAY
from shadow.model import ShadowDecision, Usage, WorkEvent
from shadow.roles import digest
from shadow.store import ToolCallRow
from shadow.store.cases import MAX_CASE_TOOL_CALLS
from tests.shadow.conftest import (
    AgentServerFactory,
    HttpResult,
    RawHttpFactory,
    Reply,
    Sidecar,
    SidecarFactory,
)
from tests.shadow.gateway import conftest as gateway_fixtures
from tests.shadow.gateway.conftest import UpstreamFactory, gateway_policy

# The gateway's fixtures (a real upstream MCP server, and the credential its policy names).
upstream = gateway_fixtures.upstream
upstream_token = gateway_fixtures.upstream_token

POLICY = """
task_types:
  refund:
    redact: [payload.customer.email]
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
"""
SECRET_EMAIL = "jane.doe@example.com"  # what the policy redacts (payload.customer.email)
AGENT_REPLY = {
    "decision": {"action": "approve", "amount": 40.0},
    "actions": [{"tool": "issue_refund", "args": {"amount": 40.0}}],
    "agent_version": "agent@1",
    "confidence": 0.8,
    "usage": {"input_tokens": 120, "output_tokens": 30, "cost_usd": 0.0021},
}


def event(event_id: str, **payload: Any) -> dict[str, Any]:
    body = {"amount": 42.5, "customer": {"email": SECRET_EMAIL, "tier": "gold"}, **payload}
    return {"event_id": event_id, "task_type": "refund", "payload": body}


def outcome(event_id: str, decision: dict[str, Any], at: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "decision": decision, "decided_at": at, **extra}


async def started(sidecar: SidecarFactory, agent_server: AgentServerFactory) -> Sidecar:
    agent = await agent_server(lambda _: Reply(200, AGENT_REPLY))
    return await sidecar(policy=POLICY, agent=agent.url)


async def ingest(sc: Sidecar, path: str, record: dict[str, Any]) -> None:
    res = await sc.post(path, json_body=record)
    assert res.status == 202, res.body
    await sc.pipeline.drain()


async def case(sc: Sidecar, event_id: str) -> dict[str, Any]:
    res = await sc.get(f"/v1/cases/{event_id}", headers=sc.admin)
    assert res.status == 200, res.body
    return dict(res.body)


API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def parts(doc: dict[str, Any]) -> dict[str, set[str]]:
    """The keys of a case answer and of each of its parts that is there (a list's by its
    first element; ``fields`` of a comparison apart, since ``distance`` is optional)."""
    out = {"case": set(doc)}
    for name in ("event", "handling"):
        if doc[name] is not None:
            out[name] = set(doc[name])
    for name in ("decisions", "outcomes", "comparisons", "tool_calls"):
        if doc[name]:
            out[name] = set(doc[name][0])
    return out


def documented_parts() -> dict[str, set[str]]:
    """:func:`parts` of the example in docs/api.md ("One case"), which shows every part."""
    text = API_DOC.read_text(encoding="utf-8")
    section = text.split("### One case", 1)[1].split("\n#", 1)[0]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    found = parts(example)
    assert set(found) == {
        "case",
        "event",
        "handling",
        "decisions",
        "outcomes",
        "comparisons",
        "tool_calls",
    }
    return found


def as_documented(doc: dict[str, Any]) -> None:
    """Every part of ``doc`` has exactly the keys docs/api.md's example shows."""
    documented = documented_parts()
    for name, keys in parts(doc).items():
        assert keys == documented[name], name


def refused(res: HttpResult, *words: str) -> None:
    assert res.status == 400, res
    assert res.body["error"].startswith("event_id: "), res.body
    for word in words:
        assert word in res.body["error"], res.body


# -- a compared case ----------------------------------------------------------------------------


async def test_a_compared_case_shows_its_event_decision_revisions_diff_and_handling(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    routed = await sc.get("/v1/route/refund?event_id=c-1", headers=sc.admin)
    assert routed.status == 200, routed.body
    await ingest(sc, "/v1/events", {**event("c-1"), "segment": "eu"})
    first = {"action": "approve", "amount": 42.5}
    await ingest(sc, "/v1/outcomes", outcome("c-1", first, "2026-11-20T10:07:00Z"))
    before = await case(sc, "c-1")
    assert [c["outcome_revision"] for c in before["comparisons"]] == [1]
    (amount,) = [f for f in before["comparisons"][0]["fields"] if f["path"] == "amount"]
    assert amount["matched"] is False
    assert "40.0" in amount["reason"]
    assert "42.5" in amount["reason"]
    # A reversal (a later decided_at): a second revision, and the case compared again.
    revised = outcome("c-1", {"action": "deny"}, "2026-11-20T11:00:00Z", decided_by="ops/lead")
    await ingest(sc, "/v1/outcomes", revised)

    body = await case(sc, "c-1")
    assert (body["event_id"], body["task_type"]) == ("c-1", "refund")
    ev = body["event"]
    assert ev["payload"] == {"amount": 42.5, "customer": {"tier": "gold"}}
    assert (ev["segment"], ev["source"], ev["awaiting_agent"], ev["expired"]) == (
        "eu",
        "http",
        False,
        False,
    )
    (decision,) = body["decisions"]
    assert decision["agent_version"] == "agent@1"
    assert decision["decision"] == {"action": "approve", "amount": 40.0}
    assert decision["actions"] == [{"tool": "issue_refund", "args": {"amount": 40.0}}]
    assert (decision["confidence"], decision["error"], decision["actions_captured"]) == (
        0.8,
        None,
        False,
    )
    assert decision["usage"] == {"input_tokens": 120, "output_tokens": 30, "cost_usd": 0.0021}
    assert isinstance(decision["latency_ms"], float)
    assert decision["latency_ms"] >= 0
    assert [(o["revision"], o["current"], o["decision"]) for o in body["outcomes"]] == [
        (1, False, first),
        (2, True, {"action": "deny"}),
    ]
    assert [o["decided_by"] for o in body["outcomes"]] == [None, "ops/lead"]
    assert body["outcomes"][1]["decided_at"] == "2026-11-20T11:00:00Z"
    (comparison,) = body["comparisons"]
    assert comparison["agent_version"] == "agent@1"
    assert (comparison["verdict"], comparison["critical"], comparison["outcome_revision"]) == (
        "disagree",
        True,
        2,
    )
    assert comparison["handled_by"] == "blind"
    fields = {f["path"]: f for f in comparison["fields"]}
    assert fields["action"]["matched"] is False
    assert fields["action"]["critical"] is True
    assert fields["action"]["reason"] == 'agent has "approve", human has "deny"'
    assert fields["amount"]["reason"] == "missing on the human side; agent has 40.0"
    assert body["handling"] is not None
    assert (body["handling"]["handled_by"], body["handling"]["level"]) == ("blind", "L0")
    assert (body["tool_calls"], body["tool_calls_total"]) == ([], 0)
    assert body["adjudications"] == []
    as_documented(body)

    # Reversed back to the first decision: a third revision with the first one's content.
    # The comparison names the current revision, not the older one it equals.
    await ingest(sc, "/v1/outcomes", outcome("c-1", first, "2026-11-20T12:00:00Z"))
    body = await case(sc, "c-1")
    assert [(o["revision"], o["current"]) for o in body["outcomes"]] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    (comparison,) = body["comparisons"]
    assert (comparison["verdict"], comparison["outcome_revision"]) == ("disagree", 3)


async def test_two_agent_versions_decisions_are_both_shown_each_with_its_comparison(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    await ingest(sc, "/v1/events", event("c-2"))
    # A second agent version's answer for the same case (as a replay or a second agent
    # writes it), stored through the store's own write.
    second = ShadowDecision(
        "c-2", "agent@2", {"action": "approve", "amount": 42.5}, usage=Usage(90, 12, 0.0009)
    )
    put = await sc.pipeline.store.put_decisions([(second, "refund")], now=datetime.now(UTC))
    assert [p.status.value for p in put] == ["stored"]
    await ingest(
        sc,
        "/v1/outcomes",
        outcome("c-2", {"action": "approve", "amount": 42.5}, "2026-11-20T10:00:00Z"),
    )

    body = await case(sc, "c-2")
    assert [d["agent_version"] for d in body["decisions"]] == ["agent@1", "agent@2"]
    assert [d["decision"]["amount"] for d in body["decisions"]] == [40.0, 42.5]
    assert [d["usage"]["cost_usd"] for d in body["decisions"]] == [0.0021, 0.0009]
    assert body["decisions"][1]["latency_ms"] is None  # not recorded for that answer
    verdicts = {c["agent_version"]: c["verdict"] for c in body["comparisons"]}
    assert verdicts == {"agent@1": "disagree", "agent@2": "agree"}


# -- partial cases ------------------------------------------------------------------------------


async def test_an_event_the_agent_has_not_answered_yet_and_an_outcome_without_its_event(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    go = asyncio.Event()

    async def slow(_: dict[str, Any]) -> Reply:
        await go.wait()
        return Reply(200, AGENT_REPLY)

    agent = await agent_server(slow)
    sc = await sidecar(policy=POLICY, agent=agent.url)
    assert (await sc.post("/v1/events", json_body=event("c-3"))).status == 202
    await agent.wait_for_requests(1)
    body = await case(sc, "c-3")
    assert body["event"]["awaiting_agent"] is True
    assert (body["decisions"], body["outcomes"], body["comparisons"]) == ([], [], [])
    assert (body["handling"], body["adjudications"]) == (None, [])
    go.set()
    await sc.pipeline.drain()
    body = await case(sc, "c-3")
    assert body["event"]["awaiting_agent"] is False
    assert [d["agent_version"] for d in body["decisions"]] == ["agent@1"]
    assert body["comparisons"] == []  # no outcome yet

    # An outcome whose event has not arrived: a case without an event or a task type.
    await ingest(sc, "/v1/outcomes", outcome("c-4", {"action": "deny"}, "2026-11-20T10:00:00Z"))
    body = await case(sc, "c-4")
    assert (body["event"], body["task_type"], body["decisions"]) == (None, None, [])
    assert [(o["revision"], o["current"]) for o in body["outcomes"]] == [(1, True)]


async def test_an_unknown_event_id_is_404(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    await ingest(sc, "/v1/events", event("c-5"))
    for unknown in ("c-6", "C-5", "c-5%20"):
        res = await sc.get(f"/v1/cases/{unknown}", headers=sc.admin)
        assert res.status == 404, (unknown, res.body)
        assert "unknown event id" in res.body["error"]
    assert (await sc.get("/v1/cases/c-5", headers=sc.admin)).status == 200


# -- hostile ids ----------------------------------------------------------------------------------


async def test_hostile_event_ids_are_refused(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, raw_http: RawHttpFactory
) -> None:
    sc = await started(sidecar, agent_server)
    long_id = "x" * 256
    await ingest(sc, "/v1/events", event(long_id))
    assert (await case(sc, long_id))["event_id"] == long_id  # the longest id is an id
    refused(await sc.get(f"/v1/cases/{'x' * 300}", headers=sc.admin), "longer than 256")
    refused(await sc.get(f"/v1/cases/{'x' * 257}", headers=sc.admin), "longer than 256")
    for escaped, shown in (("%00", "\\u0000"), ("%0A", "\\u000a"), ("%1B", "\\u001b")):
        res = await sc.get(f"/v1/cases/c-1{escaped}x", headers=sc.admin)
        refused(res, shown, "at index 3")
        assert res.body["errors"] == [
            {"path": "event_id", "message": res.body["errors"][0]["message"]}
        ]
    refused(await sc.get("/v1/cases/c%7F", headers=sc.admin), "\\u007f")

    # A lone surrogate: its bytes (not UTF-8) are refused by the HTTP parser, as JSON; its
    # percent escape is not decoded (not UTF-8), so it names no stored case.
    conn = await raw_http(sc.url)
    await conn.send(
        b"GET /v1/cases/c-\xed\xa0\x80 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + sc.admin["Authorization"].split()[1].encode()
        + b"\r\n\r\n"
    )
    raw = await conn.response()
    assert raw.status == 400
    assert "error" in raw.json()
    res = await sc.get("/v1/cases/c-%ED%A0%80", headers=sc.admin)
    assert res.status == 404, res.body
    assert await sc.pipeline.store.count("events") == 1


# -- redaction ----------------------------------------------------------------------------------


async def test_a_field_the_policy_redacts_never_appears_in_the_answer(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    # The agent echoes everything it was sent, so its answer would carry the field too.
    agent = await agent_server(
        lambda request: Reply(200, {"decision": {"action": "approve", "seen": request}})
    )
    sc = await sidecar(policy=POLICY, agent=agent.url)
    await ingest(sc, "/v1/events", event("c-7"))
    await ingest(sc, "/v1/outcomes", outcome("c-7", {"action": "approve"}, "2026-11-20T10:00:00Z"))
    # An event stored before the policy redacted the field (written past the intake): the
    # answer still leaves it out.
    old = WorkEvent("c-8", "refund", event("c-8")["payload"])
    await sc.pipeline.store.put_events(
        [old], source="test", now=datetime.now(UTC), needs_agent=[False]
    )
    stored = await sc.pipeline.store.case("c-8")
    assert stored is not None
    assert SECRET_EMAIL in json.dumps(stored.to_json())

    for event_id in ("c-7", "c-8"):
        res = await sc.request("GET", f"/v1/cases/{event_id}", headers=sc.admin)
        assert res.status == 200, res.body
        assert SECRET_EMAIL not in json.dumps(res.body)
        assert "email" not in json.dumps(res.body)
        assert res.body["event"]["payload"]["customer"] == {"tier": "gold"}
    seen = (await case(sc, "c-7"))["decisions"][0]["decision"]["seen"]
    assert seen["payload"]["customer"] == {"tier": "gold"}  # what the agent was sent


# -- the gateway's tool calls -------------------------------------------------------------------


async def test_a_case_shows_the_gateways_tool_calls_in_order_without_redacted_arguments(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    refund_args = {"order_id": "o-secret-77", "amount": 42.5}

    async def agent(body: dict[str, Any]) -> Reply:
        async with Client(body["tools_url"]) as client:
            await client.call_tool("get_order", {"order_id": "o-1"})
            await client.call_tool("issue_refund", refund_args)
            await client.call_tool("get_order", {"order_id": "o-2"})
        # It declares an action it did not take (its own answer, kept as declared_actions).
        declared = [{"tool": "issue_refund", "args": {**refund_args, "amount": 1.0}}]
        return Reply(200, {"decision": {"action": "approve"}, "actions": declared})

    agent_srv = await agent_server(agent)
    extra = "      redact: {issue_refund: [order_id]}\n"
    sc = await sidecar(policy=gateway_policy(up.url, extra=extra), agent=agent_srv.url)
    await ingest(sc, "/v1/events", {"event_id": "r-1", "task_type": "refund", "payload": {}})
    human = outcome(
        "r-1",
        {"action": "approve"},
        "2026-11-20T10:00:00Z",
        actions=[{"tool": "issue_refund", "args": refund_args}],
    )
    await ingest(sc, "/v1/outcomes", human)
    await sc.app[GATEWAY].flush()

    body = await case(sc, "r-1")
    calls = body["tool_calls"]
    assert [(c["tool"], c["class"], c["outcome"], c["args"]) for c in calls] == [
        ("get_order", "read", "forwarded", {"order_id": "o-1"}),
        ("issue_refund", "write", "captured", {"amount": 42.5}),
        ("get_order", "read", "forwarded", {"order_id": "o-2"}),
    ]
    assert [c["id"] for c in calls] == sorted(c["id"] for c in calls)
    assert all(c["shadow"] and c["level"] == "L0" for c in calls)
    assert all(isinstance(c["latency_ms"], float) for c in calls)
    assert body["tool_calls_total"] == 3
    as_documented(body)
    (decision,) = body["decisions"]
    assert decision["actions_captured"] is True
    assert decision["actions"] == [{"tool": "issue_refund", "args": {"amount": 42.5}}]
    assert decision["declared_actions"] == [{"tool": "issue_refund", "args": {"amount": 1.0}}]
    assert body["outcomes"][0]["actions"] == [{"tool": "issue_refund", "args": {"amount": 42.5}}]
    assert body["comparisons"][0]["verdict"] == "agree"
    # The agent's own answer is stored as it answered: the route leaves the argument out.
    stored = await sc.pipeline.store.case("r-1")
    assert stored is not None
    assert "o-secret-77" in json.dumps(stored.to_json())
    assert "o-secret-77" not in json.dumps(body)
    # A call row stored before the policy redacted the argument: left out as well.
    row = ToolCallRow(
        datetime.now(UTC),
        "refund",
        "r-1",
        True,
        "L0",
        "issue_refund",
        "backoffice",
        "write",
        "captured",
        1.0,
        None,
        refund_args,
    )
    await sc.pipeline.store.put_tool_calls([row])
    body = await case(sc, "r-1")
    assert (body["tool_calls_total"], body["tool_calls"][-1]["args"]) == (4, {"amount": 42.5})
    assert "o-secret-77" not in json.dumps(body)
    # A case with no task type yet (its outcome only): every task type's paths apply.
    await ingest(sc, "/v1/outcomes", {**human, "event_id": "r-2"})
    body = await case(sc, "r-2")
    assert body["task_type"] is None
    assert body["outcomes"][0]["actions"] == [{"tool": "issue_refund", "args": {"amount": 42.5}}]


# -- who may read a case ------------------------------------------------------------------------


async def test_a_case_needs_the_admin_token_in_the_simple_mode_and_a_viewer_with_tokens(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    sc = await started(sidecar, agent_server)
    await ingest(sc, "/v1/events", event("c-9"))
    assert (await sc.get("/v1/cases/c-9")).status == 401
    bad = {"Authorization": "Bearer not-the-token"}
    assert (await sc.get("/v1/cases/c-9", headers=bad)).status == 401
    assert (await sc.get("/v1/cases/c-9", headers=sc.admin)).status == 200

    secrets = {"viewer": "viewer-secret-0123456789", "ingest": "ingest-secret-0123456789"}
    tokens = tmp_path / "tokens.yaml"
    entries = [{"name": n, "roles": [n], "sha256": digest(s)} for n, s in secrets.items()]
    tokens.write_text(yaml.safe_dump({"tokens": entries}))
    agent = await agent_server(lambda _: Reply(200, AGENT_REPLY))
    strict = await sidecar(policy=POLICY, agent=agent.url, tokens_file=tokens, admin_token=None)
    as_ = {n: {"Authorization": f"Bearer {s}"} for n, s in secrets.items()}
    res = await strict.post("/v1/events", json_body=event("c-9"), headers=as_["ingest"])
    assert res.status == 202, res.body
    await strict.pipeline.drain()
    assert (await strict.get("/v1/cases/c-9")).status == 401
    denied = await strict.get("/v1/cases/c-9", headers=as_["ingest"])
    assert denied.status == 403
    assert "needs viewer" in denied.body["error"]
    # The role is checked before the id: an unknown case tells nobody whether it exists.
    assert (await strict.get("/v1/cases/nope", headers=as_["ingest"])).status == 403
    res = await strict.get("/v1/cases/c-9", headers=as_["viewer"])
    assert res.status == 200, res.body
    assert res.body["event"]["payload"]["customer"] == {"tier": "gold"}


@pytest.mark.parametrize("event_id", ["a/b", "ops:r 1", "é-1"])
async def test_ids_that_need_escaping_in_a_path_name_their_case(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, event_id: str
) -> None:
    sc = await started(sidecar, agent_server)
    await ingest(sc, "/v1/events", event(event_id))
    body = await case(sc, quote(event_id, safe=""))
    assert body["event_id"] == event_id
    assert body["event"]["event_id"] == event_id


async def test_a_case_shows_its_first_thousand_tool_calls_and_counts_them_all(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    now = datetime.now(UTC)
    rows = [
        ToolCallRow(
            now,
            "refund",
            "c-10",
            True,
            "L0",
            "get_order",
            "backoffice",
            "read",
            "forwarded",
            1.0,
            None,
            {"n": n},
        )
        for n in range(MAX_CASE_TOOL_CALLS + 2)
    ]
    await sc.pipeline.store.put_tool_calls(rows)
    body = await case(sc, "c-10")
    assert body["event"] is None
    assert body["task_type"] == "refund"
    assert body["tool_calls_total"] == MAX_CASE_TOOL_CALLS + 2
    assert [c["args"]["n"] for c in body["tool_calls"]] == list(range(MAX_CASE_TOOL_CALLS))
