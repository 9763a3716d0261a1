"""The evidence beside agreement, in words and rows: each segment's figures and what holds it,
the join health and the evidence state. ``shadow status`` and ``shadow demo``
(:mod:`shadow.console`), the console (:mod:`shadow.ui`) and the live report
(:mod:`shadow.report`) all show it this way, so they say the same thing.

Pure: each function reads one task type's entry of the agreement document
(``GET /v1/agreement``, :mod:`shadow.autonomy`) as served; a key an older sidecar does not
serve reads as absent (no segments, no join health).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shadow.policy import OTHER_SEGMENT

__all__ = [
    "evidence_invalid",
    "gate_held_by_segments",
    "join_health_text",
    "segment_rows",
]


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def gate_held_by_segments(entry: Mapping[str, Any]) -> list[str]:
    """What the next gate's ``per_segment`` still needs, one line per declared segment that
    falls short (``segment us: lower bound 0.8123 < 0.95``); empty when nothing holds it."""
    gate = entry.get("next_gate") or {}
    return [str(line) for line in gate.get("segments_missing") or ()]


def segment_rows(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each segment of ``entry`` (declared ones first, then ``other``), its figures as served
    and: ``declared`` (``other`` is not, and is never gated on its own), ``holds`` (why it
    holds the next gate's promotion: ``lower bound 0.8123 < 0.95``, or ``None``) and
    ``state`` (one word: ``routed to humans``, ``holds the promotion``, ``not gated`` or
    ``passes``/``-`` when the next gate judges segments or not)."""
    gate = entry.get("next_gate") or {}
    judged = gate.get("per_segment") is not None
    why: dict[str, str] = {}
    for line in gate_held_by_segments(entry):
        head, _, rest = line.partition(": ")
        if head.startswith("segment "):
            why[head.removeprefix("segment ")] = rest
    rows = []
    for label, figures in (entry.get("segments") or {}).items():
        declared = label != OTHER_SEGMENT
        holds = why.get(label) if declared else None
        if figures.get("routed_to_humans"):
            state = "routed to humans"
        elif not declared:
            state = "not gated"
        elif holds:
            state = "holds the promotion"
        else:
            state = "passes" if judged else "-"
        rows.append({"segment": label, **figures, "declared": declared, "holds": holds})
        rows[-1]["state"] = state
    return rows


def join_health_text(entry: Mapping[str, Any]) -> str | None:
    """``outcome coverage 0.9500 (95 covered, 5 missing, 12 pending); 0 unknown outcomes,
    0 conflicts, 0 routed unanswered``; ``None`` when the entry has no join health."""
    health = entry.get("join_health")
    if not health:
        return None
    coverage = health.get("coverage")
    head = (
        f"outcome coverage {_num(coverage)}"
        if coverage is not None
        else "outcome coverage not judged yet"
    )
    return (
        f"{head} ({health.get('covered', 0)} covered, {health.get('missing', 0)} missing, "
        f"{health.get('pending', 0)} pending); {health.get('unknown_outcomes', 0)} unknown "
        f"outcomes, {health.get('conflicts', 0)} conflicts, "
        f"{health.get('routed_unanswered', 0)} routed unanswered"
    )


def evidence_invalid(entry: Mapping[str, Any]) -> str | None:
    """``evidence invalid, no promotion: <reason>`` while the join health makes the evidence
    invalid (:mod:`shadow.join_health`), else ``None``."""
    if entry.get("evidence_state") != "invalid":
        return None
    return f"evidence invalid, no promotion: {entry.get('evidence_reason')}"
