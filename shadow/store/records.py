"""The store's value types: what a put returns, dead letters, join rows, replay evidence.
Plain immutable data; no I/O."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shadow.errors import Reason
from shadow.model import (
    Handling,
    Outcome,
    ShadowDecision,
    Verdict,
)
from shadow.promotion import Step


class PutStatus(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # dead-lettered, nothing overwritten
    REVERSAL = "reversal"  # outcome with a later decided_at: re-compared
    SUPERSEDED = "superseded"  # outcome older than the current one: kept as history
    UNSTORABLE = "unstorable"  # the store cannot hold what it holds: dead-lettered, not stored


@dataclass(frozen=True, slots=True)
class PutResult:
    event_id: str
    status: PutStatus
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status is not PutStatus.CONFLICT and self.status is not PutStatus.UNSTORABLE


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be taken, with why. ``raw`` keeps the input for replay.

    ``reason`` is the message a person reads; ``code`` the bounded class metrics count it
    under. The code is not stored, so it takes no part in equality.
    """

    source: str
    kind: str
    reason: str
    raw: str | None = None
    event_id: str | None = None
    location: str | None = None
    code: Reason = field(default=Reason.INVALID, compare=False)


@dataclass(frozen=True, slots=True)
class JoinRow:
    """A decision whose outcome is known and whose comparison is missing or stale."""

    task_type: str
    decision: ShadowDecision
    outcome: Outcome
    outcome_hash: str
    recorded: Handling | None = None  # the sidecar's own record of the routing answer

    @property
    def handled_by(self) -> Handling:
        """How the item was handled: the sidecar's record, else what the outcome states,
        else blind (an item the host never routed was decided without the agent)."""
        return self.recorded or self.outcome.handled_by or Handling.BLIND

    @property
    def handling_conflict(self) -> bool:
        """The outcome states a handling the sidecar's own record contradicts."""
        stated = self.outcome.handled_by
        return self.recorded is not None and stated is not None and stated is not self.recorded


@dataclass(frozen=True, slots=True)
class ReplayEvidence:
    """One task type's result of a ``shadow replay --record-evidence`` run. Stored apart
    from live evidence (table ``replay_evidence``): it is audited, never gate evidence."""

    task_type: str
    agent_version: str
    n: int
    agree: int
    critical: int
    errors: int
    lower: float
    upper: float
    policy_hash: str | None
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reversal:
    event_id: str
    agent_version: str
    before: Verdict
    after: Verdict


def _col(rows: Sequence[tuple[Any, ...]], i: int) -> list[Any]:
    return [r[i] for r in rows]


def _stamp(step: Step) -> datetime:
    if step.after.updated_at is None:
        raise ValueError(f"step {step.move} for {step.after.task_type} carries no time")
    return step.after.updated_at
