"""The operators' moves (shadow.moves): approvals and rejections are pinned to the proposal
they name, a retry is a no-op, and a rejected proposal stays down until the evidence grows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow import moves, promotion
from shadow.errors import AutonomyError
from shadow.model import Evidence, Level
from shadow.policy import TaskPolicy, parse_policy
from shadow.promotion import Answer, LadderState, Move, ProposalRef, Step

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def task(mode: str = "propose", ceiling: str = "L3") -> TaskPolicy:
    text = f"""
task_types:
  refund:
    autonomy:
      ceiling: {ceiling}
      mode: {mode}
      gates:
        L1: {{agreement: 0.90, min_samples: 100}}
        L2: {{agreement: 0.95, min_samples: 300}}
        L3: {{agreement: 0.98, min_samples: 1000, max_critical: 0}}
"""
    return parse_policy(text).task_types["refund"]


def ev(n: int, agree: int, version: str = "v1") -> dict[str, Evidence]:
    return {version: Evidence("refund", version, n, agree, 0, 0)}


def state(level: Level = Level.L0, version: str | None = "v1") -> LadderState:
    return LadderState("refund", level, version)


def decide(s: LadderState, e: dict[str, Evidence], *, version: str = "v1", **kw: object) -> Step:
    return promotion.decide(s, e, version, task(**kw), frozen=False, now=NOW)  # type: ignore[arg-type]


def approve(s: LadderState, ref: ProposalRef, e: dict[str, Evidence], **kw: object) -> Step:
    return moves.approve(
        s, ref, e, "v1", task(), frozen=bool(kw.get("frozen")), now=NOW, actor="ops/jane"
    )


def reject(s: LadderState, ref: ProposalRef, e: dict[str, Evidence]) -> Step:
    return moves.reject(s, ref, e, "v1", task(), now=NOW, actor="ops/bob", reason="not yet")


STRONG = ev(2000, 2000)  # meets L1 and L2 (and L3's bound and count)


def proposed(level: Level = Level.L0, evidence: dict[str, Evidence] = STRONG) -> LadderState:
    step = decide(state(level), evidence)
    assert step.move is Move.PROPOSE, step.reason
    return step.after


def test_a_proposal_has_an_id_and_its_levels() -> None:
    p = proposed().proposal
    assert p is not None
    assert (p.from_level, p.to_level, p.agent_version) == (Level.L0, Level.L1, "v1")
    assert p.id.startswith("p-")
    later = decide(state(), STRONG).after.proposal
    assert later is not None
    assert later.id == p.id
    other = promotion.decide(state(), STRONG, "v1", task(), frozen=False, now=NOW + timedelta(1))
    assert other.after.proposal is not None
    assert other.after.proposal.id != p.id


@pytest.mark.parametrize(
    "ref",
    [
        "by_id",
        ProposalRef(to_level=Level.L1),
        ProposalRef(to_level=Level.L1, from_level=Level.L0),
    ],
)
def test_approve_applies_the_proposal_it_names(ref: object) -> None:
    s = proposed()
    assert s.proposal is not None
    named = ProposalRef(s.proposal.id) if ref == "by_id" else ref
    assert isinstance(named, ProposalRef)
    step = approve(s, named, STRONG)
    assert step.move is Move.APPROVE
    assert step.after.level is Level.L1
    assert step.after.proposal is None
    assert step.after.decided is not None
    assert (step.after.decided.verdict, step.after.decided.actor) == (Answer.APPROVED, "ops/jane")
    assert s.proposal.id in step.reason


def test_a_repeated_approval_is_a_no_op_not_a_second_promotion() -> None:
    """The double click: approving L1 makes the ladder propose L2 at once; the retried
    approval of L1 must neither fail nor take the L2 proposal."""
    s = proposed()
    assert s.proposal is not None
    first_id = s.proposal.id
    for ref in (ProposalRef(first_id), ProposalRef(to_level=Level.L1)):
        at_l1 = approve(s, ref, STRONG).after
        next_up = decide(at_l1, STRONG)
        assert next_up.move is Move.PROPOSE
        assert next_up.after.proposal is not None
        assert next_up.after.proposal.to_level is Level.L2
        retry = approve(next_up.after, ref, STRONG)
        assert retry.move is Move.STAY
        assert not retry.changed
        assert retry.after == next_up.after  # still L1, the L2 proposal still pending
        assert "already approved" in retry.reason


def test_approving_a_proposal_that_is_not_pending_is_refused() -> None:
    s = proposed()
    assert s.proposal is not None
    for ref in (
        ProposalRef("p-000000000000"),
        ProposalRef(to_level=Level.L2),
        ProposalRef(to_level=Level.L1, from_level=Level.L2),
        ProposalRef(s.proposal.id, to_level=Level.L2),  # id and levels must both match
    ):
        with pytest.raises(AutonomyError, match="not the pending proposal") as info:
            approve(s, ref, STRONG)
        assert s.proposal.id in str(info.value)  # says what is pending
    with pytest.raises(AutonomyError, match="no pending proposal"):
        approve(state(), ProposalRef(to_level=Level.L1), STRONG)


def test_an_approval_after_a_demotion_is_refused_not_replayed() -> None:
    s = proposed()
    assert s.proposal is not None
    ref = ProposalRef(s.proposal.id)
    at_l1 = approve(s, ref, STRONG).after
    demoted = decide(at_l1, ev(2000, 1000))  # upper bound far below 0.90
    assert demoted.move is Move.DEMOTE
    assert demoted.after.level is Level.L0
    with pytest.raises(AutonomyError, match="no pending proposal"):
        approve(demoted.after, ref, ev(2000, 1000))


def test_approve_is_refused_when_stale_or_frozen() -> None:
    s = proposed(evidence=ev(400, 396))
    ref = ProposalRef(to_level=Level.L1)
    with pytest.raises(AutonomyError, match="no longer supports"):
        approve(s, ref, ev(500, 440))
    with pytest.raises(AutonomyError, match="frozen"):
        approve(s, ref, ev(400, 396), frozen=True)


def test_a_ref_must_name_something() -> None:
    with pytest.raises(AutonomyError, match="name the proposal"):
        ProposalRef()


def test_a_rejected_proposal_waits_for_min_samples_more_evidence() -> None:
    evidence = ev(400, 396)
    s = proposed(evidence=evidence)
    assert s.proposal is not None
    rejected = reject(s, ProposalRef(s.proposal.id), evidence)
    assert rejected.move is Move.REJECT
    assert rejected.after.proposal is None
    assert rejected.after.level is Level.L0
    assert rejected.after.decided is not None
    assert (rejected.after.decided.verdict, rejected.after.decided.n) == (Answer.REJECTED, 400)
    assert "not yet" in rejected.reason
    # The gate is still met, but L1 is not proposed again until n >= 400 + 100.
    for n in (400, 450, 499):
        held = decide(rejected.after, ev(n, n - 4))
        assert held.move is Move.STAY, n
        assert "rejected" in held.reason
        assert "n >= 500" in held.reason
    again = decide(rejected.after, ev(500, 496))
    assert again.move is Move.PROPOSE
    assert again.after.proposal is not None
    assert again.after.proposal.id != s.proposal.id


def test_rejecting_twice_is_a_no_op_and_a_stale_reject_is_refused() -> None:
    s = proposed()
    assert s.proposal is not None
    ref = ProposalRef(s.proposal.id)
    rejected = reject(s, ref, STRONG).after
    retry = reject(rejected, ref, STRONG)
    assert retry.move is Move.STAY
    assert retry.after == rejected
    with pytest.raises(AutonomyError, match="no pending proposal"):
        reject(rejected, ProposalRef("p-000000000000"), STRONG)
    # A rejection never approves: approving the rejected proposal is refused.
    with pytest.raises(AutonomyError, match="no pending proposal"):
        approve(rejected, ref, STRONG)


def test_reconsider_lifts_the_hold_at_once() -> None:
    s = proposed()
    assert s.proposal is not None
    rejected = reject(s, ProposalRef(s.proposal.id), STRONG).after
    assert decide(rejected, STRONG).move is Move.STAY
    lifted = moves.reconsider(rejected, STRONG, "v1", task(), now=NOW, reason="new data")
    assert lifted.move is Move.RECONSIDER
    assert lifted.after.decided is None
    assert decide(lifted.after, STRONG).move is Move.PROPOSE
    with pytest.raises(AutonomyError, match="no rejected proposal"):
        moves.reconsider(lifted.after, STRONG, "v1", task(), now=NOW, reason="")


def test_a_rejection_holds_only_its_own_step_and_agent_version() -> None:
    s = proposed()
    assert s.proposal is not None
    rejected = reject(s, ProposalRef(s.proposal.id), STRONG).after
    # A new agent version has its own evidence: its L1 proposal is not held back.
    other = promotion.decide(rejected, ev(2000, 2000, "v2"), "v2", task(), frozen=False, now=NOW)
    assert other.move is Move.PROPOSE
    # The same version one level up (set by hand to L1) is proposed L2 normally.
    at_l1 = moves.manual_set(
        rejected, Level.L1, STRONG, "v1", task(), frozen=False, now=NOW, reason="pilot"
    )
    up = decide(at_l1.after, STRONG)
    assert up.move is Move.PROPOSE
    assert up.after.proposal is not None
    assert up.after.proposal.to_level is Level.L2


@settings(max_examples=200, deadline=None)
@given(
    script=st.lists(
        st.sampled_from(["decide", "approve_first", "approve_l1", "reject_first"]), max_size=30
    )
)
def test_one_named_proposal_promotes_at_most_once(script: list[str]) -> None:
    """However a client retries approvals and rejections of the first proposal among
    evaluations, the level never rises past the one that proposal names."""
    s = proposed()
    assert s.proposal is not None
    first = s.proposal.id
    for op in script:
        try:
            if op == "decide":
                s = decide(s, STRONG).after
            elif op == "approve_first":
                s = approve(s, ProposalRef(first), STRONG).after
            elif op == "approve_l1":
                s = approve(s, ProposalRef(to_level=Level.L1), STRONG).after
            else:
                s = reject(s, ProposalRef(first), STRONG).after
        except AutonomyError:
            pass
        assert s.level <= Level.L1


def test_manual_set_never_exceeds_ceiling_nor_raises_while_frozen() -> None:
    with pytest.raises(AutonomyError, match="above the ceiling L3"):
        moves.manual_set(
            state(), Level.L4, {}, "v1", task(), frozen=False, now=NOW, reason="trust me"
        )
    with pytest.raises(AutonomyError, match="frozen"):
        moves.manual_set(state(), Level.L1, {}, "v1", task(), frozen=True, now=NOW, reason="")
    step = moves.manual_set(
        state(), Level.L2, {}, "v1", task(), frozen=False, now=NOW, reason="pilot"
    )
    assert step.move is Move.MANUAL_SET
    assert step.after.level is Level.L2
    assert step.reason == "pilot"


def test_freeze_and_unfreeze_steps() -> None:
    frozen = moves.freeze(state(Level.L3), ev(10, 10), "v1", task(), now=NOW, reason="incident")
    assert frozen.after.level is Level.L0
    assert frozen.move is Move.FREEZE
    thawed = moves.unfreeze(frozen.after, ev(10, 10), "v1", task(), now=NOW, reason="")
    assert thawed.after.level is Level.L0
    assert thawed.move is Move.UNFREEZE


def test_decided_round_trips_json() -> None:
    s = proposed()
    assert s.proposal is not None
    d = reject(s, ProposalRef(s.proposal.id), STRONG).after.decided
    assert d is not None
    assert promotion.Decided.from_json(d.to_json()) == d
