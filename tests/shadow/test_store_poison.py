"""No store batch can be poisoned by one row (shadow.store.base ``_write_batch``), against
real DuckDB: every batch writer, given good rows mixed with rows holding arbitrary text
(lone surrogates, NUL, control characters...), stores every row it can, dead-letters each
row it cannot with the reason, counts it, and never raises. Dead letters, audit entries and
outbox rows keep a lone surrogate as its escape instead of failing. A failure of the store
itself is still raised, and no row is dead-lettered for it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadow import moves
from shadow.errors import StoreError
from shadow.model import (
    Action,
    AuditEntry,
    Comparison,
    Evidence,
    FieldResult,
    Handling,
    Level,
    Outcome,
    ShadowDecision,
    Verdict,
    WorkEvent,
)
from shadow.promotion import LadderState
from shadow.store import DeadLetter, PutStatus, Routed, Store, ToolCallRow
from tests.conftest import FakeClock
from tests.shadow.test_store import AGENT, TASK, _task

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

# Any text, with surrogates (Cs) and control characters (Cc) drawn often; and clean text.
ANY_TEXT = st.text(
    alphabet=st.one_of(st.characters(codec=None), st.characters(categories=["Cs", "Cc"])),
    max_size=10,
)
CLEAN_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=10)


def unstorable(text: str) -> bool:
    """Whether DuckDB cannot hold ``text`` (a lone surrogate has no UTF-8 form)."""
    return any("\ud800" <= c <= "\udfff" for c in text)


# One row of a batch: the text, and which of the row's fields holds it.
RowSpec = tuple[str, int]
ROWS = st.lists(
    st.tuples(st.one_of(CLEAN_TEXT, ANY_TEXT), st.integers(0, 4)), min_size=1, max_size=12
)


def _event(eid: str, text: str, where: int) -> WorkEvent:
    payload: dict[str, Any] = {"amount": 1}
    segment = None
    if where == 0:
        eid += text
    elif where == 1:
        segment = text
    elif where == 2:
        payload["note"] = text
    else:
        payload[text] = [text]
    return WorkEvent(eid, TASK, payload, None, segment)


def _outcome(eid: str, text: str, where: int) -> Outcome:
    decision: dict[str, Any] = {"action": "approve"}
    actions = (Action("issue_refund", {"amount": 1}),)
    decided_by = "ops/jane"
    if where == 0:
        eid += text
    elif where == 1:
        decision["note"] = text
    elif where == 2:
        decision[text] = 1
    elif where == 3:
        decided_by = text
    else:
        actions = (Action("issue_refund", {"memo": text}),)
    return Outcome(eid, decision, actions, decided_by)


def _decision(eid: str, text: str, where: int) -> tuple[ShadowDecision, str]:
    version, decision, error = AGENT, {"action": "approve"}, None
    task = TASK
    if where == 0:
        eid += text
    elif where == 1:
        version = text
    elif where == 2:
        decision = {"action": text}
    elif where == 3:
        return ShadowDecision.failed(eid, version, f"agent said {text}"), task
    else:
        task = text
    return ShadowDecision(eid, version, decision, error=error), task


def _comparison(eid: str, text: str, where: int) -> Comparison:
    version, task, reason = AGENT, TASK, ""
    if where == 0:
        eid += text
    elif where == 1:
        version = text
    elif where == 2:
        task = text
    else:
        reason = text
    field = FieldResult("action", "exact", False, True, reason)
    return Comparison(eid, task, version, Verdict.DISAGREE, (field,), True, "h")


def _call(eid: str, text: str, where: int) -> ToolCallRow:
    tool, error = "issue_refund", None
    args: dict[str, Any] = {"amount": 1}
    if where == 0:
        eid += text
    elif where == 1:
        tool = text
    elif where == 2:
        args = {"memo": text}
    elif where == 3:
        args = {text: 1}
    else:
        error = text
    return ToolCallRow(T0, TASK, eid, True, "L0", tool, "bo", "write", "captured", 1.0, error, args)


def _routed(eid: str, text: str, where: int) -> Routed:
    task = TASK
    if where in (0, 2, 4):
        eid += text
    else:
        task = text
    return Routed(eid, task, Handling.AGENT, Level.L3, T0)


async def _put(store: Store, writer: str, ids: list[str], specs: list[RowSpec]) -> list[bool]:
    """Write one batch with ``writer``; for each row, whether the writer reports it stored
    (``None`` entries: writers that report nothing per row)."""
    rows = list(zip(ids, specs, strict=True))
    if writer == "events":
        events = [_event(i, t, w) for i, (t, w) in rows]
        put = await store.put_events(events, source="test", now=T0)
        return [r.status is PutStatus.STORED for r in put]
    if writer == "outcomes":
        outcomes = [_outcome(i, t, w) for i, (t, w) in rows]
        put = await store.put_outcomes(outcomes, source="test", now=T0)
        return [r.status is PutStatus.STORED for r in put]
    if writer == "decisions":
        put = await store.put_decisions([_decision(i, t, w) for i, (t, w) in rows], now=T0)
        return [r.status is PutStatus.STORED for r in put]
    if writer == "comparisons":
        await store.put_comparisons([_comparison(i, t, w) for i, (t, w) in rows], now=T0)
    elif writer == "handling":
        routed = [_routed(i, t, w) for i, (t, w) in rows]
        _, aside = await store.put_handling_batch(routed)
        return [r.event_id not in aside for r in routed]
    else:
        await store.put_tool_calls([_call(i, t, w) for i, (t, w) in rows])
    return []


KIND = {
    "events": "event",
    "outcomes": "outcome",
    "decisions": "decision",
    "comparisons": "comparison",
    "tool_calls": "tool_call",
    "handling": "handling",
}


@pytest.mark.parametrize("writer", list(KIND))
def test_one_row_never_poisons_a_batch(writer: str) -> None:
    """Good rows are stored, each unstorable one is dead-lettered with its reason and
    counted, the writer never raises; one store for every example (ids never repeat)."""
    with asyncio.Runner() as runner:
        store = runner.run(Store(":memory:").open())
        counted: list[tuple[str, int]] = []
        store.observe_set_aside(lambda table, n: counted.append((table, n)))
        batches = itertools.count()

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(specs=ROWS)
        def check(specs: list[RowSpec]) -> None:
            n = next(batches)
            ids = [f"b{n}-{i}-" for i in range(len(specs))]
            bad = [unstorable(text) for text, _ in specs]
            before = runner.run(store.count(writer)), runner.run(store.count("dead_letters"))
            counted.clear()
            stored = runner.run(_put(store, writer, ids, specs))
            after = runner.run(store.count(writer)), runner.run(store.count("dead_letters"))
            if stored:
                assert stored == [not b for b in bad]
            assert after[0] - before[0] == bad.count(False)
            assert after[1] - before[1] == bad.count(True)
            assert counted == [(writer, 1)] * bad.count(True)
            letters = runner.run(store.dead_letters(limit=max(1, bad.count(True))))
            for letter in letters[: bad.count(True)]:
                assert letter["kind"] == KIND[writer]
                assert letter["reason"].startswith(f"could not be stored in {writer}: ")
                assert "surrogate" in letter["reason"]
                assert letter["raw"]
                for text in (letter["reason"], letter["raw"], letter["event_id"] or ""):
                    text.encode()  # stored as valid Unicode: the surrogate as its escape

        try:
            check()
        finally:
            runner.run(store.close())


async def test_an_unstorable_decision_no_longer_waits_for_the_agent(store: Store) -> None:
    await store.put_events([WorkEvent("e1", TASK, {"amount": 1})], source="test", now=T0)
    assert await store.awaiting_agent() == 1
    bad = ShadowDecision("e1", AGENT, {"note": "\ud800"})
    good = ShadowDecision("e2", AGENT, {"note": "fine"})
    put = await store.put_decisions([(bad, TASK), (good, TASK)], now=T0)
    assert [r.status for r in put] == [PutStatus.UNSTORABLE, PutStatus.STORED]
    assert "surrogate" in put[0].reason
    assert await store.awaiting_agent() == 0  # asking the agent again would fail the same way
    (letter,) = await store.dead_letters()
    assert (letter["kind"], letter["source"], letter["event_id"]) == ("decision", "agent", "e1")
    assert "\\ud800" in letter["raw"]


async def test_dead_letters_keep_a_lone_surrogate_as_its_escape(store: Store) -> None:
    letter = DeadLetter(
        "kafka", "event", "bad \ud800 text", '{"x": "\udc80"}', "e\ud800", "t[0]@\udfff"
    )
    await store.put_dead_letters([letter], now=T0)
    (kept,) = await store.dead_letters()
    assert kept["reason"] == "bad \\ud800 text"
    assert kept["raw"] == '{"x": "\\udc80"}'
    assert kept["event_id"] == "e\\ud800"
    assert kept["location"] == "t[0]@\\udfff"


async def test_an_audit_entry_and_its_outbox_row_keep_a_lone_surrogate_as_its_escape(
    store: Store, clock: FakeClock
) -> None:
    refund = _task(TASK)
    strong = {AGENT: Evidence(TASK, AGENT, n=200, agree=199)}
    state = LadderState(TASK, Level.L1, AGENT)
    freeze = moves.freeze(
        state, strong, AGENT, refund, now=clock.advance(seconds=1), reason="incident \ud800 7"
    )
    await store.apply_steps([freeze], actor="ops/\udcff", frozen=True)
    assert await store.is_frozen()
    ((_, entry),) = await store.audit_log()
    assert (entry.actor, entry.reason) == ("ops/\\udcff", "incident \\ud800 7")
    ((_, record),) = await store.unpublished_changes()
    assert record["actor"] == "ops/\\udcff"
    assert "incident \\ud800 7" in record["reason"]
    epoch = AuditEntry(
        at=T0,
        task_type=TASK,
        actor="start",
        action="evidence_epoch",
        from_level=None,
        to_level=None,
        reason="rules \udc00",
        evidence={"note \ud800": ["\udfff"]},
    )
    await store.set_epoch(TASK, {"epoch": 2}, epoch)
    newest = (await store.audit_log())[0][1]
    assert newest.reason == "rules \\udc00"
    assert newest.evidence == {"note \\ud800": ["\\udfff"]}


async def test_a_failing_store_is_raised_and_sets_no_row_aside(store: Store) -> None:
    """Not a row's fault (here a table gone): raised for the caller to retry; nothing is
    dead-lettered or counted."""
    counted: list[tuple[str, int]] = []
    store.observe_set_aside(lambda table, n: counted.append((table, n)))
    store.con.execute("DROP TABLE tool_calls")
    rows = [_call(f"e{i}", "\ud800" if i == 1 else "", 1) for i in range(3)]
    with pytest.raises(StoreError):
        await store.put_tool_calls(rows)
    assert await store.count("dead_letters") == 0
    assert counted == []


def _writers() -> Iterator[tuple[str, Callable[[Store], Awaitable[Any]]]]:
    """Every batch writer with a batch of three rows, the middle one unstorable."""
    ids = ["w-0", "w-1\ud800", "w-2"]
    yield "events", lambda s: s.put_events([_event(i, "", 2) for i in ids], source="t", now=T0)
    yield (
        "outcomes",
        lambda s: s.put_outcomes([_outcome(i, "", 1) for i in ids], source="t", now=T0),
    )
    yield "decisions", lambda s: s.put_decisions([_decision(i, "", 2) for i in ids], now=T0)
    yield "comparisons", lambda s: s.put_comparisons([_comparison(i, "", 3) for i in ids], now=T0)
    yield "tool_calls", lambda s: s.put_tool_calls([_call(i, "", 1) for i in ids])


@pytest.mark.parametrize(("table", "write"), list(_writers()), ids=[w for w, _ in _writers()])
async def test_every_writer_stores_the_rest_of_a_batch_around_a_lone_surrogate(
    store: Store, table: str, write: Callable[[Store], Awaitable[Any]]
) -> None:
    await write(store)
    assert await store.count(table) == 2
    (letter,) = await store.dead_letters()
    assert letter["event_id"] == "w-1\\ud800"
    assert letter["reason"].startswith(f"could not be stored in {table}: ")
