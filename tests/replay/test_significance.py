"""The paired test (mid-p McNemar) against an independent reference computation (scipy),
exact and in log space, and its defining properties."""

from __future__ import annotations

import pytest
from scipy import stats as sps

from replay.significance import EXACT_LIMIT, mcnemar_midp


def reference(b: int, c: int) -> float:
    """mid-p = P(X > b) + 1/2 P(X = b), X ~ Binomial(b + c, 1/2), by scipy."""
    n = b + c
    return float(sps.binom.sf(b, n, 0.5) + 0.5 * sps.binom.pmf(b, n, 0.5))


def exact_part(b: int, c: int) -> float:
    """The exact one-sided McNemar p-value P(X >= b) (scipy's binomtest) less half P(X = b)."""
    n = b + c
    exact = sps.binomtest(b, n, 0.5, alternative="greater").pvalue
    return float(exact - 0.5 * sps.binom.pmf(b, n, 0.5))


SMALL = [(1, 0), (7, 0), (0, 7), (3, 2), (10, 10), (12, 3), (30, 11), (60, 40), (500, 480)]
LARGE = [
    (EXACT_LIMIT // 2 + 40, EXACT_LIMIT // 2),  # just past the exact range
    (5_000, 4_800),
    (4_800, 5_000),
    (20_000, 19_700),
    (100_000, 99_000),
    (99_000, 100_000),
    (1_400, 1_000),  # far in the tail: ~1e-16
]


@pytest.mark.parametrize(("b", "c"), SMALL + LARGE)
def test_mid_p_matches_scipy(b: int, c: int) -> None:
    got = mcnemar_midp(b, c)
    assert got == pytest.approx(reference(b, c), rel=1e-9, abs=1e-300)
    assert got == pytest.approx(exact_part(b, c), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("b", "c"), SMALL + LARGE)
def test_worse_and_better_add_up_to_one(b: int, c: int) -> None:
    assert mcnemar_midp(b, c) + mcnemar_midp(c, b) == pytest.approx(1.0, abs=1e-12)


def test_small_counts_are_exact_fractions() -> None:
    assert mcnemar_midp(7, 0) == 1 / 256  # 1/2 * 2**-7
    assert mcnemar_midp(10, 0) == 1 / 2048
    assert mcnemar_midp(1, 1) == 0.5  # P(X = 2) + 1/2 P(X = 1) = 1/4 + 1/4
    assert mcnemar_midp(0, 0) == 0.5  # no discordant pair: no evidence either way
    assert mcnemar_midp(0, 3) == 1 - 1 / 16


def test_more_discordance_the_same_way_means_a_smaller_p() -> None:
    ps = [mcnemar_midp(b, 10) for b in range(40)]
    assert ps == sorted(ps, reverse=True)
    assert mcnemar_midp(2_000, 1_000) < 1e-70


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_midp(-1, 3)
