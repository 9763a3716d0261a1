"""AgentRunner.decide_batch: the verdicts of decide() for a batch, with the in-process
agents' per-batch shortcuts (one JSON round trip each way, one thread hop per chunk for
sync callables, no timer for async calls that never wait) and the breaker per batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from shadow.agent import AgentRunner, CallableAgent, CircuitBreaker
from shadow.model import WorkEvent

CALLS: list[str] = []
SEEN_PAYLOADS: list[dict[str, Any]] = []


def events(n: int) -> list[WorkEvent]:
    return [
        WorkEvent(f"e{i:02d}", "refund_request", {"amount": i, "tags": ["a"]}) for i in range(n)
    ]


def answer(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "decision": {"action": "approve", "amount": request["payload"]["amount"]},
        "agent_version": "batch@1",
        "usage": {"input_tokens": 3, "output_tokens": 1, "cost_usd": 0.5},
    }


def sync_agent(request: dict[str, Any]) -> dict[str, Any]:
    assert threading.current_thread() is not threading.main_thread()
    CALLS.append(request["event_id"])
    return answer(request)


async def async_agent(request: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(request["event_id"])
    if int(request["event_id"][1:]) % 2:
        await asyncio.sleep(0)  # some calls wait, some answer at once
    return answer(request)


def sync_raising(request: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(request["event_id"])
    raise ValueError("no")


async def async_raising(request: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(request["event_id"])
    if request["event_id"] == "e01":
        await asyncio.sleep(0)
    raise ValueError("no")


async def slow_async(request: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(5)
    return answer(request)


def slow_sync(request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.15)
    return answer(request)


def odd_answers(request: dict[str, Any]) -> Any:
    i = int(request["event_id"][1:])
    if i == 1:
        return [1, 2]
    if i == 2:
        return {"decision": {"at": object()}}
    if i == 3:
        return {"decision": {"pair": (1, 2)}}  # a tuple is JSON (an array) after the copy
    if i == 4:
        return {"decision": "yes"}
    return answer(request)


def sync_returning_coroutine(request: dict[str, Any]) -> Any:
    return async_agent(request)


async def mutating(request: dict[str, Any]) -> dict[str, Any]:
    SEEN_PAYLOADS.append(request["payload"])
    request["payload"]["amount"] = -1
    return answer(request)


def runner(name: str, *, timeout: float = 2.0, **kw: Any) -> AgentRunner:
    return AgentRunner(
        CallableAgent(f"tests.shadow.test_agent_batch:{name}", timeout=timeout), **kw
    )


def summary(d: Any) -> tuple[Any, ...]:
    return (d.event_id, d.agent_version, d.decision, d.actions, d.usage, d.error)


@pytest.mark.parametrize("name", ["sync_agent", "async_agent", "sync_returning_coroutine"])
async def test_batch_gives_the_decisions_decide_gives(name: str) -> None:
    evs = events(13)
    async with runner(name, concurrency=4) as r:
        one_by_one = [await r.decide(e) for e in evs]
        got: dict[int, Any] = {}
        batch = await r.decide_batch(evs, done=lambda i, d: got.__setitem__(i, d))
    assert [summary(d) for d in batch] == [summary(d) for d in one_by_one]
    assert all(d is not None and d.error is None and d.latency_ms is not None for d in batch)
    assert sorted(got) == list(range(13))
    assert [got[i] for i in range(13)] == batch


@pytest.mark.parametrize(("name", "called"), [("sync_raising", 3), ("async_raising", 3)])
async def test_calls_stop_at_the_breaker_threshold_and_the_rest_is_rejected(
    name: str, called: int
) -> None:
    CALLS.clear()
    breaker = CircuitBreaker(failure_threshold=3, reset_after=60)
    async with runner(name, concurrency=1, breaker=breaker) as r:
        batch = await r.decide_batch(events(8))
        assert breaker.state == "open"
        again = await r.decide_batch(events(2))  # open: nothing is called
    assert len(CALLS) == called
    errors = [d.error for d in batch if d is not None]
    assert errors[:called] == ["agent raised ValueError: no"] * called
    assert all(e is not None and e.startswith("circuit open") for e in errors[called:])
    assert len(errors) == 8
    assert all(d is not None and d.error and d.error.startswith("circuit open") for d in again)


async def test_answers_are_checked_one_by_one() -> None:
    async with runner("odd_answers", concurrency=2) as r:
        batch = await r.decide_batch(events(6))
    errors = [d.error if d is not None else "none" for d in batch]
    assert errors[0] is None
    assert errors[1] == "agent returned an array, expected a dict"
    assert errors[2] is not None
    assert errors[2].startswith("agent returned a value that is not JSON: Object of type object")
    assert errors[3] is None
    assert batch[3] is not None
    assert batch[3].decision == {"pair": [1, 2]}
    assert errors[4] is not None
    assert errors[4].startswith("invalid agent answer: decision")
    assert errors[5] is None


async def test_timeouts() -> None:
    async with runner("slow_async", timeout=0.05, concurrency=8) as r:
        batch = await r.decide_batch(events(3))
    assert [d.error for d in batch if d is not None] == ["timeout after 0.05 s"] * 3
    async with runner("slow_sync", timeout=0.05, concurrency=8) as r:
        batch = await r.decide_batch(events(2))  # waited for, then counted as timeouts
    assert [d.error for d in batch if d is not None] == ["timeout after 0.05 s"] * 2


async def test_requests_are_copies_unless_handed_over() -> None:
    SEEN_PAYLOADS.clear()
    evs = events(3)
    async with runner("mutating") as r:
        await r.decide_batch(evs)
        assert [e.payload["amount"] for e in evs] == [0, 1, 2]  # copies were changed
        assert all(p is not e.payload for p, e in zip(SEEN_PAYLOADS, evs, strict=True))
        SEEN_PAYLOADS.clear()
        await r.decide_batch(evs, handover=True)
    assert all(p is e.payload for p, e in zip(SEEN_PAYLOADS, evs, strict=True))
    assert [e.payload["amount"] for e in evs] == [-1, -1, -1]


async def test_stop_leaves_the_rest_unanswered() -> None:
    CALLS.clear()
    evs = events(10)
    async with runner("async_agent", concurrency=1) as r:
        batch = await r.decide_batch(evs, stop=lambda: len(CALLS) >= 4)
    assert len(CALLS) == 4
    assert [d is not None for d in batch] == [True] * 4 + [False] * 6


async def test_cancelling_keeps_the_answers_already_made() -> None:
    got: dict[int, Any] = {}
    async with runner("slow_sync", concurrency=1) as r:
        task = asyncio.ensure_future(
            r.decide_batch(events(20), done=lambda i, d: got.__setitem__(i, d))
        )
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert 1 <= len(got) < 20
    assert sorted(got) == list(range(len(got)))
    assert all(isinstance(d.decision, Mapping) for d in got.values())


async def test_other_transports_go_through_decide() -> None:
    class Echo:
        def __init__(self) -> None:
            self.seen: list[Mapping[str, Any]] = []

        async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
            self.seen.append(request)
            return {"decision": {"id": request["event_id"]}}

        async def close(self) -> None:
            return None

    echo = Echo()
    async with AgentRunner(echo, concurrency=3) as r:
        batch = await r.decide_batch(events(5))
    assert [d.decision for d in batch if d is not None] == [{"id": f"e{i:02d}"} for i in range(5)]
    assert all(req["shadow"] is True for req in echo.seen)
