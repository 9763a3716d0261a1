"""Independent evidence, end to end through HTTP: once the agent acts, the outcome a host
posts for an agent-handled item echoes the agent's own decision, and a human shown the
agent's proposal is anchored by it. Only blind outcomes (L0, the audit sample from L1 up,
items never routed) may count as evidence; the rest is acceptance, reported beside it.

A real sidecar (build_app, DuckDB file) with a real agent server on loopback; the host is
the test: it asks GET /v1/route for each item and posts what its handler decided.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from shadow.model import Level
from shadow.policy import parse_policy
from tests.shadow.conftest import (
    AGENT_VERSION,
    AgentServerFactory,
    Reply,
    Sidecar,
    SidecarFactory,
    agree_reply,
    metric,
)

# refund starts at L3 (the agent acts), with a quarter of the items audited blind.
POLICY = """
task_types:
  refund:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      start: L3
      ceiling: L3
      mode: propose
      audit_rate: 0.25
      gates:
        L1: {agreement: 0.5, min_samples: 1000}
        L2: {agreement: 0.5, min_samples: 1000}
        L3: {agreement: 0.5, min_samples: 1000}
"""


def answer(request: dict[str, Any]) -> Reply:
    return agree_reply({"action": "approve"})


async def route(sc: Sidecar, event_id: str) -> dict[str, Any]:
    res = await sc.get(f"/v1/route/refund?event_id={event_id}", headers=sc.admin)
    assert res.status == 200, res.body
    return dict(res.body)


async def refund(sc: Sidecar) -> dict[str, Any]:
    return dict((await sc.agreement())["task_types"]["refund"])


async def settle(sc: Sidecar) -> None:
    await sc.pipeline.drain()
    await sc.pipeline.handling.flush()
    await sc.pipeline.evaluate()


async def test_echoed_outcomes_never_become_evidence_only_the_audit_sample_does(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(answer)
    sc = await sidecar(policy=POLICY, agent=agent.url)
    task = parse_policy(POLICY).task_types["refund"]
    ids = [f"r-{i}" for i in range(300)]
    events = [
        {"event_id": e, "task_type": "refund", "payload": {"n": i}} for i, e in enumerate(ids)
    ]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    await sc.pipeline.drain()

    # The host routes every item; the agent-handled ones "decide" what the agent decided.
    handled = {e: (await route(sc, e))["handled_by"] for e in ids}
    blind = [e for e in ids if handled[e] == "blind"]
    acted = [e for e in ids if handled[e] == "agent"]
    assert blind == [e for e in ids if task.audited(e, Level.L3)]
    assert len(blind) + len(acted) == len(ids)
    assert 40 < len(blind) < 110
    # The audit humans disagree on every tenth of their items.
    wrong = set(blind[::10])
    outcomes = [
        {"event_id": e, "decision": {"action": "deny" if e in wrong else "approve"}} for e in blind
    ] + [{"event_id": e, "decision": {"action": "approve"}} for e in acted]
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await settle(sc)

    doc = await refund(sc)
    assert doc["n"] == len(blind)  # the echoes did not grow the evidence
    assert doc["agree"] == len(blind) - len(wrong)
    assert doc["acceptance"]["agent"] == {"n": len(acted), "agree": len(acted), "agreement": 1.0}
    assert doc["acceptance"]["assisted"]["n"] == 0
    samples = await sc.metrics()
    assert metric(samples, "shadow_routes_total", task_type="refund", handled_by="agent") == len(
        acted
    )
    version = {"task_type": "refund", "agent_version": AGENT_VERSION}
    assert metric(samples, "shadow_evidence_comparisons", **version) == len(blind)
    assert metric(samples, "shadow_acceptance_comparisons", **version, handled_by="agent") == len(
        acted
    )


async def test_a_host_that_claims_blind_for_an_agent_handled_item_is_overruled_and_counted(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(answer)
    sc = await sidecar(policy=POLICY, agent=agent.url)
    ids = [f"h-{i}" for i in range(120)]
    events = [{"event_id": e, "task_type": "refund", "payload": {}} for e in ids]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    await sc.pipeline.drain()
    handled = {e: (await route(sc, e))["handled_by"] for e in ids}
    acted = [e for e in ids if handled[e] == "agent"]
    blind = [e for e in ids if handled[e] == "blind"]
    # Every outcome says "blind", and the agent-handled ones echo the agent.
    outcomes = [
        {"event_id": e, "decision": {"action": "approve"}, "handled_by": "blind"} for e in ids
    ]
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await settle(sc)
    doc = await refund(sc)
    assert doc["n"] == len(blind)
    assert doc["acceptance"]["agent"]["n"] == len(acted)
    samples = await sc.metrics()
    assert metric(samples, "shadow_handling_conflicts_total", task_type="refund") == len(acted)


async def test_items_never_routed_are_blind_and_a_stated_handling_is_used_without_a_record(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """A host that never calls /v1/route: its items are blind (evidence), unless the outcome
    itself says the agent handled the item or a human saw its proposal."""
    agent = await agent_server(answer)
    sc = await sidecar(policy=POLICY, agent=agent.url)
    ids = [f"n-{i}" for i in range(30)]
    events = [{"event_id": e, "task_type": "refund", "payload": {}} for e in ids]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    await sc.pipeline.drain()
    stated = {ids[0]: "agent", ids[1]: "assisted", ids[2]: "blind"}
    outcomes = [
        {"event_id": e, "decision": {"action": "approve"}}
        | ({"handled_by": stated[e]} if e in stated else {})
        for e in ids
    ]
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await settle(sc)
    doc = await refund(sc)
    assert doc["n"] == len(ids) - 2
    assert doc["acceptance"]["agent"]["n"] == 1
    assert doc["acceptance"]["assisted"]["n"] == 1
    samples = await sc.metrics()
    assert metric(samples, "shadow_handling_conflicts_total", task_type="refund") == 0


async def test_a_route_asked_after_the_outcome_does_not_change_how_the_item_counts(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """A route asked about an item already decided describes nothing the human saw: it is
    answered, but the item stays what it was (tests/shadow/test_routing_evidence.py)."""
    agent = await agent_server(answer)
    sc = await sidecar(policy=POLICY, agent=agent.url)
    task = parse_policy(POLICY).task_types["refund"]
    ids = [f"late-{i}" for i in range(40)]
    acted = [e for e in ids if not task.audited(e, Level.L3)]
    events = [{"event_id": e, "task_type": "refund", "payload": {}} for e in ids]
    outcomes = [{"event_id": e, "decision": {"action": "approve"}} for e in ids]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await settle(sc)
    assert (await refund(sc))["n"] == len(ids)
    assert acted
    for e in ids:
        await route(sc, e)
    await settle(sc)
    doc = await refund(sc)
    assert doc["n"] == len(ids)
    assert doc["acceptance"]["agent"]["n"] == 0


async def test_handled_by_on_an_outcome_is_checked(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(answer)
    sc = await sidecar(policy=POLICY, agent=agent.url)
    for bad in ("robot", "AGENT", "", 1, True, None, ["agent"], {"agent": 1}):
        body = {"event_id": "x-1", "decision": {"action": "approve"}, "handled_by": bad}
        res = await sc.post("/v1/outcomes", json_body=body)
        if bad is None:
            assert res.status == 202, res.body  # null is the field left out
            continue
        assert res.status == 400, (bad, res.body)
        assert "handled_by" in str(res.body), res.body
    # A route answer for an event id the ingest would refuse is refused too (nothing kept).
    for bad_id in ("x" * 300, "a\nb"):
        res = await sc.get(f"/v1/route/refund?event_id={quote(bad_id)}", headers=sc.admin)
        assert res.status == 400, res.body
    await sc.pipeline.handling.flush()
    assert await sc.pipeline.store.handling_of(["x" * 300, "a\nb"]) == {}
