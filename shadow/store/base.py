"""The connection, its thread, transactions and migrations: what every part of the store
builds on. ``StoreBase`` is not used alone; :class:`shadow.store.Store` combines it with the
parts that own each group of tables.

**One row never poisons a batch.** Every batch writer runs through
:meth:`StoreBase._write_batch`: when the batch fails because of what a row holds (text with
no UTF-8 form such as a lone surrogate, JSON DuckDB refuses, a value out of range, a
constraint), it is halved and each half written again, down to the row, so every good row
is stored and each bad one becomes a dead letter with DuckDB's reason (counted through
:meth:`StoreBase.observe_set_aside`). A failure of the store itself (I/O, out of memory, a
closed store) is raised as before and the caller retries. Dead letters and audit entries
are made storable (:func:`storable`, :func:`storable_json`) before they are written, so they
cannot fail the same way.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import duckdb

from shadow.audit_chain import ChainEntry, utc_instant
from shadow.errors import (
    StoreDamagedError,
    StoreError,
    StoreFullError,
    StoreInUseError,
    StoreReadOnlyError,
    StoreTooNewError,
)
from shadow.model import AuditEntry, Comparison
from shadow.schema import AUDIT_CHAIN_VERSION, MIGRATIONS, SCHEMA_VERSION
from shadow.store.audit import backfill_chain, insert_chained, reserve
from shadow.store.records import DeadLetter

P = ParamSpec("P")
T = TypeVar("T")
Row = TypeVar("Row")
Out = TypeVar("Out")

log = logging.getLogger("shadow.store")

# Errors that say what a row holds cannot be stored, rather than that the store is failing:
# DuckDB refusing a value (conversion, range, type, constraint) and Python refusing to encode
# or serialise it. DuckDB's "Invalid Input Error" is one only for a conversion (a str with a
# lone surrogate has no UTF-8 form); otherwise it is a bug, which must not eat rows.
_ROW_ERRORS: tuple[type[BaseException], ...] = (
    duckdb.DataError,
    duckdb.IntegrityError,
    ValueError,  # UnicodeEncodeError among them; json.dumps's "Out of range float values"
    RecursionError,
)
_MAX_REASON = 500  # characters of DuckDB's message a dead letter keeps


def storable(text: str | None) -> str | None:
    """``text`` as the store can hold it: unchanged when it is valid Unicode, else with each
    lone surrogate written as its escape (``\\ud800``)."""
    if text is None:
        return None
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def storable_json(value: Any) -> str:
    """``json.dumps(value)``, with every string and key made :func:`storable` first when
    one holds a lone surrogate (DuckDB's JSON parser refuses the ``"\\ud800"`` escape)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        value = _storable_strings(value)
    return json.dumps(value)


def _storable_strings(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _storable_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_strings(v) for v in value]
    return value


def _row_error(exc: BaseException) -> str | None:
    """Why ``exc`` (or an exception it was raised from) says a row cannot be stored, in one
    storable line; ``None`` when it is a failure of the store itself."""
    seen: BaseException | None = exc
    while seen is not None:
        row = isinstance(seen, _ROW_ERRORS) or (
            isinstance(seen, duckdb.InvalidInputException) and "Conversion" in str(seen)
        )
        if row:
            text = " ".join(str(seen).split()) or type(seen).__name__
            return storable(text[:_MAX_REASON]) or type(seen).__name__
        seen = seen.__cause__
    return None


# DuckDB names the holder of a file lock: '... Conflicting lock is held in /usr/bin/python3
# (PID 4242) by user ...'.
_LOCK_HOLDER = re.compile(r"\(PID (\d+)\)")
# DuckDB raises one class (IOException, or a bare Error) for a lock, a full disk and a
# damaged file alike: the kind is in its message, in DuckDB's words or the OS's (strerror).
_FULL = ("no space left on device", "file too large", "disk quota exceeded")
_FULL_ERRNO = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_READ_ONLY = ("read-only file system", "permission denied", "operation not permitted")
_READ_ONLY_ERRNO = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_DAMAGED = (
    "not a valid duckdb database file",
    "corrupt database file",
    "does not match stored checksum",
    "failure while replaying wal",
)
_SHOWN = 300  # characters of DuckDB's own message kept in a plain StoreError


def store_error(path: str, exc: BaseException, *, opening: bool = False) -> StoreError:
    """``exc`` (DuckDB's, or an OSError met on the store's thread) as the project's own
    error: one line naming ``path`` and saying what to do. ``opening``: it was met while
    opening or migrating the store. A :class:`StoreError` is returned as it is."""
    if isinstance(exc, StoreError):
        return exc
    text = " ".join(str(exc).split()) or type(exc).__name__
    low = text.lower()
    code = exc.errno if isinstance(exc, OSError) else None
    where = f"cannot open store {path}: " if opening else f"store {path}: "
    if isinstance(exc, duckdb.IOException) and "lock" in low:
        found = _LOCK_HOLDER.search(text)
        pid = int(found.group(1)) if found else None
        holder = f"process {pid}" if pid is not None else "another process"
        return StoreInUseError(
            f"cannot open store {path}: in use by {holder} "
            "(DuckDB lets only one process open a file)",
            pid=pid,
        )
    if code in _FULL_ERRNO or any(w in low for w in _FULL):
        return StoreFullError(
            f"{where}the disk holding {path} is full; free space on it (or move the store "
            "to a larger disk) and retry"
        )
    if code in _READ_ONLY_ERRNO or any(w in low for w in _READ_ONLY):
        why = "the file system is read-only" if "read-only" in low else "permission denied"
        return StoreReadOnlyError(
            f"{where}{why}; let the sidecar's user write the file and its directory, or "
            "point the sidecar at a writable path"
        )
    if any(w in low for w in _DAMAGED):
        return StoreDamagedError(
            f"{where}it is not a valid DuckDB database file or it is damaged; restore it "
            "from a backup or move it aside"
        )
    if "is a directory" in low or code == errno.EISDIR:
        return StoreError(f"{where}it is a directory; point the sidecar at a file")
    if isinstance(exc, OSError):
        shown = exc.strerror or text
        return StoreError(f"{where}{shown[:_SHOWN]}; check the path and its directories")
    if len(text) > _SHOWN:
        text = text[:_SHOWN] + "…"
    return StoreError(
        f"{where}DuckDB failed: {text}; retry, and if it keeps failing restart the sidecar "
        "and see its log"
    )


class StoreBase:
    """Async facade over one DuckDB file. Use as ``async with Store(path) as store``."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """``read_only``: open an existing file without writing to it (no migration: a file
        at another schema version is refused), sharing it with other readers but not with
        a process that writes it (:class:`~shadow.errors.StoreInUseError`); for tools that
        only read, such as ``shadow audit verify --db``."""
        self.path = str(path)
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._set_aside: list[Callable[[str, int], None]] = []
        # Why the store is failing (the last StoreError since the last committed write), or
        # None: readiness reads it, and each change is one WARNING line, not one per request.
        self._failing: StoreError | None = None
        self._commits = 0  # committed transactions (counted on the store's thread)

    @property
    def failing(self) -> str | None:
        """Why the store cannot work now (a failure since its last committed write: a full
        disk, a read-only or damaged file, an I/O error), or ``None``."""
        return None if self._failing is None else str(self._failing)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> Self:
        if self._con is not None:
            return self
        self._executor = executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shadow-store"
        )
        try:
            await self._on_thread(executor, self._open, opening=True)
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
            await self._on_thread(executor, self._close)
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
        return await self._on_thread(self._executor, lambda: fn(*args, **kwargs))

    async def _on_thread(
        self, executor: ThreadPoolExecutor, call: Callable[[], T], *, opening: bool = False
    ) -> T:
        """``call()`` on the store's thread: the one place DuckDB's errors (and an OSError
        met there) become :class:`StoreError` (:func:`store_error`). Inside, on the thread,
        they stay DuckDB's, so :meth:`_write_batch` can tell a row's error from the
        store's."""
        before = self._commits
        try:
            out = await asyncio.get_running_loop().run_in_executor(executor, call)
        except (duckdb.Error, OSError) as exc:
            error = store_error(self.path, exc, opening=opening)
            if not opening:
                self._fails(error)
            raise error from exc
        if self._failing is not None and self._commits != before:
            log.warning(
                "store %s writes again (%s is over)", self.path, type(self._failing).__name__
            )
            self._failing = None
        return out

    def _fails(self, error: StoreError) -> None:
        """Note a failure: one WARNING line when the store's state changes (a first failure,
        or a failure of another kind), not one per request that meets it."""
        if self._failing is None or type(self._failing) is not type(error):
            log.warning("store failing, not ready until a write succeeds: %s", error)
        self._failing = error

    def _open(self) -> None:
        if self.read_only:
            con = duckdb.connect(self.path, read_only=True)
        else:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(self.path)
        try:
            con.execute("SET TimeZone = 'UTC'")
            self._con = con
            if self.read_only:
                self._check_version()
            else:
                self._migrate()
        except BaseException:
            self._con = None
            con.close()
            raise

    def _close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                if not self.read_only:
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
        except BaseException:
            con.execute("ROLLBACK")
            raise  # DuckDB's own error: translated where the thread hands back (_on_thread)
        else:
            con.execute("COMMIT")
            self._commits += 1

    def _check_version(self) -> None:
        """A read-only store's file must be at this sidecar's schema version."""
        con = self.con
        has_table = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version'"
        ).fetchone()
        if not has_table or not has_table[0]:
            raise StoreError(f"cannot open store {self.path}: it is not a sidecar's store")
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise self._too_new(current)
        if current < SCHEMA_VERSION:
            raise StoreError(
                f"cannot open store {self.path} read-only: it is at schema version {current}, "
                f"below this sidecar's {SCHEMA_VERSION}; run this sidecar on it once (it "
                "migrates the file when it opens it) and read it again"
            )

    def _too_new(self, current: int) -> StoreTooNewError:
        return StoreTooNewError(
            f"cannot open store {self.path}: a newer sidecar wrote it (schema version "
            f"{current}, above this sidecar's {SCHEMA_VERSION}); run a sidecar with schema "
            f"version {current} or later on it",
            found=current,
            supported=SCHEMA_VERSION,
        )

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
            # Refused before anything is written: a downgrade would lose what it added.
            raise self._too_new(current)
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            with self._tx() as tx:
                for sql in statements:
                    tx.execute(sql)
                if version == AUDIT_CHAIN_VERSION:
                    chained = backfill_chain(tx)
                    if chained:
                        log.info("store %s: hash-chained %d audit entries", self.path, chained)
                tx.execute("INSERT INTO schema_version VALUES (?, now())", [version])

    async def schema_version(self) -> int:
        def q() -> int:
            row = self.con.execute("SELECT max(version) FROM schema_version").fetchone()
            return int(row[0]) if row and row[0] is not None else 0

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
            "autonomy_outbox",
            "tool_calls",
            "tool_approvals",
            "handling",
            "second_opinions",
            "repeats",
            "human_verdicts",
            "repeat_verdicts",
        }:
            raise ValueError(f"unknown table {table!r}")

        def q() -> int:
            row = self.con.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0

        return await self._run(q)

    async def awaiting_agent(self) -> int:
        """Sampled events with no agent decision yet: the backlog pull sources pause on (one
        count, cheaper than :meth:`pending` on the hot backpressure path)."""

        def q() -> int:
            row = self.con.execute("SELECT count(*) FROM events WHERE needs_agent").fetchone()
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

    # -- batches that one row cannot poison ------------------------------------------------

    def observe_set_aside(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(table, rows)`` whenever rows meant for ``table`` could not be
        stored and were dead-lettered instead (the metric; see :meth:`_write_batch`). It
        runs on the store's thread, so it must be thread-safe (Prometheus counters are)."""
        self._set_aside.append(callback)

    def _write_batch(
        self,
        table: str,
        rows: Sequence[Row],
        write: Callable[[list[Row]], list[Out]],
        letter: Callable[[Row, str], DeadLetter],
        *,
        now: datetime,
        failed: Callable[[Row, str], list[Out]] | None = None,
        aside: Callable[[duckdb.DuckDBPyConnection, Row], None] | None = None,
    ) -> list[Out]:
        """``write(rows)`` (one transaction), such that no row can poison the batch. On the
        store's thread.

        When ``write`` fails because of what a row holds (:func:`_row_error`), the batch is
        halved and each half written again, down to single rows, so k bad rows among n cost
        about 2k·log2(n) tries. A row that still fails is dead-lettered as ``letter(row,
        reason)`` (made storable), ``aside(tx, row)`` runs in the same transaction, the
        observers count it, and ``failed(row, reason)`` stands for its results (none by
        default). The results of the halves are concatenated in row order. Any other
        failure is raised; halves already written stay written, so writers must be safe
        to retry (idempotent, as every ``put_*`` but the append-only call log is)."""
        batch = list(rows)
        if not batch:
            return []
        try:
            return write(batch)
        except Exception as exc:
            why = _row_error(exc)
            if why is None:
                raise
            if len(batch) > 1:
                mid = len(batch) // 2
                left = self._write_batch(
                    table, batch[:mid], write, letter, now=now, failed=failed, aside=aside
                )
                right = self._write_batch(
                    table, batch[mid:], write, letter, now=now, failed=failed, aside=aside
                )
                return left + right
        row = batch[0]
        dead = letter(row, f"could not be stored in {table}: {why}")
        with self._tx() as tx:
            self._insert_dead(tx, [dead], now)
            if aside is not None:
                aside(tx, row)
        log.warning(
            "a %s row could not be stored (event %s); dead-lettered, the rest of its batch "
            "is stored: %s",
            table,
            storable(dead.event_id),
            why,
        )
        for observe in self._set_aside:
            observe(table, 1)
        return failed(row, why) if failed is not None else []

    @staticmethod
    def _insert_dead(tx: duckdb.DuckDBPyConnection, dead: list[DeadLetter], now: datetime) -> None:
        """Append dead letters, each text made :func:`storable` (a dead letter of a row that
        held a lone surrogate must not fail the same way)."""
        if not dead:
            return
        tx.execute(
            "INSERT INTO dead_letters (recorded_at, source, kind, reason, event_id, location, raw) "
            "SELECT ?::TIMESTAMPTZ, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
            "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
            "unnest(?::VARCHAR[])",
            [
                now,
                [storable(d.source) for d in dead],
                [storable(d.kind) for d in dead],
                [storable(d.reason) for d in dead],
                [storable(d.event_id) for d in dead],
                [storable(d.location) for d in dead],
                [storable(d.raw) for d in dead],
            ],
        )

    @staticmethod
    def _insert_published(
        tx: duckdb.DuckDBPyConnection, comparisons: Sequence[Comparison], now: datetime
    ) -> None:
        """Record (upsert) that these comparisons, verdict and outcome revision, were
        published to the comparisons topic (or folded from it, on the promoter)."""
        if not comparisons:
            return
        tx.execute(
            "INSERT OR REPLACE INTO published_comparisons SELECT unnest(?::VARCHAR[]), "
            "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ?::TIMESTAMPTZ",
            [
                [c.event_id for c in comparisons],
                [c.agent_version for c in comparisons],
                [c.verdict.value for c in comparisons],
                [c.outcome_hash for c in comparisons],
                now,
            ],
        )

    @staticmethod
    def _insert_audit(tx: duckdb.DuckDBPyConnection, entries: list[AuditEntry]) -> list[int]:
        """Append ``entries`` to the audit log, hash-chained (:mod:`shadow.audit_chain`);
        their ids, in order. An entry belongs to the change it records (same transaction),
        so it is never set aside: its text is made :func:`storable` instead (a lone
        surrogate kept as its escape), and its hash is taken over what is stored."""
        if not entries:
            return []
        head, ids = reserve(tx, len(entries))
        insert_chained(tx, head, [_chained(e, i) for e, i in zip(entries, ids, strict=True)])
        return ids


def _chained(entry: AuditEntry, entry_id: int) -> ChainEntry:
    """``entry`` as it reads back once stored under ``entry_id`` (hashes not set yet): each
    text made :func:`storable`, the evidence as its stored JSON parses, the instant in UTC
    (microseconds, as a TIMESTAMPTZ keeps it)."""
    return ChainEntry(
        id=entry_id,
        recorded_at=utc_instant(entry.at),
        task_type=storable(entry.task_type) or "",
        actor=storable(entry.actor) or "",
        action=storable(entry.action) or "",
        from_level=None if entry.from_level is None else str(entry.from_level),
        to_level=None if entry.to_level is None else str(entry.to_level),
        reason=storable(entry.reason) or "",
        evidence=json.loads(storable_json(entry.evidence)),
        policy_hash=storable(entry.policy_hash),
        prev_hash=None,
        entry_hash=None,
    )
