"""The typed ``web.AppKey``s through which the sidecar's handlers reach what
:func:`shadow.app.build_app` (the composition root) wired: one module, so the route modules
(:mod:`shadow.api`, :mod:`shadow.gateway.api`, :mod:`shadow.gateway.mcp`) import their keys
from here and never from each other.

It imports the types it names only for type checking, so anything may import it without
an import cycle at run time. Three keys stay with the module whose type they hold, since
that module reads them and is imported here otherwise: ``MIRROR``
(:mod:`shadow.sources.mirror`, shared by the mirror listener and the proxy),
``SUPERVISOR`` (:mod:`shadow.supervisor`) and ``LISTEN_URL`` (:mod:`shadow.server`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from shadow.config import Settings
    from shadow.gateway.core import Gateway
    from shadow.handling import HandlingLog
    from shadow.ingest_auth import IngestAuth
    from shadow.intake import Intake
    from shadow.ladder import Ladder
    from shadow.pipeline import Pipeline
    from shadow.review import ReviewQueue
    from shadow.roles import Keyring
    from shadow.tracing import Tracer

__all__ = [
    "AUTH",
    "GATEWAY",
    "HANDLING",
    "INTAKE",
    "KEYRING",
    "LADDER",
    "ON_FREEZE",
    "PIPELINE",
    "READINESS",
    "REGISTRY",
    "REVIEW",
    "SETTINGS",
    "STARTUP",
    "TRACER",
]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
LADDER: web.AppKey[Ladder] = web.AppKey("ladder")
INTAKE: web.AppKey[Intake] = web.AppKey("intake")
HANDLING: web.AppKey[HandlingLog] = web.AppKey("handling")
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("metrics_registry")
AUTH: web.AppKey[IngestAuth] = web.AppKey("ingest_auth")
# Every credential and its roles (shadow.roles); shadow.credentials checks requests with it.
KEYRING: web.AppKey[Keyring] = web.AppKey("keyring")
# The review queue: blind claims and reviewers' verdicts (shadow.review).
REVIEW: web.AppKey[ReviewQueue] = web.AppKey("review")
# The tool gateway: the MCP endpoint, live sessions and approvals.
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
# Source health checks (Kafka): each returns why the sidecar is not ready, or None.
READINESS: web.AppKey[list[Callable[[], str | None]]] = web.AppKey("readiness")
# Lines ``shadow run`` prints once it serves (what the configuration means: which tools are
# reads, ...).
STARTUP: web.AppKey[list[str]] = web.AppKey("startup_lines")
# Run after a freeze with (actor, reason): the tool gateway refuses the writes it holds.
ON_FREEZE: web.AppKey[list[Callable[[str, str], Awaitable[None]]]] = web.AppKey("on_freeze")
# OpenTelemetry traces (shadow.tracing): the case view shows a case's trace id with it.
TRACER: web.AppKey[Tracer] = web.AppKey("tracer")
