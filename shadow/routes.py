"""The sidecar's route table: every route its API port serves, in one list.

The route modules own their handlers and never import each other (their app keys are in
:mod:`shadow.keys`, their credential checks in :mod:`shadow.credentials`); this module puts
their routes together for :func:`shadow.app.build_app`, and :mod:`shadow.openapi` documents
exactly these (a test compares them).
"""

from __future__ import annotations

from aiohttp import web

from shadow.api import api_routes
from shadow.cases_api import cases_routes
from shadow.gateway.api import gateway_routes
from shadow.gateway.mcp import mcp_routes
from shadow.review_api import review_routes
from shadow.sources.mirror import mirror_routes
from shadow.ui import ui_routes

__all__ = ["console_routes", "routes"]


def routes() -> list[web.RouteDef]:
    """Every route of the API port: the agent-facing MCP endpoint (``/mcp/...``), live
    sessions and approvals (``/v1/sessions``, ``/v1/approvals``), ingest, evidence,
    autonomy, routing, health, metrics and the OpenAPI document (:mod:`shadow.api`), one
    case (``/v1/cases/{event_id}``, :mod:`shadow.cases_api`), the review queue (``/v1/review/...``
    and a case's adjudication, :mod:`shadow.review_api`), and the mirror target
    (``/v1/mirror/...``)."""
    return [
        *mcp_routes(),
        *gateway_routes(),
        *api_routes(),
        *cases_routes(),
        *review_routes(),
        *mirror_routes(),
    ]


def console_routes() -> list[web.RouteDef]:
    """The console's pages and forms (``/ui/...``, :mod:`shadow.ui`, docs/console.md):
    HTML for people, served beside the API but not part of it (not in the OpenAPI
    document; its actions call the same services under the same roles)."""
    return ui_routes()
