"""The audit log's hash chain as pure functions (shadow/audit_chain.py): the canonical
encoding, byte for byte, and what a walk names for each kind of break."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shadow.audit_chain import (
    GENESIS,
    ChainEntry,
    ChainWalk,
    canonical_bytes,
    chain_hash,
    verify_chain,
)
from tests.shadow.test_layout import IO_LIBRARIES, SHADOW, imported

T0 = datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=UTC)


def entry(i: int, **changes: object) -> ChainEntry:
    base = ChainEntry(
        id=i,
        recorded_at=T0 + timedelta(seconds=i),
        task_type="refund",
        actor="ops/jane",
        action="manual_set",
        from_level="L0",
        to_level="L1",
        reason=f"step {i}",
        evidence={"n": i, "lower": 0.5},
        policy_hash="p1",
        prev_hash=None,
        entry_hash=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def chained(entries: list[ChainEntry]) -> list[ChainEntry]:
    """``entries`` with their hashes set as the store sets them."""
    out, prev = [], GENESIS
    for e in entries:
        digest = chain_hash(e, prev)
        out.append(replace(e, prev_hash=prev, entry_hash=digest))
        prev = digest
    return out


def test_the_canonical_encoding_byte_for_byte() -> None:
    e = entry(
        7,
        recorded_at=datetime(2026, 1, 2, 5, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
        actor="é\x00\\ud800",
        evidence={"b": [1.5, None, True], "a": {"z": 1, "y": "\u2028"}},
        policy_hash=None,
        from_level=None,
    )
    expected = (
        b'{"action":"manual_set","actor":"\\u00e9\\u0000\\\\ud800",'
        b'"evidence":{"a":{"y":"\\u2028","z":1},"b":[1.5,null,true]},'
        b'"from_level":null,"id":7,"policy_hash":null,"prev_hash":"' + b"ab" * 32 + b'",'
        b'"reason":"step 7","recorded_at":"2026-01-02T03:04:05.000006+00:00",'
        b'"task_type":"refund","to_level":"L1"}'
    )
    assert canonical_bytes(e, "ab" * 32) == expected
    assert chain_hash(e, "ab" * 32) == hashlib.sha256(expected).hexdigest()
    # the hash fields of the entry itself are not part of what is hashed
    assert chain_hash(replace(e, prev_hash="x", entry_hash="y"), "ab" * 32) == chain_hash(
        e, "ab" * 32
    )


def test_a_naive_instant_is_utc_and_the_offset_does_not_change_the_hash() -> None:
    aware = entry(1, recorded_at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    naive = entry(1, recorded_at=datetime(2026, 1, 1, 12, 0))
    shifted = entry(1, recorded_at=datetime(2026, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    assert chain_hash(aware, GENESIS) == chain_hash(naive, GENESIS) == chain_hash(shifted, GENESIS)
    later = entry(1, recorded_at=datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC))
    assert chain_hash(later, GENESIS) != chain_hash(aware, GENESIS)


def test_every_field_and_the_previous_hash_is_covered() -> None:
    e = entry(3)
    digest = chain_hash(e, GENESIS)
    changed = [
        replace(e, id=4),
        replace(e, recorded_at=e.recorded_at + timedelta(microseconds=1)),
        replace(e, task_type="appeal"),
        replace(e, actor="ops/john"),
        replace(e, action="freeze"),
        replace(e, from_level="L2"),
        replace(e, to_level=None),
        replace(e, reason="step 3 "),
        replace(e, evidence={"n": 3, "lower": 0.51}),
        replace(e, policy_hash="p2"),
    ]
    for other in changed:
        assert chain_hash(other, GENESIS) != digest, other
    assert chain_hash(e, "f" * 64) != digest


def test_an_intact_chain_walks_ok_with_its_head() -> None:
    log = chained([entry(i) for i in range(1, 51)])
    state = verify_chain(log)
    assert state.ok
    assert (state.entries, state.head, state.first_bad) == (50, log[-1].entry_hash, None)
    assert state.to_json() == {
        "ok": True,
        "entries": 50,
        "head": log[-1].entry_hash,
        "first_bad": None,
    }


def test_an_empty_log_is_intact_and_its_head_is_the_genesis_value() -> None:
    assert verify_chain([]).to_json() == {
        "ok": True,
        "entries": 0,
        "head": GENESIS,
        "first_bad": None,
    }


def test_pages_walk_as_one() -> None:
    log = chained([entry(i) for i in range(1, 30)])
    log[12] = replace(log[12], reason="edited")
    walk = ChainWalk()
    for start in range(0, len(log), 4):
        walk.feed(log[start : start + 4])
    assert walk.state == verify_chain(log)
    assert walk.last_id == 29


def test_an_id_gap_is_not_a_break() -> None:
    log = chained([entry(i) for i in (1, 2, 5, 6, 40)])
    assert verify_chain(log).ok


@pytest.mark.parametrize(
    ("tamper", "bad_id", "kind"),
    [
        ("edit", 5, "edited"),
        ("remove", 6, "unlinked"),
        ("remove_first", 2, "unlinked"),
        ("rehash", 6, "unlinked"),
        ("null_hash", 5, "missing"),
        ("null_prev", 5, "missing"),
        ("swap", 3, "edited"),
        ("reorder", 5, "unlinked"),
    ],
)
def test_each_break_is_named_at_the_first_entry_that_does_not_match(
    tamper: str, bad_id: int, kind: str
) -> None:
    log = chained([entry(i) for i in range(1, 11)])
    at = {e.id: n for n, e in enumerate(log)}
    if tamper == "edit":
        log[at[5]] = replace(log[at[5]], reason="something else")
    elif tamper == "remove":
        del log[at[5]]
    elif tamper == "remove_first":
        del log[0]
    elif tamper == "rehash":  # edited, and its own hash recomputed: the next link breaks
        e = replace(log[at[5]], to_level="L4")
        log[at[5]] = replace(e, entry_hash=chain_hash(e, e.prev_hash or ""))
    elif tamper == "null_hash":
        log[at[5]] = replace(log[at[5]], entry_hash=None)
    elif tamper == "null_prev":
        log[at[5]] = replace(log[at[5]], prev_hash=None)
    elif tamper == "swap":  # two rows' contents (hashes too) exchanged; the ids stay
        a, b = log[at[3]], log[at[8]]
        log[at[3]] = replace(b, id=3)
        log[at[8]] = replace(a, id=8)
    elif tamper == "reorder":  # entry 4 moved to the end under a new id
        moved = log.pop(at[4])
        log.append(replace(moved, id=99))
    state = verify_chain(log)
    assert not state.ok
    assert state.first_bad is not None
    assert (state.first_bad.id, state.first_bad.kind) == (bad_id, kind)
    assert state.entries == len(log)
    assert state.to_json()["first_bad"] == {"id": bad_id, "kind": kind, "why": state.first_bad.why}


def test_an_entry_fed_again_is_a_break() -> None:
    """A walk over pages (a server that sends a page again) never counts an entry twice
    as part of the chain: ids must increase."""
    log = chained([entry(i) for i in range(1, 6)])
    walk = ChainWalk()
    walk.feed(log[:3])
    walk.feed(log[2:])
    state = walk.state
    assert state.first_bad is not None
    assert (state.first_bad.id, state.first_bad.kind) == (3, "unlinked")
    assert "out of id order" in state.first_bad.why


def test_a_cut_off_tail_still_walks_ok_but_not_through_the_published_head() -> None:
    """The documented limit: the log alone cannot show what is missing after its head."""
    log = chained([entry(i) for i in range(1, 11)])
    published = verify_chain(log).head
    cut = verify_chain(log[:7])
    assert cut.ok
    assert cut.head != published


def test_entries_round_trip_through_their_json() -> None:
    for e in chained([entry(1, actor="a\x00\\ud800", evidence=[1, {"x": None}]), entry(2)]):
        assert ChainEntry.from_json(e.to_json()) == e
    with pytest.raises(TypeError):
        ChainEntry.from_json({**entry(1).to_json(), "reason": 5})


def test_the_chain_module_is_pure() -> None:
    assert not imported(SHADOW / "audit_chain.py") & IO_LIBRARIES
