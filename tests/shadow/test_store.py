"""Tests for shadow.store against real DuckDB files (no mocks).

Every test opens a fresh file under tmp_path (``store`` / ``store_factory`` fixtures). Raw
SQL through ``Store.con`` is used only to look at flags the public API does not expose
(``is_current``, the ``agreement`` view's ``expired`` column, the ``schema_version`` table),
and only while no store call is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shadow import moves, promotion
from shadow.errors import StoreError, StoreInUseError
from shadow.model import (
    Action,
    AuditEntry,
    Comparison,
    Evidence,
    FieldResult,
    Level,
    Outcome,
    ShadowDecision,
    Usage,
    Verdict,
    WorkEvent,
)
from shadow.policy import TaskPolicy, parse_policy
from shadow.promotion import LadderState, Move, Proposal, ProposalRef, Step
from shadow.schema import MIGRATIONS, SCHEMA_VERSION
from shadow.store import DeadLetter, JoinRow, PutResult, PutStatus, Reversal, Store
from tests.conftest import FakeClock, StoreFactory
from tests.shadow import store_worker

STORED = PutStatus.STORED
DUPLICATE = PutStatus.DUPLICATE
CONFLICT = PutStatus.CONFLICT
REVERSAL = PutStatus.REVERSAL
SUPERSEDED = PutStatus.SUPERSEDED

TASK = "refund_request"
AGENT = "refund-agent@7"
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # FakeClock's start
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- builders


def at(minutes: float) -> str:
    """An ISO ``decided_at`` ``minutes`` after T0."""
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ev(event_id: str = "e1", payload: dict[str, Any] | None = None, task: str = TASK) -> WorkEvent:
    return WorkEvent(event_id, task, {"amount": 42.5} if payload is None else payload)


def oc(
    event_id: str = "e1",
    action: str = "approve",
    decided_at: str | None = None,
    decided_by: str | None = "ops/jane",
) -> Outcome:
    return Outcome(
        event_id,
        {"action": action, "amount": 42.5},
        (Action("issue_refund", {"amount": 42.5}),),
        decided_by,
        decided_at,
    )


def dec(
    event_id: str = "e1", action: str = "approve", version: str = AGENT, latency: float = 120.0
) -> ShadowDecision:
    return ShadowDecision(
        event_id,
        version,
        {"action": action, "amount": 42.5},
        (Action("issue_refund", {"amount": 42.5}),),
        confidence=0.93,
        usage=Usage(812, 64, 0.0021),
        latency_ms=latency,
    )


def compared(row: JoinRow) -> Comparison:
    """A stand-in for the differ: agree iff the decision equals the outcome's decision."""
    d = row.decision
    if d.error is not None or d.decision is None:
        verdict = Verdict.AGENT_ERROR
    else:
        verdict = Verdict.AGREE if d.decision == row.outcome.decision else Verdict.DISAGREE
    return Comparison(
        d.event_id,
        row.task_type,
        d.agent_version,
        verdict,
        (FieldResult("action", "exact", verdict is Verdict.AGREE, True, ""),),
        critical_miss=verdict is Verdict.DISAGREE,
        outcome_hash=row.outcome_hash,
    )


def _cmp(
    event_id: str,
    verdict: Verdict,
    *,
    task: str = TASK,
    version: str = "v1",
    critical: bool = False,
) -> Comparison:
    return Comparison(event_id, task, version, verdict, (), critical, None)


def sql(store: Store, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return store.con.execute(query, params or []).fetchall()


def outcome_flags(store: Store, event_id: str) -> list[tuple[int, bool, str]]:
    """``(revision, is_current, decision.action)`` for every stored revision."""
    rows = sql(
        store,
        "SELECT revision, is_current, decision FROM outcomes WHERE event_id = ? ORDER BY revision",
        [event_id],
    )
    return [(int(r), bool(c), json.loads(d)["action"]) for r, c, d in rows]


def agreement_rows(store: Store) -> list[tuple[Any, ...]]:
    return sql(store, "SELECT * FROM agreement ORDER BY task_type, agent_version")


async def join_all(store: Store, now: datetime) -> list[Reversal]:
    return await store.put_comparisons([compared(r) for r in await store.ready_pairs()], now=now)


# ---------------------------------------------------------------- 1. open and migrate


async def test_new_file_gets_the_current_schema_version(store: Store) -> None:
    assert await store.schema_version() == SCHEMA_VERSION
    assert sql(store, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v, _ in MIGRATIONS
    ]


async def test_every_table_of_the_schema_is_usable_on_the_installed_duckdb(
    tmp_path: Path,
) -> None:
    """Regression: DuckDB 2.x reserves ``at``; while audit_log / dead_letters had an ``at``
    column the DDL (and the queries on them) failed to parse and no new store opened."""
    for _version, statements in MIGRATIONS:
        con = duckdb.connect(str(tmp_path / "ddl.duckdb"))
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()
    store = await Store(tmp_path / "s.duckdb").open()
    try:
        await store.put_dead_letters([DeadLetter("t", "unknown", "why")], now=T0)
        assert len(await store.dead_letters()) == 1
        assert await store.audit_log() == []
    finally:
        await store.close()


async def test_reopening_does_not_reapply_migrations(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    async with Store(path) as store:
        await store.put_events([ev()], source="t", now=T0)
    async with Store(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.count("events") == 1
    async with Store(path) as store:
        assert sql(store, "SELECT count(*) FROM schema_version") == [(len(MIGRATIONS),)]
        assert await store.put_events([ev()], source="t", now=T0) == [PutResult("e1", DUPLICATE)]


async def test_open_and_close_are_idempotent_and_a_closed_store_refuses_calls(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s.duckdb")
    assert await store.open() is store
    assert await store.open() is store
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.count("events")


def _make_newer_file(path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
        con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    finally:
        con.close()


async def test_a_newer_schema_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "newer.duckdb"
    _make_newer_file(path)
    store = Store(path)
    try:
        with pytest.raises(StoreError) as err:
            await store.open()
        message = str(err.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in message
        assert f"this sidecar's {SCHEMA_VERSION}" in message
    finally:
        await store.close()


async def test_a_refused_open_releases_the_file(tmp_path: Path) -> None:
    """After open() fails (here: newer schema) the file must not stay locked by a
    half-opened connection: another process (an upgraded sidecar) must be able to open it."""
    path = tmp_path / "newer.duckdb"
    _make_newer_file(path)
    store = Store(path)
    with pytest.raises(StoreError):
        await store.open()
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await probe.communicate()
    await store.close()  # leave nothing behind whatever the outcome
    assert probe.returncode == 0, err.decode()[-500:]


async def test_a_file_another_process_holds_is_store_in_use(tmp_path: Path) -> None:
    """DuckDB lets one process open a file; a second one gets StoreInUseError naming the
    holder's PID (not DuckDB's raw lock error), and the file opens once the holder is gone."""
    path = tmp_path / "held.duckdb"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys\n"
        "from shadow.store import Store\n"
        "async def hold():\n"
        "    async with Store(sys.argv[1]):\n"
        "        print('open', flush=True)\n"
        "        sys.stdin.read()\n"
        "asyncio.run(hold())",
        str(path),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"open\n"
        with pytest.raises(StoreInUseError) as err:
            await Store(path).open()
        assert err.value.pid == holder.pid
        assert str(err.value) == (
            f"cannot open store {path}: in use by process {holder.pid} "
            "(DuckDB lets only one process open a file)"
        )
    finally:
        holder.stdin.close()
        assert await asyncio.wait_for(holder.wait(), 60) == 0
    async with Store(path) as store:
        assert await store.count("events") == 0


async def test_a_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        await Store(tmp_path).open()


@pytest.mark.parametrize("content", [b"", b"hello, I am not a database\n" * 100])
async def test_a_non_duckdb_file_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not.duckdb"
    path.write_bytes(content)
    with pytest.raises(StoreError, match="not a valid DuckDB database file"):
        await Store(path).open()
    assert path.read_bytes() == content  # left untouched


async def test_a_path_below_a_regular_file_is_a_store_error(tmp_path: Path) -> None:
    """``mkdir`` of the parent raises FileExistsError/NotADirectoryError: it must surface
    as StoreError like every other open failure."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        await Store(blocker / "s.duckdb").open()


async def test_two_stores_on_one_file_in_one_process_share_the_database(
    store_factory: StoreFactory,
) -> None:
    """Documented behaviour: DuckDB keeps one database instance per file and process, so a
    second Store on the same path works and sees the first one's commits."""
    a = await store_factory("same.duckdb")
    b = await store_factory("same.duckdb")
    assert await a.put_events([ev()], source="a", now=T0) == [PutResult("e1", STORED)]
    assert await b.put_events([ev()], source="b", now=T0) == [PutResult("e1", DUPLICATE)]
    assert await b.count("events") == 1
    await a.close()
    assert await b.count("events") == 1


@pytest.mark.slow  # a timing-dependent race, given many chances
async def test_two_stores_racing_on_one_file_fail_only_with_store_error(
    store_factory: StoreFactory,
) -> None:
    """When two Stores write the same new ids at once, the loser's COMMIT fails in DuckDB
    (optimistic concurrency). That must surface as StoreError, never as a raw
    duckdb.TransactionException; whatever was committed is there exactly once."""
    a = await store_factory("race.duckdb")
    b = await store_factory("race.duckdb")
    for r in range(20):  # the race is timing-dependent: give it many chances
        events = [ev(f"r{r}-{i}", {"i": i}) for i in range(2000)]
        results = await asyncio.gather(
            a.put_events(events, source="a", now=T0),
            b.put_events(events, source="b", now=T0),
            return_exceptions=True,
        )
        for res in results:
            if isinstance(res, BaseException):
                assert isinstance(res, StoreError), repr(res)
            else:
                assert {p.status for p in res} <= {STORED, DUPLICATE}
        assert await a.count("events") == 2000 * (r + 1)


# ---------------------------------------------------------------- 2. events


async def test_event_stored_then_duplicate(store: Store, clock: FakeClock) -> None:
    assert await store.put_events([ev()], source="t", now=clock()) == [PutResult("e1", STORED)]
    assert await store.put_events([ev()], source="t", now=clock()) == [PutResult("e1", DUPLICATE)]
    assert await store.count("events") == 1
    assert await store.dead_letters() == []


async def test_conflicting_event_is_dead_lettered_and_the_first_kept(
    store: Store, clock: FakeClock
) -> None:
    original = ev(payload={"amount": 1})
    other = replace(original, payload={"amount": 2}, segment="eu")
    await store.put_events([original], source="kafka", now=clock())
    clock.advance(minutes=1)
    [res] = await store.put_events([other], source="http", now=clock())
    assert res.status is CONFLICT
    assert not res.accepted
    assert "e1" in res.reason
    assert "first version is kept" in res.reason
    [letter] = await store.dead_letters()
    assert letter["kind"] == "event"
    assert letter["source"] == "http"
    assert letter["reason"] == res.reason
    assert letter["event_id"] == "e1"
    assert letter["recorded_at"] == clock()
    assert letter["location"] is None
    assert json.loads(letter["raw"]) == other.to_json()
    assert await store.events_awaiting_agent() == [original]
    assert await store.count("events") == 1


async def test_duplicates_and_conflicts_within_one_event_batch(
    store: Store, clock: FakeClock
) -> None:
    a, b = ev("a", {"n": 1}), ev("b", {"n": 2})
    a_bad = replace(a, payload={"n": 99})
    results = await store.put_events([a, a, a_bad, b, a], source="t", now=clock())
    assert [r.status for r in results] == [STORED, DUPLICATE, CONFLICT, STORED, DUPLICATE]
    assert [r.event_id for r in results] == ["a", "a", "a", "b", "a"]
    assert await store.count("events") == 2
    [letter] = await store.dead_letters()
    assert (letter["kind"], letter["event_id"]) == ("event", "a")
    assert json.loads(letter["raw"]) == a_bad.to_json()
    assert await store.events_awaiting_agent() == [a, b]


async def test_needs_agent_flags_and_the_agent_backlog(store: Store, clock: FakeClock) -> None:
    await store.put_events(
        [ev("z"), ev("y"), ev("x")], source="t", now=clock(), needs_agent=[True, False, True]
    )
    clock.advance(seconds=1)
    await store.put_events([ev("a")], source="t", now=clock())  # default: sampled
    # oldest received first; the same batch is ordered by event_id
    assert [e.event_id for e in await store.events_awaiting_agent()] == ["x", "z", "a"]
    assert [e.event_id for e in await store.events_awaiting_agent(limit=2)] == ["x", "z"]
    assert (await store.pending())["awaiting_agent"] == 3

    await store.put_decisions([(dec("z"), TASK), (dec("y"), TASK)], now=clock())
    assert [e.event_id for e in await store.events_awaiting_agent()] == ["x", "a"]
    await store.put_decisions([(ShadowDecision.failed("a", AGENT, "HTTP 500"), TASK)], now=clock())
    assert [e.event_id for e in await store.events_awaiting_agent()] == ["x"]
    assert (await store.pending())["awaiting_agent"] == 1


async def test_needs_agent_must_have_one_flag_per_event(store: Store, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="one flag per event"):
        await store.put_events([ev("a"), ev("b")], source="t", now=clock(), needs_agent=[True])
    assert await store.count("events") == 0


async def test_event_fields_round_trip(store: Store, clock: FakeClock) -> None:
    full = WorkEvent(
        "r-1029", TASK, {"amount": 42.5, "nested": {"l": [1, None, True]}}, at(0), "eu"
    )
    await store.put_events([full], source="t", now=clock())
    assert await store.events_awaiting_agent() == [full]


# ---------------------------------------------------------------- 3. outcomes


async def _current(store: Store, event_id: str = "e1") -> Outcome:
    """The current outcome revision, seen through the join (event and a probe decision are
    added as needed)."""
    await store.put_events([ev(event_id)], source="probe", now=T0)
    await store.put_decisions([(dec(event_id, version="probe@0"), TASK)], now=T0)
    rows = [r for r in await store.ready_pairs([event_id]) if r.decision.agent_version == "probe@0"]
    assert len(rows) == 1
    return rows[0].outcome


async def test_outcome_stored_then_duplicate(store: Store, clock: FakeClock) -> None:
    first = oc(decided_at=at(7))
    assert await store.put_outcomes([first], source="t", now=clock()) == [PutResult("e1", STORED)]
    assert await store.put_outcomes([first], source="t", now=clock()) == [
        PutResult("e1", DUPLICATE)
    ]
    assert await store.count("outcomes") == 1


async def test_outcome_duplicate_ignores_who_and_when(store: Store, clock: FakeClock) -> None:
    """Documented behaviour: an outcome's content hash covers decision and actions only, so
    the same decision re-sent with another decided_by or a later decided_at is a DUPLICATE
    and the first record (who, when) is kept."""
    first = oc(decided_at=at(7), decided_by="ops/jane")
    await store.put_outcomes([first], source="t", now=clock())
    again = [
        replace(first, decided_by="ops/bob"),
        replace(first, decided_by=None),
        replace(first, decided_at=at(60)),
        replace(first, decided_at=None),
    ]
    results = await store.put_outcomes(again, source="t", now=clock())
    assert [r.status for r in results] == [DUPLICATE] * 4
    assert await store.count("outcomes") == 1
    assert await _current(store) == first


async def test_later_outcome_is_a_reversal(store: Store, clock: FakeClock) -> None:
    await store.put_outcomes([oc(action="approve", decided_at=at(7))], source="t", now=clock())
    later = oc(action="deny", decided_at=at(30))
    assert await store.put_outcomes([later], source="t", now=clock()) == [PutResult("e1", REVERSAL)]
    assert outcome_flags(store, "e1") == [(1, False, "approve"), (2, True, "deny")]
    assert await _current(store) == later
    assert await store.dead_letters() == []


async def test_outcome_without_time_is_reversed_by_a_timed_one(
    store: Store, clock: FakeClock
) -> None:
    await store.put_outcomes([oc(action="approve")], source="t", now=clock())
    assert await store.put_outcomes(
        [oc(action="deny", decided_at=at(1))], source="t", now=clock()
    ) == [PutResult("e1", REVERSAL)]
    assert outcome_flags(store, "e1") == [(1, False, "approve"), (2, True, "deny")]


async def test_earlier_outcome_is_superseded_history(store: Store, clock: FakeClock) -> None:
    current = oc(action="approve", decided_at=at(30))
    await store.put_outcomes([current], source="t", now=clock())
    assert await store.put_outcomes(
        [oc(action="deny", decided_at=at(7))], source="t", now=clock()
    ) == [PutResult("e1", SUPERSEDED)]
    assert outcome_flags(store, "e1") == [(1, True, "approve"), (2, False, "deny")]
    assert await _current(store) == current
    assert await store.dead_letters() == []


@pytest.mark.parametrize(
    ("first_at", "second_at"),
    [(at(7), at(7)), (None, None), (at(7), None)],
    ids=["same-time", "both-untimed", "untimed-after-timed"],
)
async def test_different_outcome_without_a_later_time_is_a_conflict(
    store: Store, clock: FakeClock, first_at: str | None, second_at: str | None
) -> None:
    first = oc(action="approve", decided_at=first_at)
    await store.put_outcomes([first], source="t", now=clock())
    bad = oc(action="deny", decided_at=second_at)
    [res] = await store.put_outcomes([bad], source="ingest", now=clock())
    assert res.status is CONFLICT
    assert "later decided_at" in res.reason
    [letter] = await store.dead_letters()
    assert letter["kind"] == "outcome"
    assert letter["source"] == "ingest"
    assert letter["reason"] == res.reason
    assert letter["event_id"] == "e1"
    assert json.loads(letter["raw"]) == bad.to_json()
    assert outcome_flags(store, "e1") == [(1, True, "approve")]
    assert await _current(store) == first


async def test_outcome_revisions_in_one_batch_end_with_the_latest_current(
    store: Store, clock: FakeClock
) -> None:
    batch = [
        oc(action="b", decided_at=at(2)),
        oc(action="a", decided_at=at(1)),
        oc(action="d", decided_at=at(4)),
        oc(action="c", decided_at=at(3)),
        oc(action="d", decided_at=at(4)),
    ]
    results = await store.put_outcomes(batch, source="t", now=clock())
    assert [r.status for r in results] == [STORED, SUPERSEDED, REVERSAL, SUPERSEDED, DUPLICATE]
    assert outcome_flags(store, "e1") == [
        (1, False, "b"),
        (2, False, "a"),
        (3, True, "d"),
        (4, False, "c"),
    ]
    assert (await _current(store)).decision["action"] == "d"


async def test_outcome_batch_demotes_a_stored_revision_and_its_own(
    store: Store, clock: FakeClock
) -> None:
    await store.put_outcomes([oc(action="a", decided_at=at(1))], source="t", now=clock())
    batch = [
        oc(action="c", decided_at=at(3)),
        oc(action="b", decided_at=at(2)),
        oc(action="e", decided_at=at(5)),
        oc(action="x", decided_at=at(5)),  # same time as the current one: conflict
    ]
    results = await store.put_outcomes(batch, source="t", now=clock())
    assert [r.status for r in results] == [REVERSAL, SUPERSEDED, REVERSAL, CONFLICT]
    assert outcome_flags(store, "e1") == [
        (1, False, "a"),
        (2, False, "c"),
        (3, False, "b"),
        (4, True, "e"),
    ]
    assert sql(store, "SELECT count(*) FROM outcomes WHERE is_current") == [(1,)]


async def test_a_later_return_to_an_earlier_decision_is_a_reversal(
    store: Store, clock: FakeClock
) -> None:
    """approve (10:07) -> deny (10:30) -> approve again (11:00): the last word is approve.
    The duplicate check must not match the *first* revision's content alone, or the flip
    back is swallowed as DUPLICATE and the agent keeps being compared against 'deny'."""
    await store.put_outcomes([oc(action="approve", decided_at=at(7))], source="t", now=clock())
    await store.put_outcomes([oc(action="deny", decided_at=at(30))], source="t", now=clock())
    back = oc(action="approve", decided_at=at(60))
    assert await store.put_outcomes([back], source="t", now=clock()) == [PutResult("e1", REVERSAL)]
    assert (await _current(store)).decision["action"] == "approve"
    # a plain re-delivery of any stored revision is still a duplicate
    results = await store.put_outcomes(
        [oc(action="approve", decided_at=at(7)), oc(action="deny", decided_at=at(30)), back],
        source="t",
        now=clock(),
    )
    assert [r.status for r in results] == [DUPLICATE, DUPLICATE, DUPLICATE]


async def test_naive_decided_at_does_not_crash_the_store(store: Store, clock: FakeClock) -> None:
    """A decided_at without an offset is refused by Outcome.from_json, but the store must
    not die with a raw TypeError (naive vs aware comparison) when one reaches it anyway:
    it either refuses it with StoreError/ValueError or treats it as UTC, consistently."""
    await store.put_outcomes([oc(action="a", decided_at="2026-11-20T10:00:00")], source="t", now=T0)
    try:
        results = await store.put_outcomes(
            [oc(action="b", decided_at="2026-11-20T11:00:00")], source="t", now=T0
        )
    except (StoreError, ValueError):
        return
    assert [r.status for r in results] == [REVERSAL]


# ---------------------------------------------------------------- 4. decisions


async def test_decision_stored_duplicate_conflict(store: Store, clock: FakeClock) -> None:
    await store.put_events([ev()], source="t", now=clock())
    first = dec(action="approve")
    assert await store.put_decisions([(first, TASK)], now=clock()) == [PutResult("e1", STORED)]
    # timing and usage are not part of the answer
    retry = replace(first, latency_ms=999.0, usage=Usage(1, 1, 1.0), confidence=0.1)
    assert await store.put_decisions([(retry, TASK)], now=clock()) == [PutResult("e1", DUPLICATE)]
    other = dec(action="deny")
    [res] = await store.put_decisions([(other, TASK)], now=clock(), source="agent-http")
    assert res.status is CONFLICT
    assert AGENT in res.reason
    assert "first answer is kept" in res.reason
    [letter] = await store.dead_letters()
    assert letter["kind"] == "decision"
    assert letter["source"] == "agent-http"
    assert letter["reason"] == res.reason
    assert letter["event_id"] == "e1"
    assert json.loads(letter["raw"]) == other.to_json()
    assert await store.count("decisions") == 1
    await store.put_outcomes([oc()], source="t", now=clock())
    [row] = await store.ready_pairs()
    assert row.decision == first


async def test_decisions_are_per_agent_version(store: Store, clock: FakeClock) -> None:
    batch = [
        (dec(version="v1"), TASK),
        (dec(version="v2", action="deny"), TASK),
        (dec(version="v1"), TASK),
        (dec(version="v2"), TASK),
    ]
    results = await store.put_decisions(batch, now=clock())
    assert [r.status for r in results] == [STORED, STORED, DUPLICATE, CONFLICT]
    assert await store.count("decisions") == 2
    assert len(await store.dead_letters()) == 1


async def test_failed_decision_is_stored_and_joins_as_an_error(
    store: Store, clock: FakeClock
) -> None:
    failed = ShadowDecision.failed("e1", AGENT, "timeout after 30s", latency_ms=30_000.0)
    await store.put_events([ev()], source="t", now=clock())
    assert await store.put_decisions([(failed, TASK)], now=clock()) == [PutResult("e1", STORED)]
    assert await store.put_decisions([(failed, TASK)], now=clock()) == [PutResult("e1", DUPLICATE)]
    other_error = ShadowDecision.failed("e1", AGENT, "HTTP 502")
    assert [r.status for r in await store.put_decisions([(other_error, TASK)], now=clock())] == [
        CONFLICT
    ]
    await store.put_outcomes([oc()], source="t", now=clock())
    [row] = await store.ready_pairs()
    assert row.decision == failed
    assert row.decision.decision is None
    await store.put_comparisons([compared(row)], now=clock())
    assert await store.evidence() == {TASK: {AGENT: Evidence(TASK, AGENT, 1, 0, 0, 1)}}


# ---------------------------------------------------------------- 5. joins

ORDERS = list(itertools.permutations(("event", "decision", "outcome")))


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
async def test_a_pair_is_ready_only_when_event_decision_and_outcome_exist(
    store: Store, clock: FakeClock, order: tuple[str, str, str]
) -> None:
    event, decision, outcome = ev(), dec(), oc(decided_at=at(7))
    for i, kind in enumerate(order):
        if kind == "event":
            await store.put_events([event], source="t", now=clock())
        elif kind == "decision":
            await store.put_decisions([(decision, TASK)], now=clock())
        else:
            await store.put_outcomes([outcome], source="t", now=clock())
        clock.advance(minutes=1)
        if i < 2:
            assert await store.ready_pairs() == [], f"ready after {order[: i + 1]}"
    expected = JoinRow(TASK, decision, outcome, outcome.content_hash)
    assert await store.ready_pairs() == [expected]
    assert await store.ready_pairs(["e1"]) == [expected]
    assert await store.put_comparisons([compared(expected)], now=clock()) == []
    assert await store.ready_pairs() == []
    assert await store.evidence() == {TASK: {AGENT: Evidence(TASK, AGENT, 1, 1, 0, 0)}}
    pending = await store.pending()
    assert (pending["awaiting_outcome"], pending["awaiting_event"]) == (0, 0)


async def test_reversal_makes_the_pair_ready_again_and_is_audited(
    store: Store, clock: FakeClock
) -> None:
    await store.put_events([ev()], source="t", now=clock())
    await store.put_decisions([(dec(action="approve"), TASK)], now=clock())
    await store.put_outcomes([oc(action="approve", decided_at=at(7))], source="t", now=clock())
    assert await join_all(store, clock()) == []
    assert await store.audit_log() == []

    # an older revision changes nothing
    await store.put_outcomes([oc(action="other", decided_at=at(1))], source="t", now=clock())
    assert await store.ready_pairs() == []

    reversed_ = oc(action="deny", decided_at=at(30))
    await store.put_outcomes([reversed_], source="t", now=clock())
    [row] = await store.ready_pairs()
    assert row.outcome == reversed_
    assert row.outcome_hash == reversed_.content_hash
    clock.advance(hours=1)
    reversals = await store.put_comparisons([compared(row)], now=clock())
    assert reversals == [Reversal("e1", AGENT, Verdict.AGREE, Verdict.DISAGREE)]
    assert await store.ready_pairs() == []
    [(_id, entry)] = await store.audit_log()
    assert entry == AuditEntry(
        at=clock(),
        task_type=TASK,
        actor="joiner",
        action="outcome_reversal",
        from_level=None,
        to_level=None,
        reason="outcome for e1 changed: agree -> disagree",
        evidence={"event_id": "e1", "agent_version": AGENT, "before": "agree", "after": "disagree"},
        policy_hash=None,
    )
    assert await store.count("comparisons") == 1
    assert await store.evidence() == {TASK: {AGENT: Evidence(TASK, AGENT, 1, 0, 1, 0)}}


async def test_re_putting_the_same_comparison_is_not_a_reversal(
    store: Store, clock: FakeClock
) -> None:
    """Two joiner passes that raced over the same ready pair write the same comparison
    (same outcome_hash) twice. Nothing was reversed: no Reversal, no audit row."""
    await store.put_events([ev()], source="t", now=clock())
    await store.put_decisions([(dec(), TASK)], now=clock())
    await store.put_outcomes([oc()], source="t", now=clock())
    [row] = await store.ready_pairs()
    comparison = compared(row)
    assert await store.put_comparisons([comparison], now=clock()) == []
    assert await store.put_comparisons([comparison], now=clock()) == []
    assert await store.audit_log() == []
    assert await store.evidence() == {TASK: {AGENT: Evidence(TASK, AGENT, 1, 1, 0, 0)}}


async def test_put_comparisons_is_an_upsert_where_the_last_of_a_batch_wins(
    store: Store, clock: FakeClock
) -> None:
    """Upsert semantics: of two comparisons for one (event_id, agent_version) in one batch
    the later is stored (DuckDB's INSERT OR REPLACE keeps the *first* duplicate of a single
    statement, so the store must de-duplicate the batch itself)."""
    first = _cmp("e1", Verdict.AGREE, version=AGENT)
    second = _cmp("e1", Verdict.DISAGREE, version=AGENT, critical=True)
    await store.put_comparisons([first, second], now=clock())
    assert await store.count("comparisons") == 1
    assert await store.evidence() == {TASK: {AGENT: Evidence(TASK, AGENT, 1, 0, 1, 0)}}


async def test_ready_pairs_filters_by_event_ids_and_limits(store: Store, clock: FakeClock) -> None:
    ids = [f"e{i}" for i in range(5)]
    await store.put_events([ev(i) for i in ids], source="t", now=clock())
    # decisions arrive in a different order than the events: ready_pairs follows decisions
    order = ["e3", "e0", "e4", "e1", "e2"]
    for i in order:
        await store.put_decisions([(dec(i), TASK)], now=clock())
    await store.put_decisions([(dec("e3", version="v2"), TASK)], now=clock())
    await store.put_outcomes([oc(i) for i in ids], source="t", now=clock())

    def keys(rows: list[JoinRow]) -> list[tuple[str, str]]:
        return [(r.decision.event_id, r.decision.agent_version) for r in rows]

    everything = [(i, AGENT) for i in order] + [("e3", "v2")]
    assert keys(await store.ready_pairs()) == everything
    assert keys(await store.ready_pairs(limit=2)) == everything[:2]
    assert keys(await store.ready_pairs(["e3", "e1", "nope"])) == [
        ("e3", AGENT),
        ("e1", AGENT),
        ("e3", "v2"),
    ]
    assert keys(await store.ready_pairs(["e4"], limit=1)) == [("e4", AGENT)]
    assert await store.ready_pairs([]) == []
    assert await store.ready_pairs(["nope"]) == []


# ---------------------------------------------------------------- 6. expiry

TTL = timedelta(hours=24)


async def _event_with_decision(store: Store, event_id: str, now: datetime) -> None:
    await store.put_events([ev(event_id)], source="t", now=now)
    await store.put_decisions([(dec(event_id), TASK)], now=now)


async def test_expire_closes_old_decisions_without_outcome(store: Store, clock: FakeClock) -> None:
    await _event_with_decision(store, "old", clock())
    await _event_with_decision(store, "answered", clock())
    await store.put_outcomes([oc("answered")], source="t", now=clock())
    clock.advance(hours=23)
    await _event_with_decision(store, "young", clock())
    clock.advance(hours=2)
    assert await store.pending() == {
        "awaiting_outcome": 2,
        "awaiting_event": 0,
        "awaiting_agent": 0,
    }

    assert await store.expire(now=clock(), ttl=TTL) == (1, 0)
    assert sql(store, "SELECT event_id, verdict, outcome_hash FROM comparisons") == [
        ("old", "expired", None)
    ]
    assert await store.pending() == {
        "awaiting_outcome": 1,
        "awaiting_event": 0,
        "awaiting_agent": 0,
    }
    # the agreement view counts it as expired, not in n
    assert agreement_rows(store) == [(TASK, AGENT, 0, 0, 0, 0, 1)]
    assert await store.evidence() == {TASK: {AGENT: Evidence(TASK, AGENT, 0, 0, 0, 0)}}
    # idempotent
    assert await store.expire(now=clock(), ttl=TTL) == (0, 0)
    # exactly at the TTL is not older than the TTL
    clock.advance(hours=22)
    assert await store.expire(now=clock(), ttl=TTL) == (0, 0)
    clock.advance(seconds=1)
    assert await store.expire(now=clock(), ttl=TTL) == (1, 0)
    assert agreement_rows(store) == [(TASK, AGENT, 0, 0, 0, 0, 2)]


async def test_orphan_outcomes_are_flagged_and_leave_pending(
    store: Store, clock: FakeClock
) -> None:
    await store.put_outcomes([oc("ghost")], source="t", now=clock())
    clock.advance(hours=12)
    await store.put_outcomes([oc("young-ghost")], source="t", now=clock())
    assert (await store.pending())["awaiting_event"] == 2
    clock.advance(hours=13)
    assert await store.expire(now=clock(), ttl=TTL) == (0, 1)
    assert (await store.pending())["awaiting_event"] == 1
    assert await store.expire(now=clock(), ttl=TTL) == (0, 0)
    assert await store.count("outcomes") == 2  # flagged, not deleted
    # the event finally arrives: the join still completes
    await _event_with_decision(store, "ghost", clock())
    [row] = await store.ready_pairs()
    assert row.outcome.event_id == "ghost"


async def test_a_late_outcome_recompares_an_expired_join_without_a_reversal(
    store: Store, clock: FakeClock
) -> None:
    await _event_with_decision(store, "late", clock())
    clock.advance(days=2)
    assert await store.expire(now=clock(), ttl=TTL) == (1, 0)
    assert await store.ready_pairs() == []

    late = oc("late", decided_at=at(60 * 47))
    assert await store.put_outcomes([late], source="t", now=clock()) == [PutResult("late", STORED)]
    [row] = await store.ready_pairs()
    assert row == JoinRow(TASK, dec("late"), late, late.content_hash)
    assert await store.put_comparisons([compared(row)], now=clock()) == []
    assert await store.audit_log() == []
    assert await store.ready_pairs() == []
    assert agreement_rows(store) == [(TASK, AGENT, 1, 1, 0, 0, 0)]
    assert await store.count("comparisons") == 1
    assert await store.expire(now=clock() + TTL * 3, ttl=TTL) == (0, 0)


# ---------------------------------------------------------------- 7. evidence


async def test_evidence_counts_exactly(store: Store, clock: FakeClock) -> None:
    a, d, err, exp = Verdict.AGREE, Verdict.DISAGREE, Verdict.AGENT_ERROR, Verdict.EXPIRED
    comparisons = [
        _cmp("1", a),
        _cmp("2", a),
        _cmp("3", a),
        _cmp("4", d),
        _cmp("5", d, critical=True),
        _cmp("6", d, critical=True),
        _cmp("7", err),
        _cmp("8", err),
        _cmp("9", exp),
        _cmp("1", a, version="v2"),
        _cmp("2", exp, version="v2"),
        _cmp("i1", d, task="invoice_match", critical=True),
    ]
    assert await store.put_comparisons(comparisons, now=clock()) == []
    assert await store.evidence() == {
        TASK: {
            "v1": Evidence(TASK, "v1", n=8, agree=3, critical=2, errors=2),
            "v2": Evidence(TASK, "v2", n=1, agree=1, critical=0, errors=0),
        },
        "invoice_match": {"v1": Evidence("invoice_match", "v1", 1, 0, 1, 0)},
    }
    assert agreement_rows(store) == [
        ("invoice_match", "v1", 1, 0, 1, 0, 0),
        (TASK, "v1", 8, 3, 2, 2, 1),
        (TASK, "v2", 1, 1, 0, 0, 1),
    ]


async def test_evidence_of_an_empty_store(store: Store) -> None:
    assert await store.evidence() == {}
    assert await store.current_versions() == {}


async def test_current_versions_follow_the_newest_decision(store: Store, clock: FakeClock) -> None:
    await store.put_decisions([(dec("1", version="v1"), TASK)], now=clock())
    await store.put_decisions([(dec("2", version="v2"), TASK)], now=clock())
    await store.put_decisions([(dec("3", version="w1"), "invoice_match")], now=clock())
    assert await store.current_versions() == {TASK: "v2", "invoice_match": "w1"}
    await store.put_decisions(
        [(dec("3", version="v1"), TASK), (dec("4", version="v3"), TASK)], now=clock()
    )
    assert await store.current_versions() == {TASK: "v3", "invoice_match": "w1"}
    # a duplicate is not a newer decision
    await store.put_decisions([(dec("1", version="v1"), TASK)], now=clock())
    assert await store.current_versions() == {TASK: "v3", "invoice_match": "w1"}


# ---------------------------------------------------------------- 8. autonomy

POLICY = parse_policy(
    """
task_types:
  refund_request:
    autonomy:
      start: L0
      ceiling: L3
      mode: propose
      gates:
        L1: {agreement: 0.50, min_samples: 5}
        L2: {agreement: 0.60, min_samples: 10}
        L3: {agreement: 0.70, min_samples: 20, max_critical: 0}
  invoice_match:
    autonomy:
      ceiling: L2
      mode: auto
      gates:
        L1: {agreement: 0.50, min_samples: 5}
        L2: {agreement: 0.60, min_samples: 10}
""",
    source="test-policy.yaml",
)


def _task(name: str) -> TaskPolicy:
    task = POLICY.for_task(name)
    assert task is not None
    return task


def _norm(state: LadderState) -> LadderState:
    """``state`` as it reads back: Snapshot.to_json rounds bounds to 6 digits, so a
    Proposal's evidence is lossy through JSON (a promotion.py property, not the store's)."""
    if state.proposal is None:
        return state
    return replace(state, proposal=Proposal.from_json(state.proposal.to_json()))


async def test_apply_steps_persists_states_and_audits_changes(
    store: Store, clock: FakeClock
) -> None:
    refund, invoice = _task(TASK), _task("invoice_match")
    strong = {AGENT: Evidence(TASK, AGENT, n=200, agree=199)}
    weak = {AGENT: Evidence("invoice_match", AGENT, n=3, agree=3)}
    assert await store.ladder_states() == {}

    t1 = clock.advance(minutes=1)
    propose = promotion.decide(
        LadderState(TASK, Level.L0, AGENT), strong, AGENT, refund, frozen=False, now=t1
    )
    stay = promotion.decide(
        LadderState("invoice_match", Level.L0, AGENT), weak, AGENT, invoice, frozen=False, now=t1
    )
    assert propose.move is Move.PROPOSE
    assert stay.move is Move.STAY
    await store.apply_steps([stay, propose, stay], actor="promoter")
    states = await store.ladder_states()
    assert states == {TASK: _norm(propose.after)}
    proposal = states[TASK].proposal
    assert proposal is not None
    assert proposal.to_level is Level.L1
    assert proposal.agent_version == AGENT
    assert proposal.proposed_at == t1
    assert proposal.evidence.n == 200
    assert proposal.evidence.policy_hash == refund.hash
    assert states[TASK].updated_at == t1

    t2 = clock.advance(minutes=1)
    approved = moves.approve(
        states[TASK],
        ProposalRef(proposal.id),
        strong,
        AGENT,
        refund,
        frozen=False,
        now=t2,
        actor="ops/jane",
    )
    t3 = clock.advance(minutes=1)
    manual = moves.manual_set(
        LadderState("invoice_match", Level.L0),
        Level.L2,
        weak,
        AGENT,
        invoice,
        frozen=False,
        now=t3,
        reason="ops: pilot approved by J. Doe",
    )
    await store.apply_steps([approved, manual], actor="ops/jane")
    assert await store.ladder_states() == {
        TASK: LadderState(TASK, Level.L1, AGENT, None, t2, approved.after.decided),
        "invoice_match": LadderState("invoice_match", Level.L2, AGENT, None, t3),
    }
    decided = (await store.ladder_states())[TASK].decided
    assert decided is not None
    assert (decided.proposal_id, decided.actor, decided.n) == (proposal.id, "ops/jane", 200)

    log = await store.audit_log()
    assert [entry.action for _id, entry in log] == ["manual_set", "approve", "propose"]
    ids = [i for i, _entry in log]
    assert ids == sorted(ids, reverse=True)
    expected = [
        (manual, "ops/jane", invoice),
        (approved, "ops/jane", refund),
        (propose, "promoter", refund),
    ]
    for (_id, entry), (step, actor, task) in zip(log, expected, strict=True):
        assert entry == AuditEntry(
            at=step.after.updated_at or T0,
            task_type=step.after.task_type,
            actor=actor,
            action=step.move.value,
            from_level=step.before.level,
            to_level=step.after.level,
            reason=step.reason,
            evidence=step.evidence.to_json(),
            policy_hash=task.hash,
        )
        assert entry.policy_hash
    assert [e.from_level for _i, e in log] == [Level.L0, Level.L0, Level.L0]
    assert [e.to_level for _i, e in log] == [Level.L2, Level.L1, Level.L0]

    # filtering, order and limit
    refund_log = await store.audit_log(task_type=TASK)
    assert [e.action for _i, e in refund_log] == ["approve", "propose"]
    assert [e.action for _i, e in await store.audit_log(task_type=TASK, limit=1)] == ["approve"]
    assert await store.audit_log(task_type="nope") == []
    assert [e.action for _i, e in await store.audit_log(limit=2)] == ["manual_set", "approve"]


async def test_stay_steps_write_nothing(store: Store, clock: FakeClock) -> None:
    stay = promotion.decide(
        LadderState(TASK, Level.L0, AGENT), {}, AGENT, _task(TASK), frozen=False, now=clock()
    )
    assert stay.move is Move.STAY
    await store.apply_steps([stay, stay], actor="promoter")
    await store.apply_steps([], actor="promoter")
    assert await store.ladder_states() == {}
    assert await store.audit_log() == []
    assert await store.count("autonomy") == 0
    assert not await store.is_frozen()


async def test_frozen_flag_round_trips_with_the_freeze_steps(
    store: Store, clock: FakeClock
) -> None:
    refund = _task(TASK)
    assert await store.is_frozen() is False
    l2 = LadderState(TASK, Level.L2, AGENT, None, T0)
    await store.apply_steps(
        [
            moves.manual_set(
                LadderState(TASK, Level.L0),
                Level.L2,
                {},
                AGENT,
                refund,
                frozen=False,
                now=T0,
                reason="seed",
            )
        ],
        actor="ops",
    )
    frozen_step = moves.freeze(
        l2, {}, AGENT, refund, now=clock.advance(minutes=1), reason="incident 42"
    )
    await store.apply_steps([frozen_step], actor="ops/oncall", frozen=True)
    assert await store.is_frozen() is True
    assert (await store.ladder_states())[TASK].level is Level.L0
    [(_i, entry), _seed] = await store.audit_log()
    assert (entry.action, entry.actor, entry.reason) == ("freeze", "ops/oncall", "incident 42")
    assert (entry.from_level, entry.to_level) == (Level.L2, Level.L0)

    # setting the flag again is idempotent and audits nothing by itself
    await store.apply_steps([], actor="ops", frozen=True)
    assert await store.is_frozen() is True
    unfreeze = moves.unfreeze(
        (await store.ladder_states())[TASK],
        {},
        AGENT,
        refund,
        now=clock.advance(minutes=1),
        reason="resolved",
    )
    await store.apply_steps([unfreeze], actor="ops/oncall", frozen=False)
    assert await store.is_frozen() is False
    assert len(await store.audit_log()) == 3


async def test_frozen_flag_and_states_survive_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.duckdb"
    refund = _task(TASK)
    strong = {AGENT: Evidence(TASK, AGENT, n=200, agree=199)}
    propose = promotion.decide(
        LadderState(TASK, Level.L0, AGENT), strong, AGENT, refund, frozen=False, now=clock()
    )
    async with Store(path) as store:
        await store.apply_steps([propose], actor="promoter", frozen=True)
    async with Store(path) as store:
        assert await store.is_frozen() is True
        assert await store.ladder_states() == {TASK: _norm(propose.after)}
        assert [e.action for _i, e in await store.audit_log()] == ["propose"]


async def test_a_step_without_a_time_is_refused_atomically(store: Store, clock: FakeClock) -> None:
    good = moves.manual_set(
        LadderState(TASK, Level.L0),
        Level.L1,
        {},
        AGENT,
        _task(TASK),
        frozen=False,
        now=clock(),
        reason="x",
    )
    timeless = Step(
        Move.MANUAL_SET,
        LadderState(TASK, Level.L0),
        LadderState(TASK, Level.L2),
        "no time",
        good.evidence,
    )
    with pytest.raises(ValueError, match="carries no time"):
        await store.apply_steps([good, timeless], actor="ops", frozen=True)
    assert await store.ladder_states() == {}
    assert await store.audit_log() == []
    assert await store.is_frozen() is False


# ---------------------------------------------------------------- 9. kill -9 and reopen


class _Acks:
    """What one worker run acknowledged: the last acked index per kind, and the tallies."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.lines: list[tuple[str, int, dict[str, int]]] = []


async def _run_worker_and_kill(db: Path, *, until: int) -> _Acks:
    """Start the worker, read acks until it has acked outcomes up to index ``until`` or
    beyond, then SIGKILL it (it never stops on its own)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(store_worker.__file__)),
        str(db),
        "50",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    acks = _Acks()
    try:
        while acks.last.get("outcome", -1) < until:
            line = (await proc.stdout.readline()).decode()
            if not line:
                break
            word, kind, last, *tally = line.split()
            assert word == "acked"
            counts = {k: int(v) for k, v in (t.split("=") for t in tally)}
            acks.last[kind] = int(last)
            acks.lines.append((kind, int(last), counts))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        _out, err = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert acks.last.get("outcome", -1) >= until, err.decode()[-2000:]
    return acks


async def _assert_acked_present(db: Path, acks: _Acks) -> None:
    async with Store(db) as store:
        for kind, table in (
            ("event", "events"),
            ("decision", "decisions"),
            ("outcome", "outcomes"),
        ):
            rows = sql(store, f"SELECT event_id, count(*) FROM {table} GROUP BY event_id")
            per_id = dict(rows)
            assert all(n == 1 for n in per_id.values()), f"{table}: a record stored twice"
            last = acks.last[kind]
            missing = [i for i in range(last + 1) if f"ev-{i:07d}" not in per_id]
            assert missing == [], f"acked {kind}s lost after kill -9: {missing[:10]}"


@pytest.mark.slow  # kill -9 of a writer process
async def test_kill_9_loses_no_acknowledged_record_and_resend_is_idempotent(
    tmp_path: Path,
) -> None:
    db = tmp_path / "killed.duckdb"
    # run 1: killed after a few batches
    first = await _run_worker_and_kill(db, until=199)
    assert all(c["conflict"] == 0 and c["other"] == 0 for _k, _l, c in first.lines)
    # run 2 re-sends from index 0 over the un-checkpointed WAL of run 1 and is killed after
    # it has written past run 1: everything run 1 acked reads back as a duplicate
    second = await _run_worker_and_kill(db, until=first.last["outcome"] + 250)
    for kind, last, counts in second.lines:
        assert counts["conflict"] == 0, (kind, last, counts)
        assert counts["other"] == 0, (kind, last, counts)
        if last <= first.last[kind]:
            assert counts == {"stored": 0, "duplicate": 50, "conflict": 0, "other": 0}, (
                kind,
                last,
            )
    await _assert_acked_present(db, second)

    # re-send everything up to the highest index either run may have written
    top = max(second.last.values()) + 50
    idx = range(top + 1)
    async with Store(db) as store:
        results = [
            *await store.put_events([store_worker.event(i) for i in idx], source="t", now=T0),
            *await store.put_decisions(
                [(store_worker.decision(i), store_worker.task_type(i)) for i in idx], now=T0
            ),
            *await store.put_outcomes([store_worker.outcome(i) for i in idx], source="t", now=T0),
        ]
        statuses = Counter(r.status for r in results)
        assert set(statuses) <= {STORED, DUPLICATE}, statuses
        for table in ("events", "decisions", "outcomes"):
            assert await store.count(table) == len(idx), table
        assert await store.dead_letters() == []
        # the stored content is the worker's, byte for byte through the join
        [row] = await store.ready_pairs(["ev-0000007"])
        assert row.decision == store_worker.decision(7)
        assert row.outcome == store_worker.outcome(7)


# ---------------------------------------------------------------- 10. bad data at the boundary


async def test_a_one_megabyte_payload_round_trips(store: Store, clock: FakeClock) -> None:
    blob = "".join(chr(0x20 + i % 90) for i in range(1_000_000))
    big = ev("big", {"blob": blob, "list": list(range(1000)), "nested": {"x": [blob[:10]]}})
    assert await store.put_events([big], source="t", now=clock()) == [PutResult("big", STORED)]
    assert await store.put_events([big], source="t", now=clock()) == [PutResult("big", DUPLICATE)]
    assert await store.events_awaiting_agent() == [big]
    big_decision = replace(dec("big"), decision={"action": "approve", "note": blob})
    big_outcome = replace(oc("big"), decision={"action": "approve", "note": blob})
    await store.put_decisions([(big_decision, TASK)], now=clock())
    await store.put_outcomes([big_outcome], source="t", now=clock())
    [row] = await store.ready_pairs()
    assert row.decision == big_decision
    assert row.outcome == big_outcome


UNICODE_IDS = ["é✓😀-中文-ב", "nul\x00inside", "tab\tand\nnewline", " ", "'; DROP TABLE events;--"]


@pytest.mark.parametrize("event_id", UNICODE_IDS)
async def test_unicode_and_nul_round_trip(store: Store, clock: FakeClock, event_id: str) -> None:
    payload = {"text\x00key": "a\x00b", "emoji": "😀\u200d", "rtl": "עברית", "ctrl": "\x01\x7f"}
    event = ev(event_id, payload)
    decision = replace(dec(event_id), decision={"action": "ok\x00", "why": "😀"})
    outcome = replace(oc(event_id), decision={"action": "ok\x00", "why": "😀"})
    assert await store.put_events([event], source="t", now=clock()) == [PutResult(event_id, STORED)]
    assert await store.events_awaiting_agent() == [event]
    await store.put_decisions([(decision, TASK)], now=clock())
    await store.put_outcomes([outcome], source="t", now=clock())
    [row] = await store.ready_pairs([event_id])
    assert (row.decision, row.outcome) == (decision, outcome)
    await store.put_comparisons([compared(row)], now=clock())
    assert await store.evidence() == {TASK: {AGENT: Evidence(TASK, AGENT, 1, 1, 0, 0)}}
    assert await store.put_events([event], source="t", now=clock()) == [
        PutResult(event_id, DUPLICATE)
    ]
    bad = replace(event, payload={"other": True})
    [res] = await store.put_events([bad], source="t", now=clock())
    assert res.status is CONFLICT
    [letter] = await store.dead_letters()
    assert letter["event_id"] == event_id
    assert json.loads(letter["raw"]) == bad.to_json()


async def test_empty_batches_are_no_ops(store: Store, clock: FakeClock) -> None:
    assert await store.put_events([], source="t", now=clock()) == []
    assert await store.put_events([], source="t", now=clock(), needs_agent=[]) == []
    assert await store.put_outcomes([], source="t", now=clock()) == []
    assert await store.put_decisions([], now=clock()) == []
    assert await store.put_comparisons([], now=clock()) == []
    await store.put_dead_letters([], now=clock())
    await store.apply_steps([], actor="x")
    for table in (
        "events",
        "outcomes",
        "decisions",
        "comparisons",
        "dead_letters",
        "audit_log",
        "autonomy",
    ):
        assert await store.count(table) == 0, table
    pending = await store.pending()
    assert (pending["awaiting_outcome"], pending["awaiting_event"]) == (0, 0)


async def test_count_refuses_unknown_tables(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        await store.count("schema_version; DROP TABLE events")


async def test_put_dead_letters_keeps_every_field(store: Store, clock: FakeClock) -> None:
    letters = [
        DeadLetter("file:in.jsonl", "unknown", "line is not JSON", "{oops", None, "line 3"),
        DeadLetter("kafka", "event", "payload: required", '{"event_id":"x"}', "x", "p0@17"),
    ]
    await store.put_dead_letters(letters, now=clock())
    got = await store.dead_letters()
    assert [
        DeadLetter(g["source"], g["kind"], g["reason"], g["raw"], g["event_id"], g["location"])
        for g in reversed(got)
    ] == letters
    assert [g["recorded_at"] for g in got] == [clock(), clock()]
    assert [d["kind"] for d in await store.dead_letters(limit=1)] == ["event"]


async def test_schema_v6_keeps_states_and_proposals_stored_before_ids(tmp_path: Path) -> None:
    """A v5 store with a pending proposal (stored without id or from level) opened by this
    version: the state and proposal read back, the proposal gets the id its content
    derives, and nothing was decided on it yet."""
    path = tmp_path / "v5.duckdb"
    proposal = {
        "to_level": "L1",
        "agent_version": AGENT,
        "proposed_at": T0.isoformat(),
        "evidence": {
            "agent_version": AGENT,
            "n": 200,
            "agree": 199,
            "critical": 0,
            "errors": 0,
            "lower": 0.95,
            "upper": 1.0,
            "alpha": 0.05,
            "policy_hash": "h",
        },
    }
    store_file_at(
        path,
        5,
        ("INSERT INTO autonomy VALUES (?, 0, ?, ?, ?)", [TASK, AGENT, json.dumps(proposal), T0]),
    )
    async with Store(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION >= 6
        state = (await store.ladder_states())[TASK]
        assert (state.level, state.agent_version, state.decided) == (Level.L0, AGENT, None)
        assert state.proposal is not None
        assert (state.proposal.from_level, state.proposal.to_level) == (Level.L0, Level.L1)
        assert state.proposal.id == Proposal.from_json(proposal, TASK).id


async def test_a_canary_beside_the_old_version_does_not_flip_the_current_one(
    store: Store, clock: FakeClock
) -> None:
    """Interleaved decisions of the old version and a canary: the canary is current from its
    first decision and stays so while both answer; once it has been silent for
    ACTIVE_WINDOW decisions (rolled back), the old version is current again."""
    from shadow.store.ladder import ACTIVE_WINDOW

    await store.put_decisions([(dec(f"a{i}", version="v1"), TASK) for i in range(20)], now=clock())
    seen = []
    for i in range(40):
        version = "v2" if i % 2 else "v1"
        await store.put_decisions([(dec(f"b{i}", version=version), TASK)], now=clock())
        seen.append((await store.current_versions())[TASK])
    assert seen[0] == "v1"  # before the canary's first decision
    assert set(seen[1:]) == {"v2"}  # no flipping back with each interleaved v1 decision
    rollback = [(dec(f"c{i}", version="v1"), TASK) for i in range(ACTIVE_WINDOW - 1)]
    await store.put_decisions(rollback, now=clock())
    assert (await store.current_versions())[TASK] == "v2"  # v2 still among the last window
    await store.put_decisions([(dec("c-last", version="v1"), TASK)], now=clock())
    assert (await store.current_versions())[TASK] == "v1"


def store_file_at(path: Path, version: int, *rows: tuple[str, list[Any]]) -> None:
    """A DuckDB file at schema ``version`` (the migrations up to it, as a sidecar of that
    version left it), with ``rows`` (SQL, parameters) inserted, for upgrade tests."""
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
        for v, statements in MIGRATIONS:
            if v > version:
                break
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, now())", [v])
        for statement, params in rows:
            con.execute(statement, params)
    finally:
        con.close()
