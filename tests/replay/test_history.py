"""History readers: the same cases from JSONL, Parquet (both layouts) and a sidecar DuckDB
file; bad files fail with errors naming the file and the line, row or column."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from replay.errors import HistoryError
from replay.history import History, ResponseCache, detect_format
from replay.model import Case, Selection
from shadow.model import ShadowDecision
from shadow.store import Store
from tests.replay import data
from tests.replay.conftest import joined_rows, write_parquet, write_sidecar_history


async def read_all(path: Path, selection: Selection | None = None, batch: int = 7) -> list[Case]:
    async with History(path, selection, batch=batch) as h:
        return [c async for b in h.batches() for c in b]


def summary(cases: list[Case]) -> list[tuple[str, str, Any, Any]]:
    return [(c.event_id, c.task_type, c.event.payload, c.outcome.decision) for c in cases]


async def test_jsonl_cases_in_event_id_order(jsonl_history: Path) -> None:
    async with History(jsonl_history, batch=7) as h:
        assert h.format == "jsonl"
        assert h.total == 100
        cases = [c async for b in h.batches() for c in b]
        assert h.stats.to_json() == {
            "format": "jsonl",
            "events": 100,
            "outcomes": 100,
            "cases": 100,
            "without_outcome": 0,
            "outcomes_without_event": 0,
            "selected": 100,
            "second_opinions": 0,
        }
    ids = [c.event_id for c in cases]
    assert ids == sorted(ids)
    assert len(ids) == 100
    assert cases[0].outcome.decided_by == "ops/jane"


async def test_all_formats_give_the_same_cases(jsonl_history: Path, tmp_path: Path) -> None:
    expected = summary(await read_all(jsonl_history))
    kind = write_parquet(tmp_path / "kind.parquet", data.records())
    joined = write_parquet(tmp_path / "joined.parquet", joined_rows(), joined=True)
    assert summary(await read_all(kind)) == expected
    assert summary(await read_all(joined)) == expected
    db = await write_sidecar_history(tmp_path / "sidecar.duckdb")
    stored = summary(await read_all(db))
    # The sidecar stores payloads redacted; everything else is the same.
    for s, e in zip(stored, expected, strict=True):
        assert s[0] == e[0]
        assert s[3] == e[3]
        if s[1] == "refund":
            assert s[2] == {"amount": e[2]["amount"], "customer": {"tier": "gold"}}
    for path in (kind, joined, db):
        async with History(path) as h:
            assert h.total == 100


async def test_later_outcome_wins_and_unjoined_records_are_counted(tmp_path: Path) -> None:
    recs = [
        data.refund_event(1),
        data.refund_outcome(1) | {"decided_at": "2026-11-20T12:00:00Z"},
        data.refund_outcome(1)
        | {"decision": {"action": "deny"}, "decided_at": "2026-11-21T00:00:00Z"},
        data.refund_outcome(1)
        | {"decision": {"action": "hold"}, "decided_at": "2026-11-19T00:00:00Z"},
        data.refund_event(2),  # no outcome
        data.refund_outcome(3),  # no event
    ]
    path = data.write_jsonl(tmp_path / "h.jsonl", recs)
    for p in (path, write_parquet(tmp_path / "h.parquet", recs)):
        async with History(p) as h:
            cases = [c async for b in h.batches() for c in b]
            assert [c.outcome.decision for c in cases] == [{"action": "deny"}]
            if p.suffix == ".jsonl":
                assert h.stats.without_outcome == 1
                assert h.stats.outcomes_without_event == 1


async def test_sidecar_file_is_opened_read_only_and_left_unchanged(tmp_path: Path) -> None:
    db = await write_sidecar_history(tmp_path / "sidecar.duckdb")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    wal = db.with_name(db.name + ".wal")
    assert not wal.exists()
    async with History(db) as h:
        assert h.format == "duckdb"
        assert len([c async for b in h.batches() for c in b]) == 100
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not wal.exists()


@pytest.mark.parametrize(
    ("lines", "needles"),
    [
        (['{"kind": "event", "event_id": "a"'], ["h.jsonl:1: invalid JSON"]),
        (['{"event_id": "a", "task_type": "t", "payload": {}}'], ["h.jsonl:1: kind: required"]),
        (['{"kind": "decision", "event_id": "a"}'], ["h.jsonl:1: kind: expected", "'decision'"]),
        (["[1, 2]"], ["h.jsonl:1: expected a JSON object"]),
        (
            ["", '{"kind": "event", "event_id": "a", "task_type": "t", "payload": [1]}'],
            ["h.jsonl:2: payload: expected a JSON object, got an array"],
        ),
        (
            ['{"kind": "outcome", "event_id": "a", "decision": {}, "decided_at": "yesterday"}'],
            ["h.jsonl:1: decided_at: expected an ISO-8601 timestamp"],
        ),
        # As strict as the live sources (the same parser): a repeated key, NaN, a lone
        # surrogate escape and bytes that are not UTF-8 are refused, not read leniently.
        (
            [
                '{"kind": "event", "event_id": "a", "event_id": "b", '
                '"task_type": "t", "payload": {}}'
            ],
            ["h.jsonl:1: event_id: key appears more than once"],
        ),
        (
            ['{"kind": "event", "event_id": "a", "task_type": "t", "payload": {"x": NaN}}'],
            ["h.jsonl:1: payload.x: NaN is not valid JSON"],
        ),
        (
            ['{"kind": "event", "event_id": "a", "task_type": "t", "payload": {"x": "\\ud800"}}'],
            ["h.jsonl:1: payload.x: string holds a lone UTF-16 surrogate"],
        ),
    ],
)
async def test_bad_jsonl_lines_name_the_line_and_field(
    tmp_path: Path, lines: list[str], needles: list[str]
) -> None:
    path = tmp_path / "h.jsonl"
    good = json.dumps(data.refund_event(1))
    path.write_text("\n".join([*lines, good]) + "\n")
    with pytest.raises(HistoryError) as info:
        await read_all(path)
    for needle in needles:
        assert needle in str(info.value)


async def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(json.dumps(data.refund_event(1)).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(HistoryError, match=r"h\.jsonl:2: not UTF-8 at byte 0"):
        await read_all(path)


async def test_every_bad_line_is_reported_up_to_ten(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text("".join(f'{{"kind": "x{i}"}}\n' for i in range(30)))
    with pytest.raises(HistoryError) as info:
        await read_all(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 10
    assert lines[0].startswith(f"{path}:1: kind")
    assert ":10: " in lines[-1]


async def test_parquet_missing_columns(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "decision"} for r in joined_rows()]
    path = tmp_path / "h.parquet"
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE t (event_id VARCHAR, task_type VARCHAR, payload VARCHAR)")
    con.executemany(
        "INSERT INTO t VALUES (?, ?, ?)",
        [[r["event_id"], r["task_type"], json.dumps(r["payload"])] for r in rows],
    )
    con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    con.close()
    with pytest.raises(
        HistoryError,
        match=r"h\.parquet: missing column\(s\) decision; the file "
        r"has: event_id, task_type, payload",
    ):
        await read_all(path)


async def test_parquet_bad_kind_and_null_id_name_the_rows(tmp_path: Path) -> None:
    recs = data.records()[:6]
    recs[2] = recs[2] | {"kind": "decision"}
    recs[4] = recs[4] | {"event_id": None}
    path = write_parquet(tmp_path / "h.parquet", recs)
    with pytest.raises(HistoryError) as info:
        await read_all(path)
    assert str(info.value).splitlines() == [
        f'{path}: row 3, column kind: expected "event" or "outcome", got \'decision\'',
        f"{path}: row 5, column event_id: required, got null",
    ]


async def test_parquet_bad_values_name_row_and_column(tmp_path: Path) -> None:
    recs = [data.refund_event(1), data.refund_outcome(1)]
    recs[1] = recs[1] | {"decision": [1, 2]}
    path = write_parquet(tmp_path / "h.parquet", recs)
    with pytest.raises(HistoryError, match=r"row 2, column decision: expected a JSON object"):
        await read_all(path)


async def test_parquet_wrong_column_type(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "h.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 1 AS event_id, 't' AS task_type, '{{}}' AS payload, "
        f"'{{}}' AS decision) TO '{path}' (FORMAT parquet)"
    )
    con.close()
    with pytest.raises(HistoryError, match="column event_id has type INTEGER; expected VARCHAR"):
        await read_all(path)


async def test_duckdb_file_that_is_not_a_sidecar(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE events (event_id VARCHAR)")
    con.close()
    with pytest.raises(HistoryError, match=r"has no outcomes table|lacks column"):
        await read_all(path)


async def test_missing_and_mislabelled_files(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no history file at"):
        await read_all(tmp_path / "nope.jsonl")
    fake = tmp_path / "x.parquet"
    fake.write_text("not parquet")
    with pytest.raises(HistoryError, match="not a Parquet file"):
        detect_format(fake)


async def test_stored_versions_need_a_sidecar_file(jsonl_history: Path) -> None:
    async with History(jsonl_history) as h:
        with pytest.raises(HistoryError, match="needs a sidecar DuckDB history"):
            await h.stored_versions()


async def test_cache_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cache.duckdb"
    d = ShadowDecision.from_agent_response(
        "e1", {"decision": {"a": 1}, "agent_version": "v1"}, default_version="?", latency_ms=3.5
    )
    from datetime import UTC, datetime

    async with ResponseCache(path) as cache:
        await cache.put("spec:x", [("h1", d)], now=datetime.now(UTC))
    async with ResponseCache(path) as cache:
        assert await cache.get("spec:x", ["h1", "h2"]) == {"h1": d}
        assert await cache.get("spec:y", ["h1"]) == {}
        assert await cache.versions("spec:x") == {"v1": 1}
        assert await cache.count() == 1


async def test_replay_evidence_is_kept_apart_from_live_evidence(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from shadow.schema import SCHEMA_VERSION
    from shadow.store import ReplayEvidence

    db = await write_sidecar_history(tmp_path / "s.duckdb")
    async with Store(db) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        entry = ReplayEvidence("refund", "v9", 60, 48, 10, 0, 0.6, 0.9, "abc", {"n": 60})
        await store.put_replay_evidence(
            [entry], run_id="r1", history="h.jsonl", now=datetime(2026, 11, 21, tzinfo=UTC)
        )
        assert await store.evidence() == {}
        rows = await store.replay_evidence()
        assert [(r["run_id"], r["task_type"], r["n"], r["agree"]) for r in rows] == [
            ("r1", "refund", 60, 48)
        ]
        audit = await store.audit_log(task_type="refund")
        assert [e.action for _, e in audit] == ["replay_evidence"]
        assert audit[0][1].evidence["source"] == "replay"


async def test_a_file_held_by_another_process_is_refused_clearly(tmp_path: Path) -> None:
    import asyncio
    import sys

    db = await write_sidecar_history(tmp_path / "busy.duckdb")
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('open', flush=True); "
        "time.sleep(60)",
        str(db),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"open\n"
        with pytest.raises(
            HistoryError, match=r"another process \(a running sidecar\?\) has it open"
        ):
            await read_all(db)
    finally:
        holder.kill()
        await holder.wait()
