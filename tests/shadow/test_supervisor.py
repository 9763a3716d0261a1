"""Background work that fails is seen: one log line with its traceback, a counted metric,
readiness naming the task while it is down, a restart with backoff (or, for a task that
cannot restart, the process's exit). The supervisor directly, and a real Pipeline over a
real DuckDB store whose reads fail for a while (a Store subclass: the fault is injected at
the store's own seam, everything else is the real thing)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shadow.agent import AgentRunner, CircuitBreaker, load_agent
from shadow.config import Settings
from shadow.errors import ShadowError, StoreError
from shadow.metrics import Metrics
from shadow.model import WorkEvent
from shadow.pipeline import Pipeline
from shadow.store import Store
from shadow.supervisor import Supervisor
from tests.conftest import FakeClock
from tests.shadow.test_pipeline import AGENT, POLICY, ev, out

TRIES = 3000  # bounds against hangs, not timings


class Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def task_failure(self, task: str) -> None:
        self.counts[task] = self.counts.get(task, 0) + 1


async def until(check: Any) -> None:
    for _ in range(TRIES):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_failing_task_is_logged_once_counted_not_ready_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = Counter()
    supervisor = Supervisor(counter, base=0.05, ceiling=0.2)
    group = supervisor.group("test")
    runs: list[int] = []
    healthy = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise OSError(f"disk read failed #{len(runs)}")
        healthy.set()
        await asyncio.Event().wait()

    caplog.set_level(logging.ERROR, logger="shadow.supervisor")
    group.spawn("feeder", flaky)
    await until(lambda: supervisor.not_ready() is not None)
    why = supervisor.not_ready()
    assert why is not None
    assert "feeder" in why
    assert "disk read failed" in why
    await asyncio.wait_for(healthy.wait(), timeout=30)
    assert supervisor.not_ready() is None
    assert counter.counts == {"feeder": 2}
    records = [r for r in caplog.records if r.name == "shadow.supervisor"]
    assert len(records) == 2  # one line per failure
    assert all(r.exc_info is not None for r in records)  # each with its traceback
    await group.stop()
    await group.stop()  # idempotent


async def test_a_task_that_cannot_restart_is_fatal() -> None:
    supervisor = Supervisor(Counter())
    group = supervisor.group("test")

    async def broken() -> None:
        raise ValueError("the position file is damaged")

    group.spawn("file-source", broken, restart=False)
    why = await asyncio.wait_for(supervisor.wait_fatal(), timeout=30)
    assert "cannot restart" in why
    assert "damaged" in why
    assert supervisor.not_ready() == why
    await group.stop()


class FailingReads(Store):
    """A real store whose reads of the events awaiting the agent fail ``fail`` times."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail = 0

    async def events_awaiting_agent(self, *, limit: int = 1000) -> list[WorkEvent]:
        if self.fail > 0:
            self.fail -= 1
            raise StoreError("store read failed: I/O error")
        return await super().events_awaiting_agent(limit=limit)


@pytest.fixture
async def failing(tmp_path: Path) -> AsyncIterator[FailingReads]:
    async with FailingReads(tmp_path / "s.duckdb") as store:
        yield store


def pipeline_on(store: Store, supervisor: Supervisor, clock: FakeClock) -> Pipeline:
    values: dict[str, Any] = {
        "db": store.path,
        "agent": AGENT,
        "agent_concurrency": 2,
        "expire_interval": 3600.0,
        "config": None,
    }
    settings = Settings(**values)
    runner = AgentRunner(
        load_agent(AGENT, timeout=30.0),
        concurrency=2,
        retries=0,
        breaker=CircuitBreaker(failure_threshold=100),
        default_version="py-agent@1",
    )
    return Pipeline(
        settings=settings,
        policy=POLICY,
        store=store,
        agent=runner,
        metrics=Metrics(CollectorRegistry(), POLICY),
        clock=clock,
        scan_every=0.05,
        supervisor=supervisor,
    )


async def test_a_feeder_whose_store_reads_fail_is_not_ready_then_recovers(
    failing: FailingReads, clock: FakeClock, no_shadow_env: None
) -> None:
    counter = Counter()
    supervisor = Supervisor(counter, base=0.05, ceiling=0.2)
    pipeline = pipeline_on(failing, supervisor, clock)
    failing.fail = 3
    await pipeline.start()
    try:
        await until(lambda: supervisor.not_ready() is not None)
        assert "feeder" in (supervisor.not_ready() or "")
        await pipeline.intake.submit_events([ev("r-1")], source="test")
        await pipeline.intake.submit_outcomes([out("r-1")], source="test")
        await until(lambda: failing.fail == 0 and supervisor.not_ready() is None)
        await pipeline.drain()
        assert await failing.count("comparisons") == 1
        assert counter.counts["feeder"] >= 1
    finally:
        await pipeline.stop()
        assert pipeline.agent is not None
        await pipeline.agent.close()


async def test_stop_after_a_failure_raises_nothing_and_a_stopped_pipeline_does_not_restart(
    failing: FailingReads, clock: FakeClock, no_shadow_env: None
) -> None:
    supervisor = Supervisor(Counter(), base=10.0, ceiling=10.0)  # down until stopped
    pipeline = pipeline_on(failing, supervisor, clock)
    failing.fail = 1
    await pipeline.start()
    await until(lambda: supervisor.not_ready() is not None)
    await pipeline.stop()  # does not re-raise the feeder's error
    await pipeline.stop()
    with pytest.raises(ShadowError, match="stopped"):
        await pipeline.start()
    assert pipeline.agent is not None
    await pipeline.agent.close()
