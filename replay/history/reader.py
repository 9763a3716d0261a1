"""Reading recorded history: a sidecar DuckDB file (read-only), Parquet, or JSONL (through
:mod:`replay.jsonl`); selection, sharding and batches of cases."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import duckdb

from replay.errors import HistoryError
from replay.history.worker import _Worker
from replay.jsonl import MAX_ERRORS, read_jsonl
from replay.model import Case, HistoryStats, Selection
from shadow.errors import ValidationError
from shadow.fastjson import loads
from shadow.model import (
    Handling,
    Outcome,
    SecondOpinion,
    ShadowDecision,
    WorkEvent,
    as_actions,
)

Format = Literal["duckdb", "parquet", "jsonl"]

_EVENT_COLS = ("event_id", "task_type", "payload", "occurred_at", "segment")
# ``second_opinion`` (Parquet): the outcome's embedded second opinion object (JSON).
_OUTCOME_COLS = (
    "decision",
    "actions",
    "decided_by",
    "decided_at",
    "handled_by",
    "second_opinion",
)
# A sidecar file's outcomes table needs these; ``handled_by`` arrived with schema v8.
_STORED_OUTCOME_COLS = ("decision", "actions", "decided_by", "decided_at")
_REQUIRED = ("event_id", "task_type", "payload", "decision")
_JSON_COLS = frozenset({"payload", "decision", "actions", "second_opinion"})


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
        self._has_decisions = False  # sidecar file: a decisions table to baseline against
        # Sidecar file (schema v8+): outcomes.handled_by (what the outcome stated) and the
        # handling table (the sidecar's routing records); older files have neither.
        self._stated = False
        self._routed = False
        self._traced = False
        self._cost_source = False  # decisions.cost_source (schema v15 on)
        self._seconds = False  # the second_opinions table (schema v16 on)

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
            "WHERE table_name IN ('events', 'outcomes', 'decisions', 'handling', 'comparisons', "
            "'second_opinions')"
        ).fetchall():
            cols.setdefault(table, set()).add(column)
        need = {
            "events": set(_EVENT_COLS),
            "outcomes": {"event_id", "is_current", *_STORED_OUTCOME_COLS},
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
        self._stated = "handled_by" in cols["outcomes"]
        self._routed = {"event_id", "handled_by"} <= cols.get("handling", set())
        # Schema v13 on: the live comparisons' trace ids (shadow.tracing), for the examples.
        self._traced = "trace_id" in cols.get("comparisons", set())
        # Schema v15 on: how each stored decision's cost is known (a cost never reported nor
        # priced is unknown, not the 0 its body says).
        self._cost_source = "cost_source" in cols.get("decisions", set())
        # Schema v16 on: each event's second opinion (the human ceiling, replay.noise).
        self._seconds = {"event_id", "decision", "actions", "decided_by"} <= cols.get(
            "second_opinions", set()
        )

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
        for name in (
            "event_id",
            "task_type",
            "kind",
            "segment",
            "occurred_at",
            "decided_at",
            "handled_by",
        ):
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
            [MAX_ERRORS],
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
        five columns, the outcome's five (``handled_by``: what the outcome states), and for
        the sidecar file the sidecar's routing record (``handling.handled_by``, the live
        join's ``h.handled_by``), its comparisons' trace id (shadow.tracing) and its second
        opinion (decision, actions, decided_by: the human ceiling), ordered by event_id."""
        rules = []
        if self.selection.task_types is not None:
            rules.append("task_type IN (SELECT unnest(?::VARCHAR[]))")
        if self.shard is not None:
            # DuckDB's hash: the same in every process of one run (same DuckDB build).
            rules.append(f"hash(event_id) % {self.shard[1]} = {self.shard[0]}")
        where = " WHERE " + " AND ".join(rules) if rules else ""
        if self.format == "duckdb":
            # The live joiner's inputs (shadow.store.joins): the current outcome revision
            # with what it states, and the routing record, which wins over it.
            stated = "o.handled_by" if self._stated else "NULL"
            recorded = "h.handled_by" if self._routed else "NULL"
            routing = " LEFT JOIN handling h ON h.event_id = e.event_id" if self._routed else ""
            traced = "t.trace_id" if self._traced else "NULL"
            if self._seconds:
                second = "CAST(s.decision AS VARCHAR), CAST(s.actions AS VARCHAR), s.decided_by"
                routing += " LEFT JOIN second_opinions s ON s.event_id = e.event_id"
            else:
                second = "NULL, NULL, NULL"
            if self._traced:
                routing += (
                    " LEFT JOIN (SELECT event_id, max(trace_id) AS trace_id FROM comparisons "
                    "GROUP BY event_id) t ON t.event_id = e.event_id"
                )
            return (
                "SELECT NULL, NULL, e.event_id, e.task_type, CAST(e.payload AS VARCHAR), "
                "e.occurred_at, e.segment, CAST(o.decision AS VARCHAR), "
                f"CAST(o.actions AS VARCHAR), o.decided_by, o.decided_at, {stated}, {recorded}, "
                f"{traced}, {second} "
                "FROM events e JOIN outcomes o ON o.event_id = e.event_id AND o.is_current"
                + routing
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
        self.stats.second_opinions = 0
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
                self.stats.second_opinions += sum(1 for c in kept if c.second is not None)
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
            return _stored_cases(rows, self.path)
        return [self._parquet_case(r) for r in rows]

    def _parquet_case(self, row: tuple[Any, ...]) -> Case:
        ev_row, oc_row = row[0], row[1]
        event = {k: v for k, v in zip(_EVENT_COLS, row[2:7], strict=True) if v is not None}
        outcome = {k: v for k, v in zip(_OUTCOME_COLS, row[7:13], strict=True) if v is not None}
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
        if parsed_outcome.is_second_opinion:
            raise HistoryError(
                f"{self.path}: row {oc_row}, column second_opinion: a second opinion record "
                "(true) is read from JSONL or a sidecar file only; in Parquet give the "
                "outcome's second_opinion as an object {decision, actions?, decided_by?}"
            )
        return Case(parsed_event, parsed_outcome, second=parsed_outcome.second_opinion)

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

        source = "cost_source" if self._cost_source else "NULL"

        def q() -> dict[str, ShadowDecision]:
            rows = self._con.execute(
                f"SELECT event_id, CAST(body AS VARCHAR), {source} FROM decisions "
                "WHERE agent_version = ? AND event_id IN (SELECT unnest(?::VARCHAR[]))",
                [version, list(event_ids)],
            ).fetchall()
            return {eid: _stored_decision(body, how) for eid, body, how in rows}

        return await self._worker.run(q)

    def _need_store(self) -> None:
        if self.format != "duckdb" or not self._has_decisions:
            raise HistoryError(
                f"{self.path}: a baseline agent version needs a sidecar DuckDB history "
                "with a decisions table"
            )


def _row_error(path: Path, row: object, exc: ValidationError) -> HistoryError:
    lines = [f"{path}: row {row}, column {e.path or '(record)'}: {e.message}" for e in exc.errors]
    return HistoryError("\n".join(lines[:MAX_ERRORS]))


def _stored_decision(body: str, cost_source: str | None) -> ShadowDecision:
    """A decision the sidecar stored, with how its cost is known (its column, when the
    schema has it: the body alone reads every cost as reported)."""
    d = ShadowDecision.from_stored(loads(body))
    if cost_source == "unknown":
        d = replace(d, usage=replace(d.usage, cost_source="unknown"))
    elif cost_source == "priced":
        d = replace(d, usage=replace(d.usage, cost_source="priced"))
    return d


def _json_column(texts: Sequence[str]) -> list[Any]:
    """Every JSON text of a column in one parse (one decoder call per batch)."""
    return loads("[" + ",".join(texts) + "]") if texts else []


def _stored_cases(rows: Sequence[tuple[Any, ...]], path: Path) -> list[Case]:
    """Cases from the sidecar's own tables (validated when they were ingested)."""
    payloads = _json_column([r[4] for r in rows])
    decisions = _json_column([r[7] for r in rows])
    out = []
    for row, payload, decision in zip(rows, payloads, decisions, strict=True):
        _, _, eid, tt, _, occurred, segment, _, actions, by, at, stated, recorded, trace = row[:14]
        acts = () if actions == "[]" else as_actions(loads(actions))
        outcome = Outcome(eid, decision, acts, by, at, _handling(stated, path, "outcomes", eid))
        s_decision, s_actions, s_by = row[14:17]
        second = None
        if s_decision is not None:
            s_acts = () if s_actions in (None, "[]") else as_actions(loads(s_actions))
            second = SecondOpinion(loads(s_decision), s_acts, s_by)
        out.append(
            Case(
                WorkEvent(eid, tt, payload, occurred, segment),
                outcome,
                _handling(recorded, path, "handling", eid),
                trace,
                second,
            )
        )
    return out


_HANDLINGS = {h.value: h for h in Handling}


def _handling(value: str | None, path: Path, table: str, event_id: str) -> Handling | None:
    if value is None:
        return None
    found = _HANDLINGS.get(value)
    if found is None:
        raise HistoryError(
            f"{path}: table {table}, event {event_id!r}, column handled_by: expected "
            f'"agent", "assisted" or "blind", got {value!r}'
        )
    return found


def _shard_of(event_id: str, shards: int) -> int:
    """The shard of a JSONL case (any stable hash works: it only splits one run's work)."""
    return zlib.crc32(event_id.encode()) % shards


def _chunks(items: list[Case], size: int) -> Iterator[list[Case]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
