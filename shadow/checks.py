"""Field checks for the records of :mod:`shadow.model`: :class:`Check` collects every
problem of one record with its field path (raised together as one
:class:`~shadow.errors.ValidationError`), :func:`json_problem` finds the first spot
inside a value that is not plain JSON, nests too deep or holds text no store can keep, and
:func:`text_problem` is the one check of text every input goes through (HTTP bodies,
headers and query parameters used as ids, MCP requests, CLI arguments, records).

The limits (``MAX_DEPTH``, ``MAX_ID_LENGTH``, ``TASK_TYPE_PATTERN``) are re-exported by
:mod:`shadow.model`, where callers import them from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
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
    "text_problem",
]

MAX_DEPTH = 32
MAX_ID_LENGTH = 256
TASK_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"
TASK_TYPE_RE = re.compile(TASK_TYPE_PATTERN)

JSONObject = dict[str, Any]

CONTROL = re.compile("[\x00-\x1f\x7f]")  # control characters, not allowed in identifiers

# What text_problem refuses. In any text: lone UTF-16 surrogates (U+D800-U+DFFF alone in a
# str: JSON's "\ud800" escape and non-UTF-8 header bytes decode to them), which have no UTF-8
# form, so neither DuckDB nor a UTF-8 log or JSON encoder can keep them. In an identifier
# also NUL, every other C0 control character and DEL. (NUL in free text is stored as the JSON
# escape it arrived as: a customer's data may hold one, and refusing it would lose the case.)
_BAD_TEXT = re.compile("[\ud800-\udfff]")
_BAD_IDENT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


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
        problem = text_problem(value, key, ident=True)
        if problem is not None:
            self.fail(*problem)
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
        problem = text_problem(value, key, ident=True)  # a label (segment, decided_by, ...)
        if problem is not None:
            self.fail(*problem)
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
    """First non-JSON, too-deep or refused-text spot inside ``value``, as (path, message).
    Its strings and keys are free text (:func:`text_problem` with ``ident=False``)."""
    return None if plain_json(value, depth) else json_problem_at(value, path, depth)


def plain_json(value: object, depth: int) -> bool:
    """Whether ``value`` is plainly JSON: built-in types only, finite floats, string keys,
    text :func:`text_problem` takes, at most :data:`MAX_DEPTH` deep. The common case,
    checked without building paths; only when this says no does :func:`json_problem_at`
    look for the spot (it also accepts subclasses of the built-in types, which this leaves
    to it)."""
    if depth > MAX_DEPTH:
        return False
    if type(value) is str:  # every string of every record (and key, below): two C scans
        return "\x00" not in value and (value.isascii() or _BAD_TEXT.search(value) is None)
    t = type(value)
    if t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if (
                type(k) is not str
                or "\x00" in k
                or not (k.isascii() or _BAD_TEXT.search(k) is None)
                or not plain_json(v, depth + 1)
            ):
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
            found = _text_at(k, path, "object key", _BAD_TEXT)
            if found:
                return found
            found = json_problem_at(v, f"{path}.{k}", depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = json_problem_at(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
    elif isinstance(value, str):
        return _text_at(value, path, "string", _BAD_TEXT)
    elif isinstance(value, float) and not math.isfinite(value):
        return path, "numbers must be finite"
    elif value is not None and not isinstance(value, int | float | bool):
        return path, f"not a JSON value ({type(value).__name__})"
    return None


# -- text -----------------------------------------------------------------------------------


def text_problem(
    value: object, path: str = "", *, ident: bool | Collection[str] = False
) -> tuple[str, str] | None:
    """The one check of text at the sidecar's edges: the first string or object key inside
    ``value`` (any JSON value, walked in document order; other values are skipped) holding
    text the sidecar refuses, as ``(path, message)``; ``None`` when all of it is fine.

    What is refused:

    - **everywhere**: a lone UTF-16 surrogate (U+D800-U+DFFF; the JSON escape ``\\ud800``
      and header bytes that are not UTF-8 decode to one): it has no UTF-8 form, so it cannot
      be stored, logged or sent on.
    - **in identifiers** (ids, task types, actors, tool names, levels, labels) also NUL and
      every other C0 control character (U+0000-U+001F) and DEL (U+007F): ids are keys, log
      fields and header values, which a newline or an escape sequence would split or forge.

    Free text (payloads, decisions, tool arguments, reasons) may hold NUL, ``\\n``, ``\\t``
    and the other control characters (stored as their JSON escapes). ``ident``: ``True``
    when every string in ``value`` is an identifier, or the paths of the strings that are
    (object keys are then checked as free text). The message names the character as a
    ``\\uXXXX`` escape and its index in the string, e.g. ``string holds a lone UTF-16
    surrogate \\ud800 at index 3; ...``.
    """
    everywhere = ident is True
    free = _BAD_IDENT if everywhere else _BAD_TEXT
    if isinstance(value, str) and isinstance(ident, bool):  # one string (an id): no walk
        return _text_at(value, path, "string", free)
    paths = frozenset() if isinstance(ident, bool) else frozenset(ident)
    stack: list[tuple[str, object]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            found = _text_at(node, where, "string", _BAD_IDENT if where in paths else free)
            if found:
                return found
        elif isinstance(node, Mapping):
            children: list[tuple[str, object]] = []
            for key, child in node.items():
                if isinstance(key, str):
                    found = _text_at(key, where, "object key", free)
                    if found:
                        return found
                children.append((f"{where}.{key}" if where else str(key), child))
            stack.extend(reversed(children))
        elif isinstance(node, list | tuple):
            stack.extend((f"{where}[{i}]", node[i]) for i in range(len(node) - 1, -1, -1))
    return None


def _text_at(text: str, path: str, what: str, bad: re.Pattern[str]) -> tuple[str, str] | None:
    found = bad.search(text)
    if found is None:
        return None
    char, at = found.group(), found.start()
    code = f"\\u{ord(char):04x}"
    if "\ud800" <= char <= "\udfff":
        message = f"{what} holds a lone UTF-16 surrogate {code} at index {at}; not valid Unicode"
    elif char == "\x00":
        message = f"{what} holds NUL ({code}) at index {at}; no text may contain it"
    else:
        message = (
            f"{what} holds the control character {code} at index {at}; identifiers must not "
            "contain control characters"
        )
    return path, message
