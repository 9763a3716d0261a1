"""Tests for shadow.store.positions: how far each Kafka partition may be committed (the
oldest open join), against a real DuckDB file. Raw SQL through ``Store.con`` only reads the
``source_positions`` rows, while no store call is in flight."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from shadow.model import Comparison, Verdict
from shadow.schema import SCHEMA_VERSION
from shadow.store import Store
from tests.conftest import FakeClock
from tests.shadow.test_store import AGENT, TASK, dec, ev, join_all, oc, sql

TTL = timedelta(hours=24)


def rows(store: Store) -> list[tuple[str, int, int, str]]:
    return [
        (str(t), int(p), int(o), str(e))
        for t, p, o, e in sql(
            store,
            "SELECT topic, kafka_partition, kafka_offset, event_id FROM source_positions "
            "ORDER BY topic, kafka_partition, kafka_offset",
        )
    ]


async def test_schema_v4_adds_the_positions_table(store: Store) -> None:
    assert SCHEMA_VERSION >= 4
    assert await store.schema_version() == SCHEMA_VERSION
    assert rows(store) == []


async def test_each_partition_commits_up_to_its_oldest_open_join(
    store: Store, clock: FakeClock
) -> None:
    now = clock()
    # events topic, partition 0
    await store.put_events(
        [ev("done"), ev("waiting"), ev("unsampled"), ev("queued")],
        source="k",
        now=now,
        needs_agent=[True, True, False, True],
    )
    await store.put_decisions([(dec("done"), TASK), (dec("waiting"), TASK)], now=now)
    # outcomes topic, partition 0: one completes "done", one waits for its event, one
    # belongs to an event that still waits for the agent
    await store.put_outcomes([oc("done"), oc("orphan"), oc("queued")], source="k", now=now)
    await join_all(store, clock())
    # events topic, partition 1: a decision that will expire, and an unsampled event whose
    # outcome exists
    await store.put_events(
        [ev("stale"), ev("quiet")], source="k", now=now, needs_agent=[True, False]
    )
    await store.put_decisions([(dec("stale"), TASK)], now=now)
    await store.put_outcomes([oc("quiet")], source="k", now=now)
    await store.record_positions(
        [
            ("ev", 0, 10, "done"),
            ("ev", 0, 11, "waiting"),
            ("ev", 0, 12, "unsampled"),
            ("ev", 0, 13, "queued"),
            ("oc", 0, 20, "done"),
            ("oc", 0, 21, "orphan"),
            ("oc", 0, 22, "queued"),
            ("ev", 1, 5, "stale"),
            ("ev", 1, 6, "quiet"),
            ("oc", 1, 7, "quiet"),
        ]
    )
    # a re-delivered record keeps its row (no error, no second row)
    await store.record_positions([("ev", 0, 11, "waiting")])
    assert await store.pending() == {
        "awaiting_outcome": 2,
        "awaiting_event": 1,
        "awaiting_agent": 1,
    }

    spans = [("ev", 0, 10, 14), ("oc", 0, 20, 23), ("ev", 1, 5, 7), ("oc", 1, 7, 8)]
    assert await store.commit_offsets(spans, cutoff=clock() - TTL) == {
        ("ev", 0): 11,  # "done" is compared; "waiting" awaits its outcome
        ("oc", 0): 21,  # "orphan" awaits its event
        ("ev", 1): 5,  # "stale" awaits its outcome
        ("oc", 1): 8,  # "quiet"'s event is unsampled: nothing to wait for
    }
    # rows the commits moved past are gone; the open ones and those after them stay
    assert ("ev", 0, 10, "done") not in rows(store)
    assert ("oc", 1, 7, "quiet") not in rows(store)
    assert await store.held_event_ids(cutoff=clock() - TTL) == [
        "orphan",
        "queued",
        "stale",
        "waiting",
    ]

    # The joins close: "waiting" gets its outcome, the agent answers "queued", "orphan"'s
    # event arrives. No new record on events partition 1 or outcomes partition 0 is needed
    # for their commits to move.
    clock.advance(minutes=5)
    await store.put_outcomes([oc("waiting")], source="k", now=clock())
    await store.put_decisions([(dec("queued"), TASK)], now=clock())
    await store.put_events([ev("orphan")], source="k", now=clock(), needs_agent=[False])
    await join_all(store, clock())
    spans = [("ev", 0, 11, 15), ("oc", 0, 21, 24), ("ev", 1, 5, 7)]
    # the new records' positions are recorded in the same transaction
    new = [("oc", 0, 23, "waiting"), ("ev", 0, 14, "orphan")]
    assert await store.commit_offsets(spans, cutoff=clock() - TTL, record=new) == {
        ("ev", 0): 15,
        ("oc", 0): 24,
        ("ev", 1): 5,  # "stale" still waits
    }
    # "stale" expires: its partition moves on, though nothing new arrived on it
    clock.advance(hours=25)
    assert await store.expire(now=clock(), ttl=TTL) == (1, 0)
    assert await store.commit_offsets([("ev", 1, 5, 7)], cutoff=clock() - TTL) == {("ev", 1): 7}
    assert rows(store) == []
    assert await store.pending() == {
        "awaiting_outcome": 0,
        "awaiting_event": 0,
        "awaiting_agent": 0,
    }


async def test_the_ttl_closes_a_join_before_the_expire_loop_runs(
    store: Store, clock: FakeClock
) -> None:
    await store.put_outcomes([oc("orphan")], source="k", now=clock())
    await store.put_events([ev("asked")], source="k", now=clock())  # awaits the agent
    await store.record_positions([("oc", 3, 0, "orphan"), ("ev", 3, 0, "asked")])
    spans = [("oc", 3, 0, 1), ("ev", 3, 0, 1)]
    assert await store.commit_offsets(spans, cutoff=clock() - TTL) == {("oc", 3): 0, ("ev", 3): 0}
    clock.advance(hours=24)
    # exactly at the TTL is still open
    assert await store.commit_offsets(spans, cutoff=clock() - TTL) == {("oc", 3): 0, ("ev", 3): 0}
    clock.advance(seconds=1)
    assert await store.commit_offsets(spans, cutoff=clock() - TTL) == {("oc", 3): 1, ("ev", 3): 1}
    assert await store.held_event_ids(cutoff=clock() - TTL) == []


async def test_a_comparison_folded_from_another_replica_closes_both_halves(
    store: Store, clock: FakeClock
) -> None:
    """On the promoter, a join completed by another replica (its comparison folded from the
    comparisons topic) holds nothing back: neither a decision awaiting its outcome nor an
    outcome awaiting its event."""
    await store.put_events([ev("moved")], source="k", now=clock())
    await store.put_decisions([(dec("moved"), TASK)], now=clock())
    await store.record_positions([("ev", 0, 0, "moved")])
    assert await store.commit_offsets([("ev", 0, 0, 1)], cutoff=clock() - TTL) == {("ev", 0): 0}
    # and an outcome whose event this store never saw, compared by another replica
    await store.put_outcomes([oc("elsewhere")], source="k", now=clock())
    await store.record_positions([("oc", 0, 0, "elsewhere")])
    spans = [("ev", 0, 0, 1), ("oc", 0, 0, 1)]
    assert await store.commit_offsets(spans, cutoff=clock() - TTL) == {("ev", 0): 0, ("oc", 0): 0}
    folded = [
        Comparison("moved", TASK, AGENT, Verdict.AGREE, (), False, "h"),
        Comparison("elsewhere", TASK, AGENT, Verdict.DISAGREE, (), True, "h2"),
    ]
    await store.put_comparisons(folded, now=clock(), actor="kafka")
    assert await store.commit_offsets(spans, cutoff=clock() - TTL) == {("ev", 0): 1, ("oc", 0): 1}


async def test_offsets_below_the_floor_are_never_returned_and_their_rows_go(
    store: Store, clock: FakeClock
) -> None:
    """Rows from an earlier ownership of the partition that another member committed past."""
    await store.put_events([ev("a"), ev("b")], source="k", now=clock())  # both await the agent
    await store.record_positions([("ev", 2, 3, "a"), ("ev", 2, 9, "b")])
    assert await store.commit_offsets([("ev", 2, 5, 12)], cutoff=clock() - TTL) == {("ev", 2): 9}
    assert rows(store) == [("ev", 2, 9, "b")]
    # nothing tracked in the span: the end of what was delivered
    assert await store.commit_offsets([("ev", 7, 0, 40)], cutoff=clock() - TTL) == {("ev", 7): 40}


async def test_a_long_run_of_closed_rows_is_worked_through_a_bounded_head_at_a_time(
    store: Store, clock: FakeClock
) -> None:
    await store.put_events([ev("shut")], source="k", now=clock(), needs_agent=[False])
    await store.put_events([ev("open")], source="k", now=clock())
    await store.record_positions([("ev", 0, o, "shut") for o in range(5)])
    await store.record_positions([("ev", 0, 5, "open"), ("ev", 0, 6, "shut")])
    span = [("ev", 0, 0, 7)]
    cutoff = clock() - TTL
    assert await store.commit_offsets(span, cutoff=cutoff, head=2) == {("ev", 0): 2}
    assert await store.commit_offsets([("ev", 0, 2, 7)], cutoff=cutoff, head=2) == {("ev", 0): 4}
    assert await store.commit_offsets([("ev", 0, 4, 7)], cutoff=cutoff, head=2) == {("ev", 0): 5}
    assert await store.commit_offsets([("ev", 0, 5, 7)], cutoff=cutoff, head=2) == {("ev", 0): 5}
    assert [o for _, _, o, _ in rows(store)] == [5, 6]


async def test_schema_v5_drops_positions_keyed_by_the_bare_topic(tmp_path: Path) -> None:
    """A store at schema v4 (positions keyed by topic name alone) opened by this version:
    the old rows go (the source re-reads those records from their committed offsets and
    records them keyed by source); the events themselves stay."""
    from tests.shadow.test_store import store_file_at

    path = tmp_path / "v4.duckdb"
    store_file_at(path, 4, ("INSERT INTO source_positions VALUES ('ev', 0, 7, 'e7')", []))
    async with Store(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION >= 5
        assert rows(store) == []
