"""Sharded replay (replay.shard): worker processes on hash partitions of the history, one
cache served by the parent, tallies merged. The report must be exactly the single-process
one, a stopped sharded run must resume without asking the agent anything twice, and the
agent must see the shadow markers and redacted payloads as in a single run."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from replay.cache import CallStats
from replay.document import build_document, deterministic_view
from replay.errors import ReplayError
from replay.history.reader import _shard_of
from replay.model import Selection
from replay.runner import ReplayResult
from replay.shard import ShardJob, run_sharded
from shadow.policy import parse_policy
from tests.replay import data
from tests.replay.conftest import write_sidecar_history
from tests.replay.test_runner import replay_doc
from tests.shadow.conftest import AgentServerFactory, Reply

pytestmark = pytest.mark.slow  # worker processes per test


def doc_of(result: ReplayResult, history: Path, selection: Selection | None = None) -> Any:
    doc = build_document(
        result,
        policy=parse_policy(data.POLICY),
        agent={"spec": "x"},
        history=str(history),
        selection=selection or Selection(),
        alpha=0.05,
        run={},
    )
    return deterministic_view(doc)


def job(history: Path, agent: str, cache: Path | str, **kw: Any) -> ShardJob:
    return ShardJob(
        str(history),
        kw.pop("selection", Selection()),
        parse_policy(data.POLICY),
        agent,
        cache=str(cache),
        timeout=5.0,
        concurrency=4,
        retries=0,
        batch=kw.pop("batch", 8),
        **kw,
    )


async def single_view(history: Path, agent: str, cache: Path, **kw: Any) -> Any:
    doc, _ = await replay_doc(history, agent, str(cache), **kw)
    return deterministic_view({**doc, "agent": {**doc["agent"], "spec": "x"}})


@pytest.mark.parametrize("workers", [2, 3])
async def test_sharded_report_equals_the_single_process_one(
    tmp_path: Path, jsonl_history: Path, workers: int
) -> None:
    sidecar = await write_sidecar_history(tmp_path / "sidecar.duckdb")
    agent = "tests.replay.data:candidate"
    for history in (sidecar, jsonl_history):
        single = await single_view(history, agent, tmp_path / f"single-{history.name}.duckdb")
        cache = tmp_path / f"sharded-{history.name}.duckdb"
        live = CallStats()  # what a progress bar shows while the workers run
        result, stats = await run_sharded(job(history, agent, cache), workers, live=live)
        assert doc_of(result, history) == single
        assert result.complete is True
        assert result.scored == 100
        assert (stats.calls, stats.hits, stats.failed) == (100, 0, 1)
        assert (live.calls, live.hits) == (100, 0)
        # Again, from the cache the parent kept: no call at all, the same report.
        live = CallStats()
        again, stats = await run_sharded(job(history, agent, cache), workers, live=live)
        assert doc_of(again, history) == single
        assert (stats.calls, stats.hits) == (1, 99)  # the failed call is asked again
        assert (live.calls, live.hits) == (1, 99)


async def test_the_selection_applies_per_shard(tmp_path: Path, jsonl_history: Path) -> None:
    sel = Selection(task_types=frozenset({"refund"}), sample=0.5)
    agent = "tests.replay.data:candidate"
    single = await single_view(jsonl_history, agent, tmp_path / "s.duckdb", selection=sel)
    result, _ = await run_sharded(
        job(jsonl_history, agent, tmp_path / "c.duckdb", selection=sel), 2
    )
    assert doc_of(result, jsonl_history, sel) == single
    assert single["history"]["selected"] == result.stats.selected < 60


async def test_a_stopped_sharded_run_resumes_without_asking_twice(
    agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    # Slow answers (0.2 s; 8 calls in flight over both workers): the stop requested after
    # 30 cases reaches the workers long before the 100 cases are done.
    server = await agent_server(lambda body: Reply(*data.candidate_answer(body), delay=0.2))
    history = await write_sidecar_history(tmp_path / "sidecar.duckdb")
    cache = tmp_path / "c.duckdb"
    stop = asyncio.Event()
    seen = [0]

    def progress(k: int) -> None:
        seen[0] += k
        if seen[0] >= 30:
            stop.set()

    first, _ = await run_sharded(
        job(history, server.url, cache, batch=5), 2, stop=stop, progress=progress
    )
    assert first.complete is False
    assert 0 < first.scored < 100
    view = doc_of(first, history)
    assert view["totals"]["n"] == sum(t["n"] for t in view["task_types"].values())
    asked_first = len(server.requests)
    server.answer = lambda body: Reply(*data.candidate_answer(body))
    rest, stats = await run_sharded(job(history, server.url, cache, batch=5), 2)
    assert rest.complete is True
    uncut = await single_view(history, server.url, tmp_path / "uncut.duckdb")
    assert doc_of(rest, history) == uncut
    # Every answer the first run received was kept and not asked for again (calls cut off
    # in flight by the stop were never answered, so they are asked again, as in a single
    # run); the failed tk-005 is never cached.
    kept = first.scored - sum(t.errors for t in first.tasks.values())
    assert stats.hits == kept
    assert stats.calls == 100 - kept
    again = server.event_ids[asked_first : asked_first + stats.calls]
    assert len(again) == len(set(again)) == stats.calls
    # The shadow markers and the redaction, as in a single run.
    for r in server.requests:
        assert r.headers["X-Shadow-Mode"] == "true"
        assert r.body["shadow"] is True
        assert "email" not in r.body["payload"].get("customer", {})


async def test_rate_is_one_limit_over_all_the_workers(
    agent_server: AgentServerFactory, tmp_path: Path, jsonl_history: Path
) -> None:
    """``--rate`` with ``--workers``: the workers share one limit. Measured loosely at the
    agent (arrival times; the exact schedule is test_gate's, on an injected clock): at 50
    calls/s two workers with a limit each would send ~50 calls in half a second; sharing
    one, ~25. The report is the single run's."""
    arrived: list[float] = []

    def answer(body: dict[str, Any]) -> Reply:
        arrived.append(time.monotonic())
        return Reply(*data.candidate_answer(body))

    server = await agent_server(answer)
    result, stats = await run_sharded(
        job(jsonl_history, server.url, tmp_path / "c.duckdb", rate=50.0), 2
    )
    assert stats.calls == len(arrived) == 100
    busiest = max(sum(t <= u < t + 0.5 for u in arrived) for t in arrived)
    assert busiest <= 25 + 7, busiest  # 7: arrival jitter, never the second worker's 25
    single = await single_view(jsonl_history, server.url, tmp_path / "single.duckdb")
    assert doc_of(result, jsonl_history) == single


async def test_limit_is_refused(tmp_path: Path, jsonl_history: Path) -> None:
    bad = job(
        jsonl_history, "tests.replay.data:candidate", ":memory:", selection=Selection(limit=5)
    )
    with pytest.raises(ReplayError, match="--limit"):
        await run_sharded(bad, 2)


async def test_a_bad_history_fails_the_run_with_the_workers_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "event", "event_id": "e1"}\n')
    with pytest.raises(ReplayError, match=r"bad\.jsonl"):
        await run_sharded(job(bad, "tests.replay.data:candidate", ":memory:"), 2)


async def test_workers_that_disagree_on_the_agent_version_run_again_expecting_the_new_one(
    agent_server: AgentServerFactory, tmp_path: Path, jsonl_history: Path
) -> None:
    """Worker 0's cases are all cached from agent v1, so it never calls the agent and keeps
    v1; worker 1 calls the agent, now v2. The parent runs a second round expecting v2: the
    report is v2's throughout, the report a single run gives on the same cache."""
    version = ["v1"]

    def answer(body: dict[str, Any]) -> Reply:
        status, reply = data.candidate_answer(body)
        return Reply(status, {**reply, "agent_version": version[0]} if status == 200 else reply)

    server = await agent_server(answer)
    shard0 = [r for r in data.records() if _shard_of(str(r["event_id"]), 2) == 0]
    part = data.write_jsonl(tmp_path / "part.jsonl", shard0)
    cache = tmp_path / "c.duckdb"
    await replay_doc(part, server.url, str(cache))  # v1 answers for worker 0's cases
    shutil.copy(cache, tmp_path / "single.duckdb")
    version[0] = "v2"

    result, _ = await run_sharded(job(jsonl_history, server.url, cache), 2)
    assert result.passes >= 2  # the second round
    assert result.complete is True
    view = doc_of(result, jsonl_history)
    assert set(view["agent"]["versions"]) == {"v2"}
    single = await single_view(jsonl_history, server.url, tmp_path / "single.duckdb")
    assert view == single
