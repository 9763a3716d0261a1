"""Compare rules: how an agent's decision and actions are judged against the humans'
(the ``compare:`` section of a task type, docs/policy.md "How decisions are compared"), and
their parsing. :mod:`shadow.diff` applies them; :mod:`shadow.policy` holds them per task type
(its parser extends :class:`CompareParser`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shadow.errors import FieldError
from shadow.model import Level

__all__ = [
    "ActionsOrder",
    "ActionsRule",
    "CompareParser",
    "CompareRules",
    "FieldRule",
    "MatchKind",
    "Scalar",
    "ToolRule",
]


class MatchKind(enum.StrEnum):
    EXACT = "exact"
    NUMBER = "number"
    TEXT = "text"
    SET = "set"
    IGNORE = "ignore"


class ActionsOrder(enum.StrEnum):
    MULTISET = "multiset"  # the lists agree as multisets: order does not count
    SEQUENCE = "sequence"  # the lists agree in order; the edit distance is reported


Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one field is compared. ``abs``/``rel`` only matter for ``number``;
    ``equivalent`` classes map several values onto one before comparing."""

    match: MatchKind = MatchKind.EXACT
    critical: bool = False
    abs: float = 0.0
    rel: float = 0.0
    equivalent: tuple[tuple[Scalar, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolRule:
    """``compare.actions.tools.<tool>``: argument rules for one tool's actions (each path
    overrides the same path of ``compare.actions.args``), and whether a mismatch in that
    tool's actions is a critical miss."""

    args: Mapping[str, FieldRule] = field(default_factory=dict)
    critical: bool = False


@dataclass(frozen=True, slots=True)
class ActionsRule:
    """Proposed vs human actions, compared as lists of tool name plus the selected argument
    paths in ``args`` (compared under their rules; other arguments are ignored), as
    multisets or in order (``order``); ``tools`` refines the rules per tool name."""

    args: Mapping[str, FieldRule] = field(default_factory=dict)
    critical: bool = False
    order: ActionsOrder = ActionsOrder.MULTISET
    tools: Mapping[str, ToolRule] = field(default_factory=dict)

    def args_for(self, tool: str) -> Mapping[str, FieldRule]:
        """The argument rules ``tool``'s actions are compared under: ``args`` with the
        tool's own paths overriding them."""
        found = self.tools.get(tool)
        if found is None or not found.args:
            return self.args
        return {**self.args, **found.args}


@dataclass(frozen=True, slots=True)
class CompareRules:
    fields: Mapping[str, FieldRule] = field(default_factory=dict)
    unlisted: MatchKind = MatchKind.EXACT  # exact | ignore
    actions: ActionsRule | None = None  # None: actions are not compared


_MATCH_CHOICES = ", ".join(m.value for m in MatchKind)


class CompareParser:
    """The checks every policy section is parsed with (each problem collected with its key
    path in :attr:`problems`), and the ``compare:`` section itself."""

    problems: list[FieldError]

    def fail(self, path: str, message: str) -> None:
        self.problems.append(FieldError(path, message))

    def mapping(self, value: object, path: str, allowed: set[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping of keys, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                choices = ", ".join(sorted(allowed))
                self.fail(f"{path}.{key}".lstrip("."), f"unknown key; allowed here: {choices}")
        return value

    def number(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        default: float,
        low: float,
        high: float,
        *,
        open_low: bool = False,
        open_high: bool = False,
    ) -> float:
        value = m.get(key, default)
        where = f"{path}.{key}".lstrip(".")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(where, f"expected a number, got {value!r}")
            return default
        too_low = value <= low if open_low else value < low
        too_high = value >= high if open_high else value > high
        if too_low or too_high:
            lo = "(" if open_low else "["
            hi = ")" if open_high else "]"
            self.fail(where, f"{value} is out of range; use a number in {lo}{low}, {high}{hi}")
            return default
        return float(value)

    def level(self, value: object, path: str, default: Level) -> Level:
        if value is None:
            return default
        try:
            return Level.parse(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return default

    def compare(self, raw: object, path: str) -> CompareRules:
        m = self.mapping(raw, path, {"fields", "unlisted", "actions"})
        fields_raw = m.get("fields") or {}
        fields: dict[str, FieldRule] = {}
        if not isinstance(fields_raw, dict):
            self.fail(f"{path}.fields", "expected a mapping of field path to rule")
        else:
            for fname, rule in fields_raw.items():
                fpath = f"{path}.fields.{fname}"
                if not isinstance(fname, str) or not fname or ".." in fname or fname.endswith("."):
                    self.fail(fpath, "field names are dotted paths like customer.tier")
                    continue
                fields[fname] = self.field_rule(rule, fpath)
        unlisted = m.get("unlisted", "exact")
        if unlisted not in ("exact", "ignore"):
            self.fail(f"{path}.unlisted", f"unknown value {unlisted!r}; use exact or ignore")
            unlisted = "exact"
        actions = None
        if m.get("actions") is not None:
            actions = self.actions(m["actions"], f"{path}.actions")
        return CompareRules(fields, MatchKind(unlisted), actions)

    def actions(self, raw: object, path: str) -> ActionsRule:
        m = self.mapping(raw, path, {"args", "critical", "order", "tools"})
        critical = self.boolean(m, "critical", path)
        args = self.action_args(m.get("args"), f"{path}.args")
        order_raw = m.get("order", "multiset")
        try:
            order = ActionsOrder(order_raw)
        except ValueError:
            self.fail(f"{path}.order", f"unknown value {order_raw!r}; use multiset or sequence")
            order = ActionsOrder.MULTISET
        tools: dict[str, ToolRule] = {}
        tools_raw = m.get("tools")
        if tools_raw is not None and not isinstance(tools_raw, dict):
            self.fail(f"{path}.tools", "expected a mapping of tool name to {args, critical}")
        elif tools_raw:
            for tool, body in tools_raw.items():
                tpath = f"{path}.tools.{tool}"
                if not isinstance(tool, str) or not tool:
                    self.fail(tpath, "tool names must be non-empty strings")
                    continue
                t = self.mapping(body, tpath, {"args", "critical"})
                tool_args = self.action_args(t.get("args"), f"{tpath}.args")
                tools[tool] = ToolRule(tool_args, self.boolean(t, "critical", tpath))
        return ActionsRule(args, critical, order, tools)

    def action_args(self, raw: object, path: str) -> dict[str, FieldRule]:
        args: dict[str, FieldRule] = {}
        if not raw:
            return args
        if not isinstance(raw, dict):
            self.fail(path, "expected a mapping of argument path to rule")
            return args
        for aname, rule in raw.items():
            args[str(aname)] = self.field_rule(rule, f"{path}.{aname}", in_actions=True)
        return args

    def boolean(self, m: Mapping[str, Any], key: str, path: str) -> bool:
        value = m.get(key, False)
        if not isinstance(value, bool):
            self.fail(f"{path}.{key}", f"expected true or false, got {value!r}")
            return False
        return value

    def field_rule(self, raw: object, path: str, *, in_actions: bool = False) -> FieldRule:
        allowed = {"match", "abs", "rel", "equivalent"} | (set() if in_actions else {"critical"})
        m = self.mapping(raw, path, allowed)
        match_raw = m.get("match", "exact")
        try:
            match = MatchKind(match_raw)
        except ValueError:
            self.fail(
                f"{path}.match", f"unknown match kind {match_raw!r}; use one of {_MATCH_CHOICES}"
            )
            match = MatchKind.EXACT
        critical = self.boolean(m, "critical", path)
        abs_tol = rel_tol = 0.0
        for key in ("abs", "rel"):
            if key not in m:
                continue
            if match is not MatchKind.NUMBER:
                self.fail(f"{path}.{key}", f"{key} applies only to match: number; remove it")
                continue
            value = m[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                self.fail(f"{path}.{key}", f"expected a number, got {value!r}")
            elif value < 0:
                self.fail(f"{path}.{key}", f"tolerance {value} is negative; use 0 or more")
            elif key == "abs":
                abs_tol = float(value)
            else:
                rel_tol = float(value)
        equivalent = self.equivalent(m.get("equivalent"), f"{path}.equivalent", match)
        return FieldRule(match, critical, abs_tol, rel_tol, equivalent)

    def equivalent(
        self, raw: object, path: str, match: MatchKind
    ) -> tuple[tuple[Scalar, ...], ...]:
        if raw is None:
            return ()
        if match not in (MatchKind.EXACT, MatchKind.TEXT, MatchKind.SET):
            self.fail(path, f"equivalent applies to exact, text and set matches, not {match.value}")
            return ()
        if not isinstance(raw, list):
            self.fail(path, "expected a list of classes, e.g. [[billing, payments]]")
            return ()
        classes: list[tuple[Scalar, ...]] = []
        seen: set[str] = set()
        for i, cls in enumerate(raw):
            if not isinstance(cls, list) or len(cls) < 2:
                self.fail(f"{path}[{i}]", "each class is a list of at least two values")
                continue
            if any(isinstance(v, dict | list) for v in cls):
                self.fail(f"{path}[{i}]", "classes hold plain values (strings, numbers, booleans)")
                continue
            for v in cls:
                key = repr(v)
                if key in seen:
                    self.fail(f"{path}[{i}]", f"value {v!r} is in more than one class; merge them")
                seen.add(key)
            classes.append(tuple(cls))
        return tuple(classes)
