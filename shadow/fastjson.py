"""JSON through ``orjson`` where it gives exactly what the stdlib gives, else stdlib (the
store's JSON columns; replay's history, cache rows and request text).

Contract: every function here returns what its stdlib counterpart returns, value for value,
and fails where and how the stdlib fails (same exception, same message), because on any
doubt it simply runs the stdlib call. orjson is only a faster way to the same values:

:func:`loads`
    ``json.loads``. orjson rejects what the stdlib also rejects, plus ``NaN``/``Infinity``
    literals, numbers that overflow a double (``1e400``) and lone surrogate escapes, which
    the stdlib accepts: its error sends the text to the stdlib. The one value orjson would
    parse *differently* is an integer beyond 64 bits (it returns a float): a text with 19 or
    more digits in a row that do not follow a digit or a ``.`` (an integer token, or a
    false alarm inside a string or an exponent) goes to the stdlib unparsed.
:func:`dumps_canonical`
    Deterministic JSON bytes (sorted keys, no spaces, UTF-8) of a JSON value, *injective*:
    two different values never give the same bytes. orjson writes ``NaN``/``Infinity`` as
    ``null``, so a text containing ``null`` is parsed back and compared with the value;
    when they differ (or orjson refuses the value: integers beyond 64 bits, non-string keys,
    lone surrogates, too deep), the bytes are the stdlib's canonical JSON
    (:func:`shadow.model.canonical_json` of the value, UTF-8), which spells ``NaN``. Which
    of the two forms a value gets depends only on the value, so it is deterministic too.
:func:`dumps`
    ``json.dumps(value)`` as text a JSON parser reads back to the same value (the spelling
    may differ: no spaces, raw UTF-8). orjson's output is used only when parsing it back
    gives a value equal to ``value`` (which rules out ``NaN``/``Infinity`` turned ``null``
    and tuples or other non-JSON types orjson would write differently); otherwise the
    stdlib runs, with its errors.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from shadow.model import ORJSON_STRICT, canonical_json

__all__ = ["STRICT", "dumps", "dumps_canonical", "loads"]

# Digits -> "0", "." stays, every other byte -> " ": an integer token of 19 or more digits
# (which orjson might turn into a float) becomes " " + 19 zeros; fraction digits follow ".".
# (bytes.translate and a substring search: a few times faster than any regex here.)
_DIGITS = bytes(48 if 48 <= b <= 57 else 46 if b == 46 else 32 for b in range(256))
_LONG_INTEGER = b" " + b"0" * 19
_SORTED = orjson.OPT_SORT_KEYS
STRICT = ORJSON_STRICT  # orjson's options that send non-JSON objects to the stdlib


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, faster; see the module doc."""
    raw = b" " + (text.encode(errors="surrogatepass") if isinstance(text, str) else text)
    if _LONG_INTEGER not in raw.translate(_DIGITS):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the stdlib decides: it accepts a few things orjson refuses, or says why not
    return json.loads(text)


def dumps_canonical(value: Any) -> bytes:
    """Canonical, injective JSON bytes of a JSON value; see the module doc."""
    try:
        out = orjson.dumps(value, option=_SORTED | STRICT)
    except orjson.JSONEncodeError:
        return canonical_json(value).encode()
    if b"null" in out and orjson.loads(out) != value:  # NaN or Infinity written as null
        return canonical_json(value).encode()
    return out


def dumps(value: Any) -> str:
    """JSON text of ``value`` that parses back to an equal value; see the module doc."""
    try:
        out = orjson.dumps(value, option=STRICT)
    except orjson.JSONEncodeError:
        return json.dumps(value)
    if orjson.loads(out) != value:
        return json.dumps(value)
    return out.decode()
