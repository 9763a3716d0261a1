"""The HTML report: one self-contained file rendered from the JSON document.

Contract: no network access and no script (the page, its style and its charts are
:mod:`shadow.report_html`'s, shared with the live evidence report of ``shadow report``, so
the two look alike). Every text from the history or the agent is HTML-escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from replay.noise import noise_line
from shadow.report_html import (
    ChartRow,
    acceptance_text,
    agreement_chart,
    bars,
    page,
    pct,
    table,
)
from shadow.report_html import e as _e

__all__ = ["render_html"]


def _chart_row(name: str, t: Mapping[str, Any]) -> ChartRow:
    """Bar = agreement, whisker = [lower, upper], ticks = gates, diamond = the baseline's
    agreement."""
    base = t.get("baseline")
    marker = None
    if base and base.get("agreement") is not None:
        marker = (base["agreement"], f"baseline {pct(base['agreement'])}")
    return ChartRow(
        name,
        t.get("agreement"),
        t["lower"],
        t["upper"],
        [(level, g["agreement"], g["met"]) for level, g in t["gates"]["levels"].items()],
        marker,
    )


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


def _task(name: str, t: Mapping[str, Any], trace_link: str | None = None) -> str:
    parts = [f'<h2 id="t-{_e(name)}">{_e(name)}</h2>']
    parts.append(
        f"<p>Evidence (blind outcomes): n {t['n']}, agree {t['agree']} "
        f"({pct(t['agreement'])}), anytime-valid bounds "
        f"[{pct(t['lower'])}, {pct(t['upper'])}], critical misses {t['critical']}, "
        f"agent errors {t['errors']}; agent {_e(t.get('agent_version'))}</p>"
    )
    noise = noise_line(t)
    if noise:
        # Next to the agreement, as the live report shows it: how often two humans agree,
        # and how often the candidate agrees with itself on repeated tries.
        parts.append(f"<p>Noise floor (not evidence): {_e(noise)}</p>")
    parts.append(
        f"<p>Acceptance (not evidence: items the agent handled, or decided by a human shown "
        f"its proposal): {_e(acceptance_text(t.get('acceptance')))}</p>"
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
    segments = t.get("segments") or {}
    if segments:
        rows = "".join(
            f"<tr><td>{_e(seg)}</td>"
            + "".join(
                f"<td class=num>{_e(c)}</td>"
                for c in (
                    f["n"],
                    f["agree"],
                    pct(f.get("agreement")),
                    pct(f.get("lower")),
                    pct(f.get("upper")),
                    f.get("critical"),
                    f.get("errors"),
                )
            )
            + "</tr>"
            for seg, f in segments.items()
        )
        parts.append(
            "<h3>Segments</h3><p>The blind cases of each event segment, each with its own "
            "anytime-valid bounds (cases without a segment are in none).</p>"
            + table(
                ("segment", "n", "agree", "agreement", "lower", "upper", "critical", "errors"),
                [rows],
            )
        )
    budgets = t.get("budgets") or {}
    stated = [
        (name, b)
        for name in ("cost_usd_per_decision", "latency_ms_p95", "error_rate")
        if (b := budgets.get(name))
    ]
    if stated:
        items = "".join(
            f'<li><span class="badge {"bad" if b.get("exceeded") else "ok"}">'
            f"{'exceeded' if b.get('exceeded') else 'within'}</span> "
            f"{_e(b.get('statement'))} (the {_e((budgets.get('levels') or {}).get(name))} "
            "gate's budget)</li>"
            for name, b in stated
        )
        parts.append(f"<h3>Budgets</h3><ul>{items}</ul>")
    base = t.get("baseline")
    if base:
        cls = "bad" if base["significantly_worse"] else "ok"
        parts.append(f'<p>Baseline: <span class="badge {cls}">{_e(base["statement"])}</span></p>')
        crit = base.get("critical_miss")
        if crit:
            cls = "bad" if crit["significantly_worse"] else "ok"
            parts.append(
                f'<p>Critical misses: <span class="badge {cls}">{_e(crit["statement"])}</span></p>'
            )
        segments = base.get("segments") or {}
        if segments:
            rows = "".join(
                f"<tr><td>{_e(seg)}</td><td>{'worse' if e['significantly_worse'] else '-'}</td>"
                f"<td>{_e(e['statement'])}</td></tr>"
                for seg, e in segments.items()
            )
            parts.append(
                "<h3>Segments vs baseline</h3><table><tr><th>segment</th><th>regression</th>"
                f"<th>test</th></tr>{rows}</table>"
            )
    fields = [
        (p, float(f["mismatches"]), f"{f['mismatches']}/{f['compared']} ({f['rate']:.1%})")
        for p, f in t["fields"].items()
        if f["mismatches"]
    ][:15]
    parts.append("<h3>Disagreement by field</h3>" + bars(fields, label=f"{name} fields"))
    for path, cm in t["confusion"].items():
        parts.append(_confusion(path, cm))
    lat = t["latency_ms"]
    lat_rows = [
        (k, float(lat[k]), f"{lat[k]:.1f} ms")
        for k in ("p50", "p90", "p95", "p99", "max")
        if lat.get(k) is not None
    ]
    parts.append(
        f"<h3>Latency ({lat['count']} timed answers)</h3>" + bars(lat_rows, label="latency")
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
                if trace_link is not None and ex.get("trace_id"):
                    url = trace_link.replace("{trace_id}", str(ex["trace_id"]))
                    parts.append(f'<p><a href="{_e(url)}">the live case\'s trace</a></p>')
    return "".join(parts)


def _cases(doc: Mapping[str, Any]) -> str:
    h = doc["history"]
    if doc.get("complete", True):
        return f"{h['selected']} of {h['cases']} cases"
    return (
        f"partial: {h.get('scored', 0)} cases scored, {h['selected']} read "
        f"({h.get('unscored', 0)} not scored) of {h['cases']}"
    )


def render_html(doc: Mapping[str, Any], *, trace_link: str | None = None) -> str:
    """The page for ``doc``. ``trace_link`` is a link template with ``{trace_id}``
    (``SHADOW_TRACE_URL``): an example case whose live comparison kept its trace links it."""
    tasks: Mapping[str, Any] = doc["task_types"]
    agent = doc["agent"]
    version = agent.get("agent_version")
    h = doc["history"]
    state = (
        '<span class="badge ok">complete</span>'
        if doc["complete"]
        else '<span class="badge warn">PARTIAL: interrupted run</span>'
    )
    reg = doc.get("regression")
    verdict = ""
    if reg is not None:
        reasons = "".join(f"<li>{_e(f['reason'])}</li>" for f in reg.get("failures", ()))
        verdict = (
            f'<p><span class="badge bad">Regression vs baseline on {_e(", ".join(reg["worse"]))}'
            f"</span></p><ul>{reasons}</ul>"
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
            pct(t["agreement"]),
            pct(t["lower"]),
            pct(t["upper"]),
            t["critical"],
            t["errors"],
        ]
        rows.append(
            f'<tr><td><a href="#t-{_e(name)}">{_e(name)}</a></td>'
            + "".join(f"<td class=num>{_e(c)}</td>" for c in cells)
            + f"<td>{_e(t['gates']['cleared'])}</td><td>{_e(delta)}</td>"
            + f"<td>{_e(acceptance_text(t.get('acceptance')))}</td></tr>"
        )
    summary = table(head_cols, rows)
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
        agreement_chart([_chart_row(name, t) for name, t in tasks.items()]),
        *(_task(name, t, trace_link) for name, t in tasks.items()),
    ]
    return page(f"Replay report: {'-' if version is None else version}", body)
