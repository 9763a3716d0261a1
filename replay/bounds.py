"""Fixed-sample confidence bounds behind the replay budget gates. Pure: no I/O, no scipy.

A replay is one fixed sample analysed once, so these are ordinary (not anytime-valid) bounds;
each holds for *every* true value, not only asymptotically.

Exact binomial (Clopper-Pearson), one-sided
    For ``k`` events in ``n`` independent trials with probability ``p``, the lower bound at
    level ``delta`` is the ``p`` at which ``P(X >= k) = delta``, i.e. the ``delta`` quantile of
    ``Beta(k, n - k + 1)`` (0 when ``k = 0``); the upper bound is the ``1 - delta`` quantile
    of ``Beta(k + 1, n - k)`` (1 when ``k = n``). Guarantee: ``P(lower > p) <= delta`` and
    ``P(upper < p) <= delta`` for every ``p`` (exact, and conservative because the binomial
    is discrete). ``lower > b`` is the exact one-sided binomial test of ``p <= b`` rejecting
    at level ``delta``. The beta function is :func:`shadow.stats.betainc` (the live bounds'
    regularized incomplete beta), inverted by bisection; it agrees with scipy to about 1e-12.

Empirical Bernstein (Maurer and Pontil 2009, "Empirical Bernstein bounds and sample variance
penalization", Theorem 4)
    For ``n >= 2`` independent values in ``[0, r]`` with mean ``mu`` and sample variance
    ``v`` (denominator ``n - 1``)::

        width = sqrt(2 v log(2/delta) / n) + 7 r log(2/delta) / (3 (n - 1))
        P(mu > mean + width) <= delta        P(mu < mean - width) <= delta

    (the second by applying the theorem to ``r - X``). It needs only the range, not the
    distribution, and when the values vary little it is far tighter than Hoeffding's
    ``r sqrt(log(1/delta) / (2n))``: the range enters only the ``1/n`` term.
"""

from __future__ import annotations

import math

from shadow.stats import betainc

__all__ = ["bernstein_width", "beta_cdf", "clopper_pearson"]

_BISECTIONS = 200


def beta_cdf(x: float, a: float, b: float) -> float:
    """``P(Beta(a, b) <= x)``, ``a, b > 0`` (:func:`shadow.stats.betainc`, the incomplete beta
    the live bounds use); 0 below 0 and 1 above 1."""
    return betainc(a, b, min(max(x, 0.0), 1.0))


def _beta_quantile(q: float, a: float, b: float) -> float:
    """The ``x`` with ``I_x(a, b) = q``, by bisection (the cdf is increasing in ``x``)."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson(k: int, n: int, delta: float) -> tuple[float, float]:
    """``(lower, upper)``: the one-sided exact binomial bounds of ``k`` in ``n``, *each* at
    level ``delta`` (see the module doc). ``(0, 1)`` when ``n = 0``."""
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n == 0:
        return 0.0, 1.0
    lower = 0.0 if k == 0 else _beta_quantile(delta, k, n - k + 1)
    upper = 1.0 if k == n else _beta_quantile(1.0 - delta, k + 1, n - k)
    return lower, upper


def bernstein_width(n: int, variance: float, r: float, delta: float) -> float:
    """Maurer and Pontil's one-sided width for ``n`` values in ``[0, r]`` with sample
    variance ``variance``, at level ``delta`` (see the module doc); ``inf`` when ``n < 2``."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n < 2:
        return math.inf
    log_term = math.log(2.0 / delta)
    return math.sqrt(2.0 * max(variance, 0.0) * log_term / n) + 7.0 * r * log_term / (3.0 * (n - 1))
