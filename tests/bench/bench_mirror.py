"""Bench: what mirroring costs the host. One upstream (tests/mirror_host.py in its own
process), measured in the same run:

- **direct**: the host itself;
- **nginx**: nginx in front of it, no mirror (what the proxy alone costs);
- **nginx + mirror**: the documented nginx mirror to the sidecar's mirror target
  (``/v1/mirror``, acknowledged on receipt; tests/nginx.py);
- **nginx + mirror to /v1/events**: the same mirror pointed at the durable ingest route, as
  a host would have had to before (the sidecar answers only after storing);
- **shadow proxy**: ``shadow proxy`` in front of the host (one process: proxy and pipeline).

Each sidecar is ``shadow run`` / ``shadow proxy`` in its own process with its own DuckDB file
and no agent. The traffic is the host's own ``POST /refunds`` (a new refund id each time,
so every mirror copy is a new event). Saturation: ``wrk`` (one thread, ``--clients``
keep-alive connections); p50/p99 at a fixed 500 req/s: this process's paced aiohttp client
(``--clients`` connections). Run as ``python -m tests.bench.bench_mirror``. Nothing is
asserted; the goals are printed next to the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from tests.mirror_host import POLICY
from tests.nginx import Nginx, free_port, nginx_config

WRK_SCRIPT = """
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  local body = '{"refund_id": "wrk-' .. PREFIX .. '-' .. i .. '", "amount": 12.5, ' ..
    '"customer": {"tier": "gold", "email": "c@example.com"}}'
  return wrk.format(nil, "/refunds", nil, body)
end
"""


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    out = log.open("wb")
    try:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, seconds: float, clients: int, script: Path) -> tuple[float, float, float]:
    out = subprocess.run(
        [
            *("wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency"),
            *("-s", str(script), url),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found is not None, out

    def pct(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m is not None, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return float(found.group(1)), pct("50"), pct("99")


async def paced(
    url: str, seconds: float, clients: int, rate: float, tag: str
) -> tuple[float, float]:
    """p50 and p99 ms of ``POST /refunds`` at ``rate`` requests/s in total."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def client(k: int) -> None:
            interval = clients / rate
            next_at = time.perf_counter() + k * interval / clients
            i = k
            while time.perf_counter() < end:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                body = (
                    f'{{"refund_id": "paced-{tag}-{i}", "amount": 12.5, '
                    '"customer": {"tier": "gold", "email": "c@example.com"}}'
                )
                t0 = time.perf_counter()
                async with session.post(url + "/refunds", data=body, headers=headers) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - t0)
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    latencies.sort()
    return (
        latencies[len(latencies) // 2] * 1e3,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    )


@contextlib.contextmanager
def deployment(tmp: Path) -> Iterator[tuple[dict[str, str], list[int]]]:
    """Every way in front of one host (name -> base URL), and the sidecars' API ports."""
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    procs: list[subprocess.Popen[bytes]] = []
    nginxes: list[Nginx] = []
    host_port = free_port()
    procs.append(
        start([sys.executable, "-m", "tests.mirror_host", str(host_port)], tmp / "host.log")
    )

    def sidecar(name: str, *extra: str) -> int:
        port = free_port()
        argv = [sys.executable, "-m", "shadow.cli", *extra, "--config", str(policy)]
        argv += ["--db", str(tmp / f"{name}.duckdb"), "--port", str(port)]
        procs.append(start(argv, tmp / f"{name}.log"))
        return port

    mirror_port = sidecar("mirror", "run")
    events_port = sidecar("events", "run")
    proxy_listen = free_port()
    proxy_api = sidecar(
        "proxy", "proxy", "--upstream", f"http://127.0.0.1:{host_port}", "--listen",
        f"127.0.0.1:{proxy_listen}",
    )  # fmt: skip
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    urls = {"direct": f"http://127.0.0.1:{host_port}"}
    for name, sidecar_port, mirror in (
        ("nginx", mirror_port, False),
        ("nginx + mirror", mirror_port, True),
        ("nginx + mirror to /v1/events", events_port, True),
    ):
        port = free_port()
        prefix = tmp / f"nginx-{len(nginxes)}"
        config = nginx_config(
            prefix, listen=port, host=host_port, sidecar=sidecar_port, mirror=mirror
        )
        if name.endswith("/v1/events"):
            # Today's ingest route as the mirror target: its path is fixed, and it answers
            # only once the record is stored.
            config = config.replace("/v1/mirror$request_uri", "/v1/events")
        nginxes.append(Nginx(binary, prefix, config, port).start())
        urls[name] = f"http://127.0.0.1:{port}"
    urls["shadow proxy"] = f"http://127.0.0.1:{proxy_listen}"
    apis = [mirror_port, events_port, proxy_api]
    try:
        asyncio.run(_all_up(urls, apis))
        yield urls, apis
    finally:
        for n in nginxes:
            n.stop()
        for p in reversed(procs):
            stop(p)


async def settle(apis: list[int]) -> None:
    """Until no sidecar has mirrored requests waiting (the saturation run leaves a backlog
    that would otherwise be measured as the next row's latency)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(1200):
            waiting = 0.0
            for port in apis:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    found = re.search(
                        r"^shadow_mirror_queue_requests (\S+)$", await resp.text(), re.M
                    )
                waiting += float(found.group(1)) if found else 0.0
            if not waiting:
                await asyncio.sleep(0.5)
                return
            await asyncio.sleep(0.1)


async def _all_up(urls: dict[str, str], apis: list[int]) -> None:
    for port in apis:
        await wait_up(f"http://127.0.0.1:{port}/readyz")
    for url in urls.values():
        await wait_up(url + "/refunds/x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    if not shutil.which("wrk") or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("bench_mirror: needs wrk and nginx (make tools installs nginx); skipped")
        return
    rows: dict[str, list[tuple[float, float, float, float, float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-mirror-") as tmp,
        deployment(Path(tmp)) as (urls, apis),
    ):
        for r in range(args.rounds):
            for name, url in urls.items():
                script = Path(tmp) / f"wrk-{r}-{len(rows.get(name, []))}-{abs(hash(name))}.lua"
                script.write_text(f'local PREFIX = "{abs(hash(name))}-{r}"\n' + WRK_SCRIPT)
                rate, _, _ = wrk(url, args.seconds, args.clients, script)
                asyncio.run(settle(apis))
                p50, p99 = asyncio.run(
                    paced(url, args.seconds, args.clients, args.rate, f"{r}{hash(name)}")
                )
                asyncio.run(settle(apis))
                rows.setdefault(name, []).append((rate, p50, p99, 0.0, 0.0))
    print(
        f"POST /refunds through each way in front of one host: saturation from wrk (1 thread, "
        f"{args.clients} connections, {args.seconds:.0f} s), p50/p99 at {args.rate:.0f} req/s "
        f"from this process's paced client; {args.rounds} interleaved rounds, medians"
    )
    print(f"{'way':<30} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7}")
    med: dict[str, tuple[float, float, float]] = {}
    for name, got in rows.items():
        med[name] = (
            statistics.median(g[0] for g in got),
            statistics.median(g[1] for g in got),
            statistics.median(g[2] for g in got),
        )
        rate, p50, p99 = med[name]
        print(f"{name:<30} | {rate:>8,.0f} | {p50:>7.2f} | {p99:>7.2f}")
    direct, plain, mirror = med["direct"], med["nginx"], med["nginx + mirror"]
    events, proxy = med["nginx + mirror to /v1/events"], med["shadow proxy"]
    print(
        f"nginx + mirror adds {mirror[1] - direct[1]:+.2f} ms to the host's median "
        f"(goal <= 1 ms; nginx alone {plain[1] - direct[1]:+.2f} ms; mirroring to /v1/events "
        f"{events[1] - direct[1]:+.2f} ms)"
    )
    print(
        f"shadow proxy adds {proxy[2] - direct[2]:+.2f} ms to the p99 at {args.rate:.0f} req/s "
        f"(goal <= 1 ms) and reaches {proxy[0] / mirror[0]:.2f} of nginx + mirror's req/s "
        "(goal >= 0.50)"
    )


if __name__ == "__main__":
    main()
