"""The two tests behind the regression gate. Pure: no I/O, no clock, no scipy.

Unpaired: one-sided pooled two-proportion z-test
    For two reports that scored different (or unknown) cases, H0: candidate rate >=
    baseline rate, against H1: the candidate's is lower::

        p = (k_c + k_b) / (n_c + n_b)
        z = (k_c/n_c - k_b/n_b) / sqrt(p (1 - p) (1/n_c + 1/n_b))
        p_worse = Phi(z)

Paired: one-sided mid-p McNemar test
    For two reports that scored the same cases. Only the *discordant* pairs carry
    information about the difference: ``b`` cases the baseline got right and the candidate
    wrong, ``c`` the reverse. Under H0 (no difference) each discordant pair is equally
    likely to fall either way, so ``b ~ Binomial(b + c, 1/2)`` given ``b + c``; the
    candidate is worse when ``b`` is large. The one-sided mid-p value is::

        mid-p = P(X > b) + 1/2 P(X = b),   X ~ Binomial(b + c, 1/2)

    i.e. the exact conditional (binomial) p-value ``P(X >= b)`` less half the probability
    of the observed value. It is exact arithmetic: integers (:func:`math.comb`) for
    ``b + c <= EXACT_LIMIT``, else a sum in log space started at ``log P(X = b)``
    (:func:`math.lgamma`; relative error below 1e-9, checked against scipy up to 200,000
    pairs, where ``math.comb`` itself would take seconds). With no discordant pair it is 0.5.

    Why mid-p: the exact conditional test is conservative (its true level is well below
    the nominal one at small ``b + c``, because the binomial is discrete); the mid-p test
    keeps close to the nominal level and its type I error is rarely above it (Fagerland,
    Lydersen and Laake, "The McNemar test for binary matched-pairs data: mid-p and
    asymptotic are better than exact conditional", BMC Med Res Methodol 13:91, 2013).
    Pairing removes the between-case variation both versions share (the hard cases are
    hard for both), so it finds differences the unpaired test cannot: 7 cases flipped from
    right to wrong out of 200 is mid-p 0.0039 paired, p 0.198 unpaired.
"""

from __future__ import annotations

import math

__all__ = ["EXACT_LIMIT", "mcnemar_midp", "phi", "two_proportion_z"]

EXACT_LIMIT = 1024  # discordant pairs up to which mid-p is computed with integers
_NEGLIGIBLE = 1e-18  # a tail term this small relative to the sum so far ends the sum


def phi(z: float) -> float:
    """The standard normal distribution function."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def two_proportion_z(agree_c: int, n_c: int, agree_b: int, n_b: int) -> tuple[float, float]:
    """``(z, p_worse)`` for candidate vs baseline; ``(0.0, 0.5)`` when untestable (a side
    with no case, or a pooled rate of 0 or 1)."""
    if n_c <= 0 or n_b <= 0:
        return 0.0, 0.5
    pooled = (agree_c + agree_b) / (n_c + n_b)
    var = pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_b)
    if var <= 0.0:
        return 0.0, 0.5
    z = (agree_c / n_c - agree_b / n_b) / math.sqrt(var)
    return z, phi(z)


def mcnemar_midp(b: int, c: int) -> float:
    """One-sided mid-p that the candidate is worse: ``P(X > b) + P(X = b)/2`` with
    ``X ~ Binomial(b + c, 1/2)``, ``b`` = pairs only the baseline got right, ``c`` = pairs
    only the candidate got right (see the module doc). ``mcnemar_midp(c, b)`` is the
    one-sided mid-p that it is better; the two add up to 1."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 0.5
    if n <= EXACT_LIMIT:
        tail: int = sum(math.comb(n, k) for k in range(b + 1, n + 1))
        whole: int = 2 ** (n + 1)
        return (2 * tail + math.comb(n, b)) / whole  # int / int: correctly rounded
    if 2 * b < n:
        # The upper tail is large: the complement by symmetry (X -> n - X) is a short sum,
        # and a p-value near 1 needs no relative precision.
        return 1.0 - _upper_midp(c, n)
    return _upper_midp(b, n)


def _upper_midp(b: int, n: int) -> float:
    """``P(X > b) + P(X = b)/2`` for ``b >= n/2``: the terms fall from ``k = b`` on, so the
    sum is taken relative to the first term and stops once the rest cannot matter."""
    log_first = math.lgamma(n + 1) - math.lgamma(b + 1) - math.lgamma(n - b + 1) - n * math.log(2)
    total = 0.5
    term = 1.0
    for k in range(b, n):
        term *= (n - k) / (k + 1)  # P(X = k + 1) / P(X = b)
        total += term
        if term < total * _NEGLIGIBLE:
            break
    return math.exp(log_first + math.log(total))
