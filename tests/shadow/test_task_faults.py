"""Store faults in each background task, through the real app (aiohttp on a loopback port,
a real DuckDB store). The only fake is the fault: a Store subclass, passed to
``build_app``'s ``open_store`` seam, whose method raises StoreError twice and then works.

Each test checks what the issue asks: ``/readyz`` answers 503 naming the task and the
cause within a second; each failure is one ERROR line from ``shadow.supervisor`` with its
traceback and one count in ``shadow_task_failures_total{task}``; the task then recovers
and its work is not lost.

- feeder (read) and file-source (write): restarted by the supervisor.
- join (read), writer, expire, gateway-flush, approvals-sweep and mirror (writes): loops
  that keep their batch and retry it themselves (the mirror drops the copy and counts it, as
  documented); they report the failure to the supervisor (TaskGroup.retrying) and its
  recovery, so each is seen the same way.
- agent: not covered; its loop calls no store method.
- No fatal case: outside Kafka, no task is spawned with restart=False.

See also test_supervisor.py (the supervisor and a Pipeline alone) and test_disk_full.py
(a real full disk).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from shadow.app import build_app
from shadow.errors import StoreError
from shadow.model import AuditEntry, ShadowDecision, WorkEvent
from shadow.policy import parse_policy
from shadow.server import Listener
from shadow.sources.mirror import MIRROR
from shadow.store import ApprovalRow, JoinRow, PutResult, Store, ToolCallRow
from tests.conftest import wait_for
from tests.mirror_host import POLICY as MIRROR_POLICY
from tests.shadow.conftest import (
    POLICY,
    AgentServerFactory,
    Sidecar,
    agree_reply,
    clean_settings,
    metric,
)
from tests.shadow.gateway import conftest as gateway_fixtures
from tests.shadow.gateway.conftest import UPSTREAM_TOKEN, UpstreamFactory, gateway_policy
from tests.shadow.gateway.test_gateway import live_url, refund, set_level

upstream = gateway_fixtures.upstream  # the real MCP upstream the gateway's tests serve

FAULTS = 2  # each fault ends one run of the task (or one pass of its loop)
SECOND = 50  # /readyz polls 0.02 s apart: "within a second" as a bound on tries, no timing
INJECTED = "injected I/O error"


class NotSeen(AssertionError):
    """The supervisor did not see a task's failure: what the strict xfails expect."""


class FaultyStore(Store):
    """The real store; each method below raises :class:`StoreError` while it has faults
    armed (:meth:`arm`), after letting ``skip`` calls through, and then behaves."""

    def __init__(self, path: str, faults: Mapping[str, tuple[int, int]]) -> None:
        super().__init__(path)
        self._armed: dict[str, list[int]] = {m: [t, s] for m, (t, s) in faults.items()}
        self.fired: dict[str, int] = {}

    def arm(self, method: str, times: int = FAULTS, *, skip: int = 0) -> None:
        self._armed[method] = [times, skip]

    def left(self, method: str) -> int:
        return self._armed.get(method, [0, 0])[0]

    def _fault(self, method: str) -> None:
        armed = self._armed.get(method)
        if armed is None or armed[0] <= 0:
            return
        if armed[1] > 0:
            armed[1] -= 1
            return
        armed[0] -= 1
        self.fired[method] = self.fired.get(method, 0) + 1
        raise StoreError(f"store {self.path}: {method} failed: {INJECTED}")

    async def events_awaiting_agent(self, *, limit: int = 1000) -> list[WorkEvent]:
        self._fault("events_awaiting_agent")
        return await super().events_awaiting_agent(limit=limit)

    async def put_events(
        self,
        events: Sequence[WorkEvent],
        *,
        source: str,
        now: datetime,
        needs_agent: Sequence[bool] | None = None,
        locations: Sequence[str | None] | None = None,
    ) -> list[PutResult]:
        self._fault("put_events")
        return await super().put_events(
            events, source=source, now=now, needs_agent=needs_agent, locations=locations
        )

    async def put_decisions(
        self,
        decisions: Sequence[tuple[ShadowDecision, str]],
        *,
        now: datetime,
        source: str = "agent",
    ) -> list[PutResult]:
        self._fault("put_decisions")
        return await super().put_decisions(decisions, now=now, source=source)

    async def ready_pairs(
        self, event_ids: Sequence[str] | None = None, *, limit: int = 10_000
    ) -> list[JoinRow]:
        self._fault("ready_pairs")
        return await super().ready_pairs(event_ids, limit=limit)

    async def expire(self, *, now: datetime, ttl: timedelta) -> tuple[int, int]:
        self._fault("expire")
        return await super().expire(now=now, ttl=ttl)

    async def put_tool_calls(self, rows: Sequence[ToolCallRow]) -> None:
        if rows:  # the row writer runs every 0.2 s: only a write of rows meets the fault
            self._fault("put_tool_calls")
        await super().put_tool_calls(rows)

    async def decide_approval(
        self,
        approval_id: str,
        status: str,
        *,
        actor: str,
        reason: str,
        now: datetime,
        audit: AuditEntry | None = None,
    ) -> ApprovalRow | None:
        self._fault("decide_approval")
        return await super().decide_approval(
            approval_id, status, actor=actor, reason=reason, now=now, audit=audit
        )


@dataclass(frozen=True, slots=True)
class Faulty:
    sc: Sidecar
    store: FaultyStore


FaultyFactory = Callable[..., Awaitable[Faulty]]


@pytest.fixture
async def faulty(tmp_path: Path, no_shadow_env: None) -> AsyncIterator[FaultyFactory]:
    """``await faulty(policy=..., faults={method: (times, skip)}, **settings)``: the app the
    ``sidecar`` fixture serves, over a :class:`FaultyStore` (``faults`` armed from the
    start); torn down after the test."""
    started: list[tuple[Listener, aiohttp.ClientSession]] = []

    async def start(
        *, policy: str = POLICY, faults: Mapping[str, tuple[int, int]] | None = None, **kw: Any
    ) -> Faulty:
        settings = clean_settings(tmp_path, f"faulty{len(started)}", **kw)
        stores: list[FaultyStore] = []

        def open_store(db: str) -> Store:
            stores.append(FaultyStore(db, faults or {}))
            return stores[-1]

        parsed = parse_policy(policy)
        app = build_app(
            settings, policy=parsed, registry=CollectorRegistry(), open_store=open_store
        )
        sock = socket.create_server(("127.0.0.1", 0))
        listener = Listener(app, sock, settings, access_log=None, shutdown_timeout=1.0)
        await listener.start()
        session = aiohttp.ClientSession()
        started.append((listener, session))
        sc = Sidecar(f"http://127.0.0.1:{listener.port}", app, settings, session, parsed)
        (store,) = stores
        return Faulty(sc, store)

    yield start
    for listener, session in reversed(started):
        await session.close()
        await listener.close()


# -- the checks every task gets ----------------------------------------------------------------


async def ready(sc: Sidecar) -> bool:
    return (await sc.get("/readyz")).status == 200


async def fired(store: FaultyStore, method: str, times: int = 1) -> None:
    async def check() -> bool:
        return store.fired.get(method, 0) >= times

    await wait_for(check, f"{times} fault(s) of {method}")


async def named_not_ready(sc: Sidecar, name: str) -> str | None:
    """The ``/readyz`` error naming ``name`` within :data:`SECOND` polls, else ``None``."""
    seen: list[str] = []

    async def check() -> bool:
        res = await sc.get("/readyz")
        if res.status == 503 and name in res.body["error"]:
            seen.append(res.body["error"])
        return bool(seen)

    try:
        await wait_for(check, f"/readyz naming {name}", tries=SECOND, every=0.02)
    except AssertionError:
        return None
    return seen[0]


async def recovered(sc: Sidecar, store: FaultyStore, method: str) -> None:
    async def check() -> bool:
        return store.left(method) == 0 and await ready(sc)

    await wait_for(check, f"every fault of {method} spent and /readyz ready again")


async def assert_supervised(
    sc: Sidecar,
    store: FaultyStore,
    caplog: pytest.LogCaptureFixture,
    *,
    task: str,
    name: str,
    method: str,
    why: str | None,
) -> None:
    """Readiness named the task and the cause; one failure counted and one ERROR line of
    the supervisor, with its traceback, per fault; no other error line."""
    if why is None:
        raise NotSeen(f"/readyz did not name {name} after {store.fired} store faults")
    assert "StoreError" in why, why
    assert INJECTED in why, why
    failures = store.fired[method]
    counted = metric(await sc.metrics(), "shadow_task_failures_total", task=task)
    assert counted == failures, (counted, failures)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["shadow.supervisor"] * failures, [
        (r.name, r.getMessage()) for r in errors
    ]
    for record in errors:
        assert name in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], StoreError)


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, capturing WARNING and above from every logger."""
    caplog.set_level(logging.WARNING)
    return caplog


def appeal(event_id: str) -> dict[str, Any]:
    """An event of a task type every event of which the agent sees (sample_rate 1.0)."""
    return {"event_id": event_id, "task_type": "appeal", "payload": {"n": event_id}}


def decided(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "decision": {"action": "approve"}}


async def count(store: Store, table: str, expected: int) -> None:
    async def check() -> bool:
        return await store.count(table) == expected

    await wait_for(check, f"{expected} rows in {table}")


# -- the tasks the supervisor sees -------------------------------------------------------------


async def test_feeder_store_read_fails(
    faulty: FaultyFactory, agent_server: AgentServerFactory, errors: pytest.LogCaptureFixture
) -> None:
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    f = await faulty(agent=agent.url)
    sc, store = f.sc, f.store
    assert await ready(sc)
    errors.clear()
    store.arm("events_awaiting_agent")
    await fired(store, "events_awaiting_agent")
    # Stored while the feeder is down: still decided (once) and compared.
    assert (await sc.post("/v1/events", json_body=appeal("a-1"))).status == 202
    assert (await sc.post("/v1/outcomes", json_body=decided("a-1"))).status == 202
    why = await named_not_ready(sc, "feeder")
    await recovered(sc, store, "events_awaiting_agent")
    await count(store, "comparisons", 1)
    assert agent.event_ids == ["a-1"]
    await assert_supervised(
        sc, store, errors, task="feeder", name="feeder", method="events_awaiting_agent", why=why
    )


async def test_file_source_store_write_fails(
    faulty: FaultyFactory, tmp_path: Path, errors: pytest.LogCaptureFixture
) -> None:
    """Two batches (500 lines, then 200): the second write fails, then the first of the
    re-read; the third run stores the rest and deduplicates what the first stored."""
    path = tmp_path / "work.jsonl"
    lines = [{"kind": "event", **appeal(f"f-{i}")} for i in range(700)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    f = await faulty(faults={"put_events": (FAULTS, 1)}, source=[f"file:{path}"])
    sc, store = f.sc, f.store
    await fired(store, "put_events")
    name = f"file-source {path}"
    why = await named_not_ready(sc, name)
    await recovered(sc, store, "put_events")
    await count(store, "events", 700)
    await assert_supervised(
        sc, store, errors, task="file-source", name=name, method="put_events", why=why
    )


# -- the loops that keep their batch and retry it themselves -------------------------------


async def test_writer_store_write_fails(
    faulty: FaultyFactory, agent_server: AgentServerFactory, errors: pytest.LogCaptureFixture
) -> None:
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    f = await faulty(agent=agent.url)
    sc, store = f.sc, f.store
    assert await ready(sc)
    errors.clear()
    store.arm("put_decisions")
    assert (await sc.post("/v1/events", json_body=appeal("w-1"))).status == 202
    assert (await sc.post("/v1/outcomes", json_body=decided("w-1"))).status == 202
    await fired(store, "put_decisions")
    why = await named_not_ready(sc, "writer")
    await recovered(sc, store, "put_decisions")
    # Not lost: the decisions the writer could not store are asked for again.
    await count(store, "comparisons", 1)
    assert agent.event_ids == ["w-1"] * (FAULTS + 1)
    await assert_supervised(
        sc, store, errors, task="writer", name="writer", method="put_decisions", why=why
    )


async def test_join_store_read_fails(
    faulty: FaultyFactory, agent_server: AgentServerFactory, errors: pytest.LogCaptureFixture
) -> None:
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    f = await faulty(agent=agent.url)
    sc, store = f.sc, f.store
    assert (await sc.post("/v1/events", json_body=appeal("j-1"))).status == 202
    await count(store, "decisions", 1)
    assert await ready(sc)
    errors.clear()
    store.arm("ready_pairs")
    assert (await sc.post("/v1/outcomes", json_body=decided("j-1"))).status == 202
    await fired(store, "ready_pairs")
    why = await named_not_ready(sc, "join")
    await recovered(sc, store, "ready_pairs")
    await count(store, "comparisons", 1)  # not lost: the join is tried again
    await assert_supervised(
        sc, store, errors, task="join", name="join", method="ready_pairs", why=why
    )


async def test_expire_store_write_fails(
    faulty: FaultyFactory, agent_server: AgentServerFactory, errors: pytest.LogCaptureFixture
) -> None:
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    f = await faulty(agent=agent.url, expire_interval=0.05, join_ttl=0.2)
    sc, store = f.sc, f.store
    assert await ready(sc)
    errors.clear()
    store.arm("expire")
    await fired(store, "expire")
    # No outcome ever comes: only an expiry closes this case.
    assert (await sc.post("/v1/events", json_body=appeal("x-1"))).status == 202
    why = await named_not_ready(sc, "expire")
    await recovered(sc, store, "expire")
    await count(store, "comparisons", 1)  # not lost: the expiry runs again
    await assert_supervised(
        sc, store, errors, task="expire", name="expire", method="expire", why=why
    )


async def test_mirror_store_write_fails(
    faulty: FaultyFactory, errors: pytest.LogCaptureFixture
) -> None:
    f = await faulty(policy=MIRROR_POLICY)
    sc, store = f.sc, f.store
    assert await ready(sc)
    errors.clear()
    store.arm("put_events")
    why: str | None = None
    for n in range(FAULTS + 1):
        body = {"refund_id": f"m-{n}", "amount": n}
        res = await sc.post("/v1/mirror/refunds", json_body=body)
        assert (res.status, res.body) == (202, {"queued": True})
        await sc.app[MIRROR].drained()
        if n < FAULTS:
            await fired(store, "put_events", n + 1)
        if n == FAULTS - 1:  # down until the next batch is stored
            why = await named_not_ready(sc, "mirror")
    await recovered(sc, store, "put_events")
    # A mirror's copy is never owed (docs/mirroring.md): those the store refused are dropped
    # and counted; the next one is stored.
    dropped = metric(
        await sc.metrics(), "shadow_mirror_requests_total", rule="none", result="dropped"
    )
    assert dropped == FAULTS
    assert await store.count("events") == 1
    await assert_supervised(
        sc, store, errors, task="mirror", name="mirror", method="put_events", why=why
    )


async def test_gateway_flush_store_write_fails(
    faulty: FaultyFactory,
    upstream: UpstreamFactory,
    monkeypatch: pytest.MonkeyPatch,
    errors: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("BACKOFFICE_TOKEN", UPSTREAM_TOKEN)
    up = await upstream()
    f = await faulty(policy=gateway_policy(up.url))
    sc, store = f.sc, f.store
    assert await ready(sc)
    errors.clear()
    store.arm("put_tool_calls")
    # A live write at L0 is refused: a call row all the same.
    assert "shadow only" in str(await refund(await live_url(sc, "g-1")))
    await fired(store, "put_tool_calls")
    why = await named_not_ready(sc, "gateway-flush")
    await recovered(sc, store, "put_tool_calls")

    async def stored() -> bool:
        return len(await store.tool_calls(event_id="g-1")) == 1

    await wait_for(stored, "the call row, kept for the next flush")  # not lost
    await assert_supervised(
        sc,
        store,
        errors,
        task="gateway-flush",
        name="gateway-flush",
        method="put_tool_calls",
        why=why,
    )


async def test_approvals_sweep_store_write_fails(
    faulty: FaultyFactory,
    upstream: UpstreamFactory,
    monkeypatch: pytest.MonkeyPatch,
    errors: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("BACKOFFICE_TOKEN", UPSTREAM_TOKEN)
    up = await upstream()
    f = await faulty(
        policy=gateway_policy(up.url), gateway_approval_wait=0.0, gateway_approval_timeout=0.4
    )
    sc, store = f.sc, f.store
    await set_level(sc, "L2")  # a live write is held for approval
    assert await ready(sc)
    errors.clear()
    store.arm("decide_approval")
    held = await refund(await live_url(sc, "s-1"), 10.0)
    approval_id = held.structured_content["approval_id"]
    await fired(store, "decide_approval")
    why = await named_not_ready(sc, "approvals-sweep")
    await recovered(sc, store, "decide_approval")

    async def expired() -> bool:
        row = await store.approval(approval_id)
        return row is not None and row.status == "expired"

    await wait_for(expired, "the held write to expire")  # not lost: expiry is tried again
    assert up.writes() == []
    await assert_supervised(
        sc,
        store,
        errors,
        task="approvals-sweep",
        name="approvals-sweep",
        method="decide_approval",
        why=why,
    )
