"""An in-process agent that fails inside a ``TaskGroup`` raises an ``ExceptionGroup``; the
failed decision says what actually went wrong (the first leaf, and how many more), not
``ExceptionGroup: unhandled errors in a TaskGroup``.

The agents are real ``module:callable`` agents: the functions of this module."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shadow.agent import AgentRunner, CallableAgent
from shadow.agent.base import describe
from shadow.model import WorkEvent
from tests.conftest import wait_for
from tests.shadow.conftest import SidecarFactory

EVENT = WorkEvent("r-1", "refund_request", {"customer": "c-1"})
REASON = "agent raised ValueError: amount missing (+1 more)"
POLICY = """
task_types:
  refund_request:
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
"""


async def _amount(payload: dict[str, Any]) -> float:
    await asyncio.sleep(0)
    raise ValueError("amount missing")


async def _customer(payload: dict[str, Any]) -> str:
    try:
        await asyncio.sleep(30)  # cancelled when the amount lookup fails
    except asyncio.CancelledError:
        raise KeyError("customer lookup left a half-open connection") from None
    return "never"


async def task_group_agent(request: dict[str, Any]) -> dict[str, Any]:
    """Looks the amount and the customer up at once; both fail."""
    async with asyncio.TaskGroup() as tg:
        amount = tg.create_task(_amount(request["payload"]))
        customer = tg.create_task(_customer(request["payload"]))
    return {"decision": {"amount": amount.result(), "customer": customer.result()}}


async def nested_agent(request: dict[str, Any]) -> dict[str, Any]:
    """The same failure one TaskGroup further down (a helper with its own group)."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(task_group_agent(request))
        tg.create_task(asyncio.sleep(30))
    return {"decision": {}}


def sync_group_agent(request: dict[str, Any]) -> dict[str, Any]:
    raise ExceptionGroup(
        "validation", [ValueError("amount missing"), TypeError("customer is not a string")]
    )


def single_leaf_agent(request: dict[str, Any]) -> dict[str, Any]:
    raise ExceptionGroup("one", [ExceptionGroup("inner", [ValueError("amount missing")])])


def runner(name: str) -> AgentRunner:
    return AgentRunner(CallableAgent(f"tests.shadow.test_agent_errors:{name}", timeout=10))


@pytest.mark.parametrize("name", ["task_group_agent", "nested_agent", "sync_group_agent"])
async def test_an_exception_group_is_reported_by_its_first_leaf(name: str) -> None:
    async with runner(name) as r:
        one = await r.decide(EVENT)
        batch = await r.decide_batch([EVENT])  # the pipeline's and replay's path
    assert one.error == REASON
    assert batch[0] is not None
    assert batch[0].error == REASON


async def test_a_group_of_one_is_that_one() -> None:
    async with runner("single_leaf_agent") as r:
        assert (await r.decide(EVENT)).error == "agent raised ValueError: amount missing"


def test_describe_clips_the_leaf_and_names_a_bare_one() -> None:
    assert describe(KeyError()) == "KeyError"
    long = ExceptionGroup("g", [RuntimeError("x" * 500), OSError(), ValueError()])
    text = describe(long)
    assert text.startswith("RuntimeError: xxx")
    assert text.endswith("... (+2 more)")
    assert "\n" not in describe(ValueError("two\nlines"))


async def test_the_stored_decision_carries_the_unwrapped_reason(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar(policy=POLICY, agent="tests.shadow.test_agent_errors:task_group_agent")
    event = {"event_id": "r-1", "task_type": "refund_request", "payload": {"customer": "c"}}
    assert (await sc.post("/v1/events", json_body=event)).status == 202
    outcome = {"event_id": "r-1", "decision": {"action": "approve"}}
    assert (await sc.post("/v1/outcomes", json_body=outcome)).status == 202

    async def decided() -> bool:
        return bool(await sc.pipeline.store.pairs_of("refund_request"))

    await wait_for(decided, "the agent's failed decision to be stored")
    [(_, row)] = await sc.pipeline.store.pairs_of("refund_request")
    assert row.decision.error == REASON
