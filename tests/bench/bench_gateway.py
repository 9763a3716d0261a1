"""Bench: the latency a ``tools/call`` gains by going through the tool gateway, against calling
the same upstream directly, in the same run; and calls/s through one sidecar.

Run as ``python tests/bench/bench_gateway.py`` (``--calls N``, ``--seconds S``,
``--clients C``). Processes: an upstream MCP server built with the official SDK's
``MCPServer`` (Streamable HTTP, JSON answers, under uvicorn), ``shadow run`` with a policy
whose ``refund`` task type uses it at L4, and this client. The client sends the same
stateless (2026-07-28) ``tools/call`` of a read tool the policy classifies, one at a time,
alternately to the upstream and to a live session's tools URL, in interleaved rounds; the
added latency is the difference of the percentiles. The same read sent with the gateway's
own upstream client (the SDK's ``Client``, :class:`shadow.gateway.upstream.UpstreamClient`)
from this process shows how much of the added latency is that hop alone. Then calls/s with
``--clients`` concurrent clients for ``--seconds`` each, directly and through the sidecar.
Nothing is asserted; the goal (p50 <= 1 ms, p99 <= 3 ms added) is printed beside the figures.

The upstream is as fast as the SDK serves: async tools (a sync tool costs a worker-thread
hop), JSON answers, stateless mode, no access log, and a listening socket created with
``IPPROTO_TCP`` so asyncio turns Nagle's algorithm off (with ``socket.socket()`` it does
not, and delayed ACKs add ~40 ms to every answer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

from shadow.gateway.upstream import UpstreamClient

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token"
MODERN = "2026-07-28"

UPSTREAM = textwrap.dedent(
    """
    import socket, sys
    import uvicorn
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ToolAnnotations

    server = MCPServer("backoffice", log_level="WARNING")

    # async tools: the SDK runs a sync tool on a worker thread, an async one inline.
    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def get_order(order_id: str) -> dict:
        return {"order_id": order_id, "amount": 42.5}

    @server.tool()
    async def issue_refund(order_id: str, amount: float) -> dict:
        return {"refunded": amount}

    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it Nagle's algorithm and delayed ACKs add ~40 ms to every answer.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    app = server.streamable_http_app(json_response=True, stateless_http=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    """
)

POLICY = """
tools:
  backoffice: {{url: "http://127.0.0.1:{port}/mcp"}}
task_types:
  refund:
    autonomy: {{start: L4, ceiling: L4}}
    tools:
      allow: [get_order, issue_refund]
      read: [get_order]
      write: [issue_refund]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body(name: str, args: dict[str, object], rid: int) -> bytes:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": name, "arguments": args, "_meta": meta}
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    ).encode()


HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": MODERN,
    "Mcp-Method": "tools/call",
    "Mcp-Name": "get_order",
}


async def wait_ready(session: aiohttp.ClientSession, url: str, method: str = "GET") -> None:
    for _ in range(600):
        try:
            async with session.request(method, url) as resp:
                if resp.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


async def timed(session: aiohttp.ClientSession, url: str, data: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=data, headers=HEADERS) as resp:
            raw = await resp.read()
        out.append((time.perf_counter() - t0) * 1000.0)
        if resp.status != 200 or b'"result"' not in raw:
            raise SystemExit(f"unexpected answer from {url}: {raw[:200]!r}")
    return out


async def sdk_timed(client: UpstreamClient, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.call_tool("get_order", {"order_id": "o-1"})
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000, help="per target and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=16)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    up_port, sc_port = free_port(), free_port()
    (tmp / "policy.yaml").write_text(POLICY.format(port=up_port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["SHADOW_ADMIN_TOKEN"] = TOKEN
    # Started once, before anything is timed: blocking Popen is fine here.
    procs = [
        subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-c", UPSTREAM, str(up_port)], cwd=ROOT, env=env
        ),
        subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "shadow.cli", "run", "--config", str(tmp / "policy.yaml"),
             "--db", str(tmp / "b.duckdb"), "--port", str(sc_port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    direct = f"http://127.0.0.1:{up_port}/mcp"
    base = f"http://127.0.0.1:{sc_port}"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_ready(session, direct)
            await wait_ready(session, f"{base}/readyz")
            async with session.post(
                f"{base}/v1/sessions",
                json={"task_type": "refund", "event_id": "bench-1"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                live = (await resp.json())["tools_url"]
            read = body("get_order", {"order_id": "o-1"}, 1)
            await timed(session, direct, read, 200)  # warm up both paths
            await timed(session, live, read, 200)
            d_all: list[float] = []
            g_all: list[float] = []
            for _ in range(a.rounds):
                d_all += await timed(session, direct, read, a.calls)
                g_all += await timed(session, live, read, a.calls)
            sdk = UpstreamClient("backoffice", direct, {}, timeout=30.0)
            sdk.start()
            try:
                await sdk_timed(sdk, 200)  # warm up
                s_all: list[float] = []
                for _ in range(a.rounds):
                    s_all += await sdk_timed(sdk, a.calls)
            finally:
                await sdk.close()
            added50 = pct(g_all, 0.5) - pct(d_all, 0.5)
            added99 = pct(g_all, 0.99) - pct(d_all, 0.99)
            print(f"tools/call of a read, {len(d_all)} sequential calls each, interleaved rounds")
            print(
                f"  upstream directly: p50 {pct(d_all, 0.5):.3f} ms  p99 {pct(d_all, 0.99):.3f} ms"
            )
            print(
                f"  through gateway:   p50 {pct(g_all, 0.5):.3f} ms  p99 {pct(g_all, 0.99):.3f} ms"
            )
            print(f"  added:             p50 {added50:.3f} ms  p99 {added99:.3f} ms  "
                  "(goal: p50 <= 1 ms, p99 <= 3 ms)")  # fmt: skip
            print(
                f"  of which the SDK client hop (the gateway's UpstreamClient to the same "
                f"upstream, in this process): p50 {pct(s_all, 0.5) - pct(d_all, 0.5):.3f} ms "
                f"above aiohttp's ({pct(s_all, 0.5):.3f} ms absolute)"
            )

            async def through(url: str, data: bytes) -> int:
                n = 0
                end = time.perf_counter() + a.seconds

                async def client() -> None:
                    nonlocal n
                    while time.perf_counter() < end:
                        async with session.post(url, data=data, headers=HEADERS) as resp:
                            await resp.read()
                        n += 1

                await asyncio.gather(*(client() for _ in range(a.clients)))
                return n

            n_direct = await through(direct, read)
            n_gw = await through(live, read)
            print(f"throughput, {a.clients} clients x {a.seconds:g} s: upstream directly "
                  f"{n_direct / a.seconds:,.0f} calls/s, through one sidecar "
                  f"{n_gw / a.seconds:,.0f} calls/s")  # fmt: skip
            median = statistics.median(g_all)
            print(f"  median single-call latency through the gateway: {median:.3f} ms")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    asyncio.run(main())
