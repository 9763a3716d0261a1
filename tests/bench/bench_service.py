"""Bench: the sidecar's HTTP ingest and end-to-end comparison rates against a bare aiohttp app.

Run as ``python tests/bench/bench_service.py`` (``--events N``, ``--rounds R``, ``--quick``).
Two measurements, each side by side with the same baseline in the same run:

1. **HTTP ingest, events/s.** The real sidecar application (:func:`shadow.app.build_app`
   with a fresh temporary DuckDB file per round, no agent) receives NDJSON batches of 500
   work events over loopback from ``--clients`` concurrent aiohttp clients (one shared
   session). The baseline is a bare aiohttp application whose handler reads the body and
   returns 202: same client, same pre-encoded batches. Every acknowledged sidecar batch is
   durably stored when its 202 arrives.
2. **End to end, comparisons/s.** The sidecar with an in-process agent
   (:class:`shadow.agent.CallableAgent` on :func:`agent`, a trivial deterministic async
   function): every event and every outcome is posted, and the clock stops when
   :meth:`shadow.pipeline.Pipeline.drain` returns and every comparison exists in the store.
   The baseline is the bare 202 handler receiving the same records (events + outcomes).

The process's garbage collector is tuned as ``shadow run`` tunes it
(:func:`shadow.app.tune_gc`), for the baseline and the sidecar alike. Client and servers
share one event loop (as ``shadow demo`` does), so the client's own cost
is in both numbers; the bodies are encoded up front so it is small next to the server's. On
2 noisy cores the rounds are interleaved (bare, sidecar, bare, sidecar...) and the table
shows the median with the range. Nothing is asserted; it prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from shadow.api import PIPELINE
from shadow.app import build_app, tune_gc
from shadow.config import load_settings
from shadow.pipeline import Pipeline
from shadow.policy import Policy, parse_policy

BATCH = 500
TASKS = ("refund_request", "invoice_match", "ticket_routing")
AGENT_SPEC = f"{__name__}:agent"  # "__main__:agent" when run as a script

POLICY = """\
defaults:
  unknown_task_types: reject
task_types:
  refund_request:
    sample_rate: 1.0
    redact: [payload.customer.email]
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
        reason: {match: text}
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
        queue: {match: exact, equivalent: [[billing, payments]]}
      unlisted: ignore
"""


# -- records ----------------------------------------------------------------------------------


def event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"b-{i:08d}",
        "task_type": TASKS[i % 3],
        "payload": {
            "amount": round(5 + (i % 997) * 0.37, 2),
            "days_since_purchase": i % 60,
            "customer": {"email": f"c{i}@example.com", "tier": ("gold", "silver")[i % 2]},
            "reason_code": ("damaged", "late", "wrong_item")[i % 3],
        },
        "occurred_at": "2026-11-20T10:00:00Z",
        "segment": ("eu", "us")[i % 2],
    }


def _decision(i: int) -> dict[str, Any]:
    return {
        "action": "approve" if i % 10 else "deny",
        "amount": round(5 + (i % 997) * 0.37, 2),
        "reason": "within policy",
        "queue": "billing",
    }


def outcome(i: int) -> dict[str, Any]:
    return {
        "event_id": f"b-{i:08d}",
        "decision": _decision(i),
        "actions": [{"tool": "issue_refund", "args": {"amount": round(5 + (i % 997) * 0.37, 2)}}],
        "decided_by": "ops/jane",
        "decided_at": "2026-11-20T10:07:00Z",
    }


async def agent(request: dict[str, Any]) -> dict[str, Any]:
    """The bench's agent: agrees except on every 13th event (a wrong amount)."""
    i = int(str(request["event_id"]).removeprefix("b-"))
    decision = _decision(i)
    if i % 13 == 0:
        decision["amount"] += 1
    return {"decision": decision, "agent_version": "bench-agent@1", "confidence": 0.9}


def ndjson(records: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(r, separators=(",", ":")) for r in records).encode()


@dataclass(frozen=True)
class Batches:
    events: list[bytes]
    outcomes: list[bytes]

    @classmethod
    def build(cls, n: int) -> Batches:
        spans = [range(lo, min(lo + BATCH, n)) for lo in range(0, n, BATCH)]
        return cls(
            [ndjson([event(i) for i in s]) for s in spans],
            [ndjson([outcome(i) for i in s]) for s in spans],
        )


# -- servers ----------------------------------------------------------------------------------


async def bare_handler(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202)


def bare_app() -> web.Application:
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/v1/events", bare_handler)
    app.router.add_post("/v1/outcomes", bare_handler)
    return app


class Served:
    """An aiohttp application served on a loopback port (0 = any free one)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def __aenter__(self) -> Served:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server  # aiohttp keeps the asyncio.Server here
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def sidecar_app(db: Path, policy: Policy, *, with_agent: bool) -> web.Application:
    settings = load_settings(
        db=str(db),
        agent=AGENT_SPEC if with_agent else None,
        port=0,
        expire_interval=3600.0,
    )
    return build_app(settings, policy=policy)


# -- client -----------------------------------------------------------------------------------


async def post_all(
    session: aiohttp.ClientSession, url: str, path: str, bodies: list[bytes], clients: int
) -> None:
    """``clients`` concurrent posters over ``bodies``; every answer must be 202."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def poster() -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(
                url + path, data=body, headers={"Content-Type": "application/x-ndjson"}
            ) as resp:
                text = await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"{path}: HTTP {resp.status}: {text[:300]!r}")

    await asyncio.gather(*(poster() for _ in range(clients)))


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Samples:
    seconds: list[float]
    records: int

    def rates(self) -> list[float]:
        return [self.records / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates())

    def spread(self) -> str:
        r = self.rates()
        return f"{min(r):,.0f}-{max(r):,.0f}"


async def feed_and_drain(
    session: aiohttp.ClientSession, url: str, batches: Batches, clients: int, pipeline: Pipeline
) -> None:
    await post_all(session, url, "/v1/events", batches.events, clients)
    await post_all(session, url, "/v1/outcomes", batches.outcomes, clients)
    await pipeline.drain()


async def bench(n: int, rounds: int, clients: int) -> list[tuple[str, str, str, str]]:
    policy = parse_policy(POLICY, source="bench policy")
    batches = Batches.build(n)
    tmp = Path(tempfile.mkdtemp(prefix="shadow-bench-service-"))
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=clients)
    bare_ingest = Samples([], n)
    side_ingest = Samples([], n)
    bare_both = Samples([], n)  # cases (event + outcome) per second
    e2e = Samples([], n)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            Served(bare_app()) as bare,
        ):
            # warm-up: connections, JIT-free but caches and imports
            await post_all(session, bare.url, "/v1/events", batches.events[:2], clients)
            for r in range(rounds):
                # 1. ingest only
                bare_ingest.seconds.append(
                    await timed(
                        lambda: post_all(session, bare.url, "/v1/events", batches.events, clients)
                    )
                )
                app = sidecar_app(tmp / f"ingest-{r}.duckdb", policy, with_agent=False)
                async with Served(app) as side:
                    side_ingest.seconds.append(
                        await timed(
                            lambda: post_all(
                                session, side.url, "/v1/events", batches.events, clients
                            )
                        )
                    )

                # 2. end to end
                async def bare_all() -> None:
                    await post_all(session, bare.url, "/v1/events", batches.events, clients)
                    await post_all(session, bare.url, "/v1/outcomes", batches.outcomes, clients)

                bare_both.seconds.append(await timed(bare_all))
                app = sidecar_app(tmp / f"e2e-{r}.duckdb", policy, with_agent=True)
                async with Served(app) as side:
                    pipeline = app[PIPELINE]
                    e2e.seconds.append(
                        await timed(
                            functools.partial(
                                feed_and_drain, session, side.url, batches, clients, pipeline
                            )
                        )
                    )
                    made = await pipeline.store.count("comparisons")
                    if made != n:
                        raise RuntimeError(f"expected {n} comparisons, found {made}")
                print(
                    f"  round {r + 1}/{rounds}: ingest bare {bare_ingest.rates()[-1]:,.0f} "
                    f"sidecar {side_ingest.rates()[-1]:,.0f} ev/s; end to end "
                    f"{e2e.rates()[-1]:,.0f} cmp/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        (
            "HTTP ingest (events/s)",
            f"{side_ingest.median:,.0f}  [{side_ingest.spread()}]",
            f"{bare_ingest.median:,.0f}  [{bare_ingest.spread()}]",
            f"{side_ingest.median / bare_ingest.median:.3f}",
        ),
        (
            "end to end (comparisons/s vs cases/s)",
            f"{e2e.median:,.0f}  [{e2e.spread()}]",
            f"{bare_both.median:,.0f}  [{bare_both.spread()}]",
            f"{e2e.median / bare_both.median:.3f}",
        ),
    ]


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    head = ("measurement", "sidecar median [range]", "bare 202 median [range]", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client posters")
    parser.add_argument("--quick", action="store_true", help="2,000 events, 1 round")
    args = parser.parse_args()
    n, rounds = (2_000, 1) if args.quick else (args.events, args.rounds)
    started = time.perf_counter()
    print(
        f"bench_service: {n:,} events (+{n:,} outcomes), batches of {BATCH}, "
        f"{args.clients} clients, {rounds} interleaved rounds"
    )
    tune_gc()  # as `shadow run` does
    rows = asyncio.run(bench(n, rounds, args.clients))
    print()
    print_table(rows)
    print(
        "\nratio = sidecar / bare. End to end: comparisons/s from the first POST until "
        "drain() returned and every comparison was stored, against the bare handler's "
        "rate for the same events + outcomes (cases/s)."
    )
    print(f"total wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
