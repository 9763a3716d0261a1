"""Evidence per segment (docs/statistics.md, "Segments"): an overall agreement of 0.97 can
hide a segment at 0.80. Pure functions over the per-segment counts of one task type's current
agent version; the ladder (:mod:`shadow.promotion`) calls them for a gate with
``per_segment``.

A task type declares the segments it keeps apart (``segments: [eu, us]``); every other
segment, and items without one, are reported together as ``other``
(:data:`shadow.policy.OTHER_SEGMENT`) and are never gated on their own.

**Promotion** (``per_segment: each`` or ``route``): every declared segment must have the gate's
``min_samples`` (fewer holds the promotion, and says so) and its own anytime-valid lower bound
at or above the gate's agreement, each at the gate's ``alpha``. This is an intersection-union
test: the promotion needs every segment to pass, so when any one segment is truly below the
gate, the chance of promoting is at most the chance that *that* segment's bound passes wrongly,
which is at most alpha; no split of alpha is needed for that guarantee, and splitting it would
only cost samples (the bench, ``make bench-stats``, measures both).

**Demotion** watches several segments at once, so a false alarm in any of them counts: a
segment falls below the current level's gate when its upper bound at ``alpha / k`` (``k``
declared segments with evidence: Bonferroni) is under the gate's agreement, which keeps the
chance of a false demotion over all segments at most alpha.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shadow.model import Evidence
from shadow.policy import Gate, TaskPolicy
from shadow.stats import lower_bound, upper_bound

__all__ = ["SegmentCheck", "below_gate", "promotion_check"]


@dataclass(frozen=True, slots=True)
class SegmentCheck:
    """Whether the declared segments meet a gate for promotion, and what is missing."""

    met: bool
    missing: tuple[str, ...]  # one line per segment that falls short


def _evidence(segments: Mapping[str, Evidence], name: str, task: TaskPolicy) -> Evidence:
    return segments.get(name) or Evidence(task.name, "")


def promotion_check(
    gate: Gate, task: TaskPolicy, segments: Mapping[str, Evidence], alpha: float
) -> SegmentCheck:
    """Every declared segment against ``gate`` (see the module docstring); met when the gate
    has no ``per_segment``."""
    if gate.per_segment is None:
        return SegmentCheck(True, ())
    missing: list[str] = []
    for name in task.segments:
        ev = _evidence(segments, name, task)
        if ev.n < gate.min_samples:
            missing.append(f"segment {name}: n {ev.n} < min_samples {gate.min_samples}")
            continue
        low = lower_bound(ev.agree, ev.n, alpha)
        if low < gate.agreement:
            missing.append(f"segment {name}: lower bound {low:.4f} < {gate.agreement}")
    return SegmentCheck(not missing, tuple(missing))


def below_gate(
    gate: Gate, task: TaskPolicy, segments: Mapping[str, Evidence], alpha: float
) -> dict[str, float]:
    """The declared segments whose upper bound at ``alpha / k`` is under ``gate``'s agreement
    (``k``: the declared segments with any evidence), with that bound; empty when the gate
    has no ``per_segment``."""
    if gate.per_segment is None:
        return {}
    seen = [name for name in task.segments if _evidence(segments, name, task).n > 0]
    if not seen:
        return {}
    share = alpha / len(seen)
    out: dict[str, float] = {}
    for name in seen:
        ev = _evidence(segments, name, task)
        up = upper_bound(ev.agree, ev.n, share)
        if up < gate.agreement:
            out[name] = up
    return out
