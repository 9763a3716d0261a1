"""What the console does (``POST``), each through the same service the API's handler calls
and behind the same role (:mod:`shadow.ui.guard`): sign-in and sign-out; approving or
rejecting a proposal (``approver``, :meth:`shadow.ladder.Ladder.approve` / ``reject``, the
two-person rule included); approving or rejecting a held tool write (``approver``, the
gateway's approvals); setting a level, freezing and unfreezing (``operator``). Each answers
a 303 back to a page, which says what happened; a refusal is its own page (403, 409, ...).
"""

from __future__ import annotations

import secrets

from aiohttp import web

from shadow.checks import text_problem
from shadow.credentials import ALL, reason_of
from shadow.errors import AutonomyError, SecondApproverRequired
from shadow.keys import GATEWAY, KEYRING, LADDER, ON_FREEZE
from shadow.ladder import MoveResult
from shadow.model import Level
from shadow.promotion import ProposalRef
from shadow.roles import digest
from shadow.ui.guard import Context, action, allowed, back_to, read_form, see_other, task_type_of
from shadow.ui.render import error_page, render
from shadow.ui.session import (
    COOKIE,
    MAX_AGE_S,
    SESSIONS,
    SIGNIN_AGE_S,
    SIGNIN_COOKIE,
    foreign_origin,
    set_cookie,
    signed_in,
)

__all__ = [
    "approve_held",
    "approve_proposal",
    "freeze",
    "reject_held",
    "reject_proposal",
    "set_level",
    "signin",
    "signin_page",
    "signout",
    "unfreeze",
]


def _reason(form: dict[str, str], default: str = "") -> str:
    """The form's reason as the API records one (clipped, control characters as spaces)."""
    return reason_of(form, default)


# -- signing in -------------------------------------------------------------------------------


async def signin_page(
    request: web.Request, *, status: int = 200, message: str = ""
) -> web.Response:
    """The sign-in form, bound to a fresh ``shadow_signin`` cookie."""
    if status == 200 and signed_in(request) is not None:
        return see_other("/ui/")
    nonce = secrets.token_urlsafe(24)
    response = render(
        "signin.html",
        status,
        me=None,
        csrf=request.app[SESSIONS].signin_token(nonce),
        message=message,
    )
    set_cookie(response, request, SIGNIN_COOKIE, nonce, SIGNIN_AGE_S)
    return response


async def signin(request: web.Request) -> web.StreamResponse:
    """Check the pasted token with the keyring and start a session for its credential
    (any role that reads: ``ingest`` and ``host`` credentials cannot sign in)."""
    foreign = foreign_origin(request)
    if foreign is not None:
        return error_page(403, f"refused: {foreign}")
    form = await read_form(request, ("token",))
    if isinstance(form, web.Response):
        return form
    sessions = request.app[SESSIONS]
    if not sessions.signin_ok(request.cookies.get(SIGNIN_COOKIE, ""), form.get("csrf", "")):
        return await signin_page(
            request, status=403, message="the sign-in form expired: paste the token again"
        )
    token = form.get("token", "").strip()
    keyring = request.app[KEYRING]
    found = keyring.identify(token) if token else None
    if found is None:
        keyring.refused("viewer", 401)
        return await signin_page(request, status=401, message="unknown token: nothing signed in")
    if not found.has("viewer"):
        keyring.refused("viewer", 403)
        held = ", ".join(sorted(found.roles))
        return await signin_page(
            request,
            status=403,
            message=f"{found.name} has the role(s) {held}; the console needs one that reads",
        )
    old = request.cookies.get(COOKIE)
    if old:
        sessions.end(old)
    session = sessions.start(found, digest(token))
    response = see_other("/ui/")
    set_cookie(response, request, COOKIE, session.id, MAX_AGE_S)
    set_cookie(response, request, SIGNIN_COOKIE, "", 0)
    return response


@action("viewer", ("back",))
async def signout(request: web.Request, ctx: Context, form: dict[str, str]) -> web.StreamResponse:
    """End the session (here and in the browser)."""
    request.app[SESSIONS].end(ctx.session.id)
    response = see_other("/ui/signin")
    set_cookie(response, request, COOKIE, "", 0)
    return response


# -- proposals --------------------------------------------------------------------------------


def _scoped(request: web.Request, form: dict[str, str]) -> str:
    return task_type_of(request)


def _moved(ctx: Context, result: MoveResult, verb: str) -> None:
    body = result.to_json()
    if result.partial is not None:
        ctx.session.flash(
            "ok",
            f"{body['task_type']}: your approval of {body['partial']['from']} → "
            f"{body['partial']['to']} is recorded; it needs a second approver (a different "
            "credential)",
        )
    elif result.applied:
        ctx.session.flash(
            "ok", f"{body['task_type']}: {verb}; level now {body['to']} ({body['reason']})"
        )
    else:
        ctx.session.flash("ok", f"{body['task_type']}: nothing changed ({body['reason']})")


async def _ladder_move(
    request: web.Request, ctx: Context, form: dict[str, str], verb: str
) -> web.StreamResponse:
    name = task_type_of(request)
    ladder = request.app[LADDER]
    if not ladder.decides:
        return error_page(409, "this sidecar is a Kafka replica: send it to the promoter's console")
    proposal_id = form.get("proposal_id", "")
    if not proposal_id:
        return error_page(400, "proposal_id: required (which proposal you answer)")
    ref = ProposalRef(proposal_id, None, None)
    actor = ctx.credential.name
    try:
        if verb == "approved":
            result = await ladder.approve(name, ref, actor=actor, reason=_reason(form))
        else:
            reason = _reason(form)
            if not reason:
                return error_page(400, "reason: required; say why the promotion is rejected")
            result = await ladder.reject(name, ref, actor=actor, reason=reason)
    except SecondApproverRequired as exc:
        return error_page(403, str(exc), context=ctx.page("approvals"))
    except AutonomyError as exc:
        return error_page(409, str(exc), context=ctx.page("approvals"))
    _moved(ctx, result, verb)
    return see_other(back_to(form, "/ui/approvals"))


@action("approver", ("proposal_id", "reason", "back"), _scoped)
async def approve_proposal(
    request: web.Request, ctx: Context, form: dict[str, str]
) -> web.StreamResponse:
    return await _ladder_move(request, ctx, form, "approved")


@action("approver", ("proposal_id", "reason", "back"), _scoped)
async def reject_proposal(
    request: web.Request, ctx: Context, form: dict[str, str]
) -> web.StreamResponse:
    return await _ladder_move(request, ctx, form, "rejected")


@action("operator", ("level", "reason", "back"), _scoped)
async def set_level(request: web.Request, ctx: Context, form: dict[str, str]) -> web.StreamResponse:
    """Set the level, as ``PUT /v1/autonomy/{task_type}`` (the two-person rule applies to a
    raise above what the evidence earned)."""
    name = task_type_of(request)
    ladder = request.app[LADDER]
    if not ladder.decides:
        return error_page(409, "this sidecar is a Kafka replica: send it to the promoter's console")
    try:
        level = Level.parse(form.get("level", ""))
    except ValueError as exc:
        return error_page(400, f"level: {exc}")
    try:
        result = await ladder.set_level(
            name,
            level,
            actor=ctx.credential.name,
            reason=_reason(form, "manual set"),
            approver=ctx.credential.has("approver"),
        )
    except SecondApproverRequired as exc:
        return error_page(403, str(exc), context=ctx.page("overview"))
    except AutonomyError as exc:
        return error_page(409, str(exc), context=ctx.page("overview"))
    _moved(ctx, result, f"set to {level}")
    return see_other(back_to(form, f"/ui/task/{name}"))


# -- freeze -----------------------------------------------------------------------------------


def _everything(request: web.Request, form: dict[str, str]) -> object:
    return ALL


@action("operator", ("reason", "back"), _everything)
async def freeze(request: web.Request, ctx: Context, form: dict[str, str]) -> web.StreamResponse:
    """Freeze, as ``POST /v1/freeze``: every task type to L0, and the gateway refuses the
    writes it holds."""
    ladder = request.app[LADDER]
    if not ladder.decides:
        return error_page(409, "this sidecar is a Kafka replica: send it to the promoter's console")
    actor, reason = ctx.credential.name, _reason(form, "frozen")
    await ladder.freeze(actor=actor, reason=reason)
    for hook in request.app[ON_FREEZE]:
        await hook(actor, reason)
    ctx.session.flash("ok", f"frozen: every task type is at L0 ({reason})")
    return see_other(back_to(form, "/ui/"))


@action("operator", ("reason", "back"), _everything)
async def unfreeze(request: web.Request, ctx: Context, form: dict[str, str]) -> web.StreamResponse:
    """Lift the freeze, as ``POST /v1/unfreeze``."""
    ladder = request.app[LADDER]
    if not ladder.decides:
        return error_page(409, "this sidecar is a Kafka replica: send it to the promoter's console")
    await ladder.unfreeze(actor=ctx.credential.name, reason=_reason(form, "unfrozen"))
    ctx.session.flash("ok", "unfrozen: task types climb back through their gates")
    return see_other(back_to(form, "/ui/"))


# -- held tool writes -------------------------------------------------------------------------


async def _held(
    request: web.Request, ctx: Context, form: dict[str, str], verb: str
) -> web.StreamResponse:
    approval_id = request.match_info["approval_id"]
    problem = text_problem(approval_id, "approval_id", ident=True)
    gateway = request.app[GATEWAY]
    row = None if problem is not None else await gateway.store.approval(approval_id)
    if row is None:
        return error_page(404, "no such held write", context=ctx.page("approvals"))
    refusal = allowed(request, ctx, "approver", row.task_type)
    if refusal is not None:
        return refusal
    actor, reason = ctx.credential.name, _reason(form)
    try:
        if verb == "approve":
            settled = await gateway.approvals.approve(
                approval_id, actor=actor, reason=reason or "approved"
            )
        else:
            if not reason:
                return error_page(400, "reason: required; say why the write is rejected")
            settled = await gateway.approvals.reject(approval_id, actor=actor, reason=reason)
    except KeyError:
        return error_page(404, "no such held write", context=ctx.page("approvals"))
    except AutonomyError as exc:
        return error_page(409, str(exc), context=ctx.page("approvals"))
    said = f"{row.tool} for {row.event_id}: {settled.outcome}"
    if settled.error:
        said += f" ({settled.error})"
    ctx.session.flash("ok" if settled.outcome in ("approved", "rejected") else "error", said)
    return see_other(back_to(form, "/ui/approvals"))


@action("approver", ("reason", "back"))
async def approve_held(
    request: web.Request, ctx: Context, form: dict[str, str]
) -> web.StreamResponse:
    """Approve a held write, as ``POST /v1/approvals/{id}/approve``: the gateway sends
    exactly the tool and arguments shown, once."""
    return await _held(request, ctx, form, "approve")


@action("approver", ("reason", "back"))
async def reject_held(
    request: web.Request, ctx: Context, form: dict[str, str]
) -> web.StreamResponse:
    return await _held(request, ctx, form, "reject")
