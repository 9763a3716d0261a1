"""The shadow results of captured writes (shadow/gateway/results.py): values synthesised from
a tool's ``outputSchema`` validate (a property over generated schemas, each rule in a table,
and a real schema from the official SDK checked by the SDK client's own validation);
``schema_problem`` names the path; ``call_result`` is the MCP result the gateway answers."""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped, unused-ignore]
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from shadow.gateway.results import (
    FORMATS,
    SHADOW_META_KEY,
    ShadowResultError,
    call_result,
    schema_problem,
    shadow_result,
    synthesise,
)
from shadow.tools_policy import DEFAULT_SHADOW_RESULT

DRAFT4 = "http://json-schema.org/draft-04/schema#"
DRAFT7 = "http://json-schema.org/draft-07/schema#"


def assert_valid(value: Any, schema: dict[str, Any]) -> None:
    """Valid under the 2020-12 validator, formats asserted too (the stricter reading)."""
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(value)


# -- the property: whatever the schema, the value validates ---------------------------------------

NAMES = st.sampled_from(["id", "amount", "status", "items", "note", "refund_id", "x-y", "a b"])
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=5),
)
PATTERNS = [
    r"^rf_[0-9a-f]{8}$",
    r"^[A-Z]{3}$",
    r"^\d{4}-\d{2}-\d{2}$",
    r"^\S+$",
    r"[a-z]",
    r"^(ok|done)$",
]


@st.composite
def strings(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["plain", "format", "pattern"]))
    if kind == "format":
        fmt = draw(st.sampled_from(["date-time", "date", "email", "uri", "uuid", "ipv4", "ipv6"]))
        # Padding keeps an email or a URI what it is; other formats have a fixed length.
        most = 40 if fmt in ("email", "uri") else len(FORMATS[fmt])
        return {"type": "string", "format": fmt, "minLength": draw(st.integers(0, most))}
    if kind == "pattern":
        return {"type": "string", "pattern": draw(st.sampled_from(PATTERNS))}
    least = draw(st.integers(0, 8))
    schema: dict[str, Any] = {"type": "string", "minLength": least}
    if draw(st.booleans()):
        schema["maxLength"] = least + draw(st.integers(0, 4))
    return schema


@st.composite
def numbers(draw: st.DrawFn) -> dict[str, Any]:
    integer = draw(st.booleans())
    schema: dict[str, Any] = {"type": "integer" if integer else "number"}
    if integer:
        step: int | float | None = draw(st.none() | st.integers(1, 7))
    else:
        step = draw(st.none() | st.sampled_from([0.5, 0.25, 0.1, 0.01, 2, 3]))
    lo = draw(st.integers(-1000, 1000) | st.floats(-1000, 1000).map(lambda f: round(f, 2)))
    hi = lo + draw(st.integers(20, 1000))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = lo
    if draw(st.booleans()):
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = hi
    if step is not None:
        schema["multipleOf"] = step
    return schema


def scalars() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        strings(),
        numbers(),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(JSON_SCALARS, min_size=1, max_size=4).map(lambda xs: {"enum": xs}),
        JSON_SCALARS.map(lambda x: {"const": x}),
        st.text(max_size=4).map(lambda s: {"type": "string", "default": s}),
        st.just({"type": "integer", "default": "not an integer"}),  # a wrong default is passed
        st.lists(st.text(max_size=3), min_size=1).map(
            lambda xs: {"type": "string", "examples": xs}
        ),
        st.sampled_from([["string", "null"], ["null", "integer"], ["boolean", "number"]]).map(
            lambda ts: {"type": ts}
        ),
    )


def trees(refs: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    leaves = scalars()
    if refs:
        leaves = leaves | st.sampled_from(refs).map(lambda name: {"$ref": f"#/$defs/{name}"})

    def extend(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        return st.one_of(
            objects(inner),
            st.builds(
                lambda items, least: {"type": "array", "items": items, "minItems": least},
                inner,
                st.integers(0, 3),
            ),
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"anyOf": xs}),
        )

    return st.recursive(leaves, extend, max_leaves=12)


@st.composite
def objects(draw: st.DrawFn, inner: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    props = draw(st.dictionaries(NAMES, inner, max_size=4))
    required = [n for n in props if draw(st.booleans())]
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if draw(st.booleans()):
        extra: list[bool | dict[str, Any]] = [False, True, {"type": "string"}]
        schema["additionalProperties"] = draw(st.sampled_from(extra))
    if len(props) > 0 and draw(st.booleans()):
        schema["minProperties"] = draw(st.integers(0, len(props)))
    return schema


DEF_NAMES = ["Line", "Money", "Status"]
PLAIN_TREES = trees([])
TREES = trees(DEF_NAMES)


@st.composite
def output_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """An MCP ``outputSchema``: an object at the root, with ``$defs`` its tree may refer to."""
    root = draw(objects(TREES))
    root["$defs"] = draw(st.fixed_dictionaries(dict.fromkeys(DEF_NAMES, PLAIN_TREES)))
    return root


@settings(max_examples=150, deadline=None)
@given(output_schemas())
def test_synthesised_values_validate(schema: dict[str, Any]) -> None:
    before = copy.deepcopy(schema)
    value = synthesise(schema)
    assert_valid(value, schema)
    assert schema_problem(value, schema) is None
    assert json.loads(json.dumps(value, allow_nan=False)) == value
    assert synthesise(schema) == value  # deterministic
    assert schema == before  # the schema is not touched
    assert shadow_result(schema, None) == value


@settings(max_examples=100, deadline=None)
@given(TREES)
def test_any_node_synthesises_under_its_defs(node: dict[str, Any]) -> None:
    line = {"type": "object", "required": ["sku"]}
    schema = {**node, "$defs": {"Line": line, "Money": {"type": "number"}, "Status": {"enum": [1]}}}
    assert_valid(synthesise(schema), schema)


# -- the rules, one by one ------------------------------------------------------------------------

RULES: list[tuple[str, dict[str, Any] | bool, Any]] = [
    ("const first", {"type": "string", "const": "c", "default": "d", "enum": ["c", "e"]}, "c"),
    ("then default", {"type": "string", "default": "d", "examples": ["x"], "enum": ["d"]}, "d"),
    ("then examples", {"type": "string", "examples": ["x", "y"], "enum": ["z", "x"]}, "x"),
    ("then enum", {"enum": ["open", "closed"]}, "open"),
    ("the first enum member the type admits", {"type": "string", "enum": [1, "a"]}, "a"),
    ("an invalid default is passed over", {"type": "integer", "minimum": 3, "default": 1}, 3),
    ("an object default is a copy", {"default": {"a": [1]}}, {"a": [1]}),
    ("string", {"type": "string"}, ""),
    ("minLength pads", {"type": "string", "minLength": 4}, "xxxx"),
    ("date-time", {"type": "string", "format": "date-time"}, "1970-01-01T00:00:00Z"),
    ("date", {"type": "string", "format": "date"}, "1970-01-01"),
    ("email", {"type": "string", "format": "email"}, "shadow@example.invalid"),
    (
        "email padded",
        {"type": "string", "format": "email", "minLength": 24},
        "shadowxx@example.invalid",
    ),
    ("uri", {"type": "string", "format": "uri"}, "https://example.invalid/"),
    ("uuid", {"type": "string", "format": "uuid"}, "00000000-0000-0000-0000-000000000000"),
    ("unknown format", {"type": "string", "format": "colour"}, ""),
    ("pattern", {"type": "string", "pattern": r"^rf_[0-9a-f]{8}$"}, "rf_00000000"),
    ("pattern branch", {"type": "string", "pattern": r"^(refund|credit)-\d+$"}, "refund-0"),
    ("pattern and minLength", {"type": "string", "pattern": "^[a-z]+$", "minLength": 3}, "xxx"),
    ("pattern backreference", {"type": "string", "pattern": r"^(ab)-\1$"}, "ab-ab"),
    ("pattern negated class", {"type": "string", "pattern": r"^[^a0]$"}, "A"),
    ("number", {"type": "number"}, 0),
    ("integer", {"type": "integer"}, 0),
    ("minimum", {"type": "integer", "minimum": 5}, 5),
    ("minimum below 0 keeps 0", {"type": "integer", "minimum": -5}, 0),
    ("exclusiveMinimum integer", {"type": "integer", "exclusiveMinimum": 0}, 1),
    ("exclusiveMinimum number", {"type": "number", "exclusiveMinimum": 0}, 1),
    ("between open bounds", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, 0.5),
    ("maximum below 0", {"type": "integer", "maximum": -3}, -3),
    ("exclusiveMaximum below 0", {"type": "integer", "exclusiveMaximum": -3}, -4),
    ("multipleOf", {"type": "integer", "minimum": 10, "multipleOf": 4}, 12),
    ("fractional multipleOf", {"type": "number", "minimum": 0.3, "multipleOf": 0.25}, 0.5),
    ("integer on a fractional multipleOf", {"type": "integer", "minimum": 1, "multipleOf": 1.5}, 3),
    ("boolean", {"type": "boolean"}, False),
    ("null", {"type": "null"}, None),
    ("type list prefers non-null", {"type": ["null", "integer"]}, 0),
    ("no type: null", {"description": "anything"}, None),
    ("no type, keywords hint", {"minLength": 2}, "xx"),
    ("array", {"type": "array", "items": {"type": "integer"}}, []),
    (
        "minItems",
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2},
        [1, 1],
    ),
    (
        "prefixItems",
        {
            "type": "array",
            "prefixItems": [{"type": "string"}],
            "items": {"type": "null"},
            "minItems": 2,
        },
        ["", None],
    ),
    (
        "required members only",
        {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["b"],
        },
        {"b": 0},
    ),
    (
        "and those with a default or const",
        {
            "type": "object",
            "properties": {"a": {"default": 2}, "b": {"const": "k"}, "c": {"type": "string"}},
        },
        {"a": 2, "b": "k"},
    ),
    (
        "additionalProperties adds nothing",
        {"type": "object", "additionalProperties": {"type": "string"}, "required": ["q"]},
        {"q": ""},
    ),
    (
        "minProperties takes listed members",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 1},
        {"a": 0},
    ),
    (
        "patternProperties",
        {"type": "object", "patternProperties": {"^n_": {"type": "integer"}}, "required": ["n_1"]},
        {"n_1": 0},
    ),
    (
        "$ref to $defs",
        {"$defs": {"M": {"type": "integer", "minimum": 7}}, "$ref": "#/$defs/M"},
        7,
    ),
    (
        "$ref to definitions",
        {
            "definitions": {"M": {"enum": ["m"]}},
            "type": "object",
            "required": ["m"],
            "properties": {"m": {"$ref": "#/definitions/M"}},
        },
        {"m": "m"},
    ),
    (
        "$ref beside other keywords",
        {"$defs": {"M": {"type": "integer"}}, "$ref": "#/$defs/M", "minimum": 2},
        2,
    ),
    (
        "optional recursion stops",
        {
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
            "$ref": "#/$defs/Node",
        },
        {},
    ),
    (
        "allOf merged",
        {
            "allOf": [
                {"type": "object", "required": ["a"], "properties": {"a": {"minimum": 2}}},
                {"required": ["b"], "properties": {"a": {"type": "integer"}, "b": {"const": 1}}},
            ]
        },
        {"a": 2, "b": 1},
    ),
    ("allOf types meet", {"allOf": [{"type": ["number", "string"]}, {"type": "integer"}]}, 0),
    (
        "anyOf: the first branch that validates",
        {"anyOf": [{"type": "string", "minLength": 3, "maxLength": 1}, {"type": "integer"}]},
        0,
    ),
    (
        "anyOf: the first branch when it validates",
        {"anyOf": [{"type": "null"}, {"type": "string"}]},
        None,
    ),
    (
        "oneOf",
        {"oneOf": [{"type": "string", "maxLength": 0, "minLength": 1}, {"type": "null"}]},
        None,
    ),
    (
        "oneOf with a discriminator",
        {
            "$defs": {
                "Cat": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {"kind": {"const": "cat"}},
                },
                "Dog": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {"kind": {"const": "dog"}},
                },
            },
            "oneOf": [{"$ref": "#/$defs/Dog"}, {"$ref": "#/$defs/Cat"}],
        },
        {"kind": "dog"},
    ),
    ("true schema", True, None),
    (
        "draft 4 exclusiveMinimum flag",
        {"$schema": DRAFT4, "type": "integer", "minimum": 3, "exclusiveMinimum": True},
        4,
    ),
    (
        "draft 7 items tuple",
        {
            "$schema": DRAFT7,
            "type": "array",
            "items": [{"type": "string"}],
            "minItems": 2,
            "additionalItems": {"type": "boolean"},
        },
        ["", False],
    ),
]


@pytest.mark.parametrize(("schema", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule(schema: dict[str, Any] | bool, expected: Any) -> None:
    value = synthesise(schema)
    assert value == expected
    assert type(value) is type(expected)  # 0 is not 0.0, False is not 0
    assert schema_problem(value, schema) is None


def test_a_default_is_never_the_schemas_own_object() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"a": {"default": {"k": [1]}}}}
    value = synthesise(schema)
    assert isinstance(value, dict)
    inner = value["a"]
    assert isinstance(inner, dict)
    listed = inner["k"]
    assert isinstance(listed, list)
    listed.append(2)
    assert schema["properties"]["a"]["default"] == {"k": [1]}


def test_formats_are_real_values() -> None:
    """The neutral values parse as what their format names (beyond jsonschema's own checks,
    several of which need optional packages)."""
    assert datetime.fromisoformat(FORMATS["date-time"]).year == 1970
    assert date.fromisoformat(FORMATS["date"]) == date(1970, 1, 1)
    assert uuid.UUID(FORMATS["uuid"]).int == 0
    assert ipaddress.ip_address(FORMATS["ipv4"]).is_private  # documentation range
    assert ipaddress.ip_address(FORMATS["ipv6"]).is_private
    parts = urlsplit(FORMATS["uri"])
    assert (parts.scheme, parts.hostname) == ("https", "example.invalid")
    assert FORMATS["email"].endswith("@example.invalid")


UNSATISFIABLE: list[tuple[dict[str, Any] | bool, str]] = [
    ({"type": "string", "minLength": 3, "maxLength": 2}, "(root): 'xxx' is too long"),
    (
        {
            "type": "object",
            "required": ["a"],
            "properties": {"a": {"type": "integer", "enum": ["x"]}},
        },
        "a: 0 is not one of ['x']",
    ),
    (
        {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "minItems": 1, "items": False}},
        },
        "items: Expected at most 0 items but found 1 extra: None",
    ),
    ({"type": "string", "pattern": "^(?=a)b$"}, "(root): '' does not match"),
    (
        {"type": "object", "required": ["n"], "properties": {"n": {"$ref": "#"}}},
        "n.n.n.n",  # a required recursion: the depth guard, then validation names where
    ),
    ({"$ref": "#/$defs/Missing"}, "invalid schema: $ref does not resolve"),
    ({"type": "strin"}, "invalid schema: type: 'strin' is not valid"),
    (False, "(root): False schema does not allow None"),
]


@pytest.mark.parametrize(("schema", "words"), UNSATISFIABLE)
def test_unsatisfiable_names_the_path(schema: dict[str, Any] | bool, words: str) -> None:
    with pytest.raises(ShadowResultError) as exc:
        synthesise(schema)
    assert isinstance(exc.value, ValueError)
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_huge_schema_gives_up_cleanly() -> None:
    wide = {"type": "array", "minItems": 10**6, "items": {"type": "integer"}}
    with pytest.raises(ShadowResultError, match="too large or too recursive"):
        synthesise(wide)
    product = {"allOf": [{"anyOf": [{"type": "integer", "minimum": i} for i in range(50)]}] * 12}
    assert synthesise(product) == 0  # the 50**12 branch combinations are never built


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 10**9},
        {"type": "string", "pattern": "^a{1000000000}$"},
        {"type": "string", "pattern": "^(a{100000}){100000}$"},
        {"type": "number", "exclusiveMinimum": 10**400, "exclusiveMaximum": 10**400 + 1},
    ],
)
def test_absurd_sizes_are_refused_not_built(schema: dict[str, Any]) -> None:
    with pytest.raises(ShadowResultError):
        synthesise(schema)


KEYWORDS = [
    "type",
    "properties",
    "required",
    "items",
    "prefixItems",
    "additionalItems",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "enum",
    "const",
    "default",
    "$ref",
    "$defs",
    "definitions",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "multipleOf",
    "minLength",
    "pattern",
    "format",
    "minItems",
    "minProperties",
    "patternProperties",
    "additionalProperties",
    "examples",
]
WILD = st.recursive(
    JSON_SCALARS | st.sampled_from(["#", "#/$defs/A", "object", "string", "(", "^a"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(KEYWORDS) | st.sampled_from(["A", "a"]), inner, max_size=4
        )
    ),
    max_leaves=15,
)
DRAFTS = st.sampled_from([None, DRAFT4, DRAFT7, "https://json-schema.org/draft/2020-12/schema"])


@settings(max_examples=300, deadline=None)
@given(WILD, DRAFTS, JSON_SCALARS)
def test_any_json_as_a_schema_never_raises_anything_else(
    schema: Any, draft: str | None, value: Any
) -> None:
    """Whatever an upstream publishes: a problem or None, a value or ShadowResultError."""
    if draft is not None and isinstance(schema, dict):
        schema = {**schema, "$schema": draft}
    problem = schema_problem(value, schema)
    assert problem is None or (isinstance(problem, str) and "\n" not in problem)
    try:
        built = synthesise(schema)
    except ShadowResultError:
        return
    assert schema_problem(built, schema) is None


# -- schema_problem -------------------------------------------------------------------------------

ORDER = {
    "type": "object",
    "required": ["refund_id", "amount", "items"],
    "properties": {
        "refund_id": {"type": "string"},
        "amount": {"type": "number"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku"],
                "properties": {
                    "sku": {"type": "string", "pattern": "^S"},
                    "meta": {"type": "object"},
                },
            },
        },
    },
}
GOOD = {"refund_id": "r1", "amount": 1.5, "items": [{"sku": "S1"}, {"sku": "S2"}, {"sku": "S3"}]}

PROBLEMS = [
    (GOOD, None),
    ({k: v for k, v in GOOD.items() if k != "refund_id"}, "refund_id: required property missing"),
    ({**GOOD, "amount": "x"}, "amount: 'x' is not of type 'number'"),
    (
        {**GOOD, "items": [{"sku": "S1"}, {"sku": "S2"}, {"sku": "X"}]},
        "items[2].sku: 'X' does not match '^S'",
    ),
    ({**GOOD, "items": [{"sku": "S1"}, {}]}, "items[1].sku: required property missing"),
    ({**GOOD, "items": [{"sku": "S1", "meta": 3}]}, "items[0].meta: 3 is not of type 'object'"),
    ([], "(root): [] is not of type 'object'"),
]


@pytest.mark.parametrize(("value", "problem"), PROBLEMS)
def test_schema_problem_names_the_path(value: Any, problem: str | None) -> None:
    assert schema_problem(value, ORDER) == problem


def test_odd_keys_are_quoted() -> None:
    schema = {"type": "object", "properties": {"a.b": {"properties": {"c d": {"type": "integer"}}}}}
    assert (
        schema_problem({"a.b": {"c d": "x"}}, schema)
        == "[\"a.b\"][\"c d\"]: 'x' is not of type 'integer'"
    )


def test_long_problems_stay_one_short_line() -> None:
    problem = schema_problem({"k": "line\n" * 200}, {"properties": {"k": {"type": "integer"}}})
    assert problem is not None
    assert "\n" not in problem
    assert len(problem) <= 300


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "nmber"}}},
            "invalid schema: properties.a.type:",
        ),
        ({"type": "string", "pattern": "("}, "invalid schema: pattern:"),
        ({"$schema": 7}, "invalid schema: $schema: not a string"),
        ({"$ref": "#/$defs/Nope"}, "invalid schema: $ref does not resolve"),
        ({"$ref": "https://example.invalid/schema.json"}, "invalid schema: $ref does not resolve"),
        ({"$defs": {"L": {"$ref": "#/$defs/L"}}, "$ref": "#/$defs/L"}, "recurses without end"),
    ],
)
def test_a_broken_schema_is_a_problem_never_an_exception(
    schema: dict[str, Any], words: str
) -> None:
    problem = schema_problem({}, schema)
    assert problem is not None
    assert words in problem


def test_dollar_schema_is_honoured() -> None:
    draft4 = {"$schema": DRAFT4, "type": "number", "maximum": 5, "exclusiveMaximum": True}
    assert schema_problem(4, draft4) is None
    assert schema_problem(5, draft4) == "(root): 5 is greater than or equal to the maximum of 5"
    # The same schema under 2020-12 (the default) is not a schema at all.
    problem = schema_problem(4, {k: v for k, v in draft4.items() if k != "$schema"})
    assert problem is not None
    assert problem.startswith("invalid schema: exclusiveMaximum:")
    # An unknown $schema falls back to 2020-12 (the SDK's fallback), without its warning.
    assert schema_problem("x", {"$schema": "urn:unknown", "type": "integer"}) is not None


def test_format_is_an_annotation() -> None:
    """As in the SDK's client: a value of the wrong ``format`` passes."""
    assert schema_problem("not a date", {"type": "string", "format": "date"}) is None


# -- shadow_result and call_result ----------------------------------------------------------------


def test_configured_result_wins_and_is_a_copy() -> None:
    configured = {"status": "queued", "ids": [1]}
    out = shadow_result(ORDER, configured)
    assert out == configured
    assert out is not configured
    assert out["ids"] is not configured["ids"]


def test_synthesised_when_the_tool_has_an_output_schema() -> None:
    assert shadow_result(ORDER, None) == {"refund_id": "", "amount": 0, "items": []}


def test_the_default_without_an_output_schema() -> None:
    out = shadow_result(None, None)
    assert out == {"status": "recorded", "shadow": True} == DEFAULT_SHADOW_RESULT
    out["status"] = "changed"
    assert DEFAULT_SHADOW_RESULT["status"] == "recorded"


def test_an_output_schema_that_gives_no_object_is_refused() -> None:
    with pytest.raises(ShadowResultError, match="not an object"):
        shadow_result({"type": "string"}, None)


def test_call_result_shape() -> None:
    structured = {"refund_id": "", "note": "é"}
    assert call_result(structured, tool="issue_refund") == {
        "content": [{"type": "text", "text": json.dumps(structured)}],
        "structuredContent": structured,
        "isError": False,
        "_meta": {"io.shadow/shadow_result": True},
    }


# The `_meta` key format of the MCP specification (basic/index, "_meta"): an optional prefix
# of dot-separated labels and a slash, then a name; prefixes whose second label is
# `modelcontextprotocol` or `mcp` are reserved.
LABEL = r"[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
META_KEY = re.compile(
    rf"(?:(?P<prefix>{LABEL}(?:\.{LABEL})*)/)?(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?"
)


def test_the_meta_key_is_a_valid_unreserved_mcp_key() -> None:
    found = META_KEY.fullmatch(SHADOW_META_KEY)
    assert found is not None
    labels = found["prefix"].split(".")
    assert len(labels) >= 2
    assert labels[1] not in ("modelcontextprotocol", "mcp")


@pytest.mark.parametrize("bad", [{"when": date(2024, 1, 1)}, {"amount": math.nan}, {"x": {1, 2}}])
def test_call_result_refuses_what_is_not_json(bad: dict[str, Any]) -> None:
    with pytest.raises(ShadowResultError, match=r"^issue_refund: the shadow result is not JSON"):
        call_result(bad, tool="issue_refund")


# -- a real outputSchema from the official SDK, checked by the SDK client's own validation --------


class Status(StrEnum):
    pending = "pending"
    done = "done"


class Line(BaseModel):
    sku: str = Field(min_length=3, pattern=r"^SKU-[0-9]{4}$")
    qty: int = Field(ge=1, multiple_of=2)
    tags: set[str] = set()


class Refund(BaseModel):
    refund_id: str = Field(pattern=r"^rf_[0-9a-f]{8}$")
    order_id: uuid.UUID
    amount: float = Field(gt=0, le=10_000)
    currency: Literal["EUR", "USD"]
    status: Status
    created: datetime
    lines: list[Line] = Field(min_length=1)
    totals: dict[str, int]
    note: str | None
    reason: str = "customer request"
    parent: Refund | None = None


def refund_server() -> MCPServer:
    server = MCPServer("backoffice", log_level="WARNING")

    @server.tool()
    def issue_refund(order_id: str) -> Refund:
        """Refund an order (a write)."""
        raise AssertionError("a captured write is never forwarded")

    @server.tool()
    def cancel_order(order_id: str) -> int:
        """A non-object return: the SDK wraps it as {"result": ...}."""
        raise AssertionError("a captured write is never forwarded")

    return server


async def test_the_sdk_client_accepts_the_synthesised_result() -> None:
    async with Client(refund_server()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        schema = tools["issue_refund"].output_schema
        assert schema is not None
        assert "$defs" in schema  # the real thing: refs, anyOf, formats, patterns, bounds
        structured = shadow_result(schema, None)
        assert structured["refund_id"] == "rf_00000000"
        assert structured["lines"] == [{"sku": "SKU-0000", "qty": 2, "tags": []}]
        assert structured["reason"] == "customer request"
        Refund.model_validate(structured)  # and pydantic, the model itself, agrees
        for name in ("issue_refund", "cancel_order"):
            answer = CallToolResult.model_validate(
                call_result(shadow_result(tools[name].output_schema, None), tool=name)
            )
            # The function the SDK's ClientSession.call_tool runs on every result.
            await client.session.validate_tool_result(name, answer)
            assert answer.meta == {SHADOW_META_KEY: True}  # the mark survives the SDK's model

        # What the gateway answered before: the same validation refuses it.
        old = CallToolResult.model_validate(call_result(DEFAULT_SHADOW_RESULT, tool="issue_refund"))
        with pytest.raises(RuntimeError, match="Invalid structured content"):
            await client.session.validate_tool_result("issue_refund", old)
        # schema_problem agrees with the SDK's verdict, and names the first missing member.
        assert (
            schema_problem(DEFAULT_SHADOW_RESULT, schema) == "refund_id: required property missing"
        )
