"""The review queue and adjudication (shadow.review, shadow.review_api, shadow.store.review)
through the real app with a tokens file: a real sidecar (build_app, aiohttp, DuckDB file) and
a real fake agent on loopback. Reviewers work the queue blind (nothing names the agent), the
server maps A/B back, claims expire, two reviewers racing never both get a case beyond
``reviews_per_case``, every role is checked, hostile text is refused with nothing stored, and
the adjudicated estimate (and a gate with ``evidence: adjudicated``) moves with the verdicts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.shadow.conftest import (
    AgentServerFactory,
    HttpResult,
    Sidecar,
    SidecarFactory,
    secret_auth,
    write_tokens,
)
from tests.shadow.test_api_autonomy import answer

POLICY = """
task_types:
  refund:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    review:
      not_against_agent: [policy_changed]
      claim_ttl: 10m
      agreement_share: %(share)s
      reviews_per_case: %(per_case)s
    autonomy:
      ceiling: L1
      mode: auto
      gates:
        L1: {agreement: 0.7, min_samples: 50, evidence: %(evidence)s}
  invoice:
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
"""

ROLES: dict[str, dict[str, Any]] = {
    "rev-1": {"roles": ["reviewer"]},
    "rev-2": {"roles": ["reviewer"]},
    "rev-invoice": {"roles": ["reviewer"], "task_types": ["invoice"]},
    "viewer": {"roles": ["viewer"]},
    "approver": {"roles": ["approver"]},
    "operator": {"roles": ["operator"]},
    "host": {"roles": ["host"]},
    "ingest": {"roles": ["ingest"]},
    "boss": {"roles": ["admin"]},
}


auth = secret_auth


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.yaml", ROLES)


async def start(
    sidecar: SidecarFactory,
    agent_server: AgentServerFactory,
    tokens_file: Path,
    *,
    share: float = 0.0,
    per_case: int = 1,
    evidence: str = "agreement",
    clock: FakeClock | None = None,
) -> Sidecar:
    agent = await agent_server(answer)
    policy = POLICY % {"share": share, "per_case": per_case, "evidence": evidence}
    return await sidecar(
        policy=policy, agent=agent.url, tokens_file=tokens_file, admin_token=None, clock=clock
    )


async def cases(sc: Sidecar, agree: int, disagree: int, task_type: str = "refund") -> None:
    """``agree`` compared cases where the human approved as the agent did, then
    ``disagree`` where the human denied."""
    ids = [f"{task_type}-{i}" for i in range(agree + disagree)]
    events = [
        {"event_id": e, "task_type": task_type, "payload": {"expect": {"action": "approve"}}}
        for e in ids
    ]
    outcomes = [
        {"event_id": e, "decision": {"action": "approve" if k < agree else "deny"}}
        for k, e in enumerate(ids)
    ]
    for path, records in (("/v1/events", events), ("/v1/outcomes", outcomes)):
        res = await sc.post(path, json_body=records, headers=auth("ingest"))
        assert res.status == 202, res.body
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()


async def claim(sc: Sidecar, who: str, query: str = "?task_type=refund") -> HttpResult:
    return await sc.get(f"/v1/review/next{query}", headers=auth(who))


async def verdict(sc: Sidecar, who: str, claim_id: str, **body: Any) -> HttpResult:
    return await sc.post(f"/v1/review/{claim_id}", json_body=body, headers=auth(who))


async def adjudicated(sc: Sidecar) -> dict[str, Any]:
    res = await sc.get("/v1/agreement", headers=auth("viewer"))
    assert res.status == 200, res.body
    return dict(res.body["task_types"]["refund"]["adjudicated"])


async def stored_adjudications(sc: Sidecar) -> int:
    def q() -> int:
        row = sc.pipeline.store.con.execute("SELECT count(*) FROM adjudications").fetchone()
        return int(row[0]) if row else 0

    return await sc.pipeline.store._run(q)


# -- blind ----------------------------------------------------------------------------------


async def test_a_claim_is_blind_and_the_server_maps_a_and_b_back(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file)
    await cases(sc, agree=0, disagree=24)
    orders: set[str] = set()
    for _ in range(24):
        res = await claim(sc, "rev-1")
        assert res.status == 200, res.body
        shown = res.body
        assert set(shown) == {
            "claim",
            "expires_at",
            "task_type",
            "event",
            "a",
            "b",
            "reason_codes",
            "remaining",
        }
        # The reason codes name both sides by design (human_error, agent_error); the
        # claim id is random. Nothing else may.
        text = json.dumps({k: v for k, v in shown.items() if k not in ("reason_codes", "claim")})
        for telltale in ("agent", "human", "event_id", "refund-", "decided_by", "confidence"):
            assert telltale not in text, (telltale, text)
        assert set(shown["a"]) == set(shown["b"]) == {"decision", "actions"}
        a_action = shown["a"]["decision"]["action"]
        # The agent approves every case and the human denied each: A is the agent when A
        # approves. "A was right" must come back as the agent's win exactly then.
        res = await verdict(sc, "rev-1", shown["claim"], verdict="a_right", reason="human_error")
        assert res.status == 200, res.body
        a_was = res.body["a_was"]
        orders.add(a_was)
        assert (a_action == "approve") == (a_was == "agent")
        expected = "agent_right" if a_was == "agent" else "human_right"
        assert res.body["adjudication"]["verdict"] == expected
        assert res.body["adjudication"]["blind"] is True
        assert res.body["adjudication"]["reviewer"] == "rev-1"
    assert orders == {"agent", "human"}  # both orders are shown (P(not) = 2**-23)
    assert (await claim(sc, "rev-1")).status == 204


async def test_asking_again_answers_the_same_claim_and_a_verdict_is_given_once(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file)
    await cases(sc, agree=0, disagree=3)
    first = await claim(sc, "rev-1")
    again = await claim(sc, "rev-1")
    assert first.body["claim"] == again.body["claim"]
    assert first.body["a"] == again.body["a"]
    body = {"verdict": "b_right", "reason": "agent_error", "note": "wrong window"}
    done = await verdict(sc, "rev-1", first.body["claim"], **body)
    assert done.status == 200, done.body
    retried = await verdict(sc, "rev-1", first.body["claim"], **body)  # a client's retry
    assert retried.status == 200
    assert retried.body["adjudication"]["id"] == done.body["adjudication"]["id"]
    changed = await verdict(sc, "rev-1", first.body["claim"], **{**body, "verdict": "a_right"})
    assert changed.status == 409, changed.body
    other = await verdict(sc, "rev-2", first.body["claim"], **body)  # not rev-2's claim
    assert other.status == 404, other.body
    unknown = await verdict(sc, "rev-1", "c-nope", **body)
    assert unknown.status == 404
    assert await stored_adjudications(sc) == 1


async def test_an_expired_claim_is_refused_and_the_case_goes_back_to_the_queue(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    clock = FakeClock()
    sc = await start(sidecar, agent_server, tokens_file, clock=clock)
    await cases(sc, agree=0, disagree=1)
    held = await claim(sc, "rev-1")
    assert held.status == 200
    assert (await claim(sc, "rev-2")).status == 204  # rev-1 holds the only case
    clock.advance(minutes=10, seconds=1)  # review.claim_ttl is 10m
    late = await verdict(sc, "rev-1", held.body["claim"], verdict="a_right", reason="other")
    assert late.status == 410, late.body
    assert "expired" in late.body["error"]
    taken = await claim(sc, "rev-2")
    assert taken.status == 200
    res = await verdict(sc, "rev-2", taken.body["claim"], verdict="unclear", reason="other")
    assert res.status == 200
    assert await stored_adjudications(sc) == 1
    assert (await claim(sc, "rev-1")).status == 204  # reviewed once: reviews_per_case 1


async def test_two_reviewers_racing_for_the_one_case_never_both_get_it(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file)
    await cases(sc, agree=0, disagree=1)
    who = ("rev-1", "rev-2", "boss")
    got = await asyncio.gather(*(claim(sc, w) for w in who))
    assert sorted(r.status for r in got) == [200, 204, 204], [r.body for r in got]
    winner = next(i for i, r in enumerate(got) if r.status == 200)
    assert (await claim(sc, who[winner])).body["claim"] == got[winner].body["claim"]
    # Many cases, every reviewer asking at once, round after round: each case is reviewed
    # exactly once (reviews_per_case 1) and nobody is left holding a case another answered.
    await cases(sc, agree=0, disagree=9)  # refund-0 (claimed above) .. refund-8
    answered: list[str] = []
    for _ in range(12):
        got = await asyncio.gather(*(claim(sc, w) for w in who))
        held = [(w, r.body["claim"]) for w, r in zip(who, got, strict=True) if r.status == 200]
        if not held:
            break
        done = await asyncio.gather(
            *(verdict(sc, w, c, verdict="unclear", reason="other") for w, c in held)
        )
        for res in done:
            assert res.status == 200, res.body
            answered.append(res.body["adjudication"]["event_id"])
    assert sorted(answered) == sorted(f"refund-{i}" for i in range(9))
    for w in who:
        assert (await claim(sc, w)).status == 204, w


async def test_two_reviews_per_case_report_the_reviewers_agreement(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file, per_case=2)
    await cases(sc, agree=0, disagree=2)
    answers = {"rev-1": ["a_right", "a_right"], "rev-2": ["a_right", "b_right"]}
    mapped: dict[str, list[str]] = {"rev-1": [], "rev-2": []}
    for who, picks in answers.items():
        for pick in picks:
            got = await claim(sc, who)
            assert got.status == 200, got.body
            res = await verdict(sc, who, got.body["claim"], verdict=pick, reason="other")
            assert res.status == 200, res.body
            mapped[who].append(res.body["adjudication"]["event_id"])
            if who == "rev-2":  # the other's verdict is shown once one's own is in
                assert [o["reviewer"] for o in res.body["others"]] == ["rev-1"]
        assert (await claim(sc, who)).status == 204
    assert (await claim(sc, "boss")).status == 204  # each case has its 2 reviews
    assert sorted(mapped["rev-1"]) == sorted(mapped["rev-2"])
    pair = (await adjudicated(sc))["reviewer_agreement"]
    assert pair is not None
    assert pair["cases"] == 2
    assert pair["agree"] in (0, 1, 2)  # depends on A/B order; the count is checked below

    def q() -> int:
        rows = sc.pipeline.store.con.execute(
            "SELECT event_id FROM adjudications GROUP BY event_id "
            "HAVING count(DISTINCT verdict) = 1"
        ).fetchall()
        return len(rows)

    assert pair["agree"] == await sc.pipeline.store._run(q)


# -- the estimate and the gate ---------------------------------------------------------------


async def test_verdicts_move_the_adjudicated_estimate_and_promote_an_adjudicated_gate(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file, share=0.5, evidence="adjudicated")
    await cases(sc, agree=30, disagree=30)
    before = await adjudicated(sc)
    assert before["reviewed"] == {"agree": 0, "disagree": 0}
    assert before["lower"] == 0.0
    doc = (await sc.get("/v1/agreement", headers=auth("viewer"))).body["task_types"]["refund"]
    assert doc["level"] == "L0"
    assert doc["next_gate"]["evidence"] == "adjudicated"
    assert doc["next_gate"]["met"] is False
    # The humans were wrong on every disagreement: the reviewers say so, blind.
    for i in range(60):
        got = await claim(sc, "rev-1")
        assert got.status == 200, (i, got.body)
        a, b = got.body["a"]["decision"], got.body["b"]["decision"]
        pick = (
            "both_acceptable" if a == b else ("a_right" if a["action"] == "approve" else "b_right")
        )
        res = await verdict(sc, "rev-1", got.body["claim"], verdict=pick, reason="human_error")
        assert res.status == 200, res.body
        assert res.body["adjudication"]["acceptable"] is True
    assert (await claim(sc, "rev-1")).status == 204
    after = await adjudicated(sc)
    assert after["reviewed"] == {"agree": 30, "disagree": 30}
    assert after["acceptable"] == {"agree": 30, "disagree": 30}
    assert after["estimate"] == 1.0
    assert after["lower"] >= 0.7 > before["lower"]
    doc = (await sc.get("/v1/agreement", headers=auth("viewer"))).body["task_types"]["refund"]
    assert doc["agreement"] == 0.5  # raw agreement is unchanged
    assert doc["level"] == "L1"  # the gate judged the adjudicated bound (mode: auto)
    history = await sc.pipeline.store.audit_log(task_type="refund", limit=200)
    promoted = [e for _, e in history if e.action == "promote"]
    assert promoted
    assert "adjudicated lower bound" in promoted[0].reason
    assert sum(1 for _, e in history if e.action == "adjudication") == 60


async def test_a_human_right_verdict_under_a_not_against_agent_code_is_acceptable(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file)
    await cases(sc, agree=0, disagree=2)
    results = []
    for reason in ("policy_changed", "human_error"):
        got = await claim(sc, "rev-1")
        a_is_human = got.body["a"]["decision"]["action"] == "deny"
        pick = "a_right" if a_is_human else "b_right"  # the human was right
        res = await verdict(sc, "rev-1", got.body["claim"], verdict=pick, reason=reason)
        assert res.body["adjudication"]["verdict"] == "human_right"
        results.append(res.body["adjudication"]["acceptable"])
    assert results == [True, False]
    assert (await adjudicated(sc))["acceptable"] == {"agree": 0, "disagree": 1}


# -- direct verdicts, hidden until one's own -------------------------------------------------


async def test_a_direct_verdict_is_shown_on_the_case_hidden_from_other_reviewers_and_not_evidence(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file)
    await cases(sc, agree=0, disagree=1)
    path = "/v1/cases/refund-0/adjudication"
    body = {"verdict": "human_right", "reason": "agent_error", "note": "over the limit"}
    res = await sc.post(path, json_body=body, headers=auth("rev-1"))
    assert res.status == 201, res.body
    assert res.body["adjudication"]["blind"] is False
    assert res.body["adjudication"]["agent_version"]
    again = await sc.post(path, json_body=body, headers=auth("rev-1"))
    assert again.status == 200
    other = await sc.post(path, json_body={**body, "verdict": "agent_right"}, headers=auth("rev-1"))
    assert other.status == 409
    seen = await sc.get("/v1/cases/refund-0", headers=auth("rev-2"))
    assert seen.body["adjudications"] == []
    assert seen.body["adjudications_hidden"] == 1
    for who in ("viewer", "boss", "rev-1"):
        shown = await sc.get("/v1/cases/refund-0", headers=auth(who))
        assert [a["reviewer"] for a in shown.body["adjudications"]] == ["rev-1"], who
        assert "adjudications_hidden" not in shown.body
    res = await sc.post(path, json_body={**body, "verdict": "agent_right"}, headers=auth("rev-2"))
    assert res.status == 201
    assert [o["reviewer"] for o in res.body["others"]] == ["rev-1"]
    shown = await sc.get("/v1/cases/refund-0", headers=auth("rev-2"))
    assert len(shown.body["adjudications"]) == 2
    assert (await adjudicated(sc))["reviewed"] == {"agree": 0, "disagree": 0}
    # The case is still in the blind queue for a reviewer who has not judged it.
    assert (await claim(sc, "boss")).status == 200
    assert (
        await sc.post("/v1/cases/nope/adjudication", json_body=body, headers=auth("rev-1"))
    ).status == 404


# -- roles and hostile input -----------------------------------------------------------------


async def test_every_role_on_every_review_route(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file)
    await cases(sc, agree=0, disagree=3)
    await cases(sc, agree=0, disagree=2, task_type="invoice")
    body = {"verdict": "human_right", "reason": "other"}
    for who in ("viewer", "approver", "operator", "host", "ingest"):
        assert (await claim(sc, who)).status == 403, who
        res = await sc.post("/v1/cases/refund-1/adjudication", json_body=body, headers=auth(who))
        assert res.status == 403, who
        assert "reviewer" in res.body["error"]
        res = await verdict(sc, who, "c-whatever", verdict="a_right", reason="other")
        assert res.status == 403, who
    reads = {"viewer", "approver", "operator", "rev-1", "rev-2", "rev-invoice", "boss"}
    for name in ROLES:
        res = await sc.get("/v1/review/stats", headers=auth(name))
        assert res.status == (200 if name in reads else 403), (name, res.body)
    assert (await sc.get("/v1/review/stats")).status == 401
    bad = await sc.get("/v1/review/next", headers={"Authorization": "Bearer wrong"})
    assert bad.status == 401
    # A scoped reviewer reviews only its task types.
    assert (await claim(sc, "rev-invoice")).status == 403
    for _ in range(2):
        got = await claim(sc, "rev-invoice", "")
        assert got.status == 200, got.body
        assert got.body["task_type"] == "invoice"
        await verdict(sc, "rev-invoice", got.body["claim"], verdict="unclear", reason="other")
    assert (await claim(sc, "rev-invoice", "")).status == 204
    res = await sc.post(
        "/v1/cases/refund-1/adjudication", json_body=body, headers=auth("rev-invoice")
    )
    assert res.status == 403
    metrics = await sc.get("/metrics", headers=auth("viewer"))
    assert 'shadow_auth_refusals_total{role="reviewer",status="403"}' in metrics.body


async def test_a_forged_actor_and_hostile_text_are_refused_and_nothing_is_stored(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file)
    await cases(sc, agree=0, disagree=1)
    got = await claim(sc, "rev-1")
    cid = got.body["claim"]
    forged = await verdict(sc, "rev-1", cid, verdict="a_right", reason="other", actor="rev-2")
    assert forged.status == 400, forged.body
    header = await sc.post(
        f"/v1/review/{cid}",
        json_body={"verdict": "a_right", "reason": "other"},
        headers={**auth("rev-1"), "X-Shadow-Actor": "boss"},
    )
    assert header.status == 400
    hostile: list[dict[str, Any]] = [
        {"verdict": "agent_right", "reason": "other"},  # not a blind verdict
        {"verdict": "a_right"},  # no reason
        {"verdict": "a_right", "reason": "made_up"},
        {"verdict": "a_right", "reason": "oth\x00er"},
        {"verdict": "a_right", "reason": "other", "note": "lone \ud800 surrogate"},
        {"verdict": "a_right", "reason": "other", "note": "x" * 2001},
        {"verdict": "a_right", "reason": "other", "note": 7},
        {"verdict": "a_right", "reason": "other", "extra": 1},
        {"verdict": ["a_right"], "reason": "other"},
    ]
    for body in hostile:
        res = await verdict(sc, "rev-1", cid, **body)
        assert res.status == 400, (body, res.body)
    raw = await sc.post(f"/v1/review/{cid}", data=b"{not json", headers=auth("rev-1"))
    assert raw.status == 400
    for bad_id in ("c-\x01x", "c-" + "x" * 300):
        res = await verdict(sc, "rev-1", bad_id, verdict="a_right", reason="other")
        assert res.status in (400, 404), res.body
    assert (await claim(sc, "rev-1", "?task_type=%00")).status == 400
    assert (await claim(sc, "rev-1", "?task_type=nope")).status == 404
    assert await stored_adjudications(sc) == 0
    ok = await verdict(sc, "rev-1", cid, verdict="a_right", reason="other", note="fine\n")
    assert ok.status == 200, ok.body
    assert await stored_adjudications(sc) == 1
