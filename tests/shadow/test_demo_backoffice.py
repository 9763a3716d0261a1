"""The demo's back office (a real SDK ``MCPServer`` on loopback) and ``shadow demo`` working
through the sidecar's tool gateway: reads reach the back office, writes never do, and the
writes captured are the actions compared with the humans'."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError
from rich.console import Console

from shadow.cli import main
from shadow.demo import DEMO_POLICY, TASK_TYPES, demo_policy, generate, reference_agent
from shadow.demo.backoffice import READ_TOOLS, WRITE_TOOLS, BackOffice, ToolAgent, tool_agent
from shadow.demo_run import AGENT, report_back_office
from shadow.diff import Differ
from shadow.gateway import GATEWAY
from shadow.model import Action, Comparison, Outcome, ShadowDecision, Verdict, WorkEvent
from shadow.policy import parse_policy
from shadow.store import Store
from tests.shadow.conftest import SidecarFactory

REFUND, INVOICE, CLAIMS = TASK_TYPES
LOOKALIKE = "\uff49\uff53\uff53\uff55\uff45_refund"  # fullwidth "issue", NFKC-folds to it


def request_for(case: Any, tools_url: str | None = None) -> dict[str, Any]:
    task = parse_policy(DEMO_POLICY).task_types[case.task_type]
    request = {
        "event_id": case.event["event_id"],
        "task_type": case.task_type,
        "payload": task.redact_payload(case.event["payload"]),
        "shadow": True,
    }
    if tools_url is not None:
        request["tools_url"] = tools_url
    return request


def first_of_each(cases: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in cases:
        out.setdefault(case.task_type, case)
    return out


# -- the back office on its own ----------------------------------------------------------------


async def test_the_back_office_serves_reads_and_counts_and_carries_out_writes() -> None:
    """Called directly (not through the sidecar) a write does arrive and is counted: the
    demo's "0 writes received" is a count that can fail."""
    cases = generate(60, seed=7)
    one = first_of_each(cases)
    async with BackOffice(cases) as office:
        assert office.url.startswith("http://127.0.0.1:")
        async with Client(office.url) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert set(listed) == set(READ_TOOLS.values()) | {
                w for ws in WRITE_TOOLS.values() for w in ws
            }
            for read in READ_TOOLS.values():
                annotations = listed[read].annotations
                assert annotations is not None
                assert annotations.read_only_hint is True
            for writes in WRITE_TOOLS.values():
                for name in writes:
                    hint = listed[name].annotations
                    assert hint is None or hint.read_only_hint is not True

            order_id = one[REFUND].event["payload"]["order_id"]
            order = (await client.call_tool("get_order", {"order_id": order_id})).structured_content
            assert order is not None
            assert order["amount"] == one[REFUND].event["payload"]["amount"]
            assert "email" not in order["customer"]  # what the policy redacts, a read never shows
            claim_id = one[CLAIMS].event["payload"]["claim"]["id"]
            claim = (await client.call_tool("get_claim", {"claim_id": claim_id})).structured_content
            assert claim is not None
            assert not {"name", "date_of_birth"} & set(claim["member"])
            invoice_id = one[INVOICE].event["payload"]["invoice"]["id"]
            invoice = await client.call_tool("get_invoice", {"invoice_id": invoice_id})
            assert invoice.structured_content is not None
            assert "remit_to" not in invoice.structured_content
            assert office.writes_received == 0
            assert office.reads_received == 3

            args = {"order_id": order_id, "amount": 5.0, "currency": "EUR"}
            await client.call_tool("issue_refund", args)
            assert office.writes == [("issue_refund", args)]
            assert office.orders[order_id]["refunded"] == 5.0
            missing = await client.call_tool("get_order", {"order_id": "ORD-none"})
            assert missing.is_error
        assert office.calls["get_order"] == 2
    await office.close()  # idempotent


async def test_the_demo_fails_when_a_write_reached_the_back_office() -> None:
    cases = generate(20, seed=7)
    claim = first_of_each(cases)[CLAIMS]
    console = Console(record=True, width=200)
    async with BackOffice(cases) as office:
        assert report_back_office(office, console)
        async with Client(office.url) as client:
            await client.call_tool(
                "uphold_denial", {"claim_id": claim.event["payload"]["claim"]["id"]}
            )
        assert not report_back_office(office, console)
    text = console.export_text()
    assert "0 writes received" in text
    assert "1 writes received" in text
    assert "error: 1 writes reached the demo back office" in text


def test_the_demo_policy_names_the_back_office_and_an_allowlist_per_task_type() -> None:
    pol = parse_policy(demo_policy("http://127.0.0.1:1234/mcp"))
    assert pol.upstreams["backoffice"].url == "http://127.0.0.1:1234/mcp"
    for name in TASK_TYPES:
        tools = pol.task_types[name].tools
        assert tools is not None
        own = {READ_TOOLS[name], *WRITE_TOOLS[name]}
        assert {t for t in own if tools.allowed(t)} == own
        others = {w for tt, ws in WRITE_TOOLS.items() if tt != name for w in ws}
        assert not any(tools.allowed(t) for t in others)
        assert tools.listed_class(READ_TOOLS[name]) == "read"
        assert all(tools.listed_class(w) == "write" for w in WRITE_TOOLS[name])
        assert pol.task_types[name].compare.actions is not None


def test_the_tool_share_is_a_stable_sample_of_event_ids() -> None:
    ids = [c.event["event_id"] for c in generate(4000, seed=7)]
    picked = [i for i in ids if tool_agent.uses_tools(i)]
    assert picked == [i for i in ids if ToolAgent(tool_agent.share).uses_tools(i)]
    assert 0.6 * tool_agent.share * len(ids) < len(picked) < 1.4 * tool_agent.share * len(ids)
    assert not any(ToolAgent(0.0).uses_tools(i) for i in ids)
    assert all(ToolAgent(1.0).uses_tools(i) for i in ids)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="share"):
            ToolAgent(bad)


# -- through a sidecar -------------------------------------------------------------------------


async def test_the_tool_agent_decides_as_the_reference_agent_and_its_writes_are_captured(
    sidecar: SidecarFactory,
) -> None:
    """Every case through the tools (share 1): the answer is the reference agent's, the
    writes the gateway captured are its actions in order, none reached the back office."""
    cases = generate(300, seed=7)
    async with BackOffice(cases) as office:
        sc = await sidecar(policy=demo_policy(office.url), agent=AGENT)
        gateway = sc.app[GATEWAY]
        agent = ToolAgent(1.0)
        sample = [c for c in cases if c.task_type == REFUND][:6] + [
            c for c in cases if c.task_type != REFUND
        ][:8]
        for case in sample:
            event = WorkEvent.from_json(case.event)
            url = gateway.shadow_tools_url(event)
            assert url is not None
            answer = await agent(request_for(case, url))
            offline = reference_agent(request_for(case))
            usage = answer.pop("usage")
            assert usage["input_tokens"] >= offline.pop("usage")["input_tokens"]  # it read too
            assert answer == offline
            decided = gateway.settle(event, _decision(case.event["event_id"], answer))
            assert decided.tool_calls
            assert decided.declared_actions is None  # its calls are the actions it listed
            assert list(decided.actions) == [
                Action(a["tool"], a["args"]) for a in answer["actions"]
            ]
        assert office.writes_received == 0
        assert office.reads_received == len(sample)


def _decision(event_id: str, answer: dict[str, Any]) -> ShadowDecision:
    return ShadowDecision.from_agent_response(event_id, answer, default_version="unused")


async def test_a_hostile_agent_cannot_write_to_the_back_office_through_the_demo_policy(
    sidecar: SidecarFactory,
) -> None:
    """Other task types' writes, case and Unicode look-alikes, a made-up tool: refused; the
    task type's own writes: captured. Nothing reaches the back office."""
    cases = generate(60, seed=7)
    refund = first_of_each(cases)[REFUND]
    async with BackOffice(cases) as office:
        sc = await sidecar(policy=demo_policy(office.url), agent=AGENT)
        gateway = sc.app[GATEWAY]
        event = WorkEvent.from_json(refund.event)
        url = gateway.shadow_tools_url(event)
        assert url is not None
        order_id = refund.event["payload"]["order_id"]
        outcomes: dict[str, str] = {}
        attempts: list[tuple[str, dict[str, Any]]] = [
            ("approve_payment", {"invoice_id": "INV-1", "payment_ids": ["PAY-1"]}),
            ("overturn_denial", {"claim_id": "CLM-1", "payable_amount": 10.0}),
            ("get_claim", {"claim_id": "CLM-1"}),
            ("Issue_Refund", {"order_id": order_id, "amount": 1.0, "currency": "EUR"}),
            ("issue_refund ", {"order_id": order_id, "amount": 1.0, "currency": "EUR"}),
            (LOOKALIKE, {"order_id": order_id, "amount": 1.0, "currency": "EUR"}),
            ("delete_order", {"order_id": order_id}),
            ("issue_refund", {"order_id": order_id, "amount": 1.0, "currency": "EUR"}),
            ("open_case", {"queue": "risk", "order_id": order_id}),
        ]
        async with Client(url) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == {"get_order", "issue_refund", "send_email", "open_case"}
            for name, args in attempts:
                try:
                    result = await client.call_tool(name, args)
                    outcomes[name] = "error" if result.is_error else "ok"
                except MCPError:
                    outcomes[name] = "refused"
        decided = gateway.settle(event, _decision(event.event_id, {"decision": {}}))
        assert outcomes == {
            "approve_payment": "refused",
            "overturn_denial": "refused",
            "get_claim": "refused",
            "Issue_Refund": "refused",
            "issue_refund ": "refused",
            LOOKALIKE: "refused",
            "delete_order": "refused",
            "issue_refund": "ok",
            "open_case": "ok",
        }
        assert [a.tool for a in decided.actions] == ["issue_refund", "open_case"]
        assert office.writes_received == 0
        assert office.reads_received == 0


# -- shadow demo -------------------------------------------------------------------------------


def test_the_demo_compares_captured_writes_and_its_back_office_receives_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "demo.duckdb"
    n = 1000
    argv = ["demo", "--no-progress", "--events", str(n), "--late-share", "0", "--db", str(db)]
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "writes received" in out
    (office_line,) = [line for line in out.splitlines() if line.startswith("Demo back office:")]
    assert office_line.endswith(" 0 writes received.")

    cases = {c.event["event_id"]: c for c in generate(n, seed=7)}
    sampled = {e for e in cases if tool_agent.uses_tools(e)}
    per_type = Counter(cases[e].task_type for e in sampled)
    assert all(per_type[t] > 0 for t in TASK_TYPES), per_type
    summary, rows, comparisons = asyncio.run(_stored(db))
    reads = int(office_line.split()[3])
    assert reads == sum(s.get("read/forwarded", 0) for s in summary.values()) == len(sampled)
    for name in TASK_TYPES:
        counts = summary[name]
        assert set(counts) == {"read/forwarded", "write/captured", "compared"}, counts
        assert counts["compared"] == per_type[name]
        # The summary lines under the table say the same.
        line = next(x for x in out.splitlines() if x.strip().startswith(name + " "))
        assert f"{counts['write/captured']} writes captured" in " ".join(line.split())

    # The writes captured are the reference agent's actions, in order, and the comparison of
    # each sampled case has the verdict the offline diff gives those actions.
    captured: dict[str, list[Action]] = {}
    for row in rows:
        if row["outcome"] == "captured":
            captured.setdefault(row["event_id"], []).append(Action(row["tool"], row["args"]))
    assert set(captured) == sampled
    pol = parse_policy(DEMO_POLICY)
    by_id = {c.event_id: c for c in comparisons}
    for event_id in sorted(sampled):
        case = cases[event_id]
        answer = reference_agent(request_for(case))
        expected = [Action(a["tool"], a["args"]) for a in answer["actions"]]
        assert captured[event_id] == expected
        human = Outcome.from_json(case.outcome)
        result = Differ(pol.task_types[case.task_type].compare)(
            answer["decision"], human.decision, captured[event_id], human.actions
        )
        comparison = by_id[event_id]
        assert comparison.verdict is (Verdict.AGREE if result.agree else Verdict.DISAGREE)
        actions = [f for f in comparison.fields if f.path == "actions"]
        assert len(actions) == 1
        assert not [f for f in comparison.fields if f.path == "actions.declared"]


async def _stored(
    db: Path,
) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]], list[Comparison]]:
    async with Store(str(db)) as store:
        return (
            await store.tool_summary(),
            await store.tool_calls(limit=100_000),
            await store.unpublished_comparisons(limit=100_000),
        )
