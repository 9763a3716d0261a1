"""The ``handling`` table (shadow.store.handling): the least independent routing answer of
an item wins whatever the order the answers arrive in, it relabels comparisons already made,
the outbox marks never hide an answer that replaced a published one, and a record made after
the item's outcome arrived (or its comparison was made) changes nothing."""

from __future__ import annotations

import itertools

from shadow.model import Comparison, Handling, Level, Outcome, Verdict
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


# -- a record counts only when made before the item's outcome arrived ---------------------------


async def blind_n(store: Store) -> int:
    found = (await store.evidence()).get("refund", {}).get("v1")
    return 0 if found is None else found.n


async def decided(store: Store, clock: FakeClock, eid: str) -> None:
    """The item's outcome arrives now, and a blind comparison is made for it."""
    await store.put_outcomes([Outcome(eid, {"action": "approve"})], source="t", now=clock())
    await store.put_comparisons([Comparison(eid, "refund", "v1", Verdict.AGREE)], now=clock())


async def test_a_record_made_after_the_outcome_arrived_changes_nothing(
    store: Store, clock: FakeClock
) -> None:
    await decided(store, clock, "late")
    clock.advance(seconds=1)
    for h in Handling:
        assert await store.put_handling([routed("late", h, clock)]) == 0
    assert await store.handling_of(["late"]) == {}
    assert await blind_n(store) == 1
    assert await store.acceptance() == []
    assert await store.unpublished_handling() == []  # nothing to publish either
    # An outcome without a comparison (its event or decision not here yet) is enough.
    await store.put_outcomes([Outcome("o", {"action": "approve"})], source="t", now=clock())
    clock.advance(seconds=1)
    await store.put_handling([routed("o", Handling.AGENT, clock)])
    assert await store.handling_of(["o"]) == {}


async def test_a_record_made_before_the_outcome_counts_even_when_written_after_it(
    store: Store, clock: FakeClock
) -> None:
    """The write was in flight while the outcome was stored and compared (group commit):
    the record is older than the outcome, so it counts and relabels the comparison."""
    early = routed("early", Handling.AGENT, clock)
    clock.advance(seconds=1)
    await decided(store, clock, "early")
    assert await blind_n(store) == 1
    assert await store.put_handling([early]) == 1
    assert await store.handling_of(["early"]) == {"early": Handling.AGENT}
    assert await blind_n(store) == 0
    # The same time as the outcome is not after it.
    await decided(store, clock, "tie")
    assert await store.put_handling([routed("tie", Handling.ASSISTED, clock)]) == 1


async def test_a_late_record_never_displaces_a_timely_one(store: Store, clock: FakeClock) -> None:
    timely = routed("x", Handling.ASSISTED, clock)
    clock.advance(seconds=1)
    await decided(store, clock, "x")
    clock.advance(seconds=1)
    # One batch: the late "agent" would win by rank if it were judged with the timely one.
    await store.put_handling([timely, routed("x", Handling.AGENT, clock)])
    assert await store.handling_of(["x"]) == {"x": Handling.ASSISTED}
    # A later batch upgrading it is late too.
    await store.put_handling([routed("x", Handling.AGENT, clock)])
    assert await store.handling_of(["x"]) == {"x": Handling.ASSISTED}
    assert await store.acceptance() == [("refund", "v1", "assisted", 1, 1)]


async def test_the_promoter_judges_a_folded_record_by_the_comparison_it_folded(
    store: Store, clock: FakeClock
) -> None:
    """On the promoter a replica's comparison arrives without its outcome: a routing record
    from the topic made after the comparison was folded is late; one made before counts."""
    before = routed("p-early", Handling.AGENT, clock)
    clock.advance(seconds=1)
    folded = [Comparison(e, "refund", "v1", Verdict.AGREE) for e in ("p-early", "p-late")]
    await store.put_comparisons(folded, now=clock(), actor="kafka", published=True)
    clock.advance(seconds=1)
    after = routed("p-late", Handling.AGENT, clock)
    assert await store.put_handling([before, after], published=True) == 1
    assert await store.handling_of(["p-early", "p-late"]) == {"p-early": Handling.AGENT}
    assert await blind_n(store) == 1


async def test_an_expired_join_does_not_make_a_record_late(store: Store, clock: FakeClock) -> None:
    """An item that expired without an outcome was not decided: a route asked after that
    still describes how its (late) outcome will be made."""
    await store.put_comparisons(
        [Comparison("exp", "refund", "v1", Verdict.EXPIRED)], now=clock(), actor="expire"
    )
    clock.advance(seconds=1)
    await store.put_handling([routed("exp", Handling.AGENT, clock)])
    assert await store.handling_of(["exp"]) == {"exp": Handling.AGENT}
