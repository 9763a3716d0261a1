"""shadow/mirror.py: the mirror: rules, parsed strictly, matched and turned into records."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from shadow.errors import PolicyError, Reason
from shadow.mirror import Captured, MirrorError, build, match
from shadow.model import Outcome, WorkEvent
from shadow.policy import Policy, parse_policy

RULES = """
task_types:
  refund_request: {}
mirror:
  - match: {method: POST, path: "/refunds"}
    kind: event
    task_type: refund_request
    event_id: body.refund_id
    payload: body
    segment: header.X-Region
  - match: {method: PUT, path: "/refunds/{id}/decision"}
    kind: outcome
    event_id: path.id
    decision: body.decision
    actions: body.actions
    decided_by: header.X-User
  - match: {method: POST, path: "/forms/{id}"}
    name: form refunds
    kind: event
    task_type: refund_request
    event_id: path.id
    payload: {amount: body.amount, reason: body.reason, tags: body.tag, first: "body.items[0]"}
  - match: {method: POST, path: "/decide/{id}"}
    kind: outcome
    event_id: path.id
    decision: {action: response.body.result, status: response.status}
"""
MAX = 1 << 20


def policy() -> Policy:
    return parse_policy(RULES)


def seen(
    method: str,
    path: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    query: dict[str, str] | None = None,
    response: object = None,
) -> Captured:
    hdrs = {
        "content-type": "application/json",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    resp = b"" if response is None else json.dumps(response).encode()
    return Captured(
        method,
        path,
        query or {},
        hdrs,
        data,
        200 if response is not None else None,
        {"content-type": "application/json"},
        resp,
    )


def record(c: Captured, *, with_response: bool = False) -> WorkEvent | Outcome:
    p = policy()
    found = match(p.mirror, c.method, c.path, with_response=with_response)
    assert found is not None
    return build(found[0], found[1], c, max_bytes=MAX)


def refused(c: Captured, *, with_response: bool = False) -> MirrorError:
    with pytest.raises(MirrorError) as info:
        record(c, with_response=with_response)
    return info.value


def test_the_contract_rules_make_an_event_and_an_outcome() -> None:
    body = {"refund_id": "r-1", "amount": 42.5, "customer": {"email": "a@b"}}
    ev = record(seen("POST", "/refunds", body, headers={"X-Region": "eu"}))
    assert ev == WorkEvent("r-1", "refund_request", body, None, "eu")
    decision = {"decision": {"action": "approve"}, "actions": [{"tool": "refund", "args": {}}]}
    out = record(seen("PUT", "/refunds/r-1/decision", decision, headers={"X-User": "ops/jane"}))
    assert isinstance(out, Outcome)
    assert (out.event_id, out.decision, out.decided_by) == (
        "r-1",
        {"action": "approve"},
        "ops/jane",
    )
    assert [a.tool for a in out.actions] == ["refund"]


def test_an_integer_event_id_is_its_decimal_text_and_a_trailing_slash_matches() -> None:
    ev = record(seen("POST", "/refunds/", {"refund_id": 1029}))
    assert isinstance(ev, WorkEvent)
    assert ev.event_id == "1029"


def test_form_bodies_map_fields_and_keep_repeated_names_as_lists() -> None:
    raw = b"amount=12.5&reason=late&tag=a&tag=b&items=x"
    c = seen(
        "POST", "/forms/f-1", raw=raw, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    ev = record(c)
    assert isinstance(ev, WorkEvent)
    # Form values are text; body.items[0] indexes a list, and "x" is not one.
    assert ev.payload == {"amount": "12.5", "reason": "late", "tags": ["a", "b"]}


def test_a_compressed_body_is_read_and_a_truncated_one_refused() -> None:
    data = gzip.compress(json.dumps({"refund_id": "g-1"}).encode())
    ev = record(seen("POST", "/refunds", raw=data, headers={"Content-Encoding": "gzip"}))
    assert ev.event_id == "g-1"
    err = refused(seen("POST", "/refunds", raw=data[:-6], headers={"Content-Encoding": "gzip"}))
    assert err.code is Reason.MALFORMED


@pytest.mark.parametrize(
    ("captured", "code", "words"),
    [
        (seen("POST", "/refunds", raw=b"not json"), Reason.MALFORMED, "invalid JSON"),
        (
            seen("POST", "/refunds", raw=b'{"refund_id": "a", "refund_id": "b"}'),
            Reason.MALFORMED,
            "more than once",
        ),
        (seen("POST", "/refunds", {"amount": 1}), Reason.INVALID, "nothing at body.refund_id"),
        (seen("POST", "/refunds", {"refund_id": True}), Reason.INVALID, "event_id"),
        (seen("POST", "/refunds", {"refund_id": "x" * 300}), Reason.INVALID, "too long"),
        (seen("POST", "/refunds", raw=b"\xff\xfe"), Reason.ENCODING, "not UTF-8"),
        (
            seen("POST", "/refunds", raw=b"a", headers={"Content-Type": "text/plain"}),
            Reason.UNSUPPORTED_MEDIA_TYPE,
            "JSON or form",
        ),
        (seen("PUT", "/refunds/r-1/decision", {"decision": "approve"}), Reason.INVALID, "decision"),
        (seen("PUT", "/refunds/r-1/decision", {}), Reason.INVALID, "nothing at body.decision"),
    ],
)
def test_bad_input_is_refused_with_a_code_and_the_field(
    captured: Captured, code: Reason, words: str
) -> None:
    err = refused(captured)
    assert err.code is code
    assert words in err.message


def test_a_refused_record_keeps_what_it_had_for_the_dead_letter() -> None:
    err = refused(seen("POST", "/refunds", {"amount": 1, "customer": {"email": "a@b"}}))
    assert err.value == {
        "kind": "event",
        "task_type": "refund_request",
        "payload": {"amount": 1, "customer": {"email": "a@b"}},
    }


def test_rules_that_read_the_response_need_one() -> None:
    p = policy()
    assert match(p.mirror, "POST", "/decide/d-1", with_response=False) is None
    out = record(seen("POST", "/decide/d-1", {}, response={"result": "deny"}), with_response=True)
    assert isinstance(out, Outcome)
    assert out.decision == {"action": "deny", "status": 200}


def test_matching_is_by_method_and_whole_path() -> None:
    p = policy()
    assert match(p.mirror, "GET", "/refunds", with_response=False) is None
    assert match(p.mirror, "POST", "/refunds/x", with_response=False) is None
    assert match(p.mirror, "PUT", "/refunds/a/b/decision", with_response=False) is None
    found = match(p.mirror, "PUT", "/refunds/a%20b/decision", with_response=False)
    assert found is not None
    assert found[1] == {"id": "a%20b"}


BAD_RULES: list[tuple[Any, str]] = [
    ({"kind": "event"}, "mirror[0].match"),
    ({"match": {"path": "/a"}, "kind": "thing"}, "mirror[0].kind"),
    (
        {
            "match": {"path": "a"},
            "kind": "event",
            "task_type": "t",
            "event_id": "body.id",
            "payload": "body",
        },
        "mirror[0].match.path",
    ),
    (
        {
            "match": {"path": "/a", "method": "BREW"},
            "kind": "event",
            "task_type": "t",
            "event_id": "body.id",
            "payload": "body",
        },
        "mirror[0].match.method",
    ),
    (
        {
            "match": {"path": "/a"},
            "kind": "event",
            "task_type": "nope",
            "event_id": "body.id",
            "payload": "body",
        },
        "mirror[0].task_type",
    ),
    (
        {"match": {"path": "/a"}, "kind": "event", "task_type": "t", "payload": "body"},
        "mirror[0].event_id",
    ),
    (
        {
            "match": {"path": "/a"},
            "kind": "event",
            "task_type": "t",
            "event_id": "path.id",
            "payload": "body",
        },
        "mirror[0].event_id",
    ),
    (
        {
            "match": {"path": "/a"},
            "kind": "event",
            "task_type": "t",
            "event_id": "cookie.id",
            "payload": "body",
        },
        "mirror[0].event_id",
    ),
    (
        {
            "match": {"path": "/a"},
            "kind": "event",
            "task_type": "t",
            "event_id": "status",
            "payload": "body",
        },
        "mirror[0].event_id",
    ),
    (
        {
            "match": {"path": "/a"},
            "kind": "event",
            "task_type": "t",
            "event_id": "body.id",
            "payload": "body",
            "decision": "body",
        },
        "mirror[0].decision",
    ),
    ({"match": {"path": "/a"}, "kind": "outcome", "event_id": "body.id"}, "mirror[0].decision"),
]


@pytest.mark.parametrize(("rule", "path"), BAD_RULES)
def test_a_bad_rule_is_refused_naming_its_key(rule: Any, path: str) -> None:
    text = json.dumps({"task_types": {"t": {}}, "mirror": [rule]})
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert path in [p.path for p in info.value.problems], info.value


def test_two_rules_may_not_share_a_name() -> None:
    rule = {"match": {"path": "/a"}, "kind": "outcome", "event_id": "body.id", "decision": "body"}
    text = json.dumps({"task_types": {"t": {}}, "mirror": [rule, rule]})
    with pytest.raises(PolicyError, match=r"mirror\[1\]\.name"):
        parse_policy(text)
