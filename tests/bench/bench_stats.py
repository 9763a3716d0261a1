"""Bench: the promotion gate under continuous monitoring, for three lower bounds.

Run as ``python tests/bench/bench_stats.py`` (``make bench-stats``). It simulates independent
streams of Bernoulli comparisons, checks ``bound(S_n, n) >= gate`` after every comparison, and
reports for each bound:

- the false-promotion rate: streams whose true rate equals the gate that ever clear it;
- the median / p90 number of comparisons to clear the gate when the true rate is gate + 0.03.

All bounds see the same streams. Each bound is reduced to a threshold s*(n), the smallest
success count with bound(s, n) >= gate, so the streams are checked with one numpy comparison.
It also times single uncached ``lower_bound`` calls.

Demotion: with a task type at L3 (gate 0.98) after 100,000 blind comparisons at 0.99, it
compares the drift detector (:class:`shadow.drift.Drift`, a CUSUM against the gate) with the
cumulative rule (``upper_bound(S_n, n) < gate``): comparisons until demotion after a drop to
0.80 and to 0.95 (median, p90), the false-demotion rate over 100,000 further comparisons when
nothing drops, and the detector's run length when the agreement sits exactly at the gate.

Exits 1 if ``shadow.stats.lower_bound`` misses its requirements (false-promotion rate <=
alpha at gate 0.95, median <= 300 at 0.98) or the detector misses its goals (median <= 35
after a drop to 0.80, <= 350 after a drop to 0.95, false demotion <= 5%).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shadow import stats
from shadow.drift import Drift

SEED = 20240611
STREAMS = 2000
HORIZON = 5000
ALPHA = 0.05
GATES = (0.95, 0.90)
LIFT = 0.03  # true rate above the gate for the time-to-promotion measurement
CHUNK = 250  # streams simulated at a time, to bound memory
# Requirements on lower_bound (gate 0.95, alpha 0.05).
MAX_FALSE_PROMOTION = ALPHA
MAX_MEDIAN = 300

# Demotion: L3 gate 0.98 after PRE blind comparisons at 0.99.
DRIFT_STREAMS = 1000
DRIFT_GATE = 0.98
DRIFT_BEFORE = 0.99
PRE = 100_000
DROPS = (0.80, 0.95)
DRIFT_HORIZON = 20_000  # the detector's delay is counted up to this many comparisons
CUMULATIVE_HORIZON = 150_000  # the cumulative rule needs tens of thousands
CUMULATIVE_GRID = 25  # the cumulative rule is resolved to this many comparisons
GOALS = {0.80: 35, 0.95: 350}
MAX_FALSE_DEMOTION = 0.05

Bound = Callable[[int, int, float], float]
BOUNDS: dict[str, Bound] = {
    "anytime mixture (lower_bound)": stats.lower_bound,
    "naive Wilson (wilson_lower)": stats.wilson_lower,
    "Robbins (robbins_lower)": stats.robbins_lower,
}
OURS = "anytime mixture (lower_bound)"


@dataclass(frozen=True)
class Row:
    false_promotion: float
    median: float  # inf when more than half never clear
    p90: float
    never: int


def thresholds(bound: Bound, gate: float) -> npt.NDArray[np.int64]:
    """s*(n) = smallest s with bound(s, n) >= gate for n = 1..HORIZON; n + 1 if none.

    s*(n) is nondecreasing in n (for lower_bound it grows by 0 or 1 per step), so each n starts
    just below s*(n-1) and walks up; a start that already clears is pushed further down first.
    """
    out = np.empty(HORIZON, dtype=np.int64)
    prev = 0
    margin = 2
    for n in range(1, HORIZON + 1):
        s = max(0, prev - margin)
        while s > 0 and bound(s, n, ALPHA) >= gate:
            s = max(0, s - 4 * margin)
        while s <= n and bound(s, n, ALPHA) < gate:
            s += 1
        out[n - 1] = s
        prev = min(s, n)
    return out


def first_crossings(
    uniforms: npt.NDArray[np.float64], p: float, limits: dict[str, npt.NDArray[np.int64]]
) -> dict[str, npt.NDArray[np.float64]]:
    """Per bound, the first n at which each stream clears its threshold (inf if never)."""
    successes = np.cumsum(uniforms < p, axis=1, dtype=np.int64)
    out: dict[str, npt.NDArray[np.float64]] = {}
    for name, limit in limits.items():
        cleared = successes >= limit[np.newaxis, :]
        ever = cleared.any(axis=1)
        first = cleared.argmax(axis=1).astype(np.float64) + 1.0
        out[name] = np.where(ever, first, np.inf)
    return out


def quantile(values: npt.NDArray[np.float64], q: float) -> float:
    # inverted_cdf picks an observed value, so streams that never clear (inf) are handled
    # without interpolating between inf and a finite count.
    return float(np.quantile(values, q, method="inverted_cdf"))


def simulate(gate: float, rng: np.random.Generator) -> dict[str, Row]:
    limits = {name: thresholds(bound, gate) for name, bound in BOUNDS.items()}
    at_gate: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in BOUNDS}
    lifted: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in BOUNDS}
    for _ in range(STREAMS // CHUNK):
        # One set of uniforms per stream: the same streams for every bound (and, coupled
        # through U < p, for both true rates).
        uniforms = rng.random((CHUNK, HORIZON))
        for name, times in first_crossings(uniforms, gate, limits).items():
            at_gate[name].append(times)
        for name, times in first_crossings(uniforms, gate + LIFT, limits).items():
            lifted[name].append(times)
    rows = {}
    for name in BOUNDS:
        null = np.concatenate(at_gate[name])
        alt = np.concatenate(lifted[name])
        rows[name] = Row(
            false_promotion=float(np.isfinite(null).mean()),
            median=quantile(alt, 0.5),
            p90=quantile(alt, 0.9),
            never=int((~np.isfinite(alt)).sum()),
        )
    return rows


@dataclass(frozen=True)
class Demotion:
    delays: dict[float, tuple[float, float]]  # drop -> (median, p90)
    false_demotion: float
    at_gate: float = float("nan")  # detector only: median run length with p = gate


def cusum_run(
    d: Drift, w: npt.NDArray[np.float64], p: float, steps: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Advance every stream's statistic ``w`` by ``steps`` comparisons at rate ``p``; the
    first step (1-based) at which each alarmed (inf if none) and the final statistics."""
    first = np.full(w.shape, np.inf)
    for t in range(1, steps + 1):
        agree = rng.random(w.shape[0]) < p
        w = np.maximum(0.0, w + np.where(agree, d.on_agree, d.on_miss))
        newly = (w >= d.threshold) & ~np.isfinite(first)
        first[newly] = t
    return first, w


def detector(rng: np.random.Generator) -> Demotion:
    d = Drift.for_gate(DRIFT_GATE)
    start = np.zeros(DRIFT_STREAMS)
    _, after_pre = cusum_run(d, start, DRIFT_BEFORE, PRE, rng)
    further, _ = cusum_run(d, after_pre, DRIFT_BEFORE, PRE, rng)
    delays = {}
    for drop in DROPS:
        first, _ = cusum_run(d, after_pre, drop, DRIFT_HORIZON, rng)
        delays[drop] = (quantile(first, 0.5), quantile(first, 0.9))
    at_gate, _ = cusum_run(d, start, DRIFT_GATE, DRIFT_HORIZON, rng)
    return Demotion(delays, float(np.isfinite(further).mean()), quantile(at_gate, 0.5))


def cumulative_limits(grid: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For each n in ``grid``, the largest s with upper_bound(s, n) < gate (-1 if none)."""
    out = np.empty(grid.shape, dtype=np.int64)
    s = int(DRIFT_GATE * grid[0])
    for i, n in enumerate(grid):
        n = int(n)
        while s < n and stats.upper_bound(s + 1, n, ALPHA) < DRIFT_GATE:
            s += 1
        while s >= 0 and stats.upper_bound(s, n, ALPHA) >= DRIFT_GATE:
            s -= 1
        out[i] = s
    return out


def cumulative(rng: np.random.Generator) -> Demotion:
    """Today's rule on the same question: demote once upper_bound(S_n, n) < gate."""
    grid = np.arange(PRE + CUMULATIVE_GRID, PRE + CUMULATIVE_HORIZON + 1, CUMULATIVE_GRID)
    limits = cumulative_limits(grid)
    offsets = grid - PRE - 1
    chunk = 100
    delays = {}
    for drop in (*DROPS, DRIFT_BEFORE):
        firsts = []
        for _ in range(DRIFT_STREAMS // chunk):
            pre = rng.binomial(PRE, DRIFT_BEFORE, size=chunk)
            post = np.cumsum(rng.random((chunk, CUMULATIVE_HORIZON)) < drop, axis=1)
            totals = pre[:, np.newaxis] + post[:, offsets]
            demoted = totals <= limits[np.newaxis, :]
            ever = demoted.any(axis=1)
            first = (grid[demoted.argmax(axis=1)] - PRE).astype(np.float64)
            firsts.append(np.where(ever, first, np.inf))
        delays[drop] = np.concatenate(firsts)
    # Demoted within the next PRE comparisons at the unchanged rate, like the detector's figure.
    false = float((delays.pop(DRIFT_BEFORE) <= PRE).mean())
    return Demotion(
        {drop: (quantile(v, 0.5), quantile(v, 0.9)) for drop, v in delays.items()}, false
    )


def fmt_delay(value: float, horizon: int) -> str:
    return f">{horizon}" if value == np.inf else f"{value:.0f}"


def time_lower_bound(n: int, repeats: int) -> tuple[float, float]:
    """Median and max seconds of one uncached lower_bound(0.95 n +- k, n) evaluation."""
    samples = []
    for k in range(repeats):
        stats._lower_cached.cache_clear()  # force a real evaluation
        s = round(0.95 * n) - k
        start = time.perf_counter()
        stats.lower_bound(s, n, ALPHA)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), max(samples)


def fmt_n(value: float) -> str:
    return f">{HORIZON}" if value == np.inf else f"{value:.0f}"


def main() -> int:
    started = time.perf_counter()
    print(
        f"seed={SEED} streams={STREAMS} horizon={HORIZON} alpha={ALPHA} "
        "(gate checked after every comparison)"
    )
    rng = np.random.default_rng(SEED)
    results = {gate: simulate(gate, rng) for gate in GATES}

    header = (
        f"{'gate':>5} | {'bound':<30} | {'false-promotion':>15} | "
        f"{'median n':>8} | {'p90 n':>6} | {'never':>5}"
    )
    print()
    print("false-promotion: true p = gate;  median/p90/never: true p = gate + 0.03")
    print(header)
    print("-" * len(header))
    for gate, rows in results.items():
        for name, row in rows.items():
            print(
                f"{gate:>5.2f} | {name:<30} | {row.false_promotion:>15.4f} | "
                f"{fmt_n(row.median):>8} | {fmt_n(row.p90):>6} | {row.never:>5}"
            )

    print()
    print(
        f"demotion at L3 (gate {DRIFT_GATE}) after {PRE:,} blind comparisons at {DRIFT_BEFORE}, "
        f"{DRIFT_STREAMS} streams:"
    )
    drift, cum = detector(rng), cumulative(rng)
    header = (
        f"{'rule':<34} | "
        + " | ".join(f"drop to {q}: median  p90" for q in DROPS)
        + " | false demotion (next 100,000)"
    )
    print(header)
    print("-" * len(header))
    for rule, demotion, horizon in (
        ("drift detector (shadow.drift)", drift, DRIFT_HORIZON),
        (f"cumulative upper_bound (+-{CUMULATIVE_GRID})", cum, CUMULATIVE_HORIZON),
    ):
        cells = " | ".join(
            f"{fmt_delay(demotion.delays[q][0], horizon):>13} "
            f"{fmt_delay(demotion.delays[q][1], horizon):>5}"
            for q in DROPS
        )
        print(f"{rule:<34} | {cells} | {demotion.false_demotion:>29.4f}")
    print(
        f"drift detector with the agreement exactly at the gate: median run length to a "
        f"demotion {fmt_delay(drift.at_gate, DRIFT_HORIZON)} comparisons "
        f"(guaranteed mean >= exp(threshold) = {np.exp(Drift.for_gate(DRIFT_GATE).threshold):.0f})"
    )

    print()
    print("single uncached lower_bound evaluation (s ~ 0.95 n):")
    for n, repeats in ((10**3, 200), (10**5, 50), (10**7, 10)):
        median, worst = time_lower_bound(n, repeats)
        print(f"  n={n:>10,}: median {median * 1e3:.3f} ms, max {worst * 1e3:.3f} ms")
    print(f"whole bench: {time.perf_counter() - started:.1f} s")

    ours = results[0.95][OURS]
    failures = []
    if ours.false_promotion > MAX_FALSE_PROMOTION:
        failures.append(f"false-promotion {ours.false_promotion:.4f} > {MAX_FALSE_PROMOTION}")
    if ours.median > MAX_MEDIAN:
        failures.append(f"median {fmt_n(ours.median)} > {MAX_MEDIAN}")
    for drop, goal in GOALS.items():
        if drift.delays[drop][0] > goal:
            failures.append(
                f"drift median after a drop to {drop}: {drift.delays[drop][0]} > {goal}"
            )
    if drift.false_demotion > MAX_FALSE_DEMOTION:
        failures.append(f"false demotion {drift.false_demotion:.4f} > {MAX_FALSE_DEMOTION}")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("OK: lower_bound meets both requirements at gate 0.95; the drift detector its goals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
