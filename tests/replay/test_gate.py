"""The regression test against an independent reference (scipy), the paired and unpaired
gates on hand-made reports, the gate ladder, the rate limiter (one limit shared by several
limiters), and the report's tallies (percentiles, confusion caps, example order)."""

from __future__ import annotations

import math
import multiprocessing
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


async def test_limiters_sharing_a_slot_draw_from_one_limit() -> None:
    """The workers of a sharded run share the next free start time: 8 calls asked at the
    same instant by two workers start 1/rate apart, as from one limiter, never together."""
    now = [100.0]
    starts: list[tuple[str, float]] = []

    def limiter(name: str, shared: Any) -> Any:
        async def sleep(s: float) -> None:
            starts[-1] = (name, now[0] + s)  # the clock does not move: all asked at once

        lim = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep, shared=shared)

        async def acquire() -> None:
            starts.append((name, now[0]))
            await lim.acquire()

        return acquire

    slot = multiprocessing.get_context("spawn").Value("d", 0.0)
    a, b = limiter("a", slot), limiter("b", slot)
    for acquire in (a, b, a, b, b, a, a, b):
        await acquire()
    assert [t for _, t in starts] == [100.0 + k * 0.25 for k in range(8)]
    assert [w for w, _ in starts] == list("ababbaab")
    assert slot.value == 102.0  # the next free start
    # Without the shared slot each worker would have its own limit: two calls at 100.0.
    starts.clear()
    a, b = limiter("a", None), limiter("b", None)
    for acquire in (a, b):
        await acquire()
    assert [t for _, t in starts] == [100.0, 100.0]


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


def codes(pattern: str, start: int = 0) -> dict[str, str]:
    """``{"e-0000": pattern[0], ...}``: a report's per-case results."""
    return {f"e-{start + i:04d}": code for i, code in enumerate(pattern)}


def test_paired_only_when_both_reports_carry_cases() -> None:
    base_cases = codes("a" * 90 + "d" * 10)
    cand_cases = codes("d" * 5 + "a" * 85 + "d" * 10)  # 5 right -> wrong
    cand = {"n": 100, "agree": 85, "critical": 0, "cases": cand_cases}
    base = {"n": 100, "agree": 90, "critical": 0, "cases": base_cases}
    paired = compare_task(cand, base, alpha=0.05, m=1)
    assert paired["test"] == "paired"
    assert paired["paired"]["worse"] == 5
    assert paired["paired"]["p_worse"] == 1 / 64
    assert paired["significantly_worse"]
    # The unpaired figures are there either way: 85/100 vs 90/100 is p ~ 0.14.
    _, p = two_proportion_z(85, 100, 90, 100)
    assert paired["p_worse"] == p
    assert p > 0.05
    old = compare_task(cand, {k: v for k, v in base.items() if k != "cases"}, alpha=0.05, m=1)
    assert old["test"] == "unpaired"
    assert old["paired"] is None
    assert not old["significantly_worse"]
    assert old["statement"].endswith(
        f"(z = {old['z']:.2f}, one-sided p = {p:.4g}, level 0.05/1 = 0.05)"
    )


def test_reports_with_no_case_in_common_are_compared_unpaired() -> None:
    cand = {"n": 3, "agree": 3, "critical": 0, "cases": codes("aaa")}
    base = {"n": 3, "agree": 3, "critical": 0, "cases": codes("aaa", start=10)}
    entry = compare_task(cand, base, alpha=0.05, m=1)
    assert entry["test"] == "unpaired"
    assert entry["paired"]["pairs"] == 0
    assert entry["paired"]["only_in_candidate"]["n"] == 3
    assert entry["paired"]["only_in_baseline"]["first"] == ["e-0010", "e-0011", "e-0012"]


def test_critical_miss_rate_unpaired_against_a_reference() -> None:
    cand = {"n": 200, "agree": 180, "critical": 10}
    base = {"n": 200, "agree": 180, "critical": 1}
    crit = compare_task(cand, base, alpha=0.05, m=2)["critical_miss"]
    pooled = 11 / 400
    ref_z = (10 / 200 - 1 / 200) / math.sqrt(pooled * (1 - pooled) * (2 / 200))
    assert crit["test"] == "unpaired"
    assert crit["z"] == pytest.approx(ref_z, rel=1e-4)
    assert crit["p_worse"] == pytest.approx(float(sps.norm.sf(ref_z)), rel=1e-9)
    assert crit["significantly_worse"]  # p ~ 0.003 < 0.05/2
    assert crit["statement"].startswith("critical-miss rate 0.0500 vs 0.0050 (+4.50 pp)")
    # No critical count on the baseline (a hand-made report): not compared, never failing.
    none = compare_task(cand, {"n": 200, "agree": 180}, alpha=0.05, m=1)["critical_miss"]
    assert none["test"] is None
    assert not none["significantly_worse"]


def test_segments_unpaired_bonferroni_across_every_task_type() -> None:
    def entry(n: int, agree: int, segments: dict[str, tuple[int, int]]) -> dict[str, Any]:
        return {
            "n": n,
            "agree": agree,
            "critical": 0,
            "segments": {s: {"n": k, "agree": a} for s, (k, a) in segments.items()},
        }

    cand = {
        "task_types": {
            "a": entry(200, 160, {"eu": (100, 70), "us": (100, 90)}),
            "b": entry(100, 90, {"eu": (60, 54), "tiny": (10, 0)}),
        }
    }
    base = {
        "task_types": {
            "a": entry(200, 170, {"eu": (100, 88), "us": (100, 82)}),
            "b": entry(100, 90, {"eu": (60, 54), "tiny": (10, 10)}),
        }
    }
    reg = compare_reports(cand, base, alpha=0.05)
    # Tested: a/eu, a/us, b/eu (b/tiny has 10 cases < 30): level 0.05/3.
    assert reg["segments"] == {"min_cases": 30, "tested": 3, "level": 0.05 / 3}
    seg_a = cand["task_types"]["a"]["baseline"]["segments"]
    _, p_eu = two_proportion_z(70, 100, 88, 100)
    assert seg_a["eu"]["p_worse"] == p_eu < 0.05 / 3
    assert seg_a["eu"]["significantly_worse"]
    assert not seg_a["us"]["significantly_worse"]
    tiny = cand["task_types"]["b"]["baseline"]["segments"]["tiny"]
    assert not tiny["tested"]
    assert tiny["statement"] == "not tested: 10 and 10 cases, fewer than 30"
    assert [(f["task_type"], f["gate"], f["segment"]) for f in reg["failures"]] == [
        ("a", "segment", "eu")
    ]
    assert reg["failures"][0]["reason"].startswith(
        "a segment eu: agreement 0.7000 vs 0.8800 (-18.00 pp): significantly worse (unpaired "
        "on 100 and 100 cases"
    )
    assert reg["worse"] == ["a"]
    assert reg["regression"]
