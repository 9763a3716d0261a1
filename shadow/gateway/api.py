"""The gateway's HTTP API (docs/api.md, docs/gateway.md): live sessions and approvals.

- ``POST /v1/sessions {"task_type", "event_id"}`` -> ``{"tools_url", "level",
  "expires_at"}``: a live session's tools URL for one case (the host asks for it when the
  agent works an item for real; shadow requests carry their own).
- ``GET /v1/approvals[?status=pending|forwarded|failed|rejected|expired|refused|all]``,
  ``GET /v1/approvals/{id}``, ``POST /v1/approvals/{id}/approve {"actor", "reason"}``,
  ``POST /v1/approvals/{id}/reject {"actor", "reason"}`` (reason required).

Sessions need the ``host`` role, approvals ``viewer`` to read (in the simple mode the admin
token: they show the arguments of held calls) and ``approver`` to decide, for the approval's
task type (:mod:`shadow.credentials`).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from shadow.checks import CONTROL, text_problem
from shadow.credentials import access_refusal, actor_of, reason_of, refused_text
from shadow.errors import AutonomyError, StoreError
from shadow.gateway.approvals import Settled
from shadow.keys import GATEWAY, HANDLING, LADDER
from shadow.model import MAX_ID_LENGTH, Handling, Level
from shadow.server import error
from shadow.store.gateway import APPROVAL_STATES

__all__ = ["gateway_routes"]


async def _object(request: web.Request, allowed: set[str]) -> dict[str, Any] | web.Response:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        return error(400, f"unknown key {unknown[0]!r}; accepted: {', '.join(sorted(allowed))}")
    for key, value in body.items():
        if value is not None and not isinstance(value, str):
            return error(400, f"{key} must be a string")
    # Every key but the free-text reason is an identifier (task type, event id, actor).
    problem = text_problem(body, ident=[k for k in body if k != "reason"])
    if problem is not None:
        return refused_text(problem)
    return body


async def post_session(request: web.Request) -> web.StreamResponse:
    refusal = access_refusal(request, "host")
    if refusal is not None:
        return refusal
    body = await _object(request, {"task_type", "event_id"})
    if isinstance(body, web.Response):
        return body
    task_type, event_id = body.get("task_type"), body.get("event_id")
    if not task_type or not event_id:
        return error(400, "task_type and event_id: required strings")
    refusal = access_refusal(request, "host", task_type)
    if refusal is not None:
        return refusal
    if len(event_id) > MAX_ID_LENGTH:
        return error(400, f"event_id: longer than {MAX_ID_LENGTH} characters")
    if CONTROL.search(event_id):
        return error(400, "event_id: must not contain control characters")
    ladder = request.app[LADDER]
    if task_type not in ladder.policy.task_types:
        return error(404, f"unknown task type {task_type!r}")
    gateway = request.app[GATEWAY]
    if gateway.rules(task_type) is None:
        return error(409, f"{task_type} has no tools policy (task_types.{task_type}.tools)")
    # The agent works this item for real, so its outcome is not blind evidence whatever the
    # routing said: the agent acted (L3+ outside the audit sample) or a human saw its work.
    answer = ladder.route(task_type, event_id)
    handled = Handling.AGENT if answer["handled_by"] == "agent" else Handling.ASSISTED
    # Durable before the tools URL is given (503 when the store cannot write it).
    try:
        await request.app[HANDLING].record(
            task_type, event_id, handled, Level.parse(answer["level"])
        )
    except StoreError as exc:
        return error(503, f"no session opened: its handling record could not be stored ({exc})")
    return web.json_response(gateway.open_session(task_type, event_id, shadow=False))


async def get_approvals(request: web.Request) -> web.StreamResponse:
    refusal = access_refusal(request, "viewer", open_read=False)
    if refusal is not None:
        return refusal
    status = request.query.get("status", "pending")
    if status != "all" and status not in APPROVAL_STATES:
        return error(400, f"status: one of all, {', '.join(APPROVAL_STATES)}")
    rows = await request.app[GATEWAY].store.approvals(status=None if status == "all" else status)
    return web.json_response({"approvals": [r.to_json() for r in rows]})


async def get_approval(request: web.Request) -> web.StreamResponse:
    refusal = access_refusal(request, "viewer", open_read=False)
    if refusal is not None:
        return refusal
    row = await request.app[GATEWAY].store.approval(request.match_info["approval_id"])
    if row is None:
        return error(404, "no such approval")
    return web.json_response(row.to_json())


def _settled(settled: Settled) -> web.Response:
    return web.json_response({"outcome": settled.outcome, "approval": settled.row.to_json()})


async def _decide(request: web.Request, verb: str) -> web.StreamResponse:
    refusal = access_refusal(request, "approver")
    if refusal is not None:
        return refusal
    body = await _object(request, {"actor", "reason"})
    if isinstance(body, web.Response):
        return body
    approval_id = request.match_info["approval_id"]
    gateway = request.app[GATEWAY]
    row = await gateway.store.approval(approval_id)
    if row is None:
        return error(404, "no such approval")
    refusal = access_refusal(request, "approver", row.task_type)
    if refusal is not None:
        return refusal
    approvals = gateway.approvals
    actor = actor_of(request, body)
    reason = reason_of(body, "")
    try:
        if verb == "approve":
            settled = await approvals.approve(approval_id, actor=actor, reason=reason or "approved")
        else:
            if not reason:
                return error(400, "reason: required; say why the write is rejected")
            settled = await approvals.reject(approval_id, actor=actor, reason=reason)
    except KeyError:
        return error(404, "no such approval")
    except AutonomyError as exc:
        return error(409, str(exc))
    return _settled(settled)


async def post_approve(request: web.Request) -> web.StreamResponse:
    return await _decide(request, "approve")


async def post_reject(request: web.Request) -> web.StreamResponse:
    return await _decide(request, "reject")


def gateway_routes() -> list[web.RouteDef]:
    """Live sessions and approvals (the MCP endpoint is :func:`shadow.gateway.mcp.mcp_routes`);
    :func:`shadow.routes.routes` lists them with the rest."""
    return [
        web.post("/v1/sessions", post_session),
        web.get("/v1/approvals", get_approvals),
        web.get("/v1/approvals/{approval_id}", get_approval),
        web.post("/v1/approvals/{approval_id}/approve", post_approve),
        web.post("/v1/approvals/{approval_id}/reject", post_reject),
    ]
