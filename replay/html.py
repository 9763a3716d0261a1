"""The HTML report: one self-contained file rendered from the JSON document.

Contract: no network access and no script. Styles are one inline ``<style>`` block, charts
are inline SVG, and nothing references another file or URL (a strict
``Content-Security-Policy`` meta tag says so to the browser too), so the file can be
mailed, archived as a CI artifact or opened offline. Every text from the history or the
agent is HTML-escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

__all__ = ["render_html"]

_CSS = """
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


def _e(value: object) -> str:
    return escape("-" if value is None else str(value))


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _agreement_chart(tasks: Mapping[str, Any]) -> str:
    """One row per task type: bar = agreement, whisker = [lower, upper], ticks = gates,
    a diamond = the baseline's agreement."""
    rows = list(tasks.items())
    h = 28 * len(rows) + 30
    span = _W - _LABEL - 20
    out = [f'<svg role="img" aria-label="agreement per task type" width="{_W}" height="{h}">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = _LABEL + span * tick
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{h - 20}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{h - 5}" text-anchor="middle">{tick:.0%}</text>')
    for i, (name, t) in enumerate(rows):
        y = 8 + 28 * i
        ag = t.get("agreement") or 0.0
        out.append(f'<text x="{_LABEL - 8}" y="{y + 13}" text-anchor="end">{_e(name)}</text>')
        out.append(
            f'<rect x="{_LABEL}" y="{y}" width="{span * ag:.1f}" height="18" fill="#5b8def">'
            f"<title>{_e(name)}: {_pct(t.get('agreement'))}</title></rect>"
        )
        lo, hi = _LABEL + span * t["lower"], _LABEL + span * t["upper"]
        out.append(
            f'<line x1="{lo:.1f}" y1="{y + 9}" x2="{hi:.1f}" y2="{y + 9}" stroke="#1d232a" '
            'stroke-width="2"/>'
        )
        for level, g in t["gates"]["levels"].items():
            gx = _LABEL + span * g["agreement"]
            color = "#2a9d48" if g["met"] else "#c0392b"
            out.append(
                f'<line x1="{gx:.1f}" y1="{y - 2}" x2="{gx:.1f}" y2="{y + 20}" stroke="{color}" '
                f'stroke-dasharray="3,2"><title>gate {_e(level)} {g["agreement"]}</title></line>'
            )
        base = t.get("baseline")
        if base and base.get("agreement") is not None:
            bx = _LABEL + span * base["agreement"]
            out.append(
                f'<polygon points="{bx:.1f},{y + 3} {bx + 6:.1f},{y + 9} {bx:.1f},{y + 15} '
                f'{bx - 6:.1f},{y + 9}" fill="#f4a261" stroke="#1d232a">'
                f"<title>baseline {_pct(base['agreement'])}</title></polygon>"
            )
    out.append("</svg>")
    return "".join(out)


def _bars(rows: Sequence[tuple[str, float, str]], *, label: str) -> str:
    """Horizontal bars scaled to the largest value; ``rows`` = (name, value, shown text)."""
    if not rows:
        return "<p>nothing to show</p>"
    top = max(v for _, v, _ in rows) or 1.0
    span = _W - _LABEL - 90
    h = 22 * len(rows) + 6
    out = [f'<svg role="img" aria-label="{_e(label)}" width="{_W}" height="{h}">']
    for i, (name, value, text) in enumerate(rows):
        y = 4 + 22 * i
        w = span * value / top
        out.append(f'<text x="{_LABEL - 8}" y="{y + 12}" text-anchor="end">{_e(name)}</text>')
        out.append(f'<rect x="{_LABEL}" y="{y}" width="{w:.1f}" height="15" fill="#e76f51"/>')
        out.append(f'<text x="{_LABEL + w + 6:.1f}" y="{y + 12}">{_e(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def _confusion(path: str, cm: Mapping[str, Any]) -> str:
    labels: list[str] = cm["labels"]
    matrix: list[list[int]] = cm["matrix"]
    top = max((v for row in matrix for v in row), default=1) or 1
    head = "".join(f"<th>{_e(lab)}</th>" for lab in labels)
    body = []
    for lab, row in zip(labels, matrix, strict=True):
        cells = []
        for j, v in enumerate(row):
            diag = labels[j] == lab
            alpha = 0.1 + 0.8 * v / top if v else 0.0
            color = f"rgba(42,157,72,{alpha:.2f})" if diag else f"rgba(231,111,81,{alpha:.2f})"
            cells.append(f'<td style="background:{color}">{v}</td>')
        body.append(f"<tr><th>{_e(lab)}</th>{''.join(cells)}</tr>")
    return (
        f"<h3>Confusion matrix: {_e(path)} (rows: human, columns: agent)</h3>"
        f'<table class="cm"><tr><th></th>{head}</tr>{"".join(body)}</table>'
    )


def _acceptance(acc: Mapping[str, Any] | None) -> str:
    """``agent 98.00% of 50, assisted -`` from an ``acceptance`` entry (``-``: none)."""
    parts = [
        f"{h} {_pct(a['agreement'])} of {a['n']}"
        for h, a in (acc or {}).items()
        if a and a.get("n")
    ]
    return ", ".join(parts) or "-"


def _task(name: str, t: Mapping[str, Any]) -> str:
    parts = [f'<h2 id="t-{_e(name)}">{_e(name)}</h2>']
    parts.append(
        f"<p>Evidence (blind outcomes): n {t['n']}, agree {t['agree']} "
        f"({_pct(t['agreement'])}), anytime-valid bounds "
        f"[{_pct(t['lower'])}, {_pct(t['upper'])}], critical misses {t['critical']}, "
        f"agent errors {t['errors']}; agent {_e(t.get('agent_version'))}</p>"
    )
    parts.append(
        f"<p>Acceptance (not evidence: items the agent handled, or decided by a human shown "
        f"its proposal): {_e(_acceptance(t.get('acceptance')))}</p>"
    )
    gates = t["gates"]
    rows = "".join(
        f"<tr><td>{_e(level)}</td><td class=num>{g['agreement']}</td>"
        f"<td class=num>{g['min_samples']}</td><td class=num>{_e(g['max_critical'])}</td>"
        f"<td>{'met' if g['met'] else _e(g['missing'])}</td></tr>"
        for level, g in gates["levels"].items()
    )
    parts.append(
        f"<h3>Gates (would clear {_e(gates['cleared'])}; ceiling {_e(gates['ceiling'])})</h3>"
        "<table><tr><th>level</th><th>agreement</th><th>min samples</th><th>max critical</th>"
        f"<th>status</th></tr>{rows}</table>"
    )
    base = t.get("baseline")
    if base:
        cls = "bad" if base["significantly_worse"] else "ok"
        parts.append(f'<p>Baseline: <span class="badge {cls}">{_e(base["statement"])}</span></p>')
    fields = [
        (p, float(f["mismatches"]), f"{f['mismatches']}/{f['compared']} ({f['rate']:.1%})")
        for p, f in t["fields"].items()
        if f["mismatches"]
    ][:15]
    parts.append("<h3>Disagreement by field</h3>" + _bars(fields, label=f"{name} fields"))
    for path, cm in t["confusion"].items():
        parts.append(_confusion(path, cm))
    lat = t["latency_ms"]
    lat_rows = [
        (k, float(lat[k]), f"{lat[k]:.1f} ms")
        for k in ("p50", "p90", "p95", "p99", "max")
        if lat.get(k) is not None
    ]
    parts.append(
        f"<h3>Latency ({lat['count']} timed answers)</h3>" + _bars(lat_rows, label="latency")
    )
    usage = t["usage"]
    parts.append(
        f"<p>Usage: {usage['input_tokens']} input tokens, {usage['output_tokens']} output "
        f"tokens, cost ${usage['cost_usd']:.4f}</p>"
    )
    for title, key in (
        ("Critical misses", "critical_examples"),
        ("Agent errors", "error_examples"),
    ):
        examples = t.get(key) or []
        if examples:
            parts.append(f"<h3>{title} (first {len(examples)} by event id)</h3>")
            for ex in examples:
                text = json.dumps(ex, indent=2, ensure_ascii=False)
                parts.append(f"<pre>{_e(text)}</pre>")
    return "".join(parts)


def _cases(doc: Mapping[str, Any]) -> str:
    h = doc["history"]
    if doc.get("complete", True):
        return f"{h['selected']} of {h['cases']} cases"
    return (
        f"partial: {h.get('scored', 0)} cases scored, {h['selected']} read "
        f"({h.get('unscored', 0)} not scored) of {h['cases']}"
    )


def render_html(doc: Mapping[str, Any]) -> str:
    tasks: Mapping[str, Any] = doc["task_types"]
    agent = doc["agent"]
    h = doc["history"]
    state = (
        '<span class="badge ok">complete</span>'
        if doc["complete"]
        else '<span class="badge warn">PARTIAL: interrupted run</span>'
    )
    reg = doc.get("regression")
    verdict = ""
    if reg is not None:
        verdict = (
            f'<p><span class="badge bad">Regression vs baseline on {_e(", ".join(reg["worse"]))}'
            "</span></p>"
            if reg["regression"]
            else '<p><span class="badge ok">No significant regression vs baseline</span></p>'
        )
    head_cols = (
        "task type",
        "n",
        "agree",
        "agreement",
        "lower",
        "upper",
        "critical",
        "errors",
        "gate cleared",
        "vs baseline",
        "acceptance (not evidence)",
    )
    rows = []
    for name, t in tasks.items():
        base = t.get("baseline")
        delta = "-"
        if base and base["delta"]["agreement"] is not None:
            delta = f"{base['delta']['agreement'] * 100:+.2f} pp"
            delta += " (worse)" if base["significantly_worse"] else ""
        cells = [
            t["n"],
            t["agree"],
            _pct(t["agreement"]),
            _pct(t["lower"]),
            _pct(t["upper"]),
            t["critical"],
            t["errors"],
        ]
        rows.append(
            f'<tr><td><a href="#t-{_e(name)}">{_e(name)}</a></td>'
            + "".join(f"<td class=num>{_e(c)}</td>" for c in cells)
            + f"<td>{_e(t['gates']['cleared'])}</td><td>{_e(delta)}</td>"
            + f"<td>{_e(_acceptance(t.get('acceptance')))}</td></tr>"
        )
    summary = (
        "<table><tr>"
        + "".join(f"<th>{c}</th>" for c in head_cols)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )
    body = [
        f"<h1>Replay report: {_e(agent.get('agent_version'))}</h1>",
        f'<p class="meta">{state} agent {_e(agent.get("spec"))}; history {_e(h["path"])} '
        f"({_e(h['format'])}, {_cases(doc)}); policy "
        f"{_e(doc['policy']['source'])} ({_e(doc['policy']['hash'])})</p>",
        verdict,
        "<h2>Agreement by task type</h2>",
        "<p>Agreement, bounds, gates and the baseline test count the blind outcomes only "
        "(decided without seeing the agent's answer: the live evidence). Outcomes of items "
        "the agent handled or a human decided with its proposal shown are acceptance, "
        "reported beside it.</p>",
        summary,
        _agreement_chart(tasks),
        *(_task(name, t) for name, t in tasks.items()),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>Replay report: {_e(agent.get('agent_version'))}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
