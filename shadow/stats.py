"""Anytime-valid confidence bounds for a Bernoulli agreement rate.

Contract
--------
``lower_bound(s, n, alpha)`` and ``upper_bound(s, n, alpha)`` take ``s`` agreements out of
``n`` comparisons and return bounds on the true agreement rate ``p`` that stay valid under
continuous monitoring: the promoter may recompute them after every comparison and act the
first time one crosses a gate, and still

    P(there is some n with lower_bound(S_n, n, alpha) > p) <= alpha,
    P(there is some n with upper_bound(S_n, n, alpha) < p) <= alpha,

for i.i.d. comparisons with rate ``p`` (each statement is one-sided, at level ``alpha``).
``lower_bound <= s/n <= upper_bound``; more agreements at the same ``n`` never lower either
bound. ``n == 0`` gives ``(0.0, 1.0)``.

Guarantee
---------
For a candidate ``p0`` let ``F = n - S`` and

    M_n(p0) = [1/(1 - p0)] * integral_{p0}^{1} q^S (1 - q)^F dq  /  (p0^S (1 - p0)^F),

the likelihood ratio of ``q`` against ``p0`` mixed over ``q`` uniform on ``(p0, 1]``. For every
``p <= p0`` it is a nonnegative supermartingale starting at 1, so Ville's inequality gives
``P(exists n: M_n(p0) >= 1/alpha) <= alpha``. ``M_n`` is strictly decreasing in ``p0``, and
``lower_bound`` is the root of ``M_n(p0) = 1/alpha`` (the confidence sequence is
``[lower_bound, 1]``), found to a relative tolerance of 1e-10 and rounded *down* so numerical
error never makes the bound anti-conservative. ``upper_bound`` is the mirror construction.
See docs/statistics.md for the derivation and measured behaviour.

``wilson_lower`` (one-shot Wilson score bound, NOT valid under monitoring) and
``robbins_lower`` (Robbins' two-sided uniform-prior mixture) are exported for comparison.

This module is pure: only ``math`` and ``functools`` at runtime.
"""

from __future__ import annotations

import functools
import math

__all__ = [
    "betainc",
    "lower_bound",
    "robbins_lower",
    "upper_bound",
    "wilson_lower",
]

# Cache size: hundreds of task types, each revisiting its latest (s, n) many times.
_CACHE_SIZE = 65536
# Root-finding tolerance on log(p0): a relative 1e-10 on p0, so at most 1e-10 absolute.
_LOG_TOL = 1e-10
# Lentz's method replaces exact zeros by this to avoid dividing by zero.
_FPMIN = 1e-300
# Continued-fraction convergence criterion (relative change of the convergent).
_CF_EPS = 1e-15


# --------------------------------------------------------------------------- validation


def _check(successes: int, trials: int, alpha: float) -> None:
    """Raise ValueError unless 0 <= successes <= trials are ints and 0 < alpha < 1."""
    # bool is an int subclass; a True/False count is almost certainly a caller bug.
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if trials < 0:
        raise ValueError(f"trials must be >= 0, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials={trials}], got {successes}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a float, got {type(alpha).__name__} {alpha!r}")
    if not 0.0 < alpha < 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


# ------------------------------------------------------------------ incomplete beta


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _stirling_delta(z: float) -> float:
    """lgamma(z) minus its Stirling approximation (z - 1/2) log z - z + log(2 pi) / 2."""
    if z < 15.0:
        return math.lgamma(z) - ((z - 0.5) * math.log(z) - z + _HALF_LOG_2PI)
    w = 1.0 / (z * z)
    # Next term is 1/(1188 z^9) < 3e-14 for z >= 15.
    return (1.0 / 12.0 - w * (1.0 / 360.0 - w * (1.0 / 1260.0 - w / 1680.0))) / z


def _log_beta(a: float, b: float) -> float:
    """log B(a, b) via lgamma; only used where an absolute error ~1e-8 is harmless."""
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _log_front(a: float, b: float, log_x: float, log_1mx: float) -> float:
    """log[x^a (1 - x)^b / B(a, b)], accurate for large a and b.

    lgamma(10^7) is ~1.5e8, so lgamma(a) + lgamma(b) - lgamma(a + b) leaves an absolute
    error ~3e-8; splitting off Stirling's approximation analytically keeps the large terms
    as a * log(x n / a), which nearly vanishes where it matters, and leaves only small
    corrections to subtract.
    """
    n = a + b
    main = a * (log_x + math.log1p(b / a)) + b * (log_1mx + math.log1p(a / b))
    half = 0.5 * (math.log(a) + math.log(b) - math.log(n)) - _HALF_LOG_2PI
    return main + half - _stirling_delta(a) - _stirling_delta(b) + _stirling_delta(n)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz), converging fast for x < (a+1)/(a+b+2).

    I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) * _betacf(a, b, x).
    """
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
    h = d
    # Near the switch point the number of terms grows like sqrt(max(a, b)).
    max_iter = 200 + int(20.0 * math.sqrt(a + b))
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        # Even step.
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        h *= d * c
        # Odd step.
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge: {a=} {b=} {x=}")


def _log_betainc_cf(a: float, b: float, x: float) -> float:
    """log I_x(a, b) straight from the continued fraction; use only for x < (a+1)/(a+b+2)."""
    # Everything stays in log space: x^a (1-x)^b alone underflows long before n = 10^7.
    front = _log_front(a, b, math.log(x), math.log1p(-x))
    return front - math.log(a) + math.log(_betacf(a, b, x))


def _log_betainc(a: float, b: float, x: float) -> float:
    """log of the regularized incomplete beta function I_x(a, b), for a, b > 0, 0 <= x <= 1."""
    if not (a > 0.0 and b > 0.0 and 0.0 <= x <= 1.0):
        raise ValueError(f"need a > 0, b > 0 and 0 <= x <= 1, got {a=} {b=} {x=}")
    if x == 0.0:
        return -math.inf
    if x == 1.0:
        return 0.0
    if x < (a + 1.0) / (a + b + 2.0):
        return _log_betainc_cf(a, b, x)
    # I_x(a, b) = 1 - I_{1-x}(b, a); the complement's fraction converges fast here, and for
    # a, b >= 1 it is at most ~0.87, so log1p loses no precision.
    return math.log1p(-math.exp(_log_betainc_cf(b, a, 1.0 - x)))


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``: ``P(Beta(a, b) <= x)``, for
    ``a, b > 0`` and ``0 <= x <= 1`` (accurate to about 1e-12 up to ``a + b`` near 10^7)."""
    return math.exp(_log_betainc(a, b, x))


# ------------------------------------------------------------------------ e-values


def _log_mixture_e(s: int, f: int, p0: float) -> float:
    """log M_n(p0) of the one-sided mixture e-process for H0: p <= p0 (0 < p0 <= 1)."""
    if p0 >= 1.0:
        # Limit p0 -> 1: the mixture collapses onto q = p0, leaving integral of (1-t)^F dt.
        return -math.log(f + 1)
    a, b = f + 1, s + 1
    # integral_{p0}^1 q^S (1-q)^F dq = B(S+1, F+1) * I_{1-p0}(F+1, S+1).
    if 1.0 - p0 < (a + 1.0) / (a + b + 2.0):
        # Direct fraction: the powers of p0, 1-p0 and B(S+1, F+1) cancel exactly against the
        # denominator, so nothing large is subtracted.
        return math.log(p0) - math.log(a) + math.log(_betacf(a, b, 1.0 - p0))
    # Complement: I_{1-p0}(F+1, S+1) = 1 - I_{p0}(S+1, F+1).
    log_rest = math.log1p(-math.exp(_log_betainc_cf(b, a, p0)))
    # B(S+1, F+1) / (p0^S (1-p0)^(F+1)) = p0 / front(S+1, F+1, p0).
    log_p0 = math.log(p0)
    return log_p0 - _log_front(b, a, log_p0, math.log1p(-p0)) + log_rest


def _log_robbins_e(s: int, f: int, p: float) -> float:
    """log of Robbins' uniform-mixture martingale B(S+1, F+1) / (p^S (1-p)^F), 0 < p <= 1."""
    if f == 0:
        # B(S+1, 1) = 1/(S+1); also avoids 0 * log(0) at p = 1.
        return -math.log(s + 1) - s * math.log(p)
    log_p, log_1mp = math.log(p), math.log1p(-p)
    # B(S+1, F+1) / (p^S (1-p)^F) = p (1-p) / front(S+1, F+1, p).
    return log_p + log_1mp - _log_front(s + 1, f + 1, log_p, log_1mp)


def _log_e(s: int, f: int, p: float, robbins: bool) -> float:
    return _log_robbins_e(s, f, p) if robbins else _log_mixture_e(s, f, p)


# --------------------------------------------------------------------- root finding


def _start_log_p(s: int, f: int, log_threshold: float, robbins: bool) -> float:
    """A log(p0) at which the e-value provably reaches the threshold (left bracket end)."""
    log_b = _log_beta(s + 1, f + 1)
    # Both e-values are >= r^S B(S+1, F+1) with r = 1/p0 - 1 (mixture) or r = 1/p0
    # (Robbins), so any p0 making that bound >= 1/alpha rejects.
    log_r = (log_threshold - log_b) / s
    if robbins:
        return -log_r
    # p0 = 1 / (1 + r), computed without overflow for large r.
    return -log_r - math.log1p(math.exp(-log_r)) if log_r > 0 else -math.log1p(math.exp(log_r))


def _lower_end(s: int, f: int, log_threshold: float, robbins: bool) -> float:
    """Smallest p0 (rounded down, rel. tol 1e-10) with e-value(p0) < exp(log_threshold).

    The log e-value is decreasing in p0 on (0, s/n] and <= 0 at p0 = s/n, so the root is
    bracketed by [start, s/n]. The search runs in u = log(p0) as regula falsi with the
    Illinois fix on phi = sqrt(log e - log e(s/n)) - sqrt(log_threshold - log e(s/n)): the
    log e-value grows roughly quadratically away from s/n, so phi is close to linear and
    the search needs ~11 evaluations where bisection needs ~35. It bisects whenever the
    bracket fails to halve in two steps, which bounds the worst case.
    """
    if s == 0:
        return 0.0
    lo = _start_log_p(s, f, log_threshold, robbins)
    hi = math.log(s / (s + f))
    log_e_lo = _log_e(s, f, math.exp(lo), robbins)
    while log_e_lo < log_threshold:  # only if rounding defeated the analytic start
        lo -= 1.0
        log_e_lo = _log_e(s, f, math.exp(lo), robbins)
    base = min(_log_e(s, f, math.exp(hi), robbins), 0.0)
    target = math.sqrt(log_threshold - base)
    phi_lo, phi_hi = math.sqrt(log_e_lo - base) - target, -target
    last = 0  # which end moved last: +1 lo, -1 hi
    width_1 = width_2 = math.inf  # bracket widths one and two steps ago
    while hi - lo > _LOG_TOL:
        if hi - lo > 0.5 * width_2:
            c = 0.5 * (lo + hi)
        else:
            c = (lo * phi_hi - hi * phi_lo) / (phi_hi - phi_lo)
            # Stay a quarter-tolerance inside so that every step shrinks the bracket.
            c = min(max(c, lo + 0.25 * _LOG_TOL), hi - 0.25 * _LOG_TOL)
        width_2, width_1 = width_1, hi - lo
        log_e_c = _log_e(s, f, math.exp(c), robbins)
        phi_c = math.sqrt(max(log_e_c - base, 0.0)) - target
        # The side is decided on the raw log e-value, so lo always rejects exactly.
        if log_e_c >= log_threshold:
            lo, phi_lo = c, max(phi_c, 0.0)
            if last == 1:  # Illinois: halve the stale end so that it moves next time
                phi_hi *= 0.5
            last = 1
        else:
            hi, phi_hi = c, min(phi_c, -0.0)
            if last == -1:
                phi_lo *= 0.5
            last = -1
    # lo always has e-value >= 1/alpha, so the bound is rounded down (conservative).
    return math.exp(lo)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _lower_cached(successes: int, trials: int, alpha: float) -> float:
    return _lower_end(successes, trials - successes, -math.log(alpha), robbins=False)


# ------------------------------------------------------------------------- public API


def lower_bound(successes: int, trials: int, alpha: float = 0.05) -> float:
    """Anytime-valid lower confidence bound on the agreement rate (one-sided, level alpha)."""
    _check(successes, trials, alpha)
    if trials == 0:
        return 0.0
    return _lower_cached(successes, trials, float(alpha))


def upper_bound(successes: int, trials: int, alpha: float = 0.05) -> float:
    """Anytime-valid upper confidence bound: the mirror of lower_bound on the failures."""
    _check(successes, trials, alpha)
    if trials == 0:
        return 1.0
    return 1.0 - _lower_cached(trials - successes, trials, float(alpha))


def robbins_lower(successes: int, trials: int, alpha: float = 0.05) -> float:
    """Lower end of Robbins' confidence sequence {p : B(S+1, F+1) / (p^S (1-p)^F) < 1/alpha}."""
    _check(successes, trials, alpha)
    if trials == 0:
        return 0.0
    return _lower_end(successes, trials - successes, -math.log(alpha), robbins=True)


def wilson_lower(successes: int, trials: int, alpha: float = 0.05) -> float:
    """One-shot Wilson score lower bound, z = Phi^-1(1 - alpha). Invalid under monitoring."""
    _check(successes, trials, alpha)
    if trials == 0:
        return 0.0
    z = _norm_upper_quantile(float(alpha))
    n = trials
    phat = successes / n
    z2 = z * z
    centre = phat + z2 / (2 * n)
    half = z * math.sqrt(phat * (1.0 - phat) / n + z2 / (4 * n * n))
    # Clamp: at s = 0 centre and half cancel to within rounding.
    return max(0.0, (centre - half) / (1.0 + z2 / n))


# ------------------------------------------------------------------- normal quantile

# Acklam's rational approximation to the normal quantile (rel. error 1.15e-9), polished to
# full precision by Halley steps on erfc below.
_A = (-39.69683028665376, 220.9460984245205, -275.9285104469687,
      138.3577518672690, -30.66479806614716, 2.506628277459239)  # fmt: skip
_B = (-54.47609879822406, 161.5858368580409, -155.6989798598866,
      66.80131188771972, -13.28068155288572)  # fmt: skip
_C = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838,
      -2.549732539343734, 4.374664141464968, 2.938163982698783)  # fmt: skip
_D = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
_P_LOW = 0.02425


def _acklam(p: float) -> float:
    """Rough Phi^-1(p) for p <= 0.5."""
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        num = ((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]
        return num / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
    q = p - 0.5
    r = q * q
    num = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
    return num / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)


@functools.lru_cache(maxsize=64)
def _norm_upper_quantile(alpha: float) -> float:
    """z with P(Z > z) = alpha, i.e. Phi^-1(1 - alpha), to ~1 ulp."""
    # Work in the tail that holds alpha so 1 - alpha never loses digits.
    p = min(alpha, 1.0 - alpha)
    x = _acklam(p)
    for _ in range(2):
        err = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
        u = err * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
        x -= u / (1.0 + 0.5 * x * u)
    return -x if alpha <= 0.5 else x
