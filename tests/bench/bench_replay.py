"""Bench: ``replay`` of a 1,000,000-event sidecar history with an in-process agent.

Run as ``python tests/bench/bench_replay.py`` (``--events N`` for another size). It builds a
sidecar DuckDB file (the real schema from :class:`shadow.store.Store`, rows bulk-inserted
with SQL), then measures in the same run:

- a plain DuckDB scan: the join replay reads (events ⋈ current outcomes, ``event_id``
  order), fetched into Python in batches -- the floor for any replay of this file;
- replay with a cold cache: every case read, redacted, sent through the real
  :class:`~shadow.agent.AgentRunner` to an async ``module:callable`` agent
  (:class:`~shadow.agent.CallableAgent`), cached, diffed under the policy and tallied;
- replay again with the warm cache (no agent call), i.e. a resumed or repeated run;
- the same two, sharded over ``--workers`` processes (:func:`replay.shard.run_sharded`,
  default 2: this machine's cores), with their own cache.

Goal: 1M events in under 60 s cold. Nothing is asserted: it prints one table, and the
sharded report is checked to equal the single-process one (counts, fields, examples).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from replay.cache import CachedAgent
from replay.document import build_document, deterministic_view
from replay.history import History, ResponseCache
from replay.model import Selection
from replay.runner import ReplayRunner
from replay.shard import ShardJob, run_sharded
from shadow.agent import AgentRunner, load_agent
from shadow.policy import parse_policy
from shadow.store import Store

AGENT = f"{__name__}:agent"  # this module, however it was started
TASKS = ("refund_request", "invoice_match", "ticket_routing")
POLICY = """
task_types:
  refund_request:
    redact: [payload.customer.email]
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
  invoice_match:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
  ticket_routing:
    compare:
      fields:
        action: {match: exact}
        amount: {match: number, abs: 0.01}
      unlisted: exact
"""


async def agent(request: dict[str, Any]) -> dict[str, Any]:
    """The in-process agent: approves below 80 (the humans: below 75)."""
    amount = request["payload"]["amount"]
    return {
        "decision": {"action": "approve" if amount < 80 else "deny", "amount": amount},
        "agent_version": "bench-agent@1",
        "usage": {"input_tokens": 50, "output_tokens": 5, "cost_usd": 0.0001},
    }


async def build(path: Path, n: int) -> None:
    async with Store(path):  # the real schema
        pass
    con = duckdb.connect(str(path))
    try:
        tasks = "['" + "','".join(TASKS) + "']"
        con.execute(
            "INSERT INTO events SELECT 'ev-' || lpad(i::VARCHAR, 8, '0'), "
            f"{tasks}[(i % 3) + 1], json_object('amount', i % 100, 'customer', "
            "json_object('email', 'c' || i || '@example.com', 'tier', 'gold')), "
            "'2026-11-20T10:00:00Z', 'eu', md5(i::VARCHAR), 'bench', now(), false, false "
            "FROM range(?) t(i)",
            [n],
        )
        con.execute(
            "INSERT INTO outcomes SELECT 'ev-' || lpad(i::VARCHAR, 8, '0'), 1, true, "
            "json_object('action', CASE WHEN i % 100 < 75 THEN 'approve' ELSE 'deny' END, "
            "'amount', i % 100), '[]', 'ops', '2026-11-20T11:00:00Z', "
            "'2026-11-20T11:00:00Z'::TIMESTAMPTZ, md5('o' || i), 'bench', now(), false "
            "FROM range(?) t(i)",
            [n],
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()


def scan(path: Path, batch: int) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute(
            "SELECT e.event_id, e.task_type, CAST(e.payload AS VARCHAR), e.occurred_at, "
            "e.segment, CAST(o.decision AS VARCHAR), CAST(o.actions AS VARCHAR), o.decided_by, "
            "o.decided_at FROM events e JOIN outcomes o ON o.event_id = e.event_id "
            "AND o.is_current ORDER BY e.event_id"
        )
        rows = 0
        while chunk := cur.fetchmany(batch):
            rows += len(chunk)
        return rows
    finally:
        con.close()


async def replay_once(
    path: Path, cache: Path, batch: int, concurrency: int
) -> tuple[int, Any, Any]:
    policy = parse_policy(POLICY)
    async with (
        History(path, batch=batch) as history,
        ResponseCache(cache) as store,
        AgentRunner(load_agent(AGENT, timeout=30), concurrency=concurrency) as runner,
    ):
        source = CachedAgent(
            runner, store, spec=AGENT, clock=time.monotonic, now=lambda: datetime.now(UTC)
        )
        await source.start()
        result = await ReplayRunner(history, policy, source).run()
    return result.scored, source.stats, result


async def replay_sharded(
    path: Path, cache: Path, batch: int, concurrency: int, workers: int
) -> tuple[int, Any, Any]:
    job = ShardJob(
        str(path),
        Selection(),
        parse_policy(POLICY),
        AGENT,
        cache=str(cache),
        concurrency=concurrency,
        batch=batch,
    )
    result, stats = await run_sharded(job, workers)
    return result.scored, stats, result


def view(result: Any) -> Any:
    """The report's counts (no timing) for comparing two runs."""
    return deterministic_view(
        build_document(
            result,
            policy=parse_policy(POLICY),
            agent={"spec": AGENT},
            history="",
            selection=Selection(),
            alpha=0.05,
            run={},
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="sharded runs (0: none)")
    args = parser.parse_args()
    views = []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        db, cache = Path(tmp) / "history.duckdb", Path(tmp) / "cache.duckdb"
        t = time.perf_counter()
        asyncio.run(build(db, args.events))
        built = time.perf_counter() - t
        rows: list[tuple[str, int, float, str]] = []
        t = time.perf_counter()
        scanned = scan(db, args.batch)
        rows.append(("plain DuckDB scan (join, fetch)", scanned, time.perf_counter() - t, ""))
        for label in ("replay, cold cache", "replay, warm cache"):
            t = time.perf_counter()
            scored, stats, result = asyncio.run(
                replay_once(db, cache, args.batch, args.concurrency)
            )
            note = f"{stats.calls} agent calls, {stats.hits} cached"
            rows.append((label, scored, time.perf_counter() - t, note))
            views.append(view(result))
        sharded = Path(tmp) / "sharded-cache.duckdb"
        for label in ("cold", "warm") if args.workers else ():
            t = time.perf_counter()
            scored, stats, result = asyncio.run(
                replay_sharded(db, sharded, args.batch, args.concurrency, args.workers)
            )
            note = f"{stats.calls} agent calls, {stats.hits} cached"
            what = f"replay, {label}, {args.workers} processes"
            rows.append((what, scored, time.perf_counter() - t, note))
            views.append(view(result))
    print(f"history: {args.events:,} events in a sidecar DuckDB file (built in {built:.1f} s)")
    print(f"{'what':34} {'cases':>10} {'seconds':>9} {'cases/s':>10}  note")
    for what, n, secs, note in rows:
        print(f"{what:34} {n:>10,} {secs:>9.2f} {n / secs:>10,.0f}  {note}")
    same = all(v == views[0] for v in views)
    print(f"every run's report counts equal: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
