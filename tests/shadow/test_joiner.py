from __future__ import annotations

import itertools
import random

import pytest

from shadow.diff import Differ
from shadow.joiner import Joiner, compare
from shadow.model import Outcome, ShadowDecision, Verdict, WorkEvent
from shadow.policy import Policy, parse_policy
from shadow.store import JoinRow, Store
from tests.conftest import FakeClock, StoreFactory

POLICY = parse_policy(
    """
task_types:
  refund:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
        note: {match: ignore}
"""
)


def event(i: int) -> WorkEvent:
    return WorkEvent(f"e{i}", "refund", {"amount": i})


def decision(i: int, action: str = "approve", version: str = "v1") -> ShadowDecision:
    return ShadowDecision(f"e{i}", version, {"action": action, "amount": float(i)})


def outcome(i: int, action: str = "approve", at: str | None = None) -> Outcome:
    return Outcome(f"e{i}", {"action": action, "amount": i + 0.001, "note": "x"}, decided_at=at)


async def deliver(store: Store, kind: str, i: int, clock: FakeClock, **kw: str) -> None:
    if kind == "event":
        await store.put_events([event(i)], source="test", now=clock())
    elif kind == "decision":
        await store.put_decisions([(decision(i, **kw), "refund")], now=clock())
    else:
        await store.put_outcomes([outcome(i, **kw)], source="test", now=clock())


def test_compare_is_pure_and_handles_agent_errors() -> None:
    row = JoinRow("refund", decision(1), outcome(1), "h")
    c = compare(row, Differ(POLICY.task_types["refund"].compare))
    assert c.verdict is Verdict.AGREE
    assert c.outcome_hash == "h"
    bad = JoinRow("refund", ShadowDecision.failed("e1", "v1", "HTTP 500"), outcome(1), "h")
    e = compare(bad, Differ(POLICY.task_types["refund"].compare))
    assert e.verdict is Verdict.AGENT_ERROR
    assert not e.critical_miss
    assert e.fields[0].reason == "HTTP 500"
    differ = Differ(POLICY.task_types["refund"].compare)
    wrong = compare(JoinRow("refund", decision(1, "deny"), outcome(1), "h"), differ)
    assert wrong.verdict is Verdict.DISAGREE
    assert wrong.critical_miss


@pytest.mark.parametrize("order", list(itertools.permutations(["event", "decision", "outcome"])))
async def test_any_arrival_order_yields_one_comparison(
    order: tuple[str, ...], store: Store, clock: FakeClock
) -> None:
    joiner = Joiner(store, POLICY, clock)
    made = 0
    for kind in order:
        for _ in range(2):  # every record delivered twice
            await deliver(store, kind, 1, clock)
            made += len((await joiner.join(["e1"])).comparisons)
    assert made == 1
    assert await store.count("comparisons") == 1
    evidence = await store.evidence()
    assert evidence["refund"]["v1"].n == 1
    assert evidence["refund"]["v1"].agree == 1


@pytest.mark.slow  # a long randomised stream
async def test_shuffled_duplicated_stream_counts_exactly(store: Store, clock: FakeClock) -> None:
    rng = random.Random(7)
    records = [(kind, i) for i in range(300) for kind in ("event", "decision", "outcome")]
    records = records * 3
    rng.shuffle(records)
    joiner = Joiner(store, POLICY, clock)
    for kind, i in records:
        action = "deny" if i % 10 == 0 and kind == "decision" else "approve"
        if kind == "decision":
            await deliver(store, kind, i, clock, action=action)
        else:
            await deliver(store, kind, i, clock)
    await joiner.join()
    ev = (await store.evidence())["refund"]["v1"]
    assert (ev.n, ev.agree, ev.critical) == (300, 270, 30)
    assert await store.count("comparisons") == 300
    assert await store.count("dead_letters") == 0


async def test_reversal_recompares_corrects_counts_and_audits(
    store: Store, clock: FakeClock
) -> None:
    joiner = Joiner(store, POLICY, clock)
    for kind in ("event", "decision"):
        await deliver(store, kind, 1, clock)
    await deliver(store, "outcome", 1, clock, action="approve", at="2026-11-20T10:00:00Z")
    assert (await joiner.join()).comparisons[0].verdict is Verdict.AGREE
    await deliver(store, "outcome", 1, clock, action="deny", at="2026-11-21T09:00:00Z")
    report = await joiner.join()
    assert [c.verdict for c in report.comparisons] == [Verdict.DISAGREE]
    assert [(r.before, r.after) for r in report.reversals] == [(Verdict.AGREE, Verdict.DISAGREE)]
    ev = (await store.evidence())["refund"]["v1"]
    assert (ev.n, ev.agree, ev.critical) == (1, 0, 1)
    audit = await store.audit_log()
    assert [e.action for _, e in audit] == ["outcome_reversal"]
    assert audit[0][1].evidence["before"] == "agree"
    # the older outcome arriving late changes nothing
    await deliver(store, "outcome", 1, clock, action="approve", at="2026-11-20T09:00:00Z")
    assert (await joiner.join()).comparisons == []


async def test_each_agent_version_gets_its_own_comparison(store: Store, clock: FakeClock) -> None:
    joiner = Joiner(store, POLICY, clock)
    await deliver(store, "event", 1, clock)
    await deliver(store, "outcome", 1, clock)
    await store.put_decisions(
        [(decision(1, version="v1"), "refund"), (decision(1, "deny", version="v2"), "refund")],
        now=clock(),
    )
    await joiner.join()
    ev = await store.evidence()
    assert ev["refund"]["v1"].agree == 1
    assert ev["refund"]["v2"].agree == 0


async def test_expired_joins_are_not_evidence(store: Store, clock: FakeClock) -> None:
    from datetime import timedelta

    joiner = Joiner(store, POLICY, clock)
    for i in range(3):
        await deliver(store, "event", i, clock)
        await deliver(store, "decision", i, clock)
    await deliver(store, "outcome", 0, clock)
    await joiner.join()
    clock.advance(hours=25)
    assert await joiner.expire(timedelta(hours=24)) == (2, 0)
    ev = (await store.evidence())["refund"]["v1"]
    assert (ev.n, ev.agree) == (1, 1)
    # a late outcome still completes the expired join
    await deliver(store, "outcome", 1, clock)
    report = await joiner.join()
    assert [c.event_id for c in report.comparisons] == ["e1"]
    assert report.reversals == []
    assert (await store.evidence())["refund"]["v1"].n == 2


async def test_join_survives_reopen(store_factory: StoreFactory, clock: FakeClock) -> None:
    first = await store_factory("j.duckdb")
    for i in range(5):
        for kind in ("event", "decision", "outcome"):
            await deliver(first, kind, i, clock)
    await first.close()
    again = await store_factory("j.duckdb")
    report = await Joiner(again, POLICY, clock).join()  # start-up sweep finishes the work
    assert len(report.comparisons) == 5
    assert (await Joiner(again, POLICY, clock).join()).comparisons == []


async def test_unknown_task_type_is_compared_strictly(store: Store, clock: FakeClock) -> None:
    policy: Policy = parse_policy("task_types:\n  other: {}\n")
    await store.put_events([WorkEvent("x1", "legacy", {})], source="t", now=clock())
    await store.put_decisions(
        [(ShadowDecision("x1", "v1", {"a": 1, "b": 2}), "legacy")], now=clock()
    )
    await store.put_outcomes([Outcome("x1", {"a": 1})], source="t", now=clock())
    report = await Joiner(store, policy, clock).join()
    assert report.comparisons[0].verdict is Verdict.DISAGREE


@pytest.mark.parametrize(("ready", "queries"), [(9, 3), (10, 4), (2, 1), (0, 1)])
async def test_join_works_through_batches_with_no_empty_query(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, ready: int, queries: int
) -> None:
    """More ready pairs than a batch are all compared in one call, in batches, and a last
    full batch does not cost one more query that finds nothing."""
    for i in range(ready):
        for kind in ("event", "decision", "outcome"):
            await deliver(store, kind, i, clock)
    asked: list[int] = []
    real = store.ready_pairs

    async def counted(event_ids: list[str] | None = None, *, limit: int = 10_000) -> list[JoinRow]:
        rows = await real(event_ids, limit=limit)
        asked.append(len(rows))
        return rows

    monkeypatch.setattr(store, "ready_pairs", counted)
    report = await Joiner(store, POLICY, clock, batch=3).join([f"e{i}" for i in range(ready)])
    assert sorted(c.event_id for c in report.comparisons) == sorted(f"e{i}" for i in range(ready))
    assert len(asked) == queries
    assert await store.count("comparisons") == ready
