"""Tests for the autonomy outbox in shadow.store.outbox (schema v7), against a real DuckDB
file: every ladder change this sidecar decides is queued with its audit id in the
transaction that applies it, in order; a replica's followed steps are not queued, and its
place in the promoter's changes is kept with them."""

from __future__ import annotations

from pathlib import Path

from shadow import moves, promotion
from shadow.model import Evidence, Level
from shadow.promotion import LadderState, Move, Step
from shadow.schema import SCHEMA_VERSION
from shadow.store import Store
from tests.conftest import FakeClock
from tests.shadow.test_store import AGENT, TASK, _task, sql, store_file_at

INVOICE = "invoice_match"


async def test_every_change_is_queued_with_its_audit_id_in_order(
    store: Store, clock: FakeClock
) -> None:
    refund = _task(TASK)
    strong = {AGENT: Evidence(TASK, AGENT, n=200, agree=199)}
    l0 = LadderState(TASK, Level.L0, AGENT)
    l1 = moves.manual_set(
        l0,
        Level.L1,
        strong,
        AGENT,
        refund,
        frozen=False,
        now=clock.advance(seconds=1),
        reason="pilot",
    )
    l2 = moves.manual_set(
        l1.after,
        Level.L2,
        strong,
        AGENT,
        refund,
        frozen=False,
        now=clock.advance(seconds=1),
        reason="pilot, week 2",
    )
    # Two changes of one task type in one transaction, then one more in the next.
    await store.apply_steps([l1, l2], actor="ops/jane")
    freeze = moves.freeze(
        l2.after, strong, AGENT, refund, now=clock.advance(seconds=1), reason="incident 7"
    )
    await store.apply_steps([freeze], actor="ops/oncall", frozen=True)

    audit = sorted(await store.audit_log(), key=lambda pair: pair[0])
    queued = await store.unpublished_changes()
    assert [audit_id for audit_id, _ in queued] == [audit_id for audit_id, _ in audit]
    records = [record for _, record in queued]
    assert [(r["action"], r["from_level"], r["to_level"], r["level"]) for r in records] == [
        ("manual_set", "L0", "L1", "L1"),
        ("manual_set", "L1", "L2", "L2"),
        ("freeze", "L2", "L0", "L0"),
    ]
    assert [r["audit_id"] for r in records] == [audit_id for audit_id, _ in queued]
    # The freeze flag in force after each change's transaction.
    assert [r["frozen"] for r in records] == [False, False, True]
    assert records[1]["reason"] == "manual_set by ops/jane: pilot, week 2"
    assert records[2]["actor"] == "ops/oncall"
    assert records[0]["updated_at"] == l1.after.updated_at.isoformat()  # type: ignore[union-attr]

    # Marked one at a time, as the publisher does: the rest stays queued, in order.
    first = queued[0][0]
    assert await store.latest_changes() == {TASK: None}  # none published yet
    await store.mark_changes_published([first], now=clock())
    assert await store.latest_changes() == {TASK: queued[0]}
    assert [a for a, _ in await store.unpublished_changes()] == [a for a, _ in queued[1:]]
    assert [a for a, _ in await store.unpublished_changes(limit=1)] == [queued[1][0]]
    await store.mark_changes_published([a for a, _ in queued[1:]], now=clock())
    assert await store.unpublished_changes() == []
    assert await store.count("autonomy_outbox") == 3  # kept: the latest is sent again
    assert await store.latest_changes() == {TASK: queued[2]}


async def test_followed_steps_are_not_queued_and_the_place_is_kept_with_them(
    store: Store, clock: FakeClock
) -> None:
    before = LadderState(INVOICE, Level.L0)
    after = LadderState(INVOICE, Level.L2, AGENT, None, clock.advance(seconds=1))
    snap = promotion.snapshot(None, _task(INVOICE), AGENT)
    follow = Step(Move.FOLLOW, before, after, "followed from aut[0]@3", snap)
    assert await store.followed_audit_ids() == {}
    await store.apply_steps([follow], actor="promoter (autonomy topic)", followed={INVOICE: 41})
    assert (await store.ladder_states())[INVOICE].level is Level.L2
    assert len(await store.audit_log()) == 1
    assert await store.unpublished_changes() == []
    assert await store.followed_audit_ids() == {INVOICE: 41}
    later = Step(
        Move.FOLLOW,
        after,
        LadderState(INVOICE, Level.L1, AGENT, None, clock.advance(seconds=1)),
        "followed from aut[0]@4",
        snap,
    )
    await store.apply_steps([later], actor="promoter (autonomy topic)", followed={INVOICE: 45})
    assert await store.followed_audit_ids() == {INVOICE: 45}


async def test_schema_v7_adds_the_outbox_to_a_v5_store(tmp_path: Path) -> None:
    """A store at schema v5 keeps its ladder and audit log; its outbox starts empty (the
    publisher then sends a snapshot of each task type's state)."""
    path = tmp_path / "v5.duckdb"
    store_file_at(
        path, 5, ("INSERT INTO autonomy VALUES ('refund_request', 2, 'a@1', NULL, now())", [])
    )
    async with Store(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION >= 7
        assert (await store.ladder_states())[TASK].level is Level.L2
        assert await store.unpublished_changes() == []
        assert await store.latest_changes() == {}
        assert await store.followed_audit_ids() == {}
        assert sql(store, "SELECT count(*) FROM autonomy_followed") == [(0,)]
