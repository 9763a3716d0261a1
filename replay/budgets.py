"""The budget gates of a replay: is the candidate clearly over a budget its policy states?
Pure: no I/O, no clock.

Which budgets
    For each task type, the strictest value of each gate budget (``max_cost_usd_per_decision``,
    ``max_latency_ms_p95``, ``max_error_rate``) over the gates of the levels it can climb
    (above ``start``, up to ``ceiling``: the rungs :func:`replay.gate.gate_entry` reports). A
    replay qualifies a version for the whole ladder, and a version over the strictest budget
    would be held at the rung below the gate that states it, so that is the one to know about
    before it ships. ``levels`` in the report names the gate each value came from.

What is judged
    Every answer the candidate gave in the replay (evidence and acceptance alike: cost,
    latency and failure describe the answer, not the human), as the live budgets count every
    decision of the agent version. Latency is what the replay measured (its ``--concurrency``
    and ``--rate``, the agent's load then), not the live latency.

The tests (fixed sample, analysed once), each at level ``alpha / m``, ``m`` = the (task type,
budget) tests run over the whole report (Bonferroni), so the chance that any budget fails a
candidate truly within all of them is at most ``alpha``. Bounds: :mod:`replay.bounds`.

``error_rate`` <= E
    ``k`` failed answers of ``n``: exceeded when the exact (Clopper-Pearson) lower bound of the
    failure rate is above E, i.e. the exact one-sided binomial test of ``rate <= E``.
``latency_ms_p95`` <= B
    The 95th percentile is within B exactly when at most 5% of the answers take longer than
    B, so the test is on the share over B (an answer with no latency counts as over: fail
    closed): exceeded when its exact lower bound is above 0.05. Distribution-free.
``cost_usd_per_decision`` <= C
    Each cost lies in ``[0, M]``, ``M`` the task type's ``cost_ceiling_usd`` or, without one,
    10 x the largest cost budget of its gates (the live bound's range, shadow.budgets).
    Exceeded when the empirical-Bernstein lower bound (Maurer and Pontil 2009, Theorem 4) of
    the mean cost is above C. The costs are capped at ``M`` for the bound (capping only lowers
    the mean, so the lower bound still holds), and a cost above ``M`` fails on its own: the
    policy says no decision costs that much. An answer whose cost is unknown (tokens without
    ``cost_usd`` and no price: ``usage.cost_source == "unknown"``) fails too, never a silent 0.

Each exceeded budget is one failure (``gate`` ``budget``, with the budget's name) with a reason
line naming the budget and by how much; :func:`replay.gate.compare_reports` adds them to
``regression.failures``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from replay.bounds import bernstein_width, clopper_pearson
from replay.cases import cost_figures
from replay.report import percentiles
from shadow.model import Level
from shadow.policy import TaskPolicy

if TYPE_CHECKING:
    from replay.report import TaskStats

__all__ = [
    "BUDGETS",
    "CEILING_FACTOR",
    "P95_SHARE",
    "TEST_NAME",
    "TaskBudgets",
    "judge_budgets",
    "task_budgets",
]

COST, LATENCY, ERRORS = "cost_usd_per_decision", "latency_ms_p95", "error_rate"
# Report name -> the gate key that states it.
BUDGETS: dict[str, str] = {
    COST: "max_cost_usd_per_decision",
    LATENCY: "max_latency_ms_p95",
    ERRORS: "max_error_rate",
}
P95_SHARE = 0.05  # a p95 allows this share of answers above it
CEILING_FACTOR = 10.0  # M without cost_ceiling_usd: this times the largest cost budget
TEST_NAME = (
    "fixed-sample one-sided bounds, Bonferroni over (task type, budget): error rate and the "
    "share of latencies over the p95 budget exact binomial (Clopper-Pearson), mean cost "
    "empirical Bernstein (Maurer-Pontil) on costs in [0, M]"
)


@dataclass(frozen=True, slots=True)
class TaskBudgets:
    """The budgets a task type's replay is judged on (see the module doc)."""

    values: Mapping[str, float]  # report name -> the strictest budget
    levels: Mapping[str, str]  # report name -> the level whose gate states it
    cost_range: float | None  # M: costs lie in [0, M]; None without a cost budget or ceiling
    cost_range_source: str | None  # "cost_ceiling_usd" or "10 x the largest cost budget"


def task_budgets(task: TaskPolicy) -> TaskBudgets | None:
    """The strictest stated budgets over the rungs ``task`` can climb; ``None`` when it
    states no budget and no cost ceiling."""
    auto = task.autonomy
    values: dict[str, float] = {}
    levels: dict[str, str] = {}
    for level in Level:
        gate = auto.gate_for(level)
        if level <= auto.start or level > auto.ceiling or gate is None:
            continue
        for name, key in BUDGETS.items():
            value = getattr(gate, key)
            if value is not None and (name not in values or value < values[name]):
                values[name], levels[name] = float(value), str(level)
    # The range of the live cost bound (shadow.budgets): the ceiling, else 10 x the largest
    # cost budget of every gate.
    ceiling = task.cost_ceiling_usd
    stated = [
        g.max_cost_usd_per_decision
        for g in auto.gates.values()
        if g.max_cost_usd_per_decision is not None
    ]
    if ceiling is not None:
        cost_range, source = float(ceiling), "cost_ceiling_usd"
    elif stated:
        cost_range, source = CEILING_FACTOR * max(stated), "10 x the largest cost budget"
    else:
        cost_range, source = None, None
    if not values and cost_range is None:
        return None
    ordered = {name: values[name] for name in BUDGETS if name in values}
    return TaskBudgets(ordered, {n: levels[n] for n in ordered}, cost_range, source)


def _pct(value: float, limit: float) -> str:
    return f"+{(value / limit - 1.0) * 100.0:.0f}%" if limit > 0 else "+inf"


def _level_text(alpha: float, m: int, level: float) -> str:
    return f"level {alpha:g}/{m} = {level:.4g}"


def _errors(limit: float, stats: TaskStats, a: float) -> dict[str, Any]:
    n, k = stats.compared_cases, stats.answer_errors
    low, up = clopper_pearson(k, n, a)
    exceeded = low > limit
    rate = k / n
    head = f"error budget: {k} of {n} answers failed (rate {rate:.4f})"
    statement = (
        f"{head}, exact lower bound {low:.4f} > {limit:g} ({_pct(low, limit)})"
        if exceeded
        else f"{head}, exact lower bound {low:.4f} within {limit:g} (upper bound {up:.4f})"
    )
    return {
        "budget": limit,
        "n": n,
        "errors": k,
        "rate": round(rate, 6),
        "lower": round(low, 6),
        "upper": round(up, 6),
        "exceeded": exceeded,
        "statement": statement,
    }


def _latency(limit: float, stats: TaskStats, a: float) -> dict[str, Any]:
    n = stats.compared_cases
    measured = len(stats.latencies)
    missing = n - measured
    over = missing + sum(1 for x in stats.latencies if x > limit)
    low, up = clopper_pearson(over, n, a)
    exceeded = low > P95_SHARE
    p95 = percentiles(stats.latencies)["p95"]
    seen = "" if p95 is None else f"; observed p95 {p95:g} ms ({_pct(p95, limit)} of it)"
    if p95 is not None and p95 <= limit:
        seen = f"; observed p95 {p95:g} ms"
    unmeasured = f", {missing} with no latency counted as over" if missing else ""
    head = f"latency budget: {over} of {n} answers over {limit:g} ms{unmeasured}"
    statement = (
        f"{head}, exact lower bound {low:.4f} of the share over > {P95_SHARE} "
        f"({_pct(low, P95_SHARE)}){seen}"
        if exceeded
        else f"{head}, exact lower bound {low:.4f} of the share over within {P95_SHARE}{seen}"
    )
    return {
        "budget": limit,
        "n": n,
        "over": over,
        "missing": missing,
        "share_over": round(over / n, 6),
        "lower": round(low, 6),
        "upper": round(up, 6),
        "p95": p95,
        "exceeded": exceeded,
        "statement": statement,
    }


def _cost(limit: float, ceiling: float, stats: TaskStats, a: float) -> dict[str, Any]:
    costs = stats.case_costs.costs
    known = [x for x in costs if not math.isnan(x)]
    unknown = len(costs) - len(known)
    fig = cost_figures(known)
    n, mean = int(fig["n"]), float(fig["mean"])
    above = sum(1 for x in known if x > ceiling)
    capped = cost_figures([min(x, ceiling) for x in known]) if above else fig
    width = bernstein_width(n, float(capped["variance"]), ceiling, a)
    low = max(float(capped["mean"]) - width, 0.0)
    up = min(mean + width, ceiling) if not above else mean + width
    reasons = []
    if unknown:
        reasons.append(
            f"cost budget: cost unknown for {unknown} of {len(costs)} answers (tokens without "
            "cost_usd and no price for their model); a cost budget needs every answer's cost"
        )
    if above:
        reasons.append(
            f"cost budget: {above} of {n} answers cost more than the ceiling ${ceiling:.4f} "
            f"(largest ${float(fig['max']):.4f}, {_pct(float(fig['max']), ceiling)}); the policy "
            "says no decision costs that much"
        )
    over_budget = n > 0 and low > limit
    if over_budget:
        reasons.append(
            f"cost budget: mean ${mean:.4f} per decision over {n} answers, empirical-Bernstein "
            f"lower bound ${low:.4f} > ${limit:.4f} ({_pct(low, limit)})"
        )
    head = f"cost budget: mean ${mean:.4f} per decision over {n} answers"
    statement = (
        "; ".join(reasons)
        if reasons
        else f"{head}, empirical-Bernstein lower bound ${low:.4f} within ${limit:.4f}"
        + ("" if math.isinf(up) else f" (upper bound ${up:.4f})")
    )
    return {
        "budget": limit,
        "ceiling": ceiling,
        "n": n,
        "unknown": unknown,
        "mean": round(mean, 6),
        "max": round(float(fig["max"]), 6),
        "above_ceiling": above,
        "lower": round(low, 6),
        "upper": None if math.isinf(up) else round(up, 6),
        "exceeded": bool(reasons),
        "statement": statement,
    }


def judge_budgets(
    tasks: Mapping[str, TaskStats], entries: Mapping[str, dict[str, Any]], *, alpha: float
) -> dict[str, Any]:
    """Set each task type entry's ``budgets`` (``None`` when its policy states none) and
    return the report's ``budgets`` block with every failure (see the module doc)."""
    plans = {name: task_budgets(stats.task) for name, stats in tasks.items()}
    runs = [
        (name, budget)
        for name, plan in plans.items()
        if plan is not None and tasks[name].compared_cases > 0
        for budget in plan.values
    ]
    m = len(runs)
    a = alpha / max(m, 1)
    failures: list[dict[str, Any]] = []
    for name, plan in plans.items():
        if plan is None:
            entries[name]["budgets"] = None
            continue
        stats = tasks[name]
        judged: dict[str, Any] = dict.fromkeys(BUDGETS)
        if stats.compared_cases > 0:
            for budget, limit in plan.values.items():
                if budget == ERRORS:
                    judged[budget] = _errors(limit, stats, a)
                elif budget == LATENCY:
                    judged[budget] = _latency(limit, stats, a)
                else:
                    assert plan.cost_range is not None  # a cost budget sets the range
                    judged[budget] = _cost(limit, plan.cost_range, stats, a)
                if judged[budget]["exceeded"]:
                    reason = f"{judged[budget]['statement']} ({_level_text(alpha, m, a)})"
                    judged[budget]["statement"] = reason
                    failures.append(
                        {
                            "task_type": name,
                            "gate": "budget",
                            "budget": budget,
                            "segment": None,
                            "reason": f"{name}: {reason}",
                        }
                    )
        entries[name]["budgets"] = {
            "levels": dict(plan.levels),
            "cost_range_usd": plan.cost_range,
            "cost_range_source": plan.cost_range_source,
            "answers": stats.compared_cases,
            **judged,
        }
    return {
        "test": TEST_NAME,
        "alpha": alpha,
        "tests": m,
        "level": a if m else None,
        "failures": failures,
    }
