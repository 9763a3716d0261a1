"""kill -9 a real ``shadow run`` consuming Kafka mid-stream, twice: 0 lost, 0 counted twice.

The sidecar runs as a subprocess (``python -m shadow.cli run --source kafka://...``) with the
deterministic in-process agent :mod:`tests.shadow.crash_agent`. A real aiokafka producer
sends shuffled events and outcomes (with duplicates) in chunks while the sidecar consumes;
it is SIGKILLed twice while records, agent calls and joins are in flight, and restarted on
the same DuckDB file and consumer group. Offsets are committed only after the records are
stored, so the restart re-reads whatever the dead process had not committed; the store
dedupes it. At the end the agreement counts must equal the agent's rule exactly and the
file must hold exactly one comparison per event.
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

from shadow.store import Store
from tests.conftest import wait_for
from tests.kafka_broker import Broker, free_port
from tests.shadow.sources.kafka_data import (
    AGENT_SPEC,
    POLICY,
    expected,
    observed,
    shuffled_with_duplicates,
)

ROOT = Path(__file__).resolve().parents[3]
N_EVENTS = 2400
CHUNK = 150


class Process:
    """``shadow run`` on one DB file and port; restartable."""

    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.broker = broker
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        (tmp / "policy.yaml").write_text(POLICY, encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env.update(
            PYTHONUNBUFFERED="1",
            CRASH_AGENT_DELAY="0.003",
            SHADOW_KAFKA_HEALTH_INTERVAL="0.2",
            SHADOW_BATCH_SIZE="100",
            SHADOW_KAFKA_SESSION_TIMEOUT="3",
        )
        source = f"kafka://{self.broker.bootstrap}?events=ev&outcomes=oc&group=crash"
        with (self.tmp / f"sidecar-{self.starts}.log").open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shadow.cli",
                "run",
                "--config",
                str(self.tmp / "policy.yaml"),
                "--db",
                str(self.tmp / "crash.duckdb"),
                "--port",
                str(self.port),
                "--agent",
                AGENT_SPEC,
                "--source",
                source,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"sidecar exited: {self.log()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.url}/readyz") as resp:
                    return resp.status == 200
            return False

        await wait_for(ready, f"sidecar start #{self.starts}", tries=600)

    def log(self) -> str:
        return (self.tmp / f"sidecar-{self.starts}.log").read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

    async def terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def stored(self, session: aiohttp.ClientSession) -> float:
        """Events this process stored from Kafka (its ``shadow_events_total``)."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{self.url}/metrics") as resp:
                text = await resp.text()
                return sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("shadow_events_total{") and 'source="kafka"' in line
                )
        return 0.0

    async def compared(self, session: aiohttp.ClientSession) -> int:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{self.url}/v1/agreement") as resp:
                if resp.status == 200:
                    doc: dict[str, Any] = await resp.json()
                    return sum(int(v["n"]) for v in doc["task_types"].values())
        return -1


async def test_kill_9_mid_stream_loses_nothing_and_counts_nothing_twice(
    broker: Broker, tmp_path: Path
) -> None:
    await broker.create_topics({"ev": 3, "oc": 3})
    events, outcomes = shuffled_with_duplicates(range(N_EVENTS), seed=11)
    sidecar = Process(tmp_path, broker)
    sent: list[int] = []

    async def produce() -> None:
        # Interleaved chunks: outcomes often reach the sidecar before their events.
        for start in range(0, max(len(events), len(outcomes)), CHUNK):
            await broker.produce_json("oc", outcomes[start : start + CHUNK])
            await broker.produce_json("ev", events[start : start + CHUNK])
            sent.append(start)
            await asyncio.sleep(0.4)

    async with aiohttp.ClientSession() as session:
        try:
            await sidecar.start(session)
            producing = asyncio.create_task(produce())
            mid_stream: list[bool] = []
            chunks = -(-len(events) // CHUNK)
            for part in (3, 2):
                # Kill once a share of the stream is out and this process has stored some.
                async def reached(p: int = part) -> bool:
                    return len(sent) >= chunks // p and await sidecar.stored(session) > 0

                await wait_for(reached, f"1/{part} of the stream produced before a kill")
                mid_stream.append(not producing.done())
                await sidecar.kill()
                await sidecar.start(session)
            await producing

            async def done() -> bool:
                return await sidecar.compared(session) >= N_EVENTS

            await wait_for(done, f"all {N_EVENTS} comparisons", tries=2400)
            async with session.get(f"{sidecar.url}/v1/agreement") as resp:
                doc = await resp.json()
        finally:
            await sidecar.terminate()

    assert mid_stream[0], "the first kill must hit while records are still being produced"
    assert observed(doc) == expected(range(N_EVENTS))
    async with Store(tmp_path / "crash.duckdb") as store:
        assert await store.count("comparisons") == N_EVENTS
        assert await store.count("events") == N_EVENTS
        assert await store.count("decisions") == N_EVENTS
        assert await store.count("dead_letters") == 0
        assert (await store.pending())["awaiting_agent"] == 0
