"""Tests for shadow.adjudicated: the adjudicated estimate and its anytime bounds.

The reference is independent of the module: the confidence sequences come from scipy (brentq on
the mixture e-value of docs/statistics.md) and the combination from scipy.optimize.linprog over
the verdict shares. The seeded simulation checks that the bounds cover the true share.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special

from shadow.adjudicated import Adjudicated, Reviewed, adjudicated
from shadow.stats import lower_bound

ALPHA = 0.05

# ---------------------------------------------------------------- scipy references


def ref_lower(s: int, n: int, alpha: float) -> float:
    """The mixture confidence sequence's lower end, by brentq on its e-value (scipy only)."""
    if s == 0:
        return 0.0
    f = n - s

    def log_e(p0: float) -> float:
        # M(p0) = B(S+1, F+1) I_{1-p0}(F+1, S+1) / ((1 - p0) p0^S (1 - p0)^F)
        integral = float(special.betaln(s + 1, f + 1)) + math.log(
            float(special.betainc(f + 1, s + 1, 1.0 - p0))
        )
        return integral - (f + 1) * math.log1p(-p0) - s * math.log(p0)

    hi = s / n if s < n else 1.0 - 1e-12
    return float(
        optimize.brentq(lambda p: log_e(p) + math.log(alpha), 1e-300, hi, xtol=1e-15, rtol=1e-13)
    )


def ref_upper(s: int, n: int, alpha: float) -> float:
    return 1.0 - ref_lower(n - s, n, alpha)


def ref_adjudicated(
    n: int, agree: int, disagree: int, r: Reviewed, alpha: float
) -> tuple[float, float]:
    """(lower, upper) by linear programming over the shares (error, disagree, agree)."""
    part = alpha / 4
    errors = n - agree - disagree
    qa_lo = ref_lower(r.acceptable_agree, r.reviewed_agree, part) if r.reviewed_agree else 0.0
    qd_lo = (
        ref_lower(r.acceptable_disagree, r.reviewed_disagree, part) if r.reviewed_disagree else 0.0
    )
    qa_hi = ref_upper(r.acceptable_agree, r.reviewed_agree, part) if r.reviewed_agree else 1.0
    qd_hi = (
        ref_upper(r.acceptable_disagree, r.reviewed_disagree, part) if r.reviewed_disagree else 1.0
    )
    simplex = {"A_eq": [[1.0, 1.0, 1.0]], "b_eq": [1.0], "method": "highs"}
    low = optimize.linprog(
        [0.0, qd_lo, qa_lo],
        bounds=[(0.0, ref_upper(errors, n, part)), (0.0, ref_upper(disagree, n, part)), (0, 1)],
        **simplex,
    )
    high = optimize.linprog(
        [0.0, -qd_hi, -qa_hi],
        bounds=[(ref_lower(errors, n, part), 1.0), (ref_lower(disagree, n, part), 1.0), (0, 1)],
        **simplex,
    )
    assert low.status == 0
    assert high.status == 0
    return float(low.fun), float(-high.fun)


# ---------------------------------------------------------------------- basics


def test_no_comparisons_is_unknown() -> None:
    assert adjudicated(0, 0, 0, Reviewed()) == Adjudicated(None, 0.0, 1.0)


@pytest.mark.parametrize(("n", "agree", "disagree"), [(1, 1, 0), (50, 45, 3), (2000, 1860, 130)])
def test_without_reviews_the_estimate_is_raw_agreement(n: int, agree: int, disagree: int) -> None:
    result = adjudicated(n, agree, disagree, Reviewed())
    assert result.estimate == agree / n
    # Nothing is known about either stratum, so nothing above 0 can be promised; agent errors
    # are never acceptable, so the upper bound is 1 minus their lower bound.
    assert result.lower == 0.0
    assert result.upper == 1.0 - lower_bound(n - agree - disagree, n, ALPHA / 4)


def test_without_agreement_reviews_the_lower_bound_stays_zero() -> None:
    """Every disagreement reviewed and acceptable still leaves q_a unknown: the shares could
    all be agreements, none acceptable."""
    result = adjudicated(1000, 900, 100, Reviewed(0, 0, 100, 100))
    assert result.estimate == 1.0
    assert result.lower == 0.0


def test_estimate_weights_each_stratum() -> None:
    result = adjudicated(100, 80, 15, Reviewed(10, 9, 5, 2))
    assert result.estimate == pytest.approx((80 * 0.9 + 15 * 0.4) / 100, abs=1e-15)


def test_no_error_and_everything_reviewed_acceptable() -> None:
    result = adjudicated(500, 450, 50, Reviewed(450, 450, 50, 50))
    assert result.estimate == 1.0
    assert result.upper == 1.0
    assert 0.9 < result.lower < 1.0


# ------------------------------------------------------------------ known values


CASES = [
    (2000, 1860, 130, Reviewed(400, 400, 130, 100)),
    (2000, 1860, 130, Reviewed(40, 40, 13, 4)),
    (300, 250, 40, Reviewed(60, 57, 30, 12)),
    (5000, 4650, 325, Reviewed(588, 588, 325, 250)),
    (80, 60, 20, Reviewed(5, 1, 20, 19)),  # q_d above q_a: the greedy order flips
    (40, 10, 20, Reviewed(10, 10, 0, 0)),  # many agent errors
]


@pytest.mark.parametrize(("n", "agree", "disagree", "reviewed"), CASES)
def test_matches_an_independent_reference(
    n: int, agree: int, disagree: int, reviewed: Reviewed
) -> None:
    result = adjudicated(n, agree, disagree, reviewed, ALPHA)
    lower, upper = ref_adjudicated(n, agree, disagree, reviewed, ALPHA)
    assert result.lower == pytest.approx(lower, abs=1e-8)
    assert result.upper == pytest.approx(upper, abs=1e-8)


def test_tighter_than_bounding_each_share_from_below() -> None:
    """The four-box construction pi_a,L q_a,L + pi_d,L q_d,L is also valid, but pays for the
    agreement share's uncertainty in full; the simplex construction (the shares sum to one)
    pays mostly for the error share's. Pinned on typical counts."""
    n, agree, disagree, r = 2000, 1860, 130, Reviewed(400, 400, 130, 100)
    part = ALPHA / 4
    box = lower_bound(agree, n, part) * lower_bound(400, 400, part) + lower_bound(
        disagree, n, part
    ) * lower_bound(100, 130, part)
    result = adjudicated(n, agree, disagree, r, ALPHA)
    assert result.lower > box + 0.015
    assert result.lower == pytest.approx(0.94208, abs=1e-5)


# -------------------------------------------------------------------- properties


@st.composite
def inputs(draw: st.DrawFn) -> tuple[int, int, int, Reviewed]:
    n = draw(st.integers(1, 400))
    agree = draw(st.integers(0, n))
    disagree = draw(st.integers(0, n - agree))
    ra = draw(st.integers(0, agree))
    rd = draw(st.integers(0, disagree))
    reviewed = Reviewed(ra, draw(st.integers(0, ra)), rd, draw(st.integers(0, rd)))
    return n, agree, disagree, reviewed


@settings(max_examples=150, deadline=None)
@given(inputs())
def test_bounds_bracket_the_estimate(case: tuple[int, int, int, Reviewed]) -> None:
    n, agree, disagree, reviewed = case
    result = adjudicated(n, agree, disagree, reviewed)
    assert result.estimate is not None
    assert 0.0 <= result.lower <= result.estimate <= result.upper <= 1.0
    # Agent errors are never acceptable.
    assert result.upper <= 1.0 - lower_bound(n - agree - disagree, n, ALPHA / 4) + 1e-12


def _both(r: Adjudicated) -> tuple[float, float]:
    return r.lower, r.upper


@settings(max_examples=100, deadline=None)
@given(inputs())
def test_better_evidence_never_lowers_the_bounds(case: tuple[int, int, int, Reviewed]) -> None:
    n, agree, disagree, r = case
    base = _both(adjudicated(n, agree, disagree, r))
    better = [(n + 1, agree + 1, disagree, r)]  # one more comparison, an agreement
    if r.acceptable_agree < r.reviewed_agree:  # a reviewed agreement found acceptable
        better.append((n, agree, disagree, replace(r, acceptable_agree=r.acceptable_agree + 1)))
    if r.acceptable_disagree < r.reviewed_disagree:
        better.append(
            (n, agree, disagree, replace(r, acceptable_disagree=r.acceptable_disagree + 1))
        )
    if r.reviewed_agree < agree:  # one more agreement reviewed, acceptable
        more = replace(
            r, reviewed_agree=r.reviewed_agree + 1, acceptable_agree=r.acceptable_agree + 1
        )
        better.append((n, agree, disagree, more))
    if r.reviewed_disagree < disagree:
        more = replace(
            r,
            reviewed_disagree=r.reviewed_disagree + 1,
            acceptable_disagree=r.acceptable_disagree + 1,
        )
        better.append((n, agree, disagree, more))
    if disagree > r.reviewed_disagree:  # an unreviewed disagreement was an agreement
        better.append((n, agree + 1, disagree - 1, r))
    if agree + disagree < n:  # an agent error was an agreement
        better.append((n, agree + 1, disagree, r))
    for args in better:
        lower, upper = _both(adjudicated(*args))
        assert lower >= base[0] - 1e-12, args
        assert upper >= base[1] - 1e-12, args


@settings(max_examples=100, deadline=None)
@given(inputs())
def test_worse_evidence_never_raises_the_bounds(case: tuple[int, int, int, Reviewed]) -> None:
    n, agree, disagree, r = case
    base = _both(adjudicated(n, agree, disagree, r))
    worse = []
    if r.reviewed_agree < agree:  # one more agreement reviewed, not acceptable
        worse.append((n, agree, disagree, replace(r, reviewed_agree=r.reviewed_agree + 1)))
    if r.reviewed_disagree < disagree:
        worse.append((n, agree, disagree, replace(r, reviewed_disagree=r.reviewed_disagree + 1)))
    if r.acceptable_agree:  # a reviewed agreement found not acceptable after all
        worse.append((n, agree, disagree, replace(r, acceptable_agree=r.acceptable_agree - 1)))
    for args in worse:
        lower, upper = _both(adjudicated(*args))
        assert lower <= base[0] + 1e-12, args
        assert upper <= base[1] + 1e-12, args
    # One more comparison, an agent error, never raises the lower bound.
    assert adjudicated(n + 1, agree, disagree, r).lower <= base[0] + 1e-12


def test_an_agent_error_can_nudge_the_upper_bound_up_at_small_counts() -> None:
    """Known and documented: the first agent error weakens the lower bound on the disagreement
    share (one more comparison) more than it strengthens the one on the error share, so the
    shares allowed leave a little more room for agreements. Small, and gone with counts."""
    reviewed = Reviewed(0, 0, 10, 0)
    before = adjudicated(20, 10, 10, reviewed).upper
    after = adjudicated(21, 10, 10, reviewed).upper
    assert 0.0 < after - before < 0.01
    reviewed = Reviewed(300, 300, 50, 20)
    assert adjudicated(1001, 900, 50, reviewed).upper < adjudicated(1000, 900, 50, reviewed).upper


def test_alpha_widens_the_interval() -> None:
    args = (2000, 1860, 130, Reviewed(400, 396, 130, 100))
    wide, narrow = adjudicated(*args, alpha=0.01), adjudicated(*args, alpha=0.2)
    assert wide.lower < narrow.lower
    assert wide.upper > narrow.upper
    assert wide.estimate == narrow.estimate


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, 0, Reviewed()), "n must be >= 0"),
        ((10, -1, 0, Reviewed()), "agree must be >= 0"),
        ((10, 0, -2, Reviewed()), "disagree must be >= 0"),
        ((10, 6, 5, Reviewed()), "exceeds n"),
        ((10, 5, 5, Reviewed(-1, 0, 0, 0)), "reviewed_agree must be >= 0"),
        ((10, 5, 5, Reviewed(2, 3, 0, 0)), "acceptable_agree 3 exceeds reviewed_agree 2"),
        ((10, 5, 5, Reviewed(0, 0, 1, 2)), "acceptable_disagree 2 exceeds reviewed_disagree 1"),
        ((10, 5, 5, Reviewed(0, 0, 0, -1)), "acceptable_disagree must be >= 0"),
        ((10.0, 5, 5, Reviewed()), "n must be an int"),
        ((10, True, 5, Reviewed()), "agree must be an int"),
    ],
)
def test_rejects_bad_counts(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adjudicated(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        adjudicated(10, 5, 5, Reviewed(), alpha=alpha)


def test_to_json() -> None:
    reviewed = Reviewed(40, 39, 13, 4)
    result = adjudicated(2000, 1860, 130, reviewed)
    doc = result.to_json(reviewed)
    assert doc == {
        "estimate": round(result.estimate or 0.0, 4),
        "lower": round(result.lower, 4),
        "upper": round(result.upper, 4),
        "reviewed": {"agree": 40, "disagree": 13},
        "acceptable": {"agree": 39, "disagree": 4},
    }
    assert doc["estimate"] == pytest.approx((1860 * 39 / 40 + 130 * 4 / 13) / 2000, abs=5e-5)
    assert Adjudicated(None, 0.0, 1.0).to_json(Reviewed())["estimate"] is None


# ------------------------------------------------------------------- simulation


def test_bounds_cover_the_true_share_in_a_seeded_simulation() -> None:
    """Streams of comparisons with a review queue; the bounds are read every 5 comparisons (a
    coarser look than the promoter's, so crossings are if anything under-counted). At alpha
    0.3 each one-sided bound may miss the truth in at most 30% of streams; the construction
    is conservative, so far fewer do, while the bounds are not vacuous."""
    rng = np.random.default_rng(20240611)
    pi_a, pi_d, q_a, q_d = 0.90, 0.08, 0.97, 0.5
    p = pi_a * q_a + pi_d * q_d
    alpha, streams, horizon, rate, share = 0.3, 60, 300, 0.5, 0.3
    above = below = 0
    finals = []
    for _ in range(streams):
        agree = disagree = 0
        ra = aa = rd = ad = 0
        missed_low = missed_high = False
        for n in range(1, horizon + 1):
            u = rng.random()
            agree += u < pi_a
            disagree += pi_a <= u < pi_a + pi_d
            if rng.random() < rate:
                open_a, open_d = agree > ra, disagree > rd
                to_a = open_a and (rng.random() < share or not open_d)
                if to_a:
                    ra += 1
                    aa += rng.random() < q_a
                elif open_d:
                    rd += 1
                    ad += rng.random() < q_d
            if n % 5 == 0:
                result = adjudicated(n, agree, disagree, Reviewed(ra, aa, rd, ad), alpha)
                missed_low |= result.lower > p
                missed_high |= result.upper < p
        above += missed_low
        below += missed_high
        finals.append(result)
    assert above / streams <= alpha
    assert below / streams <= alpha
    # Not vacuous: after 300 comparisons and ~150 reviews the interval has closed in.
    assert float(np.median([r.lower for r in finals])) > p - 0.15
    assert float(np.median([r.upper for r in finals])) < p + 0.10
