"""The conflict rule of shadow.store.ingest, field by field, against the table in docs/api.md
("Which fields make a conflict"): every field of a work event and of an outcome is in the
table, and re-delivering a stored record with only that field changed gets the status the
table names. A field added to the model, or a change to what the content hashes cover,
fails here until the table says what it does."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shadow.model import (
    Action,
    Handling,
    Outcome,
    SecondOpinion,
    ShadowDecision,
    Usage,
    WorkEvent,
)
from shadow.store import PutStatus, Store
from tests.conftest import FakeClock
from tests.shadow.test_store import AGENT, TASK, at, dec, oc

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SECTION = "### Which fields make a conflict"
STATUSES = {s.value for s in PutStatus}

EVENT = WorkEvent("e1", TASK, {"amount": 42.5}, at(0), "eu")
OUTCOME = oc(decided_at=at(7), decided_by="ops/jane")
# Another value for each field; the key fields are the identity, not content.
EVENT_CHANGES: dict[str, Any] = {
    "task_type": "invoice_match",
    "payload": {"amount": 43},
    "occurred_at": at(1),
    "segment": "us",
}
OUTCOME_CHANGES: dict[str, Any] = {
    "decision": {"action": "deny", "amount": 0},
    "actions": (Action("issue_refund", {"amount": 40}),),
    "decided_by": "ops/bob",
    "decided_at": at(60),
    "handled_by": Handling.AGENT,
    "second_opinion": SecondOpinion({"action": "deny", "amount": 0}, decided_by="ops/bob"),
    "is_second_opinion": True,
}
# Fields whose change is stored as the event's second opinion, never as an outcome revision.
SECOND_OPINION_FIELDS = {"second_opinion", "is_second_opinion"}


def documented() -> dict[tuple[str, str], str]:
    """``(record, field) -> third column`` of the table under SECTION in docs/api.md."""
    text = API_DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{API_DOC} has no {SECTION!r} section"
    table = text.split(SECTION, 1)[1].split("\n#", 1)[0]
    rows: dict[tuple[str, str], str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("event", "outcome"):
            rows[(cells[0], cells[1].strip("`"))] = cells[2]
    return rows


def status_of(cell: str) -> str | None:
    """The first status the cell names (``None`` for a key field)."""
    named = [w for w in re.findall(r"`([a-z_]+)`", cell) if w in STATUSES]
    return named[0] if named else None


def test_the_table_lists_every_field_of_both_records() -> None:
    rows = documented()
    events = {f.name for f in dataclasses.fields(WorkEvent)}
    outcomes = {f.name for f in dataclasses.fields(Outcome)}
    assert {f for r, f in rows if r == "event"} == events
    assert {f for r, f in rows if r == "outcome"} == outcomes
    assert {f for (r, f), cell in rows.items() if status_of(cell) is None} == {"event_id"}
    assert set(EVENT_CHANGES) == events - {"event_id"}
    assert set(OUTCOME_CHANGES) == outcomes - {"event_id"}


@pytest.mark.parametrize("field", sorted(EVENT_CHANGES))
async def test_an_event_re_sent_with_one_field_changed(
    store: Store, clock: FakeClock, field: str
) -> None:
    expected = status_of(documented()[("event", field)])
    changed = replace(EVENT, **{field: EVENT_CHANGES[field]})
    assert changed != EVENT
    await store.put_events([EVENT], source="t", now=clock())
    [res] = await store.put_events([changed], source="t", now=clock())
    assert res.status.value == expected
    assert await store.events_awaiting_agent() == [EVENT]  # the first version is kept
    assert len(await store.dead_letters()) == (expected == "conflict")


@pytest.mark.parametrize("field", sorted(OUTCOME_CHANGES))
async def test_an_outcome_re_sent_with_one_field_changed(
    store: Store, clock: FakeClock, field: str
) -> None:
    expected = status_of(documented()[("outcome", field)])
    changed = replace(OUTCOME, **{field: OUTCOME_CHANGES[field]})
    assert changed != OUTCOME
    await store.put_outcomes([OUTCOME], source="t", now=clock())
    [res] = await store.put_outcomes([changed], source="t", now=clock())
    assert res.status.value == expected
    revised = expected not in ("duplicate", "conflict") and field not in SECOND_OPINION_FIELDS
    assert await store.count("outcomes") == (2 if revised else 1)
    assert await store.count("second_opinions") == (field in SECOND_OPINION_FIELDS)
    assert len(await store.dead_letters()) == (expected == "conflict")


@pytest.mark.parametrize("field", ["decision", "actions"])
@pytest.mark.parametrize(
    ("first_at", "second_at", "expected"),
    [
        (at(7), at(7), "conflict"),
        (at(7), None, "conflict"),
        (None, None, "conflict"),
        (at(7), at(7).replace("Z", "+00:00"), "conflict"),  # the same instant
        (at(7), at(8), "reversal"),
        (None, at(8), "reversal"),  # any time is later than none
        (at(7), at(6), "superseded"),
    ],
)
async def test_a_changed_decision_or_actions_is_ordered_by_decided_at(
    store: Store,
    clock: FakeClock,
    field: str,
    first_at: str | None,
    second_at: str | None,
    expected: str,
) -> None:
    cell = documented()[("outcome", field)]
    assert f"`{expected}`" in cell, cell
    first = replace(OUTCOME, decided_at=first_at)
    changed = replace(first, **{field: OUTCOME_CHANGES[field], "decided_at": second_at})
    await store.put_outcomes([first], source="t", now=clock())
    [res] = await store.put_outcomes([changed], source="t", now=clock())
    assert res.status.value == expected


async def test_content_is_compared_as_json_values(store: Store, clock: FakeClock) -> None:
    """The details under the table: key order never matters, 1 and 1.0 differ, occurred_at
    is compared as written; no actions equals [], and the order of actions counts."""
    base = WorkEvent("j", TASK, {"a": 1, "b": {"x": [1, 2], "y": "z"}}, at(0))
    await store.put_events([base], source="t", now=clock())
    again = [
        replace(base, payload={"b": {"y": "z", "x": [1, 2]}, "a": 1}),  # key order
        replace(base, payload={"a": 1.0, "b": {"x": [1, 2], "y": "z"}}),  # 1 vs 1.0
        replace(base, payload={"a": 1, "b": {"x": [2, 1], "y": "z"}}),  # list order
        replace(base, occurred_at=at(0).replace("Z", "+00:00")),  # same instant, other text
    ]
    results = await store.put_events(again, source="t", now=clock())
    assert [r.status.value for r in results] == ["duplicate", "conflict", "conflict", "conflict"]

    one, two = Action("issue_refund", {"amount": 1}), Action("notify", {})
    bare = Outcome("k", {"action": "approve"}, decided_at=at(7))
    listed = Outcome("k2", {"action": "approve"}, (one, two), decided_at=at(7))
    await store.put_outcomes([bare, listed], source="t", now=clock())
    parsed = Outcome.from_json({"event_id": "k", "decision": {"action": "approve"}, "actions": []})
    no_args = Outcome.from_json(
        {
            "event_id": "k2",
            "decision": {"action": "approve"},
            "actions": [{"tool": "issue_refund", "args": {"amount": 1}}, {"tool": "notify"}],
            "decided_at": at(7),
        }
    )
    results = await store.put_outcomes(
        [parsed, no_args, replace(listed, actions=(two, one))], source="t", now=clock()
    )
    assert [r.status.value for r in results] == ["duplicate", "duplicate", "conflict"]


async def test_an_outcome_equal_to_an_older_revision_is_a_duplicate(
    store: Store, clock: FakeClock
) -> None:
    first = oc(action="approve", decided_at=at(7))
    await store.put_outcomes([first, oc(action="deny", decided_at=at(9))], source="t", now=clock())
    results = await store.put_outcomes(
        [first, replace(first, decided_at=None), replace(first, decided_at=at(8))],
        source="t",
        now=clock(),
    )
    # the same time or none: that revision again; another time: a new revision (superseded)
    assert [r.status.value for r in results] == ["duplicate", "duplicate", "superseded"]


async def test_an_agent_answer_conflicts_on_decision_actions_and_error_only(
    store: Store, clock: FakeClock
) -> None:
    base = dec("d")
    await store.put_decisions([(base, TASK)], now=clock())
    not_content = [
        replace(base, confidence=0.1),
        replace(base, usage=Usage(1, 1, 9.0)),
        replace(base, latency_ms=9999.0),
    ]
    content = [
        replace(base, decision={"action": "deny"}),
        replace(base, actions=()),
        ShadowDecision.failed("d", AGENT, "HTTP 500"),
    ]
    results = await store.put_decisions([(d, TASK) for d in not_content + content], now=clock())
    assert [r.status.value for r in results] == ["duplicate"] * 3 + ["conflict"] * 3
