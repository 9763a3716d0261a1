"""The tool gateway's policy keys: upstream MCP servers and each task type's tool rules.

The keys are a contract (docs/gateway.md, docs/policy.md)::

    tools:                                  # upstream MCP servers
      backoffice:
        url: "http://127.0.0.1:9100/mcp"
        headers: {Authorization: "env:BACKOFFICE_TOKEN"}
        trust_read_only_hint: false         # true: its readOnlyHint: true tools are reads
    task_types:
      refund_request:
        tools:
          allow: [get_order, issue_refund]  # names or globs; nothing else is listed or callable
          read: [get_*]                     # reads; everything else is a write (fail closed)
          write: [issue_refund]
          shadow_result:                    # what a captured write answers in shadow
            issue_refund: {status: recorded}
          redact:                           # argument paths removed before anything is stored
            send_email: [to, body]

Pure values and matching rules, no I/O. Matching is deliberately asymmetric, so that a tool
name that differs from a rule only in case or Unicode form can never become *less*
restricted: ``allow`` and ``read`` match the exact name (``fnmatchcase``), while ``write``
also matches the name's NFKC case-folded form. A tool a rule lists as both read and write
is a write. A header value ``env:NAME`` is resolved by the gateway at start-up from the
environment it is given, so no secret is written in the policy file.
"""

from __future__ import annotations

import fnmatch
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shadow.model import JSONObject

__all__ = [
    "DEFAULT_SHADOW_RESULT",
    "TaskTools",
    "ToolClass",
    "Upstream",
    "deep_copy",
    "fold",
    "parse_task_tools",
    "parse_upstreams",
    "redact_args",
    "remove_paths",
]

ToolClass = Literal["read", "write"]

DEFAULT_SHADOW_RESULT: JSONObject = {"status": "recorded", "shadow": True}
"""The structured content a captured write answers in shadow, unless the policy says more."""

Fail = Callable[[str, str], None]

_UPSTREAM_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def fold(name: str) -> str:
    """``name`` in NFKC form, case-folded: the form the write rules also match."""
    return unicodedata.normalize("NFKC", name).casefold()


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream MCP server (Streamable HTTP). ``headers`` values may be ``env:NAME``."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # Whether this upstream's ``readOnlyHint: true`` makes a tool the policy does not list a
    # read. False (the default): such a tool is a write, whatever the upstream says.
    trust_read_only_hint: bool = False

    def resolved_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The headers with ``env:NAME`` values read from ``environ``; KeyError names a
        variable that is not set."""
        out: dict[str, str] = {}
        for key, value in self.headers.items():
            if value.startswith("env:"):
                var = value[4:]
                if var not in environ:
                    raise KeyError(var)
                out[key] = environ[var]
            else:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class TaskTools:
    """One task type's tool rules (see the module docstring)."""

    allow: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    shadow_result: Mapping[str, JSONObject] = field(default_factory=dict)
    # Per tool (exposed name), the argument paths (dotted) removed before a call's arguments
    # are stored anywhere (call rows, captured actions, approvals).
    redact: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def allowed(self, name: str) -> bool:
        """Whether ``name`` (exactly as exposed to the agent) is on the allowlist."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.allow)

    def listed_class(self, name: str) -> ToolClass | None:
        """The class the policy gives ``name``, or ``None`` when it lists it in neither."""
        folded = fold(name)
        for pattern in self.write:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(folded, fold(pattern)):
                return "write"
        if any(fnmatch.fnmatchcase(name, p) for p in self.read):
            return "read"
        return None

    def configured_result(self, name: str) -> JSONObject | None:
        """The policy's shadow result for ``name``, if it names one."""
        found = self.shadow_result.get(name)
        return dict(found) if found is not None else None

    def redacted_paths(self, name: str) -> tuple[str, ...]:
        return self.redact.get(name, ())


def deep_copy(value: Any) -> Any:
    """A copy of a JSON value (dicts and lists copied, scalars shared)."""
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def remove_paths(value: Any, paths: Sequence[Sequence[str]]) -> None:
    """Remove each path (a sequence of keys) from ``value`` in place. A path applies to every
    element of each list it crosses, at any depth. Iterative, so lists nested however deep
    in a value that was never validated cannot exhaust the stack."""
    for parts in paths:
        last = len(parts) - 1
        if last < 0:
            continue
        stack: list[tuple[Any, int]] = [(value, 0)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, list):
                stack.extend((item, depth) for item in node)
            elif isinstance(node, dict):
                if depth == last:
                    node.pop(parts[depth], None)
                elif parts[depth] in node:
                    stack.append((node[parts[depth]], depth + 1))


def redact_args(args: JSONObject, paths: Sequence[str]) -> JSONObject:
    """A copy of a tool call's ``args`` without the dotted ``paths`` (``args`` unchanged)."""
    if not paths:
        return args
    out: JSONObject = deep_copy(args)
    remove_paths(out, [p.split(".") for p in paths])
    return out


def _patterns(raw: object, path: str, fail: Fail) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        fail(path, "expected a list of tool names or globs, e.g. [get_order, get_*]")
        return ()
    out: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            fail(f"{path}[{i}]", f"expected a tool name or glob, got {item!r}")
        else:
            out.append(item)
    return tuple(out)


def _mapping(raw: object, path: str, allowed: set[str] | None, fail: Fail) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail(path, "expected a mapping")
        return {}
    if allowed is not None:
        for key in raw:
            if key not in allowed:
                fail(f"{path}.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    return raw


def parse_task_tools(raw: object, path: str, fail: Fail) -> TaskTools | None:
    """``task_types.<name>.tools``; ``None`` when absent."""
    if raw is None:
        return None
    m = _mapping(raw, path, {"allow", "read", "write", "shadow_result", "redact"}, fail)
    allow = _patterns(m.get("allow"), f"{path}.allow", fail)
    if not allow:
        fail(f"{path}.allow", "required; list the tools this task type may use")
    read = _patterns(m.get("read"), f"{path}.read", fail)
    write = _patterns(m.get("write"), f"{path}.write", fail)
    results: dict[str, JSONObject] = {}
    rules = TaskTools(allow)
    for tool, body in _mapping(m.get("shadow_result"), f"{path}.shadow_result", None, fail).items():
        name = str(tool)
        # A result for a tool the allowlist never admits could never be answered: a typo.
        # (A ``<server>.`` prefixed name is admitted when its upstream's own name is.)
        if allow and not (rules.allowed(name) or rules.allowed(name.partition(".")[2])):
            fail(
                f"{path}.shadow_result.{tool}",
                "not on this task type's allowlist (allow); fix the name or remove it",
            )
        elif not isinstance(body, dict):
            fail(f"{path}.shadow_result.{tool}", "expected a mapping (the structured content)")
        else:
            results[name] = body
    redact: dict[str, tuple[str, ...]] = {}
    for tool, paths in _mapping(m.get("redact"), f"{path}.redact", None, fail).items():
        name = str(tool)
        where = f"{path}.redact.{tool}"
        if allow and not (rules.allowed(name) or rules.allowed(name.partition(".")[2])):
            fail(where, "not on this task type's allowlist (allow); fix the name or remove it")
            continue
        if not isinstance(paths, list) or not paths:
            fail(where, "expected a non-empty list of argument paths, e.g. [to, customer.email]")
            continue
        good = [p for p in paths if isinstance(p, str) and p and "" not in p.split(".")]
        if len(good) != len(paths):
            fail(where, "each path is a dotted argument name, e.g. customer.email")
            continue
        redact[name] = tuple(good)
    return TaskTools(allow, read, write, results, redact)


def parse_upstreams(raw: object, fail: Fail) -> dict[str, Upstream]:
    """The top-level ``tools`` mapping of upstream name to ``{url, headers}``."""
    out: dict[str, Upstream] = {}
    for name, body in _mapping(raw, "tools", None, fail).items():
        path = f"tools.{name}"
        if not isinstance(name, str) or not name or not set(name) <= _UPSTREAM_NAME_CHARS:
            fail(path, "upstream names use lower-case letters, digits, '_' and '-'")
            continue
        m = _mapping(body, path, {"url", "headers", "trust_read_only_hint"}, fail)
        url = m.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            fail(
                f"{path}.url",
                f"required; an http(s) URL of a Streamable HTTP endpoint, got {url!r}",
            )
            continue
        headers: dict[str, str] = {}
        for key, value in _mapping(m.get("headers"), f"{path}.headers", None, fail).items():
            if not isinstance(value, str) or (value.startswith("env:") and len(value) == 4):
                fail(f"{path}.headers.{key}", "expected a string, or env:VARIABLE")
            else:
                headers[str(key)] = value
        trust = m.get("trust_read_only_hint", False)
        if not isinstance(trust, bool):
            fail(f"{path}.trust_read_only_hint", f"expected true or false, got {trust!r}")
            trust = False
        out[name] = Upstream(name, url, headers, trust)
    return out
