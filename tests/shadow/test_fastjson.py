"""shadow.fastjson: orjson only where it gives the stdlib's values; the canonical request
text is injective (NaN is not null) and its format tag makes old cache rows miss."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from replay.cache import CachedAgent, canonical_request, hash_text, request_hash
from replay.history import ResponseCache, decode_answers, encode_answers
from replay.history.reader import _json_column
from shadow.agent import AgentRunner, load_agent
from shadow.fastjson import dumps, dumps_canonical, loads
from shadow.model import ShadowDecision, WorkEvent, canonical_json, content_hash

TEXTS = [
    '{"a": 1, "b": [1.5, -0.0, "é", null, true]}',
    "[123456789012345678901234567890, -12345678901234567890]",  # beyond 64 bits
    "[18446744073709551615, -9223372036854775808]",  # the 64-bit edges
    '{"n": "1234567890123456789012"}',  # long digits in a string
    "[NaN, Infinity, -Infinity]",
    "1e400",
    '"\\ud800"',
    '{"a": 1, "a": 2}',
    "1.5e-400",
    "[0.0012345678901234567, 1234567890123456789.5, 12345678901234567890e-3]",
    "-123456789012345678901",  # a big integer at the top level
    '{"a":\n  123456789012345678901}',
]
BAD = ["[1,]", "01", '{"a" 1}', "", "[1", '"\x01"']


@pytest.mark.parametrize("text", TEXTS)
def test_loads_gives_the_stdlib_values(text: str) -> None:
    assert repr(loads(text)) == repr(json.loads(text))
    assert [type(x) for x in _flat(loads(text))] == [type(x) for x in _flat(json.loads(text))]


@pytest.mark.parametrize("text", BAD)
def test_loads_refuses_with_the_stdlib_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        loads(text)
    assert str(got.value) == str(want.value)


def test_json_column_parses_big_ints_and_nan_as_the_stdlib() -> None:
    column = ['{"id": 2}', '{"id": 1180591620717411303424}', '{"x": NaN}']
    got = _json_column(column)
    assert got[1] == {"id": 2**70}
    assert type(got[1]["id"]) is int
    assert math.isnan(got[2]["x"])


def test_canonical_text_is_injective() -> None:
    values: list[Any] = [
        {"x": None},
        {"x": math.nan},
        {"x": math.inf},
        {"x": -math.inf},
        {"x": 1},
        {"x": 1.0},
        {"x": 2**70},
        {"x": float(2**70)},
        {"x": "1"},
        {"x": [None]},
        {"x": [math.nan]},
    ]
    texts = [dumps_canonical(v) for v in values]
    assert len(set(texts)) == len(values)
    for v, t in zip(values, texts, strict=True):
        assert repr(json.loads(t)) == repr(v)  # it means what it says
        assert dumps_canonical(v) == t  # deterministic
    # NaN and big ints take the stdlib's spelling; sorted keys, no spaces either way
    assert texts[1] == canonical_json({"x": math.nan}).encode() == b'{"x":NaN}'
    assert texts[6] == b'{"x":1180591620717411303424}'
    assert dumps_canonical({"b": 1, "a": {"d": "é", "c": None}}) == (
        '{"a":{"c":null,"d":"é"},"b":1}'.encode()
    )


def test_dumps_round_trips_to_equal_values() -> None:
    values: list[Any] = [
        [{"a": 1.5, "b": None, "c": "é"}],
        [{"x": math.nan, "y": math.inf}],
        [{"big": 2**70}],
        [{"pair": (1, 2)}],
    ]
    for v in values:
        assert repr(json.loads(dumps(v))) == repr(json.loads(json.dumps(v)))
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        dumps([{"x": object()}])


def test_cache_rows_round_trip() -> None:
    answers = [
        ("h1", ShadowDecision("e1", "v@1", {"action": "approve", "n": 2**70}, latency_ms=1.5)),
        ("h2", ShadowDecision("e2", "v@1", {"action": "deny", "note": "é", "x": None})),
    ]
    hashes, versions, text = encode_answers(answers)
    assert (hashes, versions) == (["h1", "h2"], ["v@1", "v@1"])
    rows = list(zip(hashes, [json.dumps(b) for b in json.loads(text)], strict=True))
    assert decode_answers(rows) == dict(answers)


def test_request_hash_has_a_format_tag() -> None:
    event = WorkEvent("e1", "refund_request", {"amount": 3, "note": "é"})
    request = {"event_id": "e1", "task_type": "refund_request", "payload": event.payload}
    assert canonical_request(event) == canonical_json(request).encode()  # same text here...
    assert request_hash(event) != content_hash(request)  # ...but not the old key
    assert request_hash(event) == hash_text(canonical_request(event))


def answer_agent(request: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(request["event_id"])
    return {"decision": {"action": "approve"}, "agent_version": "fmt@1"}


CALLS: list[str] = []


async def test_rows_of_the_old_request_format_miss(tmp_path: Path) -> None:
    """A cache written before the format tag (key: shadow.model.content_hash of the
    request) is not read: its rows miss, the agent is asked, the new rows are kept."""
    events = [WorkEvent(f"e{i}", "refund_request", {"amount": i}) for i in range(3)]
    spec = "tests.shadow.test_fastjson:answer_agent"
    old = ShadowDecision("x", "fmt@1", {"action": "STALE"})
    CALLS.clear()
    async with ResponseCache(tmp_path / "cache.duckdb") as cache:
        old_hashes = [
            content_hash({"event_id": e.event_id, "task_type": e.task_type, "payload": e.payload})
            for e in events
        ]
        await cache.put(
            f"spec:{spec}", [(h, old) for h in old_hashes], now=datetime.now(UTC), replace=False
        )
        async with AgentRunner(load_agent(spec, timeout=5), retries=0) as runner:
            source = CachedAgent(
                runner, cache, spec=spec, clock=time.monotonic, now=lambda: datetime.now(UTC)
            )
            await source.start()
            got = await source.answers(events)
            await source.flush()
            assert CALLS == ["e0", "e1", "e2"]
            assert [d.decision if d else None for d in got] == [{"action": "approve"}] * 3
            assert source.stats.hits == 0
            again = await source.answers(events)  # now cached under the new key
        assert CALLS == ["e0", "e1", "e2"]
        assert source.stats.hits == 3
        assert [d.decision if d else None for d in again] == [{"action": "approve"}] * 3
        assert await cache.count() == 6


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, list):
        return [x for v in value for x in _flat(v)]
    return [value]
