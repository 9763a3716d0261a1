"""Tests for shadow.stats, pinned against independent scipy computations.

scipy (betainc, betaln, quad, brentq, norm) is the reference throughout; the module under test
uses none of it. No test asserts wall-clock times (the bench measures those).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special
from scipy.stats import norm

from shadow import stats
from shadow.stats import lower_bound, robbins_lower, upper_bound, wilson_lower

LOG_20 = math.log(20.0)


# ---------------------------------------------------------------- scipy references


def ref_log_mixture(s: int, n: int, p0: float) -> float:
    """log M_n(p0) via scipy: the integral is B(S+1, F+1) * (1 - I_{p0}(S+1, F+1))."""
    f = n - s
    log_integral = float(special.betaln(s + 1, f + 1)) + math.log(
        float(special.betaincc(s + 1, f + 1, p0))
    )
    return -math.log1p(-p0) + log_integral - s * math.log(p0) - f * math.log1p(-p0)


def quad_mixture(s: int, n: int, p0: float) -> float:
    """M_n(p0) by direct numerical integration of the defining formula (small n only)."""
    f = n - s

    def integrand(q: float) -> float:
        return math.exp(s * math.log(q / p0) + f * math.log1p(-q) - f * math.log1p(-p0))

    points = [s / n] if p0 < s / n < 1.0 else None
    value, _ = integrate.quad(integrand, p0, 1.0, points=points, epsabs=0.0, epsrel=1e-12)
    return float(value) / (1.0 - p0)


def ref_root(log_e: Callable[[int, int, float], float], s: int, n: int, alpha: float) -> float:
    """brentq on a decreasing log e-value between a tiny p0 and s/n."""
    hi = s / n if s < n else 1.0 - 1e-12
    root = optimize.brentq(
        lambda p: log_e(s, n, p) + math.log(alpha), 1e-300, hi, xtol=1e-15, rtol=1e-13
    )
    return float(root)


def ref_log_robbins(s: int, n: int, p: float) -> float:
    f = n - s
    return float(special.betaln(s + 1, f + 1)) - s * math.log(p) - f * math.log1p(-p)


def crossing_probability(threshold: list[int], p: float) -> float:
    """Exact P(S_n >= threshold[n-1] for some n <= len(threshold)) for i.i.d. Bernoulli(p).

    Dynamic programming over the number of successes, absorbing paths once they cross, so
    anytime validity is checked without Monte Carlo noise.
    """
    alive = np.array([1.0])  # alive[s] = P(S_n = s and never crossed so far)
    crossed = 0.0
    for n, t in enumerate(threshold, start=1):
        nxt = np.zeros(n + 1)
        nxt[:-1] += alive * (1.0 - p)
        nxt[1:] += alive * p
        crossed += float(nxt[t:].sum())
        nxt[t:] = 0.0
        alive = nxt
    return crossed


def thresholds(bound: Callable[[int, int], float], gate: float, horizon: int) -> list[int]:
    """Smallest s with bound(s, n) >= gate for n = 1..horizon (n + 1 when unreachable)."""
    out = []
    for n in range(1, horizon + 1):
        lo, hi = 0, n + 1  # bound(lo - 1, n) < gate <= bound(hi, n), by monotonicity in s
        while lo < hi:
            mid = (lo + hi) // 2
            if bound(mid, n) >= gate:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


# ------------------------------------------------------------------ incomplete beta

PARAMS = [0.5, 1.0, 1.5, 2.0, 7.5, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7]
XS = [1e-300, 1e-100, 1e-10, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 1 - 1e-10]


@pytest.mark.parametrize("a", PARAMS)
def test_log_betainc_matches_scipy_on_grid(a: float) -> None:
    for b, x in itertools.product(PARAMS, XS):
        ref = float(special.betainc(a, b, x))
        if not 1e-300 < ref < 1.0:
            continue  # outside double range: covered by the closed forms below
        ours = stats._log_betainc(a, b, x)
        assert math.expm1(ours - math.log(ref)) == pytest.approx(0.0, abs=1e-8), (a, b, x)


@pytest.mark.parametrize("a", [1.0, 10.0, 1e3, 1e5, 1e7])
def test_log_betainc_near_the_branch_switch(a: float) -> None:
    # The continued fraction converges slowest at x ~ (a+1)/(a+b+2): probe around it.
    for b in [1.0, 10.0, 1e3, 1e5, 1e7]:
        mode = (a + 1.0) / (a + b + 2.0)
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
        for k in [-5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 5.0]:
            x = mode + k * sd
            if not 0.0 < x < 1.0:
                continue
            ref = float(special.betainc(a, b, x))
            if not 1e-300 < ref < 1.0:
                continue
            ours = stats._log_betainc(a, b, x)
            assert math.expm1(ours - math.log(ref)) == pytest.approx(0.0, abs=1e-8), (a, b, x)
            # The complement too, which is what the mixture uses.
            assert -math.expm1(ours) == pytest.approx(float(special.betaincc(a, b, x)), rel=1e-7)


@pytest.mark.parametrize("a", [1.0, 1e3, 1e5, 1e7])
@pytest.mark.parametrize("x", [1e-300, 1e-10, 0.5, 0.9, 0.999])
def test_log_betainc_closed_forms_beyond_double_range(a: float, x: float) -> None:
    # I_x(a, 1) = x^a and I_x(1, b) = 1 - (1-x)^b hold far below 1e-300, where scipy underflows.
    assert stats._log_betainc(a, 1.0, x) == pytest.approx(a * math.log(x), rel=1e-12)
    expected = math.log(-math.expm1(a * math.log1p(-x)))
    assert stats._log_betainc(1.0, a, x) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_log_betainc_endpoints_and_domain() -> None:
    assert stats._log_betainc(3.0, 4.0, 0.0) == -math.inf
    assert stats._log_betainc(3.0, 4.0, 1.0) == 0.0
    for a, b, x in [(0.0, 1.0, 0.5), (1.0, -1.0, 0.5), (1.0, 1.0, 1.5), (1.0, 1.0, math.nan)]:
        with pytest.raises(ValueError, match="need a > 0"):
            stats._log_betainc(a, b, x)


# -------------------------------------------------------------------- e-process M_n

SN_TABLE = [
    (1, 1),
    (1, 10),
    (5, 10),
    (9, 10),
    (10, 10),
    (47, 50),
    (90, 100),
    (100, 100),
    (500, 1000),
    (900, 1000),
    (950, 1000),
    (999, 1000),
    (1000, 1000),
    (9500, 10_000),
    (95_000, 100_000),
    (9_500_000, 10_000_000),
    (3, 10_000_000),
]


@pytest.mark.parametrize(("s", "n"), SN_TABLE)
def test_log_mixture_matches_scipy_betainc(s: int, n: int) -> None:
    for frac in [0.5, 0.9, 0.99, 0.999, 0.9999]:
        p0 = frac * s / n
        ours = stats._log_mixture_e(s, n - s, p0)
        assert ours == pytest.approx(ref_log_mixture(s, n, p0), rel=1e-8, abs=1e-8), p0
    for p0 in [1e-9, 1e-4, 0.3, 0.8, 0.97, 0.9999]:  # either side of s/n, both branches
        if float(special.betaincc(s + 1, n - s + 1, p0)) < 1e-300:
            continue  # the reference underflows
        ours = stats._log_mixture_e(s, n - s, p0)
        assert ours == pytest.approx(ref_log_mixture(s, n, p0), rel=1e-8, abs=1e-8), p0


@pytest.mark.parametrize(("s", "n"), [(1, 1), (1, 10), (5, 10), (47, 50), (90, 100), (180, 200)])
def test_log_mixture_matches_quadrature(s: int, n: int) -> None:
    for p0 in [0.05, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99]:
        ours = math.exp(stats._log_mixture_e(s, n - s, p0))
        assert ours == pytest.approx(quad_mixture(s, n, p0), rel=1e-8), p0


def test_log_mixture_limit_at_one() -> None:
    # As p0 -> 1 the mixture concentrates at q = p0 and M -> 1/(F+1).
    assert stats._log_mixture_e(7, 3, 1.0) == pytest.approx(-math.log(4.0))
    assert stats._log_mixture_e(7, 3, 1.0 - 1e-9) == pytest.approx(-math.log(4.0), abs=1e-7)


GRID_SN = [(s, n) for n in [1, 2, 5, 20, 100, 1000, 10**5, 10**7] for s in {0, 1, n // 2, n - 1, n}]


@pytest.mark.parametrize(("s", "n"), GRID_SN)
def test_log_mixture_is_decreasing_in_p0(s: int, n: int) -> None:
    # The bisection for the bound relies on this; with q = p0 + (1 - p0) t the mixture is
    # integral_0^1 (1 + t (1/p0 - 1))^S (1 - t)^F dt, decreasing in p0 (constant when S = 0).
    grid = [1e-12, 1e-6, *np.linspace(0.001, 0.999, 400).tolist(), 1 - 1e-6, 1 - 1e-12, 1.0]
    values = [stats._log_mixture_e(s, n - s, p0) for p0 in grid]
    for p0, left, right in zip(grid[1:], values, values[1:], strict=False):
        assert right <= left + 1e-9 * max(1.0, abs(left)), (p0, left, right)
    if s > 0:
        assert values[0] > values[-1]


# ------------------------------------------------------------------ lower / upper bound


@pytest.mark.parametrize(("s", "n"), [sn for sn in SN_TABLE if sn[0] > 0])
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_lower_bound_matches_brentq_reference(s: int, n: int, alpha: float) -> None:
    expected = ref_root(ref_log_mixture, s, n, alpha)
    got = lower_bound(s, n, alpha)
    assert got == pytest.approx(expected, abs=1e-6, rel=1e-6)
    # Rounded down: the returned p0 is itself still rejected.
    assert stats._log_mixture_e(s, n - s, got) >= math.log(1.0 / alpha)


@pytest.mark.parametrize("s", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [10, 1000, 10**7])
def test_lower_bound_against_exact_rational_arithmetic(s: int, n: int) -> None:
    # With r = 1/p0 - 1, M = sum_k C(S, k) r^k B(k+1, F+1) is a polynomial with rational
    # coefficients for small S: bisect it exactly in fractions (scipy's betaincc is only
    # good to ~1e-7 relative in this corner).
    f = n - s
    coef = [
        Fraction(math.comb(s, k) * math.factorial(k), math.prod(range(f + 1, f + k + 2)))
        for k in range(s + 1)
    ]
    lo, hi = Fraction(0), Fraction(10**30)
    while hi - lo > hi * Fraction(1, 10**14):
        mid = (lo + hi) / 2
        if sum(c * mid**k for k, c in enumerate(coef)) >= 20:
            hi = mid
        else:
            lo = mid
    got = lower_bound(s, n)
    assert got == pytest.approx(float(1 / (1 + hi)), rel=1e-9)
    assert got <= float(1 / (1 + lo))  # never above the exact root's bracket


def test_lower_bound_pinned_values() -> None:
    # S = n: M = (1 - p0^(n+1)) / ((n+1)(1-p0)p0^n); n = 1 gives M = (1 + p0)/(2 p0) = 20.
    assert lower_bound(1, 1) == pytest.approx(1.0 / 39.0, rel=1e-9)
    # S = 1: M = 1/(F+1) + (1/p0 - 1)/((F+1)(F+2)), solvable in closed form.
    f = 10**7 - 1
    exact = 1.0 / (1.0 + (20.0 - 1.0 / (f + 1)) * (f + 1) * (f + 2))
    assert lower_bound(1, 10**7) == pytest.approx(exact, rel=1e-9)
    assert round(lower_bound(950, 1000), 4) == 0.9268
    assert round(lower_bound(90, 100), 4) == 0.7947


def test_upper_bound_is_the_mirror() -> None:
    for s, n in SN_TABLE:
        assert upper_bound(s, n) == pytest.approx(1.0 - lower_bound(n - s, n), abs=1e-15)
    assert upper_bound(0, 1) == pytest.approx(38.0 / 39.0, rel=1e-9)


def test_edge_cases() -> None:
    assert lower_bound(0, 0) == 0.0
    assert upper_bound(0, 0) == 1.0
    assert robbins_lower(0, 0) == 0.0
    assert wilson_lower(0, 0) == 0.0
    for n in [1, 10, 10**7]:
        assert lower_bound(0, n) == 0.0
        assert upper_bound(n, n) == 1.0
        assert robbins_lower(0, n) == 0.0
        assert wilson_lower(0, n) == 0.0
    # Huge n at the extremes stays finite and ordered.
    assert 0.0 < lower_bound(10**7, 10**7) < 1.0
    assert 0.0 < upper_bound(0, 10**7) < 1e-5


@pytest.mark.parametrize(
    ("successes", "trials", "alpha", "message"),
    [
        (-1, 5, 0.05, "successes must be in"),
        (6, 5, 0.05, "successes must be in"),
        (0, -1, 0.05, "trials must be >= 0"),
        (1.0, 5, 0.05, "successes must be an int"),
        (1, 5.0, 0.05, "trials must be an int"),
        (True, 5, 0.05, "successes must be an int"),
        (1, 5, 0.0, "alpha must be in"),
        (1, 5, 1.0, "alpha must be in"),
        (1, 5, -0.1, "alpha must be in"),
        (1, 5, math.nan, "alpha must be in"),
        (1, 5, "0.05", "alpha must be a float"),
        (1, 5, True, "alpha must be a float"),
    ],
)
def test_arguments_are_validated(
    successes: object, trials: object, alpha: object, message: str
) -> None:
    for fn in (lower_bound, upper_bound, robbins_lower, wilson_lower):
        with pytest.raises(ValueError, match=message):
            fn(successes, trials, alpha)  # type: ignore[arg-type]


def test_lower_bound_is_memoised_with_a_bounded_cache() -> None:
    info = stats._lower_cached.cache_info()
    assert info.maxsize == 65536
    first = lower_bound(123, 456)
    hits = stats._lower_cached.cache_info().hits
    assert lower_bound(123, 456) == first
    assert stats._lower_cached.cache_info().hits == hits + 1


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=100_000),
    frac=st.floats(min_value=0.0, max_value=1.0),
    alpha=st.sampled_from([0.01, 0.05, 0.1]),
)
def test_bounds_are_monotone_and_bracket_the_estimate(n: int, frac: float, alpha: float) -> None:
    s = min(n - 1, int(frac * n))
    lo, lo_next = lower_bound(s, n, alpha), lower_bound(s + 1, n, alpha)
    up, up_next = upper_bound(s, n, alpha), upper_bound(s + 1, n, alpha)
    # One more agreement at the same n never lowers either bound ...
    assert lo_next >= lo
    assert up_next >= up
    # ... one more disagreement never raises the lower bound ...
    assert lower_bound(s, n + 1, alpha) <= lo
    # ... and the bounds bracket the point estimate.
    assert 0.0 <= lo <= s / n <= up <= 1.0
    assert lo_next <= (s + 1) / n <= up_next


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=1, max_value=100_000), frac=st.floats(min_value=0.0, max_value=1.0))
def test_robbins_and_wilson_bracket_the_estimate(n: int, frac: float) -> None:
    s = min(n - 1, int(frac * n))
    assert 0.0 <= robbins_lower(s, n) <= robbins_lower(s + 1, n) <= (s + 1) / n
    assert 0.0 <= wilson_lower(s, n) <= wilson_lower(s + 1, n) <= (s + 1) / n


# --------------------------------------------------------------- anytime validity, exact


@pytest.mark.parametrize("gate", [0.9, 0.95])
def test_lower_bound_is_anytime_valid_exactly(gate: float) -> None:
    # Exact probability (no simulation) that monitoring after every comparison ever shows
    # lower_bound >= gate when the true rate equals the gate.
    horizon = 400
    threshold = thresholds(lower_bound, gate, horizon)
    # More comparisons need at most one more agreement to stay at the gate.
    assert all(0 <= b - a <= 1 for a, b in itertools.pairwise(threshold))
    assert crossing_probability(threshold, gate) <= 0.05


def test_naive_wilson_is_not_anytime_valid() -> None:
    # The failure the construction exists to avoid: the one-shot bound, monitored after every
    # comparison, promotes far more often than alpha.
    threshold = thresholds(wilson_lower, 0.9, 400)
    assert crossing_probability(threshold, 0.9) > 0.1


# -------------------------------------------------------------------------- Robbins


def test_robbins_reference_values() -> None:
    assert round(robbins_lower(90, 100), 4) == 0.7717
    assert round(robbins_lower(100, 100), 4) == 0.9267
    assert round(robbins_lower(900, 1000), 4) == 0.8616


@pytest.mark.parametrize(("s", "n"), [sn for sn in SN_TABLE if sn[0] > 0])
def test_robbins_matches_brentq_reference(s: int, n: int) -> None:
    expected = ref_root(ref_log_robbins, s, n, 0.05)
    assert robbins_lower(s, n) == pytest.approx(expected, abs=1e-6, rel=1e-6)


# --------------------------------------------------------------------------- Wilson


@pytest.mark.parametrize("alpha", [1e-10, 0.001, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.7, 0.99])
def test_normal_quantile_matches_scipy(alpha: float) -> None:
    assert stats._norm_upper_quantile(alpha) == pytest.approx(
        float(norm.isf(alpha)), rel=1e-13, abs=1e-14
    )


@pytest.mark.parametrize(("s", "n"), [(1, 1), (3, 10), (47, 50), (900, 1000), (999, 1000)])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_matches_closed_form(s: int, n: int, alpha: float) -> None:
    z = float(norm.ppf(1.0 - alpha))
    phat = s / n
    centre = phat + z * z / (2 * n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    expected = (centre - half) / (1 + z * z / n)
    assert wilson_lower(s, n, alpha) == pytest.approx(expected, rel=1e-12)


def test_wilson_known_value() -> None:
    # 90/100, z = 1.6448536: (0.9 + 0.013528 - 0.046471) / 1.027055.
    assert round(wilson_lower(90, 100), 4) == 0.8396
