from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.errors import ValidationError
from shadow.model import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    Level,
    Outcome,
    ShadowDecision,
    WorkEvent,
    canonical_bytes,
    canonical_json,
    content_hash,
)

EVENT = {
    "event_id": "r-1029",
    "task_type": "refund_request",
    "payload": {"amount": 42.5, "days_since_purchase": 3},
    "occurred_at": "2026-11-20T10:00:00Z",
    "segment": "eu",
}
OUTCOME = {
    "event_id": "r-1029",
    "decision": {"action": "approve", "amount": 42.5},
    "actions": [{"tool": "issue_refund", "args": {"amount": 42.5}}],
    "decided_by": "ops/jane",
    "decided_at": "2026-11-20T10:07:00Z",
}


def paths(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {e.path: e.message for e in exc.value.errors}


def test_event_round_trips_the_design_example() -> None:
    event = WorkEvent.from_json(EVENT)
    assert event.to_json() == EVENT
    assert WorkEvent.from_json({**EVENT, "kind": "event"}) == event


def test_event_requires_id_task_type_and_object_payload() -> None:
    with pytest.raises(ValidationError) as exc:
        WorkEvent.from_json({"payload": [1, 2]})
    got = paths(exc)
    assert set(got) == {"event_id", "task_type", "payload"}
    assert "required" in got["event_id"]
    assert "expected a JSON object, got an array" in got["payload"]


@pytest.mark.parametrize(
    ("patch", "path", "needle"),
    [
        ({"event_id": 7}, "event_id", "expected a non-empty string, got a number"),
        ({"event_id": ""}, "event_id", "non-empty string"),
        ({"event_id": "x" * (MAX_ID_LENGTH + 1)}, "event_id", "too long"),
        ({"event_id": "a\nb"}, "event_id", "control characters"),
        ({"task_type": "9lives"}, "task_type", "expected a letter"),
        ({"occurred_at": "yesterday"}, "occurred_at", "ISO-8601"),
        ({"occurred_at": "2026-11-20T10:00:00"}, "occurred_at", "no timezone"),
        ({"segment": 3}, "segment", "expected a string"),
        ({"kind": "outcome"}, "kind", 'expected "event"'),
        ({"extra": 1}, "extra", "unknown field"),
        ({"payload": {"x": float("nan")}}, "payload.x", "finite"),
    ],
)
def test_event_errors_name_the_field(patch: dict[str, object], path: str, needle: str) -> None:
    with pytest.raises(ValidationError) as exc:
        WorkEvent.from_json({**EVENT, **patch})
    assert needle in paths(exc)[path]


def test_non_object_record_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="expected a JSON object"):
        WorkEvent.from_json(["not", "an", "object"])


def test_deep_nesting_is_refused_with_its_path() -> None:
    payload: dict[str, object] = {}
    node = payload
    for _ in range(MAX_DEPTH + 5):
        child: dict[str, object] = {}
        node["a"] = child
        node = child
    with pytest.raises(ValidationError) as exc:
        WorkEvent.from_json({**EVENT, "payload": payload})
    (path, message), *_ = paths(exc).items()
    assert path.startswith("payload.a.a")
    assert "nested deeper" in message


def test_outcome_round_trips_and_hash_ignores_who_and_when() -> None:
    outcome = Outcome.from_json(OUTCOME)
    assert outcome.to_json() == OUTCOME
    other = Outcome.from_json({**OUTCOME, "decided_by": "ops/bob", "decided_at": None})
    assert other.content_hash == outcome.content_hash
    changed = Outcome.from_json({**OUTCOME, "decision": {"action": "deny"}})
    assert changed.content_hash != outcome.content_hash


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"decision": "approve"}, "decision"),
        ({"decision": None}, "decision"),
        ({"actions": {"tool": "x"}}, "actions"),
        ({"actions": [{"args": {}}]}, "actions[0].tool"),
        ({"actions": [{"tool": "x", "args": []}]}, "actions[0].args"),
        ({"actions": [{"tool": "x", "extra": 1}]}, "actions[0].extra"),
        ({"decided_at": 5}, "decided_at"),
    ],
)
def test_outcome_errors_name_the_field(patch: dict[str, object], path: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Outcome.from_json({**OUTCOME, **patch})
    assert path in paths(exc)


def test_agent_response_parses_the_contract() -> None:
    body = {
        "decision": {"action": "approve", "amount": 42.5},
        "actions": [{"tool": "issue_refund", "args": {"amount": 42.5}}],
        "confidence": 0.93,
        "agent_version": "refund-agent@7",
        "usage": {"input_tokens": 812, "output_tokens": 64, "cost_usd": 0.0021},
    }
    d = ShadowDecision.from_agent_response("r-1", body, default_version="x", latency_ms=12.0)
    assert d.agent_version == "refund-agent@7"
    assert d.usage.input_tokens == 812
    assert d.usage.cost_usd == pytest.approx(0.0021)
    assert ShadowDecision.from_stored(d.to_json()) == d
    minimal = ShadowDecision.from_agent_response("r-1", {"decision": {}}, default_version="v0")
    assert minimal.agent_version == "v0"
    assert minimal.actions == ()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "decision"),
        ({"decision": {}, "confidence": 2}, "confidence"),
        ({"decision": {}, "usage": {"cost_usd": -1}}, "usage.cost_usd"),
        ({"decision": {}, "usage": {"input_tokens": "many"}}, "usage.input_tokens"),
    ],
)
def test_agent_response_errors(body: dict[str, object], path: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ShadowDecision.from_agent_response("r-1", body, default_version="v")
    assert path in paths(exc)


def test_failed_decision_and_hash_stability() -> None:
    failed = ShadowDecision.failed("r-1", "v1", "timeout after 5s")
    assert failed.decision is None
    assert failed.error == "timeout after 5s"
    assert ShadowDecision.from_stored(failed.to_json()) == failed
    assert content_hash({"b": 1, "a": [1, 2]}) == content_hash({"a": [1, 2], "b": 1})


def test_level_parse_and_order() -> None:
    assert Level.parse("L3") is Level.L3
    assert Level.L1 < Level.L2
    assert str(Level.L4) == "L4"
    with pytest.raises(ValueError, match="use one of L0, L1, L2, L3, L4"):
        Level.parse("L5")


# -- canonical bytes: orjson only where it spells what the stdlib spells ------------------------

_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-3, max_value=1e-3),  # the small ones where spellings part ways
    st.sampled_from([1e-5, 2.5e-7, 1e-4, 0.00012, 1e15, 1e16, 1.5e16, 1e22, 5e-324, -0.0]),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too: orjson refuses those
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    _floats,
    st.text(),  # lone surrogates, control characters, U+2028, ...
    st.sampled_from(["1e-5", "x0.00001", "e-mail", "null"]),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(st.integers(-3, 3), inner, max_size=2),  # the stdlib writes "1"
    ),
    max_leaves=12,
)


@pytest.mark.slow  # 1500 generated values
@settings(max_examples=1500, deadline=None)
@given(_json_values)
def test_canonical_bytes_are_the_stdlib_canonical_json(value: object) -> None:
    try:
        want = canonical_json(value).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError) as e:  # mixed key types the stdlib cannot sort
        with pytest.raises(type(e)):
            canonical_bytes(value)
        return
    try:
        assert canonical_bytes(value) == want
    except UnicodeEncodeError:  # a lone surrogate: the stdlib's text cannot be UTF-8 either
        with pytest.raises(UnicodeEncodeError):
            canonical_json(value).encode()


def test_canonical_bytes_keep_the_content_hashes_already_stored() -> None:
    """Hashes stored by earlier versions (stdlib only) must still match: spot values."""
    for value in (
        {"b": 1, "a": [1.5, 1e-05, 2.5e-07, "é", None, True]},
        {"amount": 12.34, "email": "x@example.com", "n": 2**70},
        [float("nan"), float("inf")],
        {"k": "\u2028\x00\x7f/"},
    ):
        assert (
            content_hash(value) == hashlib.sha256(canonical_json(value).encode()).hexdigest()[:32]
        )


class _Str(str):
    pass


_deep = st.recursive(
    st.one_of(_scalars, st.builds(_Str, st.text(max_size=3)), st.just(object()), st.just(b"x")),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 2)), inner, max_size=3),
    ),
    max_leaves=40,
)


@pytest.mark.slow  # 1500 generated values
@settings(max_examples=1500, deadline=None)
@given(_deep, st.integers(MAX_DEPTH - 4, MAX_DEPTH + 1))
def test_the_fast_json_check_agrees_with_the_path_finding_one(value: object, depth: int) -> None:
    """``plain_json`` (the hot path) never accepts what ``json_problem_at`` refuses, so
    ``json_problem`` gives the answers of the path-finding check alone, faster."""
    from shadow.checks import json_problem, json_problem_at, plain_json

    slow = json_problem_at(value, "payload", depth)
    assert json_problem(value, "payload", depth) == slow
    if plain_json(value, depth):
        assert slow is None


def test_the_fast_json_check_finds_the_deep_spot_with_its_path() -> None:
    value: object = 1.5
    for i in range(MAX_DEPTH):
        value = {f"k{i}": value}
    with pytest.raises(ValidationError) as exc:
        WorkEvent.from_json({**EVENT, "payload": {"a": [0, value]}})
    assert any("nested deeper" in m for m in paths(exc).values())
    with pytest.raises(ValidationError) as exc:
        WorkEvent.from_json({**EVENT, "payload": {"a": [0, {"b": float("inf")}]}})
    assert paths(exc) == {"payload.a[1].b": "numbers must be finite"}
