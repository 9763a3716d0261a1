"""The regression test against an independent reference (scipy), the gate ladder, the rate
limiter, and the report's tallies (percentiles, confusion caps, example order)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from scipy import stats as sps

from replay.cache import RateLimiter
from replay.gate import compare_reports, compare_task, gate_entry, two_proportion_z
from replay.model import Case, most_common_version
from replay.report import TaskStats, percentiles
from shadow.diff import Differ
from shadow.joiner import compare
from shadow.model import Evidence, Outcome, ShadowDecision, WorkEvent
from shadow.policy import parse_policy
from shadow.promotion import snapshot
from shadow.store import JoinRow
from tests.replay import data


@pytest.mark.parametrize(
    ("a_c", "n_c", "a_b", "n_b"),
    [(48, 60, 60, 60), (90, 100, 95, 100), (950, 1000, 940, 1000), (3, 10, 9, 12)],
)
def test_z_test_matches_a_reference_computation(a_c: int, n_c: int, a_b: int, n_b: int) -> None:
    z, p_worse = two_proportion_z(a_c, n_c, a_b, n_b)
    pooled = (a_c + a_b) / (n_c + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
    ref_z = (a_c / n_c - a_b / n_b) / se
    assert z == pytest.approx(ref_z, rel=1e-12)
    assert p_worse == pytest.approx(float(sps.norm.cdf(ref_z)), rel=1e-9, abs=1e-300)


def test_untestable_cases_never_fail() -> None:
    assert two_proportion_z(10, 10, 20, 20) == (0.0, 0.5)  # both perfect
    assert two_proportion_z(0, 10, 0, 20) == (0.0, 0.5)
    assert two_proportion_z(0, 0, 5, 10) == (0.0, 0.5)
    entry = compare_task({"n": 0, "agree": 0}, {"n": 10, "agree": 10}, alpha=0.05, m=1)
    assert not entry["significantly_worse"]
    assert entry["statement"].startswith("not compared")


def test_bonferroni_over_task_types() -> None:
    # p_worse for 90/100 vs 96/100 is about 0.044: worse alone, not worse among 3 task types.
    cand = {"n": 100, "agree": 90}
    base = {"n": 100, "agree": 96}
    _, p = two_proportion_z(90, 100, 96, 100)
    assert 0.05 / 3 < p < 0.05
    assert compare_task(cand, base, alpha=0.05, m=1)["significantly_worse"]
    assert not compare_task(cand, base, alpha=0.05, m=3)["significantly_worse"]
    worse = {"n": 100, "agree": 85}
    doc: dict[str, Any] = {"task_types": {"a": worse, "b": dict(cand), "c": dict(base)}}
    reg = compare_reports(doc, {"task_types": {"a": base, "b": base, "d": base}}, alpha=0.05)
    # a (85 vs 96) is worse at 0.05/2; b (90 vs 96) is not once two task types are compared.
    assert reg["compared"] == ["a", "b"]
    assert reg["worse"] == ["a"]
    assert reg["regression"]
    assert reg["only_in_baseline"] == ["d"]
    assert reg["only_in_candidate"] == ["c"]
    assert doc["task_types"]["b"]["baseline"]["delta"]["agreement"] == -0.06
    assert "c" not in doc["task_types"] or "baseline" not in doc["task_types"]["c"]


def test_gate_ladder_stops_at_the_first_unmet_gate() -> None:
    policy = parse_policy(data.POLICY)
    task = policy.task_types["refund"]
    snap = snapshot(Evidence("refund", "v", 60, 48, 10, 0), task, "v")
    entry = gate_entry(task, snap)
    assert entry["cleared"] == "L1"
    assert list(entry["levels"]) == ["L1", "L2"]
    assert entry["levels"]["L2"]["missing"].startswith("lower bound")
    low = gate_entry(task, snapshot(Evidence("refund", "v", 10, 10, 0, 0), task, "v"))
    assert low["cleared"] == "L0"
    assert low["levels"]["L1"]["missing"] == "n 10 < min_samples 20"


async def test_rate_limiter_spaces_call_starts() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        await limiter.acquire()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    now[0] += 10.0  # idle time is not saved up as a burst
    await limiter.acquire()
    await limiter.acquire()
    assert slept[-1] == 0.25
    assert len(slept) == 5
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, clock=lambda: 0.0)


def test_percentiles_nearest_rank() -> None:
    assert percentiles([float(x) for x in range(1, 101)]) == {
        "count": 100,
        "p50": 50.0,
        "p90": 90.0,
        "p95": 95.0,
        "p99": 99.0,
        "max": 100.0,
    }
    assert percentiles([])["p50"] is None
    assert percentiles([7.0])["p99"] == 7.0


def scored(stats: TaskStats, i: int, agent: dict[str, Any], human: dict[str, Any]) -> None:
    event = WorkEvent(f"e-{i:04d}", stats.name, {"i": i})
    case = Case(event, Outcome(event.event_id, human))
    d = ShadowDecision(event.event_id, "v", agent, latency_ms=float(i))
    c = compare(JoinRow(stats.name, d, case.outcome, ""), Differ(stats.task.compare))
    stats.add(case, event.payload, d, c)


def test_confusion_folds_rare_labels_and_drops_high_cardinality_fields() -> None:
    policy = parse_policy(
        "task_types:\n  t:\n    compare:\n      fields:\n"
        "        label: {match: exact}\n        note: {match: text}\n"
    )
    stats = TaskStats("t", policy.task_types["t"], examples=2)
    for i in range(60):
        label = f"L{i % 14:02d}" if i < 56 else None
        scored(stats, 59 - i, {"label": label, "note": f"n{i}"}, {"label": label, "note": f"N{i}"})
    entry = stats.entry()
    cm = entry["confusion"]["label"]
    assert len(cm["labels"]) == 13
    assert cm["labels"][-1] == "(other)"
    assert sum(map(sum, cm["matrix"])) == 60
    assert "note" not in entry["confusion"]  # 60 distinct values: not categorical
    assert entry["n"] == entry["agree"] == 60  # text match: n0 equals N0 after normalising


def test_examples_are_the_first_by_event_id_whatever_the_order() -> None:
    policy = parse_policy(data.POLICY)
    stats = TaskStats("refund", policy.task_types["refund"], examples=3)
    for i in (9, 3, 7, 1, 5, 2):
        scored(stats, i, {"action": "approve"}, {"action": "deny"})
    assert [e["event_id"] for e in stats.entry()["critical_examples"]] == [
        "e-0001",
        "e-0002",
        "e-0003",
    ]


def test_the_most_common_version_breaks_ties_by_name_not_by_arrival() -> None:
    """Shards merge their counts in any order; the report must name the version a single
    process names (earlier code kept the first seen in one place, the largest in another)."""
    assert most_common_version({}) is None
    assert most_common_version({"b@2": 3, "a@1": 1}) == "b@2"
    assert most_common_version({"b@2": 2, "a@1": 2}) == "a@1"
    assert most_common_version({"a@1": 2, "b@2": 2}) == "a@1"
    task = parse_policy(data.POLICY).task_types["refund"]
    names = {}
    for order in (["b@2", "a@1"], ["a@1", "b@2"]):
        stats = TaskStats("refund", task)
        for version in order:
            stats.versions[version] += 2
        names[tuple(order)] = (stats.agent_version, stats.entry()["agent_version"])
    assert set(names.values()) == {("a@1", "a@1")}
