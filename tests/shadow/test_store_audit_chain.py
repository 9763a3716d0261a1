"""The audit log's hash chain in a real DuckDB file (shadow/store/audit.py, the migration
that added it, ``shadow audit verify --db``): a log of every kind of entry is one intact
chain; each way of tampering with the closed file, done with a plain duckdb connection, is
named at the right entry; an old store is chained when it opens; text the store keeps as
escapes still verifies."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shadow import moves
from shadow.audit_chain import GENESIS, ChainState, canonical_bytes, chain_hash, utc_instant
from shadow.cli import main
from shadow.errors import StoreError
from shadow.model import AuditEntry, Evidence, Level
from shadow.policy import TaskPolicy, parse_policy
from shadow.promotion import LadderState
from shadow.schema import AUDIT_CHAIN_VERSION, SCHEMA_VERSION
from shadow.store import Store
from shadow.store.audit import audit_page
from tests.conftest import FakeClock
from tests.shadow.test_store import store_file_at

TASK = "refund_request"
AGENT = "refund-agent@7"
POLICY = parse_policy(
    """
task_types:
  refund_request:
    autonomy:
      ceiling: L1
      gates:
        L1: {agreement: 0.50, min_samples: 5}
""",
    source="test-policy.yaml",
)


def _task() -> TaskPolicy:
    task = POLICY.for_task(TASK)
    assert task is not None
    return task


def gateway_entry(at: datetime, n: int, **changes: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "at": at,
        "task_type": TASK,
        "actor": "gateway",
        "action": "tool_refused",
        "from_level": None,
        "to_level": None,
        "reason": f"tool delete_account is not on the allowlist (call {n})",
        "evidence": {"event_id": f"e{n}", "tool": "delete_account", "args": {"id": n}},
        "policy_hash": None,
    }
    values.update(changes)
    return AuditEntry(**values)


async def build_log(store: Store, clock: FakeClock, rounds: int) -> None:
    """Entries of every kind the sidecar writes, each in its own transaction: ladder moves
    (manual sets, freezes, unfreezes), gateway refusals in batches, epoch starts."""
    task = _task()
    state = LadderState(TASK, Level.L0, AGENT)
    evidence = {AGENT: Evidence(TASK, AGENT, n=40, agree=37, critical=1)}
    for r in range(rounds):
        now = clock.advance(seconds=1.000001)
        if r % 3 == 2:
            frozen = moves.freeze(state, evidence, AGENT, task, now=now, reason=f"incident {r}")
            await store.apply_steps([frozen], actor="ops/oncall", frozen=True)
            state = frozen.after
            thawed = moves.unfreeze(
                state, evidence, AGENT, task, now=clock.advance(seconds=1), reason="resolved"
            )
            await store.apply_steps([thawed], actor="ops/oncall", frozen=False)
            state = thawed.after
        else:
            level = Level.L1 if state.level is Level.L0 else Level.L0
            step = moves.manual_set(
                state, level, evidence, AGENT, task, frozen=False, now=now, reason=f"set {r}"
            )
            await store.apply_steps([step], actor="ops/jane")
            state = step.after
        await store.append_audit(
            [gateway_entry(clock.advance(seconds=1), r * 10 + k) for k in range(1 + r % 3)]
        )
        epoch = {"epoch": r, "compare_hash": "c", "policy_hash": task.hash}
        await store.set_epoch(
            TASK,
            epoch,
            AuditEntry(
                at=clock.advance(seconds=1),
                task_type=TASK,
                actor="promoter",
                action="evidence_epoch",
                from_level=None,
                to_level=None,
                reason=f"evidence epoch {r} starts",
                evidence=epoch,
                policy_hash=task.hash,
            ),
        )


async def chain_of(path: Path, *, page: int = 7) -> ChainState:
    """The chain as a read-only store walks it (small pages, so paging is exercised)."""
    async with Store(path, read_only=True) as store:
        return await store.audit_chain(page=page)


async def verify_cli(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    """``shadow audit verify --db PATH`` in process (on a thread: it runs its own event
    loop): exit code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["audit", "verify", "--db", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def tamper(path: Path, *statements: tuple[str, list[Any]]) -> None:
    """Change the closed file behind the store's back, as anyone with the file can."""
    con = duckdb.connect(str(path))
    try:
        for sql, params in statements:
            con.execute(sql, params)
    finally:
        con.close()


@pytest.fixture(scope="module")
def log_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed store file holding a mixed log of 40 rounds, built once for the module."""
    path = tmp_path_factory.mktemp("audit") / "template.duckdb"

    async def build() -> None:
        async with Store(path) as store:
            await build_log(store, FakeClock(), 40)

    asyncio.run(build())
    return path


@pytest.fixture
def logged(log_template: Path, tmp_path: Path) -> Path:
    """A copy of the template's file, for this test to tamper with."""
    path = tmp_path / "shadow.duckdb"
    shutil.copyfile(log_template, path)
    return path


# -- an intact log -----------------------------------------------------------------------------


async def test_a_mixed_log_is_one_intact_chain(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    actions = {a for (a,) in rows(logged, "SELECT DISTINCT action FROM audit_log")}
    assert actions == {"manual_set", "freeze", "unfreeze", "tool_refused", "evidence_epoch"}
    stored = rows(logged, "SELECT id, prev_hash, entry_hash FROM audit_log ORDER BY id")
    assert len(stored) > 150
    # every row links to the one before it (the first to the genesis value)
    assert stored[0][1] == GENESIS
    for (_, _, before), (_, prev, _) in itertools.pairwise(stored):
        assert prev == before

    state = await chain_of(logged)
    assert (state.ok, state.entries, state.head) == (True, len(stored), stored[-1][2])
    assert await chain_of(logged, page=10_000) == state

    code, out, err = await verify_cli(capsys, logged)
    assert (code, err) == (0, "")
    assert out == f"audit chain ok: {len(stored)} entries, head {stored[-1][2]}\n"


async def test_each_hash_is_sha256_over_the_canonical_encoding_of_the_row(logged: Path) -> None:
    """Recomputed here from the row's columns alone, independently of the chain module."""
    con = duckdb.connect(str(logged), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        for row in con.execute(
            "SELECT id, recorded_at, task_type, actor, action, from_level, to_level, reason, "
            "evidence, policy_hash, prev_hash, entry_hash FROM audit_log ORDER BY id"
        ).fetchall():
            doc = {
                "id": row[0],
                "recorded_at": row[1].strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"),
                "task_type": row[2],
                "actor": row[3],
                "action": row[4],
                "from_level": row[5],
                "to_level": row[6],
                "reason": row[7],
                "evidence": json.loads(row[8]),
                "policy_hash": row[9],
                "prev_hash": row[10],
            }
            text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            assert hashlib.sha256(text.encode()).hexdigest() == row[11], row[0]
    finally:
        con.close()


async def test_a_skipped_id_is_not_a_break(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sequences skip (a transaction that took an id and rolled back): the link counts."""
    tamper(
        logged,
        ("CREATE TABLE taken AS SELECT nextval('audit_seq') AS id FROM range(5)", []),
        ("DROP TABLE taken", []),
    )
    async with Store(logged) as store:
        await build_log(store, FakeClock(), 2)
    ids = [i for (i,) in rows(logged, "SELECT id FROM audit_log ORDER BY id")]
    assert any(b - a > 1 for a, b in itertools.pairwise(ids))
    assert (await chain_of(logged)).ok
    assert (await verify_cli(capsys, logged))[0] == 0


# -- tampering ---------------------------------------------------------------------------------

Tamper = Callable[[Path], int]  # changes the file; returns the id the walk must name


def _edit_reason(path: Path) -> int:
    tamper(path, ("UPDATE audit_log SET reason = reason || '.' WHERE id = 17", []))
    return 17


def _edit_evidence(path: Path) -> int:
    tamper(
        path,
        (
            "UPDATE audit_log SET evidence = json_merge_patch(evidence, '{\"n\": 41}') "
            "WHERE id = (SELECT min(id) FROM audit_log WHERE action = 'manual_set' AND id > 20)",
            [],
        ),
    )
    (edited,) = rows(
        path, "SELECT id FROM audit_log WHERE json_extract(evidence, '$.n')::INTEGER = 41"
    )
    return int(edited[0])


def _change_level(path: Path) -> int:
    (target,) = rows(path, "SELECT min(id) FROM audit_log WHERE to_level IS NOT NULL AND id > 30")
    tamper(path, ("UPDATE audit_log SET to_level = 'L3' WHERE id = ?", [target[0]]))
    return int(target[0])


def _change_time(path: Path) -> int:
    tamper(
        path,
        (
            "UPDATE audit_log SET recorded_at = recorded_at + INTERVAL 1 MICROSECOND WHERE id = 25",
            [],
        ),
    )
    return 25


def _delete_middle(path: Path) -> int:
    tamper(path, ("DELETE FROM audit_log WHERE id = 50", []))
    return 51


def _delete_first(path: Path) -> int:
    tamper(path, ("DELETE FROM audit_log WHERE id = 1", []))
    return 2


def _swap(path: Path) -> int:
    """Rows 12 and 30 exchange everything but their ids (their hashes too)."""
    cols = (
        "recorded_at, task_type, actor, action, from_level, to_level, reason, evidence, "
        "policy_hash, prev_hash, entry_hash"
    )
    a, b = (rows(path, f"SELECT {cols} FROM audit_log WHERE id = ?", [i])[0] for i in (12, 30))
    sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
    tamper(
        path,
        (f"UPDATE audit_log SET {sets} WHERE id = 12", [*b]),
        (f"UPDATE audit_log SET {sets} WHERE id = 30", [*a]),
    )
    return 12


def _move_to_the_end(path: Path) -> int:
    """Row 20 taken out and appended again under a new id: reordered."""
    tamper(
        path,
        ("CREATE TEMP TABLE moved AS SELECT * FROM audit_log WHERE id = 20", []),
        ("DELETE FROM audit_log WHERE id = 20", []),
        ("UPDATE moved SET id = 100000", []),
        ("INSERT INTO audit_log SELECT * FROM moved", []),
    )
    return 21


def _null_hash(path: Path) -> int:
    tamper(path, ("UPDATE audit_log SET entry_hash = NULL WHERE id = 33", []))
    return 33


def _null_prev_hash(path: Path) -> int:
    tamper(path, ("UPDATE audit_log SET prev_hash = NULL WHERE id = 33", []))
    return 33


def _edit_and_rehash(path: Path) -> int:
    """Row 40 edited and its own hash recomputed: it passes alone; the next link breaks."""
    tamper(path, ("UPDATE audit_log SET actor = 'someone else' WHERE id = 40", []))
    con = duckdb.connect(str(path))
    try:
        (row,) = audit_page(con, after=39, limit=1)
        assert row.id == 40
        assert row.prev_hash is not None
        con.execute(
            "UPDATE audit_log SET entry_hash = ? WHERE id = 40",
            [chain_hash(row, row.prev_hash)],
        )
    finally:
        con.close()
    return 41


TAMPERS: dict[str, tuple[Tamper, str]] = {
    "edit one reason": (_edit_reason, "edited"),
    "edit evidence JSON": (_edit_evidence, "edited"),
    "change a level": (_change_level, "edited"),
    "move the time by a microsecond": (_change_time, "edited"),
    "delete a middle row": (_delete_middle, "unlinked"),
    "delete the first row": (_delete_first, "unlinked"),
    "swap two rows' contents": (_swap, "edited"),
    "move a row to the end": (_move_to_the_end, "unlinked"),
    "set a hash to NULL": (_null_hash, "missing"),
    "set a previous hash to NULL": (_null_prev_hash, "missing"),
    "edit a row and recompute its own hash": (_edit_and_rehash, "unlinked"),
}


@pytest.mark.parametrize("name", list(TAMPERS))
async def test_tampering_with_the_closed_file_is_named_at_the_right_entry(
    name: str, logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, kind = TAMPERS[name]
    assert (await chain_of(logged)).ok
    bad = change(logged)

    state = await chain_of(logged)
    assert not state.ok
    assert state.first_bad is not None
    assert (state.first_bad.id, state.first_bad.kind) == (bad, kind), state.first_bad

    code, out, err = await verify_cli(capsys, logged)
    assert (code, err) == (1, "")
    assert out == f"audit chain broken at entry {bad}: {state.first_bad.why}\n"


async def test_cutting_off_the_newest_entries_shows_only_against_the_published_head(
    logged: Path,
) -> None:
    """The documented limit: the log alone cannot show what is missing after its head."""
    published = (await chain_of(logged)).head
    tamper(logged, ("DELETE FROM audit_log WHERE id > (SELECT max(id) - 3 FROM audit_log)", []))
    cut = await chain_of(logged)
    assert cut.ok
    assert cut.head != published


# -- an old store ------------------------------------------------------------------------------

OLD_ROWS = [
    # (recorded_at, task_type, actor, action, from, to, reason, evidence, policy_hash)
    (datetime(2026, 1, 1, 9, 0, 0, 1, tzinfo=UTC), TASK, "promoter", "propose", "L0", "L0",
     "gate L1 met", '{"n": 120, "lower": 0.912345, "upper": 0.99}', "p1"),
    (datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=5))), TASK, "ops/jane",
     "approve", "L0", "L1", "ok \\ud800 \x00 \x1f", '{"note": "\\\\udfff", "x": [1, 2.5]}',
     "p1"),
    (datetime(2026, 1, 2, 0, 0), "invoice", "gateway", "tool_refused", None, None,
     "not on the allowlist", '{}', None),
]  # fmt: skip


def old_store(path: Path) -> None:
    """A store as the sidecar before the chain left it, with audit rows (one id skipped)."""
    insert = (
        "INSERT INTO audit_log (recorded_at, task_type, actor, action, from_level, to_level, "
        "reason, evidence, policy_hash) VALUES (?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?::JSON, ?)"
    )
    store_file_at(
        path,
        AUDIT_CHAIN_VERSION - 1,
        (insert, list(OLD_ROWS[0])),
        ("SELECT nextval('audit_seq')", []),
        *((insert, list(r)) for r in OLD_ROWS[1:]),
    )


async def test_an_old_store_is_chained_once_when_it_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.duckdb"
    old_store(path)
    before = rows(path, "SELECT * FROM audit_log ORDER BY id")
    assert [r[0] for r in before] == [1, 3, 4]

    # read-only, it is refused (nothing to verify yet, and nothing may be written)
    code, out, err = await verify_cli(capsys, path)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert f"schema version {AUDIT_CHAIN_VERSION - 1}, below this sidecar's" in err

    async with Store(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        state = await store.audit_chain()
    assert (state.ok, state.entries) == (True, 3)
    after = rows(path, "SELECT * FROM audit_log ORDER BY id")
    assert [r[:10] for r in after] == before  # the rows themselves are untouched
    hashes = rows(path, "SELECT prev_hash, entry_hash FROM audit_log ORDER BY id")
    assert all(p is not None and h is not None for p, h in hashes)
    assert hashes[0][0] == GENESIS

    # the chain goes on from the backfilled head, and reopening does not chain again
    async with Store(path) as store:
        await store.append_audit([gateway_entry(datetime(2026, 2, 1, tzinfo=UTC), 1)])
    (new_prev,) = rows(path, "SELECT prev_hash FROM audit_log WHERE id = 5")
    assert new_prev[0] == hashes[-1][1]
    assert rows(path, "SELECT prev_hash, entry_hash FROM audit_log WHERE id < 5 ORDER BY id") == (
        hashes
    )
    code, out, _ = await verify_cli(capsys, path)
    assert (code, out.split(":")[0]) == (0, "audit chain ok")
    assert " 4 entries" in out

    # and an edit of a backfilled row is found
    tamper(path, ("UPDATE audit_log SET reason = 'gate L2 met' WHERE id = 1", []))
    code, out, _ = await verify_cli(capsys, path)
    assert (code, out.split(":")[0]) == (1, "audit chain broken at entry 1")


# -- text the store keeps as escapes, and instants ---------------------------------------------


async def test_lone_surrogates_and_control_characters_hash_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.duckdb"
    odd = "ops/\ud800x\x00\x01\x1f\x7f\u2028\udfff"
    at = datetime(2026, 3, 1, 8, 0, 0, 999999, tzinfo=UTC)
    async with Store(path) as store:
        await store.append_audit(
            [
                gateway_entry(
                    at,
                    1,
                    task_type="t\ud83d",
                    actor=odd,
                    reason=f"why: {odd}",
                    evidence={odd: [odd, {"k": "\x00"}], "f": 0.1},
                    policy_hash="\udc80",
                ),
                gateway_entry(at, 2, actor="\x00", reason="\n\r\t"),
            ]
        )
        (first, second) = await store.audit_entries()
        assert await store.audit_chain() == ChainState(2, second.entry_hash, None)
    assert first.actor == "ops/\\ud800x\x00\x01\x1f\x7f\u2028\\udfff"  # as storable() keeps it
    assert first.task_type == "t\\ud83d"
    assert first.evidence == {first.actor: [first.actor, {"k": "\x00"}], "f": 0.1}
    assert second.reason == "\n\r\t"
    canonical = canonical_bytes(first, GENESIS)
    assert canonical.isascii()
    assert b"\\u0000" in canonical
    assert b"\\\\ud800" in canonical

    assert (await chain_of(path)).ok
    assert (await verify_cli(capsys, path))[0] == 0
    tamper(path, ("UPDATE audit_log SET actor = replace(actor, chr(0), '') WHERE id = 2", []))
    code, out, _ = await verify_cli(capsys, path)
    assert (code, out.split(":")[0]) == (1, "audit chain broken at entry 2")


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 3, 1, 8, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        datetime(2026, 3, 1, 8, 0, 0, 999999),  # naive: UTC, as the store's session is
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
async def test_the_instant_hashed_is_the_instant_that_reads_back(
    tmp_path: Path, at: datetime
) -> None:
    path = tmp_path / "s.duckdb"
    async with Store(path) as store:
        await store.append_audit([gateway_entry(at, 1)])
        (entry,) = await store.audit_entries()
    assert entry.recorded_at == utc_instant(at)
    assert entry.recorded_at.utcoffset() == timedelta(0)
    assert (await chain_of(path)).ok


# -- the read-only store -----------------------------------------------------------------------


async def test_verifying_a_file_writes_nothing_to_it(logged: Path) -> None:
    before = await asyncio.to_thread(logged.read_bytes)
    state = await chain_of(logged)
    assert state.ok
    assert await asyncio.to_thread(logged.read_bytes) == before
    assert not await asyncio.to_thread(os.path.exists, f"{logged}.wal")


async def test_a_read_only_store_cannot_write(logged: Path) -> None:
    before = rows(logged, "SELECT count(*) FROM audit_log")
    async with Store(logged, read_only=True) as store:
        with pytest.raises(StoreError, match="read-only"):
            await store.append_audit([gateway_entry(datetime(2026, 6, 1, tzinfo=UTC), 1)])
    assert rows(logged, "SELECT count(*) FROM audit_log") == before


@pytest.mark.slow  # a subprocess
async def test_readers_share_the_file(logged: Path) -> None:
    """A verifier reads a file another reader has open (DuckDB's shared lock)."""
    async with Store(logged, read_only=True) as store:
        assert (await store.audit_chain()).ok
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shadow.cli", "audit", "verify", "--db", str(logged)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("audit chain ok: ")


async def test_a_read_only_store_refuses_a_file_no_sidecar_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.duckdb"
    tamper(path, ("CREATE TABLE t (x INTEGER)", []))
    code, out, err = await verify_cli(capsys, path)
    assert (code, out) == (2, "")
    assert err == f"shadow: error: cannot open store {path}: it is not a sidecar's store\n"
    code, _, err = await verify_cli(capsys, tmp_path / "missing.duckdb")
    assert code == 2
    assert err == f"shadow: error: no sidecar database at {tmp_path / 'missing.duckdb'}\n"
