"""Bench: the pipeline's end-to-end rate with OpenTelemetry tracing on against off, same run.

Run as ``python -m tests.bench.bench_tracing`` (``--events N``, ``--rounds R``, ``--quick``).
The measurement is bench_service's "end to end": the real sidecar (:func:`shadow.app.build_app`,
a fresh temporary DuckDB file per round) with an in-process agent; every event and every
outcome is posted over loopback (NDJSON batches of 500, 4 concurrent clients) and the clock
stops when :meth:`shadow.pipeline.Pipeline.drain` returns and every comparison is stored.

- **off**: no ``OTEL_*`` variable (the stages get the no-op tracer);
- **on**: ``OTEL_EXPORTER_OTLP_ENDPOINT`` names a local OTLP/HTTP receiver
  (tests/otlp_sink.py, in a process of its own, as a backend is) that takes every request
  and discards it. Three spans per case
  (ingest, ``invoke_agent``, the verdict); after the clock stops, the bench waits for the
  exporter and checks that every span arrived (none dropped).

After one uncounted warm-up round, rounds are interleaved (off, on, off, on...) on 2 noisy
cores; the table shows the medians with their range and the median of each round's ratio
on/off (the goal: at least 0.9). Two more lines: what the
no-op tracer costs per case when tracing is off, and, for reference, what one span costs
through the OpenTelemetry SDK (its tracer, batch processor and OTLP protobuf encoder) against
the sidecar's own records and encoder (shadow/otlp.py), which is why it does not use the SDK's
tracer. Nothing is asserted but the comparison and span counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from shadow.app import build_app, tune_gc
from shadow.config import load_settings
from shadow.keys import PIPELINE, REGISTRY
from shadow.model import Comparison, ShadowDecision, Verdict, WorkEvent
from shadow.policy import Policy, parse_policy
from shadow.tracing import NO_TRACING
from tests.bench.bench_service import POLICY, Batches, Served, post_all

AGENT_SPEC = "tests.bench.bench_service:agent"


@asynccontextmanager
async def receiver() -> AsyncIterator[str]:
    """The URL of an OTLP/HTTP receiver that discards what it gets, in a process of its own
    (python -m tests.otlp_sink), so its work is not counted as the sidecar's."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.otlp_sink", stdin=PIPE, stdout=PIPE
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        yield line.decode().strip()
    finally:
        proc.stdin.close()
        await proc.wait()


def environ(endpoint: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_SERVICE_NAME"] = "shadow-bench"
    return env


async def one_round(
    session: aiohttp.ClientSession,
    db: Path,
    policy: Policy,
    batches: Batches,
    n: int,
    clients: int,
    endpoint: str | None,
) -> tuple[float, float, float]:
    """Seconds to drain, spans exported and spans dropped."""
    settings = load_settings(db=str(db), agent=AGENT_SPEC, port=0, expire_interval=3600.0)
    app = build_app(settings, policy=policy, environ=environ(endpoint))
    async with Served(app) as side:
        pipeline = app[PIPELINE]
        t0 = time.perf_counter()
        await post_all(session, side.url, "/v1/events", batches.events, clients)
        await post_all(session, side.url, "/v1/outcomes", batches.outcomes, clients)
        await pipeline.drain()
        seconds = time.perf_counter() - t0
        made = await pipeline.store.count("comparisons")
        if made != n:
            raise RuntimeError(f"expected {n} comparisons, found {made}")
        registry = app[REGISTRY]

        def count(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        if endpoint is not None:  # not timed: every span reaches the receiver
            for _ in range(6000):
                if count("shadow_trace_spans_exported_total") >= 3 * n:
                    break
                await asyncio.sleep(0.01)
    exported = count("shadow_trace_spans_exported_total")
    dropped = sum(
        count("shadow_trace_spans_dropped_total", reason=r)
        for r in ("queue_full", "export_failed", "shutdown")
    )
    return seconds, exported, dropped


async def bench(n: int, rounds: int, clients: int) -> list[tuple[str, str]]:
    policy = parse_policy(POLICY, source="bench policy")
    batches = Batches.build(n)
    tmp = Path(tempfile.mkdtemp(prefix="shadow-bench-tracing-"))
    off: list[float] = []
    on: list[float] = []
    spans: list[tuple[float, float]] = []
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=300),
                connector=aiohttp.TCPConnector(limit=clients),
            ) as session,
            receiver() as sink_url,
        ):
            # Warm-up (imports, caches, connections), not counted.
            await one_round(session, tmp / "warm.duckdb", policy, batches, n, clients, sink_url)
            for r in range(rounds):
                s_off, _, _ = await one_round(
                    session, tmp / f"off-{r}.duckdb", policy, batches, n, clients, None
                )
                off.append(n / s_off)
                s_on, exported, dropped = await one_round(
                    session, tmp / f"on-{r}.duckdb", policy, batches, n, clients, sink_url
                )
                on.append(n / s_on)
                spans.append((exported, dropped))
                print(
                    f"  round {r + 1}/{rounds}: off {off[-1]:,.0f} cases/s, on {on[-1]:,.0f} "
                    f"cases/s, ratio {on[-1] / off[-1]:.3f} ({exported:,.0f} spans exported, "
                    f"{dropped:,.0f} dropped)",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Each round's "on" beside its own "off" (the same minute of a noisy machine).
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    ratio = statistics.median(ratios)
    return [
        (
            "tracing off (cases/s)",
            f"{statistics.median(off):,.0f}  [{min(off):,.0f}-{max(off):,.0f}]",
        ),
        ("tracing on (cases/s)", f"{statistics.median(on):,.0f}  [{min(on):,.0f}-{max(on):,.0f}]"),
        (
            "ratio on / off (median of the rounds')",
            f"{ratio:.3f}  [{min(ratios):.3f}-{max(ratios):.3f}]  (goal >= 0.9)",
        ),
        (
            "spans per round (exported / dropped)",
            " ".join(f"{e:,.0f}/{d:,.0f}" for e, d in spans),
        ),
    ]


def no_op_cost(cases: int = 200_000) -> float:
    """Nanoseconds per case of the no-op tracer's calls (what every stage calls when off)."""
    event = WorkEvent("b-1", "refund_request", {})
    decision = ShadowDecision("b-1", "v", {"action": "approve"})
    comparison = [Comparison("b-1", "refund_request", "v", Verdict.AGREE)]
    t = NO_TRACING
    t0 = time.perf_counter_ns()
    for _ in range(cases):
        t.ingested((event,), source="http", start_ns=0)
        t.agent_called(event, decision)
        t.evaluated(comparison)
        t.trace_id("b-1")
    return (time.perf_counter_ns() - t0) / cases


def span_costs(n: int = 20_000) -> tuple[float, float | None]:
    """CPU microseconds per span, made and encoded into an export request: through the
    sidecar's records and encoder, and through the OpenTelemetry SDK's tracer and OTLP
    encoder (``None`` when the SDK is not installed)."""
    from prometheus_client import CollectorRegistry

    from shadow.metrics import trace_counters
    from shadow.otlp import encode_request
    from shadow.tracing import OtlpTracer, TracingConfig

    config = TracingConfig.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert config is not None
    tracer = OtlpTracer(config, trace_counters(CollectorRegistry()))
    decision = ShadowDecision("x", "bench-agent@1", {"action": "approve"}, latency_ms=3.0)
    events = [WorkEvent(f"b-{i:08d}", "refund_request", {}) for i in range(n)]
    queue: Any = tracer._queue
    t0 = time.process_time()
    for event in events:
        tracer.agent_called(event, decision)
        if len(queue) >= 512:
            encode_request(b"", b"", [queue.popleft() for _ in range(512)])
    encode_request(b"", b"", list(queue))
    ours = (time.process_time() - t0) / n * 1e6
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    except ImportError:
        return ours, None
    kept: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            kept.append(span)

    provider = TracerProvider()
    provider.add_span_processor(Keep())
    sdk = provider.get_tracer("shadow")
    t0 = time.process_time()
    for event in events:
        span = sdk.start_span(
            "invoke_agent refund_request",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.provider.name": "shadow",
                "gen_ai.agent.name": "refund_request",
                "shadow.task_type": "refund_request",
                "shadow.event_id": event.event_id,
                "gen_ai.agent.version": "bench-agent@1",
            },
        )
        span.end()
        if len(kept) >= 512:
            encode_spans(kept).SerializePartialToString()
            kept.clear()
    encode_spans(kept).SerializePartialToString()
    return ours, (time.process_time() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="cases per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client posters")
    parser.add_argument("--quick", action="store_true", help="2,000 cases, 1 round")
    args = parser.parse_args()
    n, rounds = (2_000, 1) if args.quick else (args.events, args.rounds)
    started = time.perf_counter()
    print(f"bench_tracing: {n:,} cases (events + outcomes), {rounds} interleaved rounds")
    tune_gc()  # as `shadow run` does
    rows = asyncio.run(bench(n, rounds, args.clients))
    ours, sdk = span_costs()
    rows.append(("no-op tracer, tracing off (ns per case)", f"{no_op_cost():,.0f}"))
    rows.append(
        (
            "one span created + encoded (CPU us)",
            f"shadow/otlp.py {ours:.1f}"
            + (f"; OpenTelemetry SDK {sdk:.1f}" if sdk is not None else "; SDK not installed"),
        )
    )
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"total wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
