"""The DuckDB store: every durable fact the sidecar keeps. The only module importing duckdb.

Contract:

- **Durable before acknowledged.** Each ``put_*`` call is one transaction; when it returns,
  the records survive a ``kill -9`` (DuckDB's WAL is synced on commit).
- **Idempotent.** Re-delivering an event, outcome or decision is a no-op (``duplicate``).
  A *conflicting* duplicate (same id, different content) is never an overwrite: it becomes
  a dead letter with its reason (``conflict``). An outcome with a *later* ``decided_at``
  is a reversal (a new current revision); an older one is kept as ``superseded`` history.
- **One comparison per (event_id, agent_version)**, re-done only when the current outcome
  revision changes (reversal) or an expired join finally completes.
- **Rows, not RAM.** Pending joins are rows; :meth:`Store.expire` turns the ones older than
  the TTL into ``expired`` comparisons.
- **Off the event loop.** Every call runs on one dedicated thread, which also serialises
  writers (DuckDB allows one writing connection per file).

Schema changes are versioned migrations in :mod:`shadow.schema`.

This module is longer than our ~600-line guide on purpose: "one module owns every DuckDB
call" (so blocking I/O stays on one thread) outweighs splitting it.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import duckdb

from shadow.errors import StoreError
from shadow.model import (
    AuditEntry,
    Comparison,
    Evidence,
    FieldResult,
    Level,
    Outcome,
    ShadowDecision,
    Verdict,
    WorkEvent,
    as_actions,
)
from shadow.promotion import LadderState, Proposal, Step
from shadow.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["DeadLetter", "JoinRow", "PutResult", "PutStatus", "ReplayEvidence", "Store"]

P = ParamSpec("P")
T = TypeVar("T")


class PutStatus(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # dead-lettered, nothing overwritten
    REVERSAL = "reversal"  # outcome with a later decided_at: re-compared
    SUPERSEDED = "superseded"  # outcome older than the current one: kept as history


@dataclass(frozen=True, slots=True)
class PutResult:
    event_id: str
    status: PutStatus
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status is not PutStatus.CONFLICT


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be taken, with why. ``raw`` keeps the input for replay."""

    source: str
    kind: str
    reason: str
    raw: str | None = None
    event_id: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class JoinRow:
    """A decision whose outcome is known and whose comparison is missing or stale."""

    task_type: str
    decision: ShadowDecision
    outcome: Outcome
    outcome_hash: str


@dataclass(frozen=True, slots=True)
class ReplayEvidence:
    """One task type's result of a ``shadow replay --record-evidence`` run. Stored apart
    from live evidence (table ``replay_evidence``): it is audited, never gate evidence."""

    task_type: str
    agent_version: str
    n: int
    agree: int
    critical: int
    errors: int
    lower: float
    upper: float
    policy_hash: str | None
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reversal:
    event_id: str
    agent_version: str
    before: Verdict
    after: Verdict


def _col(rows: Sequence[tuple[Any, ...]], i: int) -> list[Any]:
    return [r[i] for r in rows]


def _stamp(step: Step) -> datetime:
    if step.after.updated_at is None:
        raise ValueError(f"step {step.move} for {step.after.task_type} carries no time")
    return step.after.updated_at


class Store:
    """Async facade over one DuckDB file. Use as ``async with Store(path) as store``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> Self:
        if self._con is not None:
            return self
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow-store")
        try:
            await self._run(self._open)
        except BaseException:
            executor, self._executor = self._executor, None
            if executor is not None:
                executor.shutdown(wait=False)
            raise
        return self

    async def close(self) -> None:
        """Idempotent: checkpoints, closes the file and stops the store thread."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=True)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _open(self) -> None:
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        try:
            con = duckdb.connect(self.path)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        try:
            con.execute("SET TimeZone = 'UTC'")
            self._con = con
            self._migrate()
        except BaseException as exc:
            self._con = None
            con.close()
            if isinstance(exc, duckdb.Error):
                raise StoreError(f"cannot open store {self.path}: {exc}") from exc
            raise

    def _close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.execute("CHECKPOINT")
            finally:
                con.close()

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError("store is closed")
        return self._con

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException as exc:
            con.execute("ROLLBACK")
            if isinstance(exc, duckdb.Error):
                raise StoreError(f"store write failed: {exc}") from exc
            raise
        else:
            try:
                con.execute("COMMIT")
            except duckdb.Error as exc:
                raise StoreError(f"store write failed: {exc}") from exc

    def _migrate(self) -> None:
        con = self.con
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMPTZ)"
        )
        # Applied versions as a set, not just the highest: a migration merged with a lower
        # number than one already applied (parallel branches) still runs.
        applied = {int(r[0]) for r in con.execute("SELECT version FROM schema_version").fetchall()}
        current = max(applied, default=0)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this sidecar's "
                f"{SCHEMA_VERSION}; upgrade the sidecar"
            )
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            with self._tx() as tx:
                for sql in statements:
                    tx.execute(sql)
                tx.execute("INSERT INTO schema_version VALUES (?, now())", [version])

    async def schema_version(self) -> int:
        def q() -> int:
            row = self.con.execute("SELECT max(version) FROM schema_version").fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return await self._run(q)

    # -- ingest ---------------------------------------------------------------------------

    async def put_events(
        self,
        events: Sequence[WorkEvent],
        *,
        source: str,
        now: datetime,
        needs_agent: Sequence[bool] | None = None,
    ) -> list[PutResult]:
        """Store (already redacted) events. ``needs_agent[i]``: sampled for the agent."""
        flags = list(needs_agent) if needs_agent is not None else [True] * len(events)
        if len(flags) != len(events):
            raise ValueError("needs_agent must have one flag per event")
        return await self._run(self._put_events, list(events), flags, source, now)

    def _put_events(
        self, events: list[WorkEvent], flags: list[bool], source: str, now: datetime
    ) -> list[PutResult]:
        ids = list({e.event_id for e in events})
        known: dict[str, str] = dict(
            self.con.execute(
                "SELECT event_id, content_hash FROM events "
                "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids],
            ).fetchall()
        )
        results: list[PutResult] = []
        rows: list[tuple[Any, ...]] = []
        dead: list[DeadLetter] = []
        for event, flag in zip(events, flags, strict=True):
            digest = event.content_hash
            old = known.get(event.event_id)
            if old is None:
                known[event.event_id] = digest
                rows.append(
                    (
                        event.event_id,
                        event.task_type,
                        json.dumps(event.payload),
                        event.occurred_at,
                        event.segment,
                        digest,
                        flag,
                    )
                )
                results.append(PutResult(event.event_id, PutStatus.STORED))
            elif old == digest:
                results.append(PutResult(event.event_id, PutStatus.DUPLICATE))
            else:
                reason = (
                    f"conflicting duplicate: event {event.event_id} is already stored with "
                    "different content; the first version is kept"
                )
                results.append(PutResult(event.event_id, PutStatus.CONFLICT, reason))
                dead.append(
                    DeadLetter(source, "event", reason, json.dumps(event.to_json()), event.event_id)
                )
        with self._tx() as tx:
            if rows:
                tx.execute(
                    "INSERT INTO events SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), ?, ?::TIMESTAMPTZ, unnest(?::BOOLEAN[]), false",
                    [*(_col(rows, i) for i in range(6)), source, now, _col(rows, 6)],
                )
            self._insert_dead(tx, dead, now)
        return results

    async def put_outcomes(
        self, outcomes: Sequence[Outcome], *, source: str, now: datetime
    ) -> list[PutResult]:
        return await self._run(self._put_outcomes, list(outcomes), source, now)

    def _put_outcomes(self, outcomes: list[Outcome], source: str, now: datetime) -> list[PutResult]:
        ids = list({o.event_id for o in outcomes})
        # event_id -> list of [revision, hash, decided_at_ts, is_current]
        known: dict[str, list[list[Any]]] = {}
        for eid, rev, digest, ts, cur in self.con.execute(
            "SELECT event_id, revision, content_hash, decided_at_ts, is_current FROM outcomes "
            "WHERE event_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY revision",
            [ids],
        ).fetchall():
            known.setdefault(eid, []).append([rev, digest, ts, cur])
        results: list[PutResult] = []
        rows: list[tuple[Any, ...]] = []
        demote: list[tuple[str, int]] = []  # revisions that stop being current
        dead: list[DeadLetter] = []
        for o in outcomes:
            digest = o.content_hash
            ts = o.decided_at_ts
            if ts is not None and ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            revs = known.setdefault(o.event_id, [])
            current = next((r for r in revs if r[3]), None)
            if (current is not None and current[1] == digest) or any(
                r[1] == digest and (ts is None or r[2] == ts) for r in revs
            ):
                results.append(PutResult(o.event_id, PutStatus.DUPLICATE))
                continue
            if current is None:
                status = PutStatus.STORED
            elif ts is not None and (current[2] is None or ts > current[2]):
                status = PutStatus.REVERSAL
            elif ts is not None and current[2] is not None and ts < current[2]:
                status = PutStatus.SUPERSEDED
            else:
                reason = (
                    f"conflicting duplicate: outcome for {o.event_id} already recorded with a "
                    "different decision and no later decided_at; send a later decided_at to "
                    "reverse it"
                )
                results.append(PutResult(o.event_id, PutStatus.CONFLICT, reason))
                dead.append(
                    DeadLetter(source, "outcome", reason, json.dumps(o.to_json()), o.event_id)
                )
                continue
            is_current = status is not PutStatus.SUPERSEDED
            if status is PutStatus.REVERSAL and current is not None:
                current[3] = False
                demote.append((o.event_id, current[0]))
            revision = len(revs) + 1
            revs.append([revision, digest, ts, is_current])
            actions = json.dumps([a.to_json() for a in o.actions])
            rows.append(
                (
                    o.event_id,
                    revision,
                    is_current,
                    json.dumps(o.decision),
                    actions,
                    o.decided_by,
                    o.decided_at,
                    ts,
                    digest,
                )
            )
            results.append(PutResult(o.event_id, status))
        with self._tx() as tx:
            # A revision inserted in this batch and demoted in the same batch is written
            # with its final flag, so only rows already on disk need the UPDATE.
            final = {(r[0], r[1]): r[2] for r in rows}
            for eid, rev in demote:
                if (eid, rev) in final:
                    continue
                tx.execute(
                    "UPDATE outcomes SET is_current = false WHERE event_id = ? AND revision = ?",
                    [eid, rev],
                )
            if rows:
                flags = [next(r[3] for r in known[row[0]] if r[0] == row[1]) for row in rows]
                tx.execute(
                    "INSERT INTO outcomes SELECT unnest(?::VARCHAR[]), unnest(?::INTEGER[]), "
                    "unnest(?::BOOLEAN[]), unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[])::JSON, "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::TIMESTAMPTZ[]), "
                    "unnest(?::VARCHAR[]), ?, ?::TIMESTAMPTZ, false",
                    [
                        _col(rows, 0),
                        _col(rows, 1),
                        flags,
                        *(_col(rows, i) for i in range(3, 9)),
                        source,
                        now,
                    ],
                )
            self._insert_dead(tx, dead, now)
        return results

    async def put_decisions(
        self,
        decisions: Sequence[tuple[ShadowDecision, str]],
        *,
        now: datetime,
        source: str = "agent",
    ) -> list[PutResult]:
        """Store agent decisions as ``(decision, task_type)`` pairs; first answer wins."""
        return await self._run(self._put_decisions, list(decisions), now, source)

    def _put_decisions(
        self, decisions: list[tuple[ShadowDecision, str]], now: datetime, source: str
    ) -> list[PutResult]:
        keys = sorted({(d.event_id, d.agent_version) for d, _ in decisions})
        known: dict[str, str] = {
            f"{eid}\x00{ver}": digest
            for eid, ver, digest in self.con.execute(
                "SELECT d.event_id, d.agent_version, d.content_hash FROM decisions d "
                "JOIN (SELECT unnest(?::VARCHAR[]) AS event_id, unnest(?::VARCHAR[]) AS ver) k "
                "ON d.event_id = k.event_id AND d.agent_version = k.ver",
                [[k[0] for k in keys], [k[1] for k in keys]],
            ).fetchall()
        }
        results: list[PutResult] = []
        rows: list[tuple[Any, ...]] = []
        dead: list[DeadLetter] = []
        for d, task_type in decisions:
            key = f"{d.event_id}\x00{d.agent_version}"
            digest = d.content_hash
            old = known.get(key)
            if old is None:
                known[key] = digest
                u = d.usage
                rows.append(
                    (
                        d.event_id,
                        d.agent_version,
                        task_type,
                        json.dumps(d.to_json()),
                        digest,
                        d.error,
                        d.latency_ms,
                        u.input_tokens,
                        u.output_tokens,
                        u.cost_usd,
                    )
                )
                results.append(PutResult(d.event_id, PutStatus.STORED))
            elif old == digest:
                results.append(PutResult(d.event_id, PutStatus.DUPLICATE))
            else:
                reason = (
                    f"conflicting duplicate: agent {d.agent_version} already answered "
                    f"{d.event_id} differently; the first answer is kept"
                )
                results.append(PutResult(d.event_id, PutStatus.CONFLICT, reason))
                dead.append(
                    DeadLetter(source, "decision", reason, json.dumps(d.to_json()), d.event_id)
                )
        with self._tx() as tx:
            if rows:
                tx.execute(
                    "INSERT INTO decisions (event_id, agent_version, task_type, body, "
                    "content_hash, error, latency_ms, input_tokens, output_tokens, cost_usd, "
                    "received_at) SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(?::DOUBLE[]), unnest(?::BIGINT[]), "
                    "unnest(?::BIGINT[]), unnest(?::DOUBLE[]), ?::TIMESTAMPTZ",
                    [*(_col(rows, i) for i in range(10)), now],
                )
                tx.execute(
                    "UPDATE events SET needs_agent = false WHERE needs_agent AND event_id IN "
                    "(SELECT unnest(?::VARCHAR[]))",
                    [_col(rows, 0)],
                )
            self._insert_dead(tx, dead, now)
        return results

    async def put_dead_letters(self, letters: Sequence[DeadLetter], *, now: datetime) -> None:
        def write() -> None:
            with self._tx() as tx:
                self._insert_dead(tx, list(letters), now)

        await self._run(write)

    @staticmethod
    def _insert_dead(tx: duckdb.DuckDBPyConnection, dead: list[DeadLetter], now: datetime) -> None:
        if not dead:
            return
        tx.execute(
            "INSERT INTO dead_letters (recorded_at, source, kind, reason, event_id, location, raw) "
            "SELECT ?::TIMESTAMPTZ, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
            "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
            "unnest(?::VARCHAR[])",
            [
                now,
                [d.source for d in dead],
                [d.kind for d in dead],
                [d.reason for d in dead],
                [d.event_id for d in dead],
                [d.location for d in dead],
                [d.raw for d in dead],
            ],
        )

    # -- join -----------------------------------------------------------------------------

    async def ready_pairs(
        self, event_ids: Sequence[str] | None = None, *, limit: int = 10_000
    ) -> list[JoinRow]:
        """Decisions with a current outcome and no up-to-date comparison.

        With ``event_ids``, only those events; without, a sweep over everything (used at
        start-up to finish work a crash interrupted)."""
        return await self._run(
            self._ready_pairs, None if event_ids is None else list(event_ids), limit
        )

    def _ready_pairs(self, event_ids: list[str] | None, limit: int) -> list[JoinRow]:
        sql = (
            "SELECT d.task_type, d.body, o.event_id, o.decision, o.actions, o.decided_by, "
            "o.decided_at, o.content_hash FROM decisions d "
            "JOIN events e ON e.event_id = d.event_id "
            "JOIN outcomes o ON o.event_id = d.event_id AND o.is_current "
            "LEFT JOIN comparisons c ON c.event_id = d.event_id "
            "AND c.agent_version = d.agent_version "
            "WHERE (c.event_id IS NULL OR c.outcome_hash IS DISTINCT FROM o.content_hash) "
        )
        params: list[Any] = []
        if event_ids is not None:
            sql += "AND d.event_id IN (SELECT unnest(?::VARCHAR[])) "
            params.append(event_ids)
        sql += "ORDER BY d.seq LIMIT ?"
        params.append(limit)
        out: list[JoinRow] = []
        for task_type, body, eid, decision, actions, by, at, digest in self.con.execute(
            sql, params
        ).fetchall():
            outcome = Outcome(eid, json.loads(decision), as_actions(json.loads(actions)), by, at)
            out.append(
                JoinRow(task_type, ShadowDecision.from_stored(json.loads(body)), outcome, digest)
            )
        return out

    async def put_comparisons(
        self, comparisons: Sequence[Comparison], *, now: datetime, actor: str = "joiner"
    ) -> list[Reversal]:
        """Upsert comparisons; a changed outcome behind an existing verdict is audited as a
        reversal. Returns the reversals so callers can correct their metrics."""
        return await self._run(self._put_comparisons, list(comparisons), now, actor)

    def _put_comparisons(
        self, comparisons: list[Comparison], now: datetime, actor: str
    ) -> list[Reversal]:
        if not comparisons:
            return []
        comparisons = list({(c.event_id, c.agent_version): c for c in comparisons}.values())
        keys = [f"{c.event_id}\x00{c.agent_version}" for c in comparisons]
        before: dict[str, tuple[Verdict, str | None]] = {
            f"{eid}\x00{ver}": (Verdict(v), digest)
            for eid, ver, v, digest in self.con.execute(
                "SELECT event_id, agent_version, verdict, outcome_hash FROM comparisons "
                "WHERE event_id || chr(0) || agent_version IN (SELECT unnest(?::VARCHAR[]))",
                [keys],
            ).fetchall()
        }
        reversals = [
            Reversal(c.event_id, c.agent_version, before[k][0], c.verdict)
            for c, k in zip(comparisons, keys, strict=True)
            if k in before
            and before[k][0] is not Verdict.EXPIRED
            and before[k][1] != c.outcome_hash
        ]
        with self._tx() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO comparisons SELECT unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::BOOLEAN[]), unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[]), "
                "?::TIMESTAMPTZ",
                [
                    [c.event_id for c in comparisons],
                    [c.agent_version for c in comparisons],
                    [c.task_type for c in comparisons],
                    [c.verdict.value for c in comparisons],
                    [c.critical_miss for c in comparisons],
                    [json.dumps([f.to_json() for f in c.fields]) for c in comparisons],
                    [c.outcome_hash for c in comparisons],
                    now,
                ],
            )
            by_key = {f"{c.event_id}\x00{c.agent_version}": c for c in comparisons}
            entries = [
                AuditEntry(
                    at=now,
                    task_type=by_key[f"{r.event_id}\x00{r.agent_version}"].task_type,
                    actor=actor,
                    action="outcome_reversal",
                    from_level=None,
                    to_level=None,
                    reason=f"outcome for {r.event_id} changed: {r.before} -> {r.after}",
                    evidence={
                        "event_id": r.event_id,
                        "agent_version": r.agent_version,
                        "before": r.before.value,
                        "after": r.after.value,
                    },
                )
                for r in reversals
            ]
            self._insert_audit(tx, entries)
        return reversals

    async def expire(self, *, now: datetime, ttl: timedelta) -> tuple[int, int]:
        """Close joins older than ``ttl``: decisions without an outcome become ``expired``
        comparisons, outcomes without an event are flagged. Returns both counts. A late
        outcome still completes an expired join (it is re-compared)."""
        return await self._run(self._expire, now - ttl, now)

    def _expire(self, cutoff: datetime, now: datetime) -> tuple[int, int]:
        with self._tx() as tx:
            stale = tx.execute(
                "SELECT d.event_id, d.agent_version, d.task_type FROM decisions d "
                "JOIN events e ON e.event_id = d.event_id "
                "LEFT JOIN outcomes o ON o.event_id = d.event_id "
                "LEFT JOIN comparisons c ON c.event_id = d.event_id "
                "AND c.agent_version = d.agent_version "
                "WHERE o.event_id IS NULL AND c.event_id IS NULL AND e.received_at < ?",
                [cutoff],
            ).fetchall()
            if stale:
                tx.execute(
                    "INSERT INTO comparisons SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), 'expired', false, '[]'::JSON, NULL, ?::TIMESTAMPTZ",
                    [_col(stale, 0), _col(stale, 1), _col(stale, 2), now],
                )
                tx.execute(
                    "UPDATE events SET expired = true WHERE event_id IN "
                    "(SELECT unnest(?::VARCHAR[]))",
                    [_col(stale, 0)],
                )
            orphans = tx.execute(
                "UPDATE outcomes SET expired = true WHERE NOT expired AND received_at < ? "
                "AND event_id NOT IN (SELECT event_id FROM events)",
                [cutoff],
            ).fetchone()
        return len(stale), int(orphans[0]) if orphans else 0

    async def events_awaiting_agent(self, *, limit: int = 1000) -> list[WorkEvent]:
        """Sampled events with no decision yet, oldest first (for restart recovery)."""

        def q() -> list[WorkEvent]:
            rows = self.con.execute(
                "SELECT event_id, task_type, payload, occurred_at, segment FROM events "
                "WHERE needs_agent ORDER BY received_at, event_id LIMIT ?",
                [limit],
            ).fetchall()
            return [WorkEvent(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

        return await self._run(q)

    # -- evidence and autonomy ------------------------------------------------------------

    async def evidence(self) -> dict[str, dict[str, Evidence]]:
        """``{task_type: {agent_version: Evidence}}`` from the ``agreement`` view."""

        def q() -> dict[str, dict[str, Evidence]]:
            out: dict[str, dict[str, Evidence]] = {}
            for tt, ver, n, agree, critical, errors, _expired in self.con.execute(
                "SELECT * FROM agreement"
            ).fetchall():
                out.setdefault(tt, {})[ver] = Evidence(tt, ver, n, agree, critical, errors)
            return out

        return await self._run(q)

    async def current_versions(self) -> dict[str, str]:
        """The agent version of the newest decision per task type."""

        def q() -> dict[str, str]:
            rows = self.con.execute(
                "SELECT task_type, arg_max(agent_version, seq) FROM decisions GROUP BY task_type"
            ).fetchall()
            return dict(rows)

        return await self._run(q)

    async def ladder_states(self) -> dict[str, LadderState]:
        def q() -> dict[str, LadderState]:
            out: dict[str, LadderState] = {}
            for tt, level, ver, proposal, updated in self.con.execute(
                "SELECT task_type, level, agent_version, proposal, updated_at FROM autonomy"
            ).fetchall():
                prop = Proposal.from_json(json.loads(proposal)) if proposal else None
                out[tt] = LadderState(tt, Level(level), ver, prop, updated)
            return out

        return await self._run(q)

    async def apply_steps(
        self, steps: Sequence[Step], *, actor: str, frozen: bool | None = None
    ) -> None:
        """Persist the new states of ``steps`` and audit each change, in one transaction.
        ``frozen`` also sets the global freeze flag in the same transaction."""
        await self._run(self._apply_steps, list(steps), actor, frozen)

    def _apply_steps(self, steps: list[Step], actor: str, frozen: bool | None) -> None:
        changed = [s for s in steps if s.changed]
        with self._tx() as tx:
            for s in changed:
                a = s.after
                tx.execute(
                    "INSERT OR REPLACE INTO autonomy VALUES (?, ?, ?, ?, ?::TIMESTAMPTZ)",
                    [
                        a.task_type,
                        int(a.level),
                        a.agent_version,
                        json.dumps(a.proposal.to_json()) if a.proposal else None,
                        a.updated_at,
                    ],
                )
            self._insert_audit(
                tx,
                [
                    AuditEntry(
                        at=_stamp(s),
                        task_type=s.after.task_type,
                        actor=actor,
                        action=s.move.value,
                        from_level=s.before.level,
                        to_level=s.after.level,
                        reason=s.reason,
                        evidence=s.evidence.to_json(),
                        policy_hash=s.evidence.policy_hash,
                    )
                    for s in changed
                ],
            )
            if frozen is not None:
                tx.execute(
                    "INSERT OR REPLACE INTO sidecar_state VALUES ('frozen', ?::JSON)",
                    [json.dumps(frozen)],
                )

    async def save_policy(self, text: str, digest: str) -> None:
        """Keep the policy in force with the evidence, so ``shadow status --db`` can read
        a database without the policy file."""

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR REPLACE INTO sidecar_state VALUES ('policy', ?::JSON)",
                    [json.dumps({"text": text, "hash": digest})],
                )

        await self._run(write)

    async def policy_text(self) -> str | None:
        def q() -> str | None:
            row = self.con.execute(
                "SELECT value FROM sidecar_state WHERE key = 'policy'"
            ).fetchone()
            return str(json.loads(row[0])["text"]) if row else None

        return await self._run(q)

    async def is_frozen(self) -> bool:
        def q() -> bool:
            row = self.con.execute(
                "SELECT value FROM sidecar_state WHERE key = 'frozen'"
            ).fetchone()
            return bool(json.loads(row[0])) if row else False

        return await self._run(q)

    @staticmethod
    def _insert_audit(tx: duckdb.DuckDBPyConnection, entries: list[AuditEntry]) -> None:
        for e in entries:
            tx.execute(
                "INSERT INTO audit_log (recorded_at, task_type, actor, action, from_level, "
                "to_level, "
                "reason, evidence, policy_hash) VALUES (?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, "
                "?::JSON, ?)",
                [
                    e.at,
                    e.task_type,
                    e.actor,
                    e.action,
                    None if e.from_level is None else str(e.from_level),
                    None if e.to_level is None else str(e.to_level),
                    e.reason,
                    json.dumps(e.evidence),
                    e.policy_hash,
                ],
            )

    async def audit_log(
        self, *, task_type: str | None = None, limit: int = 100
    ) -> list[tuple[int, AuditEntry]]:
        """Newest first, as ``(id, entry)``."""

        def q() -> list[tuple[int, AuditEntry]]:
            sql = (
                "SELECT id, recorded_at, task_type, actor, action, from_level, to_level, reason, "
                "evidence, policy_hash FROM audit_log "
            )
            params: list[Any] = []
            if task_type is not None:
                sql += "WHERE task_type = ? "
                params.append(task_type)
            sql += "ORDER BY id DESC LIMIT ?"
            params.append(limit)
            out = []
            for row in self.con.execute(sql, params).fetchall():
                entry = AuditEntry(
                    at=row[1],
                    task_type=row[2],
                    actor=row[3],
                    action=row[4],
                    from_level=Level.parse(row[5]) if row[5] else None,
                    to_level=Level.parse(row[6]) if row[6] else None,
                    reason=row[7],
                    evidence=json.loads(row[8]),
                    policy_hash=row[9],
                )
                out.append((int(row[0]), entry))
            return out

        return await self._run(q)

    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]:
        def q() -> list[dict[str, Any]]:
            cur = self.con.execute(
                "SELECT id, recorded_at, source, kind, reason, event_id, location, raw "
                "FROM dead_letters "
                "ORDER BY id DESC LIMIT ?",
                [limit],
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

        return await self._run(q)

    # -- Kafka outbox (shadow.sources.publish) ------------------------------------------

    async def unpublished_comparisons(self, *, limit: int = 1000) -> list[Comparison]:
        """Comparisons whose current verdict and outcome revision are not yet marked
        published (oldest first): the comparisons topic's outbox."""

        def q() -> list[Comparison]:
            rows = self.con.execute(
                "SELECT c.event_id, c.task_type, c.agent_version, c.verdict, c.critical, "
                "c.fields, c.outcome_hash FROM comparisons c "
                "LEFT JOIN published_comparisons p ON p.event_id = c.event_id "
                "AND p.agent_version = c.agent_version "
                "WHERE p.event_id IS NULL OR p.verdict <> c.verdict "
                "OR p.outcome_hash IS DISTINCT FROM c.outcome_hash "
                "ORDER BY c.compared_at, c.event_id, c.agent_version LIMIT ?",
                [limit],
            ).fetchall()
            return [
                Comparison(
                    r[0],
                    r[1],
                    r[2],
                    Verdict(r[3]),
                    tuple(FieldResult.from_json(f) for f in json.loads(r[5])),
                    bool(r[4]),
                    r[6],
                )
                for r in rows
            ]

        return await self._run(q)

    async def mark_published(self, comparisons: Sequence[Comparison], *, now: datetime) -> None:
        """Record that these comparisons (verdict and outcome revision) were published."""
        if not comparisons:
            return
        rows = list({(c.event_id, c.agent_version): c for c in comparisons}.values())

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR REPLACE INTO published_comparisons SELECT unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "?::TIMESTAMPTZ",
                    [
                        [c.event_id for c in rows],
                        [c.agent_version for c in rows],
                        [c.verdict.value for c in rows],
                        [c.outcome_hash for c in rows],
                        now,
                    ],
                )

        await self._run(write)

    # -- replay evidence (shadow replay --record-evidence) -------------------------------

    async def put_replay_evidence(
        self,
        entries: Sequence[ReplayEvidence],
        *,
        run_id: str,
        history: str,
        now: datetime,
        actor: str = "replay",
    ) -> None:
        """Keep a replay run's per task type results, each audited (action
        ``replay_evidence``), in one transaction. Never touches live evidence or levels."""

        def write() -> None:
            with self._tx() as tx:
                for e in entries:
                    tx.execute(
                        "INSERT INTO replay_evidence (run_id, recorded_at, task_type, "
                        "agent_version, n, agree, critical, errors, lower, upper, policy_hash, "
                        "history, report) VALUES (?, ?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                        "?, ?::JSON)",
                        [
                            run_id,
                            now,
                            e.task_type,
                            e.agent_version,
                            e.n,
                            e.agree,
                            e.critical,
                            e.errors,
                            e.lower,
                            e.upper,
                            e.policy_hash,
                            history,
                            json.dumps(e.report),
                        ],
                    )
                self._insert_audit(
                    tx,
                    [
                        AuditEntry(
                            at=now,
                            task_type=e.task_type,
                            actor=actor,
                            action="replay_evidence",
                            from_level=None,
                            to_level=None,
                            reason=(
                                f"replay {run_id} of {history}: agent {e.agent_version} agreed "
                                f"{e.agree}/{e.n} (replay evidence, not live evidence)"
                            ),
                            evidence={
                                "run_id": run_id,
                                "agent_version": e.agent_version,
                                "n": e.n,
                                "agree": e.agree,
                                "critical": e.critical,
                                "errors": e.errors,
                                "lower": e.lower,
                                "upper": e.upper,
                                "source": "replay",
                            },
                            policy_hash=e.policy_hash,
                        )
                        for e in entries
                    ],
                )

        await self._run(write)

    async def replay_evidence(self, *, task_type: str | None = None) -> list[dict[str, Any]]:
        """Recorded replay results, oldest first (without the report bodies)."""

        def q() -> list[dict[str, Any]]:
            sql = (
                "SELECT run_id, recorded_at, task_type, agent_version, n, agree, critical, "
                "errors, lower, upper, policy_hash, history FROM replay_evidence "
            )
            params: list[Any] = []
            if task_type is not None:
                sql += "WHERE task_type = ? "
                params.append(task_type)
            cur = self.con.execute(sql + "ORDER BY id", params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

        return await self._run(q)

    async def count(self, table: str) -> int:
        """Row count of one of the store's tables (for status pages and tests)."""
        if table not in {
            "events",
            "outcomes",
            "decisions",
            "comparisons",
            "dead_letters",
            "audit_log",
            "autonomy",
            "published_comparisons",
        }:
            raise ValueError(f"unknown table {table!r}")

        def q() -> int:
            row = self.con.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0

        return await self._run(q)

    async def pending(self) -> dict[str, int]:
        """Open joins: decisions awaiting an outcome, outcomes awaiting their event, and
        sampled events awaiting the agent."""

        def q() -> dict[str, int]:
            row = self.con.execute(
                "SELECT "
                "(SELECT count(*) FROM decisions d WHERE NOT EXISTS (SELECT 1 FROM outcomes o "
                " WHERE o.event_id = d.event_id) AND NOT EXISTS (SELECT 1 FROM comparisons c "
                " WHERE c.event_id = d.event_id AND c.agent_version = d.agent_version)), "
                "(SELECT count(*) FROM outcomes o WHERE o.is_current AND NOT o.expired AND "
                " NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = o.event_id)), "
                "(SELECT count(*) FROM events WHERE needs_agent)"
            ).fetchone()
            assert row is not None
            return {
                "awaiting_outcome": int(row[0]),
                "awaiting_event": int(row[1]),
                "awaiting_agent": int(row[2]),
            }

        return await self._run(q)
