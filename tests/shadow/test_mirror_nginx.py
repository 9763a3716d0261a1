"""A real nginx (Debian package ``nginx``) mirrors a real host app to a real sidecar, with
the configuration docs/mirroring.md documents (tests/nginx.py).

The sidecar is ``shadow run`` in its own process, so it can be hung (SIGSTOP) and stopped
mid-test; the host, the agent and the clients run on the test's loop. Latencies seen while
the sidecar is hung or down are printed (``-s``) for the docs, never asserted."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import require_tool, wait_for
from tests.mirror_host import HOST_LOG, POLICY, HostRequest, host_app, traffic
from tests.nginx import Nginx, free_port, nginx_config
from tests.shadow.conftest import AgentServerFactory, agree_reply

pytestmark = pytest.mark.slow


class SidecarProcess:
    """``shadow run`` on a free port, in its own process group."""

    def __init__(self, tmp: Path, agent: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        self.log = (tmp / "sidecar.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "shadow.cli", "run", "--config", str(policy)),
                *("--db", str(tmp / "sidecar.duckdb"), "--port", str(self.port)),
                *("--agent", agent),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class Scene:
    def __init__(self, nginx: Nginx, side: SidecarProcess, host: web.Application) -> None:
        self.nginx = nginx
        self.side = side
        self.host = host
        # One keep-alive connection, as a host's own client would hold.
        self.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        self.api = aiohttp.ClientSession()

    async def send(self, req: HostRequest, *, fresh: bool = False) -> tuple[int, float]:
        """Status and seconds to the whole answer; ``fresh``: on a connection of its own."""
        method, path, body, headers = req
        t0 = time.perf_counter()
        url = self.nginx.url + path
        if fresh:
            headers = {**headers, "Connection": "close"}
            async with (
                aiohttp.ClientSession() as one,
                one.request(method, url, json=body, headers=headers) as r,
            ):
                await r.read()
                return r.status, time.perf_counter() - t0
        async with self.client.request(method, url, json=body, headers=headers) as r:
            await r.read()
            return r.status, time.perf_counter() - t0

    async def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        async with self.api.get(self.side.url + "/metrics") as r:
            text = await r.text()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0

    async def compared(self) -> int:
        async with self.api.get(self.side.url + "/v1/agreement") as r:
            return int((await r.json())["task_types"]["refund_request"]["n"])

    async def close(self) -> None:
        await self.client.close()
        await self.api.close()


@pytest.fixture
async def scene(
    tmp_path: Path, agent_server: AgentServerFactory, no_shadow_env: None
) -> AsyncIterator[tuple[Scene, Any]]:
    binary = require_tool("nginx", hint="make test installs it (.ci/system-tools: nginx)")
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    host = host_app()
    runner = web.AppRunner(host, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    side = SidecarProcess(tmp_path, agent.url)
    port = free_port()
    config = nginx_config(
        tmp_path / "nginx",
        listen=port,
        host=runner.addresses[0][1],
        sidecar=side.port,
    )
    nginx = Nginx(binary, tmp_path / "nginx", config, port)
    scene = Scene(nginx, side, host)
    try:
        nginx.start()

        async def ready() -> bool:
            try:
                async with scene.api.get(side.url + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, "the sidecar to be ready")
        yield scene, agent
    finally:
        await scene.close()
        nginx.stop()
        side.stop()
        await runner.cleanup()


def _summary(latencies: list[float]) -> str:
    ms = sorted(x * 1e3 for x in latencies)
    return f"n={len(ms)} median={statistics.median(ms):.1f} ms max={ms[-1]:.1f} ms"


async def test_nginx_mirrors_the_hosts_requests_into_exact_comparisons(
    scene: tuple[Scene, Any],
) -> None:
    sc, agent = scene
    ids = [f"n-{i}" for i in range(40)]
    requests = traffic(ids, seed=21)
    # A 200 KB refund: nginx's default 16k body buffer would mirror it empty.
    big: HostRequest = ("POST", "/refunds", {"refund_id": "big-1", "notes": "x" * 200_000}, {})
    decision: HostRequest = (
        "PUT",
        "/refunds/big-1/decision",
        {"decision": {"action": "approve"}},
        {},
    )
    requests[5:5] = [big]
    requests.append(decision)
    statuses = [(await sc.send(r))[0] for r in requests]
    assert statuses == [201 if m == "POST" else 200 for m, *_ in requests]
    assert len(sc.host[HOST_LOG].requests) == len(requests)

    async def all_compared() -> bool:
        return await sc.compared() == len(ids) + 1

    await wait_for(all_compared, "every mirrored case compared")
    events_sent = sum(1 for m, *_ in requests if m == "POST")
    outcomes_sent = len(requests) - events_sent
    labels = {"task_type": "refund_request", "source": "mirror"}
    assert await sc.metric("shadow_events_total", **labels, result="stored") == len(ids) + 1
    assert await sc.metric("shadow_events_total", **labels, result="duplicate") == (
        events_sent - len(ids) - 1
    )
    assert (
        await sc.metric("shadow_outcomes_total", source="mirror", result="stored") == len(ids) + 1
    )
    assert await sc.metric("shadow_outcomes_total", source="mirror", result="duplicate") == (
        outcomes_sent - len(ids) - 1
    )
    (notes,) = [
        r.body["payload"].get("notes") for r in agent.requests if r.body["event_id"] == "big-1"
    ]
    assert notes == "x" * 200_000
    assert await sc.compared() == len(ids) + 1


async def test_a_hung_or_stopped_sidecar_never_fails_a_request_through_nginx(
    scene: tuple[Scene, Any],
) -> None:
    sc, _ = scene
    warm = [await sc.send(r) for r in traffic([f"w-{i}" for i in range(20)], seed=1, repeat=0)]
    assert {s for s, _ in warm} <= {200, 201}

    sc.side.signal(signal.SIGSTOP)  # hung: the kernel still accepts, nothing answers
    try:
        hung = [await sc.send(r) for r in traffic([f"h-{i}" for i in range(10)], seed=2, repeat=0)]
        fresh = [
            await sc.send(r, fresh=True)
            for r in traffic([f"f-{i}" for i in range(10)], seed=4, repeat=0)
        ]
    finally:
        sc.side.signal(signal.SIGCONT)
    assert {s for s, _ in fresh} <= {200, 201}
    assert {s for s, _ in hung} <= {200, 201}
    assert len(hung) == 20

    sc.side.stop()  # down: connections refused
    down = [await sc.send(r) for r in traffic([f"d-{i}" for i in range(10)], seed=3, repeat=0)]
    assert {s for s, _ in down} <= {200, 201}
    assert len(down) == 20
    print(
        "\nnginx mirror, one keep-alive client connection, per request:"
        f"\n  sidecar up:      {_summary([t for _, t in warm])}"
        f"\n  sidecar hung:    {_summary([t for _, t in hung])}"
        f"\n  sidecar hung, a new connection per request: {_summary([t for _, t in fresh])}"
        f"\n  sidecar stopped: {_summary([t for _, t in down])}"
    )
    assert "emerg" not in sc.nginx.error_log()
    await asyncio.sleep(0)
