"""Bench: the DuckDB store's write, join and evidence paths on a real temp file.

Run as ``python tests/bench/bench_store.py`` (add ``--quick`` for a smaller run). Measures:

- ``put_events`` throughput (records/s) at batch sizes 1, 100, 1000 and 5000, each on a
  fresh file (every call is one committed transaction, so batch 1 is bounded by the commit);
- ``put_decisions`` and ``put_outcomes`` throughput at batch 1000;
- the full join: ``ready_pairs`` + compare + ``put_comparisons`` until nothing is ready
  (``shadow.joiner.compare`` with the default strict rules when ``shadow/diff.py`` imports,
  otherwise a stand-in that builds the Comparison directly), plus the live path: joining
  100 given event ids in a store that already holds the whole set;
- retention: ``purge`` of every case of a store holding 50,000 compared cases (in its
  transactions of 2,000 cases), the file's size before, after and once as many new cases
  were written again (DuckDB reuses the freed space);
- ``evidence()`` latency over 1,000,000 comparisons (inserted with ``put_comparisons`` in
  batches of 100,000, whose rate is reported too).

Nothing is asserted: it prints one table. It stays under ~2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shadow.model import (
    Action,
    Comparison,
    FieldResult,
    Outcome,
    ShadowDecision,
    Usage,
    Verdict,
    WorkEvent,
)
from shadow.store import JoinRow, Store

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
AGENT = "refund-agent@7"
TASKS = ("refund_request", "invoice_match", "ticket_routing")


@dataclass(frozen=True)
class Row:
    what: str
    batch: str
    records: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")


def event(i: int) -> WorkEvent:
    return WorkEvent(
        f"ev-{i:08d}",
        TASKS[i % 3],
        {"amount": round(i * 0.37, 2), "days_since_purchase": i % 60, "customer": {"tier": "g"}},
        occurred_at="2026-11-20T10:00:00Z",
        segment="eu" if i % 2 else "us",
    )


def decision(i: int) -> ShadowDecision:
    return ShadowDecision(
        f"ev-{i:08d}",
        AGENT,
        {"action": "approve" if i % 10 else "deny", "amount": round(i * 0.37, 2)},
        (Action("issue_refund", {"amount": round(i * 0.37, 2)}),),
        confidence=0.9,
        usage=Usage(800, 60, 0.002),
        latency_ms=120.0,
    )


def outcome(i: int) -> Outcome:
    return Outcome(
        f"ev-{i:08d}",
        {"action": "approve" if i % 12 else "deny", "amount": round(i * 0.37, 2)},
        (Action("issue_refund", {"amount": round(i * 0.37, 2)}),),
        "ops/jane",
        "2026-11-20T10:07:00Z",
    )


def load_compare() -> tuple[Callable[[JoinRow], Comparison], str]:
    """``shadow.joiner.compare`` under default strict rules, or a direct stand-in.

    Works with either joiner signature (``compare(row, rules)`` or ``compare(row, differ)``)
    and probes it once, so a broken differ degrades to the stand-in instead of a crash."""
    if not (Path(__file__).resolve().parents[2] / "shadow" / "diff.py").exists():
        return direct_compare, "stand-in (no shadow/diff.py)"
    try:
        from shadow.joiner import compare
        from shadow.policy import CompareRules

        diff_module = importlib.import_module("shadow.diff")  # `shadow.diff` is also a function
        rules = CompareRules()
        differ: Any = diff_module.Differ(rules) if hasattr(diff_module, "Differ") else rules
        probe = JoinRow(TASKS[0], decision(1), outcome(1), outcome(1).content_hash)
        compare(probe, differ)
    except Exception as exc:  # a broken diff module must not stop the bench
        return direct_compare, f"stand-in (shadow.joiner.compare failed: {exc!r})"
    return (lambda row: compare(row, differ)), "shadow.joiner.compare"


def direct_compare(row: JoinRow) -> Comparison:
    d = row.decision
    agree = d.decision == row.outcome.decision
    return Comparison(
        d.event_id,
        row.task_type,
        d.agent_version,
        Verdict.AGREE if agree else Verdict.DISAGREE,
        (FieldResult("action", "exact", agree, True, ""),),
        critical_miss=not agree,
        outcome_hash=row.outcome_hash,
    )


async def timed_puts(
    store: Store, kind: str, total: int, batch: int, start: int = 0
) -> tuple[float, int]:
    """Write ``total`` records of ``kind`` in batches; returns (seconds, records stored)."""
    stored = 0
    t0 = time.perf_counter()
    for lo in range(start, start + total, batch):
        idx = range(lo, min(lo + batch, start + total))
        if kind == "events":
            res = await store.put_events([event(i) for i in idx], source="bench", now=NOW)
        elif kind == "decisions":
            res = await store.put_decisions([(decision(i), TASKS[i % 3]) for i in idx], now=NOW)
        else:
            res = await store.put_outcomes([outcome(i) for i in idx], source="bench", now=NOW)
        stored += len(res)
    return time.perf_counter() - t0, stored


async def bench_event_batches(tmp: Path, quick: bool) -> list[Row]:
    rows = []
    plan = [(1, 2_000), (100, 20_000), (1000, 50_000), (5000, 50_000)]
    if quick:
        plan = [(b, n // 10) for b, n in plan]
    for batch, total in plan:
        async with Store(tmp / f"events-{batch}.duckdb") as store:
            seconds, n = await timed_puts(store, "events", total, batch)
        rows.append(Row("put_events", str(batch), n, seconds))
    return rows


async def bench_join(tmp: Path, quick: bool) -> list[Row]:
    total = 5_000 if quick else 50_000
    compare, how = load_compare()
    rows = []
    async with Store(tmp / "join.duckdb") as store:
        await timed_puts(store, "events", total, 5000)
        seconds, n = await timed_puts(store, "decisions", total, 1000)
        rows.append(Row("put_decisions", "1000", n, seconds, f"{total:,} events stored"))
        seconds, n = await timed_puts(store, "outcomes", total, 1000)
        rows.append(Row("put_outcomes", "1000", n, seconds, f"{total:,} decisions stored"))

        # a re-delivery of everything: the idempotency check alone
        seconds, n = await timed_puts(store, "outcomes", total, 1000)
        rows.append(Row("put_outcomes (all duplicates)", "1000", n, seconds))

        t_ready = t_compare = t_put = 0.0
        joined = 0
        while True:
            t0 = time.perf_counter()
            ready = await store.ready_pairs(limit=5000)
            t1 = time.perf_counter()
            if not ready:
                t_ready += t1 - t0
                break
            comparisons = [compare(r) for r in ready]
            t2 = time.perf_counter()
            await store.put_comparisons(comparisons, now=NOW)
            t3 = time.perf_counter()
            t_ready, t_compare, t_put = t_ready + t1 - t0, t_compare + t2 - t1, t_put + t3 - t2
            joined += len(ready)
        full = t_ready + t_compare + t_put
        rows.append(Row("join: full sweep", "5000", joined, full, how))
        rows.append(Row("  ready_pairs", "5000", joined, t_ready))
        rows.append(Row("  compare", "5000", joined, t_compare))
        rows.append(Row("  put_comparisons", "5000", joined, t_put))

        # the live path: new decisions + outcomes for 100 known events, then a targeted join
        new = range(total, total + 100)
        await store.put_events([event(i) for i in new], source="bench", now=NOW)
        await store.put_decisions([(decision(i), TASKS[i % 3]) for i in new], now=NOW)
        await store.put_outcomes([outcome(i) for i in new], source="bench", now=NOW)
        t0 = time.perf_counter()
        ready = await store.ready_pairs([f"ev-{i:08d}" for i in new])
        await store.put_comparisons([compare(r) for r in ready], now=NOW)
        rows.append(
            Row("join: 100 given ids", "100", len(ready), time.perf_counter() - t0, f"of {total:,}")
        )
    return rows


async def compared_cases(store: Store, first: int, total: int) -> None:
    """``total`` cases from ``first``: event, decision, outcome and comparison each."""
    compare, _ = load_compare()
    for kind in ("events", "decisions", "outcomes"):
        await timed_puts(store, kind, total, 5000, start=first)
    while ready := await store.ready_pairs(limit=5000):
        await store.put_comparisons([compare(r) for r in ready], now=NOW)


async def bench_retention(tmp: Path, quick: bool) -> list[Row]:
    total = 5_000 if quick else 50_000
    path = tmp / "retention.duckdb"

    def mb() -> str:
        return f"{path.stat().st_size / 2**20:.0f} MB"

    async with Store(path) as store:
        await compared_cases(store, 0, total)
    full = mb()
    async with Store(path) as store:
        t0 = time.perf_counter()
        purged = await store.purge(cutoff=NOW + timedelta(seconds=1), limit=2000)
        seconds = time.perf_counter() - t0
    emptied = mb()
    async with Store(path) as store:
        await compared_cases(store, total, total)
    note = f"file {full} -> {emptied} purged -> {mb()} with {total:,} new cases"
    return [Row("purge (retention), cases", "2000", purged.events, seconds, note)]


async def bench_evidence(tmp: Path, quick: bool) -> list[Row]:
    total = 100_000 if quick else 1_000_000
    batch = 100_000
    verdicts = (Verdict.AGREE,) * 17 + (Verdict.DISAGREE, Verdict.AGENT_ERROR, Verdict.EXPIRED)
    fields = (FieldResult("action", "exact", True, True, ""),)
    rows = []
    async with Store(tmp / "evidence.duckdb") as store:
        t_insert = 0.0
        for lo in range(0, total, batch):
            comparisons = [
                Comparison(
                    f"ev-{i:08d}",
                    TASKS[i % 3],
                    f"agent@{i % 4}",
                    verdicts[i % len(verdicts)],
                    fields,
                    critical_miss=i % 997 == 0,
                    outcome_hash="0" * 32,
                )
                for i in range(lo, min(lo + batch, total))
            ]
            t0 = time.perf_counter()
            await store.put_comparisons(comparisons, now=NOW)
            t_insert += time.perf_counter() - t0
        rows.append(Row("put_comparisons", f"{batch:,}", total, t_insert, "store time only"))
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            ev = await store.evidence()
            samples.append(time.perf_counter() - t0)
        groups = sum(len(v) for v in ev.values())
        med = statistics.median(samples)
        rows.append(
            Row(
                f"evidence() over {total:,}",
                "-",
                1,
                med,
                f"median of 7: {med * 1e3:.1f} ms (min {min(samples) * 1e3:.1f}); {groups} groups",
            )
        )
    return rows


def print_table(rows: list[Row]) -> None:
    head = ("operation", "batch", "records", "seconds", "records/s", "note")
    body = [
        (r.what, r.batch, f"{r.records:,}", f"{r.seconds:.3f}", f"{r.rate:,.0f}", r.note)
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    right = {1, 2, 3, 4}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for cells in body:
        print(fmt(cells))


async def main(quick: bool) -> None:
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as d:
        tmp = Path(d)
        rows += await bench_event_batches(tmp, quick)
        rows += await bench_join(tmp, quick)
        rows += await bench_retention(tmp, quick)
        rows += await bench_evidence(tmp, quick)
    print_table(rows)
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the records")
    asyncio.run(main(parser.parse_args().quick))
