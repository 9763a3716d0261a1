"""How :func:`~shadow.gateway.results.synthesise` builds a value from a JSON Schema: the
machinery behind it (the walk over the schema's nodes, ``$ref``/``allOf`` merging, numbers
moved into bounds, strings from ``format`` and ``pattern``) and the limits it keeps to.

The rules are documented on :func:`~shadow.gateway.results.synthesise`, which owns the public
contract and the final validation: :class:`Synth` only proposes a value, checking candidates
against the validator it is given; it never raises
:class:`~shadow.gateway.results.ShadowResultError` (an exhausted budget is :class:`Exhausted`).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

__all__ = [
    "BUDGET",
    "FORMATS",
    "MAX_DEPTH",
    "MAX_STRING",
    "Exhausted",
    "JSONValue",
    "Schema",
    "Synth",
]

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
Schema: TypeAlias = "Mapping[str, Any] | bool"
"""A JSON Schema: an object (plain dicts and lists, as parsed from JSON) or a boolean."""

MAX_DEPTH: Final = 32
"""How deep synthesis nests values; deeper (a recursion through required members) gets
``null`` and, unless the schema allows it, a :class:`~shadow.gateway.results.ShadowResultError`.
Kept well inside the interpreter's recursion limit, which jsonschema's validation also needs."""

BUDGET: Final = 5_000
"""How many schema nodes one synthesis may visit before it gives up (a realistic tool's schema
needs tens; a hostile one must not hold the event loop)."""

MAX_STRING: Final = 10_000
"""The longest string synthesis builds (``minLength``, repeats in ``pattern``)."""

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
"""The neutral string synthesis gives each ``format`` (reserved, documentation-only names and
addresses, so a shadow value never points anywhere real)."""

_STRINGS: Final = ("", "shadow", "0", *dict.fromkeys(FORMATS.values()))
_CHARS: Final = "a0Ax_- .:/@"  # what a regex character class is tried with, in order


class Exhausted(Exception):
    """The node budget ran out."""


class Synth:
    """One synthesis: the root schema (for ``$ref``), its validator and the node budget."""

    def __init__(self, root: Schema, validator: Any) -> None:
        self.root = root
        self.validator = validator
        self.left = BUDGET

    def ok(self, value: JSONValue, schema: Any) -> bool:
        """Whether ``value`` is valid against ``schema``, a node of the root document."""
        try:
            return bool(self.validator.evolve(schema=schema).is_valid(value))
        except Exception:  # as in results._problem, which the final check reports
            return False

    def value(self, schema: Any, depth: int) -> JSONValue:
        """A value for ``schema``, a node of the root (the root is checked against its
        metaschema, but old drafts allow shapes newer ones do not: ``Any``, checked here)."""
        self.left -= 1
        if self.left < 0:
            raise Exhausted
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
