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

Adjudicated estimate (:mod:`shadow.adjudicated`): streams of blind comparisons (agree /
disagree / agent error) with a review queue (after each comparison, with probability r, one
review of an unreviewed disagreement, or with probability agreement_share of an agreement,
the other stratum when one is empty; the outcome is acceptable with the stratum's q). For a
few true (pi_a, pi_d, q_a, q_d) it reports the false-promotion rate with p exactly at the gate
(0.95) and, with p = gate + 0.03, the median / p90 comparisons and reviews until the lower
bound clears the gate, checked after every comparison up to 20,000. The four-box construction
pi_a,L q_a,L + pi_d,L q_d,L is timed alongside. The bounds are evaluated through brackets on
coarse grids of exact values (lower_bound is monotone in both counts), computed by a
vectorised scipy root-finder that is checked against shadow.stats; a bound within 1e-7 of the
gate is settled by the real function, as are all false promotions and a sample of clearings.

Exits 1 if ``shadow.stats.lower_bound`` misses its requirements (false-promotion rate <=
alpha at gate 0.95, median <= 300 at 0.98), the detector misses its goals (median <= 35
after a drop to 0.80, <= 350 after a drop to 0.95, false demotion <= 5%), or the adjudicated
lower bound's false-promotion rate exceeds alpha in any simulated case.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from shadow import stats
from shadow.adjudicated import Reviewed, adjudicated
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


# ------------------------------------------------------------------ adjudicated estimate

ADJ_GATE = 0.95
ADJ_LIFT = 0.03  # true p above the gate for the time-to-clear measurement
ADJ_STREAMS = 1000
ADJ_HORIZON = 20_000
ADJ_BLOCK = 500  # comparisons simulated, then checked, at a time
ADJ_CHUNK = 25  # comparisons ruled out together by one bound (first_clearing)
ADJ_SHARE = 0.05  # the review queue's agreement_share default
# Bracket grids, coarse to fine: the larger and the smaller count of a bound are rounded to a
# power-of-two step of about 1/g of themselves. The last level is exact.
ADJ_GRIDS = ((16, 64), (64, 256), (256, 1024))
# A bound this close to the gate is settled by the real function (the vectorised bounds agree
# with shadow.stats to ADJ_AGREE, checked on a sample of every batch).
ADJ_EPS = 1e-7
ADJ_AGREE = 1e-9
ADJ_VERIFY = 1  # vectorised bounds per batch checked against shadow.stats
ADJ_CHECKED = 50  # clearings per row re-checked with the real function (and all false ones)
ADJ_RULES = ("simplex", "box")  # shadow.adjudicated; the four-box construction it improves on
_MAX = 1 << 16  # counts and their rounded-up ends stay below this
_KEY = 1 << 17  # packs (successes, failures) into one int64

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Truth:
    """True shares of one simulated task type; q_a, q_d for p = gate and for p = gate + lift."""

    name: str
    pi_a: float
    pi_d: float
    q_a: tuple[float, float]
    q_d: tuple[float, float]

    @classmethod
    def solve(cls, name: str, pi_a: float, pi_d: float, q_a: tuple[float, float]) -> Truth:
        """q_d chosen so that p = pi_a q_a + pi_d q_d is exactly the gate, then gate + lift."""
        targets = (ADJ_GATE, ADJ_GATE + ADJ_LIFT)
        q_d = [(t - pi_a * qa) / pi_d for t, qa in zip(targets, q_a, strict=True)]
        return cls(name, pi_a, pi_d, q_a, (q_d[0], q_d[1]))


TRUTHS = (
    Truth.solve("A", 0.93, 0.065, (1.0, 1.0)),
    Truth.solve("B", 0.96, 0.035, (0.98, 1.0)),
    Truth.solve("C", 0.88, 0.11, (1.0, 1.0)),
)
TRUTH_NOTES = {
    "A": "disagreements often the human's fault",
    "B": "agreements sometimes both wrong",
    "C": "many disagreements, more than the reviewers reach",
}
# (truth, reviews per comparison r, agreement_share): r is the reviewers' capacity.
ADJ_CASES = (
    ("A", 0.1, ADJ_SHARE),
    ("A", 0.3, ADJ_SHARE),
    ("B", 0.1, ADJ_SHARE),
    ("B", 0.3, ADJ_SHARE),
    ("C", 0.1, ADJ_SHARE),
    ("C", 0.3, ADJ_SHARE),
    ("C", 0.1, 0.5),
)


def vector_lower(s: Ints, f: Ints, alpha: float) -> Floats:
    """stats.lower_bound(s, s + f, alpha) over arrays, computed independently: a safeguarded
    Newton search for log M(p0) = log(1/alpha) with scipy's incomplete beta, where
    (docs/statistics.md)

        log M(p0) = log B(S+1, F+1) + log I_{1-p0}(F+1, S+1) - (F+1) log(1-p0) - S log p0.
    """
    out = np.zeros(s.shape)
    idx = np.flatnonzero(s > 0)
    big_s, big_f = s[idx].astype(np.float64), f[idx].astype(np.float64)
    log_t = -math.log(alpha)
    log_b = special.betaln(big_s + 1.0, big_f + 1.0)
    # Left end as in stats._start_log_p: M(p0) >= (1/p0 - 1)^S B(S+1, F+1) rejects there.
    lo = special.expit(-(log_t - log_b) / big_s)
    hi = np.minimum(big_s / (big_s + big_f), 1.0 - 1e-15)
    x = 0.5 * (lo + hi)
    for _ in range(200):
        log_j = log_b + np.log(special.betainc(big_f + 1.0, big_s + 1.0, 1.0 - x))
        log_x, log_1mx = np.log(x), np.log1p(-x)
        g = log_j - (big_f + 1.0) * log_1mx - big_s * log_x - log_t
        dg = (big_f + 1.0) / (1.0 - x) - big_s / x - np.exp(big_s * log_x + big_f * log_1mx - log_j)
        below = g > 0  # M(x) still rejects: the root is above x
        lo, hi = np.where(below, x, lo), np.where(below, hi, x)
        step = x - g / dg
        new = np.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
        done = (np.abs(new - x) <= 1e-13 * x) | (hi - lo <= 1e-13 * x)
        out[idx[done]] = new[done]
        keep = ~done
        if not keep.any():
            return out
        idx, big_s, big_f, log_b, lo, hi, x = (
            v[keep] for v in (idx, big_s, big_f, log_b, lo, hi, new)
        )
    raise ArithmeticError("vector_lower did not converge")


@functools.cache
def _grid(g: int) -> tuple[Ints, Ints]:
    """Per count c < _MAX: the grid's step at c (a power of two with c / step in [g, 2g) once
    c >= g, fixed within an octave so that neighbouring counts share ends) and, for grid
    points, a dense index."""
    c = np.arange(_MAX, dtype=np.int64)
    bits = np.zeros(_MAX, dtype=np.int64)
    bits[1:] = np.floor(np.log2(c[1:]))
    shift = np.maximum(0, bits - int(math.log2(g)))
    return np.left_shift(1, shift), np.where(shift == 0, c, g * shift + (c >> shift))


class Bounds:
    """lower_bound(s, s + f, alpha / 4) over arrays; each distinct pair is computed once.

    ``bracket`` rounds each count down and up to a grid (``g = grid[0]`` for the larger of s
    and f, ``grid[1]`` for the smaller) and returns the bound at (s down, f up) and (s up,
    f down): lower_bound grows with s and falls with f, so these bracket the exact value, and
    the grid keeps the number of distinct pairs small. ``(0, 0)`` is exact. The coarsest grid
    sees every state, so it is looked up in dense tables.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.cache: dict[int, float] = {}
        self.dense: dict[tuple[int, int], Floats] = {}
        self.rng = rng
        self.verified = 0

    def exact(self, s: Ints, f: Ints) -> Floats:
        keys, inverse = np.unique(s * _KEY + f, return_inverse=True)
        values: Floats = np.array([self.cache.get(k, math.nan) for k in keys.tolist()])
        missing = np.isnan(values)
        if missing.any():
            succ, fail = np.divmod(keys[missing], _KEY)
            values[missing] = computed = vector_lower(succ, fail, ALPHA / 4)
            self.cache.update(zip(keys[missing].tolist(), computed.tolist(), strict=True))
            self.verify(succ, fail, computed)
        out: Floats = values[inverse.reshape(s.shape)]
        return out

    def verify(self, succ: Ints, fail: Ints, computed: Floats) -> None:
        """The vectorised bounds agree with shadow.stats on a sample of each batch."""
        for k in self.rng.choice(
            succ.size, size=min(ADJ_VERIFY, succ.size), replace=False
        ).tolist():
            s, f = int(succ[k]), int(fail[k])
            want = stats.lower_bound(s, s + f, ALPHA / 4)
            if abs(computed[k] - want) > ADJ_AGREE:
                raise AssertionError(
                    f"vectorised lower_bound({s}, {s + f}) {computed[k]} != {want}"
                )
            self.verified += 1

    def table(self, s: Ints, f: Ints, gs: int, gf: int) -> Floats:
        """exact() for s on grid gs and f on grid gf, through a dense table."""
        table = self.dense.get((gs, gf))
        if table is None:
            shape = (int(_grid(gs)[1][-1]) + 2, int(_grid(gf)[1][-1]) + 2)
            table = self.dense[gs, gf] = np.full(shape, np.nan)
        i, j = _grid(gs)[1][s], _grid(gf)[1][f]
        values = table[i, j]
        missing = np.isnan(values)
        if missing.any():
            table[i[missing], j[missing]] = self.exact(s[missing], f[missing])
            values = table[i, j]
        return values

    def bracket(self, s: Ints, f: Ints, grid: tuple[int, int]) -> tuple[Floats, Floats]:
        if not grid[0]:
            value = self.exact(s, f)
            return value, value
        lo, hi = np.empty(s.shape), np.empty(s.shape)
        s_big = s >= f
        for rows, (gs, gf) in ((s_big, grid), (~s_big, grid[::-1])):
            s_lo, s_hi = _round(s[rows], gs)
            f_lo, f_hi = _round(f[rows], gf)
            if grid == ADJ_GRIDS[0]:
                lo[rows], hi[rows] = self.table(s_lo, f_hi, gs, gf), self.table(s_hi, f_lo, gs, gf)
            else:
                lo[rows], hi[rows] = self.exact(s_lo, f_hi), self.exact(s_hi, f_lo)
        return lo, hi


def _round(c: Ints, g: int) -> tuple[Ints, Ints]:
    step = _grid(g)[0][c]
    lo = c & ~(step - 1)
    return lo, np.where(c == lo, c, lo + step)


@dataclass(frozen=True)
class States:
    """Counts after each comparison; arrays of one shape (streams x comparisons, or flat)."""

    n: Ints
    agree: Ints
    disagree: Ints
    reviewed_agree: Ints
    reviewed_disagree: Ints
    acceptable_agree: Ints
    acceptable_disagree: Ints

    def take(self, index: Any) -> States:
        return States(*(getattr(self, name)[index] for name in self.__dataclass_fields__))

    def at(self, k: int) -> tuple[int, int, int, Reviewed]:
        """adjudicated()'s arguments for element k of flat states."""
        reviewed = Reviewed(
            int(self.reviewed_agree[k]),
            int(self.acceptable_agree[k]),
            int(self.reviewed_disagree[k]),
            int(self.acceptable_disagree[k]),
        )
        return int(self.n[k]), int(self.agree[k]), int(self.disagree[k]), reviewed

    def estimate(self) -> Floats:
        ra, rd = self.reviewed_agree, self.reviewed_disagree
        q_a = np.divide(self.acceptable_agree, ra, out=np.ones(ra.shape), where=ra > 0)
        q_d = np.divide(self.acceptable_disagree, rd, out=np.zeros(rd.shape), where=rd > 0)
        return (self.agree * q_a + self.disagree * q_d) / self.n


def simplex_lower(e_hi: Floats, d_hi: Floats, qa_lo: Floats, qd_lo: Floats) -> Floats:
    """shadow.adjudicated's lower bound from its four one-sided bounds, over arrays."""
    rest = 1.0 - np.minimum(e_hi, 1.0)
    d_share = np.where(qd_lo <= qa_lo, np.minimum(d_hi, rest), 0.0)
    return np.clip(d_share * qd_lo + (rest - d_share) * qa_lo, 0.0, 1.0)


def brackets(bounds: Bounds, st: States, rule: str, grid: tuple[int, int]) -> tuple[Floats, Floats]:
    """(lo, hi) with lo <= the rule's lower bound <= hi at every state (equal if exact)."""
    n, a, d = st.n, st.agree, st.disagree
    ra, rd = st.reviewed_agree, st.reviewed_disagree
    aa, ad = st.acceptable_agree, st.acceptable_disagree
    qa = bounds.bracket(aa, ra - aa, grid)
    qd = bounds.bracket(ad, rd - ad, grid)
    if rule == "box":
        pa = bounds.bracket(a, n - a, grid)
        pd = bounds.bracket(d, n - d, grid)
        return pa[0] * qa[0] + pd[0] * qd[0], pa[1] * qa[1] + pd[1] * qd[1]
    errors = n - a - d
    # upper_bound(m, n) = 1 - lower_bound(n - m, n), so its bracket is the mirror image.
    e_lo, e_hi = bounds.bracket(n - errors, errors, grid)
    d_lo, d_hi = bounds.bracket(n - d, d, grid)
    estimate = st.estimate()
    lo = simplex_lower(1.0 - e_lo, 1.0 - d_lo, qa[0], qd[0])
    hi = simplex_lower(1.0 - e_hi, 1.0 - d_hi, qa[1], qd[1])
    return np.minimum(lo, estimate), np.minimum(hi, estimate)


def box_lower(n: int, agree: int, disagree: int, r: Reviewed) -> float:
    """The four-box construction: pi_a,L q_a,L + pi_d,L q_d,L, each bound at alpha / 4."""
    part = ALPHA / 4
    qa = stats.lower_bound(r.acceptable_agree, r.reviewed_agree, part)
    qd = stats.lower_bound(r.acceptable_disagree, r.reviewed_disagree, part)
    return stats.lower_bound(agree, n, part) * qa + stats.lower_bound(disagree, n, part) * qd


def clears(rule: str, state: tuple[int, int, int, Reviewed]) -> bool:
    """The real function's answer: does the rule's lower bound reach the gate here?"""
    if rule == "box":
        return box_lower(*state) >= ADJ_GATE
    return adjudicated(*state, alpha=ALPHA).lower >= ADJ_GATE


def chunk_upper(bounds: Bounds, first: States, last: States, rule: str) -> Floats:
    """An upper bound on the rule's lower bound at every state between ``first`` and ``last``
    of a stream: every count only grows, lower_bound grows with successes and falls with
    failures, so each component is bounded by mixing the counts at the two ends."""
    grid = ADJ_GRIDS[0]

    def most(s: Ints, f: Ints) -> Floats:
        return bounds.bracket(s, f, grid)[1]

    ra, rd = first.reviewed_agree, first.reviewed_disagree
    qa = most(last.acceptable_agree, ra - first.acceptable_agree)
    qd = most(last.acceptable_disagree, rd - first.acceptable_disagree)
    n1, n2 = first.n, last.n
    if rule == "box":
        pa = most(last.agree, n1 - first.agree)
        pd = most(last.disagree, n1 - first.disagree)
        return pa * qa + pd * qd
    errors = n1 - first.agree - first.disagree
    # The upper bounds on the error and disagreement shares are at least these.
    e_hi = 1.0 - most(n2 - errors, errors)
    d_hi = 1.0 - most(n2 - first.disagree, first.disagree)
    return simplex_lower(e_hi, d_hi, qa, qd)


def first_clearing(bounds: Bounds, st: States, rule: str) -> Ints:
    """Per stream (row), the first column at which the rule's lower bound reaches the gate, -1
    if none. Bounds over chunks of ADJ_CHUNK comparisons rule out most states, and so does the
    estimate (both lower bounds are at most the estimate); coarse brackets settle most others,
    finer ones and exact values the rest, and the real function any state whose bound is
    within ADJ_EPS of the gate."""
    rows, cols = st.n.shape
    starts = np.arange(0, cols, ADJ_CHUNK)
    ends = np.minimum(starts + ADJ_CHUNK, cols) - 1
    chunk = chunk_upper(bounds, st.take((slice(None), starts)), st.take((slice(None), ends)), rule)
    possible = np.repeat(chunk >= ADJ_GATE - ADJ_EPS, ADJ_CHUNK, axis=1)[:, :cols]
    i, j = np.nonzero(possible & (st.estimate() >= ADJ_GATE - ADJ_EPS))
    flat = st.take((i, j))
    hit = np.full(rows, cols)
    for grid in (*ADJ_GRIDS, (0, 0)):
        if not i.size:
            break
        lo, hi = brackets(bounds, flat, rule, grid)
        yes = lo >= ADJ_GATE + ADJ_EPS
        if not grid[0]:
            for k in np.flatnonzero(np.abs(lo - ADJ_GATE) < ADJ_EPS).tolist():
                yes[k] = clears(rule, flat.at(k))
        np.minimum.at(hit, i[yes], j[yes])
        # Still open: might clear, and before the stream's first sure clearing.
        keep = ~yes & (hi >= ADJ_GATE - ADJ_EPS) & (j < hit[i])
        i, j, flat = i[keep], j[keep], flat.take(np.flatnonzero(keep))
    return np.where(hit < cols, hit, -1)


@dataclass(frozen=True)
class AdjRow:
    false_promotion: float
    n: tuple[float, float]  # median, p90 comparisons to clear at p = gate + lift
    reviews: tuple[float, float]  # median, p90 reviews done by then
    agreement_reviews: float  # median reviews of agreements done by then
    never: int


def adj_simulate(
    truth: Truth, rate: float, share: float, bounds: Bounds, rng: np.random.Generator
) -> dict[str, AdjRow]:
    """Streams of comparisons and queue reviews, with p = gate and p = gate + lift; per rule,
    when its lower bound first reaches the gate.

    The two hypotheses share the comparisons and the choice of reviewed cases (the queue never
    sees an answer); a review's outcome is U < q of its stratum, one U per review.
    """
    shape = (ADJ_STREAMS,)
    a, d, ra, rd = (np.zeros(shape, np.int64) for _ in range(4))
    # Acceptable reviews so far per hypothesis: of agreements, of disagreements.
    acc = [[np.zeros(shape, np.int64) for _ in range(2)] for _ in range(2)]
    # (rule, hypothesis) -> per stream: comparisons, reviews, agreement reviews at clearing.
    # The four-box construction is only timed: it is not what ships.
    keys = [("simplex", 0), ("simplex", 1), ("box", 1)]
    found = {key: np.full((3, ADJ_STREAMS), np.inf) for key in keys}
    cleared: dict[tuple[str, int], list[tuple[int, int, int, Reviewed]]] = {k: [] for k in found}
    size = (ADJ_STREAMS, ADJ_BLOCK)
    for start in range(0, ADJ_HORIZON, ADJ_BLOCK):
        verdict = rng.random(size)
        agree = a[:, np.newaxis] + np.cumsum(verdict < truth.pi_a, axis=1)
        is_d = (verdict >= truth.pi_a) & (verdict < truth.pi_a + truth.pi_d)
        disagree = d[:, np.newaxis] + np.cumsum(is_d, axis=1)
        review = rng.random(size) < rate
        pick_agree = rng.random(size) < share
        outcome = rng.random(size)
        ra_col, rd_col = np.empty(size, np.int64), np.empty(size, np.int64)
        ra_start, rd_start = ra.copy(), rd.copy()
        for j in range(ADJ_BLOCK):
            open_a = agree[:, j] > ra
            open_d = disagree[:, j] > rd
            # The disagreements with probability 1 - share, else the agreements; the other
            # stratum when the drawn one has no unreviewed case left.
            to_a = review[:, j] & open_a & (pick_agree[:, j] | ~open_d)
            ra += to_a
            rd += review[:, j] & open_d & ~to_a
            ra_col[:, j], rd_col[:, j] = ra, rd
        # Which comparisons were followed by a review of each stratum; its outcome is U < q.
        new_a = np.diff(ra_col, axis=1, prepend=ra_start[:, np.newaxis]).astype(bool)
        new_d = np.diff(rd_col, axis=1, prepend=rd_start[:, np.newaxis]).astype(bool)
        acc_cols = []
        for h in range(2):
            aa_col = acc[h][0][:, np.newaxis] + np.cumsum(new_a & (outcome < truth.q_a[h]), axis=1)
            ad_col = acc[h][1][:, np.newaxis] + np.cumsum(new_d & (outcome < truth.q_d[h]), axis=1)
            acc[h] = [aa_col[:, -1].copy(), ad_col[:, -1].copy()]
            acc_cols.append((aa_col, ad_col))
        a, d = agree[:, -1].copy(), disagree[:, -1].copy()
        n = np.broadcast_to(np.arange(start + 1, start + ADJ_BLOCK + 1, dtype=np.int64), size)
        for (rule, h), out in found.items():
            open_rows = np.flatnonzero(~np.isfinite(out[0]))
            if not open_rows.size:
                continue
            st = States(n, agree, disagree, ra_col, rd_col, *acc_cols[h]).take(open_rows)
            hit = first_clearing(bounds, st, rule)
            i = np.flatnonzero(hit >= 0)
            at = st.take((i, hit[i]))
            out[:, open_rows[i]] = (
                at.n,
                at.reviewed_agree + at.reviewed_disagree,
                at.reviewed_agree,
            )
            cleared[rule, h].extend(at.at(k) for k in range(i.size))
    # Belt and braces: the real function agrees at every false promotion and at a sample of
    # the other clearings.
    for (rule, h), states in cleared.items():
        for state in states if h == 0 else states[:: max(1, len(states) // ADJ_CHECKED)]:
            if not clears(rule, state):
                raise AssertionError(f"{rule} was counted as clearing at {state}; it does not")
            bounds.verified += 1
    rows = {}
    for rule in ADJ_RULES:
        alt = found[rule, 1]
        null = found.get((rule, 0))
        rows[rule] = AdjRow(
            false_promotion=math.nan if null is None else float(np.isfinite(null[0]).mean()),
            n=(quantile(alt[0], 0.5), quantile(alt[0], 0.9)),
            reviews=(quantile(alt[1], 0.5), quantile(alt[1], 0.9)),
            agreement_reviews=quantile(alt[2], 0.5),
            never=int((~np.isfinite(alt[0])).sum()),
        )
    return rows


Case = tuple[str, float, float]


def fmt_adj(value: float, never: str = f">{ADJ_HORIZON}") -> str:
    return never if value == np.inf else f"{value:.0f}"


def adjudicated_section() -> dict[Case, dict[str, AdjRow]]:
    """Simulate ADJ_CASES, print the table, return the rows."""
    rng = np.random.default_rng(SEED + 1)
    bounds = Bounds(np.random.default_rng(SEED + 2))
    truths = {t.name: t for t in TRUTHS}
    print()
    print(
        f"adjudicated estimate (shadow.adjudicated): gate {ADJ_GATE}, alpha {ALPHA}, "
        f"{ADJ_STREAMS} streams of {ADJ_HORIZON:,} comparisons, lower bound checked after "
        "every comparison"
    )
    for t in TRUTHS:
        print(
            f"  {t.name}: pi_a {t.pi_a}, pi_d {t.pi_d}, pi_e {1 - t.pi_a - t.pi_d:.3f}; "
            f"at p = gate: q_a {t.q_a[0]:.3f}, q_d {t.q_d[0]:.3f}; "
            f"at p = gate + {ADJ_LIFT}: q_a {t.q_a[1]:.3f}, q_d {t.q_d[1]:.3f} "
            f"({TRUTH_NOTES[t.name]})"
        )
    print(
        "  r: one review after a comparison with probability r, from the unreviewed "
        "disagreements with probability 1 - share, else the agreements (the other when empty)"
    )
    print(
        "  false-promotion: p = gate; comparisons/reviews (median, p90) to clear: "
        f"p = gate + {ADJ_LIFT}; box: pi_a,L q_a,L + pi_d,L q_d,L for comparison"
    )
    header = (
        f"{'truth':>5} | {'r':>4} | {'share':>5} | {'false-promotion':>15} | "
        f"{'comparisons':>13} | {'reviews':>11} | {'of agreements':>13} | {'never':>5} | "
        f"{'box: comparisons':>16} | {'box: reviews':>12}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for name, rate, share in ADJ_CASES:
        rows = adj_simulate(truths[name], rate, share, bounds, rng)
        results[name, rate, share] = rows
        ours, box = rows["simplex"], rows["box"]
        print(
            f"{name:>5} | {rate:>4} | {share:>5} | {ours.false_promotion:>15.4f} | "
            f"{fmt_adj(ours.n[0]):>6} {fmt_adj(ours.n[1]):>6} | "
            f"{fmt_adj(ours.reviews[0], '-'):>5} {fmt_adj(ours.reviews[1], '-'):>5} | "
            f"{fmt_adj(ours.agreement_reviews, '-'):>13} | {ours.never:>5} | "
            f"{fmt_adj(box.n[0]):>7} {fmt_adj(box.n[1]):>8} | "
            f"{fmt_adj(box.reviews[0], '-'):>5} {fmt_adj(box.reviews[1], '-'):>6}"
        )
    print(
        f"  ({len(bounds.cache):,} distinct bounds evaluated (vectorised), {bounds.verified:,} "
        "checked against shadow.stats / shadow.adjudicated)"
    )
    return results


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

    adj_started = time.perf_counter()
    adj = adjudicated_section()
    adj_seconds = time.perf_counter() - adj_started

    print()
    print("single uncached lower_bound evaluation (s ~ 0.95 n):")
    for n, repeats in ((10**3, 200), (10**5, 50), (10**7, 10)):
        median, worst = time_lower_bound(n, repeats)
        print(f"  n={n:>10,}: median {median * 1e3:.3f} ms, max {worst * 1e3:.3f} ms")
    print(
        f"whole bench: {time.perf_counter() - started:.1f} s "
        f"(adjudicated estimate: {adj_seconds:.1f} s)"
    )

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
    for case, adj_rows in adj.items():
        rate = adj_rows["simplex"].false_promotion
        if not rate <= ALPHA:  # also fails on NaN
            failures.append(f"adjudicated false-promotion {rate:.4f} > {ALPHA} for {case}")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print(
        "OK: lower_bound meets both requirements at gate 0.95; the drift detector its goals; "
        "the adjudicated lower bound promotes falsely at most alpha of the time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
