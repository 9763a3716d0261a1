"""The replay loop against a real HTTP agent on loopback, on a history with known agreement
(tests/replay/data.py): exact report numbers, shadow markers, redaction, the cache."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from replay.cache import CachedAgent
from replay.document import build_document, deterministic_view
from replay.history import History, ResponseCache
from replay.model import Selection
from replay.runner import ReplayRunner, StoreAnswers
from shadow.agent import AgentRunner, HttpAgent, load_agent
from shadow.policy import Policy, parse_policy
from shadow.stats import lower_bound, upper_bound
from tests.replay import data
from tests.replay.conftest import http_agent, write_sidecar_history
from tests.shadow.conftest import AgentServerFactory, Reply


async def replay_doc(
    history: Path,
    agent: str,
    cache: str,
    *,
    policy: Policy | None = None,
    selection: Selection | None = None,
    declared: str | None = None,
    batch: int = 16,
    stop: asyncio.Event | None = None,
) -> tuple[dict[str, Any], CachedAgent]:
    policy = policy or parse_policy(data.POLICY)
    transport = (
        HttpAgent(agent, timeout=5.0) if agent.startswith("http") else load_agent(agent, timeout=5)
    )
    async with (
        History(history, selection, batch=batch) as h,
        ResponseCache(cache) as c,
        AgentRunner(transport, concurrency=4, retries=0, default_version=declared or "?") as r,
    ):
        source = CachedAgent(
            r,
            c,
            spec=agent,
            declared_version=declared,
            clock=time.monotonic,
            now=lambda: datetime.now(UTC),
        )
        await source.start()
        result = await ReplayRunner(h, policy, source, stop=stop).run()
    doc = build_document(
        result,
        policy=policy,
        agent={"spec": agent},
        history=str(history),
        selection=selection or Selection(),
        alpha=0.05,
        run={},
    )
    return doc, source


def bounds(agree: int, n: int) -> tuple[float, float]:
    return round(lower_bound(agree, n, 0.05), 4), round(upper_bound(agree, n, 0.05), 4)


async def test_known_agreement_exact_numbers(
    agent_server: AgentServerFactory, jsonl_history: Path, tmp_path: Path
) -> None:
    server = await http_agent(agent_server, data.candidate_answer)
    doc, source = await replay_doc(jsonl_history, server.url, str(tmp_path / "c.duckdb"))
    assert doc["complete"] is True
    refund, ticket = doc["task_types"]["refund"], doc["task_types"]["ticket"]
    lo, hi = bounds(48, 60)
    assert {
        k: refund[k]
        for k in ("n", "agree", "agreement", "lower", "upper", "critical", "errors", "disagree")
    } == {
        "n": 60,
        "agree": 48,
        "agreement": 0.8,
        "lower": lo,
        "upper": hi,
        "critical": 10,
        "errors": 0,
        "disagree": 12,
    }
    assert refund["fields"] == {
        "action": {"compared": 60, "mismatches": 10, "rate": 0.1667, "critical": 10},
        "amount": {"compared": 60, "mismatches": 3, "rate": 0.05, "critical": 0},
    }
    assert refund["confusion"]["action"]["labels"] == ["approve", "deny"]
    assert refund["confusion"]["action"]["matrix"] == [[40, 0], [10, 10]]
    assert [e["event_id"] for e in refund["critical_examples"]] == [
        "rf-040",
        "rf-041",
        "rf-042",
        "rf-043",
        "rf-044",
    ]
    first = refund["critical_examples"][0]
    assert first["agent"] == {"action": "approve", "amount": 81}
    assert first["human"] == {"action": "deny", "amount": 80}
    assert {m["path"] for m in first["mismatches"]} == {"action", "amount"}
    assert "email" not in first["payload"]["customer"]
    assert refund["usage"] == {"input_tokens": 6000, "output_tokens": 600, "cost_usd": 0.12}
    assert refund["gates"]["cleared"] == "L1"
    assert refund["gates"]["levels"]["L2"]["met"] is False
    assert refund["latency_ms"]["count"] == 60

    lo, hi = bounds(36, 40)
    assert {
        k: ticket[k]
        for k in ("n", "agree", "agreement", "lower", "upper", "critical", "errors", "disagree")
    } == {
        "n": 40,
        "agree": 36,
        "agreement": 0.9,
        "lower": lo,
        "upper": hi,
        "critical": 0,
        "errors": 1,
        "disagree": 3,
    }
    # billing and payments are one class in the policy: the candidate's "payments" for a
    # human "billing" agrees, and sits on the diagonal.
    assert ticket["confusion"]["queue"] == {
        "labels": ["sales", "billing / payments", "tech"],
        "rows": "human",
        "columns": "agent",
        "matrix": [[12, 0, 0], [2, 12, 0], [1, 0, 12]],
    }
    assert [e["event_id"] for e in ticket["error_examples"]] == ["tk-005"]
    assert "HTTP 500" in ticket["error_examples"][0]["error"]
    assert doc["totals"]["n"] == 100
    assert doc["totals"]["agree"] == 84
    assert doc["history"]["selected"] == 100
    assert doc["history"]["cases"] == 100
    assert doc["agent"]["agent_version"] == data.AGENT_VERSION
    # Every call carried the shadow markers; the redacted field never left the replay.
    assert len(server.requests) == 100
    assert source.stats.calls == 100
    for req in server.requests:
        assert req.headers["X-Shadow-Mode"] == "true"
        assert req.headers["X-Shadow-Event-Id"] == req.body["event_id"]
        assert req.body["shadow"] is True
        assert "email" not in str(req.body)


async def test_rerun_is_served_from_the_cache(
    agent_server: AgentServerFactory, jsonl_history: Path, tmp_path: Path
) -> None:
    server = await http_agent(agent_server, data.candidate_answer)
    cache = str(tmp_path / "c.duckdb")
    first, _ = await replay_doc(jsonl_history, server.url, cache)
    second, source = await replay_doc(jsonl_history, server.url, cache)
    # 99 successful answers are cached; the one HTTP 500 is retried (errors are not cached).
    assert source.stats.hits == 99
    assert source.stats.calls == 1
    assert server.event_ids.count("tk-005") == 2
    assert len(server.requests) == 101
    assert deterministic_view(first) == deterministic_view(second)


async def test_in_process_agent_gives_the_same_report(
    agent_server: AgentServerFactory, jsonl_history: Path, tmp_path: Path
) -> None:
    server = await http_agent(agent_server, data.candidate_answer)
    http_doc, _ = await replay_doc(jsonl_history, server.url, str(tmp_path / "a.duckdb"))
    py_doc, _ = await replay_doc(jsonl_history, "tests.replay.data:candidate", ":memory:")
    for name in ("refund", "ticket"):
        a, b = http_doc["task_types"][name], py_doc["task_types"][name]
        for key in ("n", "agree", "critical", "errors", "fields", "confusion"):
            assert a[key] == b[key], (name, key)
    assert "AgentFailed" in py_doc["task_types"]["ticket"]["error_examples"][0]["error"]


async def test_selection_by_task_type_time_sample_and_limit(jsonl_history: Path) -> None:
    agent = "tests.replay.data:candidate"
    only, _ = await replay_doc(
        jsonl_history, agent, ":memory:", selection=Selection(task_types=frozenset({"ticket"}))
    )
    assert list(only["task_types"]) == ["ticket"]
    assert only["task_types"]["ticket"]["n"] == 40
    since = datetime(2026, 11, 11, tzinfo=UTC)
    timed, _ = await replay_doc(jsonl_history, agent, ":memory:", selection=Selection(since=since))
    # occurred_at day is 1 + i % 20: days 11..20 are i % 20 >= 10, half of every 20.
    assert timed["history"]["selected"] == 50
    limited, _ = await replay_doc(jsonl_history, agent, ":memory:", selection=Selection(limit=7))
    assert limited["task_types"]["refund"]["n"] == 7
    assert limited["task_types"]["refund"]["critical_examples"] == []
    s1, _ = await replay_doc(jsonl_history, agent, ":memory:", selection=Selection(sample=0.3))
    s2, _ = await replay_doc(jsonl_history, agent, ":memory:", selection=Selection(sample=0.3))
    assert 10 < s1["history"]["selected"] < 50
    assert deterministic_view(s1) == deterministic_view(s2)


async def test_a_cold_pass_skips_the_lookups_a_warm_one_makes(
    jsonl_history: Path, tmp_path: Path
) -> None:
    cache = str(tmp_path / "c.duckdb")
    cold, first = await replay_doc(jsonl_history, "tests.replay.data:candidate", cache)
    assert (first.stats.lookups, first.stats.calls) == (0, 100)  # nothing cached: no lookup
    warm, second = await replay_doc(jsonl_history, "tests.replay.data:candidate", cache)
    assert second.stats.lookups == 7  # 100 cases in batches of 16
    assert (second.stats.hits, second.stats.calls) == (99, 1)  # the failed call, again
    assert deterministic_view(warm) == deterministic_view(cold)


async def test_declared_version_keys_the_cache(jsonl_history: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "c.duckdb")
    await replay_doc(jsonl_history, "tests.replay.data:candidate", cache, declared="v7")
    # Same declared version, a different spec: the cached answers are this version's.
    doc, source = await replay_doc(
        jsonl_history, "tests.replay.data:baseline", cache, declared="v7"
    )
    assert source.stats.calls == 1
    assert source.stats.hits == 99
    assert doc["task_types"]["refund"]["agree"] == 48
    other, source = await replay_doc(
        jsonl_history, "tests.replay.data:baseline", cache, declared="v8"
    )
    assert source.stats.hits == 0
    assert other["task_types"]["refund"]["agree"] == 60


async def test_a_new_agent_version_behind_the_same_url_is_not_served_stale_answers(
    agent_server: AgentServerFactory, jsonl_history: Path, tmp_path: Path
) -> None:
    answers = {"fn": data.baseline_answer}
    server = await http_agent(agent_server, lambda body: answers["fn"](body))
    cache = str(tmp_path / "c.duckdb")
    sel = Selection(task_types=frozenset({"refund"}))
    old, _ = await replay_doc(jsonl_history, server.url, cache, selection=sel)
    assert old["task_types"]["refund"]["agree"] == 60
    # Half the history gets new events (not cached), then the agent is redeployed.
    extra = [data.refund_event(i) | {"event_id": f"rf-{i + 100:03d}"} for i in range(3)]
    extra += [data.refund_outcome(i) | {"event_id": f"rf-{i + 100:03d}"} for i in range(3)]
    data.write_jsonl(jsonl_history, data.records() + extra)
    answers["fn"] = data.candidate_answer
    seen = len(server.requests)
    new, _source = await replay_doc(jsonl_history, server.url, cache, selection=sel, batch=8)
    assert new["agent"]["versions"] == {data.AGENT_VERSION: 63}
    assert new["task_types"]["refund"]["n"] == 63
    # Every case was asked once of the new version, none twice.
    asked = server.event_ids[seen:]
    assert len(asked) == len(set(asked)) == 63


async def test_baseline_from_the_store_rescores_live_decisions(tmp_path: Path) -> None:
    db = await write_sidecar_history(
        tmp_path / "sidecar.duckdb", live={data.BASELINE_VERSION: data.baseline_answer}
    )
    policy = parse_policy(data.POLICY)
    async with History(db, batch=25) as h:
        assert await h.stored_versions() == {data.BASELINE_VERSION: 100}
        result = await ReplayRunner(h, policy, StoreAnswers(h, data.BASELINE_VERSION)).run()
    assert result.tasks["refund"].n == 60
    assert result.tasks["refund"].agree == 60
    assert result.tasks["ticket"].errors == 1
    assert result.tasks["ticket"].agree == 39


async def test_stop_leaves_a_consistent_partial_result(
    agent_server: AgentServerFactory, jsonl_history: Path, tmp_path: Path
) -> None:
    stop = asyncio.Event()

    async def answer(body: dict[str, Any]) -> Reply:
        if len(server.requests) > 20:  # from the 21st call on: Ctrl-C, and no answer
            stop.set()
            await server.release.wait()
        return Reply(*data.candidate_answer(body))

    server = await agent_server(answer)
    cache = str(tmp_path / "c.duckdb")
    doc, _source = await replay_doc(jsonl_history, server.url, cache, stop=stop)
    assert doc["complete"] is False
    assert sorted(server.done) == [f"rf-{i:03d}" for i in range(20)]
    assert sum(t["n"] for t in doc["task_types"].values()) == doc["totals"]["n"] == 20
    assert doc["task_types"]["refund"]["agree"] == 19  # rf-000's amount is off by one
    # Read (two batches of 16, perhaps a third read ahead) is not scored: the report says so.
    h = doc["history"]
    assert h["scored"] == 20
    assert h["read"] == h["selected"] in (32, 48)
    assert h["unscored"] == h["read"] - 20
    # The next run resumes: the 20 answered cases come from the cache, the rest are asked.
    server.release.set()
    full, again = await replay_doc(jsonl_history, server.url, cache)
    assert full["complete"] is True
    assert (full["history"]["read"], full["history"]["scored"]) == (100, 100)
    assert full["history"]["unscored"] == 0
    assert again.stats.hits == 20
    assert again.stats.calls == 80
    assert full["task_types"]["refund"]["agree"] == 48
