from __future__ import annotations

import pytest

from shadow.autonomy import AutonomyRegistry
from shadow.errors import AutonomyError
from shadow.joiner import Joiner
from shadow.model import Level, Outcome, ShadowDecision, WorkEvent
from shadow.policy import Policy, parse_policy
from shadow.promotion import Move
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
    registry = AutonomyRegistry(store, p, clock)
    states = await registry.states()
    assert {k: s.level for k, s in states.items()} == {"refund": Level.L0, "invoice": Level.L0}
    await feed(store, clock, p, 0, 300)
    levels = []
    for _ in range(4):
        await registry.evaluate()
        levels.append((await registry.state("refund")).level)
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
    registry = AutonomyRegistry(store, p, clock)
    await feed(store, clock, p, 0, 300)
    for _ in range(3):
        await registry.evaluate()
    assert (await registry.state("refund")).level is Level.L3
    await feed(store, clock, p, 300, 1, wrong_every=1)
    steps = await registry.evaluate()
    refund = next(s for s in steps if s.after.task_type == "refund")
    assert refund.move is Move.DEMOTE
    assert refund.after.level is Level.L2


async def test_propose_then_approve(store: Store, clock: FakeClock) -> None:
    p = policy("propose")
    registry = AutonomyRegistry(store, p, clock)
    await feed(store, clock, p, 0, 300)
    await registry.evaluate()
    state = await registry.state("refund")
    assert state.level is Level.L0
    assert state.proposal is not None
    assert state.proposal.to_level is Level.L1
    step = await registry.approve("refund", actor="ops/jane")
    assert step.after.level is Level.L1
    last = (await store.audit_log(task_type="refund", limit=1))[0][1]
    assert (last.action, last.actor) == ("approve", "ops/jane")
    with pytest.raises(AutonomyError, match="no pending proposal"):
        await registry.approve("refund", actor="ops/jane")


async def test_manual_set_freeze_unfreeze(store: Store, clock: FakeClock) -> None:
    p = policy("auto")
    registry = AutonomyRegistry(store, p, clock)
    with pytest.raises(AutonomyError, match="ceiling"):
        await registry.set_level("refund", Level.L4, actor="ops", reason="")
    with pytest.raises(AutonomyError, match="unknown task type"):
        await registry.set_level("nope", Level.L1, actor="ops", reason="")
    await registry.set_level("refund", Level.L2, actor="ops/bob", reason="pilot week")
    await registry.freeze(actor="ops/bob", reason="incident 42")
    assert await registry.is_frozen()
    assert {s.level for s in (await registry.states()).values()} == {Level.L0}
    await feed(store, clock, p, 0, 300)
    await registry.evaluate()
    assert (await registry.state("refund")).level is Level.L0
    await registry.unfreeze(actor="ops/bob", reason="resolved")
    assert not await registry.is_frozen()
    await registry.evaluate()
    assert (await registry.state("refund")).level is Level.L1
    actions = [e.action for _, e in await store.audit_log(task_type="refund")]
    assert actions[::-1] == ["manual_set", "freeze", "unfreeze", "promote"]


async def test_state_survives_reopen(store_factory: StoreFactory, clock: FakeClock) -> None:
    p = policy("propose")
    first = await store_factory("a.duckdb")
    await feed(first, clock, p, 0, 300)
    await AutonomyRegistry(first, p, clock).evaluate()
    await first.close()
    again = await store_factory("a.duckdb")
    state = await AutonomyRegistry(again, p, clock).state("refund")
    assert state.proposal is not None
    assert state.proposal.evidence.n == 300
