"""The adjudicated estimate: how often the agent's decision was acceptable, with anytime bounds.

Blind comparisons give verdicts agree / disagree / agent_error. A review queue draws cases
uniformly at random within the agree and disagree strata and a reviewer says whether the
agent's decision was acceptable (agent errors are never reviewed and never acceptable). The
quantity is

    p = pi_a q_a + pi_d q_d,

with ``pi_a``, ``pi_d``, ``pi_e = 1 - pi_a - pi_d`` the verdict shares and ``q_a``, ``q_d`` the
acceptable shares within agreements and disagreements.

Construction
------------
Four one-sided confidence sequences from :mod:`shadow.stats`, each at ``alpha / 4``:
``pi_e <= upper_bound(errors, n)``, ``pi_d <= upper_bound(disagree, n)``,
``q_a >= lower_bound(acceptable_agree, reviewed_agree)`` and
``q_d >= lower_bound(acceptable_disagree, reviewed_disagree)``. ``lower`` is the smallest
``pi_a q_a,L + pi_d q_d,L`` over verdict shares on the simplex with ``pi_e`` and ``pi_d`` under
their upper bounds (a three-variable linear program, solved greedily). ``upper`` is the mirror:
the largest ``pi_a q_a,U + pi_d q_d,U`` with ``pi_e``, ``pi_d`` above their lower bounds and the
``q`` at their upper bounds.

Guarantee
---------
For i.i.d. cases, reviews drawn uniformly at random (without replacement) within a stratum,
independently of the reviewers' answers:

    P(some time has lower > p) <= alpha,    P(some time has upper < p) <= alpha,

under continuous monitoring (union bound over the four sequences, each valid by Ville's
inequality). ``lower <= estimate <= upper``. No agreement review gives ``q_a,L = 0``, so
``lower`` stays far below raw agreement until agreements are reviewed too. See
docs/statistics.md ("Adjudicated estimate") for the derivation and the cost in reviews.

Pure: no I/O, only :mod:`shadow.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shadow.stats import lower_bound, upper_bound

__all__ = ["Adjudicated", "Reviewed", "adjudicated"]

# The four confidence sequences share alpha evenly (union bound).
_SEQUENCES = 4


@dataclass(frozen=True, slots=True)
class Reviewed:
    """Counts of the reviewed sample for one task type and agent version.

    ``acceptable_*`` counts the reviews that found the agent's decision acceptable (an
    ``unclear`` review is not acceptable). Each reviewed count is expected to stay within its
    stratum's comparison count, but that is not enforced: a later outcome revision can move a
    reviewed case to another verdict, and the bound's validity concerns the reviewed sample.
    """

    reviewed_agree: int = 0
    acceptable_agree: int = 0
    reviewed_disagree: int = 0
    acceptable_disagree: int = 0


@dataclass(frozen=True, slots=True)
class Adjudicated:
    """Point estimate (None when there are no comparisons) and the anytime bounds on ``p``."""

    estimate: float | None
    lower: float
    upper: float

    def to_json(self, reviewed: Reviewed) -> dict[str, Any]:
        """JSON form: the three numbers to 4 places, and the review counts they rest on."""
        return {
            "estimate": None if self.estimate is None else round(self.estimate, 4),
            "lower": round(self.lower, 4),
            "upper": round(self.upper, 4),
            "reviewed": {"agree": reviewed.reviewed_agree, "disagree": reviewed.reviewed_disagree},
            "acceptable": {
                "agree": reviewed.acceptable_agree,
                "disagree": reviewed.acceptable_disagree,
            },
        }


def _count(name: str, value: int) -> None:
    # bool is an int subclass; a True/False count is almost certainly a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check(n: int, agree: int, disagree: int, reviewed: Reviewed, alpha: float) -> None:
    for name, value in (
        ("n", n),
        ("agree", agree),
        ("disagree", disagree),
        ("reviewed_agree", reviewed.reviewed_agree),
        ("acceptable_agree", reviewed.acceptable_agree),
        ("reviewed_disagree", reviewed.reviewed_disagree),
        ("acceptable_disagree", reviewed.acceptable_disagree),
    ):
        _count(name, value)
    if agree + disagree > n:
        raise ValueError(f"agree + disagree = {agree + disagree} exceeds n = {n}")
    if reviewed.acceptable_agree > reviewed.reviewed_agree:
        raise ValueError(
            f"acceptable_agree {reviewed.acceptable_agree} exceeds "
            f"reviewed_agree {reviewed.reviewed_agree}"
        )
    if reviewed.acceptable_disagree > reviewed.reviewed_disagree:
        raise ValueError(
            f"acceptable_disagree {reviewed.acceptable_disagree} exceeds "
            f"reviewed_disagree {reviewed.reviewed_disagree}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a float, got {type(alpha).__name__} {alpha!r}")
    if not 0.0 < alpha < 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _extreme(shares: list[tuple[float, float, float]], lowest: bool) -> float:
    """min (or max) of sum(coef * share) over shares in [lo, hi] summing to 1.

    ``shares`` holds ``(coef, lo, hi)`` per verdict with ``sum(lo) <= 1 <= sum(hi)`` (a lower
    bound never exceeds the observed share, an upper bound is never below it). Greedy: every
    share starts at ``lo`` and the rest of the mass goes to the smallest (largest) coefficient
    first, which solves this linear program exactly.
    """
    rest = 1.0 - sum(lo for _, lo, _ in shares)
    total = 0.0
    for coef, lo, hi in sorted(shares, key=lambda s: s[0], reverse=not lowest):
        extra = min(max(rest, 0.0), hi - lo)
        rest -= extra
        total += coef * (lo + extra)
    return min(max(total, 0.0), 1.0)


def adjudicated(
    n: int, agree: int, disagree: int, reviewed: Reviewed, alpha: float = 0.05
) -> Adjudicated:
    """The adjudicated estimate of ``p`` from ``n`` blind comparisons and a reviewed sample.

    ``n - agree - disagree`` comparisons were agent errors. The estimate is
    ``(agree q_a + disagree q_d) / n`` with ``q_a = acceptable_agree / reviewed_agree`` (1 when
    no agreement was reviewed) and ``q_d = acceptable_disagree / reviewed_disagree`` (0 when no
    disagreement was reviewed), so with no reviews it equals raw agreement. ``lower`` and
    ``upper`` are one-sided anytime-valid bounds at level ``alpha`` each (module docstring);
    ``n == 0`` gives ``Adjudicated(None, 0.0, 1.0)``.

    Raises ValueError on a negative or non-int count, ``agree + disagree > n``, an acceptable
    count above its reviewed count, or ``alpha`` outside (0, 1).
    """
    _check(n, agree, disagree, reviewed, alpha)
    if n == 0:
        return Adjudicated(None, 0.0, 1.0)
    part = alpha / _SEQUENCES
    errors = n - agree - disagree
    ra, aa = reviewed.reviewed_agree, reviewed.acceptable_agree
    rd, ad = reviewed.reviewed_disagree, reviewed.acceptable_disagree

    q_a = aa / ra if ra else 1.0
    q_d = ad / rd if rd else 0.0
    estimate = (agree * q_a + disagree * q_d) / n

    # lower_bound(0, 0) = 0 and upper_bound(0, 0) = 1: an unreviewed stratum is unknown.
    qa_lo, qd_lo = lower_bound(aa, ra, part), lower_bound(ad, rd, part)
    qa_hi, qd_hi = upper_bound(aa, ra, part), upper_bound(ad, rd, part)
    lower = _extreme(
        [
            (0.0, 0.0, upper_bound(errors, n, part)),
            (qd_lo, 0.0, upper_bound(disagree, n, part)),
            (qa_lo, 0.0, 1.0),
        ],
        lowest=True,
    )
    upper = _extreme(
        [
            (0.0, lower_bound(errors, n, part), 1.0),
            (qd_hi, lower_bound(disagree, n, part), 1.0),
            (qa_hi, 0.0, 1.0),
        ],
        lowest=False,
    )
    # Rounding could put a bound an ulp on the wrong side of the estimate; widening is safe.
    return Adjudicated(estimate, min(lower, estimate), max(upper, estimate))
