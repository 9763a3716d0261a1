"""Bench: the live budget bounds (shadow.budgets) under continuous monitoring.

Run as ``python -m tests.bench.bench_budgets`` (``make bench-stats`` runs it after
bench_segments). One gate states all three budgets (mean cost, p95 latency, error rate) at
alpha 0.05, so each budget is judged at its share ``shadow.budgets.share`` = alpha / 3. Streams
of decisions are checked after EVERY decision up to 20,000 (the bounds are anytime-valid, so
checking that often is the hard case), and a stream is "met" the first time the budget's upper
bound is within it.

- **False "met" at the budget exactly**: error rate exactly ``max_error_rate``; latencies
  (lognormal) whose true 95th percentile is exactly ``max_latency_ms_p95`` (the true share over
  the budget is 0.05); costs in [0, M] (M the task type's ``cost_ceiling_usd``) whose true mean
  is exactly ``max_cost_usd_per_decision``, from a skewed Beta and from the two-point {0, M}
  (the largest variance a mean allows). The share of streams ever met must be <= the budget's
  share of alpha.
- **Cost of the guarantee**: with the truth comfortably within (half the error budget; a true
  share over the latency budget of 0.01, the true p95 29% under it; half the cost budget), the
  median / p90 decisions until met.

The bounds are the sidecar's own: the error and latency thresholds e*(n) (the largest count with
``shadow.stats.upper_bound(e, n, share) <= budget``) and the cost threshold
``n * (C - r(n))`` with ``r(n)`` the radius ``shadow.budgets.cost_bounds`` gives. Every stream
the thresholds call met at the budget exactly is settled by ``shadow.budgets.judge`` on a
``BudgetEvidence`` of that stream's counts at that decision (and the decision before, which must
not be met), so the figures are the real gate's (where the truth is within, a sample of 20
streams per 100 is settled). Exits 1 when a false-met rate exceeds the budget's share of alpha
by more than two Monte Carlo standard errors, or when the real gate disagrees with a threshold.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shadow import budgets
from shadow.budgets import BudgetEvidence, cost_bounds, judge
from shadow.model import Level
from shadow.policy import TaskPolicy, parse_policy
from shadow.stats import upper_bound
from tests.bench.bench_segments import summary

SEED = 20261208
STREAMS = 10_000
HORIZON = 20_000
SETTLE = 20  # streams per chunk settled by the real gate when the truth is within
CHUNK = 100  # streams simulated at a time, to bound memory
ALPHA = 0.05
MAX_ERROR = 0.02
COST = 0.01  # USD per decision
CEILING = 0.10  # cost_ceiling_usd: every cost in [0, CEILING]
LAT_MU, LAT_SIGMA = np.log(800.0), 0.5  # lognormal latencies, median 800 ms
Z95, Z99 = 1.6448536269514722, 2.3263478740408408
P95 = float(np.exp(LAT_MU + LAT_SIGMA * Z95))  # the budget: the true p95 exactly
P99 = float(np.exp(LAT_MU + LAT_SIGMA * Z99))  # the comfortable latencies' true p95

ERR, LAT, USD = budgets.ERRORS, budgets.LATENCY, budgets.COST
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
# (rng, streams, horizon) -> per-decision values: a failure flag, a latency (ms), a cost (USD).
Draw = Callable[[np.random.Generator, int, int], Floats]


def the_task(latency_budget: float) -> TaskPolicy:
    text = f"""
task_types:
  bench:
    cost_ceiling_usd: {CEILING}
    autonomy:
      ceiling: L1
      alpha: {ALPHA}
      gates:
        L1: {{agreement: 0.5, min_samples: 1, max_cost_usd_per_decision: {COST},
             max_latency_ms_p95: {latency_budget!r}, max_error_rate: {MAX_ERROR}}}
"""
    return parse_policy(text).task_types["bench"]


def count_thresholds(limit: float, a: float) -> Ints:
    """e*(n) for n = 0..HORIZON: the largest count e with upper_bound(e, n, a) <= limit
    (-1 when none), the error and latency budgets' rule with the count of failures or of
    decisions over the latency budget."""
    out = np.full(HORIZON + 1, -1, dtype=np.int64)
    e = -1
    for n in range(1, HORIZON + 1):
        while e >= 0 and upper_bound(e, n, a) > limit:
            e -= 1
        while e + 1 <= n and upper_bound(e + 1, n, a) <= limit:
            e += 1
        out[n] = e
    return out


def cost_thresholds(a: float) -> Floats:
    """The largest cost total met at n: n * (C - r(n)), r(n) the real bound's radius (its
    upper bound with a total of 0), relaxed by 1e-9 so a total at the edge becomes a
    candidate that the real gate settles."""
    out = np.full(HORIZON + 1, -np.inf)
    for n in range(1, HORIZON + 1):
        radius = cost_bounds(0.0, n, CEILING, a)[1]
        out[n] = n * (COST - radius) + 1e-9
    return out


@dataclass(frozen=True, slots=True)
class Case:
    budget: str  # shadow.budgets' name
    truth: str  # what the row simulates
    draw: Draw
    at_budget: bool  # the truth is exactly the budget (a false-met row)


def evidence(budget: str, row: Floats, n: int, latency_budget: float) -> BudgetEvidence:
    """The BudgetEvidence of a stream's first ``n`` decisions for one budget (the other
    budgets' fields are left neutral: only the budget in question is read)."""
    head = row[:n]
    if budget == budgets.ERRORS:
        return BudgetEvidence(n=n, errors=int(head.sum()), cost_n=n)
    if budget == budgets.LATENCY:
        over = int((head > latency_budget).sum())
        return BudgetEvidence(n=n, cost_n=n, over={latency_budget: over})
    total = float(head.sum())
    return BudgetEvidence(
        n=n, cost_n=n, cost_sum=total, cost_clipped=float(np.minimum(head, CEILING).sum()),
        cost_max=float(head.max()),
    )  # fmt: skip


def first_met(
    rng: np.random.Generator,
    case: Case,
    limits: Floats,
    task: TaskPolicy,
    latency_budget: float,
) -> tuple[Floats, int]:
    """Per stream the first decision at which the budget is met (inf: never within the
    horizon), and how many of the thresholds' answers the real gate contradicted."""
    found: list[Floats] = []
    disagreed = 0
    gate = task.autonomy.gates[Level.L1]
    n = np.arange(1, HORIZON + 1)
    for start in range(0, STREAMS, CHUNK):
        size = min(CHUNK, STREAMS - start)
        values = case.draw(rng, size, HORIZON)
        counted = (values > latency_budget) * 1.0 if case.budget == budgets.LATENCY else values
        totals = np.cumsum(counted, axis=1)
        candidate = totals <= limits[n][np.newaxis, :]
        first = np.full(size, np.inf)
        hit = candidate.any(axis=1)
        # Where the truth is within the budget nearly every stream is met: a sample is
        # settled by the real gate, the rest count from the thresholds (exact for the counts;
        # for the cost at most 1e-9 USD generous).
        unsettled = np.flatnonzero(hit)[SETTLE:] if not case.at_budget else np.arange(0)
        first[unsettled] = candidate[unsettled].argmax(axis=1) + 1.0
        for i in np.flatnonzero(hit)[: None if case.at_budget else SETTLE]:
            for at in np.flatnonzero(candidate[i]) + 1:
                result = judge(
                    gate, task, evidence(case.budget, values[i], int(at), latency_budget)
                )
                met = result.get(case.budget)
                assert met is not None
                if met.met:
                    before = judge(
                        gate, task, evidence(case.budget, values[i], int(at) - 1, latency_budget)
                    ).get(case.budget)
                    assert before is not None
                    disagreed += int(before.met)
                    first[i] = float(at)
                    break
                if case.budget != budgets.COST:  # integer thresholds: no edge to settle
                    disagreed += 1
        # A sample of streams never met: the real gate agrees at the last decision.
        for i in np.flatnonzero(~np.isfinite(first))[:5]:
            last = judge(gate, task, evidence(case.budget, values[i], HORIZON, latency_budget))
            got = last.get(case.budget)
            assert got is not None
            disagreed += int(got.met)
        found.append(first)
    return np.concatenate(found), disagreed


def errors(rate: float) -> Draw:
    def draw(rng: np.random.Generator, size: int, horizon: int) -> Floats:
        return (rng.random((size, horizon)) < rate).astype(np.float64)

    return draw


def latencies(rng: np.random.Generator, size: int, horizon: int) -> Floats:
    return rng.lognormal(LAT_MU, LAT_SIGMA, (size, horizon))


def beta_costs(mean: float) -> Draw:
    """Costs M * Beta(a, b) with mean ``mean`` and a = 0.5: skewed right (most decisions
    cheap, a long tail toward the ceiling)."""
    a = 0.5
    b = a * (CEILING / mean - 1.0)

    def draw(rng: np.random.Generator, size: int, horizon: int) -> Floats:
        return CEILING * rng.beta(a, b, (size, horizon))

    return draw


def two_point_costs(rng: np.random.Generator, size: int, horizon: int) -> Floats:
    """0 or M, M with probability C / M: mean C, the largest variance in [0, M]."""
    return np.where(rng.random((size, horizon)) < COST / CEILING, CEILING, 0.0)


def main() -> int:
    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    task = the_task(P95)
    gate = task.autonomy.gates[Level.L1]
    a = budgets.share(gate, task.autonomy.alpha)
    print(
        f"seed={SEED} streams={STREAMS} horizon={HORIZON} alpha={ALPHA} budgets stated=3 "
        f"share={a:.4f} (checked after every decision)"
    )
    print(
        f"budgets: error rate {MAX_ERROR}, p95 latency = the true p95 {P95:.0f} ms "
        f"(lognormal, median 800 ms, sigma {LAT_SIGMA}), mean cost ${COST} with costs in "
        f"[0, ${CEILING}] (cost_ceiling_usd)"
    )
    errors_at = count_thresholds(MAX_ERROR, a).astype(np.float64)
    over_at = count_thresholds(budgets.P95_SHARE, a).astype(np.float64)
    costs_at = cost_thresholds(a)
    print(f"(thresholds {time.perf_counter() - started:.1f} s)")

    def comfortable_latencies(rng: np.random.Generator, size: int, horizon: int) -> Floats:
        # Scaled so the budget P95 sits at their true p99: their p95 is P95 * e^(s(z95-z99)).
        return latencies(rng, size, horizon) * (P95 / P99)

    half_error, half_cost = MAX_ERROR / 2, COST / 2
    calm = f"share over 0.01 (p95 {P95 * P95 / P99:.0f} ms)"
    cases = [
        (Case(ERR, f"error rate {MAX_ERROR} (= budget)", errors(MAX_ERROR), True), errors_at),
        (Case(ERR, f"error rate {half_error} (half)", errors(half_error), False), errors_at),
        (Case(LAT, "share over 0.05 (p95 = budget)", latencies, True), over_at),
        (Case(LAT, calm, comfortable_latencies, False), over_at),
        (Case(USD, f"mean ${COST}, M*Beta(0.5, 4.5)", beta_costs(COST), True), costs_at),
        (Case(USD, f"mean ${COST}, two-point {{0, M}}", two_point_costs, True), costs_at),
        (Case(USD, f"mean ${half_cost}, M*Beta(0.5, 9.5)", beta_costs(half_cost), False), costs_at),
    ]
    header = (
        f"{'budget':<22} | {'truth':<36} | {'false met ± s.e.':>16} | {'met':>5} | "
        f"{'median n':>8} | {'p90 n':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    failed = False
    disagreed = 0
    for case, limits in cases:
        first, wrong = first_met(rng, case, limits, task, P95)
        disagreed += wrong
        rate, median, p90 = summary(first, HORIZON)
        se = math.sqrt(rate * (1.0 - rate) / STREAMS)
        false = f"{rate:.4f} ± {se:.4f}" if case.at_budget else "-"
        met = "-" if case.at_budget else f"{rate:.3f}"
        shown = ("-", "-") if case.at_budget else (median, p90)
        print(
            f"{case.budget:<22} | {case.truth:<36} | {false:>16} | {met:>5} | "
            f"{shown[0]:>8} | {shown[1]:>6}"
        )
        # Failing needs the rate above the share by more than two Monte Carlo standard errors.
        if case.at_budget and rate - 2.0 * se > a:
            print(f"FAIL: {case.budget} false met {rate:.4f} > its share of alpha {a:.4f}")
            failed = True
    print(f"\nthe real gate (shadow.budgets.judge) contradicted the thresholds {disagreed} times")
    print(f"({time.perf_counter() - started:.1f} s)")
    if disagreed:
        print("FAIL: the thresholds are not the gate's")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
