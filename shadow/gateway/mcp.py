"""The agent-facing MCP endpoint: Streamable HTTP on the sidecar's port, ``/mcp/{capability}``.

Speaks both eras of the protocol, as the official SDK's ``Client`` does:

- **Stateless (2026-07-28)**: every POST is one self-contained JSON-RPC request whose
  ``params._meta`` carries ``io.modelcontextprotocol/protocolVersion`` (and the client's
  capabilities), matched by the ``MCP-Protocol-Version`` header; ``server/discover`` answers
  the versions and capabilities; no session id.
- **Handshake (2025-03-26, 2025-06-18, 2025-11-25)**: ``initialize`` opens a session whose
  id (``Mcp-Session-Id``) is random and bound to the capability that opened it; every later
  request must carry it. ``DELETE`` ends it.

Answers are always ``application/json`` (never an SSE stream); ``GET`` (the optional
server-to-client stream) is ``405``. Methods: ``ping``, ``tools/list``, ``tools/call``
(and ``server/discover``, ``initialize``); anything else is ``-32601``.

What a hostile client gets: a JSON-RPC batch is refused whole (``-32600``: nothing in it
runs); a notification is acknowledged ``202`` and ignored (a ``tools/call`` without an id
calls nothing); an unknown, expired, revoked or other case's capability is ``404``; a
session id that this capability did not open is ``404``; a body over 1 MiB (or over the
sidecar's ``max_body_bytes``, when that is smaller) is ``413``, one that is not
``application/json`` is ``415``; params nested deeper than the record limit
(:data:`shadow.checks.MAX_DEPTH`, counted as in an action's ``args``) or holding a number JSON
cannot carry (``NaN``), and a tool name over :data:`MAX_TOOL_NAME` characters, are
``-32602``: nothing runs.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from shadow import fastjson
from shadow.api import SETTINGS
from shadow.checks import json_problem
from shadow.gateway.capability import Grant
from shadow.gateway.core import CallRefused, Gateway

__all__ = [
    "GATEWAY",
    "HANDSHAKE_VERSIONS",
    "MAX_MCP_BODY",
    "MAX_TOOL_NAME",
    "MODERN_VERSIONS",
    "McpSessions",
    "mcp_routes",
]

GATEWAY = web.AppKey("gateway", Gateway)
HANDSHAKE_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
MAX_MCP_BODY = 1_048_576
# Tool names SHOULD be 1-128 characters (MCP spec); room is left for a ``<server>.`` prefix.
MAX_TOOL_NAME = 256
MAX_SESSIONS = 100_000

_VERSION_META = "io.modelcontextprotocol/protocolVersion"
_CAPS_META = "io.modelcontextprotocol/clientCapabilities"
_SERVER_INFO = {"name": "shadow-gateway", "version": "1"}
_CAPABILITIES = {"tools": {"listChanged": False}}

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
NOT_FOUND = -32001
HEADER_MISMATCH = -32020
UNSUPPORTED_VERSION = -32022


class McpSessions:
    """Handshake-era sessions: id -> (capability nonce, protocol version, expiry)."""

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[str, str, float]] = {}

    def open(self, grant: Grant, version: str) -> str | None:
        now = time.time()
        if len(self._by_id) >= MAX_SESSIONS:
            self._by_id = {k: v for k, v in self._by_id.items() if v[2] > now}
            if len(self._by_id) >= MAX_SESSIONS:
                return None
        sid = secrets.token_urlsafe(24)
        self._by_id[sid] = (grant.nonce, version, grant.expires_at)
        return sid

    def get(self, sid: str, grant: Grant) -> str | None:
        """The session's protocol version, if ``sid`` is a live session of this grant."""
        found = self._by_id.get(sid)
        if found is None or found[0] != grant.nonce or found[2] <= time.time():
            return None
        return found[1]

    def close(self, sid: str, grant: Grant) -> bool:
        if self.get(sid, grant) is None:
            return False
        del self._by_id[sid]
        return True


SESSIONS = web.AppKey("mcp_sessions", McpSessions)


def _reply(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=fastjson.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(rid: Any, code: int, message: str, status: int = 200, data: Any = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return _reply({"jsonrpc": "2.0", "id": rid, "error": err}, status)


def _grant(request: web.Request) -> tuple[Grant | None, web.Response | None]:
    grant, why = request.app[GATEWAY].check(request.match_info["token"])
    if grant is None:
        return None, _error(None, NOT_FOUND, f"unknown tools URL: {why}", 404)
    return grant, None


async def mcp_get(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {"error": "this endpoint offers no server-to-client stream; POST requests"},
        status=405,
        headers={"Allow": "POST, DELETE"},
    )


async def mcp_delete(request: web.Request) -> web.StreamResponse:
    grant, refused = _grant(request)
    if grant is None:
        assert refused is not None
        return refused
    sid = request.headers.get("Mcp-Session-Id", "")
    if not request.app[SESSIONS].close(sid, grant):
        return _error(None, NOT_FOUND, "no such session", 404)
    return web.Response(status=200)


async def _body(request: web.Request) -> Any:
    limit = min(MAX_MCP_BODY, request.app[SETTINGS].max_body_bytes)
    too_large = _error(None, INVALID_REQUEST, f"body larger than {limit} bytes", 413)
    if request.content_length is not None and request.content_length > limit:
        raise _Answer(too_large)
    if request.content_type != "application/json":
        raise _Answer(_error(None, INVALID_REQUEST, "Content-Type must be application/json", 415))
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise _Answer(_error(None, INVALID_REQUEST, "compressed bodies are not accepted", 415))
    raw = bytearray()
    async for chunk in request.content.iter_chunked(65_536):
        raw += chunk
        if len(raw) > limit:
            raise _Answer(too_large)
    try:
        return fastjson.loads(bytes(raw))
    except (ValueError, RecursionError):
        raise _Answer(_error(None, PARSE_ERROR, "Parse error", 400)) from None


class _Answer(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def mcp_post(request: web.Request) -> web.StreamResponse:
    try:
        return await _post(request)
    except _Answer as answer:
        return answer.response


async def _post(request: web.Request) -> web.Response:
    grant, refused = _grant(request)
    if grant is None:
        assert refused is not None
        return refused
    msg = await _body(request)
    if isinstance(msg, list):
        return _error(
            None, INVALID_REQUEST, "JSON-RPC batches are not accepted; send one request", 400
        )
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return _error(None, INVALID_REQUEST, "body must be one JSON-RPC 2.0 request object", 400)
    if "id" not in msg:
        # A notification (or a response to a request we never send): acknowledged, ignored.
        return web.Response(status=202)
    rid = msg["id"]
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return _error(None, INVALID_REQUEST, "id must be a string or an integer", 400)
    method = msg.get("method")
    if not isinstance(method, str):
        return _error(rid, INVALID_REQUEST, "method: required string", 400)
    params = msg.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return _error(rid, INVALID_PARAMS, "params must be an object")
    # As deep as an action's args may be in a record (tools/call arguments are one), so a
    # captured write is a valid action and nothing deeper reaches an upstream.
    too_deep = json_problem(params, "params", 2)
    if too_deep is not None:
        return _error(rid, INVALID_PARAMS, f"{too_deep[0][:200]}: {too_deep[1]}")
    meta = params.get("_meta")
    header_version = request.headers.get("MCP-Protocol-Version")
    if method == "initialize":
        return _initialize(request, grant, rid, params)
    if header_version in MODERN_VERSIONS or (isinstance(meta, dict) and _VERSION_META in meta):
        problem = _modern_problem(request, rid, method, params, meta, header_version)
        if problem is not None:
            return problem
        version = str(header_version)
    else:
        sid = request.headers.get("Mcp-Session-Id")
        if not sid:
            return _error(
                rid,
                INVALID_REQUEST,
                "Mcp-Session-Id header required: initialize first, "
                f"or send a stateless request ({MODERN_VERSIONS[-1]})",
                400,
            )
        found = request.app[SESSIONS].get(sid, grant)
        if found is None:
            return _error(rid, NOT_FOUND, "session not found", 404)
        if header_version is not None and header_version != found:
            return _error(
                rid,
                INVALID_REQUEST,
                f"MCP-Protocol-Version {header_version!r} is not this session's {found}",
                400,
            )
        version = found
    return await _dispatch(request.app[GATEWAY], grant, rid, method, params, version)


def _modern_problem(
    request: web.Request,
    rid: Any,
    method: str,
    params: dict[str, Any],
    meta: Any,
    header_version: str | None,
) -> web.Response | None:
    if not isinstance(meta, dict) or _VERSION_META not in meta or _CAPS_META not in meta:
        return _error(
            rid,
            INVALID_PARAMS,
            f"params._meta must carry {_VERSION_META!r} and {_CAPS_META!r}",
            400,
        )
    requested = meta[_VERSION_META]
    if requested not in MODERN_VERSIONS:
        return _error(
            rid,
            UNSUPPORTED_VERSION,
            f"unsupported protocol version {requested!r}",
            400,
            {"supported": [*MODERN_VERSIONS, *HANDSHAKE_VERSIONS], "requested": requested},
        )
    if header_version != requested:
        return _error(
            rid,
            HEADER_MISMATCH,
            "MCP-Protocol-Version header does not match the request envelope's protocol version",
            400,
        )
    header_method = request.headers.get("Mcp-Method")
    if header_method is not None and header_method != method:
        return _error(rid, HEADER_MISMATCH, "Mcp-Method header does not match the method", 400)
    header_name = request.headers.get("Mcp-Name")
    named = header_name is not None and method == "tools/call"
    if named and _decode_header(header_name) != params.get("name"):
        return _error(rid, HEADER_MISMATCH, "Mcp-Name header does not match the tool name", 400)
    return None


def _initialize(
    request: web.Request, grant: Grant, rid: Any, params: dict[str, Any]
) -> web.Response:
    asked = params.get("protocolVersion")
    version = asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
    sid = request.app[SESSIONS].open(grant, version)
    if sid is None:
        return _error(rid, INVALID_REQUEST, "too many open sessions; retry later", 503)
    result = {"protocolVersion": version, "capabilities": _CAPABILITIES, "serverInfo": _SERVER_INFO}
    return _reply({"jsonrpc": "2.0", "id": rid, "result": result}, headers={"Mcp-Session-Id": sid})


async def _dispatch(
    gateway: Gateway, grant: Grant, rid: Any, method: str, params: dict[str, Any], version: str
) -> web.Response:
    modern = version in MODERN_VERSIONS
    result: dict[str, Any]
    if method == "ping":
        result = {}
    elif method == "server/discover" and modern:
        result = {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": _CAPABILITIES,
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": _SERVER_INFO},
        }
    elif method == "tools/list":
        result = {"tools": await gateway.list_tools(grant)}
        if modern:
            result.update(ttlMs=0, cacheScope="private")
    elif method == "tools/call":
        name = params.get("name")
        args = params.get("arguments")
        if not isinstance(name, str) or not name:
            return _error(rid, INVALID_PARAMS, "params.name: required tool name")
        if len(name) > MAX_TOOL_NAME:
            return _error(
                rid, INVALID_PARAMS, f"params.name: longer than {MAX_TOOL_NAME} characters"
            )
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return _error(rid, INVALID_PARAMS, "params.arguments must be an object")
        try:
            result = await gateway.call_tool(grant, name, args)
        except CallRefused as exc:
            return _error(rid, exc.code, str(exc))
    else:
        return _error(rid, METHOD_NOT_FOUND, f"method not found: {method[:100]}")
    if modern:
        result.setdefault("resultType", "complete")
    return _reply({"jsonrpc": "2.0", "id": rid, "result": result})


def mcp_routes() -> list[web.RouteDef]:
    return [
        web.post("/mcp/{token}", mcp_post),
        web.get("/mcp/{token}", mcp_get, allow_head=False),
        web.delete("/mcp/{token}", mcp_delete),
    ]


def _decode_header(value: str | None) -> str | None:
    """The SDK's decoding of an encoded header value (imported on first use: the SDK is
    heavy to import, see shadow.gateway.upstream)."""
    from mcp.shared.inbound import decode_header_value

    decoded: str | None = decode_header_value(value)
    return decoded
