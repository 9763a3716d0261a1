"""The console: the sidecar's own web pages under ``/ui/`` (docs/console.md).

Server-rendered HTML (Jinja2, autoescaped), charts as inline SVG drawn on the server, one
first-party stylesheet and one small first-party script (the review page's keys), nothing
from another origin, a strict CSP on every answer (:mod:`shadow.ui.render`). Forms work
without JavaScript. Sign-in pastes an API token once; the session is an HttpOnly,
SameSite=Strict cookie and every form carries a CSRF token (:mod:`shadow.ui.session`).
Every action goes through the same services as the API and the same role checks
(:mod:`shadow.ui.guard`, :func:`shadow.credentials.role_problem`).

Modules: :mod:`~shadow.ui.session` (sessions, cookie, CSRF), :mod:`~shadow.ui.guard` (who
may see and do what; forms), :mod:`~shadow.ui.render` (templates, headers),
:mod:`~shadow.ui.pages` (the pages), :mod:`~shadow.ui.actions` (what the forms do),
:mod:`~shadow.ui.review` (the review queue), :mod:`~shadow.ui.explain` (what a task type's
next gate needs, in words), :mod:`~shadow.ui.svg` (charts).
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

from shadow.ui import actions, pages, review
from shadow.ui.guard import Context
from shadow.ui.render import console_headers, error_page
from shadow.ui.session import SESSIONS, Sessions, signed_in

__all__ = ["SESSIONS", "Sessions", "console_headers", "ui_routes"]

STATIC = {"console.css": "text/css", "review.js": "text/javascript"}


@functools.cache
def _static(name: str) -> bytes:
    return resources.files("shadow.ui").joinpath("static", name).read_bytes()


async def static(request: web.Request) -> web.StreamResponse:
    """The console's own stylesheet and script (nothing else is served from here)."""
    name = request.match_info["name"]
    kind = STATIC.get(name)
    if kind is None:
        return error_page(404, "no such file")
    response = web.Response(body=_static(name), content_type=kind, charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response


async def root(request: web.Request) -> web.StreamResponse:
    return web.Response(status=308, headers={"Location": "/ui/"})


async def not_found(request: web.Request) -> web.StreamResponse:
    found = signed_in(request)
    if found is None:
        return error_page(404, "no such console page")
    session, credential = found
    ctx = Context(session, credential, request.app[SESSIONS].csrf(session.id))
    return error_page(404, "no such console page", context=ctx.page(""))


def ui_routes() -> list[web.RouteDef]:
    """Every route of the console (all under ``/ui``); :func:`shadow.routes.console_routes`
    lists them beside the API's."""
    return [
        web.get("/ui", root, allow_head=False),
        web.get("/ui/", pages.overview, allow_head=False),
        web.get("/ui/signin", actions.signin_page, allow_head=False),
        web.post("/ui/signin", actions.signin),
        web.post("/ui/signout", actions.signout),
        web.get("/ui/task/{task_type}", pages.task_type, allow_head=False),
        web.post("/ui/task/{task_type}/level", actions.set_level),
        web.post("/ui/task/{task_type}/approve", actions.approve_proposal),
        web.post("/ui/task/{task_type}/reject", actions.reject_proposal),
        web.get("/ui/case/{event_id}", pages.case, allow_head=False),
        web.get("/ui/review", review.queue, allow_head=False),
        web.post("/ui/review/{claim}", review.answer),
        web.get("/ui/approvals", pages.approvals, allow_head=False),
        web.post("/ui/approvals/{approval_id}/approve", actions.approve_held),
        web.post("/ui/approvals/{approval_id}/reject", actions.reject_held),
        web.post("/ui/freeze", actions.freeze),
        web.post("/ui/unfreeze", actions.unfreeze),
        web.get("/ui/dead-letters", pages.dead_letters, allow_head=False),
        web.get("/ui/audit", pages.audit, allow_head=False),
        web.get("/ui/static/{name}", static, allow_head=False),
        web.get("/ui/{tail:.*}", not_found, allow_head=False),
    ]
