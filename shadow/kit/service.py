"""The agent service: a kit handler behind the agent contract, over HTTP (aiohttp).

``POST`` (any path; the sidecar's ``--agent`` URL names it) with the contract's body
``{"event_id", "task_type", "payload", "shadow", "tools_url"?}`` (``tools_url`` also read
from ``X-Shadow-Tools-Url``):

- ``200 {"decision", "agent_version", "usage"?}``: the handler's return value (a dict, or a
  pydantic model dumped as JSON) is the ``decision``; ``agent_version`` is the service's;
  ``usage`` is the case's (:mod:`shadow.kit.usage`) when anything was recorded. ``actions``
  is left out: the writes the agent made through its tools URL are the case's actions (the
  gateway captured them), and an answer that lists none declares none.
- ``400``: the body is not the contract's request (one line saying why).
- ``500``: the handler raised (``agent raised ValueError: ...``; an exception group is
  described by its first leaf), or returned something that is not a decision.
- ``504``: no decision before the deadline (``deadline: no decision within 8.0 s``).

The sidecar records a non-2xx answer as the decision's error (``HTTP 500: agent raised
...``), counted against the agent version, and never retries it. Every error answer is one
line of ``text/plain``, with the tools URL (a credential) left out; the service logs it, with
the traceback, on the ``shadow.kit`` logger.

Before answering, always, the case's MCP session is closed (:mod:`shadow.kit.mcp`), so the
gateway has every call the agent made before the sidecar settles the case.

``GET /healthz`` answers ``{"status": "ok", "agent_version"}`` (for probes).

The deadline (:data:`DEFAULT_DEADLINE`, seconds from the request's arrival) must be below the
sidecar's ``agent_timeout`` (10 s by default) by at least the time closing takes
(:data:`~shadow.kit.mcp.CLOSE_TIMEOUT`) and a margin for the network, so the sidecar gets the
kit's reason rather than its own ``timeout after 10.0 s``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from yarl import URL

from shadow.kit.case import Case
from shadow.kit.errors import describe, scrub
from shadow.kit.usage import Price

__all__ = ["DEFAULT_DEADLINE", "MAX_REQUEST_BYTES", "Handler", "app", "serve"]

DEFAULT_DEADLINE = 8.0
MAX_REQUEST_BYTES = 16 * 1024 * 1024

log = logging.getLogger("shadow.kit")


class SupportsModelDump(Protocol):
    """A pydantic model (anything with pydantic's ``model_dump(mode="json")``)."""

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


Handler = Callable[[Case], Awaitable[Mapping[str, Any] | SupportsModelDump]]


class _Refusal(Exception):
    """The answer to give instead of a decision: a status and one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Service:
    def __init__(
        self, handler: Handler, version: str, price: Price | None, deadline: float
    ) -> None:
        if not (
            inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(type(handler).__call__)  # an async __call__
        ):
            raise TypeError("the handler must be an async function: async def handler(case)")
        if not isinstance(version, str) or not version.strip():
            raise ValueError("version must name the agent's version, e.g. 'refund-agent@7'")
        if not (math.isfinite(deadline) and deadline > 0):
            raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
        self.handler = handler
        self.version = version
        self.price = price
        self.deadline = float(deadline)

    async def decide(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        try:
            case = _case(await _body(request), request.headers, deadline)
        except _Refusal as refusal:
            log.warning("refused a request: %s", refusal.reason)
            return _text(refusal.status, refusal.reason)
        try:
            body = await self._answer(case)
        except _Refusal as refusal:
            reason = scrub(refusal.reason, case.tools_url)
            log.error("case %s: %s", case.event_id, reason, exc_info=refusal.__cause__)
            return _text(refusal.status, reason)
        return web.json_response(body)

    async def _answer(self, case: Case) -> dict[str, Any]:
        """The answer's body, the case's session closed first; :class:`_Refusal` else."""
        timer = asyncio.timeout_at(case.deadline)
        try:
            async with timer:
                result = await self.handler(case)
        except Exception as exc:
            if timer.expired():  # whatever the handler made of its cancellation
                why = f"deadline: no decision within {self.deadline} s"
                raise _Refusal(504, why) from None
            raise _Refusal(500, f"agent raised {describe(exc)}") from exc
        finally:
            await case.close()
        answer: dict[str, Any] = {
            "decision": _decision(result),
            "agent_version": self.version,
        }
        usage = case.usage.to_json(self.price)
        if usage is not None:
            answer["usage"] = usage
        return answer

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "agent_version": self.version})


def app(
    handler: Handler,
    *,
    version: str,
    price: Price | None = None,
    deadline: float = DEFAULT_DEADLINE,
) -> web.Application:
    """The service as an aiohttp application (to embed, or serve yourself)."""
    service = _Service(handler, version, price, deadline)
    application = web.Application(client_max_size=MAX_REQUEST_BYTES)
    application.router.add_get("/healthz", service.healthz)
    application.router.add_post("/{tail:.*}", service.decide)
    return application


def serve(
    handler: Handler,
    *,
    version: str,
    host: str = "127.0.0.1",
    port: int = 9000,
    price: Price | None = None,
    deadline: float = DEFAULT_DEADLINE,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``handler`` until SIGINT or SIGTERM (blocking). ``ready(url)`` is called once
    the socket listens (by default it prints ``shadow.kit: serving on URL``); port 0 picks a
    free port."""
    application = app(handler, version=version, price=price, deadline=deadline)
    sock = socket.create_server((host, port))
    bound = sock.getsockname()[1]
    url = f"http://{host}:{bound}"
    (ready or _announce)(url)
    web.run_app(application, sock=sock, print=None, access_log=None, shutdown_timeout=5.0)


def _announce(url: str) -> None:
    print(f"shadow.kit: serving on {url}", flush=True)


# -- the request ------------------------------------------------------------------------------


async def _body(request: web.Request) -> object:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _Refusal(413, f"request body over {MAX_REQUEST_BYTES} bytes") from None
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _Refusal(400, f"request body is not JSON: {describe(exc)}") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _case(body: object, headers: Mapping[str, str], deadline: float) -> Case:
    if not isinstance(body, dict):
        raise _Refusal(400, "request body must be a JSON object (the agent contract's request)")
    problems = []
    for key in ("event_id", "task_type"):
        value = body.get(key)
        if not isinstance(value, str) or not value:
            problems.append(f"{key}: required, a non-empty string")
    if not isinstance(body.get("payload"), dict):
        problems.append("payload: required, a JSON object")
    shadow = body.get("shadow", True)
    if not isinstance(shadow, bool):
        problems.append("shadow: must be true or false")
    tools_url = body.get("tools_url", headers.get("X-Shadow-Tools-Url"))
    if tools_url is not None and not _http_url(tools_url):
        problems.append("tools_url: must be an http(s) URL or null")
    if problems:
        raise _Refusal(400, "invalid request: " + "; ".join(problems))
    return Case(
        event_id=body["event_id"],
        task_type=body["task_type"],
        payload=body["payload"],
        tools_url=tools_url or None,
        shadow=shadow,
        deadline=deadline,
    )


def _http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        url = URL(value)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


# -- the answer -------------------------------------------------------------------------------


def _decision(result: object) -> dict[str, Any]:
    """The handler's return value as the decision object, copied through JSON."""
    if isinstance(result, Mapping):
        value: object = dict(result)
    else:
        dump = getattr(result, "model_dump", None)
        if not callable(dump):
            kind = "None" if result is None else type(result).__name__
            raise _Refusal(500, f"agent returned {kind}, expected a dict or a pydantic model")
        try:
            value = dump(mode="json")
        except Exception as exc:
            raise _Refusal(500, f"agent's decision does not dump: {describe(exc)}") from exc
    try:
        copied = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Refusal(500, f"agent's decision is not JSON: {describe(exc)}") from exc
    if not isinstance(copied, dict):
        raise _Refusal(500, "agent's decision must be a JSON object")
    return copied


def _text(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason, content_type="text/plain")
