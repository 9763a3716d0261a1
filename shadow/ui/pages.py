"""The console's pages (``GET``): overview, one task type, one case, approvals, dead letters
and the audit log. Each reads what the API's read handlers read (the Ladder's agreement
document, the store, the gateway's held writes) and needs the ``viewer`` role; a page shows
an action's button only to a credential that may take it (the action checks again).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web
from markupsafe import Markup

from shadow.cases_api import redacted
from shadow.checks import MAX_ID_LENGTH, text_problem
from shadow.keys import GATEWAY, INTAKE, LADDER, PIPELINE
from shadow.model import Level
from shadow.ui.explain import standing
from shadow.ui.guard import Context, page, task_type_of
from shadow.ui.render import render
from shadow.ui.svg import agreement_chart, chart_points, gauge

__all__ = ["approvals", "audit", "case", "dead_letters", "overview", "task_type"]

AUDIT_PAGE = 100
LETTER_PAGE = 100
HISTORY = 50


async def _tasks(request: web.Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The agreement document and each task type's standing (:func:`standing`)."""
    ladder = request.app[LADDER]
    doc = await ladder.current_agreement()
    pending = await request.app[GATEWAY].store.approvals(status="pending")
    held = Counter(r.task_type for r in pending)
    tasks = []
    for name, entry in doc["task_types"].items():
        view = standing(
            name,
            entry,
            ladder.policy.task_types[name],
            frozen=doc["frozen"],
            held_writes=held[name],
        )
        view["gauge"] = Markup(
            gauge(
                entry["lower"] if entry["n"] else None,
                entry["upper"] if entry["n"] else None,
                entry["agreement"],
                view["gate_agreement"],
                label=name,
            )
        )
        tasks.append(view)
    return doc, tasks


@page("overview")
async def overview(request: web.Request, ctx: Context) -> web.StreamResponse:
    """Each task type: level, agreement and bounds against the next gate, what it takes to
    reach it and why it is held, proposals and held writes waiting."""
    doc, tasks = await _tasks(request)
    return render("overview.html", **ctx.page("overview", frozen=doc["frozen"], tasks=tasks))


@page("overview")
async def task_type(request: web.Request, ctx: Context) -> web.StreamResponse:
    """One task type: its standing, agreement over time with bounds and gate lines, level
    history with the evidence of each move, top disagreeing fields, recent disagreements."""
    name = task_type_of(request)
    doc, tasks = await _tasks(request)
    view = next(t for t in tasks if t["name"] == name)
    task = request.app[LADDER].policy.task_types[name]
    store = request.app[PIPELINE].store
    version = view.get("agent_version")
    series, fields, recent = [], [], []
    if version:
        series = await store.agreement_series(name, version)
        fields = await store.disagreeing_fields(name, version)
        recent = await store.recent_disagreements(name, version)
    points = chart_points([(p.n, p.agree) for p in series], task.autonomy.alpha)
    gates = [
        (str(level), gate.agreement)
        for level, gate in sorted(task.autonomy.gates.items())
        if level <= task.autonomy.ceiling
    ]
    chart = Markup(agreement_chart(points, gates, label=name, ident="agreement"))
    history = await request.app[LADDER].history(name, limit=HISTORY)
    levels = [str(level) for level in Level if level <= task.autonomy.ceiling]
    return render(
        "task_type.html",
        **ctx.page(
            "overview",
            frozen=doc["frozen"],
            task=view,
            chart=chart,
            points=points,
            gates=gates,
            fields=fields,
            recent=recent,
            history=[{"id": i, **e.to_json()} for i, e in history],
            levels=levels,
        ),
    )


def _lookup(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _side_by_side(
    decision: dict[str, Any] | None, outcome: dict[str, Any] | None, comparison: dict[str, Any]
) -> list[dict[str, Any]]:
    """The comparison's fields with the agent's and the human's value of each."""
    agent = (decision or {}).get("decision") or {}
    human = (outcome or {}).get("decision") or {}
    rows = []
    for f in comparison.get("fields", []):
        path = str(f.get("path", ""))
        if path == "actions":
            mine, theirs = (decision or {}).get("actions"), (outcome or {}).get("actions")
        else:
            mine, theirs = _lookup(agent, path), _lookup(human, path)
        rows.append({**f, "agent": mine, "human": theirs})
    return rows


@page("overview")
async def case(request: web.Request, ctx: Context) -> web.StreamResponse:
    """One case: the two decisions side by side, field by field with the reasons, the
    captured tool calls in order, the outcome revisions and the adjudications."""
    event_id = request.match_info["event_id"]
    problem = text_problem(event_id, "event_id", ident=True)
    if len(event_id) > MAX_ID_LENGTH or problem is not None:
        raise web.HTTPBadRequest(text="event_id: too long, or holds a control character")
    found = await request.app[PIPELINE].store.case(event_id)
    if found is None:
        raise web.HTTPNotFound(text=f"the store holds nothing about event id {event_id!r}")
    doc = redacted(found.to_json(), request.app[INTAKE].policy)
    me = ctx.credential
    judged = doc["adjudications"]
    if (
        "reviewer" in me.roles
        and "admin" not in me.roles
        and not any(a["reviewer"] == me.name for a in judged)
    ):
        # As GET /v1/cases: other reviewers' verdicts stay hidden until this one's is in.
        doc["adjudications"], doc["adjudications_hidden"] = [], len(judged)
    current = next((o for o in doc["outcomes"] if o["current"]), None)
    decisions = {d["agent_version"]: d for d in doc["decisions"]}
    compared = [
        {
            **c,
            "rows": _side_by_side(decisions.get(c["agent_version"]), current, c),
            "decision": decisions.get(c["agent_version"]),
        }
        for c in doc["comparisons"]
    ]
    return render(
        "case.html",
        **ctx.page("overview", case=doc, current=current, compared=compared),
    )


@page("approvals")
async def approvals(request: web.Request, ctx: Context) -> web.StreamResponse:
    """Proposals waiting for an approver, and tool writes held for one, each with exactly
    what approving it applies: the levels, or the tool and its arguments."""
    doc, tasks = await _tasks(request)
    proposals = [t for t in tasks if t.get("proposal") or t.get("partial_approval")]
    held = await request.app[GATEWAY].store.approvals(status="pending")
    recent = await request.app[GATEWAY].store.approvals(status=None, limit=20)
    return render(
        "approvals.html",
        **ctx.page(
            "approvals",
            frozen=doc["frozen"],
            proposals=proposals,
            held=[r.to_json() for r in held],
            decided=[r.to_json() for r in recent if r.status != "pending"],
        ),
    )


def _before(request: web.Request) -> int | None:
    text = request.query.get("before")
    if text is None:
        return None
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise web.HTTPBadRequest(text="before: a whole number above 0")
    return int(text)


@page("dead-letters")
async def dead_letters(request: web.Request, ctx: Context) -> web.StreamResponse:
    """The dead letters with their reasons, newest first, a page at a time."""
    letters, total = await request.app[PIPELINE].store.dead_letter_page(
        before=_before(request), limit=LETTER_PAGE
    )
    older = letters[-1]["id"] if len(letters) == LETTER_PAGE else None
    return render(
        "dead_letters.html",
        **ctx.page("dead-letters", letters=letters, total=total, older=older),
    )


@page("audit")
async def audit(request: web.Request, ctx: Context) -> web.StreamResponse:
    """The audit log, newest first, and the state of its hash chain (the server's walk)."""
    store = request.app[LADDER].store
    chain = await store.audit_chain()
    entries = await store.audit_newest(before=_before(request), limit=AUDIT_PAGE)
    older = entries[-1].id if len(entries) == AUDIT_PAGE else None
    return render(
        "audit.html",
        **ctx.page(
            "audit", chain=chain.to_json(), entries=[e.to_json() for e in entries], older=older
        ),
    )
