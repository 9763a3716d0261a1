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
``-32602``: nothing runs. So is text :func:`shadow.checks.text_problem` refuses (a lone
surrogate or NUL anywhere, a control character in the tool name), named by its path
(``params.arguments.note: string holds a lone UTF-16 surrogate \\ud800 at index 3; ...``);
in the envelope (``id``, ``method``) or a header read as an id (``Mcp-Session-Id``...) it
is ``-32600`` (400).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shadow import fastjson
from shadow.checks import json_problem, text_problem
from shadow.gateway.capability import Grant
from shadow.gateway.core import CallRefused, Gateway
from shadow.keys import GATEWAY, SETTINGS
from shadow.tracing import McpRequest

__all__ = [
    "HANDSHAKE_VERSIONS",
    "MAX_MCP_BODY",
    "MAX_TOOL_NAME",
    "MODERN_VERSIONS",
    "REPEAT_META",
    "mcp_routes",
]

HANDSHAKE_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
MAX_MCP_BODY = 1_048_576
# Tool names SHOULD be 1-128 characters (MCP spec); room is left for a ``<server>.`` prefix.
MAX_TOOL_NAME = 256
# A client that means the same write twice gives each a distinct value here
# (``params._meta``); otherwise an identical call attaches to the first (docs/gateway.md).
REPEAT_META = "io.shadow/repeat"
MAX_REPEAT_CHARS = 200

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
    """End a handshake session. Closing one whose case has settled (its capability revoked
    or expired, its sessions already dropped) succeeds: the client's goal is met."""
    gateway = request.app[GATEWAY]
    token = request.match_info["token"]
    grant, _ = gateway.check(token)
    if grant is None:
        if gateway.capabilities.authentic(token):
            return web.Response(status=200)
        return _error(None, NOT_FOUND, "unknown tools URL", 404)
    sid = request.headers.get("Mcp-Session-Id", "")
    if not gateway.mcp_sessions.close(sid, grant) and sid:
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
    refused = _refused_text(request, msg)
    if refused is not None:
        return refused
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
        found = request.app[GATEWAY].mcp_sessions.get(sid, grant)
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
    traced = _traced(request, rid, meta, version)
    return await _dispatch(request.app[GATEWAY], grant, rid, method, params, version, traced)


def _traced(request: web.Request, rid: Any, meta: Any, version: str) -> McpRequest | None:
    """What a tools/call span records of the request (tracing on): its id, MCP session and
    protocol version, and the caller's ``traceparent`` (``params._meta``, as the MCP
    semantic conventions propagate it, else the HTTP header)."""
    if not request.app[GATEWAY].tracer.enabled:
        return None
    parent = meta.get("traceparent") if isinstance(meta, dict) else None
    if not isinstance(parent, str):
        parent = request.headers.get("traceparent")
    return McpRequest(
        str(rid),
        request.headers.get("Mcp-Session-Id"),
        version,
        parent,
    )


# The strings of a request that are identifiers (control characters refused, not only NUL
# and lone surrogates); arguments and the rest are free text. Headers read as ids likewise.
_IDENT_PATHS = frozenset({"jsonrpc", "id", "method", "params.name", "params.protocolVersion"})
_IDENT_HEADERS = ("Mcp-Session-Id", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name")


def _refused_text(request: web.Request, msg: Any) -> web.Response | None:
    """The answer to a request holding text :func:`shadow.checks.text_problem` refuses (a
    lone surrogate anywhere, NUL anywhere, a control character in an identifier), naming
    the field: ``-32602`` for ``params``, ``-32600`` (400) for the envelope and headers.
    Nothing runs and nothing is recorded."""
    for header in _IDENT_HEADERS:
        value = request.headers.get(header)
        found = None if value is None else text_problem(value, f"header {header}", ident=True)
        if found is not None:
            return _error(None, INVALID_REQUEST, f"{found[0]}: {found[1]}", 400)
    found = text_problem(msg, ident=_IDENT_PATHS)
    if found is None:
        return None
    path, message = found
    text = f"{path[:200]}: {message}" if path else message
    rid = msg.get("id") if isinstance(msg, dict) and path != "id" else None
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        rid = None
    if path.startswith("params"):
        return _error(rid, INVALID_PARAMS, text)
    return _error(rid, INVALID_REQUEST, text, 400)


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
    sid = request.app[GATEWAY].mcp_sessions.open(grant, version)
    if sid is None:
        return _error(rid, INVALID_REQUEST, "too many open sessions; retry later", 503)
    result = {"protocolVersion": version, "capabilities": _CAPABILITIES, "serverInfo": _SERVER_INFO}
    return _reply({"jsonrpc": "2.0", "id": rid, "result": result}, headers={"Mcp-Session-Id": sid})


async def _dispatch(
    gateway: Gateway,
    grant: Grant,
    rid: Any,
    method: str,
    params: dict[str, Any],
    version: str,
    traced: McpRequest | None = None,
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
        meta = params.get("_meta")
        repeat = meta.get(REPEAT_META) if isinstance(meta, dict) else None
        if repeat is not None:
            if isinstance(repeat, bool) or not isinstance(repeat, str | int):
                return _error(rid, INVALID_PARAMS, f"params._meta.{REPEAT_META}: string or integer")
            repeat = str(repeat)
            if len(repeat) > MAX_REPEAT_CHARS:
                return _error(
                    rid,
                    INVALID_PARAMS,
                    f"params._meta.{REPEAT_META}: longer than {MAX_REPEAT_CHARS} characters",
                )
        try:
            result = await gateway.call_tool(grant, name, args, repeat=repeat, request=traced)
        except CallRefused as exc:
            return _error(rid, exc.code, str(exc))
    else:
        return _error(rid, METHOD_NOT_FOUND, f"method not found: {method[:100]}")
    if modern:
        result.setdefault("resultType", "complete")
    return _reply({"jsonrpc": "2.0", "id": rid, "result": result})


# A tools URL also answers with a trailing slash, and with ``/mcp`` appended (clients such as
# MCP Inspector rewrite a Streamable HTTP URL to end in ``/mcp``).
TOOLS_PATHS = ("/mcp/{token}", "/mcp/{token}/", "/mcp/{token}/mcp")


def mcp_routes() -> list[web.RouteDef]:
    out: list[web.RouteDef] = []
    for path in TOOLS_PATHS:
        out += [
            web.post(path, mcp_post),
            web.get(path, mcp_get, allow_head=False),
            web.delete(path, mcp_delete),
        ]
    return out


def _decode_header(value: str | None) -> str | None:
    """The SDK's decoding of an encoded header value (imported on first use: the SDK is
    heavy to import, see shadow.gateway.upstream)."""
    from mcp.shared.inbound import decode_header_value

    decoded: str | None = decode_header_value(value)
    return decoded
