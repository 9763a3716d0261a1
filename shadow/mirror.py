"""Mirror rules: the host's own HTTP requests turned into work events and outcomes by
configuration alone (the policy's ``mirror:`` list; keys are a contract, docs/policy.md).

Pure: parsing, matching and record building over immutable values, no I/O. The mirror
target and the mirroring proxy (:mod:`shadow.sources.mirror`, :mod:`shadow.proxy`) read the
request, then call :func:`match` and :func:`build`.

A rule::

    - match: {method: POST, path: "/refunds"}       # {name} captures one path segment
      kind: event                                    # event | outcome
      task_type: refund_request                      # events only
      event_id: body.refund_id                       # a source (below)
      payload: body                                  # a source, or a map  name: source
      segment: header.X-Region                       # optional
      occurred_at: body.created_at                   # optional
    - match: {method: PUT, path: "/refunds/{id}/decision"}
      kind: outcome
      event_id: path.id
      decision: body.decision                        # a source, or a map  name: source
      actions: body.actions                          # optional
      decided_by: header.X-User                      # optional
      decided_at: body.decided_at                    # optional

A source is ``body`` (the whole parsed body), ``body.PATH`` (dotted; ``[i]`` indexes a
list), ``path.NAME`` (a ``{NAME}`` of the rule's path), ``header.NAME`` (case-insensitive),
``query.NAME``, or, through the proxy only, ``response.body[.PATH]``,
``response.header.NAME`` and ``response.status``. Bodies are JSON or form-encoded
(``application/x-www-form-urlencoded``). An integer event id is taken as its decimal text.

Rules are tried in order; the first whose method and path match wins. A rule that reads the
response is skipped by the mirror target, which never sees one. ``name`` (optional, the
``rule`` label of ``shadow_mirror_requests_total``) defaults to ``METHOD PATH``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from shadow.errors import Reason, ValidationError
from shadow.ingest import BodyError, decode_body, strict_json
from shadow.model import Outcome, WorkEvent

__all__ = [
    "FORM_TYPES",
    "Captured",
    "MirrorError",
    "MirrorRule",
    "Source",
    "build",
    "letter_raw",
    "match",
    "parse_body",
    "parse_rules",
]

FORM_TYPES = ("application/x-www-form-urlencoded",)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_KINDS = ("event", "outcome")
_SOURCE = re.compile(
    r"^(?:(?P<resp>response)\.)?(?P<kind>body|path|header|query|status)(?:\.(?P<rest>.+))?$"
)
_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INDEX = re.compile(r"^(?P<key>[^\[\]]*)((?:\[\d+\])*)$")
_EVENT_KEYS = {"match", "name", "kind", "task_type", "event_id", "payload", "segment"}
_EVENT_KEYS |= {"occurred_at"}
_OUTCOME_KEYS = {"match", "name", "kind", "event_id", "decision", "actions", "decided_by"}
_OUTCOME_KEYS |= {"decided_at"}


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value comes from: ``kind`` body | path | header | query | status, ``path``
    the rest (``""`` for the whole body), ``response`` for the proxied answer."""

    kind: str
    path: str = ""
    response: bool = False

    @property
    def text(self) -> str:
        head = ("response." if self.response else "") + self.kind
        return f"{head}.{self.path}" if self.path else head


Spec = Source | Mapping[str, Source]


@dataclass(frozen=True, slots=True)
class MirrorRule:
    """One ``mirror:`` entry. ``fields`` maps a record field (event_id, payload, decision...)
    to its :class:`Source` or a map of them."""

    name: str
    method: str
    path: str
    kind: str
    task_type: str | None
    fields: Mapping[str, Spec]
    pattern: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(""))

    @property
    def needs_response(self) -> bool:
        return any(s.response for s in _sources(self.fields))

    @property
    def request_headers(self) -> tuple[str, ...]:
        """The request headers the rule reads, lower-cased and sorted: a signature covers
        them (:func:`shadow.ingest_auth.string_to_sign`) besides method, path, query and
        body, which every signature covers."""
        sources = _sources(self.fields)
        return tuple(sorted({s.path for s in sources if s.kind == "header" and not s.response}))


def _sources(fields: Mapping[str, Spec]) -> list[Source]:
    out: list[Source] = []
    for spec in fields.values():
        out.extend([spec] if isinstance(spec, Source) else spec.values())
    return out


@dataclass(frozen=True, slots=True)
class Captured:
    """A request (and, through the proxy, its response) as the mirror saw it. Header names
    are lower-cased; ``body`` is as sent (maybe compressed)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    status: int | None = None  # the response's, when there is one
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response_body: bytes = b""

    @property
    def line(self) -> str:
        """``METHOD /path`` for logs and dead letters (clipped)."""
        return f"{self.method} {self.path[:300]}"


class MirrorError(Exception):
    """A matched request that makes no valid record: ``code`` for counting, ``path`` the
    field, ``value`` the parsed body (or what was extracted) for the dead letter."""

    def __init__(self, code: Reason, message: str, *, path: str = "", value: Any = None) -> None:
        self.code = code
        self.message = message
        self.path = path
        self.value = value
        super().__init__(message)


# -- parsing ----------------------------------------------------------------------------------

Fail = Callable[[str, str], None]


def parse_rules(
    raw: object, fail: Fail, *, task_types: set[str], any_task_type: bool
) -> tuple[MirrorRule, ...]:
    """The ``mirror:`` list, every problem reported through ``fail(path, message)``.
    ``task_types`` are those configured; ``any_task_type`` when unknown ones are taken."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        fail("mirror", "expected a list of rules, each with match and kind")
        return ()
    rules: list[MirrorRule] = []
    names: set[str] = set()
    for i, body in enumerate(raw):
        rule = _rule(body, f"mirror[{i}]", fail, task_types, any_task_type)
        if rule is None:
            continue
        if rule.name in names:
            fail(f"mirror[{i}].name", f"{rule.name!r} names another rule too; give each its own")
            continue
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _rule(
    body: object, where: str, fail: Fail, task_types: set[str], any_task_type: bool
) -> MirrorRule | None:
    if not isinstance(body, dict):
        fail(where, "expected a mapping with match, kind and the record's fields")
        return None
    kind = body.get("kind")
    if kind not in _KINDS:
        fail(f"{where}.kind", f"required; expected event or outcome, got {kind!r}")
        return None
    allowed = _EVENT_KEYS if kind == "event" else _OUTCOME_KEYS
    ok = True
    for key in body:
        if key not in allowed:
            fail(f"{where}.{key}", f"unknown key for a {kind} rule; allowed: {sorted(allowed)}")
            ok = False
    m = body.get("match")
    if not isinstance(m, dict) or set(m) - {"method", "path"} or "path" not in m:
        fail(f"{where}.match", 'expected {method: POST, path: "/refunds/{id}"}')
        return None
    method = str(m.get("method", "POST")).upper()
    if method not in METHODS:
        fail(f"{where}.match.method", f"{method!r}; use one of {', '.join(METHODS)}")
        ok = False
    path = m["path"]
    if not isinstance(path, str) or not path.startswith("/"):
        fail(f"{where}.match.path", f"expected a path starting with /, got {path!r}")
        return None
    captures = _SEGMENT.findall(path)
    if len(set(captures)) != len(captures):
        # Not compiled: a regex group may not be named twice.
        fail(f"{where}.match.path", "a {name} appears twice; name each segment once")
        return None
    pattern = _compile(path)
    task_type = body.get("task_type")
    if kind == "event":
        if not isinstance(task_type, str) or not task_type:
            fail(f"{where}.task_type", "required for an event rule; name a configured task type")
            ok = False
        elif task_type not in task_types and not any_task_type:
            fail(f"{where}.task_type", f"{task_type!r} is not under task_types; add it there")
            ok = False
    required = ("event_id", "payload") if kind == "event" else ("event_id", "decision")
    fields: dict[str, Spec] = {}
    for key in sorted(allowed - {"match", "name", "kind", "task_type"}):
        if key not in body:
            if key in required:
                fail(f"{where}.{key}", "required; e.g. body.refund_id, path.id or header.X-Id")
                ok = False
            continue
        spec = _spec(body[key], f"{where}.{key}", fail, captures, mapped=key in _MAPPED)
        if spec is None:
            ok = False
        else:
            fields[key] = spec
    name = body.get("name", f"{method} {path}")
    if not isinstance(name, str) or not name or len(name) > 100:
        fail(f"{where}.name", "expected a short non-empty string (at most 100 characters)")
        ok = False
    if not ok:
        return None
    return MirrorRule(name, method, path, kind, task_type, fields, pattern)


_MAPPED = {"payload", "decision"}


def _spec(raw: object, where: str, fail: Fail, captures: list[str], *, mapped: bool) -> Spec | None:
    if mapped and isinstance(raw, dict):
        out: dict[str, Source] = {}
        for name, text in raw.items():
            src = _source(text, f"{where}.{name}", fail, captures)
            if src is None:
                return None
            out[str(name)] = src
        if not out:
            fail(where, "an empty map; name at least one field")
            return None
        return out
    return _source(raw, where, fail, captures)


def _source(raw: object, where: str, fail: Fail, captures: list[str]) -> Source | None:
    hint = "body.PATH, path.NAME, header.NAME, query.NAME or response.body.PATH"
    found = _SOURCE.match(raw) if isinstance(raw, str) else None
    if found is None:
        fail(where, f"{raw!r} is not a source; use {hint}")
        return None
    kind, rest, resp = found["kind"], found["rest"] or "", bool(found["resp"])
    if kind == "status":
        if not resp or rest:
            fail(where, "status is the response's: write response.status")
            return None
    elif kind == "path":
        if resp or rest not in captures:
            fail(where, f"{raw!r}: the rule's path has no {{{rest}}} segment")
            return None
    elif kind != "body" and not rest:
        fail(where, f"{raw!r}: name the {kind} field, e.g. {kind}.X-Id")
        return None
    elif kind == "query" and resp:
        fail(where, "a response has no query string")
        return None
    if kind == "body" and rest and not all(_INDEX.match(p) for p in rest.split(".")):
        fail(where, f"{raw!r}: write a dotted path, with [i] to index a list")
        return None
    return Source(kind, rest.lower() if kind == "header" else rest, resp)


def _compile(path: str) -> re.Pattern[str]:
    parts = _SEGMENT.split(path)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}/?$")


# -- matching and building --------------------------------------------------------------------


def match(
    rules: tuple[MirrorRule, ...], method: str, path: str, *, with_response: bool
) -> tuple[MirrorRule, dict[str, str]] | None:
    """The first rule for ``method`` and ``path`` and its captured segments; rules that read
    the response are skipped unless ``with_response`` (the proxy)."""
    for rule in rules:
        if rule.method != method or (rule.needs_response and not with_response):
            continue
        found = rule.pattern.match(path)
        if found is not None:
            return rule, found.groupdict()
    return None


_MISSING = object()


def build(
    rule: MirrorRule, captures: Mapping[str, str], seen: Captured, *, max_bytes: int
) -> WorkEvent | Outcome:
    """The record ``rule`` makes of ``seen``; raises :class:`MirrorError`."""
    bodies: dict[bool, Any] = {}

    def body(response: bool) -> Any:
        if response not in bodies:
            if response:
                raw, headers = seen.response_body, seen.response_headers
            else:
                raw, headers = seen.body, seen.headers
            bodies[response] = parse_body(raw, headers, max_bytes=max_bytes)
        return bodies[response]

    def value(src: Source) -> Any:
        if src.kind == "body":
            return _walk(body(src.response), src.path)
        if src.kind == "path":
            return captures.get(src.path, _MISSING)
        if src.kind == "query":
            return seen.query.get(src.path, _MISSING)
        if src.kind == "status":
            return seen.status if seen.status is not None else _MISSING
        headers = seen.response_headers if src.response else seen.headers
        return headers.get(src.path, _MISSING)

    record: dict[str, Any] = {"kind": rule.kind}
    if rule.task_type is not None:
        record["task_type"] = rule.task_type
    for key, spec in rule.fields.items():
        if isinstance(spec, Source):
            got = value(spec)
            if got is _MISSING:
                if key in ("event_id", "payload", "decision"):
                    raise MirrorError(
                        Reason.INVALID,
                        f"{key}: nothing at {spec.text}",
                        path=key,
                        value=_partial(record, body),
                    )
                continue
        else:
            got = {name: v for name, src in spec.items() if (v := value(src)) is not _MISSING}
        record[key] = got
    event_id = record.get("event_id")
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        record["event_id"] = str(event_id)
    try:
        if rule.kind == "event":
            return WorkEvent.from_json(record)
        return Outcome.from_json(record)
    except ValidationError as exc:
        first = exc.errors[0]
        raise MirrorError(first.code, str(exc), path=first.path, value=record) from None


def _partial(record: dict[str, Any], body: Callable[[bool], Any]) -> dict[str, Any]:
    """What a dead letter keeps of a record that could not be built: the fields so far and
    the request's parsed body as its payload (redacted by the task type's paths)."""
    if "payload" in record:
        return record
    try:
        return {**record, "payload": body(False)}
    except MirrorError:
        return record


def _walk(value: Any, path: str) -> Any:
    if not path:
        return value
    for part in path.split("."):
        found = _INDEX.match(part)
        assert found is not None  # checked when the rule was parsed
        key, indexes = found["key"], found.group(2)
        if key:
            if not isinstance(value, dict) or key not in value:
                return _MISSING
            value = value[key]
        for index in re.findall(r"\d+", indexes):
            if not isinstance(value, list) or int(index) >= len(value):
                return _MISSING
            value = value[int(index)]
    return value


def parse_body(raw: bytes, headers: Mapping[str, str], *, max_bytes: int) -> Any:
    """A request or response body as JSON (strict) or form fields (a name given twice keeps
    every value, as a list); ``None`` for an empty body. Raises :class:`MirrorError`."""
    try:
        data = decode_body(raw, headers.get("content-encoding"), max_bytes=max_bytes)
    except BodyError as exc:
        raise MirrorError(exc.code, exc.message) from None
    if not data:
        return None
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MirrorError(Reason.ENCODING, f"body is not UTF-8 at byte {exc.start}") from None
    if media in FORM_TYPES:
        form: dict[str, Any] = {}
        for name, item in parse_qsl(text, keep_blank_values=True, max_num_fields=10_000):
            held = form.get(name)
            if held is None:
                form[name] = item
            elif isinstance(held, list):
                held.append(item)
            else:
                form[name] = [held, item]
        return form
    if media == "application/json" or media.endswith("+json"):
        try:
            return strict_json(text)
        except BodyError as exc:
            raise MirrorError(exc.code, exc.message) from None
    raise MirrorError(
        Reason.UNSUPPORTED_MEDIA_TYPE,
        f"Content-Type {media[:100]!r} is not read by mirror rules; send JSON or form fields",
    )


def letter_raw(value: Any) -> str | None:
    """``value`` (a partial record or a parsed body) as dead-letter text, or ``None``."""
    if value is None:
        return None
    record = value if isinstance(value, dict) and "payload" in value else {"payload": value}
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        return None
