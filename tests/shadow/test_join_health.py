"""Join health (shadow.join_health, shadow.store.health): outcome coverage per task type, and
evidence that is invalid while too few outcomes arrive.

- The store's counts, exactly, on a known mix: covered (an outcome within the TTL, also one
  received before its event), missing (none, or one that came too late), pending (inside
  the TTL), unsampled events left out, outcomes whose event never came, conflicting
  duplicates, routed items never answered; the window of the latest judged events.
- Through a real sidecar (real store, API, pipeline; the clock injected): a coverage drop
  makes the evidence invalid (``evidence_state``, the reason, the gauges) and blocks a
  promotion that the same evidence earns for a task type without the key (``mode: auto``);
  in ``mode: propose`` it refuses the approval and drops the proposal, naming the reason in
  the audit log; recovered coverage makes it valid again and the promotion happens. Events
  whose join expired are counted as missing and never as agreement.
- The pure rules: ``decide`` stays (or drops a proposal) but still demotes, ``earned_level``
  earns nothing above the level held, the status table and the console say why.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console

from shadow import promotion
from shadow.console import agreement_table
from shadow.join_health import JoinHealth, evidence_fields, invalid_reason
from shadow.model import Evidence, Handling, Level, Outcome, ShadowDecision, WorkEvent
from shadow.policy import parse_policy
from shadow.promotion import LadderState, Move, Proposal
from shadow.store import Routed
from shadow.ui.explain import standing
from tests.conftest import FakeClock, StoreFactory
from tests.shadow.conftest import (
    ADMIN_TOKEN,
    AgentServerFactory,
    Reply,
    Sidecar,
    SidecarFactory,
    agree_reply,
    metric,
)

TTL = timedelta(hours=1)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# refund and appeal judge their evidence's join health; refund_open (refund's twin without
# the key) shows what the same evidence earns when it is not judged. L2 is out of reach.
POLICY = """
task_types:
  refund:
    min_outcome_coverage: 0.8
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      mode: auto
      ceiling: L2
      gates:
        L1: {agreement: 0.5, min_samples: 5}
        L2: {agreement: 0.99, min_samples: 100000}
  refund_open:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      mode: auto
      ceiling: L2
      gates:
        L1: {agreement: 0.5, min_samples: 5}
        L2: {agreement: 0.99, min_samples: 100000}
  appeal:
    min_outcome_coverage: 0.8
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      mode: propose
      ceiling: L2
      gates:
        L1: {agreement: 0.5, min_samples: 5}
        L2: {agreement: 0.99, min_samples: 100000}
"""


# -- the store's counts -----------------------------------------------------------------------


async def test_the_store_counts_a_known_mix_exactly(store_factory: StoreFactory) -> None:
    store = await store_factory()
    t0 = FakeClock().now
    now = t0 + timedelta(hours=2)  # one TTL and more after t0

    async def event(eid: str, at: datetime, *, task: str = "refund", sampled: bool = True) -> None:
        await store.put_events(
            [WorkEvent(eid, task, {"n": 1})], source="http", now=at, needs_agent=[sampled]
        )

    async def answer(eid: str, at: datetime, task: str = "refund") -> None:
        await store.put_decisions([(ShadowDecision(eid, "a@1", {"action": "x"}), task)], now=at)

    async def outcome(eid: str, at: datetime, action: str = "x") -> None:
        await store.put_outcomes([Outcome(eid, {"action": action})], source="http", now=at)

    # Judged (received one TTL or more before now), each a second apart: c1..c5 covered,
    # m1..m3 missing.
    for i, eid in enumerate(["c1", "c2", "c3", "c4", "c5", "m1", "m2", "m3"]):
        at = t0 + timedelta(seconds=i)
        if eid == "c4":  # its outcome came five minutes before the event: order-free
            await outcome(eid, at - timedelta(minutes=5))
        await event(eid, at)
        if eid != "c5":  # c5 still awaits the agent: sampled all the same
            await answer(eid, at + timedelta(seconds=1))
        if eid in ("c1", "c2", "c3", "c5"):
            await outcome(eid, at + timedelta(minutes=10))
    await outcome("m3", t0 + timedelta(minutes=90))  # after its TTL: still missing
    await event("u1", t0, sampled=False)  # not sampled: never evidence, never counted
    await event("a1", t0, task="appeal")  # another task type's, missing there
    await answer("a1", t0, task="appeal")
    # Pending: inside the TTL, with an outcome already or not.
    for eid in ("p1", "p2"):
        await event(eid, now - timedelta(minutes=10))
        await answer(eid, now - timedelta(minutes=9))
    await outcome("p1", now - timedelta(minutes=5))
    # Outcomes whose event never came: two past their TTL, one still inside it.
    await outcome("ghost-1", t0)
    await outcome("ghost-2", t0 + timedelta(minutes=30))
    await outcome("ghost-3", now - timedelta(minutes=1))
    # Conflicting duplicates: c1 re-sent with another payload, c2's outcome with another
    # decision (both dead-lettered), and one of appeal's.
    later = now - timedelta(minutes=1)
    await store.put_events([WorkEvent("c1", "refund", {"n": 2})], source="http", now=later)
    await outcome("c2", later, action="y")
    await store.put_events([WorkEvent("a1", "appeal", {"n": 2})], source="http", now=later)
    # Routed: c1 was answered; m1 and r-lost (no event either) never were; p2 is recent.
    await store.put_handling(
        [
            Routed("c1", "refund", Handling.BLIND, Level.L0, t0),
            Routed("m1", "refund", Handling.BLIND, Level.L0, t0),
            Routed("r-lost", "refund", Handling.BLIND, Level.L0, t0),
            Routed("p2", "refund", Handling.BLIND, Level.L0, now - timedelta(minutes=2)),
        ]
    )

    health = await store.join_health(["refund", "appeal"], now=now, ttl=TTL)
    refund = health["refund"]
    assert refund == JoinHealth(
        covered=5, missing=3, pending=2, unknown_outcomes=2, conflicts=2, routed_unanswered=2
    )
    assert refund.coverage == 5 / 8
    assert refund.to_json() == {
        "coverage": 0.625,
        "covered": 5,
        "missing": 3,
        "pending": 2,
        "unknown_outcomes": 2,
        "conflicts": 2,
        "routed_unanswered": 2,
    }
    assert health["appeal"] == JoinHealth(missing=1, unknown_outcomes=2, conflicts=1)
    # The window is the latest judged events: the last three are m1..m3.
    latest = await store.join_health(["refund"], now=now, ttl=TTL, window=3)
    assert (latest["refund"].covered, latest["refund"].missing) == (0, 3)
    # Before any TTL has passed nothing is judged: no coverage, everything pending.
    early = await store.join_health(["refund"], now=t0 + timedelta(minutes=30), ttl=TTL)
    assert early["refund"].coverage is None
    assert early["refund"].pending == 8


async def test_a_long_history_is_searched_range_by_range(store_factory: StoreFactory) -> None:
    """The window is looked for in ever longer ranges before ``now - ttl``: events days
    apart (no range of the first few holds the whole window) are all found."""
    store = await store_factory()
    t0 = FakeClock().now
    for i in range(6):
        at = t0 + timedelta(days=3 * i)
        eid = f"e-{i}"
        await store.put_events([WorkEvent(eid, "refund", {})], source="http", now=at)
        if i % 2:
            await store.put_outcomes([Outcome(eid, {"a": 1})], source="http", now=at)
    now = t0 + timedelta(days=30)
    health = (await store.join_health(["refund"], now=now, ttl=TTL))["refund"]
    assert (health.covered, health.missing, health.pending) == (3, 3, 0)
    few = (await store.join_health(["refund"], now=now, ttl=TTL, window=2))["refund"]
    assert (few.covered, few.missing) == (1, 1)  # e-5 and e-4


# -- through a real sidecar -------------------------------------------------------------------


def events(task: str, ids: list[str]) -> list[dict[str, Any]]:
    return [{"event_id": e, "task_type": task, "payload": {"k": e}} for e in ids]


def outcomes(ids: list[str]) -> list[dict[str, Any]]:
    return [{"event_id": e, "decision": {"action": "approve"}} for e in ids]


def approve(request: dict[str, Any]) -> Reply:
    return agree_reply({"action": "approve"})


async def send(sc: Sidecar, path: str, records: list[dict[str, Any]]) -> None:
    res = await sc.post_ndjson(path, records)
    assert res.status == 202, res.body


async def settled(sc: Sidecar) -> dict[str, Any]:
    """Every decision and join done and the ladder evaluated; the agreement document."""
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()
    return dict((await sc.agreement())["task_types"])


async def health_pass(sc: Sidecar) -> dict[str, Any]:
    """What the pipeline does after each expiry pass: read the join health, re-decide."""
    await sc.pipeline.drain()
    await sc.pipeline.ladder.evaluate(health=True)
    return dict((await sc.agreement())["task_types"])


async def test_a_coverage_drop_invalidates_the_evidence_and_blocks_an_auto_promotion(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(approve)
    clock = FakeClock()
    sc = await sidecar(policy=POLICY, agent=agent.url, clock=clock, join_ttl=TTL.total_seconds())
    # Four sampled events of each refund type whose outcomes never come.
    lost = [f"lost-{i}" for i in range(4)]
    await send(sc, "/v1/events", events("refund", lost))
    await send(sc, "/v1/events", events("refund_open", [f"o-{e}" for e in lost]))
    first = await health_pass(sc)
    assert first["refund"]["evidence_state"] == "valid"  # nothing judged yet
    assert first["refund"]["join_health"]["coverage"] is None
    assert first["refund"]["join_health"]["pending"] == 4

    clock.advance(hours=2)  # their TTL passes: four missing, coverage 0
    doc = await health_pass(sc)
    refund = doc["refund"]
    assert refund["evidence_state"] == "invalid"
    assert refund["evidence_reason"] == (
        "outcome coverage 0 < min_outcome_coverage 0.8 over the last 4 sampled events past "
        "their join TTL (0 covered, 4 missing)"
    )
    assert refund["join_health"] == {
        "coverage": 0.0,
        "covered": 0,
        "missing": 4,
        "pending": 0,
        "unknown_outcomes": 0,
        "conflicts": 0,
        "routed_unanswered": 0,
    }
    assert doc["refund_open"]["evidence_state"] == "valid"  # no min_outcome_coverage: off
    assert doc["refund_open"]["join_health"]["coverage"] == 0.0

    # Twenty agreeing comparisons each: the L1 gate is met for both.
    fresh = [f"new-{i}" for i in range(20)]
    await send(sc, "/v1/events", events("refund", fresh))
    await send(sc, "/v1/events", events("refund_open", [f"o-{e}" for e in fresh]))
    await sc.pipeline.drain()
    await send(sc, "/v1/outcomes", outcomes(fresh + [f"o-{e}" for e in fresh]))
    doc = await settled(sc)
    assert doc["refund_open"]["level"] == "L1"  # what the evidence earns
    refund = doc["refund"]
    assert (refund["n"], refund["agree"], refund["next_gate"]["met"]) == (20, 20, True)
    assert (refund["level"], refund["evidence_state"]) == ("L0", "invalid")

    samples = await sc.metrics()
    assert metric(samples, "shadow_evidence_invalid", task_type="refund") == 1
    assert metric(samples, "shadow_evidence_invalid", task_type="refund_open") == 0
    assert metric(samples, "shadow_outcome_coverage_ratio", task_type="refund") == 0
    assert metric(samples, "shadow_outcome_coverage_ratio", task_type="appeal") is None
    assert (
        metric(samples, "shadow_outcome_coverage_events", task_type="refund", state="missing") == 4
    )

    # The joins of the lost events expire: counted as missing, never as agreement.
    await sc.pipeline.joiner.expire(TTL)
    doc = await settled(sc)
    assert (doc["refund"]["n"], doc["refund"]["agree"]) == (20, 20)
    assert doc["refund"]["join_health"]["missing"] == 4

    # Outcomes arrive again: once the fresh events are judged (20 covered of 24: 0.83),
    # the evidence is valid and the promotion the gate earned happens.
    clock.advance(hours=2)
    doc = await health_pass(sc)
    refund = doc["refund"]
    assert refund["join_health"]["covered"] == 20
    assert (refund["evidence_state"], refund["evidence_reason"]) == ("valid", None)
    assert refund["level"] == "L1"
    history = await sc.get("/v1/autonomy/refund/history?limit=5", headers=ADMIN)
    assert history.body["entries"][0]["action"] == "promote"
    samples = await sc.metrics()
    assert metric(samples, "shadow_evidence_invalid", task_type="refund") == 0


async def test_in_propose_mode_invalid_evidence_refuses_the_approval_and_drops_the_proposal(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(approve)
    clock = FakeClock()
    sc = await sidecar(policy=POLICY, agent=agent.url, clock=clock, join_ttl=TTL.total_seconds())
    answered = [f"a-{i}" for i in range(10)]
    lost = [f"lost-{i}" for i in range(50)]
    await send(sc, "/v1/events", events("appeal", answered + lost))
    await sc.pipeline.drain()
    await send(sc, "/v1/outcomes", outcomes(answered))
    doc = await settled(sc)
    proposal = doc["appeal"]["proposal"]
    assert proposal is not None  # valid: nothing judged yet
    assert proposal["to_level"] == "L1"

    clock.advance(hours=2)  # 10 covered, 50 missing: coverage 0.1667
    # An approval reads the join health of the moment, before any evaluation has.
    res = await sc.post("/v1/autonomy/appeal/approve", json_body={"to": "L1"}, headers=ADMIN)
    assert res.status == 409, res.body
    assert (
        "evidence is invalid: outcome coverage 0.1667 < min_outcome_coverage 0.8"
        in (res.body["error"])
    )
    doc = await health_pass(sc)
    appeal = doc["appeal"]
    assert (appeal["level"], appeal["proposal"], appeal["evidence_state"]) == (
        "L0",
        None,
        "invalid",
    )
    history = await sc.get("/v1/autonomy/appeal/history?limit=5", headers=ADMIN)
    dropped = history.body["entries"][0]
    assert dropped["action"] == "drop_proposal"
    assert dropped["reason"].startswith("evidence invalid: outcome coverage 0.1667 < ")
    assert dropped["reason"].endswith("the proposal for L1 is dropped")

    # Coverage recovers (200 covered of 250: 0.8, not below): proposed again.
    more = [f"b-{i}" for i in range(190)]
    await send(sc, "/v1/events", events("appeal", more))
    await sc.pipeline.drain()
    await send(sc, "/v1/outcomes", outcomes(more))
    doc = await settled(sc)
    assert doc["appeal"]["proposal"] is None  # still invalid: the new events are pending
    clock.advance(hours=2)
    doc = await health_pass(sc)
    appeal = doc["appeal"]
    assert appeal["join_health"]["coverage"] == 0.8
    assert appeal["evidence_state"] == "valid"
    assert appeal["proposal"]["to_level"] == "L1"
    res = await sc.post("/v1/autonomy/appeal/approve", json_body={"to": "L1"}, headers=ADMIN)
    assert res.status == 200, res.body
    assert res.body["to"] == "L1"


# -- the pure rules and what people see --------------------------------------------------------

TASK = parse_policy(POLICY).task_types["refund"]
NOW = FakeClock().now
BAD = JoinHealth(covered=1, missing=3)


def test_the_reason_names_the_coverage_the_key_and_the_window() -> None:
    assert invalid_reason(BAD, 0.8) == (
        "outcome coverage 0.25 < min_outcome_coverage 0.8 over the last 4 sampled events "
        "past their join TTL (1 covered, 3 missing)"
    )
    assert invalid_reason(BAD, None) is None  # off
    assert invalid_reason(BAD, 0.25) is None  # at the minimum: not below it
    assert invalid_reason(JoinHealth(pending=9), 0.8) is None  # nothing judged yet
    assert invalid_reason(None, 0.8) is None
    assert evidence_fields(None, 0.8) == {
        "evidence_state": "valid",
        "evidence_reason": None,
        "join_health": None,
    }


def test_invalid_evidence_stays_and_drops_a_proposal_but_still_demotes() -> None:
    good = {"a@1": Evidence("refund", "a@1", n=50, agree=50)}
    state = LadderState("refund", Level.L0, "a@1")
    why = invalid_reason(BAD, 0.8)
    assert promotion.decide(state, good, "a@1", TASK, frozen=False, now=NOW).move is Move.PROMOTE
    stay = promotion.decide(state, good, "a@1", TASK, frozen=False, now=NOW, invalid=why)
    assert (stay.move, stay.reason) == (Move.STAY, f"evidence invalid: {why}; no promotion")

    snap = promotion.snapshot(good["a@1"], TASK, "a@1")
    pending = LadderState(
        "refund",
        Level.L0,
        "a@1",
        proposal=Proposal.make("refund", Level.L0, Level.L1, "a@1", NOW, snap),
    )
    drop = promotion.decide(pending, good, "a@1", TASK, frozen=False, now=NOW, invalid=why)
    assert (drop.move, drop.after.proposal) == (Move.DROP_PROPOSAL, None)
    assert drop.reason == f"evidence invalid: {why}; the proposal for L1 is dropped"

    bad = {"a@1": Evidence("refund", "a@1", n=50, agree=5)}
    held = LadderState("refund", Level.L1, "a@1")
    down = promotion.decide(held, bad, "a@1", TASK, frozen=False, now=NOW, invalid=why)
    assert (down.move, down.after.level) == (Move.DEMOTE, Level.L0)

    assert promotion.earned_level(state, good, "a@1", TASK) == Level.L1
    assert promotion.earned_level(state, good, "a@1", TASK, invalid=why) == Level.L0
    assert promotion.earned_level(held, good, "a@1", TASK, invalid=why) == Level.L1


def test_the_status_table_and_the_console_say_why() -> None:
    entry = {
        "level": "L0",
        "agent_version": "a@1",
        "n": 20,
        "agree": 20,
        "agreement": 1.0,
        "lower": 0.8,
        "upper": 1.0,
        "critical": 0,
        "errors": 0,
        "next_gate": {
            "level": "L1",
            "agreement": 0.5,
            "min_samples": 5,
            "max_critical": None,
            "met": True,
            "agreements_needed": 0,
        },
        "proposal": None,
        "ceiling": "L2",
        "mode": "auto",
        **evidence_fields(BAD, 0.8),
    }
    out = io.StringIO()
    Console(file=out, width=200).print(
        agreement_table({"frozen": False, "task_types": {"refund": entry}})
    )
    text = out.getvalue()
    assert "valid evidence" in text
    assert "refund: evidence invalid, no promotion: outcome coverage 0.25 <" in text
    seen = standing("refund", entry, TASK, frozen=False, held_writes=0)
    assert seen["headline"] == f"evidence invalid, no promotion: {invalid_reason(BAD, 0.8)}"
