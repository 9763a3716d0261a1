"""Who may see a console page or take a console action, and what a console form may hold.

- :func:`page` (``GET``): a signed-in session (else a redirect to ``/ui/signin``) whose
  credential has the page's role.
- :func:`action` (``POST``): in this order, the request comes from this origin
  (:func:`~shadow.ui.session.foreign_origin`, 403), a signed-in session (401, counted in
  ``shadow_auth_refusals_total`` as the API counts a missing token), a form within
  :data:`MAX_FORM_BYTES` that is URL-encoded UTF-8 with only the action's fields, each once,
  and text :func:`shadow.checks.text_problem` accepts (400; 415 for another content type,
  413 when too large), the session's CSRF token (403), then the role the same API write
  needs, for the same task type (:func:`shadow.credentials.role_problem`: 403, counted).

The actor of everything the console does is the session's credential name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from shadow.checks import text_problem
from shadow.credentials import role_problem
from shadow.keys import KEYRING, LADDER
from shadow.roles import Credential
from shadow.ui.render import error_page
from shadow.ui.session import SESSIONS, Session, foreign_origin, signed_in

__all__ = [
    "FREE_TEXT",
    "MAX_FORM_BYTES",
    "Context",
    "Scope",
    "action",
    "back_to",
    "page",
    "see_other",
]

MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 20
FREE_TEXT = frozenset({"reason", "note"})  # every other field is an identifier
NAV = (
    ("overview", "/ui/", "Overview"),
    ("review", "/ui/review", "Review"),
    ("approvals", "/ui/approvals", "Approvals"),
    ("dead-letters", "/ui/dead-letters", "Dead letters"),
    ("audit", "/ui/audit", "Audit log"),
)


@dataclass(frozen=True, slots=True)
class Context:
    """A signed-in request: its session, the credential it stands for, its CSRF token."""

    session: Session
    credential: Credential
    csrf: str

    def can(self, role: str, task_type: str | None = "") -> bool:
        """Whether the credential may do what ``role`` may on ``task_type`` (``""``: a page
        not about one task type, ``None``: every task type, as a freeze), without counting:
        what a page shows, never a decision (the action checks again, and counts)."""
        if not self.credential.has(role):
            return False
        return task_type == "" or self.credential.acts_on(task_type)

    def page(self, active: str, **values: Any) -> dict[str, Any]:
        """The template context of a page: the navigation, who is signed in, the CSRF token
        and the flashed messages, with ``values``."""
        me = self.credential
        return {
            "me": {"name": me.name, "roles": sorted(me.roles)},
            "nav": NAV,
            "active": active,
            "csrf": self.csrf,
            "flashes": self.session.take_flashes(),
            "can": self.can,
            **values,
        }


PageHandler = Callable[[web.Request, Context], Awaitable[web.StreamResponse]]
ActionHandler = Callable[[web.Request, Context, dict[str, str]], Awaitable[web.StreamResponse]]
# The task type an action acts on, from the request and its form: a name, ALL (every task
# type: a freeze) or None (decided later, by what the action finds: a held write's).
Scope = Callable[[web.Request, dict[str, str]], "str | object | None"]


def see_other(location: str) -> web.Response:
    """A 303 to ``location`` (a path of this console)."""
    return web.Response(status=303, headers={"Location": location})


def back_to(form: dict[str, str], default: str) -> str:
    """The form's ``back`` (a path of this console), else ``default``."""
    back = form.get("back", "")
    ok = back.startswith("/ui/") and not back.startswith("//") and "\\" not in back
    return back if ok else default


def _context(request: web.Request, found: tuple[Session, Credential]) -> Context:
    session, credential = found
    return Context(session, credential, request.app[SESSIONS].csrf(session.id))


def page(active: str, role: str = "viewer") -> Callable[[PageHandler], Any]:
    """A console page for ``role`` (see the module docstring)."""

    def wrap(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            found = signed_in(request)
            if found is None:
                return see_other("/ui/signin")
            ctx = _context(request, found)
            problem = role_problem(request.app[KEYRING], ctx.credential, role)
            if problem is not None:
                return error_page(403, problem, context=ctx.page(active))
            try:
                return await handler(request, ctx)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return error_page(exc.status, exc.text or exc.reason, context=ctx.page(active))

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return wrap


def _bad(status: int, message: str) -> web.Response:
    return error_page(status, message)


async def read_form(request: web.Request, fields: Iterable[str]) -> dict[str, str] | web.Response:
    """The form of a console POST with only ``fields`` (and ``csrf``), or the refusal."""
    if request.content_type != "application/x-www-form-urlencoded":
        return _bad(415, "a console form is sent as application/x-www-form-urlencoded")
    if (request.content_length or 0) > MAX_FORM_BYTES:
        return _bad(413, f"a console form is at most {MAX_FORM_BYTES} bytes")
    body = await request.read()
    if len(body) > MAX_FORM_BYTES:
        return _bad(413, f"a console form is at most {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        return _bad(400, "the form is not URL-encoded UTF-8 (or has too many fields)")
    allowed = {*fields, "csrf"}
    form: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            return _bad(
                400, f"unknown field {key[:50]!r}; this form sends {', '.join(sorted(allowed))}"
            )
        if key in form:
            return _bad(400, f"field {key!r} was sent twice")
        problem = text_problem(value, key, ident=key not in FREE_TEXT)
        if problem is not None:
            return _bad(400, f"{problem[0]}: {problem[1]}")
        form[key] = value
    return form


def action(
    role: str, fields: Iterable[str], scope: Scope | None = None
) -> Callable[[ActionHandler], Any]:
    """A console POST for ``role`` taking ``fields`` (see the module docstring). ``scope``
    names the task type it acts on (checked before the handler runs); a handler that finds
    its task type itself checks it with :func:`allowed`."""
    names = tuple(fields)

    def wrap(handler: ActionHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            foreign = foreign_origin(request)
            if foreign is not None:
                return _bad(403, f"refused: {foreign}; nothing was done")
            found = signed_in(request)
            if found is None:
                request.app[KEYRING].refused(role, 401)
                return error_page(401, "your console session has ended: sign in again")
            ctx = _context(request, found)
            form = await read_form(request, names)
            if isinstance(form, web.Response):
                return form
            if not request.app[SESSIONS].csrf_ok(ctx.session.id, form.pop("csrf", "")):
                return error_page(
                    403, "the form's CSRF token is missing or wrong; nothing was done"
                )
            try:
                target = scope(request, form) if scope is not None else None
                refusal = allowed(request, ctx, role, target)
                if refusal is not None:
                    return refusal
                return await handler(request, ctx, form)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return error_page(exc.status, exc.text or exc.reason, context=ctx.page(""))

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return wrap


def allowed(
    request: web.Request, ctx: Context, role: str, task_type: str | object | None
) -> web.Response | None:
    """The 403 page unless the session's credential may do what ``role`` may on
    ``task_type`` (counted as the API counts it), else ``None``."""
    problem = role_problem(request.app[KEYRING], ctx.credential, role, task_type)
    if problem is None:
        return None
    return error_page(403, f"refused: {problem}; nothing was done", context=ctx.page(""))


def task_type_of(request: web.Request) -> str:
    """The route's ``{task_type}``, which must be configured (404 page otherwise)."""
    name = request.match_info["task_type"]
    if name not in request.app[LADDER].policy.task_types:
        raise web.HTTPNotFound(text=f"unknown task type {name[:100]!r}")
    return name
