"""Who is asking, for every route module (:mod:`shadow.api`, :mod:`shadow.gateway.api`):
the credential checks, and the actor and reason a write is recorded under.

- :func:`token_refusal`: the admin bearer token (``SHADOW_ADMIN_TOKEN``), compared in
  constant time; with no token configured, admin requests are refused (403) with a message
  that says how to configure one.
- :func:`route_refusal`: routing answers need the admin token or an ingest token once
  either is configured, and are open while neither is.
- :func:`actor_of`, :func:`reason_of`: what operators send, clipped to
  :data:`MAX_ACTOR_CHARS` and :data:`MAX_REASON_CHARS` (docs/api.md). An actor with a
  control character is refused (an identifier); a reason's become spaces, so the audit log
  and the sidecar's log lines stay one line each. Lone surrogates are refused in both.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from shadow.checks import CONTROL, text_problem
from shadow.keys import AUTH, SETTINGS
from shadow.server import error

__all__ = [
    "MAX_ACTOR_CHARS",
    "MAX_REASON_CHARS",
    "actor_of",
    "reason_of",
    "refused_text",
    "route_refusal",
    "token_refusal",
]

MAX_ACTOR_CHARS = 200
MAX_REASON_CHARS = 1000


def token_refusal(request: web.Request) -> web.Response | None:
    """The 403/401 answer unless the admin bearer token matches (constant-time compare)."""
    token = request.app[SETTINGS].admin_token
    if token is None or not token.get_secret_value():
        return error(
            403,
            "API writes are disabled: set SHADOW_ADMIN_TOKEN (or --admin-token) and send "
            "'Authorization: Bearer <token>'",
        )
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
        return error(401, "missing or wrong admin token; send 'Authorization: Bearer <token>'")
    return None


def route_refusal(request: web.Request) -> web.Response | None:
    """The 401 unless the request carries a credential that may route: with the admin
    token or ingest tokens configured, ``Authorization: Bearer`` with either (an ingest
    token also in ``X-Shadow-Ingest-Token``); with none configured, routing is open."""
    settings, auth = request.app[SETTINGS], request.app[AUTH]
    admin_token = settings.admin_token is not None and settings.admin_token.get_secret_value()
    if not admin_token and not auth.tokens:
        return None
    if admin_token and token_refusal(request) is None:
        return None
    if auth.tokens and auth.token_refusal(request.headers, bearer=True) is None:
        return None
    return error(
        401,
        "routing needs a credential: send 'Authorization: Bearer <token>' with the admin token "
        "or an ingest token; nothing was recorded",
    )


def refused_text(problem: tuple[str, str]) -> web.Response:
    """The 400 for text :func:`shadow.checks.text_problem` refuses, naming the field as the
    ingest errors do: ``{"error": "<path>: <message>", "errors": [{"path", "message"}]}``."""
    path, message = problem
    return error(400, f"{path}: {message}", [{"path": path, "message": message}])


def _clip(text: str, limit: int) -> str:
    return CONTROL.sub(" ", text)[:limit]


def actor_of(request: web.Request, body: dict[str, Any]) -> str:
    """The actor of a write: the body's ``actor``, else ``X-Shadow-Actor``, clipped (else
    ``admin``). Raises ``HTTPBadRequest`` for a header text refuses."""
    header = request.headers.get("X-Shadow-Actor")
    problem = None if header is None else text_problem(header, "X-Shadow-Actor", ident=True)
    if problem is not None:
        raise web.HTTPBadRequest(text=refused_text(problem).text, content_type="application/json")
    given = body.get("actor") or header or "admin"
    return _clip(str(given), MAX_ACTOR_CHARS).strip() or "admin"


def reason_of(body: dict[str, Any], default: str) -> str:
    """The reason of a write: the body's ``reason``, clipped, else ``default``."""
    return _clip(str(body.get("reason") or ""), MAX_REASON_CHARS).strip() or default
