"""Join health: whether a task type's evidence can be trusted to stand for its work.

Agreement is measured only on the cases whose human outcome reached the sidecar. When most
outcomes never arrive (a broken outcome feed, a host that reports only the easy cases), the
comparisons are a selected few and their agreement says little about the rest. So next to
the evidence the sidecar keeps, per task type, how well events and outcomes join
(:class:`JoinHealth`, read by :meth:`shadow.store.Store.join_health`), and with the policy's
``min_outcome_coverage`` it declares the evidence **invalid** when too few outcomes arrive
(:func:`invalid_reason`): no promotion while it is (:func:`shadow.promotion.decide`),
demotions still apply.

Definitions (``ttl`` is the join TTL, ``SHADOW_JOIN_TTL``; ``now`` the sidecar's clock):

- **sampled event**: an event of the task type sent to the agent (answered, or still
  awaiting the agent). Events the ``sample_rate`` left out are never evidence and do not count.
- **covered**: a sampled event whose first outcome was received no later than ``ttl`` after
  the event was (an outcome received before its event counts: the join is order-free).
- **missing**: a sampled event whose ``ttl`` has passed with no outcome received within it
  (an outcome arriving later still completes the join, but the event stays missing here).
  A missing event is never evidence: its join expires, and ``expired`` is not in ``n``.
- **pending**: a sampled event still inside its ``ttl`` (received after ``now - ttl``),
  with or without an outcome so far: it is judged once its ``ttl`` has passed. Judging
  only events whose ``ttl`` has passed keeps the share unbiased: among young events the
  covered ones are known at once while the missing ones are not known yet.
- **coverage** = covered / (covered + missing) over the **window**: the last
  :data:`WINDOW` sampled events whose ``ttl`` has passed, newest first by the time the event
  was received. ``None`` while no event has been judged.
- **unknown_outcomes**: of the last :data:`WINDOW` outcomes (first revision per event) whose
  ``ttl`` has passed, those whose event was not received within ``ttl`` of them. An outcome
  names no task type, so this is the sidecar's count, the same in every task type's block.
- **conflicts**: conflicting duplicates (an event or outcome re-sent with different
  content: dead-lettered, never an overwrite) of the task type's events, recorded since the
  oldest event in the window was received (since ``now - ttl`` while none is judged).
- **routed_unanswered**: of the last :data:`WINDOW` items routed for the task type
  (``GET /v1/route``, live sessions) whose ``ttl`` has passed since the routing answer,
  those with no outcome received within it: work handed out whose result never came back.

Evidence is **invalid** when ``min_outcome_coverage`` is set and the coverage is below it;
valid otherwise, including while no event has been judged yet (nothing says the outcomes
fall short). A window of a few events is judged as it is: one missing event of three is a
coverage of 0.67. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["WINDOW", "JoinHealth", "evidence_fields", "invalid_reason"]

WINDOW = 1000
"""How many of the latest judged items (sampled events, outcomes, routed items) each
count looks at."""


@dataclass(frozen=True, slots=True)
class JoinHealth:
    """One task type's join health (see the module docstring for every definition)."""

    covered: int = 0
    missing: int = 0
    pending: int = 0
    unknown_outcomes: int = 0
    conflicts: int = 0
    routed_unanswered: int = 0

    @property
    def judged(self) -> int:
        """Sampled events in the window: covered or missing."""
        return self.covered + self.missing

    @property
    def coverage(self) -> float | None:
        """covered / judged, ``None`` while nothing is judged."""
        return self.covered / self.judged if self.judged else None

    def to_json(self) -> dict[str, Any]:
        """The ``join_health`` block of ``GET /v1/agreement`` (coverage rounded to 4 places)."""
        coverage = self.coverage
        return {
            "coverage": None if coverage is None else round(coverage, 4),
            "covered": self.covered,
            "missing": self.missing,
            "pending": self.pending,
            "unknown_outcomes": self.unknown_outcomes,
            "conflicts": self.conflicts,
            "routed_unanswered": self.routed_unanswered,
        }


def invalid_reason(health: JoinHealth | None, min_outcome_coverage: float | None) -> str | None:
    """Why the evidence is invalid, or ``None`` when it is valid: ``min_outcome_coverage``
    unset (off), nothing judged yet, or a coverage at or above it."""
    if min_outcome_coverage is None or health is None:
        return None
    coverage = health.coverage
    if coverage is None or coverage >= min_outcome_coverage:
        return None
    return (
        f"outcome coverage {round(coverage, 4):g} < min_outcome_coverage "
        f"{min_outcome_coverage:g} over the last {health.judged} sampled events past their "
        f"join TTL ({health.covered} covered, {health.missing} missing)"
    )


def evidence_fields(
    health: JoinHealth | None, min_outcome_coverage: float | None
) -> dict[str, Any]:
    """``evidence_state``, ``evidence_reason`` and ``join_health`` of one task type's entry
    in ``GET /v1/agreement`` (``join_health`` is ``null`` when it was not read)."""
    reason = invalid_reason(health, min_outcome_coverage)
    return {
        "evidence_state": "invalid" if reason else "valid",
        "evidence_reason": reason,
        "join_health": None if health is None else health.to_json(),
    }
