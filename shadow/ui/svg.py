"""The console's charts as inline SVG, drawn on the server: no script, no third-party library,
every text escaped. Each chart is ``role="img"`` with a ``<title>`` and a ``<desc>`` that say
what it shows in words; the pages also give its numbers as a table.

Pure functions over numbers (no I/O); colours come from classes the stylesheet sets
(``static/console.css``), since the console's CSP allows no inline style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from shadow.stats import lower_bound, upper_bound

__all__ = ["ChartPoint", "agreement_chart", "chart_points", "gauge"]


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """The evidence after ``n`` comparisons: agreement and its anytime-valid bounds."""

    n: int
    agree: int
    agreement: float
    lower: float
    upper: float


def chart_points(series: Sequence[tuple[int, int]], alpha: float) -> list[ChartPoint]:
    """``(n, agree)`` pairs with their agreement and bounds at ``alpha``."""
    return [
        ChartPoint(n, a, a / n, lower_bound(a, n, alpha), upper_bound(a, n, alpha))
        for n, a in series
        if n > 0
    ]


def _floor_tenth(value: float) -> float:
    return math.floor(value * 10 + 1e-9) / 10


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return float(m * power)
    return float(10 * power)


def _f(value: float) -> str:
    return f"{value:.1f}"


def _merged(gates: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Gates of one agreement drawn as one line: ``[("L1-L4", 0.5)]`` for four at 0.5."""
    by_value: dict[float, list[str]] = {}
    for level, value in gates:
        by_value.setdefault(value, []).append(level)
    out = []
    for value, levels in by_value.items():
        names = levels[0] if len(levels) == 1 else f"{levels[0]}\u2013{levels[-1]}"
        out.append((names, value))
    return out


def agreement_chart(
    points: Sequence[ChartPoint],
    gates: Sequence[tuple[str, float]],
    *,
    label: str,
    ident: str = "chart",
) -> str:
    """Agreement over the comparisons (a line), its lower-upper bound band, and a dashed
    line per gate (``(level, agreement)``). ``label`` names the task type in the title;
    ``ident`` makes the ids of its title and description unique on the page."""
    width, height = 720, 280
    left, right, top, bottom = 56, 84, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    title = f"Agreement over time: {label}"
    if not points:
        desc = "No blind comparisons yet."
        return (
            f'<svg class="chart" viewBox="0 0 {width} 80" role="img" '
            f'aria-labelledby="{ident}-t {ident}-d"><title id="{ident}-t">{escape(title)}</title>'
            f'<desc id="{ident}-d">{escape(desc)}</desc>'
            f'<text class="axis-label" x="{left}" y="44">{escape(desc)}</text></svg>'
        )
    # The range shows the gates and where the bounds are now; the first points' wide
    # bounds run off the bottom (the table below the chart has them).
    lows = [points[-1].lower, points[-1].agreement] + [g for _, g in gates]
    y_min = min(0.8, max(0.0, _floor_tenth(min(lows) - 0.1)))
    y_max = 1.0
    n_max = max(p.n for p in points)

    def x(n: float) -> float:
        return left + plot_w * (n / n_max if n_max else 0)

    def y(v: float) -> float:
        v = min(max(v, y_min), y_max)
        return top + plot_h * (1 - (v - y_min) / (y_max - y_min))

    last = points[-1]
    desc = (
        f"{len(points)} points from n={points[0].n} to n={last.n}. Now: agreement "
        f"{last.agreement:.2%}, bounds {last.lower:.2%} to {last.upper:.2%}. Gates: "
        + (", ".join(f"{lvl} at {g:.2%}" for lvl, g in gates) or "none")
        + "."
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d">',
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>',
    ]
    step = _nice_step(y_max - y_min, 5)
    tick = math.ceil(y_min / step - 1e-9) * step
    while tick <= y_max + 1e-9:
        ty = y(tick)
        parts.append(
            f'<line class="grid" x1="{left}" y1="{_f(ty)}" x2="{left + plot_w}" y2="{_f(ty)}"/>'
            f'<text class="axis-label" x="{left - 6}" y="{_f(ty + 4)}" text-anchor="end">'
            f"{tick:.0%}</text>"
        )
        tick += step
    x_step = max(1, int(_nice_step(n_max, 5)))
    for n in range(0, n_max + 1, x_step):
        tx = x(n)
        parts.append(
            f'<text class="axis-label" x="{_f(tx)}" y="{top + plot_h + 18}" '
            f'text-anchor="middle">{n}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{left + plot_w / 2:.0f}" y="{height - 4}" '
        'text-anchor="middle">blind comparisons (n)</text>'
    )
    band = [f"{_f(x(p.n))},{_f(y(p.upper))}" for p in points]
    band += [f"{_f(x(p.n))},{_f(y(p.lower))}" for p in reversed(points)]
    if len(points) == 1:
        p = points[0]
        parts.append(
            f'<line class="band-line" x1="{_f(x(p.n))}" y1="{_f(y(p.upper))}" '
            f'x2="{_f(x(p.n))}" y2="{_f(y(p.lower))}"/>'
        )
    else:
        parts.append(f'<polygon class="band" points="{" ".join(band)}"/>')
    line = " ".join(f"{_f(x(p.n))},{_f(y(p.agreement))}" for p in points)
    parts.append(f'<polyline class="line" points="{line}"/>')
    for p in points[-1:]:
        parts.append(f'<circle class="dot" cx="{_f(x(p.n))}" cy="{_f(y(p.agreement))}" r="3.5"/>')
    for names, value in _merged(gates):
        gy = y(value)
        parts.append(
            f'<line class="gate" x1="{left}" y1="{_f(gy)}" x2="{left + plot_w}" y2="{_f(gy)}"/>'
            f'<text class="gate-label" x="{left + plot_w + 6}" y="{_f(gy + 4)}">'
            f"{escape(names)} {value:.0%}</text>"
        )
    parts.append(
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>'
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}"/></svg>'
    )
    return "".join(parts)


def gauge(
    lower: float | None,
    upper: float | None,
    agreement: float | None,
    gate: float | None,
    *,
    label: str,
) -> str:
    """A bar from the lower to the upper bound with the agreement marked, against the next
    gate's agreement (a vertical line), on a scale from at most 80% to 100%."""
    width, height, pad = 260, 34, 8
    title = f"{label}: bounds against the next gate"
    if lower is None or upper is None or agreement is None:
        desc = "No evidence yet."
    else:
        desc = f"Agreement {agreement:.2%}, bounds {lower:.2%} to {upper:.2%}" + (
            f", next gate {gate:.2%}." if gate is not None else ", no further gate."
        )
    values = [v for v in (lower, gate) if v is not None]
    lo = min(0.8, max(0.0, _floor_tenth(min(values) - 0.02))) if values else 0.8

    def x(v: float) -> float:
        v = min(max(v, lo), 1.0)
        return pad + (width - 2 * pad) * (v - lo) / (1.0 - lo)

    parts = [
        f'<svg class="gauge" viewBox="0 0 {width} {height}" role="img" aria-label="'
        f'{escape(title)}. {escape(desc)}">',
        f'<rect class="track" x="{pad}" y="10" width="{width - 2 * pad}" height="10" rx="2"/>',
        f'<text class="axis-label" x="{pad}" y="32">{lo:.0%}</text>',
        f'<text class="axis-label" x="{width - pad}" y="32" text-anchor="end">100%</text>',
    ]
    if lower is not None and upper is not None and agreement is not None:
        parts.append(
            f'<rect class="bounds" x="{_f(x(lower))}" y="10" '
            f'width="{_f(max(x(upper) - x(lower), 1.5))}" height="10" rx="2"/>'
            f'<line class="mark" x1="{_f(x(agreement))}" y1="6" x2="{_f(x(agreement))}" y2="24"/>'
        )
    if gate is not None:
        parts.append(f'<line class="gate" x1="{_f(x(gate))}" y1="2" x2="{_f(x(gate))}" y2="28"/>')
    parts.append("</svg>")
    return "".join(parts)
