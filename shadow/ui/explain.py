"""Where a task type stands, in words and numbers: what the overview and the task type page
say about its next gate (what it still takes, and why it is held). Pure: it reads one entry
of the agreement document (``GET /v1/agreement``, :mod:`shadow.autonomy`) and the policy.
"""

from __future__ import annotations

from typing import Any

from shadow.evidence_view import (
    agreement_met,
    budget_rows,
    cost_per_decision,
    daily_cost_text,
    gate_held,
    join_health_text,
    noise_text,
    segment_rows,
)
from shadow.policy import TaskPolicy
from shadow.stats import lower_bound

__all__ = ["standing"]


def _since_hold(entry: dict[str, Any]) -> tuple[int, int] | None:
    hold = entry.get("hold")
    if not hold:
        return None
    n = max(int(entry["n"]) - int(hold["n"]), 0)
    agree = min(max(int(entry["agree"]) - int(hold["agree"]), 0), n)
    return n, agree


def _held_line(entry: dict[str, Any]) -> str | None:
    hold = entry.get("hold")
    since = _since_hold(entry)
    if not hold or since is None:
        return None
    n, agree = since
    rate = f"{agree / n:.2f}" if n else "no agreement yet"
    return (
        f"held since the drift demotion from {hold['level']} at n={hold['n']}: "
        f"{n} comparisons since, {rate}"
    )


def _gate_needs(entry: dict[str, Any], gate: dict[str, Any], task: TaskPolicy) -> list[str]:
    """What the next gate still needs, each as one line with its numbers."""
    n, agree = int(entry["n"]), int(entry["agree"])
    since = _since_hold(entry) if gate.get("since_drift_demotion") else None
    if since is not None:
        n, agree = since
    lower = lower_bound(agree, n, task.autonomy.alpha) if n else 0.0
    out: list[str] = []
    if gate.get("evidence") == "adjudicated":
        adj = entry.get("adjudicated") or {}
        adj_lower = adj.get("lower")
        shown = f"{adj_lower:.4f}" if isinstance(adj_lower, int | float) else "none yet"
        out.append(
            f"judged on the adjudicated estimate: its lower bound {shown} must reach "
            f"{gate['agreement']}"
        )
    elif lower < gate["agreement"]:
        out.append(
            f"lower bound {lower:.4f} must reach {gate['agreement']} (agreement {_rate(agree, n)})"
        )
    if n < gate["min_samples"]:
        out.append(f"{gate['min_samples'] - n} more comparisons (n={n} of {gate['min_samples']})")
    limit = gate.get("max_critical")
    if limit is not None and int(entry.get("critical", 0)) > limit:
        out.append(f"critical misses {entry['critical']} over the gate's limit {limit}")
    out.extend(gate_held(entry))  # each declared segment on its own (per_segment), budgets
    needed = gate.get("agreements_needed")
    if needed:
        out.append(f"{needed} more agreeing comparisons in a row would meet it")
    elif needed is None and gate.get("evidence") != "adjudicated":
        out.append("over 10 million agreeing comparisons would be needed")
    return out


def _rate(agree: int, n: int) -> str:
    return f"{agree / n:.4f}" if n else "none yet"


def standing(
    name: str, entry: dict[str, Any], task: TaskPolicy, *, frozen: bool, held_writes: int
) -> dict[str, Any]:
    """The overview's view of one task type: its figures (as in ``entry``), a ``headline``
    (where it stands), ``details`` (each with its numbers), and what waits for a human."""
    gate = entry.get("next_gate")
    details: list[str] = []
    held = _held_line(entry)
    if frozen:
        headline = "frozen: every task type is at L0 until an operator unfreezes"
    elif entry.get("evidence_state") == "invalid":  # join health (shadow.join_health)
        headline = f"evidence invalid, no promotion: {entry.get('evidence_reason')}"
    elif gate is None:
        top = "the top of the ladder" if entry["level"] == "L4" else "its ceiling"
        headline = f"at {top} ({entry['level']}, ceiling {entry['ceiling']})"
    elif agreement_met(gate) and gate_held(entry):
        headline = f"to reach {gate['level']}: the gate is met overall, but " + "; ".join(
            gate_held(entry)
        )
    elif gate["met"]:
        proposal = entry.get("proposal")
        partial = entry.get("partial_approval")
        if partial:
            headline = (
                f"gate {gate['level']} met: approved by {partial['by']}, needs a second "
                "approver (a different credential)"
            )
        elif proposal:
            headline = (
                f"gate {gate['level']} met: the promotion {proposal['from_level']} → "
                f"{proposal['to_level']} waits for an approver"
            )
        elif entry.get("mode") == "auto":
            headline = f"gate {gate['level']} met: promoted at the next evaluation"
        else:
            headline = f"gate {gate['level']} met"
            decided = entry.get("last_decision")
            if decided and decided.get("verdict") == "rejected":
                again = int(decided["n"]) + int(gate["min_samples"])
                details.append(
                    f"the promotion to {decided['to_level']} was rejected by {decided['actor']} "
                    f"at n={decided['n']}: proposed again at n ≥ {again} (or when an operator "
                    "asks to reconsider)"
                )
    else:
        headline = f"to reach {gate['level']}: " + (
            "; ".join(_gate_needs(entry, gate, task)) or "see below"
        )
    if held and not frozen:
        details.insert(0, held)
    return {
        "name": name,
        **entry,
        "headline": headline,
        "details": details,
        "held_writes": held_writes,
        "gate_agreement": gate["agreement"] if gate else None,
        "segment_rows": segment_rows(entry),
        "join_text": join_health_text(entry),
        "budget_rows": budget_rows(entry),
        "cost_per_decision": cost_per_decision(entry),
        "daily_text": daily_cost_text(entry),
        "noise_text": noise_text(entry),
    }
