"""HTTP API handlers (aiohttp). Routes and shapes are a contract: DESIGN.md, docs/api.md.

Handlers only translate HTTP to the pipeline and the ladder wired by :func:`shadow.app.
build_app`; they never build clients. Errors are JSON: ``{"error": "...", "errors": [...]}``.

Writes (``PUT``/``POST`` on autonomy, approve, reject, reconsider, freeze, unfreeze) need
``Authorization: Bearer <SHADOW_ADMIN_TOKEN>`` (:mod:`shadow.credentials`). The handlers
reach the app's resources through :mod:`shadow.keys`; every route of the sidecar, these and
the gateway's, is listed in :func:`shadow.routes.routes`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shadow.checks import MAX_ID_LENGTH, text_problem
from shadow.credentials import (
    MAX_ACTOR_CHARS,
    MAX_REASON_CHARS,
    access_refusal,
    actor_of,
    credential_of,
    reason_of,
    refused_text,
    requires,
)
from shadow.errors import AutonomyError, Reason, SecondApproverRequired, StoreError
from shadow.ingest import (
    BodyError,
    Parsed,
    RecordError,
    check_content_type,
    content_coding,
    decode_body,
    parse_events,
    parse_outcomes,
)
from shadow.intake import IngestResult
from shadow.keys import (
    AUTH,
    HANDLING,
    INTAKE,
    LADDER,
    ON_FREEZE,
    PIPELINE,
    READINESS,
    REGISTRY,
    SETTINGS,
    STARTUP,
)
from shadow.ladder import MoveResult
from shadow.model import Handling, Level, Outcome, WorkEvent
from shadow.openapi import openapi_spec
from shadow.promotion import ProposalRef
from shadow.server import ExpectHandler, declared_too_large, error, send_continue

# The keys and credential checks that lived here are re-exported for existing imports
# (tests, plugins); new code imports them from shadow.keys and shadow.credentials.
__all__ = [
    "AUTH",
    "HANDLING",
    "INTAKE",
    "LADDER",
    "MAX_ACTOR_CHARS",
    "MAX_REASON_CHARS",
    "ON_FREEZE",
    "PIPELINE",
    "READINESS",
    "REGISTRY",
    "SETTINGS",
    "STARTUP",
    "actor_of",
    "api_routes",
    "ingest_expect",
    "reason_of",
    "refused_text",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- ingest -----------------------------------------------------------------------------------


def _refusal(request: web.Request, kind: str) -> web.Response | None:
    """The refusal the headers alone decide, counted (before the body is read or ``100
    Continue`` sent): no or a wrong ingest token (401), a declared body over
    ``max_body_bytes`` (413), a content type or content encoding ingest does not read (415).
    ``None`` when the body is worth reading."""
    refusal: web.Response | None = None
    denied = request.app[AUTH].token_refusal(request.headers, bearer=True)
    if denied is not None:
        code = denied[0]
        refusal = error(401, denied[1])
        refusal.force_close()
    else:
        refusal = declared_too_large(request, request.app[SETTINGS].max_body_bytes)
        code = Reason.TOO_LARGE
    if refusal is None:
        try:
            check_content_type(request.headers.get("Content-Type"))
            content_coding(request.headers.get("Content-Encoding"))
        except BodyError as exc:
            refusal, code = error(exc.status, exc.message), exc.code
            refusal.force_close()
    if refusal is not None:
        request.app[INTAKE].rejected(kind, "http", code)
    return refusal


def ingest_expect(kind: str) -> ExpectHandler:
    """The ingest routes' ``expect_handler``: the header checks of :func:`_refusal`, then
    ``100 Continue``."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        refusal = _refusal(request, kind)
        return refusal if refusal is not None else await send_continue(request)

    return expect


async def _read(request: web.Request, kind: str) -> bytes | web.Response:
    """The body as sent, within ``body_timeout`` and ``max_body_bytes``; a refusal (counted;
    the connection closes after it) otherwise. A client that disconnects raises
    ``ConnectionError`` (the server logs one line)."""
    settings = request.app[SETTINGS]
    try:
        async with asyncio.timeout(settings.body_timeout):
            return await request.read()
    except TimeoutError:
        code = Reason.TIMEOUT
        refusal = error(
            408,
            f"the body did not arrive within {settings.body_timeout:g} s (body_timeout); "
            "nothing was stored",
        )
    except web.HTTPRequestEntityTooLarge:
        code = Reason.TOO_LARGE
        limit = settings.max_body_bytes
        refusal = error(413, f"body larger than {limit} bytes; split it or raise max_body_bytes")
    request.app[INTAKE].rejected(kind, "http", code)
    refusal.force_close()
    return refusal


def _summarise(
    parsed_errors: list[RecordError], lines: list[int], results: list[IngestResult]
) -> web.Response:
    errors = [e.to_json() for e in parsed_errors]
    counts: dict[str, int] = {}
    for line, r in zip(lines, results, strict=True):
        counts[r.status] = counts.get(r.status, 0) + 1
        if not r.accepted:
            errors.append({"line": line, "path": r.path or "event_id", "message": r.reason})
    errors.sort(key=lambda e: int(e["line"]))
    accepted = sum(1 for r in results if r.accepted)
    body = {"accepted": accepted, "results": counts, "errors": errors}
    if accepted or not errors:
        return web.json_response(body, status=202)
    if parsed_errors:
        status, message = 400, "no record was valid"
    elif any(r.status == "rejected" for r in results):
        status, message = 422, "no record has a configured task type"
    else:
        status, message = 409, "every record conflicts with one already stored"
    return web.json_response({"error": message, **body}, status=status)


R = TypeVar("R", WorkEvent, Outcome)


async def _ingest(
    request: web.Request,
    kind: str,
    parse: Callable[..., Parsed[R]],
    submit: Callable[[list[R]], Awaitable[list[IngestResult]]],
) -> web.Response:
    """Read, decode, parse and submit one ingest body. Every refusal is counted in
    ``shadow_ingest_rejected_total`` once per record (a whole body counts one); unknown
    task types and conflicts are counted by the pipeline."""
    refusal = _refusal(request, kind)
    if refusal is not None:
        return refusal
    body = await _read(request, kind)
    if isinstance(body, web.Response):
        return body
    intake = request.app[INTAKE]
    settings = request.app[SETTINGS]
    unsigned = request.app[AUTH].signature_refusal(
        request.headers, body, method=request.method, target=request.raw_path
    )
    if unsigned is not None:
        intake.rejected(kind, "http", unsigned[0])
        return error(401, unsigned[1])
    try:
        text = decode_body(
            body, request.headers.get("Content-Encoding"), max_bytes=settings.max_body_bytes
        )
        parsed = parse(text, request.headers.get("Content-Type"), max_records=settings.max_records)
    except BodyError as exc:
        intake.rejected(kind, "http", exc.code)
        return error(exc.status, exc.message)
    results = await submit([r for _, r in parsed.records]) if parsed.records else []
    # A record with several bad fields has one error per field: count it once, by its first.
    first: dict[int, Reason] = {}
    for e in parsed.errors:
        first.setdefault(e.line, e.code)
    for code, count in Counter(first.values()).items():
        intake.rejected(kind, "http", code, count)
    return _summarise(parsed.errors, [line for line, _ in parsed.records], results)


async def post_events(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]

    async def submit(events: list[WorkEvent]) -> list[IngestResult]:
        # HTTP callers get the rejection in the response, so no dead letter is needed.
        return await intake.submit_events(events, source="http", dead_letter_rejected=False)

    return await _ingest(request, "event", parse_events, submit)


async def post_outcomes(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]

    async def submit(outcomes: list[Outcome]) -> list[IngestResult]:
        return await intake.submit_outcomes(outcomes, source="http")

    return await _ingest(request, "outcome", parse_outcomes, submit)


# -- read side --------------------------------------------------------------------------------


@requires("viewer")
async def get_agreement(request: web.Request) -> web.Response:
    return web.json_response(await request.app[LADDER].current_agreement())


async def get_metrics(request: web.Request) -> web.StreamResponse:
    if not request.app[SETTINGS].metrics_open:
        refusal = access_refusal(request, "viewer")
        if refusal is not None:
            return refusal
    await request.app[PIPELINE].scrape()
    body = generate_latest(request.app[REGISTRY])
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problem = await request.app[PIPELINE].not_ready()
    if problem:
        return error(503, problem)
    for check in request.app.get(READINESS, []):
        problem = check()
        if problem:
            return error(503, problem)
    return web.json_response({"status": "ready"})


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


# -- autonomy ---------------------------------------------------------------------------------


def _task_type(request: web.Request) -> str:
    name = request.match_info["task_type"]
    if name not in request.app[LADDER].policy.task_types:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"unknown task type {name!r}"}),
            content_type="application/json",
        )
    return name


@requires("viewer")
async def get_autonomy(request: web.Request) -> web.Response:
    doc = await request.app[LADDER].current_agreement()
    return web.json_response(
        {
            "frozen": doc["frozen"],
            "task_types": {k: _level_view(v) for k, v in doc["task_types"].items()},
        }
    )


def _level_view(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("level", "agent_version", "ceiling", "mode", "proposal", "last_decision", "next_gate")
    return {k: entry[k] for k in keys}


@requires("viewer")
async def get_autonomy_one(request: web.Request) -> web.Response:
    name = _task_type(request)
    doc = await request.app[LADDER].current_agreement()
    return web.json_response(
        {"task_type": name, "frozen": doc["frozen"], **doc["task_types"][name]}
    )


@requires("viewer")
async def get_history(request: web.Request) -> web.Response:
    name = _task_type(request)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return error(400, "limit must be a whole number")
    if not 1 <= limit <= 10_000:
        return error(400, "limit must be between 1 and 10000")
    entries = await request.app[LADDER].history(name, limit=limit)
    return web.json_response(
        {"task_type": name, "entries": [{"id": i, **e.to_json()} for i, e in entries]}
    )


# -- the audit log ----------------------------------------------------------------------------

_AUDIT_PAGE = 1000  # GET /v1/audit's default limit


def _whole(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """The query parameter ``name`` as a whole number in ``low..high`` (``default`` when
    absent); a 400 otherwise."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _bad_request(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise _bad_request(f"{name} must be between {low} and {high}")
    return value


@requires("viewer")
async def get_audit(request: web.Request) -> web.Response:
    """A page of the whole audit log with its hash chain, oldest first: the entries with
    ids above ``after``, at most ``limit``; ``next`` is the ``after`` of the next page
    (``null`` on the last), so a verifier walks the log without trusting the server's
    verdict (``shadow audit verify --url``)."""
    after = _whole(request, "after", 0, 0, 2**63 - 1)
    limit = _whole(request, "limit", _AUDIT_PAGE, 1, 10_000)
    entries = await request.app[LADDER].store.audit_entries(after=after, limit=limit)
    full = len(entries) == limit
    return web.json_response(
        {
            "entries": [e.to_json() for e in entries],
            "next": entries[-1].id if full else None,
        }
    )


@requires("viewer")
async def get_audit_verify(request: web.Request) -> web.Response:
    """The server's own walk of the audit log's hash chain (:class:`shadow.audit_chain.
    ChainState`): ``{"ok", "entries", "head", "first_bad"}``."""
    state = await request.app[LADDER].store.audit_chain()
    return web.json_response(state.to_json())


# The level may change while a record is written (a freeze, a promotion): the route is then
# recorded again and the new answer given, at most this many times.
_ROUTE_TRIES = 3


async def get_route(request: web.Request) -> web.Response:
    """Who handles the item, from the Ladder's memory. ``GET``'s answer is also the
    sidecar's record of how the item was handled (shadow.handling), which decides whether
    its outcome is evidence: it is given only once that record is durable (503 when the
    store cannot write it). ``HEAD`` checks the same and records nothing."""
    refusal = access_refusal(request, "host")  # who asks, before what they ask about
    if refusal is not None:
        return refusal
    name = _task_type(request)
    refusal = access_refusal(request, "host", name)
    if refusal is not None:
        return refusal
    event_id = request.query.get("event_id", "")
    if not event_id:
        return error(400, "event_id query parameter is required")
    if len(event_id) > MAX_ID_LENGTH:
        return error(400, f"event_id must be at most {MAX_ID_LENGTH} characters")
    problem = text_problem(event_id, "event_id", ident=True)
    if problem is not None:
        return refused_text(problem)
    segment = request.query.get("segment")
    if segment is not None:
        if len(segment) > MAX_ID_LENGTH:
            return error(400, f"segment must be at most {MAX_ID_LENGTH} characters")
        problem = text_problem(segment, "segment", ident=True)
        if problem is not None:
            return refused_text(problem)
    ladder = request.app[LADDER]
    answer = ladder.route(name, event_id, segment)
    if request.method == "HEAD":
        return web.json_response(answer)
    handling = request.app[HANDLING]
    for attempt in range(_ROUTE_TRIES):
        try:
            await handling.record(
                name, event_id, Handling(answer["handled_by"]), Level.parse(answer["level"])
            )
        except StoreError as exc:
            return error(503, f"no route given: its record could not be stored ({exc}); retry")
        again = ladder.route(name, event_id, segment)
        if again == answer or attempt == _ROUTE_TRIES - 1:
            break  # (changed yet again: the answer recorded last stands)
        answer = again
    return web.json_response(answer)


# The keys each write accepts; anything else is refused (a misspelt ``proposal_id`` must not
# turn an approval of one proposal into an approval of whatever is pending).
_WRITE_KEYS = {
    "set": {"level", "actor", "reason"},
    "approve": {"proposal_id", "from", "to", "actor", "reason"},
    "reject": {"proposal_id", "from", "to", "actor", "reason"},
    "reconsider": {"actor", "reason"},
    "freeze": {"actor", "reason"},
}


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _write_body(request: web.Request, write: str) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad_request(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    allowed = _WRITE_KEYS[write]
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad_request(
            f"unknown key {unknown[0]!r}; this write accepts {', '.join(sorted(allowed))}"
        )
    for key, value in body.items():
        if value is not None and not isinstance(value, str):
            raise _bad_request(f"{key} must be a string")
    # Every key but the free-text reason is an identifier (actor, level, proposal id).
    problem = text_problem(body, ident=[k for k in body if k != "reason"])
    if problem is not None:
        raise web.HTTPBadRequest(text=refused_text(problem).text, content_type="application/json")
    return body


def _level(body: dict[str, Any], key: str) -> Level | None:
    if body.get(key) is None:
        return None
    try:
        return Level.parse(body[key])
    except ValueError as exc:
        raise _bad_request(f"{key}: {exc}") from None


async def _proposal_ref(request: web.Request, name: str, body: dict[str, Any]) -> ProposalRef:
    to_level, from_level = _level(body, "to"), _level(body, "from")
    proposal_id = body.get("proposal_id") or None
    if proposal_id is None and to_level is None:
        state = request.app[LADDER].state(name)
        pending = (
            f"; pending: {state.proposal.id} ({state.proposal.from_level} -> "
            f"{state.proposal.to_level})"
            if state.proposal
            else "; nothing is pending"
        )
        raise _bad_request(
            "name the proposal you answer: 'proposal_id', or 'to' (and optionally 'from')" + pending
        )
    return ProposalRef(proposal_id, to_level, from_level)


def ladder_write(role: str, *, everything: bool = False) -> Callable[[Handler], Handler]:
    """A write to the ladder: :func:`~shadow.credentials.requires` ``role`` for the route's
    task type (``everything``: for every task type), refused on a sidecar that follows
    another's levels, and an :class:`AutonomyError` is a 409."""
    return lambda handler: requires(role, scoped=not everything, everything=everything)(
        _decides(handler)
    )


def _decides(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not request.app[LADDER].decides:
            return error(
                409,
                "this sidecar is a Kafka replica (kafka_role=replica): autonomy levels are owned "
                "by the promoter (kafka_role=promoter) and followed here from the autonomy "
                "topic; send set, approve, reject, freeze and unfreeze to the promoter's API",
            )
        try:
            return await handler(request)
        except SecondApproverRequired as exc:
            return error(403, str(exc))
        except AutonomyError as exc:
            return error(409, str(exc))

    return guarded


def _may_approve(request: web.Request) -> bool:
    """Whether the request's credential may approve (in the simple mode: the admin)."""
    found = credential_of(request)
    return found is None or found.has("approver")


async def _moved(request: web.Request, result: MoveResult, **extra: Any) -> web.Response:
    """The move's answer (the Ladder announced it to the gauges and observers itself)."""
    return web.json_response({**result.to_json(), **extra})


@ladder_write("operator")
async def put_autonomy(request: web.Request) -> web.StreamResponse:
    name = _task_type(request)
    body = await _write_body(request, "set")
    level = _level(body, "level")
    if level is None:
        return error(400, "level: required, one of L0..L4")
    result = await request.app[LADDER].set_level(
        name,
        level,
        actor=actor_of(request, body),
        reason=reason_of(body, "manual set"),
        approver=_may_approve(request),
    )
    return await _moved(request, result, requested=str(level))


@ladder_write("approver")
async def post_approve(request: web.Request) -> web.StreamResponse:
    name = _task_type(request)
    body = await _write_body(request, "approve")
    ref = await _proposal_ref(request, name, body)
    result = await request.app[LADDER].approve(
        name, ref, actor=actor_of(request, body), reason=reason_of(body, "")
    )
    return await _moved(request, result)


@ladder_write("approver")
async def post_reject(request: web.Request) -> web.StreamResponse:
    name = _task_type(request)
    body = await _write_body(request, "reject")
    ref = await _proposal_ref(request, name, body)
    reason = reason_of(body, "")
    if not reason:
        return error(400, "reason: required; say why the promotion is rejected")
    result = await request.app[LADDER].reject(
        name, ref, actor=actor_of(request, body), reason=reason
    )
    return await _moved(request, result)


@ladder_write("operator")
async def post_reconsider(request: web.Request) -> web.StreamResponse:
    name = _task_type(request)
    body = await _write_body(request, "reconsider")
    result = await request.app[LADDER].reconsider(
        name, actor=actor_of(request, body), reason=reason_of(body, "operator asked to reconsider")
    )
    return await _moved(request, result)


@ladder_write("operator", everything=True)
async def post_freeze(request: web.Request) -> web.StreamResponse:
    body = await _write_body(request, "freeze")
    actor, reason = actor_of(request, body), reason_of(body, "frozen")
    await request.app[LADDER].freeze(actor=actor, reason=reason)
    for hook in request.app[ON_FREEZE]:
        await hook(actor, reason)
    return web.json_response({"frozen": True})


@ladder_write("operator", everything=True)
async def post_unfreeze(request: web.Request) -> web.StreamResponse:
    body = await _write_body(request, "freeze")
    await request.app[LADDER].unfreeze(
        actor=actor_of(request, body), reason=reason_of(body, "unfrozen")
    )
    return web.json_response({"frozen": False})


def api_routes() -> list[web.RouteDef]:
    """This module's routes (ingest, evidence, autonomy, the audit log, routing, health,
    metrics, the OpenAPI document); :func:`shadow.routes.routes` lists them with the
    gateway's."""
    return [
        web.post("/v1/events", post_events, expect_handler=ingest_expect("event")),
        web.post("/v1/outcomes", post_outcomes, expect_handler=ingest_expect("outcome")),
        web.get("/v1/agreement", get_agreement),
        web.get("/v1/autonomy", get_autonomy),
        web.get("/v1/autonomy/{task_type}", get_autonomy_one),
        web.put("/v1/autonomy/{task_type}", put_autonomy),
        web.post("/v1/autonomy/{task_type}/approve", post_approve),
        web.post("/v1/autonomy/{task_type}/reject", post_reject),
        web.post("/v1/autonomy/{task_type}/reconsider", post_reconsider),
        web.get("/v1/autonomy/{task_type}/history", get_history),
        web.get("/v1/audit", get_audit),
        web.get("/v1/audit/verify", get_audit_verify),
        web.post("/v1/freeze", post_freeze),
        web.post("/v1/unfreeze", post_unfreeze),
        # HEAD explicitly: get_route answers it without recording anything.
        web.get("/v1/route/{task_type}", get_route, allow_head=True),
        web.get("/metrics", get_metrics),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/openapi.json", get_openapi),
    ]
