"""The ``handling`` table (shadow.store.handling): the least independent routing answer of
an item wins whatever the order the answers arrive in, it relabels comparisons already made,
and the outbox marks never hide an answer that replaced a published one."""

from __future__ import annotations

import itertools

from shadow.model import Comparison, Handling, Level, Verdict
from shadow.store import Routed, Store
from tests.conftest import FakeClock


def routed(eid: str, h: Handling, clock: FakeClock) -> Routed:
    return Routed(eid, "refund", h, Level.L3, clock())


async def test_the_least_independent_answer_wins_in_any_order(
    store: Store, clock: FakeClock
) -> None:
    for n, order in enumerate(itertools.permutations(Handling)):
        eid = f"e-{n}"
        for h in order:  # one answer per call: arrival order matters only for the bug
            await store.put_handling([routed(eid, h, clock)])
        assert await store.handling_of([eid]) == {eid: Handling.AGENT}
    # Within one batch too.
    await store.put_handling([routed("b", h, clock) for h in (Handling.ASSISTED, Handling.BLIND)])
    assert await store.handling_of(["b"]) == {"b": Handling.ASSISTED}


async def test_a_record_relabels_comparisons_already_made_and_later_ones(
    store: Store, clock: FakeClock
) -> None:
    made = [Comparison(f"c-{i}", "refund", "v1", Verdict.AGREE) for i in range(3)]
    await store.put_comparisons(made[:2], now=clock())
    assert (await store.evidence())["refund"]["v1"].n == 2
    assert await store.put_handling([routed("c-0", Handling.AGENT, clock)]) == 1
    assert (await store.evidence())["refund"]["v1"].n == 1
    # A comparison arriving after the record (folded from a replica, labelled blind there)
    # takes the record's label.
    await store.put_handling([routed("c-2", Handling.ASSISTED, clock)])
    await store.put_comparisons([made[2]], now=clock(), published=True)
    assert (await store.evidence())["refund"]["v1"].n == 1
    assert await store.acceptance() == [
        ("refund", "v1", "agent", 1, 1),
        ("refund", "v1", "assisted", 1, 1),
    ]


async def test_the_outbox_sends_an_answer_that_replaced_a_published_one(
    store: Store, clock: FakeClock
) -> None:
    await store.put_handling([routed("o", Handling.BLIND, clock)])
    first = await store.unpublished_handling()
    assert [r.handled_by for r in first] == [Handling.BLIND]
    await store.put_handling([routed("o", Handling.AGENT, clock)])  # before the mark
    await store.mark_handling_published(first, now=clock())
    again = await store.unpublished_handling()
    assert [r.handled_by for r in again] == [Handling.AGENT]
    await store.mark_handling_published(again, now=clock())
    assert await store.unpublished_handling() == []
    # Folded from the topic: marked published at once, never sent back.
    await store.put_handling([routed("p", Handling.AGENT, clock)], published=True)
    assert await store.unpublished_handling() == []
