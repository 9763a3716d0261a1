"""``shadow agent check``: real agents through a real sidecar, against a real upstream MCP
server (the SDK's ``MCPServer`` under uvicorn, tests/shadow/gateway/conftest.py).

Agents are aiohttp servers on loopback (tests/shadow/conftest.py ``agent_server``) or
``module:callable`` agents (tests/shadow/check_agents.py), each using the official MCP
Python SDK client on its ``tools_url``. The command runs in process on a thread (its own
event loop) beside the agents and the upstream served by the test's loop. A good agent
exits 0; each broken one exits 1 and is named on a ``VIOLATION`` line; usage mistakes are
one line and exit 2.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from shadow.agent_check import CaseRun, ToolCall, ToolsSeen, assess, describe_error
from shadow.cli import main
from tests.clients.backoffice import typed_backoffice, typed_policy
from tests.shadow.conftest import AgentServerFactory, Reply
from tests.shadow.gateway.conftest import (  # noqa: F401 (fixtures used by the tests here)
    UpstreamFactory,
    gateway_policy,
    upstream,
    upstream_token,
)

AGENTS = "tests.shadow.check_agents"
USAGE = {"input_tokens": 120, "output_tokens": 12, "cost_usd": 0.0004}
CASE = "check-refund-1"  # the synthetic case of the policy's one task type, refund


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def violations(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.startswith("VIOLATION ")]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.startswith("WARNING ")]

    def line(self, task_type: str, check: str) -> str:
        """The report's line for one check of one task type."""
        found = [x for x in self.out.splitlines() if x.split()[:2] == [task_type, check]]
        assert len(found) == 1, self.out
        return found[0]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Result:
    capsys.readouterr()
    code = main(["agent", "check", *argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


async def check(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """``shadow agent check ARGV...`` on a thread, beside the servers of the test's loop."""
    return await asyncio.to_thread(_run, capsys, list(argv))


@pytest.fixture
def policy_file(tmp_path: Path, no_shadow_env: None) -> Any:
    """``policy_file(text)``: the policy written to a file, its path as a string."""

    def write(text: str) -> str:
        path = tmp_path / "policy.yaml"
        path.write_text(text)
        return str(path)

    return write


async def works_the_case(body: dict[str, Any]) -> None:
    """What a good agent does with its case: read the order, refund it once."""
    async with Client(body["tools_url"]) as tools:
        order = await tools.call_tool("get_order", {"order_id": "o-1"})
        amount = (order.structured_content or {}).get("amount", 0)
        await tools.call_tool("issue_refund", {"order_id": "o-1", "amount": amount})


# -- good agents --------------------------------------------------------------------------


async def test_a_good_http_agent_follows_the_contract(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    upstream: UpstreamFactory,  # noqa: F811
    agent_server: AgentServerFactory,
) -> None:
    up = await upstream()

    async def answer(body: dict[str, Any]) -> Reply:
        await works_the_case(body)
        return Reply(200, {"decision": {"action": "approve"}, "usage": USAGE})

    agent = await agent_server(answer)
    res = await check(capsys, "--agent", agent.url, "--config", policy_file(gateway_policy(up.url)))
    assert res.code == 0, res.out + res.err
    assert res.violations == []
    assert res.warnings == []
    assert res.out.splitlines()[-1] == (
        "shadow agent check: the agent follows the contract (0 warnings)"
    )
    assert "1 forwarded to the upstream" in res.line("refund", "reads")
    assert "1 captured (never forwarded in shadow)" in res.line("refund", "writes")
    assert "get_order (read), issue_refund (write), cancel_order (write)" in res.line(
        "refund", "tools"
    )
    assert "used in 1/1" in res.line("refund", "tools_url")
    # What was sent: one synthetic case with an empty payload, shadow markers and tools URL.
    [request] = agent.requests
    assert request.body["event_id"] == CASE
    assert request.body["payload"] == {}
    assert request.body["shadow"] is True
    assert request.headers["X-Shadow-Mode"] == "true"
    assert request.body["tools_url"] == request.headers["X-Shadow-Tools-Url"]
    # Reads reached the upstream; the write stopped at the gateway.
    assert up.calls == [("get_order", {"order_id": "o-1"})]


async def test_a_good_module_agent_follows_the_contract_and_a_meant_repeat_is_no_retry(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    upstream: UpstreamFactory,  # noqa: F811
) -> None:
    up = await upstream()
    config = policy_file(gateway_policy(up.url))
    res = await check(capsys, "--agent", f"{AGENTS}:good", "--config", config)
    assert res.code == 0, res.out + res.err
    assert res.violations == []
    assert res.warnings == []
    twice = await check(capsys, "--agent", f"{AGENTS}:twice", "--config", config)
    assert twice.code == 0, twice.out
    assert "2 captured" in twice.line("refund", "writes")
    assert "0 writes retried" in twice.line("refund", "retries")
    assert up.writes() == []


# -- broken agents, each named ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "named", "check_name"),
    [
        (
            Reply(200, {"action": "approve", "usage": USAGE}),
            f'VIOLATION refund {CASE}: no decision: the answer has no "decision" object',
            "answer",
        ),
        (
            Reply(200, b"approve, probably"),
            f"VIOLATION refund {CASE}: answer is not JSON (invalid JSON:",
            "answer",
        ),
        (
            Reply(200, {"decision": {"action": "approve"}, "usage": USAGE}, delay=5.0),
            f"VIOLATION refund {CASE}: too slow: no answer within the agent timeout (0.5 s)",
            "timing",
        ),
        (
            Reply(503, {"error": "overloaded"}),
            f"VIOLATION refund {CASE}: answered an HTTP error, not 200 (HTTP 503:",
            "answer",
        ),
    ],
    ids=["no-decision", "not-json", "too-slow", "http-error"],
)
async def test_an_agent_with_a_bad_answer_is_named(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    upstream: UpstreamFactory,  # noqa: F811
    agent_server: AgentServerFactory,
    reply: Reply,
    named: str,
    check_name: str,
) -> None:
    up = await upstream()

    async def answer(body: dict[str, Any]) -> Reply:
        if not reply.delay:
            await works_the_case(body)  # the calls are fine: only the answer is wrong
        return reply

    agent = await agent_server(answer)
    config = policy_file(gateway_policy(up.url))
    res = await check(capsys, "--agent", agent.url, "--config", config, "--timeout", "0.5")
    assert res.code == 1, res.out + res.err
    assert len(res.violations) == 1, res.out
    assert res.violations[0].startswith(named), res.violations
    assert res.line("refund", check_name).split()[2] == "FAIL"
    assert res.out.splitlines()[-1].startswith("shadow agent check: 1 violation of the agent")


@pytest.mark.parametrize(
    ("agent", "named", "check_name"),
    [
        (
            "retries_a_write",
            f"VIOLATION refund {CASE}: retried write issue_refund: the same call again without "
            '_meta["io.shadow/repeat"] (attached to the first: one write)',
            "retries",
        ),
        (
            "no_tools",
            f"VIOLATION refund {CASE}: tools_url ignored: no tool called through it, while "
            "refund has tools",
            "tools_url",
        ),
        (
            "off_the_allowlist",
            f"VIOLATION refund {CASE}: called lookup_customer, which is not on refund's "
            "allowlist (refused)",
            "allowlist",
        ),
    ],
    ids=["retries-a-write", "ignores-tools-url", "outside-the-allowlist"],
)
async def test_an_agent_misusing_its_tools_is_named(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    upstream: UpstreamFactory,  # noqa: F811
    agent: str,
    named: str,
    check_name: str,
) -> None:
    up = await upstream()
    config = policy_file(gateway_policy(up.url))
    res = await check(capsys, "--agent", f"{AGENTS}:{agent}", "--config", config)
    assert res.code == 1, res.out + res.err
    assert res.violations == [named], res.out
    assert res.line("refund", check_name).split()[2] == "FAIL"
    assert up.writes() == []  # whatever the agent did, nothing wrote in shadow


async def test_an_answer_without_usage_is_a_warning_not_a_violation(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    upstream: UpstreamFactory,  # noqa: F811
    agent_server: AgentServerFactory,
) -> None:
    up = await upstream()

    async def answer(body: dict[str, Any]) -> Reply:
        await works_the_case(body)
        return Reply(200, {"decision": {"action": "approve"}})

    agent = await agent_server(answer)
    res = await check(capsys, "--agent", agent.url, "--config", policy_file(gateway_policy(up.url)))
    assert res.code == 0, res.out
    assert res.violations == []
    assert res.warnings == [
        f"WARNING refund {CASE}: no usage in the answer (optional in the contract; its tokens "
        "and cost read 0)"
    ]
    assert res.line("refund", "usage").split()[2] == "warn"
    assert res.out.splitlines()[-1].endswith("the agent follows the contract (1 warning)")


async def test_a_shadow_result_that_breaks_the_tools_output_schema_is_named(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    upstream: UpstreamFactory,  # noqa: F811
) -> None:
    up = await upstream(typed_backoffice())
    text = typed_policy(up.url, shadow_result={"amount": 0, "status": "issued"})
    res = await check(capsys, "--agent", f"{AGENTS}:good", "--config", policy_file(text))
    assert res.code == 1, res.out + res.err
    problem = (
        "task_types.refund.tools.shadow_result.issue_refund does not satisfy the tool's "
        "outputSchema: refund_id: required property missing"
    )
    # The SDK client the agent uses fails on the error answer, so the agent fails too.
    assert f"VIOLATION refund {CASE}: write issue_refund could not be answered: {problem}" in (
        res.violations
    )
    assert res.violations[-1] == f"VIOLATION refund -: shadow_result: {problem}", res.out
    assert res.line("refund", "shadow_result").split()[2] == "FAIL"


async def test_given_cases_with_outcomes_are_sent_as_they_are_and_compared(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    tmp_path: Path,
    upstream: UpstreamFactory,  # noqa: F811
    agent_server: AgentServerFactory,
) -> None:
    up = await upstream()

    async def answer(body: dict[str, Any]) -> Reply:
        await works_the_case(body)
        return Reply(200, {"decision": {"action": "approve"}, "usage": USAGE})

    agent = await agent_server(answer)
    refund = {"tool": "issue_refund", "args": {"order_id": "o-1", "amount": 42.5}}
    records = [
        {"kind": "event", "event_id": "r-1", "task_type": "refund", "payload": {"order_id": "o-1"}},
        {"kind": "event", "event_id": "r-2", "task_type": "refund", "payload": {"order_id": "o-2"}},
        {
            "kind": "outcome",
            "event_id": "r-1",
            "decision": {"action": "approve"},
            "actions": [refund],
        },
        {"kind": "outcome", "event_id": "r-2", "decision": {"action": "deny"}},
    ]
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    config = policy_file(gateway_policy(up.url))
    res = await check(capsys, "--agent", agent.url, "--config", config, "--cases", str(cases))
    assert res.code == 0, res.out + res.err
    assert sorted(r.body["event_id"] for r in agent.requests) == ["r-1", "r-2"]
    assert [r.body["payload"] for r in agent.requests if r.body["event_id"] == "r-2"] == [
        {"order_id": "o-2"}
    ]
    assert f"cases: 2 events and 2 outcomes from {cases}" in res.out
    compare = res.line("refund", "compare")
    assert "1 agree" in compare
    assert "1 disagree" in compare


# -- usage errors -------------------------------------------------------------------------


async def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    policy_file: Any,
    tmp_path: Path,
    upstream: UpstreamFactory,  # noqa: F811
) -> None:
    up = await upstream()
    config = policy_file(gateway_policy(up.url))
    good = f"{AGENTS}:good"
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"kind": "event", "event_id": "r-1", "task_type": "refund"}\n')
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"kind": "event", "event_id": "r-1", "task_type": "x", "payload": {}}\n')
    stopped = await upstream()
    assert stopped.stop is not None
    await stopped.stop()
    cases: list[tuple[list[str], str]] = [
        (["--config", config], "the following arguments are required: --agent"),
        (["--agent", good], "the following arguments are required: --config"),
        (["--agent", good, "--config", str(tmp_path / "none.yaml")], "cannot read file"),
        (["--agent", "nonsense", "--config", config], "agent must be an http(s) URL"),
        (
            ["--agent", good, "--config", config, "--cases", str(tmp_path / "none.jsonl")],
            "cannot read --cases",
        ),
        (
            ["--agent", good, "--config", config, "--cases", str(bad_line)],
            f"--cases {bad_line} line 1: payload: required",
        ),
        (
            ["--agent", good, "--config", config, "--cases", str(unknown)],
            f"--cases {unknown} line 1: task type 'x' is not in",
        ),
        (
            ["--agent", good, "--config", policy_file(gateway_policy(stopped.url))],
            f"cannot list the tools of the policy's upstream backoffice ({stopped.url}): ",
        ),
    ]
    for argv, says in cases:
        res = await check(capsys, *argv)
        assert res.code == 2, (argv, res.out, res.err)
        lines = res.err.strip().splitlines()
        assert len(lines) == 1, (argv, res.err)
        assert lines[0].startswith("shadow: error: "), (argv, res.err)
        assert says in lines[0], (argv, lines[0])
    capsys.readouterr()
    assert main(["agent"]) == 2
    assert "shadow: error:" in capsys.readouterr().err


# -- the judgement, as values -------------------------------------------------------------


def test_each_agent_error_reason_is_said_in_the_contracts_words() -> None:
    said = {
        "timeout after 2.0 s": "too slow: no answer within the agent timeout (2 s)",
        "invalid JSON: Expecting value": "answer is not JSON (invalid JSON: Expecting value)",
        "answer is an array, expected a JSON object": "answer is not a JSON object (",
        "invalid agent answer: decision: required; expected a JSON object": "no decision: ",
        "invalid agent answer: decision: expected a JSON object, got a number (3)": (
            'no decision: "decision" is not a JSON object'
        ),
        "invalid agent answer: confidence: expected a number in [0.0, 1.0], got 7": (
            "invalid answer (confidence"
        ),
        "connection failed: refused (after 3 attempts)": "no answer: connection failed",
        "agent raised KeyError: 'order_id'": "agent error: agent raised KeyError",
    }
    for reason, words in said.items():
        assert describe_error(reason, 2.0).startswith(words), reason


def test_a_case_without_calls_is_a_warning_when_other_cases_called_tools() -> None:
    def case(n: int, calls: tuple[ToolCall, ...]) -> CaseRun:
        return CaseRun(f"c-{n}", "refund", True, None, 12.0, True, calls)

    read = ToolCall("get_order", "read", "forwarded")
    tools = {"refund": ToolsSeen((("get_order", "read"),))}
    mixed = assess([case(1, (read,)), case(2, ())], tools, timeout=1.0)
    assert mixed.exit_code == 0
    assert [f.render() for f in mixed.warnings] == [
        "WARNING refund c-2: no tool called through its tools_url (other cases of refund "
        "called tools)"
    ]
    idle = assess([case(1, ()), case(2, ())], tools, timeout=1.0)
    assert idle.exit_code == 1
    assert [f.event_id for f in idle.violations] == ["c-1", "c-2"]
    # An answer near the timeout is a warning; a task type without tools gets one tools line.
    near = assess([CaseRun("c-3", "appeal", False, None, 950.0, True)], {"appeal": None}, timeout=1)
    assert [f.what[:5] for f in near.warnings] == ["slow:"]
    assert [x.check for x in near.lines] == [
        "answer",
        "timing",
        "usage",
        "tools",
        "actions",
        "compare",
    ]
