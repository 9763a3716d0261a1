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

Every result carries a reason and an evidence :class:`Snapshot` for the audit log. Nothing
here reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from shadow.errors import AutonomyError
from shadow.model import Evidence, Level
from shadow.policy import AutonomyMode, Gate, TaskPolicy
from shadow.stats import lower_bound, upper_bound

__all__ = [
    "Answer",
    "Decided",
    "Hold",
    "LadderState",
    "Move",
    "Proposal",
    "ProposalRef",
    "Recent",
    "Snapshot",
    "Step",
    "agreement_fields",
    "decide",
    "gate_snapshot",
    "gate_status",
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


class Move(enum.StrEnum):
    STAY = "stay"
    PROMOTE = "promote"
    PROPOSE = "propose"
    DEMOTE = "demote"
    DROP_PROPOSAL = "drop_proposal"
    REBIND = "rebind"
    APPROVE = "approve"
    REJECT = "reject"
    RECONSIDER = "reconsider"  # an operator lifts a rejection's hold on new proposals
    MANUAL_SET = "manual_set"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    FOLLOW = "follow"  # a Kafka replica applies the promoter's published level


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The evidence behind a decision, as recorded in the audit log."""

    agent_version: str | None
    n: int
    agree: int
    critical: int
    errors: int
    lower: float
    upper: float
    alpha: float
    policy_hash: str

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Snapshot:
        return cls(
            agent_version=obj.get("agent_version"),
            n=int(obj["n"]),
            agree=int(obj["agree"]),
            critical=int(obj["critical"]),
            errors=int(obj["errors"]),
            lower=float(obj["lower"]),
            upper=float(obj["upper"]),
            alpha=float(obj["alpha"]),
            policy_hash=str(obj["policy_hash"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_version": self.agent_version,
            "n": self.n,
            "agree": self.agree,
            "agreement": round(self.agree / self.n, 6) if self.n else None,
            "critical": self.critical,
            "errors": self.errors,
            "lower": self.lower,
            "upper": self.upper,
            "alpha": self.alpha,
            "policy_hash": self.policy_hash,
        }


def snapshot(evidence: Evidence | None, policy: TaskPolicy, version: str | None) -> Snapshot:
    ev = evidence or Evidence(policy.name, version or "")
    alpha = policy.autonomy.alpha
    return Snapshot(
        agent_version=version,
        n=ev.n,
        agree=ev.agree,
        critical=ev.critical,
        errors=ev.errors,
        lower=lower_bound(ev.agree, ev.n, alpha),
        upper=upper_bound(ev.agree, ev.n, alpha),
        alpha=alpha,
        policy_hash=policy.hash,
    )


@dataclass(frozen=True, slots=True)
class Proposal:
    """A promotion waiting for an operator (``mode: propose``). ``id`` names it for the
    operator's answer: it is derived from what was proposed, when, on which evidence, so a
    later proposal for the same levels (after a rejection, a freeze) has another id."""

    to_level: Level
    agent_version: str | None
    proposed_at: datetime
    evidence: Snapshot
    from_level: Level
    id: str

    @classmethod
    def make(
        cls,
        task_type: str,
        from_level: Level,
        to_level: Level,
        agent_version: str | None,
        proposed_at: datetime,
        evidence: Snapshot,
    ) -> Proposal:
        key = "\x1f".join(
            [
                task_type,
                str(from_level),
                str(to_level),
                agent_version or "",
                proposed_at.isoformat(),
                str(evidence.n),
                str(evidence.agree),
            ]
        )
        pid = "p-" + hashlib.sha256(key.encode()).hexdigest()[:12]
        return cls(to_level, agent_version, proposed_at, evidence, from_level, pid)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], task_type: str = "") -> Proposal:
        to_level = Level.parse(obj["to_level"])
        # Proposals stored before ids existed: one level up, id derived the same way.
        from_level = Level.parse(obj["from_level"]) if obj.get("from_level") else None
        made = cls.make(
            task_type,
            from_level if from_level is not None else Level(max(to_level - 1, 0)),
            to_level,
            obj.get("agent_version"),
            datetime.fromisoformat(obj["proposed_at"]),
            Snapshot.from_json(obj["evidence"]),
        )
        return replace(made, id=str(obj["id"])) if obj.get("id") else made

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from_level": str(self.from_level),
            "to_level": str(self.to_level),
            "agent_version": self.agent_version,
            "proposed_at": self.proposed_at.isoformat(),
            "evidence": self.evidence.to_json(),
        }


class Answer(enum.StrEnum):
    """An operator's answer to a proposal."""

    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Decided:
    """The operator's last answer to a proposal: what it was, the verdict, who, and the
    evidence count then (a rejection holds new proposals for the same step and agent
    version until ``n`` has grown by the gate's ``min_samples``)."""

    proposal_id: str
    from_level: Level
    to_level: Level
    agent_version: str | None
    verdict: Answer
    actor: str
    n: int
    at: datetime
    reason: str = ""

    @classmethod
    def of(
        cls,
        proposal: Proposal,
        agent_version: str | None,
        verdict: Answer,
        actor: str,
        n: int,
        at: datetime,
        reason: str = "",
    ) -> Decided:
        """The answer ``verdict`` to ``proposal``."""
        return cls(
            proposal.id,
            proposal.from_level,
            proposal.to_level,
            agent_version,
            verdict,
            actor,
            n,
            at,
            reason,
        )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Decided:
        return cls(
            proposal_id=str(obj["proposal_id"]),
            from_level=Level.parse(obj["from_level"]),
            to_level=Level.parse(obj["to_level"]),
            agent_version=obj.get("agent_version"),
            verdict=Answer(obj["verdict"]),
            actor=str(obj["actor"]),
            n=int(obj["n"]),
            at=datetime.fromisoformat(obj["at"]),
            reason=str(obj.get("reason") or ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "proposal_id": self.proposal_id,
            "from_level": str(self.from_level),
            "to_level": str(self.to_level),
            "agent_version": self.agent_version,
            "verdict": self.verdict.value,
            "actor": self.actor,
            "n": self.n,
            "at": self.at.isoformat(),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ProposalRef:
    """What an operator's approval or rejection names: a proposal id, or its levels
    (``to_level``, and optionally ``from_level``)."""

    proposal_id: str | None = None
    to_level: Level | None = None
    from_level: Level | None = None

    def __post_init__(self) -> None:
        if self.proposal_id is None and self.to_level is None:
            raise AutonomyError("name the proposal: its id, or the level it promotes to")

    def matches(self, proposal_id: str, from_level: Level, to_level: Level) -> bool:
        if self.proposal_id is not None and self.proposal_id != proposal_id:
            return False
        if self.to_level is not None and self.to_level != to_level:
            return False
        return self.from_level is None or self.from_level == from_level

    def __str__(self) -> str:
        parts = []
        if self.proposal_id is not None:
            parts.append(self.proposal_id)
        if self.to_level is not None:
            start = f"{self.from_level} -> " if self.from_level is not None else "-> "
            parts.append(f"{start}{self.to_level}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Recent:
    """The blind evidence of the current level, as the drift rules see it: the detector's
    statistic (:class:`shadow.drift.Drift`), how many comparisons fed it, and the critical
    misses among the last ``Gate.window`` of them."""

    statistic: float = 0.0
    n: int = 0
    critical: int = 0


@dataclass(frozen=True, slots=True)
class Hold:
    """A drift demotion from ``level``: promotion back to ``level`` (or above) counts only
    the evidence gathered since (``n``, ``agree``, ``critical`` were the totals then)."""

    level: Level
    n: int
    agree: int
    critical: int

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Hold:
        return cls(
            Level.parse(obj["level"]), int(obj["n"]), int(obj["agree"]), int(obj["critical"])
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "level": str(self.level),
            "n": self.n,
            "agree": self.agree,
            "critical": self.critical,
        }


@dataclass(frozen=True, slots=True)
class LadderState:
    """Where one task type stands. ``agent_version`` is the version the level applies to."""

    task_type: str
    level: Level
    agent_version: str | None = None
    proposal: Proposal | None = None
    updated_at: datetime | None = None
    decided: Decided | None = None
    hold: Hold | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The result of a decision: the move, the new state, why, and the evidence."""

    move: Move
    before: LadderState
    after: LadderState
    reason: str
    evidence: Snapshot

    @property
    def changed(self) -> bool:
        return self.move is not Move.STAY


@dataclass(frozen=True, slots=True)
class GateStatus:
    gate: Gate
    met: bool
    missing: str  # empty when met; otherwise what is missing, for humans


def gate_status(gate: Gate, snap: Snapshot) -> GateStatus:
    """Whether ``snap`` meets ``gate``: min_samples, lower bound and critical limit."""
    missing: list[str] = []
    if snap.n < gate.min_samples:
        missing.append(f"n {snap.n} < min_samples {gate.min_samples}")
    if snap.lower < gate.agreement:
        missing.append(f"lower bound {snap.lower:.4f} < {gate.agreement}")
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
) -> Step:
    """What should happen to ``state`` given the evidence per agent version.

    ``current_version`` is the agent version now answering for this task type (``None``
    before the first decision); only its evidence counts for gates. ``recent`` is the blind
    evidence of the current level (drift statistic, recent critical misses): with it, the
    drift detector can demote one level, and critical misses are counted over the gate's
    window instead of the whole history. After a drift demotion the lost level is re-earned
    only on evidence gathered since (:class:`Hold`).
    """
    version = current_version if current_version is not None else state.agent_version
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

    demotion = _demotion(state, snap, version, policy, recent)
    if demotion is not None:
        to_level, reason, drifted = demotion
        hold = state.hold if version == state.agent_version else None
        if drifted:
            hold = Hold(state.level, snap.n, snap.agree, snap.critical)
        return step(
            Move.DEMOTE,
            reason,
            level=to_level,
            agent_version=version,
            proposal=None,
            hold=hold,
        )

    if state.proposal is not None:
        drop = stale_proposal(state, state.proposal, snap, version, policy)
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
        why = "" if status.met else f"gate {target} not met: {status.missing}"
        if snap is not full and not status.met:
            why += f" (on the evidence since the drift demotion from {target})"
    if why or target is None or gate is None:
        if version is not None and version != state.agent_version:
            rebind = f"agent version {state.agent_version} -> {version}; {state.level} carries over"
            return step(Move.REBIND, f"{rebind}; {why}", agent_version=version)
        return step(Move.STAY, why)
    met = (
        f"gate {target} met: lower bound {snap.lower:.4f} >= {gate.agreement}, "
        f"n {snap.n} >= {gate.min_samples}, critical {snap.critical}"
    )
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
    if snap.upper < gate.agreement:
        to = Level.L0
        for lower in range(level - 1, 0, -1):
            g = auto.gate_for(Level(lower))
            if g is not None and snap.upper >= g.agreement:
                to = Level(lower)
                break
        return to, f"upper bound {snap.upper:.4f} < {level} gate {gate.agreement}", False
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
    alpha = policy.autonomy.alpha
    return replace(
        snap,
        n=n,
        agree=agree,
        critical=max(snap.critical - hold.critical, 0),
        errors=snap.errors,
        lower=lower_bound(agree, n, alpha),
        upper=upper_bound(agree, n, alpha),
    )


def stale_proposal(
    state: LadderState, proposal: Proposal, snap: Snapshot, version: str | None, policy: TaskPolicy
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
    if not status.met:
        return f"evidence no longer supports {proposal.to_level}: {status.missing}"
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
) -> Level:
    """The highest level, up to the ceiling, whose gate and every gate below it the
    evidence meets now (after a drift demotion, judged on what was gathered since)."""
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
        earned = level
    return earned
