"""The autonomy ladder's decisions: pure functions over immutable values.

``decide`` looks at one task type after new evidence and returns what should happen:

- **demote** (always applied): the upper bound of the current agent version's agreement fell
  below the gate of the current level (to the highest level whose gate is still plausible),
  the critical-miss limit of an L3+ gate was exceeded (to L2), the level is above the
  policy's ceiling, or the agent version changed while above L2 (to L2: higher levels must
  be re-earned on the new version's own evidence);
- **promote** one level (``mode: auto``) or **propose** it (``mode: propose``) when the next
  gate is met: ``n >= min_samples``, ``lower_bound >= agreement``, critical misses within
  ``max_critical``, next level <= ceiling, not frozen;
- **drop_proposal** when a pending proposal is no longer supported by the evidence;
- **rebind** to a new agent version (levels up to L2 carry over), otherwise **stay**.

A proposal that an operator rejected is not made again for the same step and agent version
until the evidence has grown by the gate's ``min_samples``, or an operator asks
(``reconsider``). The operators' moves themselves are in :mod:`shadow.moves`.

A gate with ``evidence: adjudicated`` judges the adjudicated bounds (the agreement corrected
by reviewers' verdicts, :mod:`shadow.adjudicated`) in place of the raw ones, for promotion
and for the upper-bound demotion alike.

Every result carries a reason and an evidence :class:`Snapshot` for the audit log. The values
it decides over are in :mod:`shadow.ladder_state` (re-exported here). Nothing here reads a
clock: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from shadow.budgets import BudgetEvidence, exceeded_demotion, judge
from shadow.ladder_state import (
    Answer,
    Decided,
    Hold,
    LadderState,
    Move,
    Proposal,
    ProposalRef,
    Recent,
    Reviewed,
    Snapshot,
    Step,
    make_snapshot,
    reviewed_of,
    snapshot,
)
from shadow.model import Evidence, Level
from shadow.noise import Bounded, ceiling_note, relative_policy
from shadow.policy import AutonomyMode, Gate, TaskPolicy
from shadow.segments import below_gate, promotion_check

__all__ = [
    "Answer",
    "Decided",
    "Hold",
    "LadderState",
    "Move",
    "Proposal",
    "ProposalRef",
    "Recent",
    "Reviewed",
    "Snapshot",
    "Step",
    "agreement_fields",
    "decide",
    "gate_snapshot",
    "gate_status",
    "reviewed_of",
    "snap_for",
    "snapshot",
    "stale_proposal",
]


def agreement_fields(
    n: int, agree: int, lower: float, upper: float, critical: int, errors: int
) -> dict[str, Any]:
    """The evidence fields of ``GET /v1/agreement`` and of replay reports, with one set of
    names and one rounding (4 places): n, agree, agreement, lower, upper, critical, errors."""
    return {
        "n": n,
        "agree": agree,
        "agreement": round(agree / n, 4) if n else None,
        "lower": round(lower, 4),
        "upper": round(upper, 4),
        "critical": critical,
        "errors": errors,
    }


# Above this level a new agent version must earn the level on its own evidence.
CARRY_OVER_MAX = Level.L2


@dataclass(frozen=True, slots=True)
class GateStatus:
    gate: Gate
    met: bool
    missing: str  # empty when met; otherwise what is missing, for humans


def _bound_name(gate: Gate) -> str:
    return "adjudicated lower bound" if gate.evidence == "adjudicated" else "lower bound"


def gate_status(gate: Gate, snap: Snapshot) -> GateStatus:
    """Whether ``snap`` meets ``gate``: min_samples, lower bound and critical limit."""
    missing: list[str] = []
    if snap.n < gate.min_samples:
        missing.append(f"n {snap.n} < min_samples {gate.min_samples}")
    lower, _ = snap.bounds(gate)
    if lower < gate.agreement:
        missing.append(f"{_bound_name(gate)} {lower:.4f} < {gate.agreement}")
    if gate.max_critical is not None and snap.critical > gate.max_critical:
        missing.append(f"critical misses {snap.critical} > {gate.max_critical}")
    return GateStatus(gate, not missing, "; ".join(missing))


def decide(
    state: LadderState,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    *,
    frozen: bool,
    now: datetime,
    recent: Recent | None = None,
    segments: Mapping[str, Evidence] | None = None,
    invalid: str | None = None,
    budgets: BudgetEvidence | None = None,
    human_ceiling: Bounded | None = None,
) -> Step:
    """What should happen to ``state`` given the evidence per agent version.

    ``current_version`` is the agent version now answering for this task type (``None``
    before the first decision); only its evidence counts for gates. ``recent`` is the blind
    evidence of the current level (drift statistic, recent critical misses): with it, the
    drift detector can demote one level, and critical misses are counted over the gate's
    window instead of the whole history. After a drift demotion the lost level is re-earned
    only on evidence gathered since (:class:`Hold`). ``segments`` is the current version's
    evidence per segment label (:mod:`shadow.segments`): a gate with ``per_segment`` needs
    every declared segment to pass for a promotion, and with ``each`` a declared segment
    below the current level's gate demotes.
    ``invalid`` says why the task type's evidence is invalid (:mod:`shadow.join_health`):
    then nothing is promoted or proposed and a pending proposal is dropped; demotions
    still apply.
    ``budgets`` is the current version's budget evidence (:mod:`shadow.budgets`): a
    promotion (or proposal) needs every budget of the target gate met, and a budget of the
    current level's gate clearly exceeded demotes (``autonomy.budgets: demote``).
    ``human_ceiling``: the task type's human-vs-human agreement (:mod:`shadow.noise`); a
    gate with ``agreement: {below_human: m}`` is judged against it (promotion: the ceiling's
    upper bound - m; demotion: its lower bound - m; none given: no second opinions yet).
    """
    lowered = relative_policy(policy, human_ceiling, demotion=True)
    policy = relative_policy(policy, human_ceiling)
    version = current_version if current_version is not None else state.agent_version
    by_segment: Mapping[str, Evidence] = segments or {}
    snap = snap_for(state, evidence, current_version, policy)
    auto = policy.autonomy

    def step(move: Move, reason: str, **changes: Any) -> Step:
        after = replace(state, updated_at=now, **changes) if move is not Move.STAY else state
        return Step(move, state, after, reason, snap)

    if frozen:
        if state.proposal is not None:
            return step(Move.DROP_PROPOSAL, "sidecar is frozen", proposal=None)
        if state.level > Level.L0:
            return step(
                Move.DEMOTE,
                "sidecar is frozen: every task type is held at L0",
                level=Level.L0,
                agent_version=version,
            )
        return step(Move.STAY, "frozen")

    demotion = _demotion(state, snap, version, lowered, recent) or _segment_demotion(
        state, lowered, by_segment, snap.alpha
    )
    if demotion is None:
        demotion = _budget_demotion(state, policy, budgets)
    if demotion is not None:
        to_level, reason, drifted = demotion
        kept = auto.gate_for(state.level)
        note = "" if kept is None else ceiling_note(kept, human_ceiling, demotion=True)
        reason = f"{reason} ({note})" if note and "bound" in reason else reason
        hold = state.hold if version == state.agent_version else None
        if drifted:
            hold = Hold(state.level, snap.n, snap.agree, snap.critical, snap.errors, snap.reviewed)
        return step(
            Move.DEMOTE,
            reason,
            level=to_level,
            agent_version=version,
            proposal=None,
            hold=hold,
        )

    if invalid:
        why = f"evidence invalid: {invalid}"
        if state.proposal is not None:
            return step(
                Move.DROP_PROPOSAL,
                f"{why}; the proposal for {state.proposal.to_level} is dropped",
                proposal=None,
                agent_version=version,
            )
        if version is not None and version != state.agent_version:
            rebind = f"agent version {state.agent_version} -> {version}"
            return step(Move.REBIND, f"{rebind}; {why}", agent_version=version)
        return step(Move.STAY, f"{why}; no promotion")

    if state.proposal is not None:
        drop = stale_proposal(
            state, state.proposal, snap, version, policy, by_segment, budgets=budgets
        )
        if drop:
            return step(Move.DROP_PROPOSAL, drop, proposal=None, agent_version=version)
        return step(Move.STAY, f"proposal for {state.proposal.to_level} awaits approval")

    target = Level(state.level + 1) if state.level < Level.L4 else None
    gate = auto.gate_for(target) if target is not None else None
    full = snap
    if target is not None:
        snap = gate_snapshot(state, snap, target, version, policy)
    if target is None or target > auto.ceiling:
        why = f"at ceiling {auto.ceiling}"
    elif gate is None:
        why = f"no gate for {target}"
    else:
        status = gate_status(gate, snap)
        split = promotion_check(gate, policy, by_segment, snap.alpha)
        missing = "; ".join(m for m in (status.missing, *split.missing) if m)
        why = "" if status.met and split.met else f"gate {target} not met: {missing}"
        if snap is not full and not status.met:
            why += f" (on the evidence since the drift demotion from {target})"
        if why and gate.below_human is not None:
            why += f" ({ceiling_note(gate, human_ceiling)})"
        spend = judge(gate, policy, budgets)  # shadow.budgets
        if not spend.met:
            lines = "; ".join(spend.missing)
            why = f"{why}; {lines}" if why else f"gate {target} not met: {lines}"
    if why or target is None or gate is None:
        if version is not None and version != state.agent_version:
            rebind = f"agent version {state.agent_version} -> {version}; {state.level} carries over"
            return step(Move.REBIND, f"{rebind}; {why}", agent_version=version)
        return step(Move.STAY, why)
    met = (
        f"gate {target} met: {_bound_name(gate)} {snap.bounds(gate)[0]:.4f} >= {gate.agreement}, "
        f"n {snap.n} >= {gate.min_samples}, critical {snap.critical}"
    )
    if gate.below_human is not None:
        met += f" ({ceiling_note(gate, human_ceiling)})"
    cleared = state.hold if state.hold is not None and target < state.hold.level else None
    if auto.mode is AutonomyMode.AUTO:
        return step(Move.PROMOTE, met, level=target, agent_version=version, hold=cleared)
    held = _rejection_hold(state, target, version, snap, gate)
    if held:
        if version is not None and version != state.agent_version:
            return step(Move.REBIND, held, agent_version=version)
        return step(Move.STAY, held)
    proposal = Proposal.make(state.task_type, state.level, target, version, now, snap)
    return step(Move.PROPOSE, met, proposal=proposal, agent_version=version)


def _rejection_hold(
    state: LadderState, target: Level, version: str | None, snap: Snapshot, gate: Gate
) -> str | None:
    """Why the proposal for ``target`` is held back by an operator's rejection, if it is."""
    d = state.decided
    if (
        d is None
        or d.verdict is not Answer.REJECTED
        or d.to_level != target
        or d.agent_version != version
    ):
        return None
    again = d.n + gate.min_samples
    if snap.n >= again:
        return None
    return (
        f"gate {target} met, but {d.actor} rejected {d.proposal_id} at n {d.n}; proposed "
        f"again once n >= {again} (now {snap.n}) or when an operator asks (reconsider)"
    )


def _budget_demotion(
    state: LadderState, policy: TaskPolicy, budgets: BudgetEvidence | None
) -> tuple[Level, str, bool] | None:
    """A budget of the current level's gate clearly exceeded (``autonomy.budgets: demote``):
    down to the highest level whose gate's budgets are not (:mod:`shadow.budgets`)."""
    found = exceeded_demotion(state.level, policy, budgets)
    return None if found is None else (found[0], found[1], False)


def _segment_demotion(
    state: LadderState, policy: TaskPolicy, segments: Mapping[str, Evidence], alpha: float
) -> tuple[Level, str, bool] | None:
    """A declared segment below the current level's gate (``per_segment: each``): down to the
    highest level whose gate every failing segment still plausibly meets."""
    auto = policy.autonomy
    gate = auto.gate_for(state.level)
    if gate is None or gate.per_segment != "each":
        return None
    failing = below_gate(gate, policy, segments, alpha)
    if not failing:
        return None
    to = Level.L0
    for lower in range(state.level - 1, 0, -1):
        g = auto.gate_for(Level(lower))
        if g is not None and all(up >= g.agreement for up in failing.values()):
            to = Level(lower)
            break
    worst = ", ".join(f"{name} upper bound {up:.4f}" for name, up in sorted(failing.items()))
    return to, f"segment below the {state.level} gate {gate.agreement}: {worst}", False


def _demotion(
    state: LadderState,
    snap: Snapshot,
    version: str | None,
    policy: TaskPolicy,
    recent: Recent | None,
) -> tuple[Level, str, bool] | None:
    """(level, reason, whether it is a drift demotion) or ``None``."""
    auto = policy.autonomy
    level = state.level
    if level > auto.ceiling:
        return auto.ceiling, f"{level} is above the policy ceiling {auto.ceiling}", False
    if (
        level > CARRY_OVER_MAX
        and state.agent_version is not None
        and version is not None
        and version != state.agent_version
    ):
        return (
            CARRY_OVER_MAX,
            f"agent version changed {state.agent_version} -> {version}; levels above "
            f"{CARRY_OVER_MAX} must be re-earned on the new version's own evidence",
            False,
        )
    gate = auto.gate_for(level)
    if gate is None:
        return None
    if level >= Level.L3 and gate.max_critical is not None:
        if recent is None and snap.critical > gate.max_critical:
            return (
                Level.L2,
                (f"{snap.critical} critical misses exceed {level}'s limit of {gate.max_critical}"),
                False,
            )
        if recent is not None and recent.critical > gate.max_critical:
            return (
                Level.L2,
                (
                    f"{recent.critical} critical misses in the last {gate.window} blind "
                    f"comparisons exceed {level}'s limit of {gate.max_critical}"
                ),
                False,
            )
    upper = snap.bounds(gate)[1]
    if upper < gate.agreement:
        to = Level.L0
        for lower in range(level - 1, 0, -1):
            g = auto.gate_for(Level(lower))
            if g is not None and snap.bounds(g)[1] >= g.agreement:
                to = Level(lower)
                break
        what = "adjudicated upper bound" if gate.evidence == "adjudicated" else "upper bound"
        return to, f"{what} {upper:.4f} < {level} gate {gate.agreement}", False
    drift = auto.drift(level)
    if recent is not None and drift is not None and drift.alarmed(recent.statistic):
        return (
            Level(level - 1),
            (
                f"drift: the recent blind agreement fell below the {level} gate {gate.agreement} "
                f"(detector {recent.statistic:.2f} >= {drift.threshold:g} after {recent.n} "
                f"comparisons at {level})"
            ),
            True,
        )
    return None


def gate_snapshot(
    state: LadderState, snap: Snapshot, target: Level, version: str | None, policy: TaskPolicy
) -> Snapshot:
    """The evidence a promotion to ``target`` is judged on: ``snap``, or after a drift
    demotion from ``target`` or below it, only what was gathered since (same version)."""
    hold = state.hold
    if hold is None or target < hold.level or version != state.agent_version:
        return snap
    n = max(snap.n - hold.n, 0)
    agree = min(max(snap.agree - hold.agree, 0), n)
    errors = min(max(snap.errors - hold.errors, 0), n - agree)
    now, then = snap.reviewed, hold.reviewed

    def since(a: int, b: int, cap: int) -> int:
        return min(max(a - b, 0), cap)

    ra = since(now.reviewed_agree, then.reviewed_agree, now.reviewed_agree)
    rd = since(now.reviewed_disagree, then.reviewed_disagree, now.reviewed_disagree)
    reviewed = Reviewed(
        ra,
        since(now.acceptable_agree, then.acceptable_agree, ra),
        rd,
        since(now.acceptable_disagree, then.acceptable_disagree, rd),
    )
    return make_snapshot(
        snap.agent_version,
        n,
        agree,
        max(snap.critical - hold.critical, 0),
        errors,
        reviewed,
        policy.autonomy.alpha,
        snap.policy_hash,
    )


def stale_proposal(
    state: LadderState,
    proposal: Proposal,
    snap: Snapshot,
    version: str | None,
    policy: TaskPolicy,
    segments: Mapping[str, Evidence] | None = None,
    *,
    budgets: BudgetEvidence | None = None,
) -> str | None:
    if proposal.to_level != state.level + 1:
        return f"proposal for {proposal.to_level} no longer follows {state.level}"
    if proposal.agent_version != version:
        return f"proposal was for agent version {proposal.agent_version}, now {version}"
    if proposal.to_level > policy.autonomy.ceiling:
        return f"proposal for {proposal.to_level} is above the ceiling {policy.autonomy.ceiling}"
    gate = policy.autonomy.gate_for(proposal.to_level)
    if gate is None:
        return f"no gate for {proposal.to_level} any more"
    status = gate_status(gate, gate_snapshot(state, snap, proposal.to_level, version, policy))
    split = promotion_check(gate, policy, segments or {}, snap.alpha)
    if not status.met or not split.met:
        missing = "; ".join(m for m in (status.missing, *split.missing) if m)
        return f"evidence no longer supports {proposal.to_level}: {missing}"
    spend = judge(gate, policy, budgets)  # shadow.budgets
    if not spend.met:
        return f"evidence no longer supports {proposal.to_level}: {'; '.join(spend.missing)}"
    return None


def snap_for(
    state: LadderState,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
) -> Snapshot:
    version = current_version if current_version is not None else state.agent_version
    return snapshot(evidence.get(version) if version else None, policy, version)


def earned_level(
    state: LadderState,
    evidence: Mapping[str, Evidence],
    current_version: str | None,
    policy: TaskPolicy,
    segments: Mapping[str, Evidence] | None = None,
    invalid: str | None = None,
    *,
    budgets: BudgetEvidence | None = None,
    human_ceiling: Bounded | None = None,
) -> Level:
    """The highest level, up to the ceiling, whose gate and every gate below it the
    evidence meets now (after a drift demotion, judged on what was gathered since; a gate
    with ``per_segment`` in every declared segment too; a ``below_human`` gate against
    ``human_ceiling``, :func:`shadow.noise.threshold`)."""
    policy = relative_policy(policy, human_ceiling)
    version = current_version if current_version is not None else state.agent_version
    snap = snap_for(state, evidence, current_version, policy)
    earned = Level.L0
    for level in Level:
        if level == Level.L0 or level > policy.autonomy.ceiling:
            continue
        gate = policy.autonomy.gate_for(level)
        if gate is None:
            break
        if not gate_status(gate, gate_snapshot(state, snap, level, version, policy)).met:
            break
        if not promotion_check(gate, policy, segments or {}, snap.alpha).met:
            break
        if not judge(gate, policy, budgets).met:
            break
        earned = level
    # Invalid evidence (shadow.join_health) earns nothing above the level held now.
    return min(earned, state.level) if invalid else earned
