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
schema (its machinery, and the limits :data:`MAX_DEPTH`, :data:`BUDGET`, :data:`MAX_STRING`
and :data:`FORMATS`, live in :mod:`shadow.gateway.synth`; re-exported here); the value it
returns has always passed that validation. Pure: no I/O, no clock.

Errors::

    ShadowError, ValueError
     └── ShadowResultError    no value the schema accepts could be built; names the path
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

# Untyped (no py.typed; the types-jsonschema stubs are not a dependency). `unused-ignore`
# keeps mypy quiet should the stubs be installed one day.
from jsonschema import exceptions as js_exceptions  # type: ignore[import-untyped, unused-ignore]
from jsonschema import validators as js_validators  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry
from referencing.exceptions import Unresolvable

from shadow.errors import ShadowError
from shadow.gateway.synth import BUDGET as BUDGET
from shadow.gateway.synth import FORMATS as FORMATS
from shadow.gateway.synth import MAX_DEPTH as MAX_DEPTH
from shadow.gateway.synth import MAX_STRING as MAX_STRING
from shadow.gateway.synth import Exhausted, JSONValue, Schema, Synth
from shadow.tools_policy import DEFAULT_SHADOW_RESULT

__all__ = [
    "SHADOW_META_KEY",
    "JSONValue",
    "Schema",
    "ShadowAnswers",
    "ShadowResultError",
    "call_result",
    "schema_problem",
    "shadow_result",
    "synthesise",
]

SHADOW_META_KEY: Final = "io.shadow/shadow_result"
"""The ``_meta`` key marking a result as the sidecar's, not the tool's. A reverse-DNS prefix
whose second label is neither ``modelcontextprotocol`` nor ``mcp``, so not reserved by MCP."""

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
        value = Synth(schema, validator).value(schema, 0)
    except Exhausted:
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


class ShadowAnswers:
    """What the captured writes of each task type answer, with the schema checks cached per
    (task type, tool, schema): the gateway's use of this module."""

    def __init__(self) -> None:
        self._checks: dict[tuple[str, str, str], str | None] = {}
        self._plain: dict[str, bool] = {}

    def problem(
        self,
        task_type: str,
        tool: str,
        configured: Mapping[str, Any] | None,
        schema: Mapping[str, Any] | None,
    ) -> str | None:
        """Why the policy's ``configured`` result for ``tool`` breaks its ``schema`` (None
        when it does not, or when either is absent), naming the policy key and the path."""
        if configured is None or schema is None:
            return None
        key = (task_type, tool, json.dumps(schema, sort_keys=True))
        if key not in self._checks:
            found = schema_problem(configured, schema)
            self._checks[key] = (
                None
                if found is None
                else f"task_types.{task_type}.tools.shadow_result.{tool} does not satisfy the "
                f"tool's outputSchema: {found}"
            )
        return self._checks[key]

    def answer(
        self,
        task_type: str,
        tool: str,
        configured: Mapping[str, Any] | None,
        schema: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The ``CallToolResult`` of a captured write of ``tool``: the policy's result, else
        the plain ``{"status": "recorded", "shadow": true}`` where the schema admits it (an
        untyped result: it says what happened), else one synthesised from the schema.
        :class:`ShadowResultError` (one line) when none satisfies the schema."""
        problem = self.problem(task_type, tool, configured, schema)
        if problem is not None:
            raise ShadowResultError(problem)
        if configured is None and schema is not None and self._plain_ok(schema):
            configured = DEFAULT_SHADOW_RESULT
        try:
            return call_result(shadow_result(schema, configured), tool=tool)
        except ShadowResultError as exc:
            raise ShadowResultError(
                f"no shadow result satisfies {tool}'s outputSchema: {exc}; set "
                f"task_types.{task_type}.tools.shadow_result.{tool}"
            ) from None

    def _plain_ok(self, schema: Mapping[str, Any]) -> bool:
        key = json.dumps(schema, sort_keys=True)
        found = self._plain.get(key)
        if found is None:
            found = self._plain[key] = schema_problem(DEFAULT_SHADOW_RESULT, schema) is None
        return found
