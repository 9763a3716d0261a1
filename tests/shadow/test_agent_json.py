"""The in-process agents' JSON copies (CallableAgent.fresh_copies / answers, used by
AgentRunner.decide_batch) take a faster codec (orjson) only where it gives exactly the
stdlib's copy: whatever the stdlib accepts or refuses is accepted or refused the same way,
with the same reasons, checked here against decide() (stdlib only) and the stdlib itself."""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import uuid
from collections import OrderedDict
from typing import Any

import pytest

from shadow.agent import AgentRunner, CallableAgent
from shadow.errors import AgentError
from shadow.model import WorkEvent


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    ONE = 1


class Name(str):
    pass


def _deep(n: int) -> Any:
    value: Any = "leaf"
    for _ in range(n):
        value = [value]
    return value


def _circular() -> Any:
    loop: list[Any] = []
    loop.append(loop)
    return loop


# decision values an agent may return; each name is an event id (ordered so that fewer than
# five refused answers come in a row: five open the runner's circuit breaker)
ODD: dict[str, Any] = {
    "plain": {"action": "approve", "amount": 1.5, "tags": ["a", None, True]},
    "surrogate": {"text": "\ud800"},
    "int_keys": {1: "one", 2.5: "x", False: "f", None: "n"},
    "big_int": {"amount": 2**70, "neg": -(2**65)},
    "u64": {"amount": 2**64 - 1},
    "nan": {"score": math.nan},
    "infinity": {"high": math.inf, "low": -math.inf},
    "tuple": {"pair": (1, 2)},
    "enum": {"colour": Colour.RED},
    "int_enum": {"level": Level.ONE},
    "str_subclass": {"name": Name("bob")},
    "uuid": {"id": uuid.UUID(int=7)},
    "datetime": {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
    "object": {"thing": object()},
    "ordered": OrderedDict([("b", 1), ("a", 2)]),
    "deep": {"nested": _deep(300)},
    "circular": {"loop": _circular()},
}


def odd_agent(request: dict[str, Any]) -> dict[str, Any]:
    return {"decision": ODD[request["event_id"]], "agent_version": "odd@1"}


async def odd_async_agent(request: dict[str, Any]) -> dict[str, Any]:
    return odd_agent(request)


def runner(name: str) -> AgentRunner:
    return AgentRunner(CallableAgent(f"tests.shadow.test_agent_json:{name}", timeout=5.0))


def view(d: Any) -> str:
    """A decision as text (repr: NaN equals NaN here)."""
    return repr((d.event_id, d.agent_version, d.decision, d.error))


def stdlib_copy(value: Any) -> Any:
    """What the answer copy was before orjson: json.loads(json.dumps(...))."""
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("name", ["odd_agent", "odd_async_agent"])
async def test_odd_answers_are_copied_as_the_stdlib_copies_them(name: str) -> None:
    evs = [WorkEvent(k, "refund_request", {"n": 1}) for k in ODD]
    async with runner(name) as r:
        one_by_one = [await r.decide(e) for e in evs]  # CallableAgent.answer: stdlib only
        mixed = await r.decide_batch(evs)  # one odd answer sends the batch to the stdlib
        alone = [(await r.decide_batch([evs[0], e]))[1] for e in evs]  # plain + one odd
    assert [view(d) for d in mixed] == [view(d) for d in one_by_one]
    assert [view(d) for d in alone] == [view(d) for d in one_by_one]
    got = {d.event_id: d for d in alone if d is not None}
    assert got["plain"].decision == ODD["plain"]
    assert got["int_keys"].decision == {"1": "one", "2.5": "x", "false": "f", "null": "n"}
    assert got["big_int"].decision == {"amount": 2**70, "neg": -(2**65)}
    assert type(got["big_int"].decision["amount"]) is int
    assert got["u64"].decision == {"amount": 2**64 - 1}
    # NaN/Infinity survive the copy (orjson would write null), so validation refuses them
    invalid = "invalid agent answer: decision."
    assert got["nan"].error == invalid + "score: numbers must be finite"
    assert got["infinity"].error == invalid + "high: numbers must be finite"
    assert got["tuple"].decision == {"pair": [1, 2]}
    assert got["int_enum"].decision == {"level": 1}
    assert got["str_subclass"].decision == {"name": "bob"}
    assert type(got["str_subclass"].decision["name"]) is str
    assert list(got["ordered"].decision or {}) == ["b", "a"]
    # a lone surrogate is copied as is, then refused: no store could keep the answer
    surrogate = "text: string holds a lone UTF-16 surrogate \\ud800 at index 0; not valid Unicode"
    assert got["surrogate"].error == invalid + surrogate
    assert (got["deep"].error or "").endswith("nested deeper than 32 levels")
    not_json = "agent returned a value that is not JSON: "
    assert got["enum"].error == not_json + "Object of type Colour is not JSON serializable"
    assert got["uuid"].error == not_json + "Object of type UUID is not JSON serializable"
    assert got["datetime"].error == not_json + "Object of type datetime is not JSON serializable"
    assert got["object"].error == not_json + "Object of type object is not JSON serializable"
    assert got["circular"].error == not_json + "Circular reference detected"


def test_answers_equal_the_stdlib_copy_value_for_value() -> None:
    agent = CallableAgent("tests.shadow.test_agent_json:odd_agent", timeout=5.0)
    fine = {k: v for k, v in ODD.items() if k not in ("enum", "uuid", "datetime", "object")}
    fine.pop("circular")
    results = [{"decision": v} for v in fine.values()]
    copies = agent.answers(results)
    assert repr(copies) == repr([stdlib_copy(r) for r in results])
    assert all(c is not r for c, r in zip(copies, results, strict=True))
    for r in results:  # one at a time (a batch with one value orjson refuses is all stdlib)
        assert repr(agent.answers([results[0], r])) == repr(
            [stdlib_copy(results[0]), stdlib_copy(r)]
        )


def test_request_copies_refuse_what_the_stdlib_refuses_with_its_reason() -> None:
    agent = CallableAgent("tests.shadow.test_agent_json:odd_agent", timeout=5.0)
    payloads: list[Any] = [
        {"amount": 3, "note": "é"},
        {"score": math.nan},
        {"score": -math.inf},
        {"amount": 2**70},
        {7: "int key"},
        {"pair": (1, 2)},
        {"id": uuid.UUID(int=1)},
        {"colour": Colour.RED},
        {"thing": object()},
    ]
    requests = [{"event_id": str(i), "payload": p, "shadow": True} for i, p in enumerate(payloads)]
    strict = json.JSONEncoder(allow_nan=False)
    expected: list[Any] = []
    for r in requests:
        try:
            expected.append(json.loads(strict.encode(r)))
        except (TypeError, ValueError) as exc:
            expected.append(f"request is not JSON: {exc}")

    def copies(rs: list[dict[str, Any]]) -> list[Any]:
        return [str(c) if isinstance(c, AgentError) else c for c in agent.fresh_copies(rs)]

    got = copies(requests)
    assert got == expected
    for r, e in zip(requests, expected, strict=True):  # one at a time, next to a plain one
        assert copies([requests[0], r]) == [expected[0], e]
    assert str(got[1]).startswith("request is not JSON: Out of range float values")
    assert got[3] == {"event_id": "3", "payload": {"amount": 2**70}, "shadow": True}
    assert got[4] == {"event_id": "4", "payload": {"7": "int key"}, "shadow": True}
    # all plain: one fast copy, still a copy
    fine = agent.fresh_copies([requests[0]])
    assert fine == [requests[0]]
    assert fine[0]["payload"] is not requests[0]["payload"]
