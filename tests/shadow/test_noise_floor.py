"""The noise floor (shadow.noise): the human ceiling from second opinions, the agent's
self-consistency from repeated tries, gates relative to the human ceiling (``below_human``)
and noisy fields; through the real store, API, agents on loopback and the tool gateway."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mcp import Client

from shadow import promotion
from shadow.diff import Differ
from shadow.errors import ValidationError
from shadow.joiner import Joiner, compare
from shadow.ladder import Ladder
from shadow.model import Action, Evidence, Handling, Level, Outcome, ShadowDecision, WorkEvent
from shadow.noise import Bounded, NoiseFloor, floor_of, threshold
from shadow.noise_read import judge_noise, read_noise_floor
from shadow.policy import parse_policy
from shadow.promotion import LadderState, Move
from shadow.stats import lower_bound, upper_bound
from shadow.store import PutStatus, Routed, Store
from tests.conftest import FakeClock
from tests.shadow.conftest import AgentServerFactory, Reply, Sidecar, SidecarFactory, metric
from tests.shadow.gateway.conftest import (  # noqa: F401 (fixtures)
    UpstreamFactory,
    gateway_policy,
    upstream,
    upstream_token,
)
from tests.shadow.gateway.test_gateway import set_level, tool_rows

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

POLICY = """
task_types:
  refund:
    compare: {fields: {action: {match: exact}, reason: {match: exact}}, unlisted: ignore}
    repeat_rate: %s
    repeats: %s
    autonomy:
      ceiling: L1
      mode: propose
      gates:
        L1: {agreement: {below_human: 0.02}, min_samples: 10}
"""


def agree_with_payload(body: dict[str, Any]) -> Reply:
    return Reply(200, {"decision": body["payload"]["agent"], "agent_version": "a@1"})


async def post(sc: Sidecar, path: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    res = await sc.post_ndjson(path, records)
    assert res.status in (200, 202, 207), res.body
    return dict(res.body)


async def settle(sc: Sidecar) -> dict[str, Any]:
    await sc.pipeline.drain()
    await sc.pipeline.ladder.evaluate(health=True)
    doc = await sc.agreement()
    return dict(doc["task_types"]["refund"])


async def until(check: Any, tries: int = 2000) -> None:
    """Polls ``check`` (an async predicate); a bound against hangs, not a timing."""
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


# -- the human ceiling ---------------------------------------------------------------------------


async def test_the_human_ceiling_is_exact_on_a_known_set_and_never_touches_the_evidence(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(agree_with_payload)
    sc = await sidecar(policy=POLICY % (0, 1), agent=agent.url)
    ids = [f"c-{i}" for i in range(10)]
    decision = {"action": "approve", "reason": "ok"}
    events = [{"event_id": e, "task_type": "refund", "payload": {"agent": decision}} for e in ids]
    # 7 of 10 second opinions alike; 3 differ on reason only.
    outcomes = [
        {
            "event_id": e,
            "decision": decision,
            "second_opinion": {
                "decision": decision if i < 7 else {**decision, "reason": "other"},
                "decided_by": "second-reviewer",
            },
        }
        for i, e in enumerate(ids)
    ]
    await post(sc, "/v1/events", events)
    await post(sc, "/v1/outcomes", outcomes)
    body = await settle(sc)
    assert body["human_ceiling"] == {
        "n": 10,
        "agree": 7,
        "agreement": 0.7,
        "lower": round(lower_bound(7, 10, 0.05), 4),
        "upper": round(upper_bound(7, 10, 0.05), 4),
    }
    # The agent's evidence is the ten first outcomes, nothing more.
    assert (body["n"], body["agree"]) == (10, 10)
    # No repeats configured: nothing measured, bounds 0 and 1.
    assert body["self_consistency"] == {
        "n": 0,
        "agree": 0,
        "agreement": None,
        "lower": 0.0,
        "upper": 1.0,
    }
    assert body["stable"]["n"] == 0
    # The relative gate shows its threshold and where it came from.
    gate = body["next_gate"]
    expected = round(upper_bound(7, 10, 0.05) - 0.02, 4)
    assert gate["agreement"] == expected
    assert gate["below_human"] == {
        "margin": 0.02,
        "ceiling_upper": round(upper_bound(7, 10, 0.05), 4),
        "ceiling_n": 10,
        "threshold": expected,
    }
    stored = await sc.pipeline.store.count("outcomes")
    assert stored == 10  # a second opinion is never an outcome revision


async def test_second_opinions_out_of_order_duplicated_and_conflicting(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(agree_with_payload)
    sc = await sidecar(policy=POLICY % (0, 1), agent=agent.url)
    same = {"action": "approve", "reason": "ok"}
    other = {"action": "deny", "reason": "ok"}

    def second(eid: str, decision: dict[str, Any], at: str) -> dict[str, Any]:
        return {"event_id": eid, "decision": decision, "second_opinion": True, "decided_at": at}

    # Before the event and before the outcome: stored, waits for both.
    res = await post(sc, "/v1/outcomes", [second("e-1", other, "2026-12-01T10:00:00Z")])
    assert res["results"] == {"stored": 1}
    # The same again: a duplicate; a later conflicting one replaces it; an older one doesn't.
    res = await post(
        sc,
        "/v1/outcomes",
        [
            second("e-1", other, "2026-12-01T10:00:00Z"),
            second("e-1", same, "2026-12-01T11:00:00Z"),
            second("e-1", other, "2026-12-01T09:00:00Z"),
        ],
    )
    assert res["results"] == {"duplicate": 1, "stored": 1, "superseded": 1}
    body = await settle(sc)
    assert body["human_ceiling"]["n"] == 0  # no outcome, no event yet
    await post(sc, "/v1/outcomes", [{"event_id": "e-1", "decision": same}])
    body = await settle(sc)
    assert body["human_ceiling"]["n"] == 0  # the event is still unknown
    await post(
        sc, "/v1/events", [{"event_id": "e-1", "task_type": "refund", "payload": {"agent": same}}]
    )
    body = await settle(sc)
    assert (body["human_ceiling"]["n"], body["human_ceiling"]["agree"]) == (1, 1)
    assert (body["n"], body["agree"]) == (1, 1)
    assert await sc.pipeline.store.count("outcomes") == 1
    assert await sc.pipeline.store.count("second_opinions") == 1


async def test_a_malformed_second_opinion_is_a_clear_per_record_error_and_nothing_is_lost(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(agree_with_payload)
    sc = await sidecar(policy=POLICY % (0, 1), agent=agent.url)
    good = {"action": "approve", "reason": "ok"}
    lines = [
        '{"event_id": "b-1", "decision": {"action": "x"}, "second_opinion": "yes"}',
        '{"event_id": "b-2", "decision": {"action": "x"}, "second_opinion": {"decision": 5}}',
        '{"event_id": "b-3", "decision": {"action": "x"}, '
        '"second_opinion": {"decision": {"reason": "\\ud800"}}}',
        '{"event_id": "b-4", "decision": {"action": "x"}, "second_opinion": {"decision": {}, '
        '"extra": 1}}',
        '{"event_id": "ok-1", "decision": {"action": "approve", "reason": "ok"}, '
        '"second_opinion": {"decision": {"action": "approve", "reason": "ok"}}}',
    ]
    res = await sc.post(
        "/v1/outcomes",
        data="\n".join(lines).encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert res.status == 202, res.body
    assert res.body["accepted"] == 1
    errors = {e["line"]: f"{e['path']}: {e['message']}" for e in res.body["errors"]}
    assert sorted(errors) == [1, 2, 3, 4]
    assert "second_opinion: expected an object" in errors[1]
    assert "second_opinion.decision: expected a JSON object" in errors[2]
    assert "second_opinion.decision.reason" in errors[3]
    assert "surrogate" in errors[3]
    assert "second_opinion.extra: unknown field" in errors[4]
    await post(
        sc, "/v1/events", [{"event_id": "ok-1", "task_type": "refund", "payload": {"agent": good}}]
    )
    body = await settle(sc)
    assert (body["human_ceiling"]["n"], body["human_ceiling"]["agree"]) == (1, 1)


def test_the_second_opinion_key_parses_like_an_outcome() -> None:
    o = Outcome.from_json(
        {
            "event_id": "e",
            "decision": {"a": 1},
            "second_opinion": {
                "decision": {"a": 2},
                "actions": [{"tool": "t", "args": {"x": 1}}],
                "decided_by": "bo",
            },
        }
    )
    assert o.second_opinion is not None
    assert o.second_opinion.actions == (Action("t", {"x": 1}),)
    assert o.to_json()["second_opinion"]["decided_by"] == "bo"
    assert (
        Outcome.from_json({"event_id": "e", "decision": {}, "second_opinion": True}).to_json()[
            "second_opinion"
        ]
        is True
    )
    # The outcome's hash ignores the second opinion it carries: re-sent with one, it is the
    # same outcome (a duplicate), never a conflict.
    bare = Outcome.from_json({"event_id": "e", "decision": {"a": 1}})
    assert bare.content_hash == o.content_hash
    with pytest.raises(ValidationError, match=r"second_opinion\.actions\[0\]\.tool"):
        Outcome.from_json(
            {"event_id": "e", "decision": {}, "second_opinion": {"decision": {}, "actions": [{}]}}
        )


# -- self-consistency ----------------------------------------------------------------------------


async def test_repeats_are_marked_stored_apart_and_never_inflate_n(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    def flaky(body: dict[str, Any]) -> Reply:
        decision = dict(body["payload"]["agent"])
        # The third case answers differently on its second repeat; the fourth fails it.
        if body.get("repeat") == 2 and body["event_id"] == "r-2":
            decision["reason"] = "changed my mind"
        if body.get("repeat") == 2 and body["event_id"] == "r-3":
            return Reply(500, {"error": "boom"})
        return Reply(200, {"decision": decision, "agent_version": "a@1"})

    agent = await agent_server(flaky)
    sc = await sidecar(policy=POLICY % (1.0, 2), agent=agent.url, agent_retries=0)
    ids = [f"r-{i}" for i in range(5)]
    decision = {"action": "approve", "reason": "ok"}
    await post(
        sc,
        "/v1/events",
        [{"event_id": e, "task_type": "refund", "payload": {"agent": decision}} for e in ids],
    )
    await post(sc, "/v1/outcomes", [{"event_id": e, "decision": decision} for e in ids])
    await sc.pipeline.drain()

    async def repeated() -> bool:
        return await sc.pipeline.store.count("repeats") == 10

    await until(repeated)
    body = await settle(sc)
    # Evidence: five cases, whatever the repeats did.
    assert (body["n"], body["agree"]) == (5, 5)
    assert await sc.pipeline.store.count("decisions") == 5
    assert await sc.pipeline.store.count("comparisons") == 5
    # Each repeat was marked, in the body and the header, after its case's first answer.
    firsts = [r for r in agent.requests if "repeat" not in r.body]
    tries = [r for r in agent.requests if "repeat" in r.body]
    assert len(firsts) == 5
    assert len(tries) == 10
    for r in tries:
        assert r.headers["X-Shadow-Repeat"] == str(r.body["repeat"])
        assert r.body["shadow"] is True
    for e in ids:
        seen = [r.body.get("repeat") for r in agent.requests if r.body["event_id"] == e]
        assert seen == [None, 1, 2]
    # r-2 answered differently, r-3's second repeat failed (not answered, not stable).
    assert body["self_consistency"] == {
        "n": 4,
        "agree": 3,
        "agreement": 0.75,
        "lower": round(lower_bound(3, 4, 0.05), 4),
        "upper": round(upper_bound(3, 4, 0.05), 4),
    }
    assert (body["stable"]["n"], body["stable"]["stable"]) == (5, 3)
    assert body["stable"]["rate"] == 0.6


async def test_a_repeat_at_l4_never_forwards_a_write(
    sidecar: SidecarFactory,
    agent_server: AgentServerFactory,
    upstream: UpstreamFactory,  # noqa: F811 (the gateway tests' fixture)
) -> None:
    """Adversarial: the task type is at L4 (set by an operator), every case is repeated, and
    the agent calls a write tool on every try. The repeat's calls go through a shadow
    session: captured, and the upstream never sees a write."""
    up = await upstream()
    tried: list[Any] = []

    async def writer(body: dict[str, Any]) -> Reply:
        async with Client(body["tools_url"]) as client:
            got = await client.call_tool("issue_refund", {"order_id": "o-1", "amount": 42.5})
            tried.append((body.get("repeat"), got.structured_content))
        return Reply(200, {"decision": {"action": "approve"}, "agent_version": "a@1"})

    agent = await agent_server(writer)
    policy = gateway_policy(up.url).replace("    tools:\n", "    repeat_rate: 1\n    tools:\n", 1)
    sc = await sidecar(policy=policy, agent=agent.url)
    await set_level(sc, "L4")
    event = {"event_id": "w-1", "task_type": "refund", "payload": {"order": "o-1"}}
    assert (await sc.post("/v1/events", json_body=event)).status == 202
    await sc.pipeline.drain()

    async def repeated() -> bool:
        return await sc.pipeline.store.count("repeats") == 1

    await until(repeated)
    assert [t[0] for t in tried] == [None, 1]
    assert all(t[1] == {"status": "recorded", "shadow": True} for t in tried)
    rows = await tool_rows(sc, "w-1")
    assert [(r["tool"], r["outcome"], r["shadow"]) for r in rows] == [
        ("issue_refund", "captured", True),
        ("issue_refund", "captured", True),
    ]
    assert up.writes() == []
    assert (await sc.agreement())["task_types"]["refund"]["level"] == "L4"


# -- gates relative to the human ceiling ---------------------------------------------------------


def relative_task() -> Any:
    return parse_policy(POLICY % (0, 1)).task_types["refund"]


def decide(level: Level, ev: Evidence, ceiling: Bounded | None) -> Any:
    state = LadderState("refund", level, "v1")
    return promotion.decide(
        state, {"v1": ev}, "v1", relative_task(), frozen=False, now=NOW, human_ceiling=ceiling
    )


def test_below_human_promotes_against_the_ceilings_upper_bound_and_says_so() -> None:
    t = relative_task()
    gate = t.autonomy.gates[Level.L1]
    assert gate.below_human == 0.02
    assert gate.agreement == 0.98
    assert t.autonomy.drift(Level.L1) is None  # no detector on a moving threshold
    ceiling = Bounded.of(850, 1000, 0.05)  # humans agree about 0.85 of the time
    bar = ceiling.upper - 0.02
    assert threshold(gate, ceiling) == pytest.approx(bar)
    # The agent: 1900 of 2000 alike, its lower bound above the ceiling's upper - 0.02.
    good = Evidence("refund", "v1", 2000, 1900)
    assert lower_bound(1900, 2000, 0.05) >= bar
    step = decide(Level.L0, good, ceiling)
    assert step.move is Move.PROPOSE
    assert "below_human 0.02: human ceiling upper bound" in step.reason
    assert f"= {bar:.4f}" in step.reason
    weak = Evidence("refund", "v1", 2000, 1700)
    step = decide(Level.L0, weak, ceiling)
    assert step.move is Move.STAY
    assert f"lower bound {lower_bound(1700, 2000, 0.05):.4f} < {bar}" in step.reason
    assert "human ceiling upper bound" in step.reason
    # No second opinions yet: the ceiling's upper bound is 1, the gate needs 0.98.
    step = decide(Level.L0, good, None)
    assert step.move is Move.STAY
    assert "no second opinions yet" in step.reason
    assert "0.9800" in step.reason
    perfect = Evidence("refund", "v1", 2000, 2000)
    assert decide(Level.L0, perfect, None).move is Move.PROPOSE


def test_below_human_demotes_against_the_ceilings_lower_bound() -> None:
    ceiling = Bounded.of(850, 1000, 0.05)
    floor = ceiling.lower - 0.02
    # Upper bound just above the demotion threshold: kept; clearly below: demoted.
    kept = Evidence("refund", "v1", 2000, 1760)
    assert upper_bound(1760, 2000, 0.05) >= floor
    assert decide(Level.L1, kept, ceiling).move is not Move.DEMOTE
    bad = Evidence("refund", "v1", 2000, 1400)
    assert upper_bound(1400, 2000, 0.05) < floor
    step = decide(Level.L1, bad, ceiling)
    assert step.move is Move.DEMOTE
    assert "human ceiling lower bound" in step.reason


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("repeats: 9", "refund.repeats: expected 1 to 4"),
        ("repeat_rate: 2", "refund.repeat_rate"),
    ],
)
def test_wrong_repeat_keys_are_named(extra: str, says: str) -> None:
    text = f"task_types:\n  refund:\n    {extra}\n"
    with pytest.raises(Exception, match=says):
        parse_policy(text)


@pytest.mark.parametrize(
    ("gate", "says"),
    [
        ("{below_human: 1.5}", "L1.agreement.below_human"),
        ("{above_human: 0.1}", "L1.agreement.above_human"),
        ("{}", "L1.agreement.below_human: required"),
    ],
)
def test_a_wrong_below_human_is_named(gate: str, says: str) -> None:
    text = (
        "task_types:\n  refund:\n    autonomy:\n      gates:\n"
        f"        L1: {{agreement: {gate}, min_samples: 1}}\n"
    )
    with pytest.raises(Exception, match=says):
        parse_policy(text)


# -- noisy fields --------------------------------------------------------------------------------


async def test_a_field_humans_disagree_on_as_often_as_with_the_agent_is_noisy(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(agree_with_payload)
    sc = await sidecar(policy=POLICY % (0, 1), agent=agent.url)
    events, outcomes = [], []
    for i in range(25):
        first = {"action": "approve", "reason": "ok"}
        second = {"action": "approve", "reason": "other" if i < 8 else "ok"}
        mine = {"action": "deny" if i < 2 else "approve", "reason": "x" if i < 6 else "ok"}
        events.append({"event_id": f"n-{i}", "task_type": "refund", "payload": {"agent": mine}})
        outcomes.append(
            {"event_id": f"n-{i}", "decision": first, "second_opinion": {"decision": second}}
        )
    await post(sc, "/v1/events", events[:19])
    await post(sc, "/v1/outcomes", outcomes[:19])
    # Below the minimum of cases nothing is judged.
    assert (await settle(sc))["noisy_fields"] == []
    await post(sc, "/v1/events", events[19:])
    await post(sc, "/v1/outcomes", outcomes[19:])
    body = await settle(sc)
    # reason: humans 8, agent 6 -> noisy; action: humans 0 -> not.
    assert body["noisy_fields"] == [
        {"field": "reason", "n": 25, "human_disagree": 8, "agent_disagree": 6}
    ]
    samples = await sc.metrics()
    assert metric(samples, "shadow_noisy_fields", task_type="refund") == 1


# -- stored verdicts: judged once, kept, re-judged when what they judged changes ----------------

RULES = """
task_types:
  refund:
    compare: {fields: {action: {match: exact}, reason: {match: exact}}, unlisted: ignore}
    repeat_rate: 1
    repeats: 2
"""
LOOSE = RULES.replace("reason: {match: exact}", "reason: {match: ignore}")
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # FakeClock's start


def case(eid: str, reason: str = "ok", second: str | None = "ok", **extra: Any) -> Outcome:
    """An outcome of ``approve/ok`` with a second opinion giving ``second`` as the reason."""
    body: dict[str, Any] = {"event_id": eid, "decision": {"action": "approve", "reason": reason}}
    if second is not None:
        body["second_opinion"] = {"decision": {"action": "approve", "reason": second}}
    return Outcome.from_json({**body, **extra})


def answer(eid: str, reason: str = "ok", *, error: str | None = None) -> ShadowDecision:
    if error is not None:
        return ShadowDecision(eid, "a@1", None, error=error)
    return ShadowDecision(eid, "a@1", {"action": "approve", "reason": reason})


async def seed(store: Store, clock: FakeClock, n: int = 10, alike: int = 7) -> None:
    """``n`` compared cases, the first ``alike`` with an alike second opinion; each case
    repeated twice, the first three answering differently on the second try."""
    now = clock()
    ids = [f"c-{i}" for i in range(n)]
    await store.put_events([WorkEvent(e, "refund", {}) for e in ids], source="t", now=now)
    await store.put_decisions([(answer(e), "refund") for e in ids], now=now)
    await store.put_outcomes(
        [case(e, second="ok" if i < alike else "other") for i, e in enumerate(ids)],
        source="t",
        now=now,
    )
    differ = Differ(parse_policy(RULES).task_types["refund"].compare)
    rows = await store.ready_pairs()
    await store.put_comparisons([compare(r, differ) for r in rows], now=now)
    await store.put_repeats(
        [(answer(e), "refund", 1) for e in ids]
        + [(answer(e, "changed" if i < 3 else "ok"), "refund", 2) for i, e in enumerate(ids)],
        now=now,
    )


async def floor(store: Store, clock: FakeClock, text: str = RULES) -> NoiseFloor:
    found = await read_noise_floor(store, parse_policy(text), {"refund": "a@1"}, clock)
    return found["refund"]


async def test_each_verdict_is_judged_once_and_again_only_when_what_it_judged_changes(
    store: Store, clock: FakeClock
) -> None:
    await seed(store, clock)
    policy = parse_policy(RULES)
    assert await judge_noise(store, policy, clock) == (10, 20)
    assert await judge_noise(store, policy, clock) == (0, 0)  # nothing new: nothing diffed
    got = await floor(store, clock)
    assert (got.human_ceiling.n, got.human_ceiling.agree) == (10, 7)
    assert (got.self_consistency.n, got.self_consistency.agree) == (10, 7)
    assert (got.stable.n, got.stable.agree) == (10, 7)
    # An outcome revision (a later decided_at) re-judges that event only: c-0's outcome now
    # says "other", its second opinion "ok".
    revised = case("c-0", reason="other", second=None, decided_at="2026-11-21T10:00:00Z")
    (put,) = await store.put_outcomes([revised], source="t", now=clock())
    assert put.status is PutStatus.REVERSAL
    assert await judge_noise(store, policy, clock) == (1, 0)
    assert (await floor(store, clock)).human_ceiling.agree == 6
    # A newer second opinion on c-9 agreeing with its outcome: judged again, once.
    newer = Outcome.from_json(
        {
            "event_id": "c-9",
            "decision": {"action": "approve", "reason": "ok"},
            "second_opinion": True,
            "decided_at": "2026-11-21T11:00:00Z",
        }
    )
    await store.put_outcomes([newer], source="t", now=clock())
    assert await judge_noise(store, policy, clock) == (1, 0)
    assert (await floor(store, clock)).human_ceiling.agree == 7
    # Another agent version's counts nothing for this one.
    other = await read_noise_floor(store, policy, {"refund": "b@2"}, clock)
    assert other["refund"].self_consistency.n == 0
    assert other["refund"].human_ceiling.n == 10  # humans only: any version


async def test_new_compare_rules_re_judge_the_stored_verdicts(
    store: Store, clock: FakeClock
) -> None:
    await seed(store, clock)
    strict = await floor(store, clock)
    assert (strict.human_ceiling.agree, strict.self_consistency.agree) == (7, 7)
    # Rules that ignore reason: every stored pair and try is judged again under them.
    assert await judge_noise(store, parse_policy(LOOSE), clock) == (10, 20)
    loose = await floor(store, clock, LOOSE)
    assert (loose.human_ceiling.n, loose.human_ceiling.agree) == (10, 10)
    assert (loose.self_consistency.agree, loose.stable.agree) == (10, 10)
    # And back: the stricter rules again.
    back = await floor(store, clock)
    assert (back.human_ceiling.agree, back.self_consistency.agree) == (7, 7)


async def test_a_new_evidence_epoch_re_judges_the_noise_floor_the_ladder_loads(
    store: Store, clock: FakeClock
) -> None:
    """As the pipeline starts: the joiner starts a new evidence epoch for the new rules
    (re-scoring the comparisons), then the ladder loads and reads the noise floor, whose
    stale verdicts are judged under the new rules before they are counted."""
    await seed(store, clock)
    for text, ceiling, consistent in ((RULES, 7, 7), (LOOSE, 10, 10)):
        policy = parse_policy(text)
        await Joiner(store, policy, clock).new_epochs()
        ladder = Ladder(store, policy, clock)
        await ladder.load()
        found = ladder.ceiling_of("refund")
        assert found is not None
        assert (found.n, found.agree) == (10, ceiling)
        body = ladder.agreement()["task_types"]["refund"]
        assert body["self_consistency"]["agree"] == consistent
    epochs = [
        e for _, e in await store.audit_log(task_type="refund") if e.action == "evidence_epoch"
    ]
    assert [e.evidence["epoch"] for e in epochs] == [2]


async def test_the_noise_floor_outlives_the_bodies_retention_deletes(
    store: Store, clock: FakeClock
) -> None:
    await seed(store, clock)
    before = await floor(store, clock)  # judged now
    assert before.human_ceiling == Bounded.of(7, 10, 0.05)
    # A case whose second opinion and try arrived but were not judged yet stays open.
    now = clock()
    await store.put_events([WorkEvent("late", "refund", {})], source="t", now=now)
    await store.put_decisions([(answer("late"), "refund")], now=now)
    await store.put_outcomes([case("late")], source="t", now=now)
    differ = Differ(parse_policy(RULES).task_types["refund"].compare)
    await store.put_comparisons([compare(r, differ) for r in await store.ready_pairs()], now=now)
    await store.put_repeats([(answer("late"), "refund", 1)], now=now)
    clock.advance(days=3)
    purged = await store.purge(cutoff=clock() - timedelta(days=1))
    # Every judged case went, bodies and all; "late" (its verdicts pending) stayed.
    assert (purged.events, purged.second_opinions, purged.repeats) == (10, 10, 20)
    assert await store.count("second_opinions") == 1
    assert await store.count("repeats") == 1
    assert await store.count("human_verdicts") == 10
    assert await store.count("repeat_verdicts") == 20
    # The same noise floor without the bodies.
    assert await floor_without(store) == before
    after = await floor(store, clock)  # judges "late"
    assert after.human_ceiling == Bounded.of(7 + 1, 10 + 1, 0.05)
    assert after.self_consistency == before.self_consistency  # late: 1 of 2 tries, not a case
    # Judged now, "late" goes too; the counts stay.
    purged = await store.purge(cutoff=clock() - timedelta(days=1))
    assert (purged.events, purged.second_opinions, purged.repeats) == (1, 1, 1)
    assert await floor(store, clock) == after
    # A second opinion whose event and outcome never came leaves after the cutoff.
    await store.put_outcomes(
        [Outcome.from_json({"event_id": "lone", "decision": {}, "second_opinion": True})],
        source="t",
        now=clock(),
    )
    assert (await store.purge(cutoff=clock() - timedelta(days=1))).second_opinions == 0
    clock.advance(days=3)
    purged = await store.purge(cutoff=clock() - timedelta(days=1))
    assert purged.second_opinions == 1
    assert await store.count("second_opinions") == 0


async def test_the_noise_floor_survives_a_sidecar_purge_with_an_injected_clock(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """Through the sidecar: retention on, the clock moved past it, the purge deletes the
    bodies and /v1/agreement reports the same human ceiling and self-consistency."""
    clock = FakeClock(T0)
    agent = await agent_server(agree_with_payload)
    sc = await sidecar(
        policy=POLICY % (1.0, 1),
        agent=agent.url,
        clock=clock,
        retention=3 * 86400.0,
        join_ttl=86400.0,
    )
    decision = {"action": "approve", "reason": "ok"}
    ids = [f"k-{i}" for i in range(6)]
    await post(
        sc,
        "/v1/events",
        [{"event_id": e, "task_type": "refund", "payload": {"agent": decision}} for e in ids],
    )
    await post(
        sc,
        "/v1/outcomes",
        [
            {
                "event_id": e,
                "decision": decision,
                "second_opinion": {"decision": {**decision, "reason": "x" if i < 2 else "ok"}},
            }
            for i, e in enumerate(ids)
        ],
    )
    await sc.pipeline.drain()

    async def repeated() -> bool:
        return await sc.pipeline.store.count("repeats") == 6

    await until(repeated)
    before = await settle(sc)
    assert (before["human_ceiling"]["n"], before["human_ceiling"]["agree"]) == (6, 4)
    assert (before["self_consistency"]["n"], before["self_consistency"]["agree"]) == (6, 6)
    clock.advance(days=5)
    await sc.pipeline.purge()
    assert await sc.pipeline.store.count("second_opinions") == 0
    assert await sc.pipeline.store.count("repeats") == 0
    assert await sc.pipeline.store.count("events") == 0
    after = await settle(sc)
    for key in ("human_ceiling", "self_consistency", "stable", "noisy_fields"):
        assert after[key] == before[key], key
    samples = await sc.metrics()
    assert metric(samples, "shadow_purged_rows_total", table="second_opinions") == 6
    assert metric(samples, "shadow_purged_rows_total", table="repeats") == 6


async def floor_without(store: Store) -> NoiseFloor:
    """The floor as the stored verdicts count it (no judging)."""
    counts = await store.noise_counts([("refund", "a@1", 2)])
    return floor_of(counts["refund"], 0.05)


# -- independence: only blind first outcomes make the human ceiling ----------------------------


async def test_an_assisted_outcome_with_a_second_opinion_is_not_the_human_ceiling(
    store: Store, clock: FakeClock
) -> None:
    now = clock()
    ids = ["blind-record", "assisted-record", "assisted-stated", "agent-record", "never-routed"]
    await store.put_events([WorkEvent(e, "refund", {}) for e in ids], source="t", now=now)
    await store.put_handling(
        [
            Routed("blind-record", "refund", Handling.BLIND, Level.L1, now),
            Routed("assisted-record", "refund", Handling.ASSISTED, Level.L1, now),
            Routed("agent-record", "refund", Handling.AGENT, Level.L3, now),
        ]
    )
    clock.advance(minutes=1)
    await store.put_outcomes(
        [
            case(e, second="other", handled_by="assisted" if e == "assisted-stated" else None)
            for e in ids
        ],
        source="t",
        now=clock(),
    )
    got = await floor(store, clock)
    # Blind by its record, and never routed (decided without the agent): two, both differ.
    assert (got.human_ceiling.n, got.human_ceiling.agree) == (2, 0)
    handled = dict(store.con.execute("SELECT event_id, handled_by FROM human_verdicts").fetchall())
    assert handled == {
        "blind-record": "blind",
        "assisted-record": "assisted",
        "assisted-stated": "assisted",
        "agent-record": "agent",
        "never-routed": "blind",
    }


async def test_a_routing_record_committed_after_the_verdict_takes_it_out(
    store: Store, clock: FakeClock
) -> None:
    """A route answered before the outcome whose record commits after it relabels the
    comparison (shadow.handling); the human verdict is judged again and leaves the ceiling."""
    routed_at = clock()
    await store.put_events([WorkEvent("x", "refund", {})], source="t", now=routed_at)
    clock.advance(minutes=1)
    await store.put_outcomes([case("x")], source="t", now=clock())
    assert (await floor(store, clock)).human_ceiling.n == 1
    await store.put_handling([Routed("x", "refund", Handling.ASSISTED, Level.L1, routed_at)])
    assert (await floor(store, clock)).human_ceiling.n == 0


async def test_the_human_ceiling_is_exported_and_an_assisted_second_opinion_is_not_counted(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """Through the API: an item routed at L1 (assisted) whose outcome has a second opinion
    adds nothing to the human ceiling; the blind ones do, and the gauges say so."""
    agent = await agent_server(agree_with_payload)
    sc = await sidecar(policy=POLICY % (0, 1), agent=agent.url)
    await set_level(sc, "L1")
    decision = {"action": "approve", "reason": "ok"}
    handled = {}
    for i in range(10):
        routed = await sc.get(f"/v1/route/refund?event_id=seen-{i}", headers=sc.admin)
        assert routed.status == 200, routed.body
        handled[f"seen-{i}"] = routed.body["handled_by"]
    assert "assisted" in handled.values()  # the audit sample is a share, not all
    ids = [*handled, "never-routed-1", "never-routed-2"]
    await post(
        sc,
        "/v1/events",
        [{"event_id": e, "task_type": "refund", "payload": {"agent": decision}} for e in ids],
    )
    await post(
        sc,
        "/v1/outcomes",
        [
            {"event_id": e, "decision": decision, "second_opinion": {"decision": decision}}
            for e in ids
        ],
    )
    body = await settle(sc)
    expected_n = 2 + sum(1 for h in handled.values() if h == "blind")
    assert (body["human_ceiling"]["n"], body["human_ceiling"]["agree"]) == (expected_n, expected_n)
    samples = await sc.metrics()
    for bound in ("estimate", "lower", "upper"):
        value = metric(samples, "shadow_human_ceiling", task_type="refund", bound=bound)
        assert value == pytest.approx(
            {"estimate": 1.0, "lower": lower_bound(expected_n, expected_n, 0.05), "upper": 1.0}[
                bound
            ],
            abs=1e-9,
        )
    assert metric(samples, "shadow_self_consistency", task_type="refund", bound="lower") is None


# -- skipped repeats are counted ----------------------------------------------------------------


async def test_repeats_skipped_for_a_full_queue_are_counted(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shadow.pipeline.REPEAT_QUEUE", 1)
    release = asyncio.Event()

    async def slow_repeats(body: dict[str, Any]) -> Reply:
        if "repeat" in body:
            await release.wait()
        return agree_with_payload(body)

    agent = await agent_server(slow_repeats)
    sc = await sidecar(policy=POLICY % (1.0, 1), agent=agent.url)
    decision = {"action": "approve", "reason": "ok"}
    ids = [f"q-{i}" for i in range(8)]
    await post(
        sc,
        "/v1/events",
        [{"event_id": e, "task_type": "refund", "payload": {"agent": decision}} for e in ids],
    )

    async def decided() -> bool:
        return await sc.pipeline.store.count("decisions") == 8

    await until(decided)

    async def skipped() -> float:
        samples = await sc.metrics()
        found = metric(
            samples, "shadow_repeats_skipped_total", task_type="refund", reason="queue_full"
        )
        assert found is not None
        return found

    async def settled() -> bool:
        # Every case is either waiting (a worker or the queue of one) or skipped.
        waiting = len([r for r in agent.requests if "repeat" in r.body])
        return waiting + sc.pipeline._repeats.qsize() + await skipped() == 8

    await until(settled)
    count = int(await skipped())
    assert count >= 1  # a queue of one cannot hold the rest
    release.set()

    async def repeated() -> bool:
        return await sc.pipeline.store.count("repeats") == 8 - count

    await until(repeated)
    samples = await sc.metrics()
    assert (
        metric(samples, "shadow_repeats_skipped_total", task_type="refund", reason="not_stored")
        == 0
    )
