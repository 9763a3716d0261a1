"""The parts of a self-contained HTML report that the live evidence report
(:mod:`shadow.report`, ``shadow report``) and the replay report (``replay.html``) share, so
both look alike: the page around the body, its style, escaping, number formats, the
agreement chart and the bar chart.

Contract: no network access and no script. Styles are one inline ``<style>`` block, charts
are inline SVG, and nothing references another file or URL (a strict
``Content-Security-Policy`` meta tag says so to the browser too), so the file can be
mailed, archived as a CI artifact or opened offline. Every text is HTML-escaped here
(:func:`e`); the callers pass plain values, or HTML built from escaped parts. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

__all__ = [
    "ChartRow",
    "acceptance_text",
    "agreement_chart",
    "bars",
    "e",
    "page",
    "pct",
    "table",
]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}.meta{color:#555}.badge{padding:2px 8px;border-radius:10px}
.ok{background:#d8f3dc}.bad{background:#ffd6d6}.warn{background:#fff1c1}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f5f6f8;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f9;padding:8px;overflow:auto;max-height:240px;font-size:12px}
svg text{font:12px system-ui,sans-serif;fill:#1d232a}.cm td{min-width:32px;text-align:right}
"""
_W = 640  # chart width
_LABEL = 170  # left margin for labels


def e(value: object) -> str:
    """``value`` as escaped HTML text (``-`` for ``None``)."""
    return escape("-" if value is None else str(value))


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def acceptance_text(acc: Mapping[str, Any] | None) -> str:
    """``agent 98.00% of 50, assisted -`` from an ``acceptance`` entry (``-``: none); plain
    text, to be escaped."""
    parts = [
        f"{h} {pct(a['agreement'])} of {a['n']}" for h, a in (acc or {}).items() if a and a.get("n")
    ]
    return ", ".join(parts) or "-"


@dataclass(frozen=True, slots=True)
class ChartRow:
    """One task type in :func:`agreement_chart`: a bar to ``agreement``, a whisker over
    ``[lower, upper]``, a dashed tick per gate ``(level, agreement, met)``, and an optional
    diamond ``marker`` ``(value, title)`` (the replay's baseline, the live adjudicated
    estimate)."""

    name: str
    agreement: float | None
    lower: float
    upper: float
    gates: Sequence[tuple[str, float, bool]] = ()
    marker: tuple[float, str] | None = None


def agreement_chart(rows: Sequence[ChartRow]) -> str:
    """One row per task type (:class:`ChartRow`), on a 0-100% axis."""
    h = 28 * len(rows) + 30
    span = _W - _LABEL - 20
    out = [f'<svg role="img" aria-label="agreement per task type" width="{_W}" height="{h}">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = _LABEL + span * tick
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{h - 20}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{h - 5}" text-anchor="middle">{tick:.0%}</text>')
    for i, row in enumerate(rows):
        y = 8 + 28 * i
        ag = row.agreement or 0.0
        out.append(f'<text x="{_LABEL - 8}" y="{y + 13}" text-anchor="end">{e(row.name)}</text>')
        out.append(
            f'<rect x="{_LABEL}" y="{y}" width="{span * ag:.1f}" height="18" fill="#5b8def">'
            f"<title>{e(row.name)}: {pct(row.agreement)}</title></rect>"
        )
        lo, hi = _LABEL + span * row.lower, _LABEL + span * row.upper
        out.append(
            f'<line x1="{lo:.1f}" y1="{y + 9}" x2="{hi:.1f}" y2="{y + 9}" stroke="#1d232a" '
            'stroke-width="2"/>'
        )
        for level, agreement, met in row.gates:
            gx = _LABEL + span * agreement
            color = "#2a9d48" if met else "#c0392b"
            out.append(
                f'<line x1="{gx:.1f}" y1="{y - 2}" x2="{gx:.1f}" y2="{y + 20}" stroke="{color}" '
                f'stroke-dasharray="3,2"><title>gate {e(level)} {agreement}</title></line>'
            )
        if row.marker is not None:
            value, title = row.marker
            bx = _LABEL + span * value
            out.append(
                f'<polygon points="{bx:.1f},{y + 3} {bx + 6:.1f},{y + 9} {bx:.1f},{y + 15} '
                f'{bx - 6:.1f},{y + 9}" fill="#f4a261" stroke="#1d232a">'
                f"<title>{e(title)}</title></polygon>"
            )
    out.append("</svg>")
    return "".join(out)


def bars(rows: Sequence[tuple[str, float, str]], *, label: str) -> str:
    """Horizontal bars scaled to the largest value; ``rows`` = (name, value, shown text)."""
    if not rows:
        return "<p>nothing to show</p>"
    top = max(v for _, v, _ in rows) or 1.0
    span = _W - _LABEL - 90
    h = 22 * len(rows) + 6
    out = [f'<svg role="img" aria-label="{e(label)}" width="{_W}" height="{h}">']
    for i, (name, value, text) in enumerate(rows):
        y = 4 + 22 * i
        w = span * value / top
        out.append(f'<text x="{_LABEL - 8}" y="{y + 12}" text-anchor="end">{e(name)}</text>')
        out.append(f'<rect x="{_LABEL}" y="{y}" width="{w:.1f}" height="15" fill="#e76f51"/>')
        out.append(f'<text x="{_LABEL + w + 6:.1f}" y="{y + 12}">{e(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def table(head: Iterable[str], rows: Iterable[str]) -> str:
    """A table of column names (plain text) and rows (``<tr>...</tr>`` HTML)."""
    cols = "".join(f"<th>{e(c)}</th>" for c in head)
    return f"<table><tr>{cols}</tr>{''.join(rows)}</table>"


def page(title: str, body: Iterable[str]) -> str:
    """The whole document: ``title`` (plain text) and the body's HTML parts."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{e(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
