"""kill -9 the real sidecar mid-stream: nothing acknowledged is lost, nothing counted twice.

The real ``shadow run`` starts as a subprocess (``python -m shadow.cli run``) with an
in-process deterministic agent (:mod:`tests.shadow.crash_agent`). Events and outcomes go
to its HTTP ingest API in NDJSON batches from two concurrent posters; after some batches
were acknowledged (HTTP 202) the server gets SIGKILL while posting goes on. It is restarted
on the same DuckDB file, every acknowledged batch is re-sent first (each record must come
back ``duplicate``: it was durable before the 202), then everything else. A second crash
hits while the re-send and the agent/join work are both under way. After the last restart
the agreement counts must equal the rule's expected values exactly, and the stopped
server's file must hold exactly one comparison (and one decision) per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from tests.shadow import crash_agent

ROOT = Path(__file__).resolve().parents[2]
AGENT_SPEC = "tests.shadow.crash_agent:agent"
TOKEN = "crash-test-token"
N_EVENTS = 3000
BATCH = 100
POSTERS = 2
READY_TRIES = 300  # x 0.05 s
SETTLE_TRIES = 600  # x 0.05 s

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
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L3
      mode: propose
      gates:
        L1: {agreement: 0.90, min_samples: 30}
        L2: {agreement: 0.95, min_samples: 100}
        L3: {agreement: 0.98, min_samples: 400, max_critical: 0}
  ticket_routing:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
"""


# -- the traffic ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One NDJSON request: ``kind`` is ``events`` or ``outcomes``."""

    number: int
    kind: str
    indices: tuple[int, ...]

    @property
    def body(self) -> bytes:
        make = crash_agent.event if self.kind == "events" else crash_agent.outcome
        return "\n".join(json.dumps(make(i)) for i in self.indices).encode()


def traffic() -> list[Batch]:
    """Events in batches of 100; most outcomes arrive one events-batch later, every fourth
    batch's outcomes arrive *before* their events (joins work in any order)."""
    order: list[tuple[str, int]] = []
    lagging: int | None = None
    for b in range(N_EVENTS // BATCH):
        if b % 4 == 3:
            order += [("outcomes", b), ("events", b)]
        else:
            order.append(("events", b))
        if lagging is not None:
            order.append(("outcomes", lagging))
            lagging = None
        if b % 4 != 3:
            lagging = b
    if lagging is not None:
        order.append(("outcomes", lagging))
    return [
        Batch(n, kind, tuple(range(b * BATCH, (b + 1) * BATCH)))
        for n, (kind, b) in enumerate(order)
    ]


def expected() -> dict[str, Counter[str]]:
    """Per task type: n, agree, critical from the agent's rule."""
    out: dict[str, Counter[str]] = {t: Counter() for t in crash_agent.TASK_TYPES}
    for i in range(N_EVENTS):
        c = out[crash_agent.TASK_TYPES[i % len(crash_agent.TASK_TYPES)]]
        verdict = crash_agent.expected_verdict(i)
        c["n"] += 1
        c["agree"] += verdict == "agree"
        c["critical"] += verdict == "critical"
    return out


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sidecar:
    """``shadow run`` in a subprocess on one DuckDB file; stdout/stderr go to a log file."""

    tmp: Path
    port: int
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    starts: int = 0

    @property
    def db(self) -> Path:
        return self.tmp / "crash.duckdb"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proc(self) -> asyncio.subprocess.Process:
        return self.procs[-1]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env["SHADOW_ADMIN_TOKEN"] = TOKEN
        env["CRASH_AGENT_LOG"] = str(self.tmp / "agent-calls.log")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.starts += 1
        log = self.tmp / f"server-{self.starts}.log"
        policy = self.tmp / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shadow.cli",
                "run",
                "--config",
                str(policy),
                "--db",
                str(self.db),
                "--port",
                str(self.port),
                "--agent",
                AGENT_SPEC,
                cwd=ROOT,
                env=self.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.procs.append(proc)
        for _ in range(READY_TRIES):
            if proc.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
        await self.kill()
        pytest.fail(f"sidecar #{self.starts} not ready; its log:\n{self.log_text()}")

    def log_text(self) -> str:
        return (self.tmp / f"server-{self.starts}.log").read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        """SIGKILL (no cleanup, no checkpoint) and reap."""
        proc = self.proc
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def stop(self) -> None:
        """SIGTERM: aiohttp shuts down gracefully (the store checkpoints and closes)."""
        proc = self.proc
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                await self.kill()
                pytest.fail(f"sidecar ignored SIGTERM; its log:\n{self.log_text()}")


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    server = Sidecar(tmp_path, free_port())
    try:
        yield server
    finally:
        for proc in server.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


# -- the client -------------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, url: str, batch: Batch) -> dict[str, Any] | None:
    """The 202 body, or ``None`` when the batch was not acknowledged (server gone)."""
    try:
        async with session.post(
            f"{url}/v1/{batch.kind}",
            data=batch.body,
            headers={"Content-Type": "application/x-ndjson"},
        ) as resp:
            if resp.status != 202:
                raise AssertionError(
                    f"batch {batch.number}: HTTP {resp.status}: {await resp.text()}"
                )
            body: dict[str, Any] = await resp.json()
            return body
    except (aiohttp.ClientError, TimeoutError):
        return None


async def post_all(
    session: aiohttp.ClientSession, url: str, batches: Iterable[Batch], acked: set[int]
) -> None:
    """POSTERS concurrent posters over ``batches``; acknowledged batch numbers go to
    ``acked``. A refused batch does not stop the others (posting goes on through a kill)."""
    queue: asyncio.Queue[Batch] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def poster() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            if await post(session, url, batch) is not None:
                acked.add(batch.number)

    await asyncio.gather(*(poster() for _ in range(POSTERS)))


async def check_durable(
    session: aiohttp.ClientSession, url: str, batches: list[Batch], acked: set[int]
) -> None:
    """Re-send every acknowledged batch: each record must already be stored."""
    for batch in batches:
        if batch.number not in acked:
            continue
        body = await post(session, url, batch)
        assert body is not None, f"re-sending batch {batch.number} after restart failed"
        assert body["results"] == {"duplicate": len(batch.indices)}, (
            f"{batch.kind} batch {batch.number} was acknowledged before the kill but the "
            f"restarted sidecar did not have all of it: {body}"
        )


async def agreement(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/agreement") as resp:
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


def total_n(doc: dict[str, Any]) -> int:
    return sum(int(t["n"]) for t in doc["task_types"].values())


async def kill_when(sidecar: Sidecar, ready: Any) -> None:
    """SIGKILL the server as soon as ``await ready()`` is true (bounded)."""
    for _ in range(SETTLE_TRIES * 4):
        if await ready():
            break
        await asyncio.sleep(0.005)
    await sidecar.kill()


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_twice_mid_stream_loses_nothing_and_counts_nothing_twice(
    sidecar: Sidecar,
) -> None:
    batches = traffic()
    want = expected()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # run 1: killed after a third of the batches were acknowledged, posting goes on
        await sidecar.start(session)
        acked1: set[int] = set()
        feeding = asyncio.create_task(post_all(session, sidecar.url, batches, acked1))

        async def a_third_acked() -> bool:
            return len(acked1) >= len(batches) // 3

        await kill_when(sidecar, a_third_acked)
        before_kill1 = set(acked1)
        await feeding
        assert len(before_kill1) >= len(batches) // 3
        assert len(acked1) < len(batches), "the kill came after every batch was acknowledged"

        # run 2: nothing acknowledged was lost; re-send all, killed again mid-stream while
        # the agent and the joiner are at work
        await sidecar.start(session)
        await check_durable(session, sidecar.url, batches, before_kill1)
        acked2: set[int] = set()
        feeding = asyncio.create_task(post_all(session, sidecar.url, batches, acked2))
        seen: list[int] = []

        async def comparing_mid_stream() -> bool:
            n = total_n(await agreement(session, sidecar.url))
            seen.append(n)
            return n > 0 and (len(acked2) >= len(batches) // 2 or feeding.done())

        await kill_when(sidecar, comparing_mid_stream)
        before_kill2 = set(acked2)
        await feeding
        assert max(seen) < N_EVENTS, "the second kill came after every comparison was made"

        # run 3: nothing acknowledged in runs 1 and 2 was lost; re-send everything, settle
        await sidecar.start(session)
        restarted = total_n(await agreement(session, sidecar.url))
        assert restarted >= max(seen), f"comparisons lost in the crash: {max(seen)} -> {restarted}"
        await check_durable(session, sidecar.url, batches, before_kill1 | before_kill2)
        acked3: set[int] = set()
        await post_all(session, sidecar.url, batches, acked3)
        assert acked3 == {b.number for b in batches}
        doc: dict[str, Any] = {}
        history: list[int] = []
        for _ in range(SETTLE_TRIES):
            doc = await agreement(session, sidecar.url)
            history.append(total_n(doc))
            if history[-1] == N_EVENTS and history[-3:] == [N_EVENTS] * 3:
                break
            await asyncio.sleep(0.05)
        assert history[-1] == N_EVENTS, f"n settled at {history[-1]}, not {N_EVENTS}"
        for name, counts in want.items():
            got = doc["task_types"][name]
            assert got["agent_version"] == crash_agent.AGENT_VERSION
            assert (got["n"], got["agree"], got["critical"], got["errors"]) == (
                counts["n"],
                counts["agree"],
                counts["critical"],
                0,
            ), name
        await sidecar.stop()
        assert sidecar.proc.returncode == 0, sidecar.log_text()

    # the stopped server's file: exactly one decision and one comparison per event
    con = duckdb.connect(str(sidecar.db), read_only=True)
    try:
        rows = con.execute(
            "SELECT count(*), count(DISTINCT event_id), "
            "count(*) FILTER (WHERE verdict = 'agree'), count(*) FILTER (WHERE critical) "
            "FROM comparisons"
        ).fetchone()
        decisions = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM decisions"
        ).fetchone()
        events = con.execute("SELECT count(*) FROM events").fetchone()
        outcomes = con.execute("SELECT count(*) FROM outcomes").fetchone()
        dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()
    finally:
        con.close()
    agree = sum(c["agree"] for c in want.values())
    critical = sum(c["critical"] for c in want.values())
    assert rows == (N_EVENTS, N_EVENTS, agree, critical)
    assert decisions == (N_EVENTS, N_EVENTS)
    assert events == (N_EVENTS,)
    assert outcomes == (N_EVENTS,)
    assert dead == (0,)

    # at-least-once to the agent: every event was asked (re-asks after a crash are fine)
    calls = Counter((sidecar.tmp / "agent-calls.log").read_text(encoding="utf-8").split())
    assert set(calls) == {crash_agent.event_id(i) for i in range(N_EVENTS)}
