"""The review queue over HTTP (docs/api.md, "Review"): :class:`shadow.review.ReviewQueue`.

- ``GET /v1/review/next[?task_type=T]`` (reviewer): claim a case, blind. ``200 {"claim",
  "expires_at", "event", "a", "b", ...}``; ``204`` when nothing is left to review.
- ``POST /v1/review/{claim}`` (reviewer, the claim's own): ``{"verdict": "a_right" |
  "b_right" | "both_acceptable" | "unclear", "reason", "note"}``.
- ``POST /v1/cases/{event_id}/adjudication`` (reviewer, on the case's task type): a direct
  verdict ``{"verdict": "agent_right" | "human_right" | "both_acceptable" | "unclear",
  "reason", "note", "agent_version"?}``; 201, or 200 for the same verdict again.
- ``GET /v1/review/stats[?task_type=T]`` (viewer): open claims, cases left, the estimate.

The reviewer is the credential's name (the simple mode: the admin token's actor, as for every
write). Scoped credentials review only their task types. A Kafka replica refuses claims and
verdicts (409): the promoter decides on the verdicts in its own store.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from shadow.checks import MAX_ID_LENGTH, text_problem
from shadow.credentials import access_refusal, actor_of, credential_of, refused_text
from shadow.keys import LADDER, PIPELINE, REVIEW
from shadow.review import ReviewInputError
from shadow.server import error
from shadow.store import ReviewConflict, ReviewRefused

__all__ = ["review_routes"]

_ANSWER_KEYS = {"verdict", "reason", "note", "actor"}
_ADJUDICATE_KEYS = _ANSWER_KEYS | {"agent_version"}


def _ident(value: str, path: str) -> web.Response | None:
    if len(value) > MAX_ID_LENGTH:
        return error(400, f"{path}: longer than {MAX_ID_LENGTH} characters")
    problem = text_problem(value, path, ident=True)
    return None if problem is None else refused_text(problem)


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        return error(400, f"unknown key {unknown[0]!r}; accepted: {', '.join(sorted(allowed))}")
    for key in ("verdict", "reason", "actor", "agent_version"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return error(400, f"{key} must be a string")
    problem = text_problem(
        {k: v for k, v in body.items() if k != "note"},
        ident=[k for k in body if k != "note"],
    )
    if problem is not None:
        return refused_text(problem)
    return body


def _task_types(request: web.Request) -> list[str] | web.Response:
    """The task types the request's ``task_type`` names (checked), or all of them that the
    credential acts on."""
    policy = request.app[PIPELINE].policy
    asked = request.query.get("task_type")
    if asked is not None:
        refused = _ident(asked, "task_type")
        if refused is not None:
            return refused
        if asked not in policy.task_types:
            return error(404, f"unknown task type {asked!r}; it is not in the policy")
        return [asked]
    found = credential_of(request)
    return [t for t in policy.task_types if found is None or found.acts_on(t)]


def _replica(request: web.Request) -> web.Response | None:
    """The 409 of a Kafka replica: verdicts move the evidence the promoter decides on, and
    it reads them from its own store, so claims and verdicts are taken there only."""
    if request.app[LADDER].decides:
        return None
    return error(
        409,
        "this sidecar is a Kafka replica (kafka_role=replica): the review queue is the "
        "promoter's (kafka_role=promoter), whose store the evidence is decided on; "
        "send claims and verdicts to the promoter's API",
    )


def _refused(exc: Exception) -> web.Response:
    if isinstance(exc, ReviewInputError):
        return refused_text((exc.path, exc.message))
    if isinstance(exc, ReviewRefused):
        return error(exc.status, str(exc))
    return error(409, str(exc))


async def get_next(request: web.Request) -> web.StreamResponse:
    asked = request.query.get("task_type")
    refusal = access_refusal(request, "reviewer", asked if asked else None)
    if refusal is not None:
        return refusal
    names = _task_types(request)
    if isinstance(names, web.Response):
        return names
    replica = _replica(request)
    if replica is not None:
        return replica
    reviewer = actor_of(request, {})
    shown = await request.app[REVIEW].next(names, reviewer)
    if shown is None:
        return web.Response(status=204)
    return web.json_response(shown, headers={"Cache-Control": "no-store"})


async def post_answer(request: web.Request) -> web.StreamResponse:
    refusal = access_refusal(request, "reviewer")
    if refusal is not None:
        return refusal
    claim = request.match_info["claim"]
    refused = _ident(claim, "claim")
    if refused is not None:
        return refused
    body = await _body(request, _ANSWER_KEYS)
    if isinstance(body, web.Response):
        return body
    replica = _replica(request)
    if replica is not None:
        return replica
    reviewer = actor_of(request, body)
    try:
        answer = await request.app[REVIEW].answer(
            claim, reviewer, body.get("verdict"), body.get("reason"), body.get("note")
        )
    except (ReviewInputError, ReviewRefused, ReviewConflict) as exc:
        return _refused(exc)
    return web.json_response(answer)


async def post_adjudication(request: web.Request) -> web.StreamResponse:
    replica = _replica(request)  # first: a replica's store may not hold the case at all
    if replica is not None:
        return replica
    event_id = request.match_info["event_id"]
    refused = _ident(event_id, "event_id")
    if refused is not None:
        return refused
    store = request.app[PIPELINE].store
    case = await store.case(event_id)
    if case is None:
        return error(404, f"unknown event id {event_id!r}: the store holds nothing about it")
    task_type = case.task_type or ""
    refusal = access_refusal(request, "reviewer", task_type)
    if refusal is not None:
        return refusal
    body = await _body(request, _ADJUDICATE_KEYS)
    if isinstance(body, web.Response):
        return body
    versions = [d["agent_version"] for d in case.decisions]
    version = body.get("agent_version")
    if version is None:
        current = (await store.current_versions()).get(task_type)
        version = current if current in versions else (versions[-1] if versions else None)
    if version is None:
        return error(409, f"case {event_id!r} has no agent decision to judge yet")
    if version not in versions:
        return error(400, f"agent_version: {version!r} made no decision on this case")
    reviewer = actor_of(request, body)
    try:
        answer, created = await request.app[REVIEW].adjudicate(
            event_id,
            task_type,
            version,
            reviewer,
            body.get("verdict"),
            body.get("reason"),
            body.get("note"),
        )
    except (ReviewInputError, ReviewRefused, ReviewConflict) as exc:
        return _refused(exc)
    return web.json_response(answer, status=201 if created else 200)


async def get_stats(request: web.Request) -> web.StreamResponse:
    refusal = access_refusal(request, "viewer")
    if refusal is not None:
        return refusal
    names = _task_types(request)
    if isinstance(names, web.Response):
        return names
    reviewer = actor_of(request, {})
    return web.json_response(await request.app[REVIEW].stats(names, reviewer))


def review_routes() -> list[web.RouteDef]:
    """This module's routes; :func:`shadow.routes.routes` lists them with the rest."""
    return [
        web.get("/v1/review/next", get_next, allow_head=False),
        web.get("/v1/review/stats", get_stats, allow_head=False),
        web.post("/v1/review/{claim}", post_answer),
        web.post("/v1/cases/{event_id}/adjudication", post_adjudication),
    ]
