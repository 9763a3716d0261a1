"""Who is asking, for every route module (:mod:`shadow.api`, :mod:`shadow.gateway.api`):
the credential checks, and the actor and reason a write is recorded under.

- :func:`requires` (a handler decorator) and :func:`access_refusal`: the request's bearer
  token must name a credential (:class:`shadow.roles.Keyring`) with the role, and, for an
  action on one task type (or on all of them), a credential that may act on it. 401 for no
  or an unknown token, 403 for a missing role or task type, each counted in
  ``shadow_auth_refusals_total{role,status}``; the credential is kept on the request
  (:func:`credential_of`). Without a tokens file (the simple mode) reads are open, writes
  need ``SHADOW_ADMIN_TOKEN`` (refused with a message saying how to configure one when
  there is none), and routing is open until an admin or ingest token exists.
- :func:`actor_of`, :func:`reason_of`: with a tokens file the actor is the credential's name,
  and a body ``actor`` or ``X-Shadow-Actor`` naming anyone else is refused (400); in the
  simple mode it is what operators send, clipped to :data:`MAX_ACTOR_CHARS` (an actor with
  a control character is refused: an identifier). A reason is clipped to
  :data:`MAX_REASON_CHARS`, its control characters become spaces, so the audit log and the
  sidecar's log lines stay one line each. Lone surrogates are refused in both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shadow.checks import CONTROL, text_problem
from shadow.ingest_auth import TOKEN_HEADER
from shadow.keys import KEYRING
from shadow.roles import Credential, Keyring
from shadow.server import error

__all__ = [
    "ALL",
    "MAX_ACTOR_CHARS",
    "MAX_REASON_CHARS",
    "access_refusal",
    "actor_of",
    "credential_of",
    "grant",
    "reason_of",
    "refused_text",
    "requires",
    "role_problem",
]

MAX_ACTOR_CHARS = 200
MAX_REASON_CHARS = 1000

_CREDENTIAL: web.RequestKey[Credential] = web.RequestKey("credential")
ALL = object()  # an action on every task type (freeze): only an unlimited credential

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def credential_of(request: web.Request) -> Credential | None:
    """The credential :func:`access_refusal` accepted for this request (``None``: an open
    read or route in the simple mode)."""
    return request.get(_CREDENTIAL)


def access_refusal(
    request: web.Request,
    role: str,
    task_type: str | object | None = None,
    *,
    open_read: bool = True,
) -> web.Response | None:
    """The refusal unless the request may do what ``role`` may; ``task_type``: the one task
    type the action touches, :data:`ALL` for an action on every task type, ``None`` for one
    that is not about task types (a read). ``open_read=False``: a read the simple mode does
    not leave open (held writes' arguments need the admin token there). ``None`` when
    allowed (the credential is then on the request)."""
    keyring = request.app[KEYRING]
    secret = _bearer(request)
    via_header = not secret and role in ("host", "ingest")
    if via_header:  # an ingest token's own header, for ingest tokens only
        secret = request.headers.get(TOKEN_HEADER, "").strip()
    found = keyring.identify(secret) if secret else None
    if via_header and found is not None and "ingest" not in found.roles:
        found = None
    if found is None and not keyring.strict:
        # The simple mode: reads are open, and routing until an admin or ingest token exists.
        if role == "viewer" and open_read:
            return None
        if role == "host" and not keyring.configured("host"):
            return None
    if found is None:
        if not keyring.strict and not keyring.configured(role):
            return error(
                403,
                "API writes are disabled: set SHADOW_ADMIN_TOKEN (or --admin-token) or "
                "SHADOW_TOKENS_FILE and send 'Authorization: Bearer <token>'",
            )
        keyring.refused(role, 401)
        if not keyring.strict:  # the simple mode: the admin token (or an ingest token)
            which = "the admin token or an ingest token" if role == "host" else "the admin token"
            return error(
                401,
                f"missing or wrong credential: send 'Authorization: Bearer <token>' with "
                f"{which}; nothing was recorded",
            )
        what = "unknown token" if secret else "no token"
        return error(
            401,
            f"{what}: this needs a credential with the {role} role; send "
            "'Authorization: Bearer <token>'",
        )
    return grant(request, found, role, task_type)


def role_problem(
    keyring: Keyring, found: Credential, role: str, task_type: str | object | None = None
) -> str | None:
    """Why ``found`` may not do what ``role`` may (on ``task_type``, as for
    :func:`access_refusal`), counted as a 403 in ``shadow_auth_refusals_total``; ``None``
    when it may. The one check behind the API's bearer tokens and the console's sessions
    (:mod:`shadow.ui`)."""
    if not found.has(role):
        keyring.refused(role, 403)
        held = ", ".join(sorted(found.roles))
        return f"{found.name} has the role(s) {held}; this needs {role}"
    if task_type is not None and not found.acts_on(None if task_type is ALL else str(task_type)):
        keyring.refused(role, 403)
        limited = ", ".join(sorted(found.task_types or ()))
        target = "every task type" if task_type is ALL else f"task type {task_type}"
        return f"{found.name} acts only on {limited}; this acts on {target}"
    return None


def grant(
    request: web.Request, found: Credential, role: str, task_type: str | object | None = None
) -> web.Response | None:
    """:func:`role_problem` for a credential already identified (by a bearer token, or by
    a console session): the 403 when it may not, else ``None`` with the credential kept on
    the request (:func:`credential_of`)."""
    problem = role_problem(request.app[KEYRING], found, role, task_type)
    if problem is not None:
        return error(403, problem)
    request[_CREDENTIAL] = found
    return None


def requires(
    role: str, *, scoped: bool = False, everything: bool = False
) -> Callable[[Handler], Handler]:
    """A handler decorator: :func:`access_refusal` for ``role`` first. ``scoped``: the action
    is on the route's ``{task_type}``; ``everything``: on every task type."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            target: str | object | None = None
            if scoped:
                target = request.match_info.get("task_type", "")
            elif everything:
                target = ALL
            refusal = access_refusal(request, role, target)
            if refusal is not None:
                return refusal
            return await handler(request)

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return wrap


def refused_text(problem: tuple[str, str]) -> web.Response:
    """The 400 for text :func:`shadow.checks.text_problem` refuses, naming the field as the
    ingest errors do: ``{"error": "<path>: <message>", "errors": [{"path", "message"}]}``."""
    path, message = problem
    return error(400, f"{path}: {message}", [{"path": path, "message": message}])


def _clip(text: str, limit: int) -> str:
    return CONTROL.sub(" ", text)[:limit]


def actor_of(request: web.Request, body: dict[str, Any]) -> str:
    """The actor of a write. With a tokens file: the credential's name, and a body ``actor``
    or ``X-Shadow-Actor`` naming anyone else is refused (``HTTPBadRequest``, counted).
    Otherwise the body's ``actor``, else ``X-Shadow-Actor``, clipped (else ``admin``).
    Raises ``HTTPBadRequest`` for a header text refuses."""
    header = request.headers.get("X-Shadow-Actor")
    problem = None if header is None else text_problem(header, "X-Shadow-Actor", ident=True)
    if problem is not None:
        raise web.HTTPBadRequest(text=refused_text(problem).text, content_type="application/json")
    given = body.get("actor") or header
    found = credential_of(request)
    if request.app[KEYRING].strict and found is not None:
        if given is not None and str(given) != found.name:
            request.app[KEYRING].refused("actor", 400)
            message = (
                f"actor: the audit actor is the credential's name ({found.name}); a request "
                "may not name another (send no actor, or this one)"
            )
            raise web.HTTPBadRequest(text=error(400, message).text, content_type="application/json")
        return found.name
    return _clip(str(given or "admin"), MAX_ACTOR_CHARS).strip() or "admin"


def reason_of(body: dict[str, Any], default: str) -> str:
    """The reason of a write: the body's ``reason``, clipped, else ``default``."""
    return _clip(str(body.get("reason") or ""), MAX_REASON_CHARS).strip() or default
