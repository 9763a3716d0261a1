"""Field checks for the records of :mod:`shadow.model`: :class:`Check` collects every
problem of one record with its field path (raised together as one
:class:`~shadow.errors.ValidationError`), and :func:`json_problem` finds the first spot
inside a value that is not plain JSON or nests too deep.

The limits (``MAX_DEPTH``, ``MAX_ID_LENGTH``, ``TASK_TYPE_PATTERN``) are re-exported by
:mod:`shadow.model`, where callers import them from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shadow.errors import FieldError, Reason, ValidationError

__all__ = [
    "CONTROL",
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "TASK_TYPE_PATTERN",
    "TASK_TYPE_RE",
    "Check",
    "JSONObject",
    "brief",
    "json_problem",
    "json_problem_at",
    "kind_of",
    "plain_json",
]

MAX_DEPTH = 32
MAX_ID_LENGTH = 256
TASK_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"
TASK_TYPE_RE = re.compile(TASK_TYPE_PATTERN)

JSONObject = dict[str, Any]

CONTROL = re.compile("[\x00-\x1f\x7f]")  # control characters, not allowed in identifiers


# -- checks ---------------------------------------------------------------------


class Check:
    """Collects field errors so one bad record reports every problem at once."""

    def __init__(self, obj: object, what: str) -> None:
        self.errors: list[FieldError] = []
        self.obj: Mapping[str, Any] = {}
        if isinstance(obj, Mapping):
            self.obj = obj
        else:
            got = kind_of(obj)
            self.errors.append(FieldError("", f"expected a JSON object ({what}), got {got}"))

    def fail(self, path: str, message: str, code: Reason = Reason.INVALID) -> None:
        self.errors.append(FieldError(path, message, code))

    def done(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)

    def unknown_keys(self, allowed: set[str]) -> None:
        for key in self.obj:
            if key not in allowed:
                self.fail(str(key), f"unknown field; allowed: {', '.join(sorted(allowed))}")

    def ident(self, key: str, *, required: bool = True) -> str:
        value = self.obj.get(key)
        if value is None:
            if required:
                self.fail(key, "required; expected a non-empty string")
            return ""
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, got {kind_of(value)}")
            return ""
        if len(value) > MAX_ID_LENGTH:
            self.fail(key, f"too long ({len(value)} characters); at most {MAX_ID_LENGTH}")
            return ""
        if CONTROL.search(value):
            self.fail(key, "must not contain control characters")
            return ""
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {kind_of(value)}")
            return None
        if len(value) > MAX_ID_LENGTH:
            self.fail(key, f"too long ({len(value)} characters); at most {MAX_ID_LENGTH}")
            return None
        return value

    def json_object(self, key: str, *, required: bool = True) -> JSONObject:
        value = self.obj.get(key)
        if value is None:
            if required:
                self.fail(key, "required; expected a JSON object")
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a JSON object, got {kind_of(value)}")
            return {}
        problem = json_problem(value, key, 1)
        if problem is not None:
            self.fail(*problem)
            return {}
        return value

    def timestamp(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, f"expected an ISO-8601 timestamp string, got {kind_of(value)}")
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(
                key, f"expected an ISO-8601 timestamp like 2026-11-20T10:00:00Z, got {value!r}"
            )
            return None
        if parsed.tzinfo is None:
            self.fail(key, f"timestamp {value!r} has no timezone; add Z or +00:00")
            return None
        return value

    def number(
        self, key: str, *, low: float | None = None, high: float | None = None
    ) -> float | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(key, f"expected a finite number, got {kind_of(value)}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(key, f"expected a number in [{low}, {high}], got {value}")
            return None
        return float(value)


def kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def brief(value: object) -> str:
    """A short description of a value for messages: strings quoted and clipped."""
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    return kind_of(value)


def json_problem(value: object, path: str, depth: int) -> tuple[str, str] | None:
    """First non-JSON or too-deep spot inside ``value``, as (path, message)."""
    return None if plain_json(value, depth) else json_problem_at(value, path, depth)


def plain_json(value: object, depth: int) -> bool:
    """Whether ``value`` is plainly JSON: built-in types only, finite floats, string keys,
    at most :data:`MAX_DEPTH` deep. The common case, checked without building paths; only
    when this says no does :func:`json_problem_at` look for the spot (it also accepts
    subclasses of the built-in types, which this leaves to it)."""
    if depth > MAX_DEPTH:
        return False
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str or not plain_json(v, depth + 1):
                return False
        return True
    if t is list:
        return all(plain_json(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    return False


def json_problem_at(value: object, path: str, depth: int) -> tuple[str, str] | None:
    if depth > MAX_DEPTH:
        return path, f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return path, "object keys must be strings"
            found = json_problem_at(v, f"{path}.{k}", depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = json_problem_at(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
    elif isinstance(value, float) and not math.isfinite(value):
        return path, "numbers must be finite"
    elif value is not None and not isinstance(value, str | int | float | bool):
        return path, f"not a JSON value ({type(value).__name__})"
    return None
