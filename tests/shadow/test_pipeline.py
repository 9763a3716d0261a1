"""The Pipeline directly: a real Store (DuckDB file) and an in-process agent loaded by name
(``tests.shadow.test_pipeline:some_agent``) through the real AgentRunner."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pytest
from prometheus_client import CollectorRegistry

from shadow.agent import AgentRunner, CircuitBreaker, load_agent
from shadow.config import Settings
from shadow.joiner import Joiner
from shadow.ladder import Ladder
from shadow.metrics import Metrics
from shadow.model import Level, Outcome, ShadowDecision, WorkEvent
from shadow.pipeline import Pipeline
from shadow.policy import Policy, parse_policy
from shadow.stats import upper_bound
from shadow.store import DeadLetter, Store
from tests.conftest import FakeClock, StoreFactory, cells_holding, wait_for

AGENT = "tests.shadow.test_pipeline:some_agent"
VERSION = "py-agent@1"

POLICY = parse_policy(
    """
task_types:
  refund:
    redact: [payload.customer.email, payload.card]
    compare:
      fields:
        action: {match: exact, critical: true}
      unlisted: ignore
    autonomy:
      ceiling: L1
      mode: auto
      gates:
        L1: {agreement: 0.5, min_samples: 50}
  never:
    sample_rate: 0.0
"""
)


# -- the in-process agent ------------------------------------------------------------------------


@dataclass
class AgentState:
    """What ``some_agent`` saw; ``gate``, when set, blocks every answer until it opens."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    arrived: asyncio.Condition | None = None  # notified on every call


STATE = AgentState()


async def some_agent(request: dict[str, Any]) -> dict[str, Any]:
    """Answers ``payload.expect`` (default approve) as the action."""
    STATE.calls.append(request)
    if STATE.arrived is not None:
        async with STATE.arrived:
            STATE.arrived.notify_all()
    if STATE.gate is not None:
        await STATE.gate.wait()
    action = request["payload"].get("expect", "approve")
    return {"decision": {"action": action}, "agent_version": VERSION}


@pytest.fixture(autouse=True)
def agent_state() -> AgentState:
    STATE.calls.clear()
    STATE.gate = None
    STATE.arrived = None
    return STATE


def called_ids() -> list[str]:
    return sorted(str(c["event_id"]) for c in STATE.calls)


async def until_calls(count: int, *, within: float = 30.0) -> None:
    """Until the agent got ``count`` calls (a bound against hangs, not a timing assertion)."""
    assert STATE.arrived is not None
    async with asyncio.timeout(within), STATE.arrived:
        await STATE.arrived.wait_for(lambda: len(STATE.calls) >= count)


# -- pipelines -----------------------------------------------------------------------------------


@dataclass(eq=False)
class Running:
    pipeline: Pipeline
    runner: AgentRunner
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


PipelineFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def pipelines(clock: FakeClock, no_shadow_env: None) -> AsyncIterator[PipelineFactory]:
    """``await pipelines(store)`` starts a Pipeline with a fresh runner and metrics registry;
    every one is stopped (and its runner closed) after the test."""
    made: list[Running] = []

    async def start(
        store: Store, *, policy: Policy = POLICY, scan_every: float = 1.0, **overrides: Any
    ) -> Running:
        values: dict[str, Any] = {
            "db": store.path,
            "agent": AGENT,
            "agent_timeout": 30.0,
            "agent_concurrency": 4,
            "expire_interval": 3600.0,
            "config": None,
            **overrides,
        }
        settings = Settings(**values)
        runner = AgentRunner(
            load_agent(AGENT, timeout=settings.agent_timeout),
            concurrency=settings.agent_concurrency,
            retries=0,
            breaker=CircuitBreaker(failure_threshold=100),
            default_version=VERSION,
        )
        registry = CollectorRegistry()
        pipeline = Pipeline(
            settings=settings,
            policy=policy,
            store=store,
            agent=runner,
            metrics=Metrics(registry, policy),
            clock=clock,
            scan_every=scan_every,
        )
        running = Running(pipeline, runner, registry)
        made.append(running)
        await pipeline.start()
        return running

    yield start
    if STATE.gate is not None:
        STATE.gate.set()
    for running in reversed(made):
        await running.pipeline.stop()
        await running.runner.close()


def ev(event_id: str, task_type: str = "refund", **payload: Any) -> WorkEvent:
    return WorkEvent(event_id, task_type, payload)


def out(event_id: str, action: str = "approve", decided_at: str | None = None) -> Outcome:
    return Outcome(event_id, {"action": action}, decided_at=decided_at)


# -- sampling -------------------------------------------------------------------------------------


async def test_sample_rate_zero_never_calls_the_agent(
    store: Store, pipelines: PipelineFactory
) -> None:
    run = await pipelines(store)
    p = run.pipeline
    results = await p.intake.submit_events(
        [ev(f"n-{i}", "never") for i in range(20)] + [ev("r-1")], source="test"
    )
    assert [r.status for r in results] == ["stored"] * 21
    await p.drain()
    assert called_ids() == ["r-1"]  # only the sampled task type reached the agent
    assert await store.events_awaiting_agent() == []
    assert (await store.pending())["awaiting_agent"] == 0
    assert await store.count("events") == 21
    assert await store.count("decisions") == 1

    await p.intake.submit_outcomes([out(f"n-{i}") for i in range(20)] + [out("r-1")], source="test")
    await p.drain()
    assert await store.count("comparisons") == 1
    assert "never" not in await store.evidence()
    assert run.sample("shadow_agent_calls_total", task_type="never", result="ok") == 0
    assert (
        run.sample("shadow_events_total", task_type="never", source="test", result="stored") == 20
    )

    # The flag is stored with the event: a restart does not send them either.
    await p.stop()
    again = await pipelines(store)
    await again.pipeline.drain()
    assert called_ids() == ["r-1"]


# -- redaction -------------------------------------------------------------------------------------


async def test_redaction_happens_before_the_agent_and_before_storage(
    store: Store, pipelines: PipelineFactory
) -> None:
    run = await pipelines(store)
    p = run.pipeline
    secret = {"email": "jane@example.com", "tier": "gold"}
    await p.intake.submit_events(
        [
            ev("r-1", customer=secret, card="4111 1111 1111 1111", amount=3),
            ev("r-2", customer={"tier": "silver"}, amount=4),  # nothing to redact
            ev("r-3", customer="not an object", card=None),
        ],
        source="test",
    )
    # A conflicting re-delivery is dead-lettered: its raw copy must be redacted too.
    conflict = await p.intake.submit_events(
        [ev("r-1", customer=secret, card="4111 1111 1111 1111", amount=99)], source="test"
    )
    assert [r.status for r in conflict] == ["conflict"]
    # The same content with a different secret is the same redacted event: a duplicate.
    dup = await p.intake.submit_events(
        [ev("r-1", customer={"email": "x@y.z", "tier": "gold"}, card="5500", amount=3)],
        source="test",
    )
    assert [r.status for r in dup] == ["duplicate"]
    await p.drain()

    payloads = {c["event_id"]: c["payload"] for c in STATE.calls}
    assert payloads == {
        "r-1": {"customer": {"tier": "gold"}, "amount": 3},
        "r-2": {"customer": {"tier": "silver"}, "amount": 4},
        "r-3": {"customer": "not an object"},
    }
    assert all(c["shadow"] is True for c in STATE.calls)
    letters = await store.dead_letters()
    assert len(letters) == 1
    assert "jane@example.com" not in str(letters[0]["raw"])
    assert "4111" not in str(letters[0]["raw"])

    # Read the file itself, after the store is closed: nothing secret was ever written.
    await run.pipeline.stop()
    await store.close()
    with duckdb.connect(store.path, read_only=True) as con:
        stored = {
            eid: json.loads(payload)
            for eid, payload in con.execute("SELECT event_id, payload FROM events").fetchall()
        }
        everything = json.dumps(
            [
                con.execute(f"SELECT * FROM {t}").fetchall()
                for t in ("events", "decisions", "dead_letters")
            ],
            default=str,
        )
    assert stored == payloads
    assert "jane@example.com" not in everything
    assert "4111" not in everything


async def test_redaction_reaches_into_lists_before_the_agent_and_the_store(
    store: Store, pipelines: PipelineFactory
) -> None:
    run = await pipelines(store)
    p = run.pipeline
    secret = "jane@example.com"
    customers = [{"email": secret, "tier": "gold"}, [{"email": secret}, {"tier": "silver"}]]
    await p.intake.submit_events(
        [ev("l-1", customer=customers, card=[secret], amount=3)], source="test"
    )
    conflict = await p.intake.submit_events(
        [ev("l-1", customer=customers, amount=4)], source="test", origins=["topic[0]@7"]
    )
    assert [r.status for r in conflict] == ["conflict"]
    await p.drain()
    redacted = {"customer": [{"tier": "gold"}, [{}, {"tier": "silver"}]], "amount": 3}
    assert [c["payload"] for c in STATE.calls] == [redacted]
    (letter,) = await store.dead_letters()
    assert letter["location"] == "topic[0]@7"
    assert secret not in str(letter["raw"])
    assert json.loads(letter["raw"])["payload"]["customer"] == redacted["customer"]

    await p.stop()
    await store.close()
    rows, hits = cells_holding(store.path, secret)
    assert rows > 0
    assert hits == []


async def test_dead_letters_are_redacted_before_they_are_stored(
    store: Store, pipelines: PipelineFactory
) -> None:
    """Sources hand over what they read; the pipeline keeps only what holds no redacted
    field: a record that parses, redacted by its task type's paths (every task type's for an
    unknown one), and nothing of what does not parse (this policy redacts)."""
    run = await pipelines(store)
    p = run.pipeline
    assert p.intake.raw_prefix == 0
    secret = "4111-secret"
    long_pad = "x" * 5000  # longer than the stored raw limit: redacted before it is clipped
    record = {"task_type": "refund", "payload": {"card": secret, "pad": long_pad}}
    letters = [
        DeadLetter("file:a", "event", "event_id: required", json.dumps(record), None, "line 1"),
        DeadLetter("file:a", "unknown", "invalid JSON at column 3", f"{{x {secret}", None, "l2"),
        DeadLetter("file:a", "unknown", "line is not UTF-8 at byte 0", None, None, "line 3"),
    ]
    kept = await p.intake.dead_letter(letters)
    assert [k.location for k in kept] == ["line 1", "l2", "line 3"]
    assert kept[0].raw is not None
    assert json.loads(kept[0].raw) == {"task_type": "refund", "payload": {"pad": long_pad}}
    assert kept[1].raw is None
    assert kept[2].raw is None
    # An unknown task type: the event, with every task type's paths removed.
    rejected = await p.intake.submit_events(
        [ev("u-1", "nope", card=secret, customer=[{"email": secret}], n=1)],
        source="kafka:ev",
        origins=["ev[1]@4"],
    )
    assert [r.status for r in rejected] == ["rejected"]
    stored = {d["location"]: d for d in await store.dead_letters()}
    assert set(stored) == {"line 1", "l2", "line 3", "ev[1]@4"}
    assert stored["l2"]["raw"] is None
    assert json.loads(stored["ev[1]@4"]["raw"])["payload"] == {"customer": [{}], "n": 1}
    assert stored["ev[1]@4"]["event_id"] == "u-1"
    assert len(str(stored["line 1"]["raw"])) < len(long_pad) + 100  # clipped once redacted
    assert all(secret not in str(d) for d in stored.values())
    await p.stop()
    await store.close()
    assert cells_holding(store.path, secret)[1] == []


async def test_what_does_not_parse_keeps_a_prefix_by_the_setting(
    store_factory: StoreFactory, pipelines: PipelineFactory
) -> None:
    plain = parse_policy("task_types: {plain: {}}")
    letter = DeadLetter("file:a", "unknown", "invalid JSON", "y" * 1000, None, "line 1")
    cases = [
        (plain, {}, 256),  # nothing is redacted: a small prefix by default
        (POLICY, {}, 0),  # something is: nothing by default
        (POLICY, {"dead_letter_raw_prefix": 5}, 5),
        (plain, {"dead_letter_raw_prefix": 0}, 0),
    ]
    for i, (policy, settings, chars) in enumerate(cases):
        run = await pipelines(await store_factory(f"prefix-{i}.duckdb"), policy=policy, **settings)
        assert run.pipeline.intake.raw_prefix == chars
        (kept,) = await run.pipeline.intake.dead_letter([letter])
        if chars == 0:
            assert kept.raw is None
        else:
            assert kept.raw == f"{'y' * chars}…[{1000 - chars} more characters]"


# -- restart recovery ------------------------------------------------------------------------------


async def test_restart_resends_unanswered_events_and_compares_each_once(
    store: Store, pipelines: PipelineFactory
) -> None:
    STATE.gate = asyncio.Event()  # the first pipeline's agent never answers
    STATE.arrived = asyncio.Condition()
    first = await pipelines(store)
    ids = [f"r-{i}" for i in range(6)]
    await first.pipeline.intake.submit_events([ev(i) for i in ids], source="test")
    await first.pipeline.intake.submit_outcomes([out(i) for i in ids], source="test")
    await until_calls(4)  # agent_concurrency calls are blocked
    await first.pipeline.stop()  # a "crash": the blocked calls are abandoned
    await first.runner.close()
    assert (await store.pending())["awaiting_agent"] == 6
    assert await store.count("decisions") == 0
    assert await store.count("comparisons") == 0
    assert (
        first.sample(
            "shadow_comparisons_total", task_type="refund", agent_version=VERSION, verdict="agree"
        )
        == 0
    )

    STATE.gate = None
    STATE.calls.clear()
    second = await pipelines(store)
    await second.pipeline.drain()
    assert called_ids() == ids  # every unanswered event again, each once
    assert await store.count("decisions") == 6
    assert await store.count("comparisons") == 6
    labels = {"task_type": "refund", "agent_version": VERSION}
    assert second.sample("shadow_comparisons_total", **labels, verdict="agree") == 6
    assert second.sample("shadow_evidence_comparisons", **labels) == 6
    assert second.pipeline.comparisons == 6

    # A further restart finds nothing to do: no agent call, no comparison made twice.
    await second.pipeline.stop()
    STATE.calls.clear()
    third = await pipelines(store)
    await third.pipeline.drain()
    assert STATE.calls == []
    assert third.pipeline.comparisons == 0
    assert third.sample("shadow_comparisons_total", **labels, verdict="agree") == 0
    assert third.sample("shadow_evidence_comparisons", **labels) == 6  # from the store
    assert (await store.evidence())["refund"][VERSION].n == 6


async def test_an_in_process_agent_is_fed_in_batches_and_called_once_per_event(
    store: Store, pipelines: PipelineFactory
) -> None:
    """Batches smaller than the backlog, events arriving while a batch is with the agent:
    every event is decided once and compared once."""
    STATE.arrived = asyncio.Condition()
    running = await pipelines(store, batch_size=7)
    assert running.runner.batches
    ids = [f"b-{i:03d}" for i in range(50)]
    await running.pipeline.intake.submit_events([ev(i) for i in ids[:20]], source="test")
    await until_calls(1)
    for chunk in (ids[20:35], ids[35:]):
        await running.pipeline.intake.submit_events([ev(i) for i in chunk], source="test")
    await running.pipeline.intake.submit_outcomes([out(i) for i in ids], source="test")
    await running.pipeline.drain()
    assert called_ids() == ids
    assert await store.count("decisions") == 50
    assert await store.count("comparisons") == 50
    assert running.pipeline.comparisons == 50


class StoreReads:
    """Counts the pipeline's reads of the agent's work queue from the store (a spy around
    the real method; the reads still happen)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = store.events_awaiting_agent

        async def counted(*, limit: int = 1000) -> list[WorkEvent]:
            self.count += 1
            return await real(limit=limit)

        monkeypatch.setattr(store, "events_awaiting_agent", counted)


async def test_just_stored_events_reach_the_agent_without_a_store_read(
    store: Store, pipelines: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events submit_events stored go to the agent from memory: with the periodic store
    read pushed out of the test, the store is read once (at start) for ten submissions."""
    reads = StoreReads(store, monkeypatch)
    running = await pipelines(store, batch_size=50, scan_every=3600.0)
    ids = [f"m-{i:03d}" for i in range(50)]
    for lo in range(0, 50, 5):
        await running.pipeline.intake.submit_events(
            [ev(i) for i in ids[lo : lo + 5]], source="test"
        )
        await running.pipeline.intake.submit_outcomes(
            [out(i) for i in ids[lo : lo + 5]], source="test"
        )
        await running.pipeline.drain()
    assert called_ids() == ids
    assert reads.count == 1
    assert await store.count("comparisons") == 50


async def test_events_beyond_the_memory_feed_are_read_from_the_store_once_each(
    store: Store, pipelines: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More stored at once than the memory feed holds (two batches), from several
    submitters while the agent is busy: the overflow is read from the store at once (not
    after the periodic read, pushed out here), and every event reaches the agent exactly
    once (a second call would store a conflicting answer: none is)."""
    reads = StoreReads(store, monkeypatch)
    STATE.arrived = asyncio.Condition()
    STATE.gate = asyncio.Event()
    running = await pipelines(store, batch_size=4, scan_every=3600.0)
    ids = [f"o-{i:03d}" for i in range(120)]
    await running.pipeline.intake.submit_events([ev(ids[0])], source="test")
    await until_calls(1)  # the agent holds a batch; the rest piles up

    async def submitter(part: list[str]) -> None:
        for lo in range(0, len(part), 7):
            await running.pipeline.intake.submit_events(
                [ev(i) for i in part[lo : lo + 7]], source="t"
            )

    await asyncio.gather(*(submitter(ids[1 + k :: 4]) for k in range(4)))
    STATE.gate.set()
    await running.pipeline.intake.submit_outcomes([out(i) for i in ids], source="test")
    async with asyncio.timeout(60):
        await running.pipeline.drain()
    assert called_ids() == ids
    assert await store.count("decisions") == 120
    assert await store.count("comparisons") == 120
    assert await store.count("dead_letters") == 0
    assert reads.count > 1  # the overflow was read from the store


async def test_outcomes_of_events_with_the_agent_wait_for_the_writer_join(
    store: Store, pipelines: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outcome whose event is still with the agent or queued for it in memory costs no
    join query that could only find nothing; the join after the decision is stored
    compares it."""
    STATE.arrived = asyncio.Condition()
    STATE.gate = asyncio.Event()
    running = await pipelines(store, batch_size=5, scan_every=3600.0)
    asked: list[str] = []
    real = store.ready_pairs

    async def spied(event_ids: list[str] | None = None, *, limit: int = 10_000) -> list[Any]:
        asked.extend(event_ids or ["<all>"])
        return await real(event_ids, limit=limit)

    monkeypatch.setattr(store, "ready_pairs", spied)
    await running.pipeline.intake.submit_events([ev("w-first")], source="test")
    await until_calls(1)  # the feeder has read the store once and holds one batch
    ids = [f"w-{i}" for i in range(8)]  # they wait in memory for that batch to finish
    await running.pipeline.intake.submit_events([ev(i) for i in ids], source="test")
    await running.pipeline.intake.submit_outcomes(
        [out(i) for i in [*ids, "w-first"]], source="test"
    )
    await asyncio.sleep(0.05)  # time for a join the outcomes might have scheduled
    assert asked == []
    STATE.gate.set()
    await running.pipeline.drain()
    assert sorted(asked) == [*ids, "w-first"]  # once each, after its decision
    assert await store.count("comparisons") == 9
    assert running.pipeline.comparisons == 9


async def test_pending_joins_are_counted_on_refresh_not_after_every_batch(
    store: Store, pipelines: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending-join counts scan whole tables: batches of comparisons re-evaluate the
    ladder without them; a refresh (what /metrics does on every scrape) counts them."""
    running = await pipelines(store, batch_size=5)
    counted: list[int] = []
    real = store.pending

    async def spied() -> dict[str, int]:
        counted.append(1)
        return await real()

    monkeypatch.setattr(store, "pending", spied)
    ids = [f"p-{i}" for i in range(20)]
    for lo in range(0, 20, 5):
        await running.pipeline.intake.submit_events([ev(i) for i in ids[lo : lo + 5]], source="t")
        await running.pipeline.drain()
    await running.pipeline.intake.submit_outcomes([out(i) for i in ids[:15]], source="t")
    await running.pipeline.drain()
    assert running.pipeline.comparisons == 15
    assert counted == []
    await running.pipeline.scrape()
    assert counted == [1]
    assert running.sample("shadow_pending_joins", waiting_for="awaiting_outcome") == 5


async def test_start_finishes_joins_a_crash_left_behind(
    store: Store, pipelines: PipelineFactory, clock: FakeClock
) -> None:
    """Decisions and outcomes stored, comparisons not yet: ``start`` completes the joins."""
    ids = [f"r-{i}" for i in range(5)]
    await store.put_events([ev(i) for i in ids], source="test", now=clock())
    await store.put_decisions(
        [(ShadowDecision(i, VERSION, {"action": "approve"}), "refund") for i in ids], now=clock()
    )
    await store.put_outcomes(
        [out(i, "approve" if i != "r-4" else "deny") for i in ids], source="test", now=clock()
    )
    run = await pipelines(store)  # start() itself sweeps the store
    assert await store.count("comparisons") == 5
    await run.pipeline.drain()
    assert STATE.calls == []
    labels = {"task_type": "refund", "agent_version": VERSION}
    assert run.sample("shadow_comparisons_total", **labels, verdict="agree") == 4
    assert run.sample("shadow_comparisons_total", **labels, verdict="disagree") == 1
    assert run.sample("shadow_critical_misses_total", **labels) == 1
    assert run.sample("shadow_evidence_critical_misses", **labels) == 1


async def test_start_applies_a_demotion_the_crash_interrupted(
    store: Store, pipelines: PipelineFactory, clock: FakeClock
) -> None:
    """Comparisons were written, then the process died before the promoter looked at them.
    Demotion is always automatic: the restarted sidecar must not keep publishing L1."""
    registry = Ladder(store, POLICY, clock)
    await registry.set_level("refund", Level.L1, actor="ops/jane", reason="pilot")
    ids = [f"r-{i}" for i in range(20)]
    await store.put_events([ev(i) for i in ids], source="test", now=clock())
    await store.put_decisions(
        [(ShadowDecision(i, VERSION, {"action": "deny"}), "refund") for i in ids], now=clock()
    )
    await store.put_outcomes([out(i, "approve") for i in ids], source="test", now=clock())
    report = await Joiner(store, POLICY, clock).join()  # ... and then the crash
    assert len(report.comparisons) == 20
    assert upper_bound(0, 20, POLICY.task_types["refund"].autonomy.alpha) < 0.5

    run = await pipelines(store)
    await run.pipeline.drain()
    assert run.pipeline.ladder.state("refund").level == Level.L0
    await registry.load()  # another Ladder on the same store reads the demotion back
    assert registry.state("refund").level == Level.L0
    assert run.sample("shadow_autonomy_level", task_type="refund") == 0


# -- evidence epochs ------------------------------------------------------------------------------


def with_amount_rule(extra: str = "") -> Policy:
    """POLICY's refund, but the amount must match too (new compare rules)."""
    return parse_policy(
        f"""
task_types:
  refund:
    compare:
      fields:
        action: {{match: exact, critical: true}}
        amount: {{match: number, abs: 0.01}}
      unlisted: ignore
    autonomy:
      ceiling: L1
      mode: auto
      gates:
        L1: {{agreement: 0.5, min_samples: {extra or 50}}}
"""
    )


async def test_changed_compare_rules_start_an_epoch_that_rescores_the_stored_evidence(
    store: Store, pipelines: PipelineFactory, clock: FakeClock
) -> None:
    ids = [f"r-{i}" for i in range(20)]
    await store.put_events([ev(i) for i in ids], source="test", now=clock())
    await store.put_decisions(
        [
            (ShadowDecision(i, VERSION, {"action": "approve", "amount": 10.0}), "refund")
            for i in ids
        ],
        now=clock(),
    )
    await store.put_outcomes(
        [
            Outcome(i, {"action": "approve", "amount": 10.5 if n < 15 else 10.0})
            for n, i in enumerate(ids)
        ],
        source="test",
        now=clock(),
    )
    first = await pipelines(store)  # amounts ignored: all agree
    await first.pipeline.drain()
    assert (await store.evidence())["refund"][VERSION].agree == 20
    await first.pipeline.stop()
    epochs = [
        e for _, e in await store.audit_log(task_type="refund") if e.action == "evidence_epoch"
    ]
    assert epochs == []

    stricter = with_amount_rule()
    second = await pipelines(store, policy=stricter)
    ev_now = (await store.evidence())["refund"][VERSION]
    assert (ev_now.n, ev_now.agree) == (20, 5)  # nothing lost, nothing mixed
    assert second.pipeline.ladder.evidence["refund"][VERSION].agree == 5
    epochs = [
        e for _, e in await store.audit_log(task_type="refund") if e.action == "evidence_epoch"
    ]
    assert len(epochs) == 1
    entry = epochs[0]
    assert entry.evidence["epoch"] == 2
    assert (entry.evidence["rescored"], entry.evidence["verdicts_changed"]) == (20, 15)
    assert entry.evidence["old_compare_hash"] == POLICY.task_types["refund"].compare_hash
    assert entry.evidence["new_compare_hash"] == stricter.task_types["refund"].compare_hash
    assert entry.evidence["old_policy_hash"] == POLICY.hash
    assert entry.evidence["new_policy_hash"] == entry.policy_hash == stricter.hash
    assert POLICY.hash != stricter.hash
    # No outcome changed: these are not reversals.
    assert [
        e for _, e in await store.audit_log(task_type="refund") if e.action == "outcome_reversal"
    ] == []
    await second.pipeline.stop()

    # The same rules again, or other gates with the same rules: no new epoch.
    for again in (stricter, with_amount_rule("60")):
        run = await pipelines(store, policy=again)
        await run.pipeline.stop()
    epochs = [
        e for _, e in await store.audit_log(task_type="refund") if e.action == "evidence_epoch"
    ]
    assert len(epochs) == 1
    # Back to the old rules: epoch 3, every verdict back.
    back = await pipelines(store)
    assert (await store.evidence())["refund"][VERSION].agree == 20
    await back.pipeline.stop()
    epochs = [
        e for _, e in await store.audit_log(task_type="refund") if e.action == "evidence_epoch"
    ]
    assert [e.evidence["epoch"] for e in epochs] == [3, 2]


# -- outcome reversal ------------------------------------------------------------------------------


async def test_outcome_reversal_recompares_and_is_counted(
    store: Store, pipelines: PipelineFactory
) -> None:
    run = await pipelines(store)
    p = run.pipeline
    labels = {"task_type": "refund", "agent_version": VERSION}
    await p.intake.submit_events([ev("r-1", expect="approve")], source="test")
    first = await p.intake.submit_outcomes(
        [out("r-1", "approve", "2026-11-20T10:07:00Z")], source="test"
    )
    assert [r.status for r in first] == ["stored"]
    await p.drain()
    assert run.sample("shadow_comparisons_total", **labels, verdict="agree") == 1
    assert run.sample("shadow_evidence_agreements", **labels) == 1

    # The human changes their mind later: re-compared, now a (critical) disagreement.
    later = await p.intake.submit_outcomes(
        [out("r-1", "deny", "2026-11-21T09:00:00Z")], source="test"
    )
    assert [r.status for r in later] == ["reversal"]
    await p.drain()
    assert run.sample("shadow_comparisons_total", **labels, verdict="agree") == 1
    assert run.sample("shadow_comparisons_total", **labels, verdict="disagree") == 1
    assert run.sample("shadow_outcome_reversals_total", task_type="refund") == 1
    assert run.sample("shadow_evidence_comparisons", **labels) == 1
    assert run.sample("shadow_evidence_agreements", **labels) == 0
    assert run.sample("shadow_evidence_critical_misses", **labels) == 1
    assert await store.count("comparisons") == 1
    ev_ = (await store.evidence())["refund"][VERSION]
    assert (ev_.n, ev_.agree, ev_.critical) == (1, 0, 1)
    audit = [e for _, e in await store.audit_log(task_type="refund")]
    assert [e.action for e in audit if e.action == "outcome_reversal"] == ["outcome_reversal"]

    # An older revision arriving late is history only; a re-delivery is a duplicate.
    older = await p.intake.submit_outcomes(
        [out("r-1", "escalate", "2026-11-19T00:00:00Z")], source="test"
    )
    again = await p.intake.submit_outcomes(
        [out("r-1", "deny", "2026-11-21T09:00:00Z")], source="test"
    )
    assert [r.status for r in older + again] == ["superseded", "duplicate"]
    await p.drain()
    assert run.sample("shadow_comparisons_total", **labels, verdict="disagree") == 1
    assert run.sample("shadow_outcome_reversals_total", task_type="refund") == 1
    assert run.sample("shadow_outcomes_total", source="test", result="superseded") == 1
    assert run.sample("shadow_outcomes_total", source="test", result="duplicate") == 1
    assert len(STATE.calls) == 1  # the agent is never asked again


# -- retention -------------------------------------------------------------------------------------


async def test_the_expiry_loop_applies_retention_and_counts_what_it_deleted(
    store: Store, pipelines: PipelineFactory, clock: FakeClock
) -> None:
    """With ``retention``, each expiry run also deletes the closed cases older than it (the
    rules: tests/shadow/test_store_retention.py); comparisons and evidence stay."""
    day = 86_400.0
    running = await pipelines(store, join_ttl=day, retention=2 * day, expire_interval=0.02)
    p = running.pipeline
    await p.intake.submit_events([ev(f"r-{i}") for i in range(6)], source="t")
    await p.drain()
    await p.intake.submit_outcomes([out(f"r-{i}") for i in range(4)], source="t")  # two never come
    await p.drain()
    evidence = await store.evidence()
    assert await store.count("comparisons") == 4

    clock.advance(days=1, hours=1)  # the TTL expires the two unanswered joins

    async def expired() -> bool:
        return await store.count("comparisons") == 6

    await wait_for(expired, "the two unanswered joins to expire")
    assert running.sample("shadow_purged_rows_total", table="events") == 0

    clock.advance(days=2)  # now every case is closed and older than the retention

    async def purged() -> bool:
        return running.sample("shadow_purged_rows_total", table="events") == 6

    await wait_for(purged, "retention to delete the six cases")
    assert running.sample("shadow_purged_rows_total", table="outcomes") == 4
    assert running.sample("shadow_purged_rows_total", table="decisions") == 6
    assert running.sample("shadow_purged_rows_total", table="dead_letters") == 0
    assert await store.count("events") == 0
    assert await store.count("comparisons") == 6
    assert (await store.evidence())["refund"][VERSION] == evidence["refund"][VERSION]


async def test_without_retention_nothing_is_deleted(
    store: Store, pipelines: PipelineFactory, clock: FakeClock
) -> None:
    running = await pipelines(store, join_ttl=60.0, expire_interval=3600.0)
    await running.pipeline.intake.submit_events([ev("k-1")], source="t")
    await running.pipeline.intake.submit_outcomes([out("k-1")], source="t")
    await running.pipeline.drain()
    clock.advance(days=400)
    await running.pipeline.purge()
    assert await store.count("events") == 1
    assert running.sample("shadow_purged_rows_total", table="events") == 0
