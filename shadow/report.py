"""The live evidence report (``shadow report``): for the live sidecar what the replay report
is for a replay, as JSON and as one self-contained HTML file (docs/report.md).

Pure: :func:`build_report` turns a ``GET /v1/agreement`` document (read from a running
sidecar or computed offline from its store by :mod:`shadow.report_cli`) and each task
type's level history (``GET /v1/autonomy/{task_type}/history`` entries, newest first) into
the report document; :func:`render_html` renders that document with the page, style and
charts the replay report uses (:mod:`shadow.report_html`). No I/O, no clock.

The document (schema ``shadow-live-report/1``; fields are only ever added, never renamed)
keeps every field of each task type's ``/v1/agreement`` entry as served (the evidence
``n``, ``agree``, ``agreement``, ``lower``, ``upper``, ``critical``, ``errors``, with
``agent_version`` and ``acceptance``: the names, meaning and rounding of the replay
report's entries), adds the replay report's ``disagree`` (``n - agree - errors``), always
carries ``adjudicated`` (``null`` until the sidecar reports one) and ``partial_approval``,
and adds ``level_history``. ``totals`` has the replay report's shape, its bounds at
``alpha``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from shadow.evidence_view import (
    agreement_met,
    beside_lines,
    budget_rows,
    cost_per_decision,
    evidence_invalid,
    gate_held,
    segment_rows,
)
from shadow.promotion import agreement_fields
from shadow.report_html import (
    ChartRow,
    acceptance_text,
    agreement_chart,
    e,
    page,
    pct,
    table,
)
from shadow.stats import lower_bound, upper_bound

__all__ = ["ALPHA", "SCHEMA", "build_report", "dumps", "render_html", "reviewed"]

SCHEMA = "shadow-live-report/1"
ALPHA = 0.05  # of the totals' bounds (each task type's own bounds are at its policy's alpha)
# The per task type fields, in this order, before any other field /v1/agreement serves.
_FIRST = (
    "agent_version",
    "n",
    "agree",
    "agreement",
    "lower",
    "upper",
    "critical",
    "errors",
    "disagree",
    "acceptance",
    "level",
    "ceiling",
    "mode",
    "next_gate",
    "proposal",
    "partial_approval",
    "last_decision",
    "hold",
    "adjudicated",
)


def build_report(
    agreement: Mapping[str, Any],
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    source: Mapping[str, str],
    generated_at: datetime,
) -> dict[str, Any]:
    """The report document. ``source``: ``{"url": ...}`` or ``{"db": ...}``, where the
    evidence was read."""
    tasks: dict[str, Any] = {}
    for name, t in agreement["task_types"].items():
        body = {**t, "disagree": t["n"] - t["agree"] - t["errors"]}
        body.setdefault("adjudicated", None)
        body.setdefault("partial_approval", None)
        entry = {k: body[k] for k in _FIRST if k in body}
        entry |= {k: v for k, v in body.items() if k not in entry}
        entry["level_history"] = [dict(h) for h in histories.get(name, ())]
        tasks[name] = entry
    return {
        "schema": SCHEMA,
        "source": dict(source),
        "generated_at": generated_at.isoformat(),
        "frozen": bool(agreement.get("frozen")),
        "alpha": ALPHA,
        "totals": _totals(tasks),
        "task_types": tasks,
    }


def _totals(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    n = sum(t["n"] for t in tasks.values())
    agree = sum(t["agree"] for t in tasks.values())
    acceptance: dict[str, dict[str, Any]] = {}
    for t in tasks.values():
        for handled_by, a in (t.get("acceptance") or {}).items():
            into = acceptance.setdefault(handled_by, {"n": 0, "agree": 0})
            into["n"] += a.get("n") or 0
            into["agree"] += a.get("agree") or 0
    for a in acceptance.values():
        a["agreement"] = a["agree"] / a["n"] if a["n"] else None
    return {
        **agreement_fields(
            n,
            agree,
            lower_bound(agree, n, ALPHA),
            upper_bound(agree, n, ALPHA),
            sum(t["critical"] for t in tasks.values()),
            sum(t["errors"] for t in tasks.values()),
        ),
        "acceptance": acceptance,
    }


def reviewed(adjudicated: Mapping[str, Any] | None) -> int:
    """How many blind reviews an ``adjudicated`` block counts (0: none, or no block)."""
    counts = (adjudicated or {}).get("reviewed") or {}
    return sum(v for v in counts.values() if isinstance(v, int))


# -- HTML -------------------------------------------------------------------------------------


def _gate_status(gate: Mapping[str, Any]) -> str:
    """``met``, ``needs +k agreeing`` or ``out of reach`` (as ``shadow status`` says), or
    ``met overall, held by segment us: ...`` while a ``per_segment`` gate's declared segment
    or a budget falls short."""
    held = gate_held({"next_gate": gate})
    if agreement_met(gate) and held:
        return "met overall, held by " + "; ".join(held)
    if gate["met"]:
        return "met"
    k = gate.get("agreements_needed")
    return f"needs +{k} agreeing" if k is not None else "out of reach"


def _gate_text(gate: Mapping[str, Any] | None) -> str:
    """``L2: ≥ 0.95, n ≥ 300 (met)``, or what it still needs; ``at ceiling`` without one."""
    if gate is None:
        return "at ceiling"
    text = f"{gate['level']}: ≥ {gate['agreement']}, n ≥ {gate['min_samples']}"
    if gate.get("max_critical") is not None:
        text += f", critical ≤ {gate['max_critical']}"
    if gate.get("evidence") == "adjudicated":
        text += ", on the adjudicated bound"
    relative = gate.get("below_human")
    if relative:  # a gate relative to the human ceiling (shadow.noise): where it came from
        text += (
            f" (the human ceiling's upper bound {relative['ceiling_upper']} less "
            f"{relative['margin']:g}, over {relative['ceiling_n']} second opinions)"
        )
    if gate.get("per_segment") is not None:
        text += f", per segment ({gate['per_segment']})"
    return f"{text} ({_gate_status(gate)})"


def _adjudicated_short(adj: Mapping[str, Any] | None) -> str:
    if not reviewed(adj) or adj is None or adj.get("estimate") is None:
        return "no reviews yet"
    return f"{pct(adj['estimate'])} [{pct(adj.get('lower'))}, {pct(adj.get('upper'))}]"


def _adjudicated(adj: Mapping[str, Any] | None) -> str:
    if not reviewed(adj) or adj is None:
        return "<p>No reviews yet: no blindly reviewed case counts toward an estimate.</p>"
    rev = adj.get("reviewed") or {}
    ok = adj.get("acceptable") or {}
    text = (
        f"<p>Estimate {e(pct(adj.get('estimate')))}, bounds [{e(pct(adj.get('lower')))}, "
        f"{e(pct(adj.get('upper')))}] over blind reviews of {e(rev.get('agree'))} agreements "
        f"and {e(rev.get('disagree'))} disagreements; the agent's answer was acceptable in "
        f"{e(ok.get('agree'))} and {e(ok.get('disagree'))} of them.</p>"
    )
    pair = adj.get("reviewer_agreement")
    if pair:
        text += (
            f"<p>Reviewers agree on {e(pair.get('agree'))} of {e(pair.get('cases'))} cases "
            f"reviewed twice ({e(pct(pair.get('rate')))}).</p>"
        )
    else:
        text += "<p>No case has two blind reviews yet.</p>"
    return text


def _segments(t: Mapping[str, Any]) -> str:
    """The task type's segments: each one's figures and its state (as ``shadow status``)."""
    rows = []
    for seg in segment_rows(t):
        cells = [
            seg["n"],
            seg["agree"],
            pct(seg["agreement"]),
            pct(seg["lower"]),
            pct(seg["upper"]),
            seg["critical"],
            seg["errors"],
        ]
        state = seg["state"] + (f": {seg['holds']}" if seg["holds"] else "")
        rows.append(
            f"<tr><td>{e(seg['segment'])}</td>"
            + "".join(f"<td class=num>{e(c)}</td>" for c in cells)
            + f"<td>{e(state)}</td></tr>"
        )
    head = ("segment", "n", "agree", "agreement", "lower", "upper", "critical", "errors", "state")
    return (
        "<h3>Segments</h3><p>Blind comparisons per segment, each with its own anytime-valid "
        "bounds; undeclared segments count together as <code>other</code>, never gated on "
        "their own.</p>" + table(head, rows)
    )


def _evidence_state(t: Mapping[str, Any]) -> str:
    """A badge and the reason while the evidence is invalid, then the evidence beside the
    agreement (join health, noise floor, budgets, daily cost), a line each, and the budgets
    of the judged gate as a table."""
    parts = []
    why = evidence_invalid(t)
    if why is not None:
        parts.append(f'<p><span class="badge bad">Evidence invalid</span> {e(why)}</p>')
    lines = beside_lines(t)
    if lines:
        items = "".join(f"<li>{e(line)}</li>" for line in lines)
        parts.append(f"<h3>Beside the agreement</h3><ul>{items}</ul>")
    rows = [
        "<tr>"
        + "".join(f"<td>{e(b[k])}</td>" for k in ("budget", "limit", "observed", "bound"))
        + f'<td><span class="badge {"ok" if b["state"] == "met" else "bad"}">'
        f"{e(b['state'])}</span></td></tr>"
        for b in budget_rows(t)
    ]
    if rows:
        gate = (t.get("budgets") or {}).get("gate")
        parts.append(
            f"<h3>Budgets of the {e(gate)} gate</h3>"
            + table(("budget", "limit", "observed", "bounds", "state"), rows)
        )
    return "".join(parts)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def _history(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "<p>No entries.</p>"
    rows = []
    for h in entries:
        ev = h.get("evidence") or {}
        lower = ev.get("lower")
        cells = [
            str(h.get("at", ""))[:19].replace("T", " "),
            h.get("actor"),
            h.get("action"),
            f"{h.get('from_level') or '-'} → {h.get('to_level') or '-'}",
            h.get("reason"),
            ev.get("n"),
            f"{lower:.4f}" if isinstance(lower, float) else lower,
        ]
        rows.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    return table(("at", "actor", "action", "level", "reason", "n", "lower"), rows)


def _task(name: str, t: Mapping[str, Any]) -> str:
    parts = [f'<h2 id="t-{e(name)}">{e(name)}</h2>']
    parts.append(
        f"<p>Evidence (blind outcomes): n {t['n']}, agree {t['agree']} "
        f"({pct(t['agreement'])}), anytime-valid bounds "
        f"[{pct(t['lower'])}, {pct(t['upper'])}], critical misses {t['critical']}, "
        f"agent errors {t['errors']}; agent {e(t.get('agent_version'))}</p>"
    )
    parts.append(
        f"<p>Acceptance (not evidence: items the agent handled, or decided by a human shown "
        f"its proposal): {e(acceptance_text(t.get('acceptance')))}</p>"
    )
    parts.append(
        f"<p>Level {e(t.get('level'))} (ceiling {e(t.get('ceiling'))}, mode {e(t.get('mode'))})</p>"
    )
    parts.append(_evidence_state(t))
    gate = t.get("next_gate")
    if gate is None:
        parts.append("<h3>Next gate</h3><p>At its ceiling: no gate above.</p>")
    else:
        judged = gate.get("evidence") or "agreement"
        if gate.get("since_drift_demotion"):
            judged += ", since the drift demotion"
        row = (
            f"<tr><td>{e(gate['level'])}</td><td class=num>{e(gate['agreement'])}</td>"
            f"<td class=num>{e(gate['min_samples'])}</td>"
            f"<td class=num>{e(gate.get('max_critical'))}</td><td>{e(judged)}</td>"
            f"<td>{e(_gate_status(gate))}</td></tr>"
        )
        parts.append(
            "<h3>Next gate</h3>"
            + table(
                ("level", "agreement", "min samples", "max critical", "judged on", "status"),
                [row],
            )
        )
    proposal = t.get("proposal")
    if proposal:
        ev = proposal.get("evidence") or {}
        parts.append(
            f'<p><span class="badge warn">Proposal {e(proposal.get("id"))}: '
            f"{e(proposal.get('from_level'))} → {e(proposal.get('to_level'))}</span> "
            f"proposed {e(proposal.get('proposed_at'))} on n {e(ev.get('n'))}, lower "
            f"{e(ev.get('lower'))}; waiting for approval</p>"
        )
    partial = t.get("partial_approval")
    if partial:
        parts.append(
            f"<p>First approval by {e(partial.get('by'))} ({e(partial.get('from'))} → "
            f"{e(partial.get('to'))}); {e(partial.get('needs'))}</p>"
        )
    hold = t.get("hold")
    if hold:
        parts.append(
            f"<p>Held after a drift demotion from {e(hold.get('level'))}: that level is "
            "re-earned on the evidence since.</p>"
        )
    if t.get("segments"):
        parts.append(_segments(t))
    parts.append("<h3>Adjudicated agreement</h3>" + _adjudicated(t.get("adjudicated")))
    history = t.get("level_history") or []
    parts.append(f"<h3>Level history (newest {len(history)})</h3>" + _history(history))
    return "".join(parts)


def _chart_row(name: str, t: Mapping[str, Any]) -> ChartRow:
    """Bar = agreement, whisker = [lower, upper], tick = the next gate, diamond = the
    adjudicated estimate."""
    gate = t.get("next_gate")
    gates = [] if gate is None else [(gate["level"], gate["agreement"], gate["met"])]
    adj = t.get("adjudicated")
    marker = None
    if reviewed(adj) and adj is not None and adj.get("estimate") is not None:
        marker = (adj["estimate"], f"adjudicated {pct(adj['estimate'])}")
    return ChartRow(name, t.get("agreement"), t["lower"], t["upper"], gates, marker)


def render_html(doc: Mapping[str, Any]) -> str:
    tasks: Mapping[str, Any] = doc["task_types"]
    where = "; ".join(f"{k} {v}" for k, v in doc["source"].items())
    frozen = (
        '<span class="badge bad">FROZEN: every task type held at L0</span> '
        if doc.get("frozen")
        else ""
    )
    rows = []
    for name, t in tasks.items():
        cells = [
            t["n"],
            t["agree"],
            pct(t["agreement"]),
            pct(t["lower"]),
            pct(t["upper"]),
            t["critical"],
            t["errors"],
            t.get("level"),
        ]
        proposal = t.get("proposal")
        level_note = f" → {proposal.get('to_level')}?" if proposal else ""
        rows.append(
            f'<tr><td><a href="#t-{e(name)}">{e(name)}</a></td>'
            + "".join(f"<td class=num>{e(c)}</td>" for c in cells[:-1])
            + f"<td>{e(cells[-1])}{e(level_note)}</td>"
            + f"<td>{e(evidence_invalid(t) or t.get('evidence_state'))}</td>"
            + f"<td class=num>{e(_usd(cost_per_decision(t)))}</td>"
            + f"<td>{e(_gate_text(t.get('next_gate')))}</td>"
            + f"<td>{e(_adjudicated_short(t.get('adjudicated')))}</td>"
            + f"<td>{e(acceptance_text(t.get('acceptance')))}</td></tr>"
        )
    head = (
        "task type",
        "n",
        "agree",
        "agreement",
        "lower",
        "upper",
        "critical",
        "errors",
        "level",
        "evidence",
        "cost/decision",
        "next gate",
        "adjudicated",
        "acceptance (not evidence)",
    )
    body = [
        "<h1>Live evidence report</h1>",
        f'<p class="meta">{frozen}{e(where)}; generated {e(doc["generated_at"])}; '
        f"{len(tasks)} task types</p>",
        "<h2>Agreement by task type</h2>",
        "<p>Agreement, bounds and gates count the blind outcomes only (decided without "
        "seeing the agent's answer: the evidence). Outcomes of items the agent handled or a "
        "human decided with its proposal shown are acceptance, reported beside it. The "
        "adjudicated estimate corrects the agreement with blind reviews of sampled cases "
        "(the diamond in the chart).</p>",
        table(head, rows),
        agreement_chart([_chart_row(name, t) for name, t in tasks.items()]),
        *(_task(name, t) for name, t in tasks.items()),
    ]
    return page("Live evidence report", body)


def dumps(doc: Mapping[str, Any]) -> str:
    """The JSON file's text."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
