"""Tests for shadow.store.retention (what leaves the store, and when) against a real DuckDB
file, and for the ``retention`` setting that drives it. Raw SQL through ``Store.con`` only
reads which ids are left, while no store call is in flight."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shadow.config import load_settings
from shadow.errors import ConfigError
from shadow.model import Verdict
from shadow.store import DeadLetter, Purged, PutStatus, Store
from tests.conftest import FakeClock
from tests.shadow.test_store import TASK, at, compared, dec, ev, join_all, oc, sql

TTL = timedelta(days=1)
DAY = timedelta(days=1)


def ids(store: Store, table: str) -> set[str]:
    return {str(r[0]) for r in sql(store, f"SELECT DISTINCT event_id FROM {table}")}


async def test_closed_cases_older_than_the_cutoff_go_open_ones_and_evidence_stay(
    store: Store, clock: FakeClock
) -> None:
    t0 = clock()
    # compared; unsampled with an outcome; answered but never decided by a human (expires);
    # still waiting for the agent; answered with an outcome but not compared yet; compared,
    # then reversed by a later outcome (the comparison waits to be redone)
    await store.put_events(
        [ev("done"), ev("unsampled"), ev("silent"), ev("queued"), ev("ready"), ev("reversed")],
        source="k",
        now=t0,
        needs_agent=[True, False, True, True, True, True],
    )
    await store.put_decisions(
        [(dec("done"), TASK), (dec("silent"), TASK), (dec("reversed"), TASK)], now=t0
    )
    await store.put_outcomes(
        [oc("done"), oc("unsampled"), oc("reversed", decided_at=at(0)), oc("orphan")],
        source="k",
        now=t0,
    )
    await join_all(store, clock())
    await store.put_decisions([(dec("ready"), TASK)], now=t0)
    await store.put_outcomes([oc("ready"), oc("fresh-orphan")], source="k", now=t0)
    reversal = await store.put_outcomes(
        [oc("reversed", "deny", decided_at=at(5))], source="k", now=t0
    )
    assert reversal[0].status is PutStatus.REVERSAL
    await store.put_dead_letters([DeadLetter("k", "event", "not JSON", "{", None)], now=t0)

    # a day and a bit later the TTL expires what waited: "silent" becomes an expired
    # comparison, the orphan outcome is flagged
    clock.advance(days=1, hours=1)
    await store.expire(now=clock(), ttl=TTL)
    await store.put_outcomes([oc("late-orphan")], source="k", now=clock())
    await store.put_dead_letters([DeadLetter("k", "event", "not JSON", "[", None)], now=clock())
    # "fresh-orphan" got a second revision after the expiry: not every revision is expired
    await store.put_outcomes(
        [oc("fresh-orphan", "deny", decided_at=at(9))], source="k", now=clock()
    )
    evidence = await store.evidence()
    comparisons = sql(store, "SELECT * FROM comparisons ORDER BY event_id, agent_version")

    clock.advance(days=1)
    purged = await store.purge(cutoff=clock() - DAY)

    assert ids(store, "events") == {"queued", "ready", "reversed"}
    assert ids(store, "outcomes") == {"ready", "reversed", "late-orphan", "fresh-orphan"}
    assert ids(store, "decisions") == {"ready", "reversed"}
    assert purged == Purged(events=3, outcomes=3, decisions=2, dead_letters=1)
    # the evidence and every comparison are untouched; so are the open joins
    assert await store.evidence() == evidence
    assert sql(store, "SELECT * FROM comparisons ORDER BY event_id, agent_version") == comparisons
    assert {r.decision.event_id for r in await store.ready_pairs()} == {"ready", "reversed"}
    assert [e.event_id for e in await store.events_awaiting_agent()] == ["queued"]
    assert [d["reason"] for d in await store.dead_letters()] == ["not JSON"]
    assert len(await store.dead_letters()) == 1

    # purging again finds nothing; neither does a cutoff before everything
    assert await store.purge(cutoff=clock() - DAY) == Purged()
    assert await store.purge(cutoff=t0) == Purged()


async def test_a_case_with_recent_activity_stays(store: Store, clock: FakeClock) -> None:
    t0 = clock()
    await store.put_events([ev("old"), ev("slow"), ev("backlog")], source="k", now=t0)
    await store.put_decisions([(dec("old"), TASK), (dec("slow"), TASK)], now=t0)
    await store.put_outcomes([oc("old"), oc("backlog")], source="k", now=t0)
    await join_all(store, clock())
    # two days later: the human decision for "slow" arrives, the agent (after an outage)
    # answers "backlog"; both are compared then
    clock.advance(days=2)
    await store.put_outcomes([oc("slow")], source="k", now=clock())
    await store.put_decisions([(dec("backlog"), TASK)], now=clock())
    await join_all(store, clock())

    purged = await store.purge(cutoff=clock() - DAY)

    assert purged == Purged(events=1, outcomes=1, decisions=1)
    assert ids(store, "events") == {"slow", "backlog"}
    assert ids(store, "outcomes") == {"slow", "backlog"}
    assert ids(store, "decisions") == {"slow", "backlog"}


async def test_nothing_goes_before_its_join_is_closed_even_if_expiry_has_not_run(
    store: Store, clock: FakeClock
) -> None:
    await store.put_events([ev("answered")], source="k", now=clock())
    await store.put_decisions([(dec("answered"), TASK)], now=clock())
    await store.put_outcomes([oc("orphan")], source="k", now=clock())
    clock.advance(days=3)
    # old, but still open: a decision with no comparison, an outcome waiting for its event
    assert await store.purge(cutoff=clock() - DAY) == Purged()
    assert ids(store, "events") == {"answered"}
    assert ids(store, "outcomes") == {"orphan"}
    # the TTL closes both; then they go
    assert await store.expire(now=clock(), ttl=TTL) == (1, 1)
    assert await store.purge(cutoff=clock() - DAY) == Purged(events=1, outcomes=1, decisions=1)
    assert sql(store, "SELECT event_id, verdict FROM comparisons") == [("answered", "expired")]


async def test_purges_in_transactions_of_limit_cases_until_none_is_left(
    store: Store, clock: FakeClock
) -> None:
    names = [f"e{i:02d}" for i in range(25)]
    await store.put_events([ev(n) for n in names], source="k", now=clock())
    await store.put_decisions([(dec(n), TASK) for n in names], now=clock())
    await store.put_outcomes([oc(n) for n in names], source="k", now=clock())
    await join_all(store, clock())
    await store.put_outcomes([oc(f"orphan{i}") for i in range(12)], source="k", now=clock())
    clock.advance(days=2)
    await store.expire(now=clock(), ttl=TTL)
    clock.advance(days=2)

    purged = await store.purge(cutoff=clock() - DAY, limit=10)

    assert purged == Purged(events=25, outcomes=37, decisions=25)
    assert ids(store, "events") == ids(store, "outcomes") == ids(store, "decisions") == set()
    assert sql(store, "SELECT count(*) FROM comparisons") == [(25,)]
    with pytest.raises(ValueError, match="limit"):
        await store.purge(cutoff=clock(), limit=0)


async def test_a_purged_case_delivered_again_is_stored_anew_not_counted_twice(
    store: Store, clock: FakeClock
) -> None:
    await store.put_events([ev("e1")], source="k", now=clock())
    await store.put_decisions([(dec("e1"), TASK)], now=clock())
    await store.put_outcomes([oc("e1")], source="k", now=clock())
    await join_all(store, clock())
    clock.advance(days=3)
    assert (await store.purge(cutoff=clock() - DAY)).events == 1

    # an offset reset re-delivers it: history the store no longer has is new again
    put = await store.put_events([ev("e1")], source="k", now=clock())
    assert put[0].status is PutStatus.STORED
    await store.put_decisions([(dec("e1"), TASK)], now=clock())
    await store.put_outcomes([oc("e1")], source="k", now=clock())
    # the kept comparison already covers this outcome: nothing to compare, counted once
    assert await store.ready_pairs() == []
    assert await store.pending() == {
        "awaiting_outcome": 0,
        "awaiting_event": 0,
        "awaiting_agent": 0,
    }
    assert (await store.evidence())[TASK]["refund-agent@7"].n == 1
    # a different human decision this time is compared, and audited as a reversal
    await store.put_outcomes([oc("e1", "deny", decided_at=at(30))], source="k", now=clock())
    pairs = await store.ready_pairs()
    assert [p.decision.event_id for p in pairs] == ["e1"]
    reversals = await store.put_comparisons([compared(p) for p in pairs], now=clock())
    assert [(r.before, r.after) for r in reversals] == [(Verdict.AGREE, Verdict.DISAGREE)]
    assert sql(store, "SELECT event_id, verdict FROM comparisons") == [
        ("e1", Verdict.DISAGREE.value)
    ]
    assert (await store.evidence())[TASK]["refund-agent@7"].n == 1


async def test_purged_cases_hold_no_kafka_commit(store: Store, clock: FakeClock) -> None:
    await store.put_events([ev("a"), ev("b")], source="k", now=clock())
    await store.put_decisions([(dec("a"), TASK), (dec("b"), TASK)], now=clock())
    await store.put_outcomes([oc("a"), oc("b")], source="k", now=clock())
    await join_all(store, clock())
    await store.record_positions([("ev", 0, 0, "a"), ("ev", 0, 1, "b")])
    clock.advance(days=3)
    await store.purge(cutoff=clock() - DAY)
    # nothing of "a" or "b" is left, and nothing is open: the partition commits to its end
    spans = [("ev", 0, 0, 2)]
    assert await store.commit_offsets(spans, cutoff=clock() - TTL) == {("ev", 0): 2}


def test_retention_must_outlive_the_join_ttl(no_shadow_env: None) -> None:
    assert load_settings(config=None).retention == 0  # keeps everything by default
    assert load_settings(config=None, retention=30 * 86400.0).retention == 30 * 86400.0
    assert load_settings(config=None, retention=61, join_ttl=60).retention == 61
    with pytest.raises(
        ConfigError, match=r"retention \(SHADOW_RETENTION\): .*longer than join_ttl"
    ):
        load_settings(config=None, retention=3600)  # the default join_ttl is 7 days
    with pytest.raises(ConfigError, match="longer than join_ttl"):
        load_settings(config=None, retention=60, join_ttl=60)
    with pytest.raises(ConfigError, match=r"retention \(SHADOW_RETENTION\): .*greater than"):
        load_settings(config=None, retention=-1)
    with pytest.raises(ConfigError, match=r"retention \(SHADOW_RETENTION\): .*valid number"):
        load_settings(config=None, retention="a month")


def test_retention_from_the_environment(
    no_shadow_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHADOW_RETENTION", "2592000")
    assert load_settings(config=None).retention == 2_592_000
    monkeypatch.setenv("SHADOW_RETENTION", "60")
    with pytest.raises(ConfigError, match="SHADOW_RETENTION"):
        load_settings(config=None)
