"""Evidence no one can rewrite after the fact: how ``GET /v1/route`` (and a live session)
records how an item is handled (shadow.handling, shadow.store.handling).

- A route asked about an item already decided is answered but changes nothing: four such
  routes used to relabel a task type's four blind disagreements as ``assisted`` and move its
  agreement from 0.90 to 1.00.
- Routing needs a credential when tokens are configured; ``HEAD`` answers the same and
  records nothing.
- A routing answer is given only once its record is durable (group commit: concurrent
  routes share one write), and a write that fails answers 503, never a 200 whose record is
  not stored. A ``kill -9`` right after the answers loses none of them: the echoed outcomes
  of agent-handled items never become blind evidence.

Real aiohttp servers on loopback, real DuckDB files; the kill -9 test runs ``shadow run`` in
a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from prometheus_client import CollectorRegistry

from shadow.errors import StoreError
from shadow.handling import HandlingLog
from shadow.metrics import Metrics
from shadow.model import Handling, Level
from shadow.policy import parse_policy
from shadow.store import Routed, Store
from tests.conftest import FakeClock, wait_for
from tests.shadow import crash_agent
from tests.shadow.conftest import (
    ADMIN_TOKEN,
    AgentServerFactory,
    HttpResult,
    Reply,
    Sidecar,
    SidecarFactory,
    agree_reply,
    metric,
)

# refund starts at L0 (every item blind) and is moved by hand; nothing is promoted by itself.
POLICY = """
task_types:
  refund:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      start: L0
      ceiling: L3
      mode: propose
      audit_rate: 0.1
      gates:
        L1: {agreement: 0.5, min_samples: 100000}
        L2: {agreement: 0.5, min_samples: 100000}
        L3: {agreement: 0.5, min_samples: 100000}
"""
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def approve(request: dict[str, Any]) -> Reply:
    return agree_reply({"action": "approve"})


async def route(sc: Sidecar, event_id: str, headers: dict[str, str] | None = None) -> HttpResult:
    return await sc.get(f"/v1/route/refund?event_id={event_id}", headers=ADMIN | (headers or {}))


async def refund(sc: Sidecar) -> dict[str, Any]:
    await sc.pipeline.drain()
    await sc.pipeline.handling.flush()
    await sc.pipeline.evaluate()
    return dict((await sc.agreement())["task_types"]["refund"])


async def routes_given(sc: Sidecar) -> float:
    samples = await sc.metrics()
    return sum(
        metric(samples, "shadow_routes_total", task_type="refund", handled_by=h.value) or 0.0
        for h in Handling
    )


# -- a route asked after the outcome ------------------------------------------------------------


async def test_routes_asked_after_the_outcomes_leave_the_agreement_unchanged(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    """The attack: with the agreement at 0.90 and the level at L1, ask the route of the four
    items the humans disagreed on. Each answer says ``assisted``; none may relabel its blind
    comparison (it would leave 36 agreements of 36)."""
    agent = await agent_server(approve)
    sc = await sidecar(policy=POLICY, agent=agent.url)
    task = parse_policy(POLICY).task_types["refund"]
    ids = [f"r-{i}" for i in range(40)]
    wrong = [e for e in ids if not task.audited(e, Level.L1)][:4]
    assert len(wrong) == 4
    events = [{"event_id": e, "task_type": "refund", "payload": {}} for e in ids]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    await sc.pipeline.drain()
    outcomes = [
        {"event_id": e, "decision": {"action": "deny" if e in wrong else "approve"}} for e in ids
    ]
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    before = await refund(sc)
    assert (before["n"], before["agree"], before["agreement"]) == (40, 36, 0.9)

    res = await sc.put("/v1/autonomy/refund", json_body={"level": "L1"}, headers=ADMIN)
    assert res.status == 200, res.body
    for e in wrong:
        answer = await route(sc, e)
        assert answer.status == 200, answer.body
        assert answer.body["handled_by"] == "assisted"  # answered as usual

    after = await refund(sc)
    assert (after["n"], after["agree"], after["agreement"]) == (40, 36, 0.9)
    assert after["acceptance"]["assisted"]["n"] == 0
    assert await sc.pipeline.store.handling_of(wrong) == {}


# -- who may route, and HEAD --------------------------------------------------------------------


async def test_a_route_without_a_credential_is_refused_and_records_nothing(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar(policy=POLICY, ingest_tokens=["ingest-one", "ingest-two"])
    refused: list[str] = []
    for n, headers in enumerate(
        [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            {"Authorization": ADMIN_TOKEN},
            {"X-Shadow-Ingest-Token": "wrong"},
            {"X-Shadow-Ingest-Token": ADMIN_TOKEN},  # the admin token goes in Authorization
        ]
    ):
        res = await sc.get(f"/v1/route/refund?event_id=no-{n}", headers=headers)
        assert res.status == 401, (headers, res.body)
        assert "credential" in res.body["error"], res.body
        url = f"{sc.url}/v1/route/refund?event_id=no-head-{n}"
        async with sc.session.head(url, headers=headers) as head:
            assert head.status == 401, headers
        refused += [f"no-{n}", f"no-head-{n}"]
    # Also before the task type and the event id are looked at.
    assert (await sc.get("/v1/route/nosuch")).status == 401
    await sc.pipeline.handling.flush()
    assert await sc.pipeline.store.handling_of(refused) == {}
    assert await routes_given(sc) == 0

    for n, headers in enumerate(
        [
            ADMIN,
            {"Authorization": "Bearer ingest-two"},
            {"X-Shadow-Ingest-Token": "ingest-one"},
        ]
    ):
        res = await sc.get(f"/v1/route/refund?event_id=yes-{n}", headers=headers)
        assert res.status == 200, (headers, res.body)
    found = await sc.pipeline.store.handling_of([f"yes-{n}" for n in range(3)])
    assert found == {f"yes-{n}": Handling.BLIND for n in range(3)}


async def test_with_no_token_configured_routing_stays_open(sidecar: SidecarFactory) -> None:
    sc = await sidecar(policy=POLICY, admin_token=None)
    res = await sc.get("/v1/route/refund?event_id=open-1")
    assert res.status == 200, res.body
    assert await sc.pipeline.store.handling_of(["open-1"]) == {"open-1": Handling.BLIND}


async def test_head_answers_like_get_and_records_nothing(sidecar: SidecarFactory) -> None:
    sc = await sidecar(policy=POLICY)
    res = await sc.put("/v1/autonomy/refund", json_body={"level": "L3"}, headers=ADMIN)
    assert res.status == 200, res.body
    url = f"{sc.url}/v1/route/refund?event_id=h-1"
    async with sc.session.head(url, headers=ADMIN) as head:
        assert head.status == 200
        assert head.content_type == "application/json"
        assert await head.read() == b""
        length = head.headers["Content-Length"]
    for bad in ("", "?event_id=", "?event_id=a%0Ab"):
        async with sc.session.head(f"{sc.url}/v1/route/refund{bad}", headers=ADMIN) as refused:
            assert refused.status == 400, bad
    await sc.pipeline.handling.flush()
    assert await sc.pipeline.store.handling_of(["h-1"]) == {}
    assert await routes_given(sc) == 0

    async with sc.session.get(url, headers=ADMIN) as got:
        assert got.status == 200
        assert got.headers["Content-Length"] == length  # the same answer
        handled_by = (await got.json())["handled_by"]
    assert await sc.pipeline.store.handling_of(["h-1"]) == {"h-1": Handling(handled_by)}
    assert await routes_given(sc) == 1


# -- durable before the answer --------------------------------------------------------------------


async def test_every_route_answered_is_already_stored(sidecar: SidecarFactory) -> None:
    """No flush, no wait: the moment a 200 arrives, its record is in the store, for a
    route alone and for many at once (they share writes)."""
    sc = await sidecar(policy=POLICY)
    res = await sc.put("/v1/autonomy/refund", json_body={"level": "L3"}, headers=ADMIN)
    assert res.status == 200, res.body
    store = sc.pipeline.store

    one = await route(sc, "d-alone")
    assert one.status == 200, one.body
    assert await store.handling_of(["d-alone"]) == {"d-alone": Handling(one.body["handled_by"])}

    ids = [f"d-{i}" for i in range(200)]
    answers = await asyncio.gather(*(route(sc, e) for e in ids))
    assert {a.status for a in answers} == {200}
    assert await store.handling_of(ids) == {
        e: Handling(a.body["handled_by"]) for e, a in zip(ids, answers, strict=True)
    }


async def test_a_store_write_failure_answers_503_and_gives_no_route(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar(policy=POLICY)
    # Another connection to the same database (DuckDB shares it within a process) takes the
    # handling table away: the sidecar's next write fails for real.
    with duckdb.connect(sc.settings.db) as con:
        con.execute("ALTER TABLE handling RENAME TO handling_away")
        try:
            res = await route(sc, "f-1")
        finally:
            con.execute("ALTER TABLE handling_away RENAME TO handling")
    assert res.status == 503, res.body
    message = res.body["error"]
    assert "could not be stored" in message, message
    assert "handling" in message, message  # DuckDB's reason, on the same line
    assert "\n" not in message, message
    assert len(message) < 500, message
    assert "handled_by" not in res.body
    assert await routes_given(sc) == 0
    assert await sc.pipeline.store.handling_of(["f-1"]) == {}
    # The next write works again.
    res = await route(sc, "f-1")
    assert res.status == 200, res.body
    assert await sc.pipeline.store.handling_of(["f-1"]) == {"f-1": Handling.BLIND}


# -- group commit (HandlingLog against a real store) ----------------------------------------------


class GatedStore(Store):
    """A real store whose routing writes are counted, and each held until ``gate`` opens
    (when set), failing when ``fail`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[int] = []
        self.gate: asyncio.Event | None = None
        self.writing = asyncio.Event()
        self.fail: str | None = None

    async def put_handling_batch(
        self, routed: Sequence[Routed], *, published: bool = False
    ) -> tuple[int, frozenset[str]]:
        self.writes.append(len(routed))
        self.writing.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise StoreError(self.fail)
        return await super().put_handling_batch(routed, published=published)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[GatedStore]:
    async with GatedStore(tmp_path / "gated.duckdb") as store:
        yield store


def handling_log(store: Store, clock: FakeClock) -> HandlingLog:
    return HandlingLog(store, clock, Metrics(CollectorRegistry(), parse_policy(POLICY)))


async def test_concurrent_routes_wait_on_one_shared_write(
    gated: GatedStore, clock: FakeClock
) -> None:
    log = handling_log(gated, clock)
    ids = [f"g-{i}" for i in range(300)]
    await asyncio.gather(*(log.record("refund", e, Handling.AGENT, Level.L3) for e in ids))
    assert gated.writes == [300]
    assert len(await gated.handling_of(ids)) == 300
    await log.close()


async def test_records_made_while_a_write_is_in_flight_go_in_the_next_single_write(
    gated: GatedStore, clock: FakeClock
) -> None:
    log = handling_log(gated, clock)
    gated.gate = asyncio.Event()
    first = asyncio.create_task(log.record("refund", "w-0", Handling.AGENT, Level.L3))
    await gated.writing.wait()
    later = [
        asyncio.create_task(log.record("refund", f"w-{i}", Handling.ASSISTED, Level.L2))
        for i in range(1, 101)
    ]
    later.append(asyncio.create_task(log.record("refund", "w-0", Handling.BLIND, Level.L3)))
    await asyncio.sleep(0)
    assert not first.done()  # every route waits for its write
    assert not any(t.done() for t in later)
    gated.gate.set()
    await asyncio.gather(first, *later)
    assert gated.writes == [1, 101]
    found = await gated.handling_of([f"w-{i}" for i in range(101)])
    assert found["w-0"] is Handling.AGENT  # routed twice: the least independent answer
    assert len(found) == 101
    await log.close()


async def test_a_failed_write_fails_its_routes_with_one_line_and_the_next_write_is_made(
    gated: GatedStore, clock: FakeClock
) -> None:
    log = handling_log(gated, clock)
    gated.fail = "store write failed: Catalog Error: boom!\n\nLINE 1: INSERT INTO handling"
    results = await asyncio.gather(
        *(log.record("refund", f"x-{i}", Handling.AGENT, Level.L3) for i in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreError) for r in results), results
    assert {str(r) for r in results} == {
        "store write failed: Catalog Error: boom! LINE 1: INSERT INTO handling"
    }
    assert await gated.handling_of([f"x-{i}" for i in range(5)]) == {}
    gated.fail = None
    await log.record("refund", "x-0", Handling.AGENT, Level.L3)
    assert await gated.handling_of(["x-0"]) == {"x-0": Handling.AGENT}
    await log.flush()  # nothing owed: the failed records were answered with their error
    await log.close()
    with pytest.raises(StoreError, match="shutting down"):
        await log.record("refund", "x-9", Handling.AGENT, Level.L3)
    await log.close()  # idempotent


async def test_a_record_that_cannot_be_stored_fails_only_its_own_route(
    gated: GatedStore, clock: FakeClock
) -> None:
    """One unstorable record (a lone surrogate, which the API refuses at its boundary; here
    it reaches the log directly) is dead-lettered; the routes written with it are answered,
    and its own is not (StoreError: the handler answers 503)."""
    log = handling_log(gated, clock)
    gated.gate = asyncio.Event()
    ids = ["ok-0", "bad-\ud800", "ok-1"]
    waiting = [
        asyncio.create_task(log.record("refund", eid, Handling.AGENT, Level.L3)) for eid in ids
    ]
    await asyncio.sleep(0)
    gated.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], StoreError)
    assert "could not be stored" in str(results[1])
    stored = await gated.handling_of(["ok-0", "ok-1"])
    assert stored == {"ok-0": Handling.AGENT, "ok-1": Handling.AGENT}
    (letter,) = await gated.dead_letters()
    assert letter["kind"] == "handling"
    await log.close()


async def test_a_route_that_goes_away_does_not_cancel_the_others_write(
    gated: GatedStore, clock: FakeClock
) -> None:
    log = handling_log(gated, clock)
    gated.gate = asyncio.Event()
    gone = asyncio.create_task(log.record("refund", "c-0", Handling.AGENT, Level.L3))
    stays = asyncio.create_task(log.record("refund", "c-1", Handling.AGENT, Level.L3))
    await gated.writing.wait()
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    gated.gate.set()
    await stays
    assert await gated.handling_of(["c-0", "c-1"]) == {
        "c-0": Handling.AGENT,
        "c-1": Handling.AGENT,
    }
    await log.close()


# -- kill -9 right after the answers ------------------------------------------------------------

KILL_POLICY = """\
task_types:
  refund_request:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
    autonomy:
      start: L3
      ceiling: L3
      mode: propose
      audit_rate: 0.1
      gates:
        L1: {agreement: 0.5, min_samples: 100000}
        L2: {agreement: 0.5, min_samples: 100000}
        L3: {agreement: 0.5, min_samples: 100000}
"""
ROOT = Path(__file__).resolve().parents[2]
N_ROUTED = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_event(i: int) -> dict[str, Any]:
    return {**crash_agent.event(i), "task_type": "refund_request"}


def echo(i: int) -> dict[str, Any]:
    """The outcome a host posts for an item the agent handled: the agent's own decision."""
    verdict = crash_agent.expected_verdict(i)
    decision = {
        "action": "deny" if verdict == "critical" else "approve",
        "amount": crash_agent.amount(i) + (1.0 if verdict == "disagree" else 0.0),
    }
    return {**crash_agent.outcome(i), "decision": decision}


@dataclass
class Process:
    """``shadow run`` in a subprocess on one DuckDB file (log in ``tmp``)."""

    tmp: Path
    port: int = field(default_factory=free_port)
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.tmp / f"server-{len(self.procs)}.log").read_text(errors="replace")[-4000:]

    async def start(self, session: aiohttp.ClientSession) -> None:
        policy = self.tmp / "policy.yaml"
        policy.write_text(KILL_POLICY, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env |= {"SHADOW_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONUNBUFFERED": "1"}
        with (self.tmp / f"server-{len(self.procs) + 1}.log").open("wb") as out:
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "shadow.cli", "run", "--config", str(policy)),
                    *("--db", str(self.tmp / "routes.duckdb"), "--port", str(self.port)),
                    *("--agent", "tests.shadow.crash_agent:agent"),
                    cwd=ROOT,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                )
            )

        async def ready() -> bool:
            if self.procs[-1].returncode is not None:
                raise AssertionError(f"sidecar exited; its log:\n{self.log()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.url}/readyz") as resp:
                    return resp.status == 200
            return False

        await wait_for(ready, "the sidecar to be ready", tries=600)

    async def kill(self) -> None:
        proc = self.procs[-1]
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[Process]:
    server = Process(tmp_path)
    try:
        yield server
    finally:
        for proc in server.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


@pytest.mark.slow  # two sidecar processes and a kill -9
async def test_kill_9_right_after_the_answers_loses_no_routing_record(process: Process) -> None:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), headers=ADMIN
    ) as session:
        await process.start(session)
        limit = asyncio.Semaphore(20)

        async def ask(i: int) -> str:
            url = f"{process.url}/v1/route/refund_request?event_id={crash_agent.event_id(i)}"
            async with limit, session.get(url) as resp:
                assert resp.status == 200, await resp.text()
                return str((await resp.json())["handled_by"])

        handled = await asyncio.gather(*(ask(i) for i in range(N_ROUTED)))
        await process.kill()  # the moment the last answer arrived
        blind = handled.count("blind")
        assert 0 < blind < N_ROUTED // 4
        assert blind + handled.count("agent") == N_ROUTED

        await process.start(session)
        for path, records in (
            ("events", [kill_event(i) for i in range(N_ROUTED)]),
            ("outcomes", [echo(i) for i in range(N_ROUTED)]),
        ):
            body = "".join(json.dumps(r) + "\n" for r in records)
            async with session.post(
                f"{process.url}/v1/{path}",
                data=body,
                headers={"Content-Type": "application/x-ndjson"},
            ) as resp:
                assert resp.status == 202, await resp.text()
        doc: dict[str, Any] = {}

        async def compared() -> bool:
            nonlocal doc
            async with session.get(f"{process.url}/v1/agreement") as resp:
                doc = (await resp.json())["task_types"]["refund_request"]
            accepted = sum(int(a["n"]) for a in doc["acceptance"].values())
            return int(doc["n"]) + accepted == N_ROUTED

        await wait_for(compared, "every item to be compared")
        # Every echo of an agent-handled item is acceptance; only the audit sample is evidence.
        assert doc["n"] == blind, doc
        assert doc["acceptance"]["agent"]["n"] == N_ROUTED - blind, doc
        await process.kill()
