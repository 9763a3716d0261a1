"""kill -9 the real sidecar with tool writes held for approval: after the restart each one
is still pending or failed closed, and none is ever forwarded twice.

``shadow run`` starts as a subprocess at L2 with an upstream MCP server (the SDK's
``MCPServer``) in the test process whose ``issue_refund`` blocks until released. Three
writes are held; one is approved, so the sidecar is forwarding it (the upstream has
received it and not answered) when it gets SIGKILL. After the restart the one being
forwarded is ``failed`` (nobody can know whether the upstream acted) and is never sent
again; the other two are still pending: one is approved (forwarded once), one rejected
(never forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from tests.shadow.gateway.conftest import UPSTREAM_TOKEN, Upstream, UpstreamFactory, gateway_policy
from tests.shadow.test_crash import READY_TRIES, ROOT, free_port

TOKEN = "gateway-crash-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def blocking_upstream(release: asyncio.Event) -> Upstream:
    server = MCPServer("backoffice", log_level="WARNING")
    up = Upstream(server)

    @server.tool()
    async def issue_refund(order_id: str, amount: float) -> dict[str, Any]:
        up.calls.append(("issue_refund", {"order_id": order_id, "amount": amount}))
        await release.wait()
        return {"refunded": amount}

    return up


async def start(tmp: Path, port: int, n: int, session: aiohttp.ClientSession) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(
        SHADOW_ADMIN_TOKEN=TOKEN,
        SHADOW_GATEWAY_APPROVAL_WAIT="0",
        SHADOW_GATEWAY_SECRET="crash-test-gateway-key",
        BACKOFFICE_TOKEN=UPSTREAM_TOKEN,
    )
    with (tmp / f"server-{n}.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadow.cli", "run", "--config", str(tmp / "policy.yaml"),
            "--db", str(tmp / "gw.duckdb"), "--port", str(port),
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    for _ in range(READY_TRIES):
        if proc.returncode is not None:
            break
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 200:
                    return proc
        await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    pytest.fail((tmp / f"server-{n}.log").read_text(errors="replace")[-4000:])


async def hold(session: aiohttp.ClientSession, base: str, event_id: str, amount: float) -> str:
    async with session.post(
        f"{base}/v1/sessions", json={"task_type": "refund", "event_id": event_id}, headers=AUTH
    ) as resp:
        url = (await resp.json())["tools_url"]
    async with Client(url) as client:
        result = await client.call_tool("issue_refund", {"order_id": event_id, "amount": amount})
    assert result.structured_content["status"] == "pending"
    return str(result.structured_content["approval_id"])


async def approvals(session: aiohttp.ClientSession, base: str) -> dict[str, str]:
    async with session.get(f"{base}/v1/approvals?status=all", headers=AUTH) as resp:
        return {a["id"]: a["status"] for a in (await resp.json())["approvals"]}


@pytest.mark.slow  # subprocesses and kill -9
async def test_kill_9_with_approvals_held_never_forwards_one_twice(
    tmp_path: Path, upstream: UpstreamFactory
) -> None:
    release = asyncio.Event()
    up = await upstream(blocking_upstream(release))
    (tmp_path / "policy.yaml").write_text(gateway_policy(up.url, start="L2"), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        proc = await start(tmp_path, port, 1, session)
        try:
            ids = [await hold(session, base, f"e-{i}", float(i)) for i in range(3)]
            approve = asyncio.ensure_future(
                session.post(f"{base}/v1/approvals/{ids[0]}/approve", json={}, headers=AUTH)
            )
            for _ in range(600):  # until the upstream has the forwarded call (bounded)
                if up.calls:
                    break
                await asyncio.sleep(0.05)
            assert up.calls == [("issue_refund", {"order_id": "e-0", "amount": 0.0})]
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            with contextlib.suppress(aiohttp.ClientError):
                (await approve).close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        release.set()

        proc = await start(tmp_path, port, 2, session)
        try:
            assert await approvals(session, base) == {
                ids[0]: "failed",
                ids[1]: "pending",
                ids[2]: "pending",
            }
            retry = await session.post(
                f"{base}/v1/approvals/{ids[0]}/approve", json={}, headers=AUTH
            )
            assert retry.status == 409
            retry.close()
            ok = await session.post(f"{base}/v1/approvals/{ids[1]}/approve", json={}, headers=AUTH)
            assert ok.status == 200
            ok.close()
            no = await session.post(
                f"{base}/v1/approvals/{ids[2]}/reject", json={"reason": "no"}, headers=AUTH
            )
            assert no.status == 200
            no.close()
            assert await approvals(session, base) == {
                ids[0]: "failed",
                ids[1]: "forwarded",
                ids[2]: "rejected",
            }
        finally:
            proc.terminate()
            await proc.wait()
    assert up.calls == [
        ("issue_refund", {"order_id": "e-0", "amount": 0.0}),
        ("issue_refund", {"order_id": "e-1", "amount": 1.0}),
    ]
