"""Drift demotion: a sequential change detector on the blind evidence of the current level.

The cumulative upper bound (:func:`shadow.stats.upper_bound`) answers "is the agreement over
the whole history below the gate?", so the longer a task type has held its level the longer
a drop takes to show: after 100,000 comparisons at 0.99, a fall to 0.80 needs tens of
thousands more before the bound moves. :class:`Drift` answers "has the agreement *recently*
fallen below the gate?", and its delay depends on the size of the drop, not on the history.

Construction
------------
A one-sided CUSUM of likelihood ratios (Page's CUSUM; an *e-detector* in the sense of Shin,
Ramdas and Rinaldo). For the gate ``g`` and an alternative ``q < g`` (``g - margin``), each
blind comparison ``x`` (1: agree, 0: not) has the likelihood ratio of "agreement is q"
against "agreement is g"::

    LR(x) = (q / g)^x * ((1 - q) / (1 - g))^(1 - x)

and the statistic is ``W_n = max(0, W_{n-1} + log LR(x_n))``, ``W_0 = 0``. It alarms (demote)
once ``W_n >= threshold``. ``W_n`` is the log of the largest product of ratios over any
recent stretch of comparisons, so it forgets good history: after a long run of agreement it
sits near 0 and climbs as soon as disagreements arrive faster than ``1 - q``.

Guarantee
---------
For every true agreement ``p >= g`` (i.i.d. comparisons) each product of ratios started at
any time is a nonnegative supermartingale with mean at most 1 (``E_p[LR] <= 1`` when
``q < g <= p``), so the CUSUM is an e-detector and its average run length to a false alarm
is at least ``exp(threshold)`` comparisons (Lorden; Shin, Ramdas and Rinaldo, "E-detectors",
2023). That bound is loose when ``p`` is above the gate; ``make bench-stats`` measures the
false-demotion rate over 100,000 comparisons at 0.99 (gate 0.98), the run length at
``p = g`` and the delay after drops, next to the cumulative rule (docs/statistics.md).

Pure: no I/O, no clock; the caller keeps ``W`` (a float) with its level's evidence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_MARGIN", "DEFAULT_THRESHOLD", "Drift"]

# The alternative sits this far below the gate: the size of drop the detector is tuned to
# find fastest (larger drops are found faster still).
DEFAULT_MARGIN = 0.03
# exp(5) ~ 148 comparisons is the guaranteed floor of the run length at the gate itself; at
# 0.99 against a 0.98 gate the measured false-demotion rate over 100,000 comparisons is ~3%.
DEFAULT_THRESHOLD = 5.0


@dataclass(frozen=True, slots=True)
class Drift:
    """The detector for one gate: ``update`` folds one blind comparison into ``W``."""

    gate: float
    alternative: float
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if not 0.0 < self.alternative < self.gate < 1.0:
            raise ValueError(
                f"need 0 < alternative < gate < 1, got {self.alternative} and {self.gate}"
            )
        if not self.threshold > 0.0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")

    @classmethod
    def for_gate(
        cls, gate: float, margin: float = DEFAULT_MARGIN, threshold: float = DEFAULT_THRESHOLD
    ) -> Drift:
        """The detector tuned to a drop of ``margin`` below ``gate`` (halfway to 0 when the
        gate is lower than the margin)."""
        alternative = gate - margin if gate - margin > 0.0 else gate / 2.0
        return cls(gate, alternative, threshold)

    @property
    def on_agree(self) -> float:
        """log LR of an agreement (negative)."""
        return math.log(self.alternative / self.gate)

    @property
    def on_miss(self) -> float:
        """log LR of a disagreement or agent error (positive)."""
        return math.log((1.0 - self.alternative) / (1.0 - self.gate))

    def update(self, statistic: float, agree: bool) -> float:
        step = self.on_agree if agree else self.on_miss
        return max(0.0, statistic + step)

    def feed(self, statistic: float, agreements: Iterable[bool]) -> float:
        """``W`` after ``agreements`` in order."""
        up, down = self.on_agree, self.on_miss
        for agree in agreements:
            statistic = max(0.0, statistic + (up if agree else down))
        return statistic

    def alarmed(self, statistic: float) -> bool:
        return statistic >= self.threshold
