"""The agreement document (``GET /v1/agreement``, ``shadow status --json``): evidence, bounds,
the next gate and what it still needs, per configured task type. Pure: it formats what the
:class:`~shadow.ladder.Ladder` holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from shadow import promotion
from shadow.adjudicated import adjudicated
from shadow.budgets import BudgetEvidence, budgets_block, judge, projected_daily_cost
from shadow.join_health import JoinHealth, evidence_fields
from shadow.model import Evidence, Handling, Level
from shadow.noise import Bounded, NoiseFloor, threshold
from shadow.noise import empty as empty_floor
from shadow.policy import OTHER_SEGMENT, Gate, Policy, TaskPolicy
from shadow.promotion import LadderState
from shadow.segments import promotion_check
from shadow.stats import lower_bound, upper_bound

__all__ = ["agreement_document", "agreements_needed"]


def agreements_needed(agree: int, n: int, gate: Gate, alpha: float) -> int | None:
    """How many more agreeing comparisons (and nothing else) would meet ``gate``'s bound
    and sample count; ``None`` when over 10 million would be needed."""

    def ok(k: int) -> bool:
        return n + k >= gate.min_samples and lower_bound(agree + k, n + k, alpha) >= gate.agreement

    if ok(0):
        return 0
    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > 10_000_000:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def agreement_document(
    policy: Policy,
    states: Mapping[str, LadderState],
    evidence: Mapping[str, Mapping[str, Evidence]],
    versions: Mapping[str, str],
    frozen: bool,
    acceptance: Sequence[tuple[str, str, str, int, int]] = (),
    reviewers: Mapping[tuple[str, str], tuple[int, int]] | None = None,
    segments: Mapping[str, Mapping[str, Evidence]] | None = None,
    routed: Mapping[str, frozenset[str]] | None = None,
    health: Mapping[str, JoinHealth] | None = None,
    budgets: Mapping[str, BudgetEvidence] | None = None,
    noise: Mapping[str, NoiseFloor] | None = None,
) -> dict[str, Any]:
    """The ``GET /v1/agreement`` document (also ``shadow status --json``): the evidence of
    the current agent version of each configured task type, and beside it (never in it)
    its ``acceptance``: the agreement of the items the agent handled or a human decided
    with its proposal shown, from ``(task_type, version, handled_by, n, agree)`` rows. Its
    ``adjudicated`` block is the agreement corrected by the reviewers' verdicts
    (:mod:`shadow.adjudicated`), with ``reviewer_agreement`` from ``reviewers``: per
    ``(task_type, version)``, (cases with two or more blind reviews, of those the cases all
    reviewers judged alike). ``segments``: per task type, the current version's evidence
    per segment label (its declared segments, then ``other``), reported as ``segments`` with
    the task type's fields, ``routed_to_humans`` for a segment a ``per_segment: route`` gate
    sends to humans (``routed``)."""
    # ``health``: each task type's join health (shadow.join_health), reported with its
    # evidence_state and evidence_reason (the policy's min_outcome_coverage).
    accepted: dict[tuple[str, str], dict[str, Any]] = {}
    for task_type, of_version, handled_by, n, agree in acceptance:
        accepted.setdefault((task_type, of_version), {})[handled_by] = {
            "n": n,
            "agree": agree,
            "agreement": agree / n if n else None,
        }
    out: dict[str, Any] = {}
    for name, task in policy.task_types.items():
        state = states.get(name) or LadderState(name, task.autonomy.start)
        version = versions.get(name) or state.agent_version
        ev = evidence.get(name, {}).get(version or "") or Evidence(name, version or "")
        snap = promotion.snapshot(ev, task, version)
        # The noise floor (shadow.noise): human ceiling, self-consistency, noisy fields.
        floor = (noise or {}).get(name) or empty_floor(task.autonomy.alpha)
        spent = (budgets or {}).get(name)  # shadow.budgets: the current version's decisions
        target = Level(state.level + 1) if state.level < Level.L4 else None
        gate = (
            task.autonomy.gate_for(target) if target and target <= task.autonomy.ceiling else None
        )
        next_gate = None
        if gate is not None and target is not None:
            # ``met``: everything the gate asks (what a promotion needs besides valid
            # evidence); ``agreement_met``: its bound, sample size and critical misses alone.
            # A below_human gate shows the threshold of the moment (shadow.noise.threshold).
            relative = gate
            gate = replace(gate, agreement=round(threshold(gate, floor.human_ceiling), 4))
            # After a drift demotion the lost level is judged on the evidence since.
            judged = promotion.gate_snapshot(state, snap, target, version, task)
            next_gate = {
                "level": str(gate.level),
                "agreement": gate.agreement,
                "min_samples": gate.min_samples,
                "max_critical": gate.max_critical,
                "evidence": gate.evidence,
                "per_segment": gate.per_segment,
                "segments_missing": list(
                    promotion_check(gate, task, (segments or {}).get(name, {}), snap.alpha).missing
                ),
                "agreement_met": promotion.gate_status(gate, judged).met,
                "agreements_needed": agreements_needed(judged.agree, judged.n, gate, snap.alpha),
                "since_drift_demotion": judged is not snap,
                "below_human": _below_human(relative, floor.human_ceiling),
                "budgets_met": judge(gate, task, spent).met,
                "budgets_missing": list(judge(gate, task, spent).missing),
            }
            next_gate["met"] = (
                next_gate["agreement_met"]
                and not next_gate["segments_missing"]
                and next_gate["budgets_met"]
            )
        out[name] = {
            "level": str(state.level),
            "agent_version": version,
            **promotion.agreement_fields(
                ev.n, ev.agree, snap.lower, snap.upper, ev.critical, ev.errors
            ),
            "acceptance": {
                h.value: accepted.get((name, version or ""), {}).get(
                    h.value, {"n": 0, "agree": 0, "agreement": None}
                )
                for h in (Handling.AGENT, Handling.ASSISTED)
            },
            "adjudicated": _adjudicated(snap, ev, (reviewers or {}).get((name, version or ""))),
            **floor.to_json(),
            "segments": _segments(
                task, (segments or {}).get(name, {}), (routed or {}).get(name, frozenset())
            ),
            "next_gate": next_gate,
            "budgets": budgets_block(
                task,
                gate or task.autonomy.gate_for(state.level),
                task.autonomy.gate_for(state.level),
                spent,
            ),
            "projected_daily_cost": projected_daily_cost(task, spent),
            "proposal": state.proposal.to_json() if state.proposal else None,
            "last_decision": state.decided.to_json() if state.decided else None,
            "hold": state.hold.to_json() if state.hold else None,
            "ceiling": str(task.autonomy.ceiling),
            "mode": task.autonomy.mode.value,
            **evidence_fields((health or {}).get(name), task.min_outcome_coverage),
        }
    return {"frozen": frozen, "task_types": out}


def _below_human(gate: Gate, ceiling: Bounded) -> dict[str, Any] | None:
    """``next_gate.below_human``: the margin and the human ceiling the threshold came from
    (``None`` for a fixed gate)."""
    if gate.below_human is None:
        return None
    return {
        "margin": gate.below_human,
        "ceiling_upper": round(ceiling.upper, 4),
        "ceiling_n": ceiling.n,
        "threshold": round(threshold(gate, ceiling), 4),
    }


def _adjudicated(
    snap: promotion.Snapshot, ev: Evidence, pair: tuple[int, int] | None
) -> dict[str, Any]:
    """The ``adjudicated`` block of one task type (docs/api.md)."""
    reviewed = promotion.reviewed_of(ev)
    found = adjudicated(ev.n, ev.agree, ev.disagree, reviewed, snap.alpha)
    body = found.to_json(reviewed)
    cases, alike = pair if pair is not None else (0, 0)
    body["reviewer_agreement"] = (
        {"cases": cases, "agree": alike, "rate": round(alike / cases, 4)} if cases else None
    )
    return body


def _segments(
    task: TaskPolicy, found: Mapping[str, Evidence], routed: frozenset[str]
) -> dict[str, Any]:
    """The ``segments`` block of one task type: each declared segment (with no evidence
    yet: zeros), then ``other`` when it has evidence."""
    alpha = task.autonomy.alpha
    names = [*task.segments, *([OTHER_SEGMENT] if OTHER_SEGMENT in found else [])]
    out: dict[str, Any] = {}
    for label in names:
        ev = found.get(label) or Evidence(task.name, "")
        out[label] = {
            **promotion.agreement_fields(
                ev.n,
                ev.agree,
                lower_bound(ev.agree, ev.n, alpha),
                upper_bound(ev.agree, ev.n, alpha),
                ev.critical,
                ev.errors,
            ),
            "routed_to_humans": label in routed,
        }
    return out
