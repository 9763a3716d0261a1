"""The autonomy ladder's immutable values (:mod:`shadow.promotion` decides over them):

- where one task type stands (:class:`LadderState`: its level, the agent version it applies
  to, a pending :class:`Proposal`, the operator's last answer :class:`Decided`, a drift
  demotion's :class:`Hold`);
- the evidence behind a decision as the audit log records it (:class:`Snapshot`, with the raw
  and the adjudicated bounds; :func:`snapshot` makes one from the counts);
- a decision's result (:class:`Step`: the :class:`Move`, the state before and after, why).

Pure: no I/O, no clock. Each value reads back what it wrote (``to_json``/``from_json``),
including audit entries and states written before a field existed.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shadow.adjudicated import Reviewed, adjudicated
from shadow.errors import AutonomyError
from shadow.model import Evidence, Level
from shadow.policy import Gate, TaskPolicy
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
    "Reviewed",
    "Snapshot",
    "Step",
    "make_snapshot",
    "reviewed_of",
    "snapshot",
]


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
    # The reviewed sample and the adjudicated bound (shadow.adjudicated); entries audited
    # before the review queue existed read as no reviews (lower 0, upper 1).
    reviewed: Reviewed = field(default_factory=Reviewed)
    adj_lower: float = 0.0
    adj_upper: float = 1.0

    @property
    def disagree(self) -> int:
        return self.n - self.agree - self.errors

    def bounds(self, gate: Gate) -> tuple[float, float]:
        """The (lower, upper) bound ``gate`` judges: raw agreement, or adjudicated."""
        if gate.evidence == "adjudicated":
            return self.adj_lower, self.adj_upper
        return self.lower, self.upper

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Snapshot:
        adj = obj.get("adjudicated") or {}
        reviewed = adj.get("reviewed") or {}
        acceptable = adj.get("acceptable") or {}
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
            reviewed=Reviewed(
                int(reviewed.get("agree", 0)),
                int(acceptable.get("agree", 0)),
                int(reviewed.get("disagree", 0)),
                int(acceptable.get("disagree", 0)),
            ),
            adj_lower=float(adj.get("lower", 0.0)),
            adj_upper=float(adj.get("upper", 1.0)),
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
            "adjudicated": {
                "lower": self.adj_lower,
                "upper": self.adj_upper,
                "reviewed": {
                    "agree": self.reviewed.reviewed_agree,
                    "disagree": self.reviewed.reviewed_disagree,
                },
                "acceptable": {
                    "agree": self.reviewed.acceptable_agree,
                    "disagree": self.reviewed.acceptable_disagree,
                },
            },
        }


def make_snapshot(
    version: str | None,
    n: int,
    agree: int,
    critical: int,
    errors: int,
    reviewed: Reviewed,
    alpha: float,
    policy_hash: str,
) -> Snapshot:
    adj = adjudicated(n, agree, max(n - agree - errors, 0), reviewed, alpha)
    return Snapshot(
        agent_version=version,
        n=n,
        agree=agree,
        critical=critical,
        errors=errors,
        lower=lower_bound(agree, n, alpha),
        upper=upper_bound(agree, n, alpha),
        alpha=alpha,
        policy_hash=policy_hash,
        reviewed=reviewed,
        adj_lower=adj.lower,
        adj_upper=adj.upper,
    )


def reviewed_of(ev: Evidence) -> Reviewed:
    """The reviewed sample's counts of ``ev``."""
    return Reviewed(
        ev.reviewed_agree, ev.acceptable_agree, ev.reviewed_disagree, ev.acceptable_disagree
    )


def snapshot(evidence: Evidence | None, policy: TaskPolicy, version: str | None) -> Snapshot:
    ev = evidence or Evidence(policy.name, version or "")
    return make_snapshot(
        version,
        ev.n,
        ev.agree,
        ev.critical,
        ev.errors,
        reviewed_of(ev),
        policy.autonomy.alpha,
        policy.hash,
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
    errors: int = 0
    reviewed: Reviewed = field(default_factory=Reviewed)  # the sample then (older: none)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Hold:
        counts = obj.get("reviewed") or {}
        return cls(
            Level.parse(obj["level"]),
            int(obj["n"]),
            int(obj["agree"]),
            int(obj["critical"]),
            int(obj.get("errors", 0)),
            Reviewed(
                int(counts.get("reviewed_agree", 0)),
                int(counts.get("acceptable_agree", 0)),
                int(counts.get("reviewed_disagree", 0)),
                int(counts.get("acceptable_disagree", 0)),
            ),
        )

    def to_json(self) -> dict[str, Any]:
        r = self.reviewed
        return {
            "level": str(self.level),
            "n": self.n,
            "agree": self.agree,
            "critical": self.critical,
            "errors": self.errors,
            "reviewed": {
                "reviewed_agree": r.reviewed_agree,
                "acceptable_agree": r.acceptable_agree,
                "reviewed_disagree": r.reviewed_disagree,
                "acceptable_disagree": r.acceptable_disagree,
            },
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
