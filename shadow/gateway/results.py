"""What a captured write answers in shadow: structured content its tool's ``outputSchema``
accepts.

MCP clients that validate structured output (the official SDKs, pydantic-ai, LangChain's
adapters, the OpenAI Agents SDK) fail a call whose ``structuredContent`` breaks the tool's
``outputSchema``. So a captured write answers (:func:`shadow_result`), in order: the policy's
``tools.shadow_result.<tool>`` object; else a value built from the tool's ``outputSchema``
(:func:`synthesise`); else :data:`~shadow.tools_policy.DEFAULT_SHADOW_RESULT`.

Validation (:func:`schema_problem`) is ``jsonschema``'s, set up as the MCP Python SDK's own
client sets it up: the draft the schema's ``$schema`` names (2020-12 when it names none, or
one ``jsonschema`` does not know), ``$ref`` resolved within the schema document only (nothing
fetched), ``format`` an annotation, not asserted. Synthesis is a best effort guided by the
schema; the value it returns has always passed that validation. Pure: no I/O, no clock.

Errors::

    ShadowError, ValueError
     └── ShadowResultError    no value the schema accepts could be built; names the path
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

# Untyped (no py.typed; the types-jsonschema stubs are not a dependency). `unused-ignore`
# keeps mypy quiet should the stubs be installed one day.
from jsonschema import exceptions as js_exceptions  # type: ignore[import-untyped, unused-ignore]
from jsonschema import validators as js_validators  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry
from referencing.exceptions import Unresolvable

from shadow.errors import ShadowError
from shadow.tools_policy import DEFAULT_SHADOW_RESULT

__all__ = [
    "SHADOW_META_KEY",
    "JSONValue",
    "Schema",
    "ShadowResultError",
    "call_result",
    "schema_problem",
    "shadow_result",
    "synthesise",
]

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
Schema: TypeAlias = "Mapping[str, Any] | bool"
"""A JSON Schema: an object (plain dicts and lists, as parsed from JSON) or a boolean."""

SHADOW_META_KEY: Final = "io.shadow/shadow_result"
"""The ``_meta`` key marking a result as the sidecar's, not the tool's. A reverse-DNS prefix
whose second label is neither ``modelcontextprotocol`` nor ``mcp``, so not reserved by MCP."""

MAX_DEPTH: Final = 32
"""How deep :func:`synthesise` nests values; deeper (a recursion through required members)
gets ``null`` and, unless the schema allows it, a :class:`ShadowResultError`. Kept well
inside the interpreter's recursion limit, which jsonschema's validation also needs."""

BUDGET: Final = 5_000
"""How many schema nodes one :func:`synthesise` may visit before it gives up (a realistic
tool's schema needs tens; a hostile one must not hold the event loop)."""

MAX_STRING: Final = 10_000
"""The longest string :func:`synthesise` builds (``minLength``, repeats in ``pattern``)."""

FORMATS: Final[Mapping[str, str]] = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "duration": "PT0S",
    "email": "shadow@example.invalid",
    "idn-email": "shadow@example.invalid",
    "hostname": "example.invalid",
    "idn-hostname": "example.invalid",
    "ipv4": "192.0.2.1",  # RFC 5737 documentation range
    "ipv6": "2001:db8::1",  # RFC 3849 documentation prefix
    "uri": "https://example.invalid/",
    "uri-reference": "https://example.invalid/",
    "iri": "https://example.invalid/",
    "iri-reference": "https://example.invalid/",
    "uri-template": "https://example.invalid/",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "json-pointer": "",
    "relative-json-pointer": "0",
}
"""The neutral string :func:`synthesise` gives each ``format`` (reserved, documentation-only
names and addresses, so a shadow value never points anywhere real)."""

_STRINGS: Final = ("", "shadow", "0", *dict.fromkeys(FORMATS.values()))
_CHARS: Final = "a0Ax_- .:/@"  # what a regex character class is tried with, in order
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MAX_LINE: Final = 300


class ShadowResultError(ShadowError, ValueError):
    """No value the tool's ``outputSchema`` accepts could be built, or a configured result is
    not JSON. The message names the key path (``(root)`` for the whole value)."""


def schema_problem(value: object, schema: Schema) -> str | None:
    """``None`` when ``value`` is valid against ``schema``, else one line naming the key path
    and the problem (``refund_id: required property missing``, ``items[2].sku: ...``). A
    schema that is itself invalid, or whose ``$ref`` does not resolve, is a problem too:
    this never raises."""
    validator = _compile(schema)
    if isinstance(validator, str):
        return validator
    return _problem(validator, value)


def synthesise(schema: Schema) -> JSONValue:
    """A value valid against ``schema``, as neutral as the schema allows.

    Preference at each node: ``const``, ``default``, the first of ``examples``, the first
    ``enum`` member the node accepts; else a value of the node's type (a non-null one first):
    an object of the ``required`` members plus those with a ``default`` or ``const`` (and more
    only up to ``minProperties``); ``minItems`` items; ``""`` (padded to ``minLength``, or a
    :data:`FORMATS` value, or one that matches ``pattern``); ``0`` moved into the bounds and
    onto ``multipleOf``; ``false``; ``null``. Local ``$ref`` is followed, ``allOf`` merged,
    the first ``anyOf``/``oneOf`` branch that validates taken. ``additionalProperties`` never
    adds members.

    Raises :class:`ShadowResultError` (naming the path) when the value built still fails
    validation: an unsatisfiable schema, or one beyond these rules."""
    validator = _compile(schema)
    if isinstance(validator, str):
        raise ShadowResultError(f"cannot build a value the schema accepts: {validator}")
    try:
        value = _Synth(schema, validator).value(schema, 0)
    except _Exhausted:
        raise ShadowResultError(
            "cannot build a value the schema accepts: (root): too large or too recursive"
        ) from None
    problem = _problem(validator, value)
    if problem is not None:
        raise ShadowResultError(f"cannot build a value the schema accepts: {problem}")
    return value


def shadow_result(
    tool_schema: Mapping[str, Any] | None, configured: Mapping[str, Any] | None
) -> dict[str, JSONValue]:
    """The ``structuredContent`` a captured write answers: a copy of ``configured`` (the
    policy's; the caller checks it with :func:`schema_problem` against ``tool_schema``)
    when given; else a value :func:`synthesise` builds from the tool's ``outputSchema``;
    else :data:`~shadow.tools_policy.DEFAULT_SHADOW_RESULT`.

    Raises :class:`ShadowResultError` when the schema gives no object (MCP's
    ``outputSchema`` is always of type object)."""
    if configured is not None:
        return copy.deepcopy(dict(configured))
    if tool_schema is None:
        return copy.deepcopy(DEFAULT_SHADOW_RESULT)
    value = synthesise(tool_schema)
    if not isinstance(value, dict):
        raise ShadowResultError(
            f"(root): the outputSchema gives {json.dumps(value)[:40]}, not an object; "
            "MCP's structuredContent is always an object"
        )
    return value


def call_result(structured: Mapping[str, Any], *, tool: str) -> dict[str, Any]:
    """The MCP ``CallToolResult`` of a captured write: ``structured`` as
    ``structuredContent`` and, for clients that read text only, as JSON text; marked in
    ``_meta`` (:data:`SHADOW_META_KEY`) as the sidecar's answer, not the tool's.

    Raises :class:`ShadowResultError` naming ``tool`` when ``structured`` is not JSON (a
    policy's YAML date, say, or a NaN)."""
    try:
        text = json.dumps(structured, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ShadowResultError(f"{tool}: the shadow result is not JSON: {exc}") from None
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": False,
        "_meta": {SHADOW_META_KEY: True},
    }


# --- validation ------------------------------------------------------------------------------


def _compile(schema: object) -> Any:
    """A jsonschema validator for ``schema``, or the problem (a ``str``) that prevents one.

    Memoised on the schema's canonical JSON: checking a schema against its metaschema costs
    ~60 ms for a pydantic model's, and a tool's schema is the same from one call to the next
    (the SDK's client caches its validators for the same reason). A pure function's cache:
    the answer for a schema never changes."""
    try:
        key = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):  # not plain JSON: compiled each time
        return _compile_now(schema)
    return _compiled(key)


@functools.lru_cache(maxsize=256)
def _compiled(key: str) -> Any:
    return _compile_now(json.loads(key))


def _compile_now(schema: object) -> Any:
    if not isinstance(schema, Mapping | bool):
        return "invalid schema: (root): not an object or a boolean"
    if isinstance(schema, Mapping) and not isinstance(schema.get("$schema", ""), str):
        return "invalid schema: $schema: not a string (the URI of a JSON Schema draft)"
    cls = js_validators.validator_for(schema, default=js_validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except js_exceptions.SchemaError as exc:
        return _line(f"invalid schema: {_describe(exc)}")
    except RecursionError:
        return "invalid schema: (root): nested too deeply"
    except Exception as exc:  # see _problem
        return _line(f"invalid schema: jsonschema cannot apply it: {exc!r}")
    # An empty registry, as the SDK's client uses: `$ref` never leaves the document.
    return cls(schema, registry=Registry())


def _problem(validator: Any, value: object) -> str | None:
    try:
        error = js_exceptions.best_match(validator.iter_errors(value))
    except Unresolvable as exc:
        return _line(f"invalid schema: $ref does not resolve within the schema: {exc}")
    except RecursionError:
        return "(root): the schema recurses without end"
    except Exception as exc:
        # The metaschemas of older drafts accept shapes jsonschema then trips on (a draft-04
        # `$ref: null`: AttributeError); this function's contract is to name, never raise.
        return _line(f"invalid schema: jsonschema cannot apply it: {exc!r}")
    return None if error is None else _describe(error)


def _describe(error: Any) -> str:
    """One line: the key path, then jsonschema's message."""
    path: list[str | int] = list(error.absolute_path)
    message = str(error.message)
    if error.validator == "required" and isinstance(error.instance, dict):
        # jsonschema reports a missing member at its parent; name the member instead.
        for name in error.validator_value:
            if name not in error.instance and message == f"{name!r} is a required property":
                path.append(name)
                message = "required property missing"
                break
    return _line(f"{_path(path)}: {message}")


def _path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(root)"


def _line(message: str) -> str:
    """``message`` on one line of at most :data:`_MAX_LINE` characters."""
    line = " ".join(message.split())
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 1] + "…"


# --- synthesis --------------------------------------------------------------------------------


class _Exhausted(Exception):
    """The node budget ran out."""


class _Synth:
    """One synthesis: the root schema (for ``$ref``), its validator and the node budget."""

    def __init__(self, root: Schema, validator: Any) -> None:
        self.root = root
        self.validator = validator
        self.left = BUDGET

    def ok(self, value: JSONValue, schema: Any) -> bool:
        """Whether ``value`` is valid against ``schema``, a node of the root document."""
        try:
            return bool(self.validator.evolve(schema=schema).is_valid(value))
        except Exception:  # as in _problem, which the final check reports
            return False

    def value(self, schema: Any, depth: int) -> JSONValue:
        """A value for ``schema``, a node of the root (the root is checked against its
        metaschema, but old drafts allow shapes newer ones do not: ``Any``, checked here)."""
        self.left -= 1
        if self.left < 0:
            raise _Exhausted
        if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
            return None
        flat = self.flatten(schema)
        if "const" in flat:
            const: JSONValue = flat["const"]
            return copy.deepcopy(const)
        for given in _given(flat):
            if self.ok(given, schema):
                return copy.deepcopy(given)
        for key in ("anyOf", "oneOf"):
            branches = flat.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in flat.items() if k != key}
                return self.first_valid(
                    (self.value(_merge(rest, branch), depth + 1) for branch in branches), schema
                )
        return self.first_valid(
            (v for kind in _types(flat) for v in self.of_type(kind, flat, depth)), schema
        )

    def first_valid(self, candidates: Iterator[JSONValue], schema: Any) -> JSONValue:
        """The first candidate ``schema`` accepts, else the first (validation will name why)."""
        first: JSONValue = None
        for i, candidate in enumerate(candidates):
            if self.ok(candidate, schema):
                return candidate
            if i == 0:
                first = candidate
        return first

    def of_type(self, kind: str, flat: Mapping[str, Any], depth: int) -> Iterator[JSONValue]:
        if kind == "object":
            yield self.object(flat, depth)
        elif kind == "array":
            yield self.array(flat, depth)
        elif kind in ("number", "integer"):
            yield from _numbers(flat, integer=kind == "integer")
        elif kind == "string":
            yield from _strings(flat)
        elif kind == "boolean":
            yield False
            yield True
        elif kind == "null":
            yield None

    def object(self, flat: Mapping[str, Any], depth: int) -> dict[str, JSONValue]:
        props = flat.get("properties")
        props = props if isinstance(props, Mapping) else {}
        out: dict[str, JSONValue] = {}
        required = flat.get("required")
        for name in required if isinstance(required, list) else ():
            if isinstance(name, str) and name not in out:
                out[name] = self.value(_member(flat, props, name), depth + 1)
        for name, sub in props.items():
            if (
                name not in out
                and isinstance(sub, Mapping)
                and ("default" in sub or "const" in sub)
            ):
                out[name] = self.value(sub, depth + 1)
        least = flat.get("minProperties")
        for name, sub in props.items():
            if not isinstance(least, int) or len(out) >= least:
                break
            if name not in out:
                out[name] = self.value(sub, depth + 1)
        return out

    def array(self, flat: Mapping[str, Any], depth: int) -> list[JSONValue]:
        least = flat.get("minItems")
        count = least if isinstance(least, int) and not isinstance(least, bool) else 0
        prefix, rest = flat.get("prefixItems"), flat.get("items", True)
        if isinstance(rest, list):  # drafts before 2020-12: `items` as a tuple
            prefix, rest = rest, flat.get("additionalItems", True)
        prefix = prefix if isinstance(prefix, list) else []
        return [self.value(prefix[i] if i < len(prefix) else rest, depth + 1) for i in range(count)]

    def flatten(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """``schema`` with its top-level ``$ref`` and ``allOf`` merged in (a guide for
        building a value; validation against ``schema`` itself stays the judge)."""
        out = dict(schema)
        for _ in range(MAX_DEPTH):
            if isinstance(out.get("$ref"), str):
                out = _merge(out, self.resolve(out.pop("$ref")))
            elif isinstance(out.get("allOf"), list):
                for branch in out.pop("allOf"):
                    out = _merge(out, branch)
            else:
                break
        return out

    def resolve(self, ref: str) -> Schema:
        """The node a local ``$ref`` (a JSON pointer into the root) names; ``True`` for any
        other (validation reports a reference that does not resolve)."""
        if not ref.startswith("#"):
            return True
        node: Any = self.root
        pointer = unquote(ref[1:])
        if pointer and not pointer.startswith("/"):
            return True  # an $anchor: not followed
        for raw in pointer.split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return True
        return node if isinstance(node, Mapping | bool) else True


def _given(flat: Mapping[str, Any]) -> Iterator[JSONValue]:
    """The values the schema names itself, in order of preference."""
    if "default" in flat:
        yield flat["default"]
    examples = flat.get("examples")
    if isinstance(examples, list) and examples:
        yield examples[0]
    members = flat.get("enum")
    if isinstance(members, list):
        yield from members


_HINTS: Final[Mapping[str, tuple[str, ...]]] = {
    "object": ("properties", "required", "patternProperties", "minProperties", "propertyNames"),
    "array": ("items", "prefixItems", "minItems", "maxItems", "contains", "uniqueItems"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}
_ALL_TYPES: Final = ("object", "array", "string", "number", "integer", "boolean", "null")


def _types(flat: Mapping[str, Any]) -> list[str]:
    """The types to try, in order: the declared ones, non-null first; without ``type``,
    those its keywords hint at, then ``null``, then the rest."""
    declared = flat.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        named = [t for t in declared if isinstance(t, str)]
        return sorted(named, key=lambda t: t == "null")
    hinted = [t for t, keys in _HINTS.items() if any(k in flat for k in keys)]
    return [*hinted, *(t for t in ("null", *_ALL_TYPES) if t not in hinted)]


def _member(flat: Mapping[str, Any], props: Mapping[str, Any], name: str) -> Schema:
    """The schema a member ``name`` of an object node must satisfy."""
    found: list[Any] = [props[name]] if name in props else []
    patterns = flat.get("patternProperties")
    if isinstance(patterns, Mapping):
        found += [sub for pattern, sub in patterns.items() if _search(pattern, name)]
    if not found:
        extra = flat.get("additionalProperties", True)
        return extra if isinstance(extra, Mapping | bool) else True
    return found[0] if len(found) == 1 else {"allOf": found}


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except (re.error, TypeError):
        return False


_LOWER: Final = ("minimum", "minLength", "minItems", "minProperties", "minContains")
_UPPER: Final = ("maximum", "maxLength", "maxItems", "maxProperties", "maxContains")
_SUBSCHEMA: Final = (
    "items",
    "additionalItems",
    "additionalProperties",
    "contains",
    "not",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)


def _merge(a: Mapping[str, Any], b: Any) -> dict[str, Any]:
    """A schema close to ``allOf: [a, b]`` with no ``allOf`` at its top (``$ref`` kept)."""
    out = dict(a)
    if b is False:
        b = {"not": {}}
    if not isinstance(b, Mapping):
        return out
    for key, theirs in b.items():
        if key not in out or out[key] == theirs:
            out[key] = theirs
            continue
        ours = out[key]
        if type(ours) is not type(theirs):
            continue  # shapes these rules do not know (old drafts): the first stays
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(
            ours, Mapping
        ):
            out[key] = {
                k: {"allOf": [ours[k], theirs[k]]} if k in ours and k in theirs else ours.get(k, v)
                for k, v in {**ours, **theirs}.items()
            }
        elif key == "required" and isinstance(ours, list):
            out[key] = list(dict.fromkeys([*ours, *theirs]))
        elif key == "type":
            out[key] = _meet(ours, theirs)
        elif key == "enum" and isinstance(ours, list):
            out[key] = [x for x in ours if x in theirs]
        elif key in _LOWER + _UPPER and _is_number(ours) and _is_number(theirs):
            out[key] = max(ours, theirs) if key in _LOWER else min(ours, theirs)
        elif key in _SUBSCHEMA:
            out[key] = {"allOf": [ours, theirs]}
        elif key in ("anyOf", "oneOf") and isinstance(ours, list) and len(ours) * len(theirs) <= 64:
            out[key] = [{"allOf": [x, y]} for x in ours for y in theirs]
        elif key in ("$ref", "allOf"):
            out["allOf"] = [*out.get("allOf", ()), {key: theirs}]
        # Anything else (a second `const`, `pattern`, `format`...): the first stays, and
        # validation against the unmerged schema judges the value.
    return out


def _meet(a: object, b: object) -> list[str]:
    ours = [a] if isinstance(a, str) else list(a) if isinstance(a, list) else []
    theirs = [b] if isinstance(b, str) else list(b) if isinstance(b, list) else []
    out: list[str] = []
    for t in ours:
        if t in theirs:
            out.append(t)
        elif (t == "number" and "integer" in theirs) or (t == "integer" and "number" in theirs):
            out.append("integer")
    return list(dict.fromkeys(out))


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


# --- scalars ----------------------------------------------------------------------------------


def _numbers(flat: Mapping[str, Any], *, integer: bool) -> Iterator[int | float]:
    """Numbers near 0 inside the node's bounds and on its ``multipleOf``, nearest first.
    Several, because jsonschema tests a float ``multipleOf`` in floating point (0.3 is not a
    multiple of 0.1 there, 0.5 is)."""
    lo, lo_open = _bound(flat, "minimum", "exclusiveMinimum", lower=True)
    hi, hi_open = _bound(flat, "maximum", "exclusiveMaximum", lower=False)
    m = _fraction(flat.get("multipleOf"))
    step = m if m is not None and m > 0 else None
    if integer:
        step = Fraction(step.numerator) if step is not None else Fraction(1)
    v = Fraction(0)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        v = lo
    elif hi is not None and (v > hi or (hi_open and v == hi)):
        v = hi
    if step is None:
        if lo_open and v == lo:
            v = lo + 1 if hi is None or lo + 1 < hi else (lo + hi) / 2
        elif hi_open and v == hi:
            v = hi - 1 if lo is None or hi - 1 > lo else (lo + hi) / 2
        yield _plain(v)
        return
    up = math.ceil(v / step) * step
    if lo_open and up == lo:
        up += step
    down = math.floor(v / step) * step
    if hi_open and down == hi:
        down -= step
    for i in range(8):
        yield _plain(up + i * step)
        yield _plain(down - i * step)


def _bound(
    flat: Mapping[str, Any], inclusive: str, exclusive: str, *, lower: bool
) -> tuple[Fraction | None, bool]:
    """The effective bound and whether it is open."""
    closed = _fraction(flat.get(inclusive))
    raw = flat.get(exclusive)
    if isinstance(raw, bool):  # draft 4: a flag on the inclusive bound
        return closed, raw and closed is not None
    opened = _fraction(raw)
    if opened is None:
        return closed, False
    if closed is None or (opened >= closed if lower else opened <= closed):
        return opened, True
    return closed, False


def _fraction(x: object) -> Fraction | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    if isinstance(x, float):
        # repr, not the binary value: multipleOf 0.01 means one hundredth.
        return Fraction(repr(x)) if math.isfinite(x) else None
    return Fraction(x)


def _plain(v: Fraction) -> int | float:
    if v.denominator == 1:
        return int(v)
    try:
        return float(v)
    except OverflowError:  # beyond floats: an integer near it (validation judges)
        return int(v)


def _strings(flat: Mapping[str, Any]) -> Iterator[str]:
    """Strings for a string node: the ``format``'s neutral value (padded to ``minLength``),
    examples of ``pattern``, then a few common shapes."""
    least = flat.get("minLength")
    least = least if isinstance(least, int) and not isinstance(least, bool) else 0
    if least > MAX_STRING:
        yield ""  # validation names the minLength
        return
    fmt = flat.get("format")
    yield _pad(FORMATS.get(fmt, "") if isinstance(fmt, str) else "", least)
    pattern = flat.get("pattern")
    if isinstance(pattern, str):
        for reps in dict.fromkeys((0, 1, least)):
            example = _regex_example(pattern, reps)
            if example is not None:
                yield example
                yield _pad(example, least)
    yield from _STRINGS
    for ch in "a0A":
        yield ch * max(least, 1)


def _pad(text: str, least: int) -> str:
    """``text`` lengthened to ``least`` characters (inside an email's local part)."""
    short = least - len(text)
    if short <= 0:
        return text
    at = text.find("@")
    return text[:at] + "x" * short + text[at:] if at > 0 else text + "x" * short


def _regex_example(pattern: str, reps: int) -> str | None:
    """A string ``pattern`` matches (each open repeat taken ``reps`` times, within its
    bounds), or ``None``. It walks the stdlib's own parse of the pattern: ``re._parser`` is
    private, so any surprise there (a new Python, an exotic construct) just means no example.
    Python's ``re`` is also what jsonschema matches ``pattern`` with."""
    try:
        parser: Any = importlib.import_module("re._parser")
        text = _walk(parser.parse(pattern), reps, {})
        return text if re.search(pattern, text) else None
    except Exception:
        return None


def _walk(items: Any, reps: int, groups: dict[int, str]) -> str:
    out: list[str] = []
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name == "NOT_LITERAL":
            out.append(next(c for c in _CHARS if ord(c) != av))
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_pick(av))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = av
            count = max(low, min(high, reps))
            if count > MAX_STRING:
                raise ValueError("too long")
            out.append(_walk(sub, reps, groups) * count)
        elif name == "SUBPATTERN":
            group, _, _, sub = av
            text = _walk(sub, reps, groups)
            if group is not None:
                groups[group] = text
            out.append(text)
        elif name == "ATOMIC_GROUP":
            out.append(_walk(av, reps, groups))
        elif name == "BRANCH":
            out.append(_walk(av[1][0], reps, groups))
        elif name == "GROUPREF":
            out.append(groups[av])
        elif name not in ("AT", "ASSERT", "ASSERT_NOT"):
            raise ValueError(name)
        if sum(map(len, out)) > MAX_STRING:
            raise ValueError("too long")
    return "".join(out)


_CATEGORIES: Final[Mapping[str, str]] = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
}


def _pick(items: Any) -> str:
    """A character of a parsed character class: its first member when it is a literal or a
    range, else the first of :data:`_CHARS` in it."""
    negate = bool(items) and str(items[0][0]) == "NEGATE"
    members = items[1:] if negate else items
    own: list[str] = []
    if not negate and members:
        op, av = members[0]
        own = [chr(av)] if str(op) == "LITERAL" else [chr(av[0])] if str(op) == "RANGE" else []
    tried: list[str] = [*own, *_CHARS]
    for ch in tried:
        if _in_class(ch, members) != negate:
            return ch
    raise ValueError("no character found")


def _in_class(ch: str, members: Any) -> bool:
    for op, av in members:
        name = str(op)
        if name == "LITERAL":
            hit = ord(ch) == av
        elif name == "RANGE":
            hit = av[0] <= ord(ch) <= av[1]
        elif name == "CATEGORY":
            hit = re.fullmatch(_CATEGORIES[str(av)], ch) is not None
        else:
            raise ValueError(name)
        if hit:
            return True
    return False
