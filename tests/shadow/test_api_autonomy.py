"""The autonomy writes of the HTTP API, adversarially (issue: approvals pinned to the
proposal, manual sets that say what is in effect, rejections, counted moves, clipped text):
a real sidecar (build_app, aiohttp, DuckDB file) and a real fake agent on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from shadow.api import MAX_ACTOR_CHARS, MAX_REASON_CHARS
from tests.shadow.conftest import (
    AgentServerFactory,
    Reply,
    Sidecar,
    SidecarFactory,
    agree_reply,
    metric,
)

# ``appeal`` proposes (L1 at 5 agreeing, L2 at 10); ``strict`` allows no critical miss at L3.
POLICY = """
task_types:
  appeal:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      ceiling: L3
      mode: propose
      gates:
        L1: {agreement: 0.5, min_samples: 5}
        L2: {agreement: 0.55, min_samples: 10}
        L3: {agreement: 0.6, min_samples: 15, max_critical: 0}
  strict:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      ceiling: L3
      mode: propose
      gates:
        L1: {agreement: 0.3, min_samples: 5}
        L2: {agreement: 0.35, min_samples: 5}
        L3: {agreement: 0.4, min_samples: 5, max_critical: 0, critical_window: 50}
"""


def answer(request: dict[str, Any]) -> Reply:
    return agree_reply(request["payload"].get("expect") or {"action": "approve"})


async def evidence(sc: Sidecar, task_type: str, start: int, count: int, wrong: int = 0) -> None:
    """``count`` compared cases; the first ``wrong`` of them the agent gets wrong."""
    ids = [f"{task_type}-{i}" for i in range(start, start + count)]
    events = [
        {"event_id": e, "task_type": task_type, "payload": {"expect": {"action": "approve"}}}
        for e in ids
    ]
    outcomes = [
        {"event_id": e, "decision": {"action": "deny" if k < wrong else "approve"}}
        for k, e in enumerate(ids)
    ]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()


async def started(sidecar: SidecarFactory, agent_server: AgentServerFactory) -> Sidecar:
    agent = await agent_server(answer)
    return await sidecar(policy=POLICY, agent=agent.url)


async def one(sc: Sidecar, task_type: str) -> dict[str, Any]:
    res = await sc.get(f"/v1/autonomy/{task_type}")
    assert res.status == 200, res.body
    return dict(res.body)


async def approve(sc: Sidecar, task_type: str, **body: Any) -> Any:
    return await sc.post(f"/v1/autonomy/{task_type}/approve", json_body=body, headers=sc.admin)


def changes(text: Any, task_type: str, move: str) -> float | None:
    return metric(text, "shadow_autonomy_changes_total", task_type=task_type, move=move)


async def test_the_readme_approve_run_twice_promotes_once(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """Approving L1 makes the ladder propose L2 at once (10 agreeing cases meet it); the
    same approval sent again (a retry, a double click) must not take that L2 proposal."""
    sc = await started(sidecar, agent_server)
    await evidence(sc, "appeal", 0, 10)
    first = (await one(sc, "appeal"))["proposal"]
    assert (first["from_level"], first["to_level"]) == ("L0", "L1")

    res = await approve(sc, "appeal", to="L1", actor="ops/jane")
    assert res.status == 200, res.body
    assert (res.body["applied"], res.body["from"], res.body["to"]) == (True, "L0", "L1")
    assert [s["move"] for s in res.body["then"]] == ["propose"]
    pending = (await one(sc, "appeal"))["proposal"]
    assert (pending["from_level"], pending["to_level"]) == ("L1", "L2")

    for body in ({"to": "L1"}, {"to": "L1", "from": "L0"}, {"proposal_id": first["id"]}):
        res = await approve(sc, "appeal", **body)
        assert res.status == 200, res.body
        assert (res.body["applied"], res.body["move"], res.body["to"]) == (False, "stay", "L1")
        assert "already approved" in res.body["reason"]
    state = await one(sc, "appeal")
    assert state["level"] == "L1"
    assert state["proposal"]["id"] == pending["id"]  # still pending, untouched
    assert state["last_decision"]["proposal_id"] == first["id"]
    history = (await sc.get("/v1/autonomy/appeal/history")).body["entries"]
    assert [e["action"] for e in history].count("approve") == 1


async def test_an_approval_must_name_the_pending_proposal(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    await evidence(sc, "appeal", 0, 8)
    pending = (await one(sc, "appeal"))["proposal"]
    # Nothing named: 400 that says what is pending. The old {"level": ...} is refused, not
    # silently ignored.
    for body in ({}, {"actor": "ops"}):
        res = await approve(sc, "appeal", **body)
        assert res.status == 400
        assert "name the proposal" in res.body["error"]
        assert pending["id"] in res.body["error"]
    res = await approve(sc, "appeal", level="L1")
    assert res.status == 400
    assert "unknown key 'level'" in res.body["error"]
    for body in (
        {"proposal_id": "p-000000000000"},
        {"to": "L2"},
        {"to": "L1", "from": "L1"},
        {"proposal_id": pending["id"], "to": "L2"},
    ):
        res = await approve(sc, "appeal", **body)
        assert res.status == 409, (body, res.body)
        assert "not the pending proposal" in res.body["error"]
    malformed: list[dict[str, Any]] = [{"to": "L9"}, {"to": 1}, {"proposal_id": ["x"]}]
    for bad in malformed:
        assert (await approve(sc, "appeal", **bad)).status == 400
    assert (await one(sc, "appeal"))["level"] == "L0"


async def test_concurrent_approvals_over_http_apply_once(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    await evidence(sc, "appeal", 0, 10)
    pending = (await one(sc, "appeal"))["proposal"]
    results = await asyncio.gather(
        *[approve(sc, "appeal", proposal_id=pending["id"]) for _ in range(12)],
        *[approve(sc, "appeal", to="L1") for _ in range(12)],
    )
    assert {r.status for r in results} == {200}
    assert sum(1 for r in results if r.body["applied"]) == 1
    assert (await one(sc, "appeal"))["level"] == "L1"
    assert changes(await sc.metrics(), "appeal", "approve") == 1


async def test_a_manual_set_answers_the_level_in_effect(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """Critical misses forbid L3: the operator's set to L3 is applied, audited, and the
    same request's evaluation demotes it; the answer says so instead of 'to: L3'."""
    sc = await started(sidecar, agent_server)
    await evidence(sc, "strict", 0, 20, wrong=3)
    res = await sc.put(
        "/v1/autonomy/strict", json_body={"level": "L3", "reason": "pilot"}, headers=sc.admin
    )
    assert res.status == 200, res.body
    body = res.body
    assert (body["requested"], body["from"], body["applied"]) == ("L3", "L0", True)
    level = (await one(sc, "strict"))["level"]
    assert body["to"] == level == "L2"
    assert body["overridden"]["move"] == "demote"
    assert body["overridden"]["to"] == "L2"
    assert "critical misses" in body["overridden"]["reason"]
    actions = [
        (e["action"], e["to_level"])
        for e in (await sc.get("/v1/autonomy/strict/history")).body["entries"][:2]
    ]
    assert actions == [("demote", "L2"), ("manual_set", "L3")]


async def test_a_rejected_proposal_waits_for_more_evidence_or_reconsider(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    await evidence(sc, "appeal", 0, 8)
    pending = (await one(sc, "appeal"))["proposal"]
    assert pending["evidence"]["n"] == 8
    path = "/v1/autonomy/appeal/reject"
    res = await sc.post(path, json_body={"to": "L1"}, headers=sc.admin)
    assert res.status == 400
    assert "reason" in res.body["error"]
    res = await sc.post(
        path,
        json_body={"proposal_id": pending["id"], "reason": "seasonal peak", "actor": "ops/bob"},
        headers=sc.admin,
    )
    assert res.status == 200, res.body
    assert (res.body["move"], res.body["applied"], res.body["to"]) == ("reject", True, "L0")
    entry = (await sc.get("/v1/autonomy/appeal/history")).body["entries"][0]
    assert (entry["action"], entry["actor"]) == ("reject", "ops/bob")
    assert "seasonal peak" in entry["reason"]
    again = await sc.post(
        path, json_body={"proposal_id": pending["id"], "reason": "again"}, headers=sc.admin
    )
    assert (again.status, again.body["applied"]) == (200, False)
    # Four more agreeing cases (under L1's min_samples of 5): still not proposed.
    await evidence(sc, "appeal", 8, 4)
    state = await one(sc, "appeal")
    assert (state["level"], state["proposal"]) == ("L0", None)
    assert state["last_decision"]["verdict"] == "rejected"
    # The fifth makes n = 8 + 5: proposed again, with a new id.
    await evidence(sc, "appeal", 12, 1)
    fresh = (await one(sc, "appeal"))["proposal"]
    assert fresh is not None
    assert fresh["id"] != pending["id"]
    # Reject that one too, then the operator asks to reconsider: proposed at once.
    res = await sc.post(
        path, json_body={"proposal_id": fresh["id"], "reason": "no"}, headers=sc.admin
    )
    assert res.status == 200
    assert (await one(sc, "appeal"))["proposal"] is None
    res = await sc.post("/v1/autonomy/appeal/reconsider", json_body={}, headers=sc.admin)
    assert res.status == 200, res.body
    assert [s["move"] for s in res.body["then"]] == ["propose"]
    assert (await one(sc, "appeal"))["proposal"]["to_level"] == "L1"
    res = await sc.post("/v1/autonomy/appeal/reconsider", json_body={}, headers=sc.admin)
    assert res.status == 409
    m = await sc.metrics()
    assert changes(m, "appeal", "reject") == 2
    assert changes(m, "appeal", "reconsider") == 1


async def test_operator_moves_are_counted(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    before = await sc.metrics()
    for move in ("approve", "manual_set", "freeze", "unfreeze", "follow", "reject"):
        assert changes(before, "appeal", move) == 0, move
    await evidence(sc, "appeal", 0, 8)
    assert (await approve(sc, "appeal", to="L1")).status == 200
    res = await sc.put("/v1/autonomy/appeal", json_body={"level": "L2"}, headers=sc.admin)
    assert res.status == 200
    assert (await sc.post("/v1/freeze", json_body={}, headers=sc.admin)).status == 200
    assert (await sc.post("/v1/unfreeze", json_body={}, headers=sc.admin)).status == 200
    after = await sc.metrics()
    for move in ("approve", "manual_set", "freeze", "unfreeze"):
        assert changes(after, "appeal", move) == 1, move
        assert changes(after, "strict", move) == (1 if move in ("freeze", "unfreeze") else 0)


async def test_free_text_is_clipped_and_kept_on_one_line(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    actor = "ops/" + "a" * 5000
    reason = "line one\nline two\r\x1b[31m" + "r" * 20_000
    res = await sc.put(
        "/v1/autonomy/appeal",
        json_body={"level": "L1", "actor": actor, "reason": reason},
        headers=sc.admin,
    )
    assert res.status == 200, res.body
    entry = (await sc.get("/v1/autonomy/appeal/history")).body["entries"][0]
    assert entry["actor"] == actor[:MAX_ACTOR_CHARS]
    assert len(entry["reason"]) == MAX_REASON_CHARS
    assert entry["reason"].startswith("line one line two  [31m")
    assert not any(ord(c) < 32 for c in entry["reason"] + entry["actor"])
    res = await sc.post(
        "/v1/freeze", json_body={}, headers={**sc.admin, "X-Shadow-Actor": "x" * 999}
    )
    assert res.status == 200
    entry = (await sc.get("/v1/autonomy/appeal/history")).body["entries"][0]
    assert entry["actor"] == "x" * MAX_ACTOR_CHARS


DRIFT_POLICY = """
task_types:
  refund:
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
    autonomy:
      ceiling: L3
      mode: auto
      gates:
        L1: {agreement: 0.90, min_samples: 50}
        L2: {agreement: 0.95, min_samples: 100}
        L3: {agreement: 0.98, min_samples: 300}
"""


async def test_a_degraded_agent_at_l3_is_demoted_within_tens_of_cases_whatever_its_history(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """Through HTTP ingest: the agent earns L3, then agrees on 3,000 more cases; then one
    answer in five is wrong (agreement 0.80). The drift detector demotes it within a few
    dozen cases (make bench-stats: median 30, p90 48), where the cumulative upper bound
    would need thousands (about 6,700 after 100,000 at 0.99)."""
    agent = await agent_server(answer)
    sc = await sidecar(policy=DRIFT_POLICY, agent=agent.url)

    async def post(start: int, count: int, wrong_every: int = 0) -> None:
        ids = [f"r-{i}" for i in range(start, start + count)]
        events = [
            {"event_id": e, "task_type": "refund", "payload": {"expect": {"action": "approve"}}}
            for e in ids
        ]
        outcomes = [
            {
                "event_id": e,
                "decision": {
                    "action": "deny" if wrong_every and k % wrong_every == 0 else "approve"
                },
            }
            for k, e in enumerate(ids, 1)
        ]
        assert (await sc.post_ndjson("/v1/events", events)).status == 202
        assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
        await sc.pipeline.drain()
        await sc.pipeline.evaluate()

    for start in range(0, 600, 200):
        await post(start, 200)
    assert (await one(sc, "refund"))["level"] == "L3"
    await post(600, 3000)
    assert (await one(sc, "refund"))["level"] == "L3"
    degraded = 0
    while (await one(sc, "refund"))["level"] == "L3":
        assert degraded < 100, "not demoted within 100 degraded cases"
        await post(3600 + degraded, 5, wrong_every=5)
        degraded += 5
    state = await one(sc, "refund")
    assert state["level"] == "L2"
    assert state["upper"] > 0.98  # the cumulative bound alone would not have demoted
    entry = (await sc.get("/v1/autonomy/refund/history")).body["entries"][0]
    assert (entry["action"], entry["from_level"], entry["to_level"]) == ("demote", "L3", "L2")
    assert entry["reason"].startswith("drift")
    print(f"demoted after {degraded} degraded cases")
    assert 20 <= degraded <= 60
    # The lost level is not given back on the old evidence: more good cases are needed.
    await post(5000, 100)
    assert (await one(sc, "refund"))["level"] == "L2"
