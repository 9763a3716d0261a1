"""The operators' moves on the autonomy ladder: pure functions over immutable values.

``approve`` and ``reject`` answer a pending proposal that the operator names (a
:class:`~shadow.promotion.ProposalRef`: the proposal's id, or its levels) and are refused
(:class:`~shadow.errors.AutonomyError`) when that proposal is no longer the pending one;
repeating the answer just given is a no-op (``Move.STAY``), so a retried or double-clicked
approval never promotes twice. A rejected proposal is held back by
:func:`shadow.promotion.decide` until the evidence has grown by the gate's ``min_samples``,
or until ``reconsider`` lifts the hold. ``manual_set``, ``freeze`` and ``unfreeze`` complete
the set. Each returns a :class:`~shadow.promotion.Step` with a reason and the evidence
snapshot for the audit log; ``now`` is an argument (no clock here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from shadow.budgets import BudgetEvidence
from shadow.errors import AutonomyError
from shadow.model import Evidence, Level
from shadow.policy import TaskPolicy
from shadow.promotion import (
    Answer,
    Decided,
    LadderState,
    Move,
    Proposal,
    ProposalRef,
    Step,
    snap_for,
    stale_proposal,
)

__all__ = ["approve", "freeze", "manual_set", "reconsider", "reject", "unfreeze"]


def _answer(state: LadderState, ref: ProposalRef, what: str, verdict: Answer) -> Proposal | None:
    """The pending proposal ``ref`` names; ``None`` when ``ref`` names the decision already
    taken with the same verdict (a retry: nothing to do). Otherwise :class:`AutonomyError`."""
    proposal = state.proposal
    if proposal is not None and ref.matches(proposal.id, proposal.from_level, proposal.to_level):
        return proposal
    d = state.decided
    if (
        d is not None
        and d.verdict is verdict
        and ref.matches(d.proposal_id, d.from_level, d.to_level)
        and (verdict is Answer.REJECTED or state.level == d.to_level)
    ):
        return None
    if proposal is None:
        raise AutonomyError(f"{state.task_type} has no pending proposal to {what} ({ref})")
    raise AutonomyError(
        f"cannot {what} {ref} for {state.task_type}: it is not the pending proposal; the "
        f"pending proposal is {proposal.id} ({proposal.from_level} -> {proposal.to_level})"
    )


def approve(
    state: LadderState,
    ref: ProposalRef,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    *,
    frozen: bool,
    now: datetime,
    actor: str,
    reason: str = "",
    segments: Mapping[str, Evidence] | None = None,
    budgets: BudgetEvidence | None = None,
) -> Step:
    """Apply the pending proposal ``ref`` names if the evidence still supports it (in every
    declared segment, for a gate with ``per_segment``: ``segments``). Naming
    the proposal approved last (and still in effect) again is a no-op (``Move.STAY``)."""
    if frozen:
        raise AutonomyError("the sidecar is frozen; unfreeze before approving promotions")
    snap = snap_for(state, evidence, current_version, policy)
    proposal = _answer(state, ref, "approve", Answer.APPROVED)
    if proposal is None:
        d = state.decided
        assert d is not None
        return Step(Move.STAY, state, state, f"{d.proposal_id} was already approved", snap)
    version = current_version if current_version is not None else state.agent_version
    stale = stale_proposal(state, proposal, snap, version, policy, segments, budgets=budgets)
    if stale:
        raise AutonomyError(f"cannot approve {proposal.to_level} for {state.task_type}: {stale}")
    decided = Decided.of(proposal, version, Answer.APPROVED, actor, snap.n, now, reason)
    hold = state.hold if state.hold is not None and proposal.to_level < state.hold.level else None
    after = replace(
        state,
        level=proposal.to_level,
        agent_version=version,
        proposal=None,
        updated_at=now,
        decided=decided,
        hold=hold,
    )
    why = f"approved {proposal.id}: promotion to {proposal.to_level}"
    return Step(Move.APPROVE, state, after, f"{why}; {reason}" if reason else why, snap)


def reject(
    state: LadderState,
    ref: ProposalRef,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    *,
    now: datetime,
    actor: str,
    reason: str,
) -> Step:
    """Drop the pending proposal ``ref`` names and hold it back: :func:`decide` proposes the
    same step for the same agent version again only once ``n`` has grown by the gate's
    ``min_samples`` (or after :func:`reconsider`). Rejecting it again is a no-op."""
    snap = snap_for(state, evidence, current_version, policy)
    proposal = _answer(state, ref, "reject", Answer.REJECTED)
    if proposal is None:
        d = state.decided
        assert d is not None
        return Step(Move.STAY, state, state, f"{d.proposal_id} was already rejected", snap)
    decided = Decided.of(
        proposal, proposal.agent_version, Answer.REJECTED, actor, snap.n, now, reason
    )
    after = replace(state, proposal=None, updated_at=now, decided=decided)
    return Step(Move.REJECT, state, after, f"rejected {proposal.id}: {reason}", snap)


def reconsider(
    state: LadderState,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    *,
    now: datetime,
    reason: str,
) -> Step:
    """Lift a rejection's hold, so the next evaluation proposes again if the gate is met."""
    snap = snap_for(state, evidence, current_version, policy)
    d = state.decided
    if d is None or d.verdict is not Answer.REJECTED:
        raise AutonomyError(f"{state.task_type} has no rejected proposal to reconsider")
    after = replace(state, updated_at=now, decided=None)
    why = f"hold of rejected {d.proposal_id} lifted"
    return Step(Move.RECONSIDER, state, after, f"{why}: {reason}" if reason else why, snap)


def manual_set(
    state: LadderState,
    level: Level,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    *,
    frozen: bool,
    now: datetime,
    reason: str,
) -> Step:
    """An operator sets the level directly. Never above the ceiling; not while frozen
    (except to L0). Drops any pending proposal."""
    ceiling = policy.autonomy.ceiling
    if level > ceiling:
        raise AutonomyError(
            f"{level} is above the ceiling {ceiling} for {state.task_type}; "
            "raise autonomy.ceiling in the policy first"
        )
    if frozen and level > Level.L0:
        raise AutonomyError("the sidecar is frozen; unfreeze before raising a level")
    version = current_version if current_version is not None else state.agent_version
    snap = snap_for(state, evidence, current_version, policy)
    # The operator takes over: a drift demotion's hold no longer applies.
    after = replace(
        state, level=level, agent_version=version, proposal=None, updated_at=now, hold=None
    )
    why = reason or "manual set"
    return Step(Move.MANUAL_SET, state, after, why, snap)


def freeze(
    state: LadderState,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    *,
    now: datetime,
    reason: str,
) -> Step:
    """Send one task type to L0 (the service freezes all of them together)."""
    snap = snap_for(state, evidence, current_version, policy)
    after = replace(state, level=Level.L0, proposal=None, updated_at=now)
    return Step(Move.FREEZE, state, after, reason or "frozen", snap)


def unfreeze(
    state: LadderState,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    *,
    now: datetime,
    reason: str,
) -> Step:
    """Lift the freeze: the level stays L0 and is re-earned through the gates."""
    snap = snap_for(state, evidence, current_version, policy)
    after = replace(state, updated_at=now)
    return Step(Move.UNFREEZE, state, after, reason or "unfrozen", snap)
