"""Parse ingest bodies into records: pure functions, no I/O (the HTTP layer and the sources
call them).

Two kinds of failure, each with a :class:`~shadow.errors.Reason` ``code`` (what metrics and
dead letters count, never derived from the message):

- :class:`BodyError` — the whole body is unusable; ``status`` is the HTTP status to answer
  (400 malformed / not UTF-8 / empty / a compressed stream that does not end properly, 413
  too many records or too large once decompressed, 415 wrong content type or encoding).
- :class:`RecordError` — one record is bad; the others in the body still parse. Each names
  its ``line`` (1-based; the 1-based array index for a JSON array; 1 for a single object),
  the field ``path`` (``""`` for the whole record) and a message.

Content encodings (:func:`decode_body`): ``identity``, ``gzip`` (``x-gzip``) and ``deflate``
(zlib-wrapped or raw). A compressed body is taken only when its stream ends properly: a
truncated or corrupt one is refused whole, never read up to where it breaks.

Accepted content types: ``application/json`` (one object, or an array of objects) and
``application/x-ndjson`` / ``application/jsonl`` / ``application/json-lines`` (one object per
line; blank lines skipped; ``\\r\\n`` accepted). A ``charset`` parameter must be UTF-8. A
leading UTF-8 byte-order mark is accepted and stripped (some Windows tools write one).

Stricter than :func:`json.loads`, because an ambiguous record must never be half-understood:
duplicate keys in one object, ``NaN``/``Infinity`` literals and lone UTF-16 surrogate escapes
(``"\\ud800"``, not encodable as UTF-8) reject the record with the field path, as does any
other text :func:`shadow.checks.text_problem` refuses (control characters, NUL included, in
ids). Nesting deep enough to exhaust the parser is reported as "nested too deeply" instead
of crashing; :data:`shadow.model.MAX_DEPTH` bounds what a valid record may hold.

Repeated event ids in one body are not an error here: the store dedupes them, or
dead-letters a conflicting one.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from shadow.checks import text_problem
from shadow.errors import FieldError, Reason, ShadowError, ValidationError
from shadow.model import MAX_ID_LENGTH, Outcome, WorkEvent

__all__ = [
    "CODINGS",
    "JSON_TYPES",
    "NDJSON_TYPES",
    "RAW_LIMIT",
    "BodyError",
    "Parsed",
    "RecordError",
    "check_content_type",
    "clip_raw",
    "content_coding",
    "decode_body",
    "parse_events",
    "parse_mixed_line",
    "parse_outcomes",
    "strict_json",
]

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")
RAW_LIMIT = 2048
"""Characters of an offending record kept in :attr:`RecordError.raw` (for dead letters)."""

_ACCEPTED = (
    "use application/json (one object or an array of objects) or application/x-ndjson "
    "(one object per line; application/jsonl and application/json-lines also work)"
)
_BOM = "\ufeff"
# A lone surrogate can only come from a \uD800-\uDFFF escape (the body is valid UTF-8), so
# the full walk for one runs only when such an escape appears in the text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

R = TypeVar("R", WorkEvent, Outcome)


@dataclass(frozen=True, slots=True)
class RecordError:
    """One bad record in a body.

    ``raw`` is the offending text, clipped to :data:`RAW_LIMIT` characters, for dead letters.
    ``kind`` (``"event"``, ``"outcome"`` or ``"unknown"``) and ``event_id`` (when the record
    has a string one) are what a dead letter needs; ``code`` is why, for counting. None of
    the three is part of :meth:`to_json`. A record with several field errors yields one
    ``RecordError`` per field, sharing ``line`` (count records by ``line``, not errors).
    """

    line: int
    path: str
    message: str
    raw: str | None = None
    kind: str = "unknown"
    event_id: str | None = None
    code: Reason = Reason.INVALID

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class BodyError(ShadowError):
    """The whole body is unusable; ``status`` is the HTTP status to answer with, ``code``
    why (for counting)."""

    def __init__(self, status: int, message: str, code: Reason) -> None:
        self.status = status
        self.message = message
        self.code = code
        super().__init__(f"{status}: {message}")


@dataclass(frozen=True, slots=True)
class Parsed(Generic[R]):
    """The records of one body, in body order, and the bad ones."""

    records: list[tuple[int, R]]
    errors: list[RecordError]


def clip_raw(text: str) -> str:
    """``text`` cut to :data:`RAW_LIMIT` characters (marked when cut), safe to store as UTF-8."""
    if len(text) > RAW_LIMIT:
        text = f"{text[:RAW_LIMIT]}…[{len(text) - RAW_LIMIT} more characters]"
    return _utf8_safe(text)


# -- strict JSON ----------------------------------------------------------------------------


class _Suspect(Exception):
    """Raised by the fast decoder's hooks: decode again, marking, to find the path."""


class _DupDict(dict[str, Any]):
    """An object that had a repeated key (the lenient decoder keeps the last value)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        seen: set[str] = set()
        self.repeated = ""
        for key, _ in pairs:
            if key in seen:
                self.repeated = key
                break
            seen.add(key)


class _NonFinite(float):
    """A ``NaN`` / ``Infinity`` / ``-Infinity`` literal, marked by the lenient decoder."""

    def __new__(cls, literal: str) -> _NonFinite:
        value = super().__new__(cls, literal)
        value.literal = literal
        return value

    literal: str


def _fast_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Suspect
    return obj


def _fast_constant(literal: str) -> object:
    raise _Suspect


def _marked_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return _DupDict(pairs) if len(obj) != len(pairs) else obj


# Stateless, so one instance of each is shared (and thread-safe). The fast one handles clean
# input at near-C speed; only suspect input is decoded a second time by the marking one.
_FAST = json.JSONDecoder(object_pairs_hook=_fast_pairs, parse_constant=_fast_constant)
_MARKING = json.JSONDecoder(object_pairs_hook=_marked_pairs, parse_constant=_NonFinite)


class _Undecodable(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


_SEVERAL_IN_BODY = " (more than one JSON value; for one object per line use application/x-ndjson)"
_SEVERAL_IN_RECORD = " (more than one JSON value; expected exactly one object)"


def _decode(
    text: str,
    *,
    where: Callable[[json.JSONDecodeError], str],
    several: str = _SEVERAL_IN_BODY,
) -> tuple[Any, bool]:
    """JSON value of ``text`` and whether it may hold a marked problem (see :func:`_problem`).

    Raises :class:`_Undecodable` with a message; ``where`` renders a syntax error's position
    and ``several`` is the hint appended when more than one value follows.
    """
    try:
        try:
            return _FAST.decode(text), bool(_SURROGATE_ESCAPE.search(text))
        except _Suspect:
            return _MARKING.decode(text), True
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg == "Extra data":
            hint = several
        raise _Undecodable(f"invalid JSON at {where(e)}: {e.msg}{hint}") from None
    except RecursionError:
        raise _Undecodable("invalid JSON: nested too deeply") from None
    except ValueError as e:  # int() refusing a number of thousands of digits
        if "digits" in str(e):
            raise _Undecodable("invalid JSON: a number has too many digits") from None
        raise _Undecodable(f"invalid JSON: {e}") from None


def strict_json(text: str) -> Any:
    """One JSON value of ``text`` under the strict rules above (duplicate keys, ``NaN``, lone
    surrogates, excessive nesting refused). Raises a 400 :class:`BodyError` (``malformed``)."""
    try:
        value, suspect = _decode(text.removeprefix(_BOM), where=_line_column)
    except _Undecodable as e:
        raise BodyError(400, e.message, Reason.MALFORMED) from None
    found = _problem(value) if suspect else None
    if found is not None:
        path, message = found
        raise BodyError(400, f"{path}: {message}" if path else message, Reason.MALFORMED)
    return value


def _column(e: json.JSONDecodeError) -> str:
    return f"column {e.colno}"


def _line_column(e: json.JSONDecodeError) -> str:
    return f"line {e.lineno} column {e.colno}"


def _problem(value: object) -> tuple[str, str] | None:
    """First marked problem inside ``value`` in document order, as (path, message).

    Iterative, because a value the parser accepted may still be nested hundreds deep.
    """
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _NonFinite):
            return path, f"{node.literal} is not valid JSON; use null or a finite number"
        if isinstance(node, str):
            found = text_problem(node, path)
            if found is not None:
                return found
        elif isinstance(node, dict):
            if isinstance(node, _DupDict):
                key = node.repeated
                return _join(path, key), (
                    "key appears more than once in one JSON object; the value is ambiguous"
                )
            found = text_problem(dict.fromkeys(node), path)  # its keys; values come below
            if found is not None:
                return found
            children = [(_join(path, key), child) for key, child in node.items()]
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", node[i]) for i in range(len(node) - 1, -1, -1))
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_safe(text: str) -> str:
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode()


def _raw_json(value: object) -> str | None:
    try:
        return clip_raw(json.dumps(value, ensure_ascii=False))
    except (RecursionError, ValueError, TypeError):
        return None


def _event_id(obj: object) -> str | None:
    if isinstance(obj, dict):
        value = obj.get("event_id")
        if isinstance(value, str) and value:
            return _utf8_safe(value[:MAX_ID_LENGTH])
    return None


# -- bodies ---------------------------------------------------------------------------------


def parse_events(body: bytes, content_type: str | None, *, max_records: int) -> Parsed[WorkEvent]:
    """Work events of an ingest body. Raises :class:`BodyError`; bad records are in
    ``errors``. More than ``max_records`` records is a 413."""
    return _parse(body, content_type, max_records, WorkEvent.from_json, "event")


def parse_outcomes(body: bytes, content_type: str | None, *, max_records: int) -> Parsed[Outcome]:
    """Human outcomes of an ingest body; the same rules as :func:`parse_events`."""
    return _parse(body, content_type, max_records, Outcome.from_json, "outcome")


def _parse(
    body: bytes,
    content_type: str | None,
    max_records: int,
    build: Callable[[object], R],
    kind: str,
) -> Parsed[R]:
    ndjson = _is_ndjson(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(400, f"body is not UTF-8 at byte {e.start}", Reason.ENCODING) from None
    text = text.removeprefix(_BOM)
    if not text.strip(" \t\r\n"):
        raise BodyError(
            400, "empty body; send a JSON object, an array or NDJSON lines", Reason.MALFORMED
        )
    out: Parsed[R] = Parsed([], [])
    if ndjson:
        lines = list(_lines(text))
        if len(lines) > max_records:
            raise BodyError(413, _too_many(len(lines), max_records), Reason.TOO_LARGE)
        for lineno, line in lines:
            try:
                value, suspect = _decode(line, where=_column)
            except _Undecodable as e:
                out.errors.append(
                    RecordError(lineno, "", e.message, clip_raw(line), kind, code=Reason.MALFORMED)
                )
                continue
            _take(out, lineno, value, suspect, partial(clip_raw, line), build, kind)
        return out

    try:
        value, suspect = _decode(text, where=_line_column)
    except _Undecodable as e:
        raise BodyError(400, e.message, Reason.MALFORMED) from None
    if isinstance(value, dict):
        _take(out, 1, value, suspect, partial(clip_raw, text), build, kind)
    elif isinstance(value, list):
        if not value:
            raise BodyError(400, "empty array; send at least one record", Reason.MALFORMED)
        if len(value) > max_records:
            raise BodyError(413, _too_many(len(value), max_records), Reason.TOO_LARGE)
        for i, item in enumerate(value, start=1):
            _take(out, i, item, suspect, partial(_raw_json, item), build, kind)
    else:
        raise BodyError(
            400,
            f"expected a JSON object or an array of objects, got {_json_kind(value)}",
            Reason.MALFORMED,
        )
    return out


def _take(
    out: Parsed[R],
    line: int,
    value: object,
    suspect: bool,
    raw: Callable[[], str | None],
    build: Callable[[object], R],
    kind: str,
) -> None:
    """Validate one decoded record into ``out``. ``raw`` is called only for a bad record."""
    found = _problem(value) if suspect else None
    if found is not None:
        out.errors.append(
            RecordError(line, *found, raw(), kind, _event_id(value), Reason.MALFORMED)
        )
        return
    if not isinstance(value, dict):  # the model would add every required field as missing
        message = f"expected a JSON object, got {_json_kind(value)}"
        out.errors.append(RecordError(line, "", message, raw(), kind))
        return
    errors: list[FieldError] = []
    if "kind" in value and value["kind"] != kind:
        # Checked here, not left to the model: its message would repr() an arbitrary value.
        shown = _shown(value["kind"])
        errors.append(FieldError("kind", f'expected "{kind}", got {shown}', Reason.BAD_KIND))
        value = {k: v for k, v in value.items() if k != "kind"}
    try:
        record = build(value)
    except ValidationError as e:
        errors.extend(e.errors)
    if errors:
        text, event_id = raw(), _event_id(value)
        out.errors.extend(
            RecordError(line, f.path, f.message, text, kind, event_id, f.code) for f in errors
        )
    else:
        out.records.append((line, record))


def check_content_type(content_type: str | None) -> None:
    """Raise the 415 :class:`BodyError` that parsing a body of ``content_type`` would, before
    any of the body is read."""
    _is_ndjson(content_type)


def _is_ndjson(content_type: str | None) -> bool:
    if content_type is None or not content_type.strip():
        raise BodyError(415, f"missing Content-Type; {_ACCEPTED}", Reason.UNSUPPORTED_MEDIA_TYPE)
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                raise BodyError(
                    415,
                    f"unsupported charset {charset!r}; send UTF-8",
                    Reason.UNSUPPORTED_MEDIA_TYPE,
                )
    if media in JSON_TYPES:
        return False
    if media in NDJSON_TYPES:
        return True
    raise BodyError(
        415, f"unsupported Content-Type {media[:100]!r}; {_ACCEPTED}", Reason.UNSUPPORTED_MEDIA_TYPE
    )


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based numbers. Split on ``\\n`` only: ``str.splitlines`` would
    also split on U+2028 and friends, which JSON strings may hold unescaped."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip(" \t"):
            yield lineno, line


def _too_many(n: int, limit: int) -> str:
    return f"too many records in one body: {n}; at most {limit} (split the batch)"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- content encodings ----------------------------------------------------------------------

CODINGS = ("identity", "gzip", "x-gzip", "deflate")
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer, nothing else
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


def content_coding(content_encoding: str | None) -> str:
    """The one content coding a ``Content-Encoding`` header names, lower-cased (``identity``
    when there is none). Raises a 415 :class:`BodyError` for anything else, so a body can be
    refused before it is read."""
    coding = (content_encoding or "").strip().lower() or "identity"
    if coding in CODINGS:
        return coding
    if "," in coding:
        message = (
            f"Content-Encoding {coding[:100]!r} stacks several codings; send at most one of "
            "gzip or deflate"
        )
    else:
        message = (
            f"unsupported Content-Encoding {coding[:100]!r}; send the body as is (identity), "
            "gzip or deflate"
        )
    raise BodyError(415, message, Reason.UNSUPPORTED_MEDIA_TYPE)


def decode_body(body: bytes, content_encoding: str | None, *, max_bytes: int) -> bytes:
    """``body`` as sent, decompressed by its ``Content-Encoding``, at most ``max_bytes``.

    The whole body or nothing: a compressed stream that is corrupt, does not end (truncated,
    no gzip trailer) or is followed by other bytes is a 400, so a body cut in transit is
    never taken up to where it breaks. Several gzip members one after another are one body
    (RFC 1952). More than ``max_bytes`` once decompressed is a 413, found without
    decompressing more than ``max_bytes + 1`` bytes.
    """
    coding = content_coding(content_encoding)
    if coding == "identity":
        return body
    if not body:
        raise BodyError(400, f"empty body with Content-Encoding {coding}", Reason.MALFORMED)
    if coding == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some clients send raw deflate. The low four bits
        # of a zlib header's first byte are 8 (the deflate method).
        wbits = _ZLIB_WBITS if body[0] & 0x0F == 8 else _RAW_WBITS
    else:
        wbits = _GZIP_WBITS
    out = bytearray()
    rest = body
    while rest:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
        except zlib.error as e:
            where = "body is not" if rest is body else "bytes after the first member are not"
            raise BodyError(
                400, f"{where} valid {coding} data ({e}); nothing was stored", Reason.MALFORMED
            ) from None
        if len(out) > max_bytes:
            raise BodyError(
                413,
                f"body larger than {max_bytes} bytes once decompressed; split it or raise "
                "max_body_bytes",
                Reason.TOO_LARGE,
            )
        if not inflater.eof:
            raise BodyError(
                400,
                f"{coding} body is truncated: its compressed stream does not end; nothing was "
                "stored",
                Reason.MALFORMED,
            )
        rest = inflater.unused_data
        if rest and wbits != _GZIP_WBITS:
            raise BodyError(
                400,
                f"{len(rest)} bytes after the end of the deflate stream; nothing was stored",
                Reason.MALFORMED,
            )
    return bytes(out)


# -- mixed streams --------------------------------------------------------------------------


def parse_mixed_line(line: str, lineno: int) -> WorkEvent | Outcome | RecordError:
    """One JSONL line of a mixed stream (files): ``"kind"`` says event or outcome.

    Never raises. A trailing ``\\n`` / ``\\r\\n`` is ignored. A record with several field
    errors becomes one :class:`RecordError` with path ``""`` and every ``path: message``
    joined by ``"; "`` (a dead letter has one reason); with one error its path is kept.
    """
    return parse_record(line, lineno)


def parse_record(
    text: str, lineno: int = 1, *, kind: str | None = None
) -> WorkEvent | Outcome | RecordError:
    """One record as text: a line of a mixed stream (``kind=None``: its ``"kind"`` field
    says event or outcome) or one message of a single-kind stream (``kind="event"`` or
    ``"outcome"``, e.g. a Kafka topic; a ``"kind"`` field, if present, must agree).

    Exactly one JSON object; otherwise as :func:`parse_mixed_line` (never raises).
    """
    line = text.removesuffix("\n").removesuffix("\r")
    if not line.strip(" \t"):
        empty = "empty line" if kind is None else "empty record"
        return RecordError(lineno, "", empty, clip_raw(line), code=Reason.MALFORMED)
    try:
        value, suspect = _decode(line, where=_column, several=_SEVERAL_IN_RECORD)
    except _Undecodable as e:
        return RecordError(
            lineno, "", e.message, clip_raw(line), kind or "unknown", code=Reason.MALFORMED
        )
    # A str from a caller (not decoded from bytes here) may hold surrogates itself.
    suspect = suspect or not _encodable(line)
    if not isinstance(value, dict):
        expected = _MIXED if kind is None else "expected one JSON object"
        return RecordError(
            lineno, "", f"{expected}, got {_json_kind(value)}", clip_raw(line), kind or "unknown"
        )
    given = value.get("kind")
    if kind is None:
        known = given if given == "event" or given == "outcome" else "unknown"
    else:
        known = kind
    event_id = _event_id(value)
    found = _problem(value) if suspect else None
    if found is not None:
        return RecordError(lineno, *found, clip_raw(line), known, event_id, Reason.MALFORMED)
    if kind is None and known == "unknown":
        message = (
            'required; expected "event" or "outcome"'
            if given is None
            else f'expected "event" or "outcome", got {_shown(given)}'
        )
        return RecordError(
            lineno, "kind", message, clip_raw(line), known, event_id, Reason.BAD_KIND
        )
    try:
        return WorkEvent.from_json(value) if known == "event" else Outcome.from_json(value)
    except ValidationError as e:
        if len(e.errors) == 1:
            first = e.errors[0]
            return RecordError(
                lineno, first.path, first.message, clip_raw(line), known, event_id, first.code
            )
        # One dead letter, one reason: the first problem's code stands for the record.
        return RecordError(lineno, "", str(e), clip_raw(line), known, event_id, e.errors[0].code)


_MIXED = 'expected a JSON object with "kind": "event" or "outcome"'


def _shown(value: object) -> str:
    """A short rendering of an arbitrary JSON value for a message (never a deep repr)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)[:40]
    return _json_kind(value)
