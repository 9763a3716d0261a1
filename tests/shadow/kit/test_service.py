"""The kit's service against the agent contract, over HTTP on loopback (no sidecar): what a
handler's return value becomes, and the one-line answers for what goes wrong (a request that
is not the contract's, a handler that raises or overruns its deadline, a decision that is
not one, tools the case does not have or cannot reach)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel

from shadow.kit import Case, Price, ToolsError, app
from tests.shadow.kit.conftest import VERSION, KitAgent

REQUEST = {"event_id": "r-1", "task_type": "refund", "payload": {"order_id": "o-1"}, "shadow": True}

Post = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
async def post() -> AsyncIterator[Post]:
    """``await post(url, body)``: (status, JSON or text) of a POST; ``body`` bytes are sent
    as they are, anything else as JSON."""
    async with aiohttp.ClientSession() as session:

        async def send(url: str, body: Any = REQUEST, **headers: str) -> tuple[int, Any]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json", **headers}
            async with session.post(url, data=data, headers=hdrs) as resp:
                if resp.content_type == "application/json":
                    return resp.status, await resp.json()
                return resp.status, await resp.text()

        yield send


class Refund(BaseModel):
    action: str
    amount: float


async def test_a_dict_is_the_decision_with_the_version_and_no_actions(
    kit_agent: KitAgent, post: Post
) -> None:
    seen: list[Case] = []

    async def decide(case: Case) -> dict[str, Any]:
        seen.append(case)
        return {"action": "approve", "amount": 42.5}

    status, body = await post(await kit_agent(decide))
    assert (status, body) == (
        200,
        {"decision": {"action": "approve", "amount": 42.5}, "agent_version": VERSION},
    )
    (case,) = seen
    assert (case.event_id, case.task_type, case.payload) == ("r-1", "refund", {"order_id": "o-1"})
    assert (case.tools_url, case.shadow) == (None, True)


async def test_a_pydantic_model_is_dumped_as_json_and_usage_is_reported(
    kit_agent: KitAgent, post: Post
) -> None:
    async def decide(case: Case) -> Refund:
        case.add_usage(1000, 200, cost_usd=0.5)
        case.add_usage(3000, 400)  # no cost: priced
        return Refund(action="approve", amount=42.5)

    url = await kit_agent(decide, price=Price(input=1.0, output=10.0))
    status, body = await post(url)
    assert status == 200, body
    assert body["decision"] == {"action": "approve", "amount": 42.5}
    assert body["usage"] == {
        "input_tokens": 4000,
        "output_tokens": 600,
        "cost_usd": pytest.approx(0.5 + (3000 * 1.0 + 400 * 10.0) / 1e6),
    }


async def test_tokens_without_a_cost_or_a_price_leave_the_cost_out(
    kit_agent: KitAgent, post: Post
) -> None:
    async def decide(case: Case) -> dict[str, str]:
        case.add_usage(10, 2)
        return {"action": "deny"}

    _, body = await post(await kit_agent(decide))
    assert body["usage"] == {"input_tokens": 10, "output_tokens": 2}


async def test_the_prompt_names_the_case_and_carries_its_payload(
    kit_agent: KitAgent, post: Post
) -> None:
    prompts: list[str] = []

    async def decide(case: Case) -> dict[str, str]:
        prompts.append(case.prompt("Decide the refund."))
        return {"action": "deny"}

    await post(await kit_agent(decide))
    (prompt,) = prompts
    assert prompt.startswith("Decide the refund.\n\nCase r-1 (task type refund).")
    assert json.loads(prompt.split("as JSON:\n", 1)[1]) == {"order_id": "o-1"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "request body is not JSON: JSONDecodeError: "),
        (b'{"event_id": NaN}', "request body is not JSON: ValueError: NaN is not JSON"),
        ([1, 2], "request body must be a JSON object (the agent contract's request)"),
        (
            {"task_type": "", "payload": [], "shadow": "yes"},
            "invalid request: event_id: required, a non-empty string; task_type: required, a "
            "non-empty string; payload: required, a JSON object; shadow: must be true or false",
        ),
        ({**REQUEST, "tools_url": "ftp://x"}, "invalid request: tools_url: must be an http(s)"),
    ],
    ids=["not-json", "nan", "array", "fields", "tools-url"],
)
async def test_a_malformed_request_is_a_400_in_one_line(
    kit_agent: KitAgent, post: Post, body: Any, reason: str
) -> None:
    called: list[Case] = []

    async def decide(case: Case) -> dict[str, str]:
        called.append(case)
        return {"action": "deny"}

    status, text = await post(await kit_agent(decide), body)
    assert status == 400
    assert text.startswith(reason), text
    assert "\n" not in text
    assert not called


async def test_a_handler_that_raises_is_a_500_in_one_line(kit_agent: KitAgent, post: Post) -> None:
    async def decide(case: Case) -> dict[str, str]:
        raise ValueError("amount missing\n  in the order")

    status, text = await post(await kit_agent(decide))
    assert (status, text) == (500, "agent raised ValueError: amount missing in the order")


async def test_an_exception_group_is_unwrapped_to_its_first_leaf(
    kit_agent: KitAgent, post: Post
) -> None:
    async def fail(message: str) -> None:
        raise KeyError(message)

    async def decide(case: Case) -> dict[str, str]:
        async with asyncio.TaskGroup() as group:
            group.create_task(fail("order_id"))
            group.create_task(fail("amount"))
        return {"action": "deny"}

    status, text = await post(await kit_agent(decide))
    assert status == 500
    assert text in (
        "agent raised KeyError: 'order_id' (+1 more)",
        "agent raised KeyError: 'amount' (+1 more)",
    )


async def test_a_slow_handler_is_answered_at_the_deadline(kit_agent: KitAgent, post: Post) -> None:
    cancelled = asyncio.Event()

    async def decide(case: Case) -> dict[str, str]:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()
        return {"action": "deny"}

    url = await kit_agent(decide, deadline=0.5)
    start = time.monotonic()
    status, text = await post(url)
    took = time.monotonic() - start
    assert (status, text) == (504, "deadline: no decision within 0.5 s")
    assert cancelled.is_set()
    assert 0.5 <= took < 30  # a bound against hangs, not a timing


@pytest.mark.parametrize(
    ("returned", "reason"),
    [
        (None, "agent returned None, expected a dict or a pydantic model"),
        (["approve"], "agent returned list, expected a dict or a pydantic model"),
        ("approve", "agent returned str, expected a dict or a pydantic model"),
        ({"amount": float("nan")}, "agent's decision is not JSON: ValueError: "),
        ({"when": object()}, "agent's decision is not JSON: TypeError: "),
    ],
    ids=["none", "list", "str", "nan", "object"],
)
async def test_what_is_not_a_decision_is_a_500(
    kit_agent: KitAgent, post: Post, returned: Any, reason: str
) -> None:
    async def decide(case: Case) -> Any:
        return returned

    status, text = await post(await kit_agent(decide))
    assert status == 500
    assert text.startswith(reason), text


async def test_a_case_without_a_tools_url_has_no_tools(kit_agent: KitAgent, post: Post) -> None:
    async def decide(case: Case) -> dict[str, str]:
        await case.tools()
        return {"action": "deny"}

    status, text = await post(await kit_agent(decide))
    assert (status, text) == (
        500,
        "agent raised ToolsError: case r-1 has no tools URL: task type 'refund' has no tools: "
        "policy in the sidecar",
    )


async def test_tools_that_cannot_be_reached_fail_the_case_without_naming_the_url(
    kit_agent: KitAgent, post: Post
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tools_url = f"http://127.0.0.1:{port}/mcp/v1.secret-capability.mac"

    async def decide(case: Case) -> dict[str, str]:
        await case.tools()
        return {"action": "deny"}

    status, text = await post(await kit_agent(decide), {**REQUEST, "tools_url": tools_url})
    assert status == 500
    assert text.startswith("agent raised ToolsError: cannot open the case's tools session: "), text
    assert "secret-capability" not in text


async def test_the_tools_url_header_stands_in_for_the_body_field(
    kit_agent: KitAgent, post: Post
) -> None:
    seen: list[str | None] = []

    async def decide(case: Case) -> dict[str, str]:
        seen.append(case.tools_url)
        return {"action": "deny"}

    url = await kit_agent(decide)
    await post(url, REQUEST, **{"X-Shadow-Tools-Url": "http://127.0.0.1:1/mcp/v1.x.y"})
    assert seen == ["http://127.0.0.1:1/mcp/v1.x.y"]


async def test_healthz_names_the_version(kit_agent: KitAgent) -> None:
    async def decide(case: Case) -> dict[str, str]:
        return {"action": "deny"}

    url = (await kit_agent(decide)).removesuffix("/decide")
    async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok", "agent_version": VERSION})


def test_the_handler_must_be_async_and_the_version_named() -> None:
    def sync(case: Case) -> dict[str, str]:
        return {}

    async def decide(case: Case) -> dict[str, str]:
        return {}

    with pytest.raises(TypeError, match="async function"):
        app(sync, version=VERSION)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version"):
        app(decide, version=" ")
    with pytest.raises(ValueError, match="deadline"):
        app(decide, version=VERSION, deadline=0)
    with pytest.raises(ValueError, match=r"Price\.input"):
        Price(input=-1, output=0)


def test_importing_the_kit_loads_no_store_and_no_broker_client() -> None:
    """An agent's image does not need the sidecar's store: ``import shadow.kit`` (and each
    adapter's import of the kit) loads neither DuckDB nor aiokafka, nor any framework."""
    code = (
        "import sys, shadow.kit\n"
        "bad = [m for m in ('duckdb', 'aiokafka', 'shadow.store', 'pydantic_ai', 'agents',"
        " 'langchain_core', 'mcp') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tools_error_is_a_shadow_error() -> None:
    from shadow.errors import ShadowError

    assert issubclass(ToolsError, ShadowError)
