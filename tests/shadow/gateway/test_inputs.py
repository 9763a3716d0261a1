"""The gateway's inputs: the ``tools`` policy keys (every mistake refused with its key path)
and hostile JSON-RPC bodies on ``/mcp/{capability}`` (each answered with a clear JSON-RPC or
HTTP error, never a 500, never a forwarded write; the sidecar stays healthy after)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from shadow.errors import ConfigError, FieldError, PolicyError
from shadow.gateway import build_gateway
from shadow.gateway.mcp import MAX_MCP_BODY, MAX_TOOL_NAME
from shadow.policy import parse_policy
from shadow.tools_policy import TaskTools, parse_task_tools, parse_upstreams
from tests.shadow.conftest import HttpResult, Sidecar, SidecarFactory, clean_settings
from tests.shadow.gateway.conftest import Upstream, UpstreamFactory, gateway_policy
from tests.shadow.gateway.test_gateway import CALL_REFUND, MODERN, live_url, rpc, set_level

# -- the policy keys ----------------------------------------------------------------------------

UPSTREAM = 'tools: {backoffice: {url: "http://127.0.0.1:9/mcp"}}\n'


def policy_errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="policy.yaml")
    return str(exc.value).splitlines()


def task_tools(body: str) -> str:
    return UPSTREAM + f"task_types:\n  refund:\n    tools: {body}\n"


# (policy text, the key path of the error, words of the message)
BAD_TOOLS = [
    (task_tools("[get_order]"), "task_types.refund.tools", "expected a mapping"),
    (task_tools("{}"), "task_types.refund.tools.allow", "required"),
    (task_tools("{read: [get_*]}"), "task_types.refund.tools.allow", "required"),
    (task_tools("{allow: get_order}"), "task_types.refund.tools.allow", "expected a list"),
    (task_tools("{allow: [get_order, 7]}"), "task_types.refund.tools.allow[1]", "got 7"),
    (task_tools("{allow: ['']}"), "task_types.refund.tools.allow[0]", "tool name or glob"),
    (task_tools("{allow: ['  ']}"), "task_types.refund.tools.allow[0]", "tool name or glob"),
    (task_tools("{allow: [[get_order]]}"), "task_types.refund.tools.allow[0]", "tool name"),
    (task_tools("{allow: [a], read: a}"), "task_types.refund.tools.read", "expected a list"),
    (task_tools("{allow: [a], write: [null]}"), "task_types.refund.tools.write[0]", "None"),
    (task_tools("{allow: [a], write: {a: 1}}"), "task_types.refund.tools.write", "a list"),
    (
        task_tools("{allow: [a], deny: [b]}"),
        "task_types.refund.tools.deny",
        "unknown key; allowed: allow, read, redact, shadow_result, write",
    ),
    (
        task_tools("{allow: [a], shadow_result: [a]}"),
        "task_types.refund.tools.shadow_result",
        "expected a mapping",
    ),
    (
        task_tools("{allow: [a], shadow_result: {a: recorded}}"),
        "task_types.refund.tools.shadow_result.a",
        "expected a mapping (the structured content)",
    ),
    (
        task_tools("{allow: [get_*, issue_refund], shadow_result: {issue_refnud: {ok: 1}}}"),
        "task_types.refund.tools.shadow_result.issue_refnud",
        "not on this task type's allowlist",
    ),
    (
        "task_types:\n  refund:\n    tools: {allow: [get_order]}\n",
        "task_types.refund.tools",
        "no upstream MCP servers are defined",
    ),
    ("tools: [backoffice]\ntask_types: {t: {}}\n", "tools", "expected a mapping"),
    (
        'tools: {Back Office: {url: "http://h/mcp"}}\ntask_types: {t: {}}\n',
        "tools.Back Office",
        "lower-case letters, digits",
    ),
    (
        'tools: {"b\u00e4ck": {url: "http://h/mcp"}}\ntask_types: {t: {}}\n',
        "tools.b\u00e4ck",
        "lower-case letters, digits",
    ),
    ("tools: {7: {url: 'http://h/mcp'}}\ntask_types: {t: {}}\n", "tools.7", "upstream names"),
    ("tools: {b: http://h/mcp}\ntask_types: {t: {}}\n", "tools.b", "expected a mapping"),
    ("tools: {b: {}}\ntask_types: {t: {}}\n", "tools.b.url", "required"),
    ("tools: {b: {url: 'ftp://h/mcp'}}\ntask_types: {t: {}}\n", "tools.b.url", "http(s) URL"),
    ("tools: {b: {url: 42}}\ntask_types: {t: {}}\n", "tools.b.url", "got 42"),
    (
        "tools: {b: {url: 'http://h/mcp', token: x}}\ntask_types: {t: {}}\n",
        "tools.b.token",
        "unknown key; allowed: headers, trust_read_only_hint, url",
    ),
    (
        "tools: {b: {url: 'http://h/mcp', headers: [a]}}\ntask_types: {t: {}}\n",
        "tools.b.headers",
        "expected a mapping",
    ),
    (
        "tools: {b: {url: 'http://h/mcp', headers: {X-A: 1}}}\ntask_types: {t: {}}\n",
        "tools.b.headers.X-A",
        "expected a string, or env:VARIABLE",
    ),
    (
        "tools: {b: {url: 'http://h/mcp', headers: {X-A: 'env:'}}}\ntask_types: {t: {}}\n",
        "tools.b.headers.X-A",
        "env:VARIABLE",
    ),
]


@pytest.mark.parametrize(("text", "path", "words"), BAD_TOOLS)
def test_bad_tools_keys_are_refused_with_their_path(text: str, path: str, words: str) -> None:
    lines = policy_errors(text)
    found = [line for line in lines if line.startswith(f"policy.yaml: {path}: ")]
    assert found, lines
    assert any(words in line for line in found), lines


def test_every_tools_mistake_is_reported_at_once() -> None:
    problems: list[FieldError] = []

    def fail(path: str, message: str) -> None:
        problems.append(FieldError(path, message))

    parsed = parse_task_tools(
        {"allow": [1], "read": "x", "write": [""], "shadow_result": {"t": 1}, "x": 0}, "p", fail
    )
    assert parsed == TaskTools()
    assert [e.path for e in problems] == [
        "p.x",
        "p.allow[0]",
        "p.allow",
        "p.read",
        "p.write[0]",
        "p.shadow_result.t",
    ]
    problems.clear()
    upstreams = parse_upstreams({"ok": {"url": "https://h/mcp"}, "BAD": {}, "b": {"url": 1}}, fail)
    assert list(upstreams) == ["ok"]
    assert [e.path for e in problems] == ["tools.BAD", "tools.b.url"]
    assert parse_task_tools(None, "p", fail) is None


def test_what_the_tools_parser_accepts() -> None:
    """Shapes that are not mistakes: a tool in both lists is a write, a glob that does not
    compile as a character class matches itself literally, a prefixed name's shadow result."""
    policy = parse_policy(
        UPSTREAM + "task_types:\n  refund:\n    tools:\n"
        "      allow: [get_*, issue_refund, 'odd_[', backoffice.cancel_order]\n"
        "      read: [get_*, issue_refund]\n"
        "      write: [issue_refund]\n"
        "      shadow_result: {issue_refund: {s: 1}, backoffice.cancel_order: {s: 2}}\n"
    )
    tools = policy.task_types["refund"].tools
    assert tools is not None
    assert tools.listed_class("issue_refund") == "write"  # in both lists: a write
    assert tools.listed_class("get_order") == "read"
    assert tools.allowed("odd_[")
    assert not tools.allowed("odd_x")
    assert tools.configured_result("issue_refund") == {"s": 1}
    assert tools.configured_result("backoffice.cancel_order") == {"s": 2}
    assert tools.configured_result("get_order") is None


def test_an_env_header_naming_a_missing_variable_is_refused_at_start(tmp_path: Path) -> None:
    policy = parse_policy(
        "tools:\n"
        "  backoffice: {url: 'http://127.0.0.1:9/mcp', headers: {Authorization: 'env:BO_TOKEN',"
        " X-Plain: 'literal'}}\n"
        "task_types: {refund: {tools: {allow: [get_order]}}}\n"
    )
    settings = clean_settings(tmp_path, "s")
    with pytest.raises(ConfigError) as exc:
        build_gateway(policy, settings, {})
    assert str(exc.value) == ("tools.backoffice.headers: environment variable BO_TOKEN is not set")
    assert "literal" not in str(exc.value)
    clients = build_gateway(policy, settings, {"BO_TOKEN": "secret"})
    assert list(clients) == ["backoffice"]
    upstream = policy.upstreams["backoffice"]
    assert upstream.resolved_headers({"BO_TOKEN": "s"}) == {
        "Authorization": "s",
        "X-Plain": "literal",
    }


# -- hostile bodies -------------------------------------------------------------------------------


async def post_raw(
    sc: Sidecar, url: str, data: bytes | str, headers: dict[str, str] | None = None
) -> HttpResult:
    """``data`` POSTed as it is (a file-like body, so a large one is streamed)."""
    hdrs = {
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Accept": "application/json, text/event-stream",
    }
    hdrs.update(headers or {})
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    async with sc.session.post(url, data=io.BytesIO(raw), headers=hdrs) as resp:
        text = await resp.text()
        body = json.loads(text) if resp.content_type == "application/json" else text
        return HttpResult(resp.status, body, resp.content_type)


def deep_text(depth: int) -> str:
    """A tools/call whose arguments nest ``depth`` objects (too deep for ``json.dumps``)."""
    inner = '{"a":' * depth + "1" + "}" * depth
    return json.dumps(request("tools/call", {"name": "issue_refund", "arguments": {}})).replace(
        '"arguments": {}', f'"arguments": {{"x": {inner}}}'
    )


def request(rpc_method: str, params: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": rpc_method,
        "params": {**(params or {}), "_meta": meta},
    }
    body.update(top)
    return {k: v for k, v in body.items() if v is not ...}


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"a": value}
    return value


def rpc_error(res: HttpResult, code: int, status: int | None = None) -> str:
    """The JSON-RPC error message of ``res``, after checking its code (and HTTP status)."""
    assert res.status != 500, res
    if status is not None:
        assert res.status == status, res
    assert res.content_type == "application/json", res
    assert res.body["jsonrpc"] == "2.0", res.body
    assert res.body["error"]["code"] == code, res.body
    return str(res.body["error"]["message"])


async def still_healthy(sc: Sidecar, url: str, up: Upstream) -> None:
    """The sidecar answers health checks and still forwards exactly one real live write (a
    new one each time: its own repeat key, or it would attach to the previous one)."""
    assert (await sc.get("/healthz")).status == 200
    before = len(up.writes())
    params = {**CALL_REFUND, "_meta": {"io.shadow/repeat": f"healthy-{before}"}}
    res = await rpc(sc, url, "tools/call", params)
    assert res.body["result"]["structuredContent"]["refunded"] == 1.0, res.body
    assert len(up.writes()) == before + 1


@pytest.fixture
async def live(sidecar: SidecarFactory, upstream: UpstreamFactory) -> tuple[Sidecar, str, Upstream]:
    """A sidecar at L4 (a well-formed write *would* be forwarded), its live tools URL and
    the upstream."""
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    return sc, await live_url(sc, "e-1"), up


async def test_bodies_that_are_not_one_json_rpc_request(
    live: tuple[Sidecar, str, Upstream],
) -> None:
    sc, url, up = live
    for data in (b"", b"{", b"{not json}", b'{"jsonrpc": "2.0", "id": 1,', b"\xff\xfe{}", b"nul"):
        assert "Parse error" in rpc_error(await post_raw(sc, url, data), -32700, 400), data
    deep_text = "[" * 200_000 + "]" * 200_000  # past any parser's nesting: not parsed
    rpc_error(await post_raw(sc, url, deep_text), -32700, 400)
    for value in ("a string", 42, None, True, {"id": 1, "method": "tools/call"}):
        res = await post_raw(sc, url, json.dumps(value))
        assert "one JSON-RPC 2.0 request" in rpc_error(res, -32600, 400), value
    for version in ("1.0", 2.0, None):
        res = await post_raw(
            sc, url, json.dumps(request("tools/call", CALL_REFUND, jsonrpc=version))
        )
        rpc_error(res, -32600, 400)
    # Missing method, or not a string.
    for method in (..., None, 7, ["tools/call"]):
        body = request("tools/call", CALL_REFUND, method=method)
        assert "method" in rpc_error(await post_raw(sc, url, json.dumps(body)), -32600, 400)
    # An id that is not a string or an integer.
    for rid in (None, 1.5, True, {"x": 1}, [1]):
        body = request("tools/call", CALL_REFUND, id=rid)
        assert "id must be" in rpc_error(await post_raw(sc, url, json.dumps(body)), -32600, 400)
    # No id: a notification, acknowledged and run never (not even a tools/call).
    res = await post_raw(sc, url, json.dumps(request("tools/call", CALL_REFUND, id=...)))
    assert (res.status, res.body) == (202, "")
    assert up.writes() == []
    await still_healthy(sc, url, up)


async def test_batches_are_refused_whole_at_any_size(live: tuple[Sidecar, str, Upstream]) -> None:
    sc, url, up = live
    call = request("tools/call", CALL_REFUND)
    for n in (0, 1, 2, 3000):
        batch = [{**call, "id": i} for i in range(n)]
        text = json.dumps(batch)
        assert len(text) < MAX_MCP_BODY
        assert "batches are not accepted" in rpc_error(await post_raw(sc, url, text), -32600, 400)
    huge = json.dumps([{**call, "id": i} for i in range(MAX_MCP_BODY // 100)])
    assert len(huge) > MAX_MCP_BODY
    rpc_error(await post_raw(sc, url, huge), -32600, 413)
    assert up.writes() == []
    await still_healthy(sc, url, up)


async def test_oversized_bodies(
    sidecar: SidecarFactory, upstream: UpstreamFactory, raw_http: Any
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    await set_level(sc, "L4")
    url = await live_url(sc, "e-1")
    padded = request("tools/call", {**CALL_REFUND, "pad": "x" * MAX_MCP_BODY})
    # Declared too large (Content-Length), and streamed without a length.
    assert "larger than" in rpc_error(await post_raw(sc, url, json.dumps(padded)), -32600, 413)

    async def chunks() -> Any:
        text = json.dumps(padded).encode()
        for i in range(0, len(text), 65_536):
            yield text[i : i + 65_536]

    path = url.removeprefix(sc.url)
    async with sc.session.post(
        sc.url + path,
        data=chunks(),
        headers={"Content-Type": "application/json", "MCP-Protocol-Version": MODERN},
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == -32600
    assert up.writes() == []
    await still_healthy(sc, url, up)
    # A sidecar configured with a smaller max_body_bytes holds the gateway to it too.
    small = await sidecar(policy=gateway_policy(up.url), max_body_bytes=4096)
    await set_level(small, "L4")
    small_url = await live_url(small, "e-2")
    args = {"order_id": "o-1", "amount": 1.0, "note": "n" * 8000}
    body = request("tools/call", {"name": "issue_refund", "arguments": args})
    res = await post_raw(small, small_url, json.dumps(body))
    assert "4096 bytes" in rpc_error(res, -32600, 413)
    assert len(up.writes()) == 1  # only still_healthy's
    await still_healthy(small, small_url, up)


async def test_content_type_and_encoding(live: tuple[Sidecar, str, Upstream]) -> None:
    sc, url, up = live
    body = json.dumps(request("tools/call", CALL_REFUND))
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        res = await post_raw(sc, url, body, {"Content-Type": ctype})
        assert "application/json" in rpc_error(res, -32600, 415), ctype
    res = await sc.request(
        "POST",
        url.removeprefix(sc.url),
        data=body,
        headers={"MCP-Protocol-Version": MODERN},
        skip_content_type=True,
    )
    rpc_error(res, -32600, 415)
    res = await post_raw(sc, url, body, {"Content-Encoding": "gzip"})
    assert "compressed" in rpc_error(res, -32600, 415)
    assert up.writes() == []
    res = await post_raw(sc, url, body, {"Content-Type": "application/json; charset=utf-8"})
    assert res.body["result"]["structuredContent"]["refunded"] == 1.0
    assert len(up.writes()) == 1
    await still_healthy(sc, url, up)


async def test_bad_params_and_arguments(live: tuple[Sidecar, str, Upstream]) -> None:
    sc, url, up = live
    for params in ([CALL_REFUND], "issue_refund", 3):
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        assert "params must be an object" in rpc_error(
            await post_raw(sc, url, json.dumps(body)), -32602
        )
    for args in ([1, 2], "order_id=o-1", 5, True):
        res = await rpc(sc, url, "tools/call", {"name": "issue_refund", "arguments": args})
        assert "arguments must be an object" in rpc_error(res, -32602, 200), args
    for name in (None, "", 7, ["issue_refund"], {"n": 1}):
        res = await rpc(sc, url, "tools/call", {"name": name, "arguments": {}})
        assert "params.name" in rpc_error(res, -32602, 200), name
    # Nesting that parses but no tool takes: refused before anything is forwarded.
    deep = {"name": "issue_refund", "arguments": {"order_id": "o-1", "amount": 1, "x": nested(40)}}
    res = await rpc(sc, url, "tools/call", deep)
    assert "nested deeper than" in rpc_error(res, -32602, 200)
    for depth in (900, 5000):  # parsed, then refused; past the parser's stack: not parsed
        res = await post_raw(sc, url, deep_text(depth))
        assert res.status in (200, 400), res
        assert res.body["error"]["code"] in (-32602, -32700), res.body
    res = await rpc(sc, url, "tools/list", {"cursor": nested(200)})
    assert "nested deeper than" in rpc_error(res, -32602, 200)
    # Numbers JSON cannot hold (the parser accepts the literals).
    text = json.dumps(request("tools/call", CALL_REFUND)).replace('"amount": 1.0', '"amount": NaN')
    assert "NaN" in text
    assert "finite" in rpc_error(await post_raw(sc, url, text), -32602, 200)
    assert up.writes() == []
    await still_healthy(sc, url, up)


async def test_unknown_methods_and_huge_names(live: tuple[Sidecar, str, Upstream]) -> None:
    sc, url, up = live
    for method in ("tools/delete", "resources/list", "", "TOOLS/CALL", "tools/call\u200b"):
        res = await rpc(sc, url, method, CALL_REFUND)
        assert "method not found" in rpc_error(res, -32601, 200), method
    res = await rpc(sc, url, "m" * 500_000, CALL_REFUND)
    assert len(rpc_error(res, -32601, 200)) < 200
    # A huge tool name: refused as a bad parameter, not echoed back or recorded whole.
    for size in (MAX_TOOL_NAME + 1, 500_000):
        res = await rpc(sc, url, "tools/call", {**CALL_REFUND, "name": "i" * size})
        message = rpc_error(res, -32602, 200)
        assert f"longer than {MAX_TOOL_NAME}" in message
        assert len(message) < 200
    res = await rpc(sc, url, "tools/call", {**CALL_REFUND, "name": "x" * MAX_TOOL_NAME})
    assert len(rpc_error(res, -32001, 200)) < MAX_TOOL_NAME + 100  # unknown, refused
    assert up.writes() == []
    await still_healthy(sc, url, up)
