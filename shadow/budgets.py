"""Budgets as guardrails (docs/statistics.md, "Budgets"): an agent that agrees but costs four
times what a human does, or answers in two minutes, is not ready either. Pure functions over
the aggregates of one task type's current agent version's decisions
(:class:`BudgetEvidence`, from :meth:`shadow.store.Store.budget_evidence`); the ladder
(:mod:`shadow.promotion`) calls them for a gate that states a budget.

A gate may state ``max_cost_usd_per_decision`` (mean cost), ``max_latency_ms_p95`` and
``max_error_rate``. Each stated budget is judged at its own share of the task type's alpha
(``alpha / k``, ``k`` the budgets the gate states), with bounds valid under continuous
monitoring (the promoter looks after every comparison), so the chance that a promotion
passes any budget that is truly not met is at most alpha:

- **error rate** <= E: met when the anytime-valid upper bound of the share of decisions that
  failed (:func:`shadow.stats.upper_bound`) is <= E.
- **p95 latency** <= B: the 95th percentile is within B exactly when at most 5% of the
  decisions take longer than B, so the bound is on the share of decisions slower than B (or
  with no latency recorded: fail closed): met when its upper bound is <= 0.05. Nothing is
  assumed about the latency distribution.
- **mean cost** <= C: every cost lies in ``[0, M]`` (``M`` the task type's
  ``cost_ceiling_usd``, by default 10 x the largest cost budget of its gates), so each cost
  is sub-Gaussian with ``sigma = M / 2`` (Hoeffding's lemma) and the centred sum is bounded
  by the normal-mixture boundary of Howard et al. (2021, "Time-uniform, nonparametric,
  nonasymptotic confidence sequences", eq. (14) for the two-sided mixture, used one-sided):
  ``u(V) = sqrt(2 (V + rho) log(sqrt((V + rho) / rho) / a))`` with ``V = n sigma^2`` and
  ``rho = 100 sigma^2`` (tightest near a thousand decisions); the mean is within
  ``u(V) / n`` of the observed mean at every n at once with probability >= 1 - a. Met
  when the upper bound is <= C. A decision that cost more than ``M`` breaks the bound's
  premise: the budget is then not met, and says why. A decision whose cost is unknown (tokens
  without ``cost_usd`` and no price for its model, or no usage at all) makes the cost budget
  unmeetable, never a silent 0.

A budget is **clearly exceeded** when the lower bound (the same share of alpha) is above it:
for the current level's gate that demotes (``autonomy.budgets: demote``, the default: to the
highest level whose gate's budgets are not clearly exceeded) or only alerts (``alert``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shadow.model import Level, Usage
from shadow.policy import Gate, Price, TaskPolicy
from shadow.stats import lower_bound, upper_bound

__all__ = [
    "BUDGET_NAMES",
    "P95_SHARE",
    "RHO_SAMPLES",
    "BudgetEvidence",
    "BudgetResult",
    "Judged",
    "budgets_block",
    "cost_bounds",
    "exceeded_demotion",
    "judge",
    "judged_gate",
    "price",
    "projected_daily_cost",
    "share",
]

# The names budgets are reported under (GET /v1/agreement, the metrics' budget label).
COST = "cost_usd_per_decision"
LATENCY = "latency_ms_p95"
ERRORS = "error_rate"
BUDGET_NAMES = (COST, LATENCY, ERRORS)
# The share of decisions a p95 allows above it.
P95_SHARE = 0.05
# The normal mixture's rho in units of sigma^2: the boundary is tightest near this many
# decisions times about ten (docs/statistics.md).
RHO_SAMPLES = 100.0


@dataclass(frozen=True, slots=True)
class BudgetEvidence:
    """What the budgets are judged on: aggregates of one task type's current agent version's
    decisions (every decision, not only the blind ones: each cost, took time, or failed)."""

    n: int = 0  # decisions
    errors: int = 0  # of them, failed (no answer, invalid answer, timeout)
    cost_n: int = 0  # of them, with a known cost (reported or priced)
    cost_sum: float = 0.0  # their total cost, USD
    cost_clipped: float = 0.0  # their total with each cost capped at the cost ceiling
    cost_max: float | None = None  # the largest known cost
    # Latency budget (ms) -> decisions slower than it, or with no latency recorded.
    over: Mapping[float, int] = field(default_factory=dict)
    p95: float | None = None  # the observed 95th percentile of latency, ms
    volume_per_day: int = 0  # events of the task type received in the last 24 h

    @property
    def cost_unknown(self) -> int:
        return self.n - self.cost_n


@dataclass(frozen=True, slots=True)
class BudgetResult:
    """One budget of one gate judged: ``met`` (the upper bound within it), ``exceeded`` (the
    lower bound above it), the line that says what is missing, and the API fields."""

    name: str
    limit: float
    met: bool
    exceeded: bool
    upper: float  # the upper bound judged (mean USD, share slower than the limit, error rate)
    burn: float | None  # the upper bound over the budget (>= 1: not met)
    missing: str  # empty when met
    excess: str  # empty unless exceeded: which bound, by how much
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Judged:
    """Every budget ``gate`` states, judged on one task type's evidence."""

    gate: Gate
    results: tuple[BudgetResult, ...]

    @property
    def met(self) -> bool:
        return all(r.met for r in self.results)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(r.missing for r in self.results if not r.met)

    @property
    def exceeded(self) -> tuple[BudgetResult, ...]:
        return tuple(r for r in self.results if r.exceeded)

    def get(self, name: str) -> BudgetResult | None:
        return next((r for r in self.results if r.name == name), None)


def price(usage: Usage, model: str | None, prices: Mapping[str, Price]) -> Usage:
    """``usage`` with its cost priced from the policy's price table when the agent reported
    tokens but no cost: the usage's own ``model``, else the task type's (``model``). A model
    with no price, or no tokens to price, leaves the cost unknown (never 0)."""
    if usage.cost_source != "unknown" or not (usage.input_tokens or usage.output_tokens):
        return usage
    name = usage.model if usage.model is not None else model
    found = prices.get(name) if name is not None else None
    if found is None:
        return usage
    cost = found.cost(usage.input_tokens, usage.output_tokens)
    return replace(usage, cost_usd=cost, cost_source="priced")


def share(gate: Gate, alpha: float) -> float:
    """Each stated budget's share of alpha (Bonferroni over the gate's budgets)."""
    stated = sum(
        v is not None
        for v in (gate.max_cost_usd_per_decision, gate.max_latency_ms_p95, gate.max_error_rate)
    )
    return alpha / stated if stated else alpha


def cost_bounds(total: float, n: int, ceiling: float, a: float) -> tuple[float, float]:
    """(lower, upper) confidence bounds on the mean cost of ``n`` decisions costing
    ``total`` in all, each in ``[0, ceiling]``, valid at every n at once at level ``a``
    each (see the module docstring); ``(0, ceiling)`` with no decisions."""
    if n <= 0:
        return 0.0, ceiling
    var = (ceiling / 2.0) ** 2
    v, rho = n * var, RHO_SAMPLES * var
    radius = math.sqrt(2.0 * (v + rho) * math.log(math.sqrt((v + rho) / rho) / a)) / n
    mean = total / n
    return max(mean - radius, 0.0), mean + radius


def _pct(value: float, limit: float) -> str:
    return f"+{(value / limit - 1.0) * 100.0:.0f}%" if limit > 0 else "+inf"


def _cost(limit: float, task: TaskPolicy, ev: BudgetEvidence, a: float) -> BudgetResult:
    ceiling = task.cost_ceiling() or 10.0 * limit
    n = ev.cost_n
    mean = ev.cost_sum / n if n else None
    _, upper = cost_bounds(ev.cost_sum, n, ceiling, a)
    clipped_lower, _ = cost_bounds(ev.cost_clipped, n, ceiling, a)
    above = ev.cost_max is not None and ev.cost_max > ceiling
    fields: dict[str, Any] = {
        "budget": limit,
        "n": ev.n,
        "mean": None if mean is None else round(mean, 6),
        "lower": round(clipped_lower, 6),
        "upper": round(min(upper, ceiling) if not above else upper, 6),
        "unknown": ev.cost_unknown,
        "ceiling": ceiling,
    }
    missing = ""
    if ev.cost_unknown:
        missing = (
            f"cost budget: cost unknown for {ev.cost_unknown} of {ev.n} decisions (tokens "
            "without cost_usd and no price for their model, or no usage reported); it cannot "
            "be met"
        )
    elif above:
        missing = (
            f"cost budget: a decision cost ${ev.cost_max:.4f}, above the cost ceiling "
            f"${ceiling:.4f} the bound assumes (cost_ceiling_usd); it cannot be met"
        )
    elif n == 0:
        missing = "cost budget: no decisions yet"
    elif upper > limit:
        missing = (
            f"cost budget: upper bound ${upper:.4f} > ${limit:.4f} per decision "
            f"({_pct(upper, limit)})"
        )
    # Capping each cost at the ceiling only lowers the mean: the capped lower bound holds.
    exceeded = n > 0 and clipped_lower > limit
    excess = (
        f"cost budget: lower bound ${clipped_lower:.4f} > ${limit:.4f} per decision "
        f"({_pct(clipped_lower, limit)})"
        if exceeded
        else ""
    )
    fields["met"] = not missing
    fields["exceeded"] = exceeded
    burn = upper / limit if n and not ev.cost_unknown else None
    return BudgetResult(COST, limit, not missing, exceeded, upper, burn, missing, excess, fields)


def _latency(limit: float, ev: BudgetEvidence, a: float) -> BudgetResult:
    over = min(ev.over.get(limit, ev.n), ev.n)
    up = upper_bound(over, ev.n, a)
    low = lower_bound(over, ev.n, a)
    seen = "" if ev.p95 is None else f"; observed p95 {ev.p95:.0f} ms"
    missing = ""
    if ev.n == 0:
        missing = "latency budget: no decisions yet"
    elif up > P95_SHARE:
        missing = (
            f"latency budget: upper bound {up:.4f} of the share over {limit:g} ms > "
            f"{P95_SHARE} ({_pct(up, P95_SHARE)}){seen}"
        )
    exceeded = ev.n > 0 and low > P95_SHARE
    excess = (
        f"latency budget: lower bound {low:.4f} of the share over {limit:g} ms > "
        f"{P95_SHARE} ({_pct(low, P95_SHARE)}){seen}"
        if exceeded
        else ""
    )
    fields = {
        "budget": limit,
        "n": ev.n,
        "over": over,
        "p95": ev.p95,
        "upper_share_over": round(up, 4),
        "met": not missing,
        "exceeded": exceeded,
    }
    burn = up / P95_SHARE if ev.n else None
    return BudgetResult(LATENCY, limit, not missing, exceeded, up, burn, missing, excess, fields)


def _errors(limit: float, ev: BudgetEvidence, a: float) -> BudgetResult:
    up = upper_bound(ev.errors, ev.n, a)
    low = lower_bound(ev.errors, ev.n, a)
    missing = ""
    if ev.n == 0:
        missing = "error budget: no decisions yet"
    elif up > limit:
        missing = f"error budget: upper bound {up:.4f} > {limit:g} ({_pct(up, limit)})"
    exceeded = ev.n > 0 and low > limit
    excess = (
        f"error budget: lower bound {low:.4f} > {limit:g} ({_pct(low, limit)})" if exceeded else ""
    )
    fields = {
        "budget": limit,
        "n": ev.n,
        "errors": ev.errors,
        "rate": round(ev.errors / ev.n, 4) if ev.n else None,
        "lower": round(low, 4),
        "upper": round(up, 4),
        "met": not missing,
        "exceeded": exceeded,
    }
    burn = up / limit if ev.n else None
    return BudgetResult(ERRORS, limit, not missing, exceeded, up, burn, missing, excess, fields)


def judge(gate: Gate, task: TaskPolicy, ev: BudgetEvidence | None) -> Judged:
    """Every budget ``gate`` states, each at its share of the task type's alpha."""
    ev = ev if ev is not None else BudgetEvidence()
    a = share(gate, task.autonomy.alpha)
    results: list[BudgetResult] = []
    if gate.max_cost_usd_per_decision is not None:
        results.append(_cost(gate.max_cost_usd_per_decision, task, ev, a))
    if gate.max_latency_ms_p95 is not None:
        results.append(_latency(gate.max_latency_ms_p95, ev, a))
    if gate.max_error_rate is not None:
        results.append(_errors(gate.max_error_rate, ev, a))
    return Judged(gate, tuple(results))


def exceeded_demotion(
    level: Level, task: TaskPolicy, ev: BudgetEvidence | None
) -> tuple[Level, str] | None:
    """A budget of ``level``'s gate clearly exceeded, with ``autonomy.budgets: demote``:
    the highest level below whose gate's budgets are not clearly exceeded (L0 when none),
    and the reason naming each budget and by how much; ``None`` otherwise."""
    auto = task.autonomy
    gate = auto.gate_for(level)
    if auto.budgets != "demote" or gate is None or ev is None:
        return None
    over = judge(gate, task, ev).exceeded
    if not over:
        return None
    to = Level.L0
    for lower in range(level - 1, 0, -1):
        g = auto.gate_for(Level(lower))
        if g is not None and not judge(g, task, ev).exceeded:
            to = Level(lower)
            break
    what = "; ".join(r.excess for r in over)
    return to, f"budget of the {level} gate clearly exceeded: {what}"


def projected_daily_cost(task: TaskPolicy, ev: BudgetEvidence | None) -> dict[str, Any]:
    """``projected_daily_cost``: the events received in the last 24 h, times the agent's
    mean known cost per decision (``None`` with no known cost) and the policy's
    ``human_cost_usd_per_decision`` (``None`` when not stated)."""
    ev = ev if ev is not None else BudgetEvidence()
    volume = ev.volume_per_day
    mean = ev.cost_sum / ev.cost_n if ev.cost_n else None
    human = task.human_cost_usd_per_decision
    return {
        "volume_per_day": volume,
        "agent_usd": None if mean is None else round(mean * volume, 6),
        "human_usd": None if human is None else round(human * volume, 6),
    }


def judged_gate(task: TaskPolicy, level: Level) -> Gate | None:
    """The gate whose budgets are reported for a task type at ``level``: the next one (the
    promotion's) up to the ceiling, else the current level's."""
    auto = task.autonomy
    nxt = Level(level + 1) if level < Level.L4 else None
    gate = auto.gate_for(nxt) if nxt is not None and nxt <= auto.ceiling else None
    return gate if gate is not None else auto.gate_for(level)


def budgets_block(
    task: TaskPolicy, gate: Gate | None, current: Gate | None, ev: BudgetEvidence | None
) -> dict[str, Any]:
    """The ``budgets`` block of ``GET /v1/agreement`` for one task type: ``gate`` (the gate
    judged for promotion, else the current level's), each budget it states (``None`` for
    those it does not), and the budgets clearly exceeded at the current level's gate."""
    judged = judge(gate, task, ev) if gate is not None else None
    now = judge(current, task, ev) if current is not None else None
    out: dict[str, Any] = {
        "mode": task.autonomy.budgets,
        "gate": None if gate is None else str(gate.level),
    }
    for name in BUDGET_NAMES:
        found = judged.get(name) if judged is not None else None
        out[name] = None if found is None else found.fields
    out["current_gate"] = None if current is None else str(current.level)
    out["exceeded_at_current"] = [r.name for r in now.exceeded] if now is not None else []
    return out
