from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow import promotion
from shadow.model import Evidence, Level
from shadow.policy import TaskPolicy, parse_policy
from shadow.promotion import LadderState, Move
from shadow.stats import lower_bound, upper_bound

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def task(mode: str = "auto", ceiling: str = "L3", max_critical: int = 0) -> TaskPolicy:
    text = f"""
task_types:
  refund:
    autonomy:
      ceiling: {ceiling}
      mode: {mode}
      gates:
        L1: {{agreement: 0.90, min_samples: 100}}
        L2: {{agreement: 0.95, min_samples: 300}}
        L3: {{agreement: 0.98, min_samples: 1000, max_critical: {max_critical}}}
        L4: {{agreement: 0.99, min_samples: 5000, max_critical: 0}}
"""
    return parse_policy(text).task_types["refund"]


def ev(n: int, agree: int, critical: int = 0, version: str = "v1") -> dict[str, Evidence]:
    return {version: Evidence("refund", version, n, agree, critical, 0)}


def state(level: Level = Level.L0, version: str | None = "v1") -> LadderState:
    return LadderState("refund", level, version)


def decide(
    s: LadderState,
    e: dict[str, Evidence],
    policy: TaskPolicy,
    *,
    version: str = "v1",
    frozen: bool = False,
    recent: promotion.Recent | None = None,
) -> promotion.Step:
    return promotion.decide(s, e, version, policy, frozen=frozen, now=NOW, recent=recent)


def test_no_evidence_stays() -> None:
    step = decide(LadderState("refund", Level.L0), {}, task(), version="v1")
    assert step.move is Move.REBIND  # first sight of the agent version
    step = decide(state(), {}, task())
    assert step.move is Move.STAY
    assert "min_samples" in step.reason


def test_min_samples_blocks_even_perfect_agreement() -> None:
    step = decide(state(), ev(99, 99), task())
    assert step.move is Move.STAY
    assert "n 99 < min_samples 100" in step.reason


def test_auto_mode_promotes_one_level_at_a_time() -> None:
    evidence = ev(2000, 1999)  # enough for L3 already
    step = decide(state(), evidence, task())
    assert step.move is Move.PROMOTE
    assert step.after.level is Level.L1
    step = decide(step.after, evidence, task())
    assert step.after.level is Level.L2
    step = decide(step.after, evidence, task())
    assert step.after.level is Level.L3
    step = decide(step.after, evidence, task())
    assert step.move is Move.STAY
    assert "ceiling L3" in step.reason


def test_promotion_needs_lower_bound_at_gate() -> None:
    # 95/100 observed: point estimate above 0.90 but the bound is not.
    assert lower_bound(95, 100) < 0.90
    step = decide(state(), ev(100, 95), task())
    assert step.move is Move.STAY
    assert "lower bound" in step.reason
    n, agree = 400, 396
    assert lower_bound(agree, n) >= 0.90
    assert decide(state(), ev(n, agree), task()).move is Move.PROMOTE


def test_snapshot_carries_the_evidence_and_policy_hash() -> None:
    policy = task()
    step = decide(state(), ev(400, 396, critical=1), policy)
    snap = step.evidence.to_json()
    assert snap["n"] == 400
    assert snap["agree"] == 396
    assert snap["critical"] == 1
    assert snap["lower"] == pytest.approx(lower_bound(396, 400), abs=1e-6)
    assert snap["upper"] == pytest.approx(upper_bound(396, 400), abs=1e-6)
    assert snap["policy_hash"] == policy.hash
    assert snap["agent_version"] == "v1"


def test_critical_misses_block_the_gate_with_a_limit() -> None:
    evidence = ev(2000, 1999, critical=1)
    step = decide(state(Level.L2), evidence, task())
    assert step.move is Move.STAY
    assert "critical misses 1 > 0" in step.reason
    step = decide(state(Level.L2), evidence, task(max_critical=1))
    assert step.move is Move.PROMOTE


def test_proposal_is_dropped_when_evidence_no_longer_supports_it() -> None:
    policy = task(mode="propose")
    proposed = decide(state(), ev(400, 396), policy).after
    weaker = ev(500, 440)  # agreement fell to 0.88
    step = decide(proposed, weaker, policy)
    assert step.move is Move.DROP_PROPOSAL
    assert "no longer supports L1" in step.reason
    assert step.after.proposal is None


def test_demotion_is_automatic_even_in_propose_mode() -> None:
    policy = task(mode="propose")
    evidence = ev(1000, 900)  # upper bound well below the L2 gate of 0.95
    assert upper_bound(900, 1000) < 0.95
    step = decide(state(Level.L2), evidence, policy)
    assert step.move is Move.DEMOTE
    # 0.90 is still plausible (upper bound >= 0.90), so it lands on L1, not L0.
    assert upper_bound(900, 1000) >= 0.90
    assert step.after.level is Level.L1
    assert "upper bound" in step.reason


def test_demotion_goes_straight_to_a_plausible_level() -> None:
    evidence = ev(2000, 1600)
    step = decide(state(Level.L3), evidence, task())
    assert step.move is Move.DEMOTE
    assert step.after.level is Level.L0


def test_critical_miss_beyond_limit_demotes_at_l3_only() -> None:
    evidence = ev(5000, 4995, critical=1)
    at_l3 = decide(state(Level.L3), evidence, task())
    assert at_l3.move is Move.DEMOTE
    assert at_l3.after.level is Level.L2
    assert "critical misses exceed L3's limit of 0" in at_l3.reason
    at_l2 = decide(state(Level.L2), evidence, task())
    assert at_l2.move is not Move.DEMOTE


def test_new_agent_version_must_reearn_levels_above_l2() -> None:
    evidence = {**ev(5000, 4990), **ev(10, 10, version="v2")}
    step = decide(state(Level.L3, "v1"), evidence, task(), version="v2")
    assert step.move is Move.DEMOTE
    assert step.after.level is Level.L2
    assert step.after.agent_version == "v2"
    assert "re-earned" in step.reason
    # L2 carries over to the new version, whose own evidence is judged from now on.
    kept = decide(state(Level.L2, "v1"), evidence, task(), version="v2")
    assert kept.move is Move.REBIND
    assert kept.after.level is Level.L2
    assert kept.evidence.n == 10


def test_new_version_earns_l3_only_on_its_own_evidence() -> None:
    evidence = {**ev(5000, 4999), **ev(200, 200, version="v2")}
    s = state(Level.L2, "v2")
    step = decide(s, evidence, task(), version="v2")
    assert step.move is Move.STAY
    assert "n 200 < min_samples 1000" in step.reason


def test_level_above_lowered_ceiling_is_demoted() -> None:
    step = decide(state(Level.L3), ev(5000, 4999), task(ceiling="L1"))
    assert step.move is Move.DEMOTE
    assert step.after.level is Level.L1


def test_frozen_holds_everything_at_l0() -> None:
    evidence = ev(5000, 4999)
    step = decide(state(Level.L2), evidence, task(), frozen=True)
    assert step.move is Move.DEMOTE
    assert step.after.level is Level.L0
    assert decide(step.after, evidence, task(), frozen=True).move is Move.STAY
    frozen_proposal = decide(state(), ev(400, 396), task(mode="propose")).after
    dropped = decide(frozen_proposal, ev(400, 396), task(mode="propose"), frozen=True)
    assert dropped.move is Move.DROP_PROPOSAL


def test_proposal_and_snapshot_round_trip_json() -> None:
    step = decide(state(), ev(400, 396), task(mode="propose"))
    proposal = step.after.proposal
    assert proposal is not None
    assert promotion.Proposal.from_json(proposal.to_json(), "refund") == proposal
    assert proposal.id.startswith("p-")
    assert (proposal.from_level, proposal.to_level) == (Level.L0, Level.L1)
    # A proposal stored before ids existed gets the id its content derives.
    legacy = {k: v for k, v in proposal.to_json().items() if k not in ("id", "from_level")}
    assert promotion.Proposal.from_json(legacy, "refund") == proposal


@settings(max_examples=300, deadline=None)
@given(
    level=st.sampled_from(list(Level)),
    n=st.integers(0, 6000),
    frac=st.floats(0, 1),
    critical=st.integers(0, 3),
    mode=st.sampled_from(["auto", "propose"]),
    ceiling=st.sampled_from(["L1", "L2", "L3", "L4"]),
    frozen=st.booleans(),
)
def test_ladder_invariants(
    level: Level, n: int, frac: float, critical: int, mode: str, ceiling: str, frozen: bool
) -> None:
    policy = task(mode=mode, ceiling=ceiling)
    agree = round(n * frac)
    step = decide(state(level), ev(n, agree, critical), policy, frozen=frozen)
    assert step == decide(state(level), ev(n, agree, critical), policy, frozen=frozen)
    after = step.after.level
    if step.move is Move.PROMOTE:
        assert after == level + 1
        assert after <= policy.autonomy.ceiling
        assert not frozen
        gate = policy.autonomy.gates[after]
        assert lower_bound(agree, n) >= gate.agreement
        assert n >= gate.min_samples
    else:
        assert after <= level
    if frozen:
        assert after is Level.L0
    if step.move is Move.PROPOSE:
        assert mode == "propose"
        assert step.after.proposal is not None


def test_agreement_fields_have_the_api_names_and_rounding() -> None:
    fields = promotion.agreement_fields(3, 2, 0.123456, 0.98765, 1, 0)
    assert fields == {
        "n": 3,
        "agree": 2,
        "agreement": 0.6667,
        "lower": 0.1235,
        "upper": 0.9877,
        "critical": 1,
        "errors": 0,
    }
    assert promotion.agreement_fields(0, 0, 0.0, 1.0, 0, 0)["agreement"] is None


# -- drift demotion (shadow.drift through decide's ``recent``) -------------------------------


def test_drift_alarm_demotes_one_level_and_holds_the_lost_level() -> None:
    policy = task()
    history = ev(100_000, 99_000)  # cumulative bounds far above every gate
    quiet = promotion.Recent(statistic=4.9, n=500, critical=0)
    assert decide(state(Level.L3), history, policy, recent=quiet).move is Move.STAY
    alarm = promotion.Recent(statistic=5.0, n=530, critical=0)
    step = decide(state(Level.L3), history, policy, recent=alarm)
    assert step.move is Move.DEMOTE
    assert step.after.level is Level.L2
    assert "drift" in step.reason
    assert step.after.hold == promotion.Hold(Level.L3, 100_000, 99_000, 0)
    # The cumulative evidence still clears L3, but L3 is re-earned only on what comes after.
    held = decide(step.after, ev(100_100, 99_100), policy)
    assert held.move is Move.STAY
    assert "since the drift demotion" in held.reason
    again = decide(step.after, ev(101_000, 100_000), policy)  # 1,000 more, all agreeing
    assert again.move is Move.PROMOTE
    assert again.after.level is Level.L3
    assert again.after.hold is None


def test_windowed_critical_misses_replace_the_lifetime_count_at_demotion() -> None:
    policy = task(max_critical=0)
    lifetime = ev(5000, 4990, critical=3)  # three old critical misses
    assert decide(state(Level.L3), lifetime, policy).move is Move.DEMOTE  # no window known
    clean = promotion.Recent(statistic=0.0, n=1000, critical=0)
    assert decide(state(Level.L3), lifetime, policy, recent=clean).move is Move.STAY
    recent_miss = promotion.Recent(statistic=0.0, n=1000, critical=1)
    step = decide(state(Level.L3), lifetime, policy, recent=recent_miss)
    assert step.move is Move.DEMOTE
    assert step.after.level is Level.L2
    assert "in the last 1000 blind comparisons" in step.reason


def test_a_new_version_drops_the_hold() -> None:
    policy = task()
    held = LadderState("refund", Level.L2, "v1", hold=promotion.Hold(Level.L3, 100, 100, 0))
    evidence = {"v2": Evidence("refund", "v2", 5000, 5000, 0, 0)}
    step = promotion.decide(held, evidence, "v2", policy, frozen=False, now=NOW)
    assert step.move is Move.PROMOTE  # v2's own evidence clears L3
    assert step.after.hold is None


def adjudicated_task() -> TaskPolicy:
    text = """
task_types:
  refund:
    autonomy:
      ceiling: L2
      mode: auto
      gates:
        L1: {agreement: 0.70, min_samples: 50, evidence: adjudicated}
        L2: {agreement: 0.90, min_samples: 100, evidence: adjudicated}
"""
    return parse_policy(text).task_types["refund"]


def reviewed(n: int, agree: int, ra: int, aa: int, rd: int, ad: int) -> dict[str, Evidence]:
    return {"v1": Evidence("refund", "v1", n, agree, 0, 0, ra, aa, rd, ad)}


def test_an_adjudicated_gate_judges_the_adjudicated_bound_not_the_raw_one() -> None:
    policy = adjudicated_task()
    # Raw agreement 0.5: far below 0.70. Unreviewed, the adjudicated lower bound is 0.
    step = decide(state(), reviewed(60, 30, 0, 0, 0, 0), policy)
    assert step.move is Move.STAY
    assert "adjudicated lower bound 0.0000 < 0.7" in step.reason
    # Every case reviewed, the humans wrong on every disagreement: the gate is met.
    step = decide(state(), reviewed(60, 30, 30, 30, 30, 30), policy)
    assert step.move is Move.PROMOTE
    assert "adjudicated lower bound" in step.reason
    assert step.evidence.adj_lower >= 0.70 > step.evidence.lower
    audited = step.evidence.to_json()["adjudicated"]
    assert audited["reviewed"] == {"agree": 30, "disagree": 30}
    assert promotion.Snapshot.from_json(step.evidence.to_json()) == step.evidence


def test_an_adjudicated_gate_demotes_on_the_adjudicated_upper_bound() -> None:
    policy = adjudicated_task()
    # At L1, the reviewers found the agent wrong on every reviewed case.
    step = decide(state(Level.L1), reviewed(400, 360, 100, 0, 40, 0), policy)
    assert step.move is Move.DEMOTE
    assert "adjudicated upper bound" in step.reason
    # The raw agreement (0.9) alone would have kept L1.
    assert step.evidence.upper >= 0.70


def test_audit_entries_and_holds_from_before_the_review_queue_still_read() -> None:
    old = promotion.snapshot(ev(100, 95)["v1"], task(), "v1").to_json()
    del old["adjudicated"]
    snap = promotion.Snapshot.from_json(old)
    assert (snap.adj_lower, snap.adj_upper) == (0.0, 1.0)
    assert snap.reviewed == promotion.Reviewed()
    hold = promotion.Hold.from_json({"level": "L2", "n": 10, "agree": 9, "critical": 0})
    assert hold.errors == 0
    assert hold.reviewed == promotion.Reviewed()
