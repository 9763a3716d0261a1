"""HTML for the console: the Jinja2 environment (autoescape on, undefined names an error),
the security headers of every ``/ui/`` answer, and the error pages.

Every answer under ``/ui/`` carries :data:`SECURITY_HEADERS` (set in
:func:`console_headers`, an ``on_response_prepare`` hook, so error answers get them too):
a strict Content-Security-Policy (only this origin's stylesheet and script, no inline script
or style, no framing, forms post only here), ``nosniff``, no referrer to other origins, and
``no-store`` except for the static files.
"""

from __future__ import annotations

import functools
import json
import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

__all__ = [
    "CSP",
    "SECURITY_HEADERS",
    "console_headers",
    "environment",
    "error_page",
    "render",
]

NONE = "\u2013"  # an en dash: what a page shows for no value

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it Chromium sends "Origin: null" on the console's own form
    # posts, and the Origin check (shadow.ui.session.foreign_origin) could then only accept
    # null, which a sandboxed frame of any site also sends. same-origin gives other origins
    # no referrer either.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _pct(value: Any, digits: int = 2) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return NONE
    return f"{value * 100:.{digits}f}%"


def _num(value: Any, digits: int = 4) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    return f"{value:.{digits}f}"


def _when(value: Any) -> str:
    """An ISO 8601 instant (or a datetime) as ``2026-11-20 10:07:00 UTC``."""
    if value is None:
        return NONE
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _segment(value: Any) -> str:
    return quote(str(value), safe="")


@functools.cache
def environment() -> Environment:
    """The templates of ``shadow/ui/templates`` (autoescaped, strict about undefined
    names); built once per process."""
    env = Environment(
        loader=PackageLoader("shadow.ui", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, num=_num, when=_when, pretty=_json, segment=_segment)
    return env


def render(template: str, http_status: int = 200, **context: Any) -> web.Response:
    """``template`` rendered with ``context`` as a ``text/html`` answer."""
    text = environment().get_template(template).render(**context)
    return web.Response(text=text, status=http_status, content_type="text/html", charset="utf-8")


def error_page(status: int, message: str, *, context: dict[str, Any] | None = None) -> web.Response:
    """The console's error page (``message`` escaped), with the navigation when ``context``
    (a signed-in page's context) is given."""
    return render("error.html", status, status=status, message=message, **(context or {"me": None}))


async def console_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the security headers on every answer under ``/ui/``."""
    if request.path != "/ui" and not request.path.startswith("/ui/"):
        return
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"


def svg(markup: str) -> Markup:
    """Markup the console built itself (the charts, every text in them escaped)."""
    return Markup(markup)
