from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shadow.errors import AutonomyError
from shadow.joiner import Joiner
from shadow.ladder import Ladder
from shadow.metrics import Metrics
from shadow.model import Level, Outcome, ShadowDecision, WorkEvent
from shadow.policy import Policy, parse_policy
from shadow.promotion import Move, ProposalRef
from shadow.store import Store
from tests.conftest import FakeClock, StoreFactory


def policy(mode: str) -> Policy:
    return parse_policy(
        f"""
task_types:
  refund:
    compare: {{fields: {{action: {{match: exact, critical: true}}}}}}
    autonomy:
      mode: {mode}
      ceiling: L3
      gates:
        L1: {{agreement: 0.90, min_samples: 50}}
        L2: {{agreement: 0.95, min_samples: 100}}
        L3: {{agreement: 0.97, min_samples: 200, max_critical: 0}}
  invoice: {{}}
"""
    )


async def feed(
    store: Store,
    clock: FakeClock,
    p: Policy,
    start: int,
    count: int,
    *,
    wrong_every: int = 0,
    version: str = "v1",
) -> None:
    ids = range(start, start + count)
    await store.put_events([WorkEvent(f"e{i}", "refund", {}) for i in ids], source="t", now=clock())
    await store.put_decisions(
        [
            (
                ShadowDecision(
                    f"e{i}",
                    version,
                    {"action": "deny" if wrong_every and i % wrong_every == 0 else "ok"},
                ),
                "refund",
            )
            for i in ids
        ],
        now=clock(),
    )
    await store.put_outcomes(
        [Outcome(f"e{i}", {"action": "ok"}) for i in ids], source="t", now=clock()
    )
    await Joiner(store, p, clock).join()


async def test_auto_promotion_is_applied_and_audited(store: Store, clock: FakeClock) -> None:
    p = policy("auto")
    registry = Ladder(store, p, clock)
    states = registry.states()
    assert {k: s.level for k, s in states.items()} == {"refund": Level.L0, "invoice": Level.L0}
    await feed(store, clock, p, 0, 300)
    levels = []
    for _ in range(4):
        await registry.evaluate()
        levels.append((registry.state("refund")).level)
    assert levels == [Level.L1, Level.L2, Level.L3, Level.L3]
    audit = [e for _, e in await store.audit_log(task_type="refund")]
    promotions = [e for e in reversed(audit) if e.action == "promote"]
    assert [(e.from_level, e.to_level) for e in promotions] == [
        (Level.L0, Level.L1),
        (Level.L1, Level.L2),
        (Level.L2, Level.L3),
    ]
    assert all(e.actor == "promoter" for e in promotions)
    assert promotions[0].evidence["n"] == 300
    assert promotions[0].policy_hash == p.task_types["refund"].hash


async def test_critical_miss_demotes_from_l3(store: Store, clock: FakeClock) -> None:
    p = policy("auto")
    registry = Ladder(store, p, clock)
    await feed(store, clock, p, 0, 300)
    for _ in range(3):
        await registry.evaluate()
    assert (registry.state("refund")).level is Level.L3
    await feed(store, clock, p, 300, 1, wrong_every=1)
    steps = await registry.evaluate()
    refund = next(s for s in steps if s.after.task_type == "refund")
    assert refund.move is Move.DEMOTE
    assert refund.after.level is Level.L2


async def test_propose_then_approve(store: Store, clock: FakeClock) -> None:
    p = policy("propose")
    registry = Ladder(store, p, clock)
    await feed(store, clock, p, 0, 300)
    await registry.evaluate()
    state = registry.state("refund")
    assert state.level is Level.L0
    assert state.proposal is not None
    assert state.proposal.to_level is Level.L1
    result = await registry.approve(
        "refund", ProposalRef(state.proposal.id), actor="ops/jane", reason="looks right"
    )
    assert result.applied
    assert result.step.after.level is Level.L1
    assert result.level is Level.L1
    # The ladder reacted in the same call: 300 agreeing comparisons also meet L2's gate.
    assert [s.move for s in result.then] == [Move.PROPOSE]
    entries = [e for _, e in await store.audit_log(task_type="refund", limit=2)]
    assert [(e.action, e.actor) for e in entries] == [
        ("propose", "promoter"),
        ("approve", "ops/jane"),
    ]
    assert "looks right" in entries[1].reason
    # A retry of the same approval changes nothing, though an L2 proposal is pending now.
    again = await registry.approve("refund", ProposalRef(state.proposal.id), actor="ops/jane")
    assert not again.applied
    assert again.level is Level.L1
    assert (registry.state("refund")).level is Level.L1
    assert len(await store.audit_log(task_type="refund")) == 3
    with pytest.raises(AutonomyError, match="not the pending proposal"):
        await registry.approve("refund", ProposalRef("p-000000000000"), actor="ops/jane")


async def test_concurrent_approvals_of_one_proposal_apply_it_once(
    store: Store, clock: FakeClock
) -> None:
    """Twenty approvals of the same proposal racing each other (and evaluations): the
    level goes up one step and the audit log has one approval."""
    p = policy("propose")
    registry = Ladder(store, p, clock)
    await feed(store, clock, p, 0, 300)
    await registry.evaluate()
    proposal = (registry.state("refund")).proposal
    assert proposal is not None

    async def approve() -> bool:
        return (await registry.approve("refund", ProposalRef(proposal.id), actor="ops")).applied

    async def evaluate() -> bool:
        await registry.evaluate()
        return False

    results = await asyncio.gather(*[approve() for _ in range(20)], *[evaluate() for _ in range(5)])
    assert sum(results) == 1
    assert (registry.state("refund")).level is Level.L1
    actions = [e.action for _, e in await store.audit_log(task_type="refund")]
    assert actions.count("approve") == 1


async def test_every_move_is_counted_and_logged(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    p = policy("propose")
    registry = CollectorRegistry()
    ladder = Ladder(store, p, clock, metrics=Metrics(registry, p))

    def count(move: str) -> float:
        value = registry.get_sample_value(
            "shadow_autonomy_changes_total", {"task_type": "refund", "move": move}
        )
        assert value is not None
        return value

    caplog.set_level(logging.INFO, logger="shadow.autonomy")
    await feed(store, clock, p, 0, 300)
    await ladder.evaluate()
    first = (ladder.state("refund")).proposal
    assert first is not None
    clock.advance(seconds=1)
    await ladder.reject("refund", ProposalRef(first.id), actor="ops/bob", reason="wait\nfor Q4")
    clock.advance(seconds=1)
    await ladder.reconsider("refund", actor="ops/bob", reason="Q4 came")
    second = (ladder.state("refund")).proposal
    assert second is not None
    assert second.id != first.id
    clock.advance(seconds=1)
    await ladder.approve("refund", ProposalRef(second.id), actor="ops/jane")
    clock.advance(seconds=1)
    await ladder.set_level("refund", Level.L3, actor="ops/jane", reason="pilot")
    clock.advance(seconds=1)
    await ladder.freeze(actor="ops/oncall", reason="incident 42")
    clock.advance(seconds=1)
    await ladder.unfreeze(actor="ops/oncall", reason="resolved")
    clock.advance(seconds=1)
    await feed(store, clock, p, 300, 300, wrong_every=1)  # every answer wrong now
    await ladder.set_level("refund", Level.L2, actor="ops/jane", reason="try L2")
    for move, times in [
        ("propose", 4),  # the first, after reconsider, L1 -> L2, and again after unfreeze
        ("reject", 1),
        ("reconsider", 1),
        ("approve", 1),
        ("manual_set", 2),
        ("demote", 1),
        ("freeze", 1),
        ("unfreeze", 1),
    ]:
        assert count(move) == times, move
    lines = [r.getMessage() for r in caplog.records if r.name == "shadow.autonomy"]
    for move in ("propose", "reject", "reconsider", "approve", "manual_set", "freeze"):
        assert any(f"move={move} " in line for line in lines), move
    reject_line = next(line for line in lines if "move=reject " in line)
    assert "actor=ops/bob" in reject_line
    assert f"proposal={first.id}" in reject_line
    assert 'reason="rejected' in reject_line
    assert all("\n" not in line for line in lines)
    demote = next(r for r in caplog.records if "move=demote " in r.getMessage())
    assert demote.levelno == logging.WARNING


async def test_manual_set_freeze_unfreeze(store: Store, clock: FakeClock) -> None:
    p = policy("auto")
    registry = Ladder(store, p, clock)
    with pytest.raises(AutonomyError, match="ceiling"):
        await registry.set_level("refund", Level.L4, actor="ops", reason="")
    with pytest.raises(AutonomyError, match="unknown task type"):
        await registry.set_level("nope", Level.L1, actor="ops", reason="")
    await registry.set_level("refund", Level.L2, actor="ops/bob", reason="pilot week")
    await registry.freeze(actor="ops/bob", reason="incident 42")
    assert registry.frozen
    assert {s.level for s in (registry.states()).values()} == {Level.L0}
    await feed(store, clock, p, 0, 300)
    await registry.evaluate()
    assert (registry.state("refund")).level is Level.L0
    steps = await registry.unfreeze(actor="ops/bob", reason="resolved")
    assert registry.agreement()["frozen"] is False
    # The ladder evaluates right after the unfreeze: the evidence earns L1 again at once.
    assert [s.move for s in steps if s.after.task_type == "refund"] == [Move.UNFREEZE, Move.PROMOTE]
    assert (registry.state("refund")).level is Level.L1
    actions = [e.action for _, e in await store.audit_log(task_type="refund")]
    assert actions[::-1] == ["manual_set", "freeze", "unfreeze", "promote"]


async def test_state_survives_reopen(store_factory: StoreFactory, clock: FakeClock) -> None:
    p = policy("propose")
    first = await store_factory("a.duckdb")
    await feed(first, clock, p, 0, 300)
    await Ladder(first, p, clock).evaluate()
    await first.close()
    again = await store_factory("a.duckdb")
    ladder = Ladder(again, p, clock)
    assert ladder.state("refund").proposal is None  # nothing read yet
    await ladder.load()
    state = ladder.state("refund")
    assert state.proposal is not None
    assert state.proposal.evidence.n == 300


class CountingStore(Store):
    """A real store that counts every operation it runs (each goes through ``_run``)."""

    calls = 0

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await super()._run(fn, *args, **kwargs)


async def test_routing_and_reads_never_touch_the_store(tmp_path: Path, clock: FakeClock) -> None:
    p = policy("auto")
    async with CountingStore(tmp_path / "spy.duckdb") as store:
        ladder = Ladder(store, p, clock)
        await ladder.load()
        await ladder.set_level("refund", Level.L3, actor="ops", reason="pilot")
        before = store.calls
        task = p.task_types["refund"]
        answers = [ladder.route("refund", f"e-{i}") for i in range(2000)]
        ladder.agreement()
        ladder.states()
        assert store.calls == before
        audited = [a for i, a in enumerate(answers) if task.audited(f"e-{i}")]
        assert audited
        assert all(a["handler"] == "human" and a["audit"] for a in audited)
        assert all(a["handled_by"] == "blind" for a in audited)
        assert {a["handled_by"] for a in answers if not a["audit"]} == {"agent"}
        assert {a["level"] for a in answers} == {"L3"}
        # Memory follows every write at once: a freeze routes everything to a human.
        await ladder.freeze(actor="ops", reason="incident")
        assert ladder.route("refund", "e-1") == {
            "handler": "human",
            "level": "L0",
            "audit": False,
            "approval_required": False,
            "suggestion": False,
            "handled_by": "blind",
        }
