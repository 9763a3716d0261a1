from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.errors import Reason, ShadowError
from shadow.ingest import (
    RAW_LIMIT,
    BodyError,
    Parsed,
    RecordError,
    clip_raw,
    decode_body,
    parse_events,
    parse_mixed_line,
    parse_outcomes,
)
from shadow.model import MAX_DEPTH, Outcome, WorkEvent

JSON = "application/json"
NDJSON = "application/x-ndjson"

EVENT: dict[str, object] = {
    "event_id": "r-1",
    "task_type": "refund_request",
    "payload": {"amount": 42.5},
}
OUTCOME: dict[str, object] = {"event_id": "r-1", "decision": {"action": "approve"}}


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def nd(*lines: str | Mapping[str, object], sep: str = "\n") -> bytes:
    return sep.join(x if isinstance(x, str) else dumps(x) for x in lines).encode()


def events(body: bytes, content_type: str | None = NDJSON, limit: int = 100) -> Parsed[WorkEvent]:
    return parse_events(body, content_type, max_records=limit)


def body_error(body: bytes, content_type: str | None = JSON, limit: int = 100) -> BodyError:
    with pytest.raises(BodyError) as exc:
        parse_events(body, content_type, max_records=limit)
    return exc.value


def errors(parsed: Parsed[WorkEvent] | Parsed[Outcome]) -> list[tuple[int, str, str]]:
    return [(e.line, e.path, e.message) for e in parsed.errors]


# -- content type ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        'Application/JSON;Charset="UTF-8"',
        "application/json; charset=utf8; profile=x",
    ],
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    parsed = events(dumps(EVENT).encode(), content_type)
    assert parsed.records == [(1, WorkEvent.from_json(EVENT))]
    assert parsed.errors == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-ndjson",
        "application/jsonl",
        "application/json-lines",
        "application/x-ndjson; charset=UTF-8",
    ],
)
def test_ndjson_content_types_are_accepted(content_type: str) -> None:
    parsed = events(nd(EVENT, {**EVENT, "event_id": "r-2"}), content_type)
    assert [(line, e.event_id) for line, e in parsed.records] == [(1, "r-1"), (2, "r-2")]


@pytest.mark.parametrize("content_type", [None, "", "   "])
def test_missing_content_type_is_415_naming_the_accepted_types(content_type: str | None) -> None:
    err = body_error(dumps(EVENT).encode(), content_type)
    assert err.status == 415
    assert err.message.startswith("missing Content-Type; use application/json")
    for accepted in ("application/json", "application/x-ndjson", "application/jsonl"):
        assert accepted in err.message


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "multipart/form-data", "application/jsn"]
)
def test_unknown_content_type_is_415(content_type: str) -> None:
    err = body_error(dumps(EVENT).encode(), content_type)
    assert err.status == 415
    assert err.message.startswith(f"unsupported Content-Type {content_type!r}; use ")


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", '"iso-8859-1"', ""])
def test_charset_other_than_utf8_is_415(charset: str) -> None:
    err = body_error(dumps(EVENT).encode(), f"application/json; charset={charset}")
    assert err.status == 415
    assert err.message == f"unsupported charset {charset.strip(chr(34))!r}; send UTF-8"


def test_content_type_is_checked_before_the_body() -> None:
    assert body_error(b"", "text/plain").status == 415


# -- whole-body errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", JSON),
        (b"  \r\n\t", JSON),
        (b"\xef\xbb\xbf", JSON),
        (b"", NDJSON),
        (b"\n\n  \r\n", NDJSON),
    ],
)
def test_empty_body_is_400(body: bytes, content_type: str) -> None:
    err = body_error(body, content_type)
    assert (err.status, err.message) == (
        400,
        "empty body; send a JSON object, an array or NDJSON lines",
    )


@pytest.mark.parametrize("content_type", [JSON, NDJSON])
def test_non_utf8_body_is_400_with_the_byte_offset(content_type: str) -> None:
    err = body_error(b'{"event_id": "r\xff"}', content_type)
    assert (err.status, err.message) == (400, "body is not UTF-8 at byte 15")


def test_encoded_surrogates_are_not_utf8() -> None:
    assert body_error(b'{"a": "\xed\xa0\x80"}').message == "body is not UTF-8 at byte 7"


def test_bom_is_accepted_and_stripped() -> None:
    bom = b"\xef\xbb\xbf"
    assert events(bom + dumps(EVENT).encode(), JSON).records[0][1].event_id == "r-1"
    parsed = events(bom + nd(EVENT, EVENT))
    assert [line for line, _ in parsed.records] == [1, 2]
    assert parsed.errors == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"event_id": ', "invalid JSON at line 1 column 14: Expecting value"),
        (
            b'{\n"a": 1,\n}',
            "invalid JSON at line 3 column 1: Expecting property name enclosed in double quotes",
        ),
        (b"[1, 2", "invalid JSON at line 1 column 6: Expecting ',' delimiter"),
        (
            b"{'a': 1}",
            "invalid JSON at line 1 column 2: Expecting property name enclosed in double quotes",
        ),
        (
            b'{"a":1}\n{"b":2}',
            "invalid JSON at line 2 column 1: Extra data (more than one JSON value; "
            "for one object per line use application/x-ndjson)",
        ),
    ],
)
def test_malformed_json_body_is_400_with_the_position(body: bytes, message: str) -> None:
    err = body_error(body)
    assert (err.status, err.message) == (400, message)


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"42", "a number"), (b'"x"', "a string"), (b"null", "null"), (b"true", "a boolean")],
)
def test_json_that_is_not_an_object_or_array_is_400(body: bytes, kind: str) -> None:
    err = body_error(body)
    assert (err.status, err.message) == (
        400,
        f"expected a JSON object or an array of objects, got {kind}",
    )


def test_empty_array_is_400() -> None:
    err = body_error(b" [ ] ")
    assert (err.status, err.message) == (400, "empty array; send at least one record")


def test_too_many_records_is_413() -> None:
    array = json.dumps([EVENT] * 4).encode()
    assert len(events(array, JSON, limit=4).records) == 4
    err = body_error(array, JSON, limit=3)
    assert (err.status, err.message) == (
        413,
        "too many records in one body: 4; at most 3 (split the batch)",
    )
    lines = nd(EVENT, "", EVENT, "   ", EVENT, "{bad")
    assert len(events(lines, limit=4).records) == 3  # blank lines are not records
    err = body_error(lines, NDJSON, limit=3)
    assert (err.status, err.message) == (
        413,
        "too many records in one body: 4; at most 3 (split the batch)",
    )


def test_huge_number_is_400_not_a_crash() -> None:
    body = b'{"event_id": 1' + b"0" * 5000 + b"}"
    err = body_error(body)
    assert (err.status, err.message) == (400, "invalid JSON: a number has too many digits")
    parsed = events(nd(EVENT, body.decode()))
    assert errors(parsed) == [(2, "", "invalid JSON: a number has too many digits")]


def test_body_error_is_a_shadow_error() -> None:
    err = BodyError(413, "too big", Reason.TOO_LARGE)
    assert isinstance(err, ShadowError)
    assert (err.status, err.message, str(err)) == (413, "too big", "413: too big")
    assert err.code is Reason.TOO_LARGE


# -- records --------------------------------------------------------------------------------


def test_single_object_with_field_errors_is_record_errors_on_line_1() -> None:
    parsed = events(b'{"event_id": 7, "payload": []}', JSON)
    assert parsed.records == []
    assert errors(parsed) == [
        (1, "event_id", "expected a non-empty string, got a number (7)"),
        (1, "task_type", "required; expected a non-empty string"),
        (1, "payload", "expected a JSON object, got an array"),
    ]
    assert {e.raw for e in parsed.errors} == {'{"event_id": 7, "payload": []}'}
    assert {e.kind for e in parsed.errors} == {"event"}


def test_json_array_lines_are_1_based_indexes() -> None:
    bad = {"event_id": "r-2", "task_type": "refund_request"}
    body = json.dumps([EVENT, bad, [1], {**EVENT, "event_id": "r-4"}]).encode()
    parsed = events(body, JSON)
    assert [(line, e.event_id) for line, e in parsed.records] == [(1, "r-1"), (4, "r-4")]
    assert errors(parsed) == [
        (2, "payload", "required; expected a JSON object"),
        (3, "", "expected a JSON object, got an array"),
    ]
    assert parsed.errors[0].raw == dumps(bad).replace(",", ", ").replace(":", ": ")
    assert parsed.errors[0].event_id == "r-2"
    assert parsed.errors[1].raw == "[1]"


def test_ndjson_bad_lines_do_not_stop_the_others() -> None:
    body = nd(
        EVENT,
        "",
        "{bad",
        {"event_id": "r-4", "task_type": "refund_request"},
        "   ",
        "[1, 2]",
        '"just a string"',
        {**EVENT, "event_id": "r-8"},
    )
    parsed = events(body)
    assert [(line, e.event_id) for line, e in parsed.records] == [(1, "r-1"), (8, "r-8")]
    assert errors(parsed) == [
        (3, "", "invalid JSON at column 2: Expecting property name enclosed in double quotes"),
        (4, "payload", "required; expected a JSON object"),
        (6, "", "expected a JSON object, got an array"),
        (7, "", "expected a JSON object, got a string"),
    ]
    assert [e.raw for e in parsed.errors][:1] == ["{bad"]


def test_ndjson_column_is_counted_in_the_line() -> None:
    parsed = events(nd(EVENT, '  {"event_id" "x"}'))
    assert errors(parsed) == [(2, "", "invalid JSON at column 15: Expecting ':' delimiter")]


def test_crlf_line_endings() -> None:
    parsed = events(nd(EVENT, "", "{bad", {**EVENT, "event_id": "r-4"}, "", sep="\r\n"))
    assert [line for line, _ in parsed.records] == [1, 4]
    assert [(e.line, e.raw) for e in parsed.errors] == [(3, "{bad")]


def test_ndjson_lines_split_on_newline_only() -> None:
    # U+2028 may appear unescaped in a JSON string; it must not split the record.
    event = {**EVENT, "payload": {"note": "a\u2028b\x85c"}}
    body = json.dumps(event, ensure_ascii=False).encode() + b"\n"
    parsed = events(body)
    assert parsed.errors == []
    assert parsed.records[0][1].payload == {"note": "a\u2028b\x85c"}


def test_duplicate_event_ids_in_one_batch_are_not_an_error() -> None:
    parsed = events(nd(EVENT, EVENT, {**EVENT, "payload": {"amount": 1}}))
    assert [line for line, _ in parsed.records] == [1, 2, 3]
    assert parsed.errors == []


def test_outcomes_parse_with_the_same_rules() -> None:
    body = nd(OUTCOME, {"event_id": "r-2"}, {**OUTCOME, "kind": "outcome"})
    parsed = parse_outcomes(body, NDJSON, max_records=10)
    assert [line for line, _ in parsed.records] == [1, 3]
    assert parsed.records[0][1] == Outcome.from_json(OUTCOME)
    assert errors(parsed) == [(2, "decision", "required; expected a JSON object")]
    assert parsed.errors[0].kind == "outcome"
    single = parse_outcomes(dumps(OUTCOME).encode(), JSON, max_records=1)
    assert single.records == [(1, Outcome.from_json(OUTCOME))]


def test_kind_must_match_the_endpoint() -> None:
    parsed = events(nd({**EVENT, "kind": "event"}, {**EVENT, "kind": "outcome"}))
    assert [line for line, _ in parsed.records] == [1]
    assert errors(parsed) == [(2, "kind", "expected \"event\", got 'outcome'")]

    allowed = (
        "actions, decided_at, decided_by, decision, event_id, handled_by, kind, second_opinion"
    )
    parsed_outcomes = parse_outcomes(nd({**EVENT, "kind": "event"}), NDJSON, max_records=5)
    assert errors(parsed_outcomes) == [
        (1, "kind", "expected \"outcome\", got 'event'"),
        (1, "task_type", f"unknown field; allowed: {allowed}"),
        (1, "payload", f"unknown field; allowed: {allowed}"),
        (1, "decision", "required; expected a JSON object"),
    ]


@pytest.mark.parametrize(
    ("kind", "shown"),
    [
        (None, "null"),
        (7, "7"),
        ([[[]]], "an array"),
        ({"a": 1}, "an object"),
        ("x" * 100, repr("x" * 40 + "…")),
    ],
)
def test_kind_mismatch_message_stays_short(kind: object, shown: str) -> None:
    parsed = events(nd({**EVENT, "kind": kind}))
    assert errors(parsed) == [(1, "kind", f'expected "event", got {shown}')]


# -- hostile JSON ---------------------------------------------------------------------------


def test_absurd_nesting_is_reported_not_crashed() -> None:
    deep_array = "[" * 100_000 + "]" * 100_000
    err = body_error(deep_array.encode())
    assert (err.status, err.message) == (400, "invalid JSON: nested too deeply")
    deep_object = '{"a":' * 100_000 + "1" + "}" * 100_000
    assert body_error(deep_object.encode()).message == "invalid JSON: nested too deeply"

    parsed = events(nd(EVENT, deep_array, '{"payload": ' + deep_object + "}", EVENT))
    assert [line for line, _ in parsed.records] == [1, 4]
    assert errors(parsed) == [
        (2, "", "invalid JSON: nested too deeply"),
        (3, "", "invalid JSON: nested too deeply"),
    ]
    assert parsed.errors[0].raw is not None
    assert len(parsed.errors[0].raw) < RAW_LIMIT + 100


def test_nesting_past_max_depth_is_a_field_error() -> None:
    payload = "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)
    body = '{"event_id": "r-1", "task_type": "t", "payload": {"x": ' + payload + "}}"
    parsed = events(body.encode(), JSON)
    ((line, path, message),) = errors(parsed)
    assert (line, message) == (1, f"nested deeper than {MAX_DEPTH} levels")
    assert path.startswith("payload.x[0][0]")


def test_deep_value_in_an_unchecked_spot_does_not_crash() -> None:
    deep = "[" * 500 + "]" * 500
    body = '{"event_id": "r-1", "task_type": "t", "payload": {}, "kind": ' + deep + "}"
    assert errors(events(body.encode(), JSON)) == [(1, "kind", 'expected "event", got an array')]
    line = '{"kind": ' + deep + "}"
    result = parse_mixed_line(line, 1)
    assert isinstance(result, RecordError)
    assert (result.path, result.message) == ("kind", 'expected "event" or "outcome", got an array')


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('{"event_id": "a", "event_id": "b", "task_type": "t", "payload": {}}', "event_id"),
        (
            '{"event_id": "a", "task_type": "t", '
            '"payload": {"customer": {"email": "x", "email": "y"}}}',
            "payload.customer.email",
        ),
        (
            '{"event_id": "a", "task_type": "t", "payload": {"items": [{}, {"k": 1, "k": 1}]}}',
            "payload.items[1].k",
        ),
    ],
)
def test_duplicate_keys_reject_the_record_with_the_path(body: str, path: str) -> None:
    for content_type in (JSON, NDJSON):
        parsed = events(body.encode(), content_type)
        assert parsed.records == []
        assert errors(parsed) == [
            (1, path, "key appears more than once in one JSON object; the value is ambiguous")
        ]


def test_duplicate_keys_in_an_array_reject_only_that_element() -> None:
    body = "[" + dumps(EVENT) + ', {"event_id": "x", "event_id": "y"}, ' + dumps(EVENT) + "]"
    parsed = events(body.encode(), JSON)
    assert [line for line, _ in parsed.records] == [1, 3]
    assert [(e.line, e.path, e.event_id) for e in parsed.errors] == [(2, "event_id", "y")]
    assert parsed.errors[0].raw == '{"event_id": "y"}'


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_rejected(literal: str) -> None:
    body = '{"event_id": "r-1", "task_type": "t", "payload": {"amount": ' + literal + "}}"
    expected = [(1, "payload.amount", f"{literal} is not valid JSON; use null or a finite number")]
    assert errors(events(body.encode(), JSON)) == expected
    assert errors(events(body.encode(), NDJSON)) == expected
    array = events(("[" + body + "]").encode(), JSON)
    assert errors(array) == expected
    assert array.errors[0].raw is not None
    assert literal in array.errors[0].raw


def test_number_overflowing_to_infinity_is_rejected_by_the_model() -> None:
    body = b'{"event_id": "r-1", "task_type": "t", "payload": {"amount": 1e999}}'
    assert errors(events(body, JSON)) == [(1, "payload.amount", "numbers must be finite")]


def test_lone_surrogate_escape_is_rejected() -> None:
    body = rb'{"event_id": "r-\ud800", "task_type": "t", "payload": {}}'
    parsed = events(body, JSON)
    assert errors(parsed) == [
        (
            1,
            "event_id",
            "string holds a lone UTF-16 surrogate \\ud800 at index 2; not valid Unicode",
        )
    ]
    assert parsed.errors[0].event_id == "r-\\ud800"  # made safe to store
    key = rb'{"event_id": "r-1", "task_type": "t", "payload": {"\udc00": 1}}'
    assert errors(events(key, JSON)) == [
        (
            1,
            "payload",
            "object key holds a lone UTF-16 surrogate \\udc00 at index 0; not valid Unicode",
        )
    ]


def test_mixed_line_with_a_surrogate_character_is_rejected() -> None:
    line = dumps({**EVENT, "kind": "event", "payload": {"x": "\udc80"}}).replace(
        "\\udc80", "\udc80"
    )
    result = parse_mixed_line(line, 1)
    assert isinstance(result, RecordError)
    assert (result.path, result.kind) == ("payload.x", "event")
    assert result.raw is not None
    result.raw.encode("utf-8")


def test_surrogate_pair_escape_is_fine() -> None:
    body = rb'{"event_id": "r-1", "task_type": "t", "payload": {"e": "\ud83d\ude00"}}'
    parsed = events(body, JSON)
    assert parsed.errors == []
    assert parsed.records[0][1].payload == {"e": "\U0001f600"}


# -- record errors --------------------------------------------------------------------------


def test_record_error_json_and_str() -> None:
    err = RecordError(3, "payload.x", "bad", raw="{}", kind="event", event_id="r-1")
    assert err.to_json() == {"line": 3, "path": "payload.x", "message": "bad"}
    assert str(err) == "payload.x: bad"
    assert str(RecordError(1, "", "invalid JSON", None)) == "invalid JSON"


def test_raw_is_clipped() -> None:
    assert clip_raw("abc") == "abc"
    long = "x" * (RAW_LIMIT + 10)
    assert clip_raw(long) == "x" * RAW_LIMIT + "…[10 more characters]"
    line = '{"event_id": "r-1", "pad": "' + "p" * 10_000 + '"'
    (err,) = events(nd(line)).errors
    assert err.raw == clip_raw(line)
    assert err.raw.endswith(f"…[{len(line) - RAW_LIMIT} more characters]")


# -- mixed lines ----------------------------------------------------------------------------


def test_mixed_line_gives_events_and_outcomes() -> None:
    assert parse_mixed_line(dumps({**EVENT, "kind": "event"}), 1) == WorkEvent.from_json(EVENT)
    assert parse_mixed_line(dumps({**OUTCOME, "kind": "outcome"}) + "\r\n", 2) == (
        Outcome.from_json(OUTCOME)
    )


@pytest.mark.parametrize(
    ("line", "path", "message", "kind", "event_id", "code"),
    [
        ("", "", "empty line", "unknown", None, Reason.MALFORMED),
        ("  \t", "", "empty line", "unknown", None, Reason.MALFORMED),
        (
            "{bad",
            "",
            "invalid JSON at column 2: Expecting property name enclosed in double quotes",
            "unknown",
            None,
            Reason.MALFORMED,
        ),
        (
            "[1]",
            "",
            'expected a JSON object with "kind": "event" or "outcome", got an array',
            "unknown",
            None,
            Reason.INVALID,
        ),
        (
            dumps(EVENT),
            "kind",
            'required; expected "event" or "outcome"',
            "unknown",
            "r-1",
            Reason.BAD_KIND,
        ),
        (
            dumps({**EVENT, "kind": "evnt"}),
            "kind",
            'expected "event" or "outcome", got \'evnt\'',
            "unknown",
            "r-1",
            Reason.BAD_KIND,
        ),
        (
            dumps({**EVENT, "kind": None}),
            "kind",
            'required; expected "event" or "outcome"',
            "unknown",
            "r-1",
            Reason.BAD_KIND,
        ),
        (
            dumps({"kind": "outcome", "event_id": "r-1"}),
            "decision",
            "required; expected a JSON object",
            "outcome",
            "r-1",
            Reason.INVALID,
        ),
        (
            '{"kind": "event", "kind": "outcome", "event_id": "r-1"}',
            "kind",
            "key appears more than once in one JSON object; the value is ambiguous",
            "outcome",
            "r-1",
            Reason.MALFORMED,
        ),
        (
            '{"kind": "event", "event_id": "r-1", "task_type": "t", "payload": {"a": NaN}}',
            "payload.a",
            "NaN is not valid JSON; use null or a finite number",
            "event",
            "r-1",
            Reason.MALFORMED,
        ),
    ],
)
def test_mixed_line_errors(
    line: str, path: str, message: str, kind: str, event_id: str | None, code: Reason
) -> None:
    result = parse_mixed_line(line, 7)
    assert result == RecordError(7, path, message, line, kind, event_id, code)


def test_mixed_line_with_several_field_errors_joins_them() -> None:
    result = parse_mixed_line('{"kind": "event", "event_id": 3}', 2)
    assert isinstance(result, RecordError)
    assert (result.line, result.path, result.kind) == (2, "", "event")
    assert result.message == (
        "event_id: expected a non-empty string, got a number (3); "
        "task_type: required; expected a non-empty string; "
        "payload: required; expected a JSON object"
    )


# -- reason codes ---------------------------------------------------------------------------


def test_record_errors_carry_a_code_not_read_from_their_message() -> None:
    """The code is set where the problem is found: a field that is "too long" is an invalid
    record, not a body too large; a message mentioning "kind" is not a bad kind."""
    long_id = {**EVENT, "event_id": "x" * 300}
    parsed = events(
        nd(
            long_id,
            "{oops",
            {**EVENT, "kind": "outcome"},
            '{"event_id": "r-4", "task_type": "t", "payload": {"a": NaN}}',
            {"event_id": 5, "payload": []},
        )
    )
    codes = [(e.line, e.path, e.code) for e in parsed.errors]
    assert codes == [
        (1, "event_id", Reason.INVALID),
        (2, "", Reason.MALFORMED),
        (3, "kind", Reason.BAD_KIND),
        (4, "payload.a", Reason.MALFORMED),
        (5, "event_id", Reason.INVALID),
        (5, "task_type", Reason.INVALID),
        (5, "payload", Reason.INVALID),
    ]
    assert "too long" in parsed.errors[0].message
    mixed = parse_mixed_line('[{"kind": "event"}]', 1)
    assert isinstance(mixed, RecordError)
    assert '"kind"' in mixed.message
    assert mixed.code is Reason.INVALID
    several = parse_mixed_line('{"kind": "event", "event_id": "r-1", "kind": "x"}', 1)
    assert isinstance(several, RecordError)
    assert several.code is Reason.MALFORMED


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"a": "\xff"}', JSON, 400, Reason.ENCODING),
        (b"", JSON, 400, Reason.MALFORMED),
        (b"[1", JSON, 400, Reason.MALFORMED),
        (b"{}\n{}\n{}", NDJSON, 413, Reason.TOO_LARGE),
        (b"{}", "text/plain", 415, Reason.UNSUPPORTED_MEDIA_TYPE),
    ],
)
def test_body_errors_carry_a_code(
    body: bytes, content_type: str, status: int, code: Reason
) -> None:
    err = body_error(body, content_type, limit=2)
    assert (err.status, err.code) == (status, code)


# -- content encodings ----------------------------------------------------------------------

HUNDRED = b"".join(dumps({**EVENT, "event_id": f"r-{i}"}).encode() + b"\n" for i in range(100))


def cut_after_record_50(wbits: int) -> bytes:
    """A compressed stream of 100 records cut after record 50: everything up to there
    decompresses (a sync flush), but the stream has no end (no gzip trailer)."""
    lines = HUNDRED.splitlines(keepends=True)
    deflater = zlib.compressobj(wbits=wbits)
    head = deflater.compress(b"".join(lines[:50])) + deflater.flush(zlib.Z_SYNC_FLUSH)
    assert zlib.decompressobj(wbits).decompress(head) == b"".join(lines[:50])
    return head


def test_gzip_and_deflate_bodies_are_decoded() -> None:
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = raw_deflate.compress(HUNDRED) + raw_deflate.flush()
    limit = len(HUNDRED)
    assert decode_body(gzip.compress(HUNDRED), "gzip", max_bytes=limit) == HUNDRED
    assert decode_body(gzip.compress(HUNDRED), " X-GZIP ", max_bytes=limit) == HUNDRED
    assert decode_body(zlib.compress(HUNDRED), "deflate", max_bytes=limit) == HUNDRED
    assert decode_body(raw, "deflate", max_bytes=limit) == HUNDRED
    assert decode_body(HUNDRED, None, max_bytes=1) == HUNDRED  # identity: not its job
    assert decode_body(HUNDRED, "identity", max_bytes=1) == HUNDRED
    half = len(HUNDRED) // 2
    members = gzip.compress(HUNDRED[:half]) + gzip.compress(HUNDRED[half:])
    assert decode_body(members, "gzip", max_bytes=limit) == HUNDRED  # RFC 1952 members


@pytest.mark.parametrize(
    ("body", "coding", "says"),
    [
        (cut_after_record_50(16 + zlib.MAX_WBITS), "gzip", "truncated"),
        (gzip.compress(HUNDRED)[:-8], "gzip", "truncated"),  # the trailer cut off
        (cut_after_record_50(zlib.MAX_WBITS), "deflate", "truncated"),
        (HUNDRED, "gzip", "not valid gzip"),  # says gzip, is plain text
        (HUNDRED, "deflate", "not valid deflate"),
        (gzip.compress(HUNDRED) + b"junk", "gzip", "after the first member"),
        (zlib.compress(HUNDRED) + b"junk", "deflate", "after the end"),
        (b"", "gzip", "empty body"),
    ],
)
def test_a_compressed_body_that_does_not_end_properly_is_refused_whole(
    body: bytes, coding: str, says: str
) -> None:
    with pytest.raises(BodyError) as exc:
        decode_body(body, coding, max_bytes=10 * len(HUNDRED))
    assert (exc.value.status, exc.value.code) == (400, Reason.MALFORMED)
    assert says in exc.value.message


@pytest.mark.parametrize(
    ("coding", "says"),
    [("br", "unsupported Content-Encoding 'br'"), ("gzip, deflate", "stacks several")],
)
def test_unsupported_encodings_are_415(coding: str, says: str) -> None:
    with pytest.raises(BodyError) as exc:
        decode_body(gzip.compress(HUNDRED), coding, max_bytes=10 * len(HUNDRED))
    assert (exc.value.status, exc.value.code) == (415, Reason.UNSUPPORTED_MEDIA_TYPE)
    assert says in exc.value.message


def test_the_decompressed_size_is_bounded() -> None:
    bomb = gzip.compress(b"0" * 10_000_000)
    with pytest.raises(BodyError) as exc:
        decode_body(bomb, "gzip", max_bytes=4096)
    assert (exc.value.status, exc.value.code) == (413, Reason.TOO_LARGE)
    assert "larger than 4096 bytes once decompressed" in exc.value.message
    assert decode_body(gzip.compress(b"0" * 4096), "gzip", max_bytes=4096) == b"0" * 4096


# -- properties -----------------------------------------------------------------------------

TOKENS = [
    "{", "}", "[", "]", ":", ",", " ", "\n", "\r\n", '"', "\\", "\\u", "d800", "0", "-1",
    "1e999", "NaN", "Infinity", "true", "null", '"event_id"', '"task_type"', '"payload"',
    '"decision"', '"kind"', '"event"', '"outcome"', '"r-1"', '"refund"', "\ufeff", "\u2028",
]  # fmt: skip
CONTENT_TYPES = [JSON, NDJSON, "application/jsonl; charset=utf-8", None, "text/plain"]


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from(TOKENS), max_size=60).map(lambda t: "".join(t).encode()),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ),
    content_type=st.sampled_from(CONTENT_TYPES),
    limit=st.integers(1, 5),
)
def test_parse_never_raises_anything_but_body_error(
    body: bytes, content_type: str | None, limit: int
) -> None:
    for parse in (parse_events, parse_outcomes):
        parsed = _attempt(parse, body, content_type, limit)
        if isinstance(parsed, BodyError):
            assert parsed.status in (400, 413, 415)
            continue
        lines = {line for line, _ in parsed.records}
        bad = {e.line for e in parsed.errors}
        assert not lines & bad  # a record is either taken or rejected
        assert len(lines) + len(bad) <= limit
        for err in parsed.errors:
            assert err.raw is None or len(err.raw) <= RAW_LIMIT + 40
            (err.raw or "").encode("utf-8")  # always storable


def _attempt(
    parse: Callable[..., Parsed[WorkEvent] | Parsed[Outcome]],
    body: bytes,
    content_type: str | None,
    limit: int,
) -> Parsed[WorkEvent] | Parsed[Outcome] | BodyError:
    try:
        return parse(body, content_type, max_records=limit)
    except BodyError as e:
        return e


@settings(max_examples=300, deadline=None)
@given(
    line=st.one_of(
        st.text(max_size=200),
        st.lists(st.sampled_from(TOKENS), max_size=60).map("".join),
    )
)
def test_mixed_line_never_raises(line: str) -> None:
    result = parse_mixed_line(line, 1)
    assert isinstance(result, WorkEvent | Outcome | RecordError)
