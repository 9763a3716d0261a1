"""Recorded history in (a sidecar's DuckDB file, Parquet, JSONL) and the response cache.

This is the only module of ``replay`` that imports ``duckdb`` (as :mod:`shadow.store` is the
only one inside ``shadow``): replay reads history files the sidecar never opens and keeps
its own cache file, so it cannot go through the sidecar's store. Every DuckDB call runs on
one dedicated thread per object (:class:`History`, :class:`ResponseCache`), never on the
event loop, so agent calls keep flowing while a batch is read or written.

History formats (detected from the file's first bytes, then its extension)
    *sidecar DuckDB file* -- the ``events`` and ``outcomes`` tables of ``shadow run``; each
    event joins its current outcome revision. Opened **read-only**, so the file is never
    changed; DuckDB refuses a second process while a sidecar has it open (the error says
    so: copy the file, with its ``.wal``, or stop the sidecar).
    *Parquet* -- either one record per row with a ``kind`` column (``event``/``outcome``,
    like the JSONL below), or one case per row (event and outcome columns side by side).
    Columns: ``event_id``, ``task_type``, ``payload``, ``decision`` (required);
    ``occurred_at``, ``segment``, ``actions``, ``decided_by``, ``decided_at`` (optional).
    ``payload``/``decision``/``actions`` are JSON text or nested Parquet types.
    *JSONL* -- one object per line with ``"kind": "event"`` or ``"kind": "outcome"`` (the
    data contracts of DESIGN.md), validated line by line.
Joining
    An event without an outcome (or an outcome without its event) is not a case; both are
    counted in :class:`HistoryStats`. Of several outcomes for one event the latest
    ``decided_at`` wins (ties: the later record), as in the sidecar; of duplicate events
    the first is kept. Cases come in ``event_id`` order.
Errors
    :class:`~replay.errors.HistoryError` names the file and the line (JSONL), the row
    (Parquet, 1-based) or the table/column that is wrong. JSONL is validated whole before
    the first case is returned; Parquet and DuckDB rows are checked as they are read.

The cache (:class:`ResponseCache`) keeps each successful agent answer under
``(agent_key, request_hash)``; see :mod:`replay.cache` for what the key means.

Longer than our ~600-line guide on purpose (like :mod:`shadow.store`): keeping every DuckDB
call in one module, on its own threads, outweighs splitting it. JSONL, which needs no
DuckDB, is read by :mod:`replay.jsonl`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeVar

import duckdb

from replay.errors import HistoryError
from replay.fastjson import dumps, loads
from replay.jsonl import read_jsonl
from replay.model import Case, Selection
from shadow.errors import ValidationError
from shadow.model import Outcome, ShadowDecision, WorkEvent, as_actions

__all__ = [
    "Format",
    "History",
    "HistoryStats",
    "ResponseCache",
    "decode_answers",
    "detect_format",
    "encode_answers",
]

P = ParamSpec("P")
T = TypeVar("T")
Format = Literal["duckdb", "parquet", "jsonl"]

_MAX_ERRORS = 10  # problems listed in one HistoryError
_EVENT_COLS = ("event_id", "task_type", "payload", "occurred_at", "segment")
_OUTCOME_COLS = ("decision", "actions", "decided_by", "decided_at")
_REQUIRED = ("event_id", "task_type", "payload", "decision")
_JSON_COLS = frozenset({"payload", "decision", "actions"})


def detect_format(path: Path) -> Format:
    """``duckdb``, ``parquet`` or ``jsonl``: magic bytes first, then the extension."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise HistoryError(f"cannot read history {path}: {exc.strerror or exc}") from None
    if head[8:12] == b"DUCK":
        return "duckdb"
    if head[:4] == b"PAR1":
        return "parquet"
    suffix = path.suffix.lower()
    if suffix in (".duckdb", ".db"):
        raise HistoryError(f"{path}: not a DuckDB database file (bad header)")
    if suffix in (".parquet", ".pq"):
        raise HistoryError(f"{path}: not a Parquet file (no PAR1 header)")
    return "jsonl"


@dataclass(slots=True)
class HistoryStats:
    """What the history held (whole file) and how many cases the selection kept."""

    format: str
    events: int = 0
    outcomes: int = 0
    cases: int = 0  # events with an outcome, before the selection
    without_outcome: int = 0
    outcomes_without_event: int = 0
    selected: int = 0  # cases handed out so far

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "events": self.events,
            "outcomes": self.outcomes,
            "cases": self.cases,
            "without_outcome": self.without_outcome,
            "outcomes_without_event": self.outcomes_without_event,
            "selected": self.selected,
        }


class _Worker:
    """One DuckDB connection on one thread; ``run`` hops there from the event loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self.con: duckdb.DuckDBPyConnection | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise HistoryError(f"{self._name} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_con)
        finally:
            executor.shutdown(wait=True)

    def _close_con(self) -> None:
        con, self.con = self.con, None
        if con is not None:
            con.close()


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class History:
    """A history file opened for reading: ``async with History(path, selection) as h``,
    then ``async for batch in h.batches()``. ``total`` is the number of cases before the
    time/sample/limit rules (an upper bound for progress displays)."""

    def __init__(
        self,
        path: str | Path,
        selection: Selection | None = None,
        *,
        batch: int = 1000,
        shard: tuple[int, int] | None = None,
    ):
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
        self.shard = shard  # (k, n): only cases whose event_id hashes to k modulo n
        self.path = Path(path)
        self.selection = selection or Selection()
        self.batch = batch
        self.format: Format = "jsonl"
        self.stats = HistoryStats("jsonl")
        self.total = 0
        self._worker = _Worker("replay-history")
        self._jsonl: list[Case] | None = None
        self._layout = ""  # parquet: "kind" or "joined"
        self._columns: dict[str, str] = {}

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> Self:
        if not await asyncio.to_thread(self.path.is_file):
            raise HistoryError(f"no history file at {self.path}")
        self.format = await asyncio.to_thread(detect_format, self.path)
        self.stats = HistoryStats(self.format)
        self._worker.start()
        try:
            await self._worker.run(self._open)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Idempotent."""
        await self._worker.close()

    # -- opening (history thread) -------------------------------------------------------

    def _open(self) -> None:
        if self.format == "jsonl":
            self._jsonl = read_jsonl(self.path, self.stats)
            if self.shard is not None:
                k, n = self.shard
                self._jsonl = [c for c in self._jsonl if _shard_of(c.event_id, n) == k]
            self.total = sum(
                1
                for c in self._jsonl
                if self.selection.task_types is None or c.task_type in self.selection.task_types
            )
            return
        try:
            if self.format == "duckdb":
                self._worker.con = duckdb.connect(str(self.path), read_only=True)
                self._check_sidecar()
            else:
                self._worker.con = duckdb.connect(":memory:")
                self._check_parquet()
            row = self._con.execute(
                f"SELECT count(*) FROM ({self._cases_sql()})", self._params()
            ).fetchone()
            self.total = int(row[0]) if row else 0
        except duckdb.Error as exc:
            raise self._translate(exc) from None

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        if self._worker.con is None:
            raise HistoryError(f"history {self.path} is closed")
        return self._worker.con

    def _translate(self, exc: duckdb.Error) -> HistoryError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "lock" in text.lower():
            return HistoryError(
                f"{self.path}: cannot open read-only while another process (a running "
                f"sidecar?) has it open; stop it or copy the file with its .wal first ({text})"
            )
        return HistoryError(f"{self.path}: cannot read {self.format} history: {text}")

    def _check_sidecar(self) -> None:
        cols: dict[str, set[str]] = {}
        for table, column in self._con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_name IN ('events', 'outcomes', 'decisions')"
        ).fetchall():
            cols.setdefault(table, set()).add(column)
        need = {
            "events": set(_EVENT_COLS),
            "outcomes": {"event_id", "is_current", *_OUTCOME_COLS},
        }
        for table, wanted in need.items():
            if table not in cols:
                raise HistoryError(
                    f"{self.path}: DuckDB file has no {table} table; is it a sidecar database?"
                )
            missing = sorted(wanted - cols[table])
            if missing:
                raise HistoryError(
                    f"{self.path}: table {table} lacks column(s) {', '.join(missing)}"
                )
        st = self._con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM outcomes), "
            "(SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM outcomes o "
            " WHERE o.event_id = e.event_id AND o.is_current)), "
            "(SELECT count(DISTINCT event_id) FROM outcomes o WHERE NOT EXISTS "
            " (SELECT 1 FROM events e WHERE e.event_id = o.event_id))"
        ).fetchone()
        assert st is not None
        self.stats.events, self.stats.outcomes = int(st[0]), int(st[1])
        self.stats.without_outcome, self.stats.outcomes_without_event = int(st[2]), int(st[3])
        self.stats.cases = self.stats.events - self.stats.without_outcome
        self._has_decisions = "decisions" in cols

    def _check_parquet(self) -> None:
        src = f"read_parquet({_sql_str(str(self.path))}, file_row_number=true)"
        self._con.execute(f"CREATE VIEW src AS SELECT * FROM {src}")
        self._columns = {
            str(name).lower(): str(kind)
            for name, kind, *_ in self._con.execute("DESCRIBE SELECT * FROM src").fetchall()
        }
        missing = [c for c in _REQUIRED if c not in self._columns]
        if missing:
            have = ", ".join(c for c in self._columns if c != "file_row_number")
            raise HistoryError(
                f"{self.path}: missing column(s) {', '.join(missing)}; the file has: {have}"
            )
        for name in ("event_id", "task_type", "kind", "segment", "occurred_at", "decided_at"):
            kind = self._columns.get(name)
            if kind is not None and kind != "VARCHAR":
                raise HistoryError(
                    f"{self.path}: column {name} has type {kind}; expected VARCHAR (text)"
                )
        self._layout = "kind" if "kind" in self._columns else "joined"
        bad = self._con.execute(
            "SELECT file_row_number + 1, event_id, "
            + ("kind" if self._layout == "kind" else "NULL")
            + " FROM src WHERE event_id IS NULL"
            + (
                " OR kind IS NULL OR kind NOT IN ('event', 'outcome')"
                if self._layout == "kind"
                else ""
            )
            + " ORDER BY 1 LIMIT ?",
            [_MAX_ERRORS],
        ).fetchall()
        if bad:
            lines = []
            for row, eid, kind in bad:
                if eid is None:
                    lines.append(f"{self.path}: row {row}, column event_id: required, got null")
                else:
                    got = "null" if kind is None else repr(kind)
                    lines.append(
                        f'{self.path}: row {row}, column kind: expected "event" or "outcome", '
                        f"got {got}"
                    )
            raise HistoryError("\n".join(lines))
        if self._layout == "kind":
            st = self._con.execute(
                "SELECT count(DISTINCT event_id) FILTER (WHERE kind = 'event'), "
                "count(*) FILTER (WHERE kind = 'outcome') FROM src"
            ).fetchone()
        else:
            st = self._con.execute("SELECT count(DISTINCT event_id), count(*) FROM src").fetchone()
        assert st is not None
        self.stats.events, self.stats.outcomes = int(st[0]), int(st[1])

    def _col(self, name: str, alias: str = "") -> str:
        ref = f"{alias}.{name}" if alias else name
        kind = self._columns.get(name)
        if kind is None:
            return "NULL"
        if name in _JSON_COLS and kind not in ("VARCHAR", "JSON"):
            return f"CAST(to_json({ref}) AS VARCHAR)"
        return f"CAST({ref} AS VARCHAR)"

    def _cases_sql(self) -> str:
        """Columns: row numbers (event, outcome; NULL for the sidecar file), the event's
        five columns, the outcome's four, ordered by event_id."""
        rules = []
        if self.selection.task_types is not None:
            rules.append("task_type IN (SELECT unnest(?::VARCHAR[]))")
        if self.shard is not None:
            # DuckDB's hash: the same in every process of one run (same DuckDB build).
            rules.append(f"hash(event_id) % {self.shard[1]} = {self.shard[0]}")
        where = " WHERE " + " AND ".join(rules) if rules else ""
        if self.format == "duckdb":
            return (
                "SELECT NULL, NULL, e.event_id, e.task_type, CAST(e.payload AS VARCHAR), "
                "e.occurred_at, e.segment, CAST(o.decision AS VARCHAR), "
                "CAST(o.actions AS VARCHAR), o.decided_by, o.decided_at "
                "FROM events e JOIN outcomes o ON o.event_id = e.event_id AND o.is_current"
                + where.replace("task_type", "e.task_type").replace("(event_id)", "(e.event_id)")
                + " ORDER BY e.event_id"
            )
        ev_cols = ", ".join(self._col(c, "ev") for c in _EVENT_COLS)
        oc_cols = ", ".join(self._col(c, "oc") for c in _OUTCOME_COLS)
        if self._layout == "joined":
            oc_cols = ", ".join(self._col(c, "ev") for c in _OUTCOME_COLS)
            return (
                f"SELECT ev.file_row_number + 1, ev.file_row_number + 1, {ev_cols}, {oc_cols} "
                "FROM src ev"
                + where.replace("task_type", "ev.task_type").replace("(event_id)", "(ev.event_id)")
                + " QUALIFY row_number() OVER (PARTITION BY ev.event_id "
                "ORDER BY ev.file_row_number) = 1 ORDER BY ev.event_id"
            )
        decided = "TRY_CAST(decided_at AS TIMESTAMPTZ)" if "decided_at" in self._columns else "NULL"
        return (
            "WITH ev AS (SELECT * FROM src WHERE kind = 'event' QUALIFY row_number() OVER "
            "(PARTITION BY event_id ORDER BY file_row_number) = 1), "
            "oc AS (SELECT * FROM src WHERE kind = 'outcome' QUALIFY row_number() OVER "
            f"(PARTITION BY event_id ORDER BY {decided} DESC NULLS LAST, file_row_number DESC)"
            " = 1) "
            f"SELECT ev.file_row_number + 1, oc.file_row_number + 1, {ev_cols}, {oc_cols} "
            "FROM ev JOIN oc ON oc.event_id = ev.event_id"
            + where.replace("task_type", "ev.task_type").replace("(event_id)", "(ev.event_id)")
            + " ORDER BY ev.event_id"
        )

    def _params(self) -> list[Any]:
        if self.selection.task_types is None:
            return []
        return [sorted(self.selection.task_types)]

    # -- reading --------------------------------------------------------------------------

    async def batches(self) -> AsyncGenerator[list[Case], None]:
        """Selected cases in ``event_id`` order, ``batch`` at a time."""
        sel = self.selection
        left = sel.limit
        self.stats.selected = 0
        if self._jsonl is not None:
            source: Iterator[list[Case]] = _chunks(self._jsonl, self.batch)

            async def next_raw() -> list[Case]:
                return next(source, [])

        else:
            cursor = await self._worker.run(self._cursor)

            async def next_raw() -> list[Case]:
                return await self._worker.run(self._fetch, cursor)

        while left is None or left > 0:
            raw = await next_raw()
            if not raw:
                return
            kept = [c for c in raw if sel.accepts(c)]
            if left is not None:
                kept = kept[:left]
                left -= len(kept)
            if kept:
                self.stats.selected += len(kept)
                yield kept

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        try:
            return self._con.cursor().execute(self._cases_sql(), self._params())
        except duckdb.Error as exc:
            raise self._translate(exc) from None

    def _fetch(self, cursor: duckdb.DuckDBPyConnection) -> list[Case]:
        try:
            rows = cursor.fetchmany(self.batch)
        except duckdb.Error as exc:
            raise self._translate(exc) from None
        if self.format == "duckdb":
            return _stored_cases(rows)
        return [self._parquet_case(r) for r in rows]

    def _parquet_case(self, row: tuple[Any, ...]) -> Case:
        ev_row, oc_row = row[0], row[1]
        event = {k: v for k, v in zip(_EVENT_COLS, row[2:7], strict=True) if v is not None}
        outcome = {k: v for k, v in zip(_OUTCOME_COLS, row[7:11], strict=True) if v is not None}
        outcome["event_id"] = event["event_id"]
        for rec, keys, where in ((event, ("payload",), ev_row), (outcome, _JSON_COLS, oc_row)):
            for key in keys:
                if key in rec:
                    try:
                        rec[key] = loads(rec[key])
                    except ValueError as exc:
                        raise HistoryError(
                            f"{self.path}: row {where}, column {key}: invalid JSON: {exc}"
                        ) from None
        try:
            parsed_event = WorkEvent.from_json(event)
        except ValidationError as exc:
            raise _row_error(self.path, ev_row, exc) from None
        try:
            parsed_outcome = Outcome.from_json(outcome)
        except ValidationError as exc:
            raise _row_error(self.path, oc_row, exc) from None
        return Case(parsed_event, parsed_outcome)

    # -- the sidecar's recorded decisions (baseline from the store) -----------------------

    async def stored_versions(self) -> dict[str, int]:
        """Agent versions with decisions in a sidecar file, with their decision counts."""
        self._need_store()

        def q() -> dict[str, int]:
            rows = self._con.execute(
                "SELECT agent_version, count(*) FROM decisions GROUP BY 1 ORDER BY 1"
            ).fetchall()
            return {str(v): int(n) for v, n in rows}

        return await self._worker.run(q)

    async def stored_decisions(
        self, version: str, event_ids: Sequence[str]
    ) -> dict[str, ShadowDecision]:
        """The decisions ``version`` made live for ``event_ids`` (those it has)."""
        self._need_store()

        def q() -> dict[str, ShadowDecision]:
            rows = self._con.execute(
                "SELECT event_id, CAST(body AS VARCHAR) FROM decisions WHERE agent_version = ? "
                "AND event_id IN (SELECT unnest(?::VARCHAR[]))",
                [version, list(event_ids)],
            ).fetchall()
            return {eid: ShadowDecision.from_stored(loads(body)) for eid, body in rows}

        return await self._worker.run(q)

    def _need_store(self) -> None:
        if self.format != "duckdb" or not getattr(self, "_has_decisions", False):
            raise HistoryError(
                f"{self.path}: a baseline agent version needs a sidecar DuckDB history "
                "with a decisions table"
            )


def _row_error(path: Path, row: object, exc: ValidationError) -> HistoryError:
    lines = [f"{path}: row {row}, column {e.path or '(record)'}: {e.message}" for e in exc.errors]
    return HistoryError("\n".join(lines[:_MAX_ERRORS]))


def _json_column(texts: Sequence[str]) -> list[Any]:
    """Every JSON text of a column in one parse (one decoder call per batch)."""
    return loads("[" + ",".join(texts) + "]") if texts else []


def _stored_cases(rows: Sequence[tuple[Any, ...]]) -> list[Case]:
    """Cases from the sidecar's own tables (validated when they were ingested)."""
    payloads = _json_column([r[4] for r in rows])
    decisions = _json_column([r[7] for r in rows])
    out = []
    for row, payload, decision in zip(rows, payloads, decisions, strict=True):
        _, _, eid, tt, _, occurred, segment, _, actions, by, at = row
        acts = () if actions == "[]" else as_actions(loads(actions))
        out.append(
            Case(
                WorkEvent(eid, tt, payload, occurred, segment), Outcome(eid, decision, acts, by, at)
            )
        )
    return out


def _shard_of(event_id: str, shards: int) -> int:
    """The shard of a JSONL case (any stable hash works: it only splits one run's work)."""
    return zlib.crc32(event_id.encode()) % shards


def _chunks(items: list[Case], size: int) -> Iterator[list[Case]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- the response cache -------------------------------------------------------------------------

_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS replay_answers (
    agent_key     VARCHAR NOT NULL,   -- see replay.cache: declared version or agent spec
    request_hash  VARCHAR NOT NULL,   -- content hash of the request sent to the agent
    agent_version VARCHAR NOT NULL,   -- the version that answered
    answer        JSON NOT NULL,      -- ShadowDecision.to_json()
    recorded_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent_key, request_hash)
)
"""


def encode_answers(
    answers: Sequence[tuple[str, ShadowDecision]],
) -> tuple[list[str], list[str], str]:
    """Hashes, versions and one JSON array of the answers (``ShadowDecision.to_json``)."""
    return (
        [h for h, _ in answers],
        [d.agent_version for _, d in answers],
        dumps([d.to_json() for _, d in answers]),
    )


def decode_answers(rows: Sequence[tuple[str, str]]) -> dict[str, ShadowDecision]:
    """Inverse of :func:`encode_answers` for rows read back: ``{request_hash: answer}``."""
    bodies = _json_column([body for _, body in rows])
    return {h: ShadowDecision.from_stored(b) for (h, _), b in zip(rows, bodies, strict=True)}


class ResponseCache:
    """Successful agent answers on disk (a DuckDB file; ``":memory:"`` for none).

    ``put`` is one transaction: when it returns the answers survive ``kill -9``. Opening a
    cache held by another replay fails with a clear :class:`HistoryError`."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._worker = _Worker("replay-cache")

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> Self:
        self._worker.start()
        try:
            await self._worker.run(self._open)
        except BaseException:
            await self.close()
            raise
        return self

    def _open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(self.path)
            con.execute("SET TimeZone = 'UTC'")
            con.execute(_CACHE_DDL)
        except (duckdb.Error, OSError) as exc:
            text = str(exc).splitlines()[0]
            hint = " (is another replay using it?)" if "lock" in text.lower() else ""
            raise HistoryError(f"cannot open replay cache {self.path}{hint}: {text}") from None
        self._worker.con = con

    async def close(self) -> None:
        """Idempotent."""
        await self._worker.close()

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        if self._worker.con is None:
            raise HistoryError(f"replay cache {self.path} is closed")
        return self._worker.con

    async def get(self, agent_key: str, hashes: Sequence[str]) -> dict[str, ShadowDecision]:
        return decode_answers(await self.get_texts(agent_key, hashes))

    async def get_texts(self, agent_key: str, hashes: Sequence[str]) -> list[tuple[str, str]]:
        """``(request_hash, answer JSON)`` of the cached ones among ``hashes``."""

        def q() -> list[tuple[str, str]]:
            return self._con.execute(
                "SELECT request_hash, CAST(answer AS VARCHAR) FROM replay_answers "
                "WHERE agent_key = ? AND request_hash IN (SELECT unnest(?::VARCHAR[]))",
                [agent_key, list(hashes)],
            ).fetchall()

        return await self._worker.run(q)

    async def put(
        self,
        agent_key: str,
        answers: Sequence[tuple[str, ShadowDecision]],
        *,
        now: datetime,
        replace: bool = True,
    ) -> None:
        """Store answers (one transaction). ``replace=False``: the caller knows none of them
        is cached yet (it looked them up), which spares DuckDB the conflict check."""
        if answers:
            await self.put_texts(agent_key, *encode_answers(answers), now=now, replace=replace)

    async def put_texts(
        self,
        agent_key: str,
        hashes: Sequence[str],
        versions: Sequence[str],
        answers: str,
        *,
        now: datetime,
        replace: bool = True,
    ) -> None:
        """Store answers given as :func:`encode_answers` gives them, in one transaction."""
        verb = "INSERT OR REPLACE" if replace else "INSERT"

        def write() -> None:
            try:
                # The answers travel as one JSON array (one encoder call per batch), split
                # into rows by DuckDB.
                self._con.execute(
                    f"{verb} INTO replay_answers SELECT ?, unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(CAST(? AS JSON[])), ?::TIMESTAMPTZ",
                    [agent_key, list(hashes), list(versions), answers, now],
                )
            except duckdb.Error as exc:
                raise HistoryError(f"writing replay cache {self.path} failed: {exc}") from None

        if hashes:
            await self._worker.run(write)

    async def versions(self, agent_key: str) -> Counter[str]:
        """How many cached answers each observed agent version gave under ``agent_key``."""

        def q() -> Counter[str]:
            rows = self._con.execute(
                "SELECT agent_version, count(*) FROM replay_answers WHERE agent_key = ? GROUP BY 1",
                [agent_key],
            ).fetchall()
            return Counter({str(v): int(n) for v, n in rows})

        return await self._worker.run(q)

    async def count(self) -> int:
        def q() -> int:
            row = self._con.execute("SELECT count(*) FROM replay_answers").fetchone()
            return int(row[0]) if row else 0

        return await self._worker.run(q)
