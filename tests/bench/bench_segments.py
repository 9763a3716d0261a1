"""Bench: the per-segment gate (``per_segment``, shadow.segments) under continuous monitoring.

Run as ``python -m tests.bench.bench_segments`` (``make bench-stats`` runs it after
bench_stats). Streams of comparisons, each from one of three segments, are checked after every
comparison against a gate of 0.95 (alpha 0.05): the overall lower bound and each segment's own
lower bound must reach the gate.

- **False promotion with one segment exactly at the gate** (the other two well above): the
  share of streams ever promoted, for the intersection-union rule the sidecar uses (each segment
  at alpha) and for a Bonferroni split (each at alpha / 3). The guarantee asks for <= alpha.
- **Cost**: with every segment at gate + 0.03, the median / p90 comparisons to promote, both
  rules.
- **Simpson's paradox**: two segments at 0.99 (90% of the traffic) and one at 0.80: overall
  0.971, above the gate. The overall bound alone promotes; the per-segment gate must never.

Exits 1 when the sidecar's rule promotes more than alpha of the at-gate streams or ever promotes
a Simpson stream. Every segment's bound is reduced to a threshold s*(n) (the smallest success
count with lower_bound(s, n) >= gate), so streams are checked with numpy comparisons.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import numpy.typing as npt

from shadow.stats import lower_bound

SEED = 20261207
STREAMS = 2000
HORIZON = 6000
CHUNK = 250
ALPHA = 0.05
GATE = 0.95
SHARES = (0.4, 0.4, 0.2)  # the traffic of each segment
SEGMENTS = 3

Ints = npt.NDArray[np.int64]


def thresholds(alpha: float) -> Ints:
    """s*(n) for n = 0..HORIZON: the smallest s with lower_bound(s, n, alpha) >= GATE (n + 1
    when none; n = 0 never passes)."""
    out = np.empty(HORIZON + 1, dtype=np.int64)
    out[0] = 1
    prev = 0
    for n in range(1, HORIZON + 1):
        s = max(0, prev - 2)
        while s > 0 and lower_bound(s, n, alpha) >= GATE:
            s = max(0, s - 8)
        while s <= n and lower_bound(s, n, alpha) < GATE:
            s += 1
        out[n] = s
        prev = min(s, n)
    return out


def first_promotion(
    rng: np.random.Generator,
    truth: tuple[float, ...],
    shares: tuple[float, ...],
    overall: Ints,
    per_segment: Ints | None,
) -> npt.NDArray[np.float64]:
    """The first comparison at which each stream is promoted (inf if never): the overall
    bound passes and, with ``per_segment``, so does every segment's."""
    found: list[npt.NDArray[np.float64]] = []
    for start in range(0, STREAMS, CHUNK):
        size = min(CHUNK, STREAMS - start)
        segment = rng.choice(len(shares), size=(size, HORIZON), p=shares)
        p = np.asarray(truth)[segment]
        ok = rng.random((size, HORIZON)) < p
        n = np.arange(1, HORIZON + 1)
        passed = np.cumsum(ok, axis=1) >= overall[n][np.newaxis, :]
        if per_segment is not None:
            for k in range(len(shares)):
                mine = segment == k
                n_k = np.cumsum(mine, axis=1)
                s_k = np.cumsum(mine & ok, axis=1)
                passed &= s_k >= per_segment[n_k]
        ever = passed.any(axis=1)
        first = passed.argmax(axis=1).astype(np.float64) + 1.0
        found.append(np.where(ever, first, np.inf))
    return np.concatenate(found)


def summary(first: npt.NDArray[np.float64], horizon: int = HORIZON) -> tuple[float, str, str]:
    """The share of streams that got there (finite first time), and the median and p90 of
    the first time (``>horizon`` while fewer than that share got there)."""
    rate = float(np.isfinite(first).mean())
    finite = first[np.isfinite(first)]

    def q(x: float) -> str:
        if len(finite) < len(first) * x:
            return f">{horizon}"
        return f"{np.quantile(first, x, method='inverted_cdf'):.0f}"

    return rate, q(0.5), q(0.9)


def main() -> int:
    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    overall = thresholds(ALPHA)
    iut = overall  # each segment at alpha: the same thresholds
    split = thresholds(ALPHA / SEGMENTS)
    print(
        f"seed={SEED} streams={STREAMS} horizon={HORIZON} alpha={ALPHA} gate={GATE} "
        f"segments={SEGMENTS} shares={SHARES} (checked after every comparison)"
    )
    at_gate = (0.99, 0.99, GATE)
    lifted = (GATE + 0.03,) * SEGMENTS
    simpson = (0.99, 0.99, 0.80)
    simpson_shares = (0.45, 0.45, 0.10)
    rows = []
    for name, limits in (("each segment at alpha (sidecar)", iut), ("Bonferroni alpha/3", split)):
        false = summary(first_promotion(rng, at_gate, SHARES, overall, limits))
        cost = summary(first_promotion(rng, lifted, SHARES, overall, limits))
        rows.append((name, false[0], cost[1], cost[2]))
    header = f"{'rule':<32} | {'false promotion':>15} | {'median n':>8} | {'p90 n':>6}"
    print()
    print("false promotion: one segment exactly at the gate, two at 0.99;")
    print("median/p90: every segment at gate + 0.03")
    print(header)
    print("-" * len(header))
    for name, rate, median, p90 in rows:
        print(f"{name:<32} | {rate:>15.4f} | {median:>8} | {p90:>6}")
    overall_only = summary(first_promotion(rng, simpson, simpson_shares, overall, None))[0]
    per_seg = summary(first_promotion(rng, simpson, simpson_shares, overall, iut))[0]
    print()
    print(
        f"Simpson's paradox (segments {simpson}, shares {simpson_shares}, overall "
        f"{sum(p * w for p, w in zip(simpson, simpson_shares, strict=True)):.3f}):"
    )
    print(f"  promoted by the overall bound alone: {overall_only:.4f}")
    print(f"  promoted by the per-segment gate:    {per_seg:.4f}")
    print(f"\n({time.perf_counter() - started:.1f} s)")
    failed = False
    if rows[0][1] > ALPHA:
        print(f"FAIL: false promotion {rows[0][1]:.4f} > alpha {ALPHA}")
        failed = True
    if per_seg > 0:
        print(f"FAIL: the per-segment gate promoted {per_seg:.4f} of the Simpson streams")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
