"""Bench: ``GET /v1/route`` (who handles an item) against a bare aiohttp app, in the same run.

Run as ``python tests/bench/bench_route.py`` (``--seconds S``, ``--clients C [C ...]``,
default 16 and 256). The Ladder answers routes from memory, and each answer is given only
once its routing record is durable (shadow.handling: group commit, concurrent routes wait on
one shared DuckDB write), so a route costs the HTTP round trip, a dict lookup and a share of
one store write:

1. **In process**: :meth:`shadow.ladder.Ladder.route` calls per second on one core (no HTTP),
   and :class:`shadow.handling.HandlingLog` records made durable per second by each
   ``--clients`` count of concurrent callers (the group commit alone).
2. **Over HTTP**: the real sidecar (``shadow run`` in its own process, one event loop, so one
   core; task types at L0, L2 and L3 so every branch is taken; the admin token configured,
   so every request carries it) and, as the baseline, a bare aiohttp app in its own process
   answering the same JSON. Saturation is measured with ``wrk`` (Debian package ``wrk``: one
   thread, ``--clients`` connections, the three task types' URLs in turn, every event id
   new) when it is installed, else with this process's aiohttp client (which then is the
   bottleneck: the figures say so); p50/p99 at a fixed rate well under saturation always
   come from this process's paced client. Rounds are interleaved (bare, sidecar, bare,
   sidecar) on 2 noisy cores; medians shown. Each ``--clients`` count is measured on its own
   (a sidecar and a bare app started for it). The last lines are the figures that matter:
   per count, the sidecar's routing rate next to the bare app's, and their ratio (the goal:
   at least 0.5). A routing answer waits for a store write, so with few connections the
   rate is bounded by connections / write latency; with many, each write carries a route
   from most of them. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from shadow.handling import HandlingLog
from shadow.ladder import Ladder
from shadow.metrics import Metrics
from shadow.model import Handling, Level
from shadow.policy import parse_policy
from shadow.store import Routed, Store

_AUTONOMY = (
    "{ceiling: L3, audit_rate: 0.05, gates: {L1: {agreement: 0.9, min_samples: 100}, "
    "L2: {agreement: 0.95, min_samples: 300}, L3: {agreement: 0.98, min_samples: 1000}}}"
)
POLICY = "task_types:\n" + "".join(
    f"  {name}: {{autonomy: {_AUTONOMY}}}\n"
    for name in ("refund_request", "invoice_match", "ticket_routing")
)
LEVELS = {"refund_request": "L3", "invoice_match": "L2", "ticket_routing": "L0"}
TOKEN = "bench-route"

BARE = textwrap.dedent(
    """
    import sys
    from aiohttp import web

    async def route(request):
        return web.json_response({"handler": "agent", "level": "L2", "audit": False,
                                  "approval_required": True, "suggestion": False})

    app = web.Application()
    app.router.add_get("/v1/route/{task_type}", route)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def in_process(seconds: float) -> float:
    """Ladder.route calls per second, on a Ladder over a real store, levels set by hand."""
    policy = parse_policy(POLICY)
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        async with Store(Path(tmp) / "ladder.duckdb") as store:
            ladder = Ladder(store, policy, lambda: datetime.now(UTC))
            await ladder.load()
            for name, level in LEVELS.items():
                await ladder.set_level(name, Level.parse(level), actor="bench", reason="bench")
            names = list(LEVELS)
            n = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                for i in range(1000):
                    ladder.route(names[i % 3], f"e-{i}")
                n += 1000
            return n / seconds


async def group_commit(seconds: float, clients: int) -> tuple[float, float]:
    """(records made durable per second, mean records per store write) by ``clients``
    concurrent callers of HandlingLog.record, each recording its next item as soon as the
    last one is durable (no HTTP)."""
    policy = parse_policy(POLICY)
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:

        class Counting(Store):
            writes = 0

            async def put_handling(
                self, routed: Sequence[Routed], *, published: bool = False
            ) -> int:
                self.writes += 1
                return await super().put_handling(routed, published=published)

        async with Counting(Path(tmp) / "handling.duckdb") as store:
            log = HandlingLog(
                store, lambda: datetime.now(UTC), Metrics(CollectorRegistry(), policy)
            )
            names = list(LEVELS)
            done = 0
            end = time.perf_counter() + seconds

            async def caller(k: int) -> None:
                nonlocal done
                i = k
                while time.perf_counter() < end:
                    await log.record(names[i % 3], f"g-{i}", Handling.AGENT, Level.L3)
                    done += 1
                    i += clients

            await asyncio.gather(*(caller(k) for k in range(clients)))
            await log.close()
            return done / seconds, done / max(store.writes, 1)


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(400):
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def set_levels(base: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for name, level in LEVELS.items():
            url = f"{base}/v1/autonomy/{name}"
            async with session.put(url, json={"level": level, "reason": "bench"}) as resp:
                assert resp.status == 200, await resp.text()


async def load(
    base: str, seconds: float, clients: int, rate: float | None = None
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from ``clients`` keep-alive loops; with ``rate``, the
    requests are paced to that many per second in total."""
    latencies: list[float] = []
    names = list(LEVELS)
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Authorization": f"Bearer {TOKEN}"}  # the bare app ignores it
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        end = start + seconds

        async def client(k: int) -> None:
            i = k + next(_RUNS) * 10_000_000  # a new event id every request of the run
            interval = clients / rate if rate else 0.0
            next_at = time.perf_counter()
            while time.perf_counter() < end:
                if interval:
                    next_at += interval
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                url = f"{base}/v1/route/{names[i % 3]}?event_id=e-{i}"
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - t0)
                i += clients

        await asyncio.gather(*[client(k) for k in range(clients)])
        elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1e3
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
    return len(latencies) / elapsed, p50, p99


def wrk_script(run: int) -> str:
    """The wrk script of one run: the three task types in turn, a new event id each time."""
    return f"""
local paths = {{"/v1/route/refund_request", "/v1/route/invoice_match", "/v1/route/ticket_routing"}}
local i = 0
wrk.headers["Authorization"] = "Bearer {TOKEN}"
request = function()
  i = i + 1
  return wrk.format("GET", paths[i % 3 + 1] .. "?event_id=w{run}-" .. i)
end
"""


_RUNS = itertools.count()


def wrk_load(base: str, seconds: float, clients: int, script: Path) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from wrk at saturation."""
    out = subprocess.run(
        [
            *("wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency"),
            *("-s", str(script), base),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m is not None, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return rate, pct("50"), pct("99")


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def http_rounds(
    seconds: float, clients: int, rounds: int, *, paced: bool
) -> dict[str, list[tuple[float, float, float]]]:
    out: dict[str, list[tuple[float, float, float]]] = {
        "bare": [],
        "sidecar": [],
        "bare paced": [],
        "sidecar paced": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        bare_port, side_port = free_port(), free_port()
        bare = start([sys.executable, "-c", BARE, str(bare_port)])
        env = {**os.environ, "SHADOW_ADMIN_TOKEN": TOKEN}
        side = start(
            [
                *(sys.executable, "-m", "shadow.cli", "run", "--config", str(policy)),
                *("--db", str(Path(tmp) / "route.duckdb"), "--port", str(side_port)),
            ],
            env,
        )
        try:
            bare_url, side_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{side_port}"
            await wait_up(f"{bare_url}/v1/route/x")
            await wait_up(f"{side_url}/readyz")
            await set_levels(side_url)
            await load(side_url, 1.0, clients)  # warm both
            await load(bare_url, 1.0, clients)
            script = Path(tmp) / "route.lua"
            for _ in range(rounds):
                for name, url in (("bare", bare_url), ("sidecar", side_url)):
                    if shutil.which("wrk"):
                        script.write_text(wrk_script(next(_RUNS)))
                        out[name].append(
                            await asyncio.to_thread(wrk_load, url, seconds, clients, script)
                        )
                    else:
                        out[name].append(await load(url, seconds, clients))
            rate = min(statistics.median(r[0] for r in out["sidecar"]) / 4, 2000.0)
            for _ in range(rounds if paced else 0):
                out["bare paced"].append(await load(bare_url, seconds, clients, rate))
                out["sidecar paced"].append(await load(side_url, seconds, clients, rate))
        finally:
            stop(side)
            stop(bare)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[16, 256],
        help="keep-alive connections, one measurement each (paced rows: the first)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rate = asyncio.run(in_process(1.0))
    print(f"Ladder.route in process: {rate:,.0f} routes/s (one core, no HTTP)")
    for clients in args.clients:
        durable, per_write = asyncio.run(group_commit(2.0, clients))
        print(
            f"HandlingLog.record in process: {durable:,.0f} records/s made durable by "
            f"{clients} concurrent callers, {per_write:.1f} records per store write"
        )
    tool = "wrk" if shutil.which("wrk") else "this process's aiohttp client (install wrk)"
    figures: list[tuple[int, float, float]] = []
    for n, clients in enumerate(args.clients):
        results = asyncio.run(http_rounds(args.seconds, clients, args.rounds, paced=n == 0))
        print(
            f"GET /v1/route over loopback, {clients} keep-alive clients, {args.seconds:.0f} s "
            f"x {args.rounds} interleaved rounds (medians); saturation load from {tool}"
            + (", paced rows from this process:" if n == 0 else ":")
        )
        print(f"{'server':<16} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7}")
        for name, rows in results.items():
            if not rows:
                continue
            rate = statistics.median(r[0] for r in rows)
            p50 = statistics.median(r[1] for r in rows)
            p99 = statistics.median(r[2] for r in rows)
            print(f"{name:<16} | {rate:>8,.0f} | {p50:>7.2f} | {p99:>7.2f}")
        side = statistics.median(r[0] for r in results["sidecar"])
        bare = statistics.median(r[0] for r in results["bare"])
        figures.append((clients, side, bare))
    for clients, side, bare in figures:
        print(
            f"routing rate over HTTP, {clients} clients (each answer durable first): "
            f"{side:,.0f} req/s; bare aiohttp app, same run: {bare:,.0f} req/s; "
            f"ratio {side / bare:.2f} (goal: >= 0.5)"
        )


if __name__ == "__main__":
    main()
