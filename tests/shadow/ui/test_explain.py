"""What the overview says about a task type's next gate (shadow.ui.explain), and the charts
(shadow.ui.svg): pure functions over the agreement document's entries and numbers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from shadow.policy import parse_policy
from shadow.stats import lower_bound
from shadow.ui.explain import standing
from shadow.ui.svg import agreement_chart, chart_points, gauge

TASK = parse_policy(
    """
task_types:
  refund:
    compare: {fields: {action: {match: exact}}}
    autonomy:
      ceiling: L2
      mode: propose
      gates:
        L1: {agreement: 0.9, min_samples: 50}
        L2: {agreement: 0.95, min_samples: 300}
"""
).task_types["refund"]


def entry(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "level": "L0",
        "agent_version": "a@1",
        "n": 100,
        "agree": 95,
        "agreement": 0.95,
        "lower": 0.85,
        "upper": 0.99,
        "critical": 0,
        "errors": 0,
        "ceiling": "L2",
        "mode": "propose",
        "proposal": None,
        "partial_approval": None,
        "last_decision": None,
        "hold": None,
        "next_gate": {
            "level": "L1",
            "agreement": 0.9,
            "min_samples": 50,
            "max_critical": None,
            "met": False,
            "agreements_needed": 12,
            "since_drift_demotion": False,
        },
    }
    base.update(over)
    return base


def say(**over: Any) -> dict[str, Any]:
    return standing("refund", entry(**over), TASK, frozen=False, held_writes=0)


def test_a_gate_not_met_says_what_it_still_needs_in_numbers() -> None:
    view = say()
    assert view["headline"].startswith("to reach L1: lower bound ")
    assert f"{lower_bound(95, 100, 0.05):.4f} must reach 0.9" in view["headline"]
    assert "12 more agreeing comparisons in a row would meet it" in view["headline"]
    few = say(n=20, agree=20)
    assert "30 more comparisons (n=20 of 50)" in few["headline"]


def test_a_drift_hold_says_since_when_and_what_came_since() -> None:
    gate = {**entry()["next_gate"], "since_drift_demotion": True}
    view = say(
        n=2053,
        agree=1900,
        hold={"level": "L1", "n": 1824, "agree": 1700, "critical": 3},
        next_gate=gate,
    )
    assert view["details"][0] == (
        "held since the drift demotion from L1 at n=1824: 229 comparisons since, 0.87"
    )
    # The gate is judged on the 229 since, not on all 2053.
    assert f"lower bound {lower_bound(200, 229, 0.05):.4f}" in view["headline"]


def test_what_waits_for_a_human() -> None:
    met = {**entry()["next_gate"], "met": True, "agreements_needed": 0}
    proposal = {"id": "p-1", "from_level": "L0", "to_level": "L1", "evidence": {"n": 100}}
    assert "waits for an approver" in say(next_gate=met, proposal=proposal)["headline"]
    partial = {"by": "ann", "from": "L0", "to": "L1"}
    view = say(next_gate=met, proposal=proposal, partial_approval=partial)
    assert "approved by ann, needs a second approver" in view["headline"]
    assert "promoted at the next evaluation" in say(next_gate=met, mode="auto")["headline"]
    rejected = {"verdict": "rejected", "actor": "bob", "n": 120, "to_level": "L1"}
    view = say(next_gate=met, last_decision=rejected)
    assert "rejected by bob at n=120: proposed again at n ≥ 170" in view["details"][0]


def test_frozen_and_at_the_ceiling() -> None:
    view = standing("refund", entry(), TASK, frozen=True, held_writes=2)
    assert view["headline"].startswith("frozen")
    assert view["held_writes"] == 2
    assert "at its ceiling (L2, ceiling L2)" in say(level="L2", next_gate=None)["headline"]


def test_the_chart_is_escaped_described_and_well_formed() -> None:
    points = chart_points([(n, n - n // 10) for n in range(10, 310, 10)], 0.05)
    svg = agreement_chart(
        points, [("L1", 0.9), ("L2", 0.9), ("L3", 0.95)], label="<b>&x", ident="c1"
    )
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "c1-t c1-d"
    assert "&lt;b&gt;&amp;x" in svg
    assert "<b>" not in svg
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")] or [
        t.text for t in root.iter("text")
    ]
    assert "L1\u2013L2 90%" in texts
    assert "L3 95%" in texts
    assert "style=" not in svg
    ET.fromstring(agreement_chart([], [], label="empty"))
    one = agreement_chart(chart_points([(5, 5)], 0.05), [], label="one")
    ET.fromstring(one)


def test_the_gauge_without_evidence() -> None:
    ET.fromstring(gauge(None, None, None, 0.9, label="x"))
    svg = gauge(0.91, 0.99, 0.95, None, label="<x>")
    assert "no further gate" in svg
    assert "&lt;x&gt;" in svg
    ET.fromstring(svg)
