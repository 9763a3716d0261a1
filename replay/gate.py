"""Gates and the regression test. Pure: no I/O, no clock.

Gates
    :func:`gate_entry` says which rung of the policy's autonomy ladder a task type's replay
    evidence would clear, with the live promoter's own rule
    (:func:`shadow.promotion.gate_status`: ``n >= min_samples``, anytime-valid lower bound
    ``>= agreement``, critical misses within ``max_critical``), level by level from the
    policy's ``start`` up to its ``ceiling``. ``cleared`` is the highest level whose gate
    and every gate below it are met.
Regression test (``--fail-if-worse``)
    Per task type in both reports, a one-sided **pooled two-proportion z-test** of
    H0: candidate agreement >= baseline agreement, against H1: candidate is lower::

        p = (agree_c + agree_b) / (n_c + n_b)
        z = (agree_c/n_c - agree_b/n_b) / sqrt(p (1 - p) (1/n_c + 1/n_b))
        p_worse = Phi(z)

    The candidate is *significantly worse* on a task type when ``p_worse < alpha / m``,
    ``m`` being the number of task types compared (Bonferroni), so the chance that a CI
    run fails on some task type although none got worse stays under ``alpha``. The
    replay is a fixed sample analysed once, so a fixed-sample test is valid here (the
    anytime-valid bounds are for the live promoter, which looks after every comparison).
    Both reports scoring the same events makes their outcomes positively correlated,
    which makes this unpaired test conservative, never anti-conservative. With ``p`` of
    0 or 1 (both perfect, or both always wrong) there is no difference to test. A task
    type needs at least 1 comparison on each side to be compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shadow.model import Level
from shadow.policy import TaskPolicy
from shadow.promotion import Snapshot, gate_status

__all__ = ["compare_reports", "compare_task", "gate_entry", "two_proportion_z"]

TEST_NAME = "one-sided pooled two-proportion z-test, Bonferroni over task types"


def gate_entry(task: TaskPolicy, snap: Snapshot) -> dict[str, Any]:
    auto = task.autonomy
    levels: dict[str, Any] = {}
    cleared = auto.start
    blocked = False
    for level in Level:
        if level <= auto.start or level > auto.ceiling:
            continue
        gate = auto.gate_for(level)
        if gate is None:
            blocked = True
            continue
        status = gate_status(gate, snap)
        levels[str(level)] = {
            "agreement": gate.agreement,
            "min_samples": gate.min_samples,
            "max_critical": gate.max_critical,
            "met": status.met,
            "missing": status.missing,
        }
        if status.met and not blocked:
            cleared = level
        else:
            blocked = True
    return {
        "start": str(auto.start),
        "ceiling": str(auto.ceiling),
        "cleared": str(cleared),
        "alpha": auto.alpha,
        "levels": levels,
    }


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def two_proportion_z(agree_c: int, n_c: int, agree_b: int, n_b: int) -> tuple[float, float]:
    """``(z, p_worse)`` for candidate vs baseline; ``(0.0, 0.5)`` when untestable."""
    if n_c <= 0 or n_b <= 0:
        return 0.0, 0.5
    pooled = (agree_c + agree_b) / (n_c + n_b)
    var = pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_b)
    if var <= 0.0:
        return 0.0, 0.5
    z = (agree_c / n_c - agree_b / n_b) / math.sqrt(var)
    return z, _phi(z)


def _rate(entry: Mapping[str, Any], key: str) -> float | None:
    n = int(entry.get("n") or 0)
    return int(entry.get(key) or 0) / n if n else None


def compare_task(
    cand: Mapping[str, Any], base: Mapping[str, Any], *, alpha: float, m: int
) -> dict[str, Any]:
    """Deltas and the significance statement for one task type (see the module doc)."""
    n_c, a_c = int(cand["n"]), int(cand["agree"])
    n_b, a_b = int(base["n"]), int(base["agree"])
    z, p_worse = two_proportion_z(a_c, n_c, a_b, n_b)
    p_better = 1.0 - p_worse if (n_c and n_b) else 0.5
    level = alpha / max(m, 1)
    testable = n_c > 0 and n_b > 0
    worse = testable and p_worse < level
    better = testable and p_better < level
    ag_c = a_c / n_c if n_c else None
    ag_b = a_b / n_b if n_b else None
    delta = None if ag_c is None or ag_b is None else ag_c - ag_b
    if not testable:
        statement = "not compared: no comparisons on one side"
    else:
        assert delta is not None
        verdict = (
            "significantly worse"
            if worse
            else "significantly better"
            if better
            else "no significant difference"
        )
        p_shown = p_worse if delta <= 0 else p_better
        statement = (
            f"agreement {ag_c:.4f} vs {ag_b:.4f} ({delta * 100:+.2f} pp): {verdict} "
            f"(z = {z:.2f}, one-sided p = {p_shown:.4g}, level {alpha:g}/{m} = {level:.4g})"
        )

    def diff(key: str) -> float | None:
        c, b = _rate(cand, key), _rate(base, key)
        return None if c is None or b is None else round(c - b, 6)

    lat_c = (cand.get("latency_ms") or {}).get("p95")
    lat_b = (base.get("latency_ms") or {}).get("p95")
    cost_c = (cand.get("usage") or {}).get("cost_usd")
    cost_b = (base.get("usage") or {}).get("cost_usd")
    return {
        "n": n_b,
        "agree": a_b,
        "agreement": None if ag_b is None else round(ag_b, 4),
        "lower": base.get("lower"),
        "upper": base.get("upper"),
        "critical": base.get("critical"),
        "errors": base.get("errors"),
        "agent_version": base.get("agent_version"),
        "delta": {
            "agreement": None if delta is None else round(delta, 6),
            "critical_rate": diff("critical"),
            "error_rate": diff("errors"),
            "latency_p95_ms": None if lat_c is None or lat_b is None else round(lat_c - lat_b, 3),
            "cost_usd": None if cost_c is None or cost_b is None else round(cost_c - cost_b, 6),
        },
        "z": round(z, 4),
        "p_worse": p_worse,
        "significantly_worse": worse,
        "significantly_better": better,
        "statement": statement,
    }


def compare_reports(
    candidate: Mapping[str, Any], baseline: Mapping[str, Any], *, alpha: float
) -> dict[str, Any]:
    """Fill each candidate task type's ``baseline`` entry; return the ``regression`` block."""
    cand_tasks: Mapping[str, Any] = candidate["task_types"]
    base_tasks: Mapping[str, Any] = baseline["task_types"]
    shared = [t for t in cand_tasks if t in base_tasks]
    m = max(len(shared), 1)
    worse: list[str] = []
    for name in shared:
        entry = compare_task(cand_tasks[name], base_tasks[name], alpha=alpha, m=m)
        cand_tasks[name]["baseline"] = entry
        if entry["significantly_worse"]:
            worse.append(name)
    return {
        "test": TEST_NAME,
        "alpha": alpha,
        "compared": shared,
        "only_in_baseline": sorted(t for t in base_tasks if t not in cand_tasks),
        "only_in_candidate": sorted(t for t in cand_tasks if t not in base_tasks),
        "worse": worse,
        "regression": bool(worse),
    }
