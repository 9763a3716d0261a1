"""One case, whole, over HTTP (docs/api.md, "One case"): ``GET /v1/cases/{event_id}``; and
the dead letters, page by page: ``GET /v1/dead-letters?before=ID&limit=N``.

The answer is :meth:`shadow.store.CaseView.to_json` (one store call,
:meth:`shadow.store.cases.CasePart.case`) with the policy in force applied once more
(:func:`redacted`): the event's payload without the task type's ``redact`` paths, and every
action's and tool call's arguments without the ``tools.redact`` paths of its tool. What the
store holds is redacted on the way in already (the store's module docstring says where), so
this only matters for what the way in does not cover: the actions an agent's answer listed
(stored as it answered them) and records stored before the policy redacted a field.

**Who may read it.** A credential with the ``viewer`` role (every role that reads). In the
simple mode (no tokens file) the admin token, as for ``GET /v1/approvals``: a case shows
payloads, decisions and tool call arguments, not aggregates, so it is not one of the open
reads.

**Its trace.** ``trace_id`` is the case's OpenTelemetry trace (:mod:`shadow.tracing`): the
one kept with its newest comparison, else, while tracing is on, the one its agent call is
written into; ``trace_url`` is ``SHADOW_TRACE_URL`` with ``{trace_id}`` filled in. Both are
``null`` without a trace (tracing off, the case not sampled, never sent to the agent).

Dead letters need the same credential (they keep what a refused record held, redacted as
the policy says: ``SHADOW_DEAD_LETTER_RAW_PREFIX``).

The event id is the path's last segment, percent-decoded. One over
:data:`~shadow.checks.MAX_ID_LENGTH` characters, or with a control character or a lone
surrogate (:func:`~shadow.checks.text_problem`, as ``GET /v1/route`` checks its
``event_id``), is a 400; an id the store holds nothing about is a 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shadow.checks import MAX_ID_LENGTH, text_problem
from shadow.credentials import access_refusal, credential_of, refused_text
from shadow.keys import INTAKE, PIPELINE, SETTINGS, TRACER
from shadow.policy import Policy
from shadow.server import error
from shadow.tools_policy import redact_args
from shadow.tracing import trace_url

__all__ = ["DEAD_LETTER_PAGE", "MAX_DEAD_LETTER_PAGE", "cases_routes", "redacted"]


def redacted(case: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """``case`` (a :meth:`~shadow.store.CaseView.to_json` document) without a field
    ``policy`` redacts: the event payload's ``redact`` paths (its task type's, or every task
    type's when the policy does not configure it, as for dead letters), and the
    ``tools.redact`` paths of each action (decisions' ``actions`` and ``declared_actions``,
    outcomes' ``actions``) and tool call. Returns a new document; ``case`` is unchanged."""
    out = dict(case)
    own = case.get("task_type")
    event = case.get("event")
    if event is not None:
        record = policy.redact_record(
            {"task_type": event["task_type"], "payload": event["payload"]}
        )
        out["event"] = {**event, "payload": record["payload"]}
    out["decisions"] = [
        {
            **d,
            "actions": policy.redact_actions(d["task_type"], d["actions"]),
            "declared_actions": policy.redact_actions(d["task_type"], d["declared_actions"]),
        }
        for d in case["decisions"]
    ]
    out["outcomes"] = [
        {**o, "actions": policy.redact_actions(own, o["actions"])} for o in case["outcomes"]
    ]
    out["tool_calls"] = [
        {**c, "args": redact_args(c["args"], policy.tool_redact_paths(c["task_type"], c["tool"]))}
        if isinstance(c["args"], dict)
        else c
        for c in case["tool_calls"]
    ]
    return out


def _trace_of(request: web.Request, doc: dict[str, Any]) -> str | None:
    """The case's trace id: the newest comparison's (kept with it when it was made), else,
    while tracing is on, the trace its event or decision is being written into now
    (:mod:`shadow.tracing`); ``None`` when there is none."""
    for comparison in reversed(doc["comparisons"]):
        if comparison.get("trace_id"):
            return str(comparison["trace_id"])
    event = doc["event"]
    if not doc["decisions"] and not (event is not None and event["awaiting_agent"]):
        return None  # never sent to the agent: no trace
    return request.app[TRACER].trace_id(doc["event_id"])


async def get_case(request: web.Request) -> web.StreamResponse:
    """Everything about one case (module docstring)."""
    refusal = access_refusal(request, "viewer", open_read=False)
    if refusal is not None:
        return refusal
    event_id = request.match_info["event_id"]
    if len(event_id) > MAX_ID_LENGTH:
        return error(400, f"event_id: longer than {MAX_ID_LENGTH} characters")
    problem = text_problem(event_id, "event_id", ident=True)
    if problem is not None:
        return refused_text(problem)
    case = await request.app[PIPELINE].store.case(event_id)
    if case is None:
        return error(404, f"unknown event id {event_id!r}: the store holds nothing about it")
    doc = redacted(case.to_json(), request.app[INTAKE].policy)
    doc["trace_id"] = _trace_of(request, doc)
    doc["trace_url"] = trace_url(request.app[SETTINGS].trace_url, doc["trace_id"])
    found = credential_of(request)
    judged = doc["adjudications"]
    if (
        found is not None
        and "reviewer" in found.roles
        and "admin" not in found.roles
        and not any(a["reviewer"] == found.name for a in judged)
    ):
        # Other reviewers' verdicts stay hidden until this reviewer's own is in.
        doc["adjudications"] = []
        doc["adjudications_hidden"] = len(judged)
    return web.json_response(doc)


DEAD_LETTER_PAGE = 100  # GET /v1/dead-letters' default limit
MAX_DEAD_LETTER_PAGE = 1000


def _whole(request: web.Request, name: str, low: int, high: int) -> int | None:
    """The query parameter ``name`` as a whole number in ``low..high`` (``None`` when
    absent); raises a JSON 400 otherwise."""
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        refusal = error(400, f"{name} must be a whole number between {low} and {high}")
        raise web.HTTPBadRequest(text=refusal.text, content_type="application/json")
    return value


async def get_dead_letters(request: web.Request) -> web.StreamResponse:
    """The dead letters, newest first: ``{"dead_letters": [...], "total", "next"}``, those
    with ids below ``before`` (default: all), at most ``limit`` (1-1000, default 100);
    ``next`` is the ``before`` of the next page (``null`` on the last)."""
    refusal = access_refusal(request, "viewer", open_read=False)
    if refusal is not None:
        return refusal
    before = _whole(request, "before", 1, 2**63 - 1)
    size = _whole(request, "limit", 1, MAX_DEAD_LETTER_PAGE) or DEAD_LETTER_PAGE
    letters, total = await request.app[PIPELINE].store.dead_letter_page(before=before, limit=size)
    return web.json_response(
        {
            "dead_letters": letters,
            "total": total,
            "next": letters[-1]["id"] if len(letters) == size else None,
        }
    )


def cases_routes() -> list[web.RouteDef]:
    """``GET /v1/cases/{event_id}`` and ``GET /v1/dead-letters``; :func:`shadow.routes.
    routes` lists them with the rest."""
    return [
        web.get("/v1/cases/{event_id}", get_case),
        web.get("/v1/dead-letters", get_dead_letters),
    ]
