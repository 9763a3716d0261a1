"""The file source: a JSONL file of mixed records, for backfills (``--source file:PATH.jsonl``).

Each line is one record with ``"kind": "event"`` or ``"kind": "outcome"`` (see
:func:`shadow.ingest.parse_mixed_line`). :meth:`FileSource.run` reads the file once, in
batches of ``batch_size`` non-blank lines, and hands each batch to the sink before reading
the next, so memory holds one batch whatever the file size. Within a batch the events are
submitted first, then the outcomes, then the dead letters; the joiner pairs events and
outcomes in any order, so this is safe.

Never crashes on input. A line it cannot take becomes a dead letter with ``location="line N"``
and the reason: invalid JSON, a schema violation, an unknown ``kind``, bytes that are not
UTF-8, or a line longer than ``max_line_bytes`` (skipped without holding it in memory; the
dead letter's ``raw`` is its first bytes). The ``raw`` of any other bad line is the whole
line: the sink redacts it before keeping anything (:meth:`shadow.intake.Intake.
dead_letter`). Blank lines are skipped; a UTF-8 byte-order mark at the start of the file is
stripped. Duplicate records are passed on: dedupe is the store's job. Each record goes to
the sink with its ``origins`` entry ``"line N"``, the location of the dead letter the sink
makes of it, if any (an unknown task type, a conflicting duplicate).

Reading and parsing run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from shadow.errors import ConfigError, Reason
from shadow.ingest import RAW_LIMIT, RecordError, clip_raw, parse_mixed_line
from shadow.model import Outcome, WorkEvent
from shadow.sources.sink import Sink
from shadow.store import DeadLetter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_LINE_BYTES",
    "FileReport",
    "FileSource",
    "parse_source_spec",
]

DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_LINE_BYTES = 1_048_576
_SKIP_CHUNK = 65_536
_READ_BUFFER = 65_536
_BOM = b"\xef\xbb\xbf"


def parse_source_spec(spec: str) -> tuple[str, str]:
    """``"file:PATH"`` (or ``"file:///ABS/PATH"``) -> ``("file", PATH)``;
    ``"kafka://..."`` -> ``("kafka", spec)`` (the Kafka source parses the rest).

    Raises :class:`~shadow.errors.ConfigError` for anything else.
    """
    if spec.startswith("kafka://"):
        return "kafka", spec
    if spec.startswith("file:"):
        path = spec.removeprefix("file:")
        if path.startswith("//"):
            if not path.startswith("///"):
                raise ConfigError(
                    f"source {spec!r}: file URLs with a host are not supported; "
                    "use file:PATH.jsonl or file:///ABSOLUTE/PATH.jsonl"
                )
            path = path.removeprefix("//")
        if not path:
            raise ConfigError(f"source {spec!r} has no path; use file:PATH.jsonl")
        return "file", path
    raise ConfigError(
        f"unknown source {spec!r}; use file:PATH.jsonl or "
        "kafka://HOST:PORT?events=TOPIC&outcomes=TOPIC&group=GROUP"
    )


@dataclass(frozen=True, slots=True)
class FileReport:
    """What one :meth:`FileSource.run` delivered.

    ``lines`` counts every line read, so ``lines == events + outcomes + dead_letters + blank``.
    ``finished`` is false when :meth:`FileSource.close` stopped the run before the end.
    """

    lines: int = 0
    events: int = 0
    outcomes: int = 0
    dead_letters: int = 0
    blank: int = 0
    finished: bool = False


@dataclass(slots=True)
class _Batch:
    events: list[WorkEvent] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    event_lines: list[str | None] = field(default_factory=list)  # "line N", one per event
    outcome_lines: list[str | None] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    lines: int = 0
    blank: int = 0
    eof: bool = False


class _Reader:
    """The open file and the line count. Every method runs in a worker thread; the lock makes
    :meth:`close` wait for a read in flight (a cancelled ``to_thread`` call keeps running)."""

    def __init__(self, path: Path, source: str, max_line_bytes: int) -> None:
        self._path = path
        self._source = source
        self._limit = max_line_bytes
        self._lock = threading.Lock()
        self._lineno = 0
        try:
            self._file: BinaryIO | None = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115
        except FileNotFoundError:
            raise ConfigError(f"source file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"source path is a directory, not a JSONL file: {path}") from None
        except OSError as e:
            raise ConfigError(f"cannot open source file {path}: {e.strerror or e}") from None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def read_batch(self, size: int) -> _Batch:
        """Up to ``size`` non-blank lines, parsed. ``eof`` is set at the end of the file."""
        batch = _Batch()
        with self._lock:
            file = self._file
            if file is None:
                return batch
            taken = 0
            while taken < size:
                raw = self._readline(file, self._limit + 1)
                if not raw:
                    batch.eof = True
                    break
                self._lineno += 1
                batch.lines += 1
                if len(raw) > self._limit and not raw.endswith(b"\n"):
                    batch.dead.append(self._skip_overlong(file, raw))
                    taken += 1
                    continue
                if self._lineno == 1:
                    raw = raw.removeprefix(_BOM)
                raw = raw.removesuffix(b"\n").removesuffix(b"\r")
                if not raw.strip(b" \t"):
                    batch.blank += 1
                    continue
                taken += 1
                self._parse(raw, batch)
        return batch

    def _parse(self, raw: bytes, batch: _Batch) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            shown = clip_raw(raw[: RAW_LIMIT * 4].decode("utf-8", "backslashreplace"))
            reason = f"line is not UTF-8 at byte {e.start}"
            batch.dead.append(self._letter(reason, shown, code=Reason.ENCODING))
            return
        record = parse_mixed_line(text, self._lineno)
        if isinstance(record, RecordError):
            batch.dead.append(
                self._letter(
                    str(record),
                    text,
                    kind=record.kind,
                    event_id=record.event_id,
                    code=record.code,
                )
            )
        elif isinstance(record, WorkEvent):
            batch.events.append(record)
            batch.event_lines.append(f"line {self._lineno}")
        else:
            batch.outcomes.append(record)
            batch.outcome_lines.append(f"line {self._lineno}")

    def _skip_overlong(self, file: BinaryIO, head: bytes) -> DeadLetter:
        """Read past the rest of an overlong line, keeping only its length and first bytes."""
        total = len(head)
        chunk = head
        while not chunk.endswith(b"\n"):
            chunk = self._readline(file, _SKIP_CHUNK)
            if not chunk:
                break
            total += len(chunk)
        total -= 1 if chunk.endswith(b"\n") else 0
        shown = clip_raw(head[:RAW_LIMIT].decode("utf-8", "backslashreplace"))
        reason = f"line is {total} bytes long; the limit is {self._limit} (max_line_bytes)"
        return self._letter(reason, shown, code=Reason.TOO_LARGE)

    def _readline(self, file: BinaryIO, limit: int) -> bytes:
        try:
            return file.readline(limit)
        except OSError as e:
            raise ConfigError(
                f"reading source file {self._path} failed after line {self._lineno}: "
                f"{e.strerror or e}"
            ) from None

    def _letter(
        self,
        reason: str,
        raw: str | None,
        *,
        kind: str = "unknown",
        event_id: str | None = None,
        code: Reason,
    ) -> DeadLetter:
        return DeadLetter(
            source=self._source,
            kind=kind,
            reason=reason,
            raw=raw,
            event_id=event_id,
            location=f"line {self._lineno}",
            code=code,
        )


class FileSource:
    """Delivers one JSONL file of mixed records to a :class:`~shadow.sources.Sink`.

    ``batch_size``: non-blank lines per batch (and at most this many records per sink call).
    ``max_line_bytes``: longer lines become dead letters. A missing or unreadable file raises
    :class:`~shadow.errors.ConfigError` from :meth:`run`.

    An async context manager; :meth:`close` is idempotent, stops a run in progress after the
    batch being delivered, and returns once the file is closed and the run has wound down.
    """

    def __init__(
        self,
        path: str | Path,
        sink: Sink,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if max_line_bytes < 1:
            raise ConfigError(f"max_line_bytes must be at least 1, got {max_line_bytes}")
        self._path = Path(path)
        self._name = f"file:{os.fspath(path)}"
        self._sink = sink
        self._batch_size = batch_size
        self._max_line_bytes = max_line_bytes
        self._closing = asyncio.Event()
        self._reader: _Reader | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        """``file:<path>``: the ``source`` of every record and dead letter it delivers."""
        return self._name

    async def run(self) -> FileReport:
        """Read the whole file once and deliver it; the counts of what was delivered."""
        if self._closing.is_set():
            raise RuntimeError(f"{self._name}: source is closed")
        if not self._idle.is_set():
            raise RuntimeError(f"{self._name}: run() is already in progress")
        self._idle.clear()
        try:
            reader = await asyncio.to_thread(_Reader, self._path, self._name, self._max_line_bytes)
        except BaseException:
            self._idle.set()
            raise
        self._reader = reader
        counts = {"lines": 0, "events": 0, "outcomes": 0, "dead_letters": 0, "blank": 0}
        finished = False
        try:
            while not self._closing.is_set():
                batch = await asyncio.to_thread(reader.read_batch, self._batch_size)
                if self._closing.is_set():
                    break
                await self._deliver(batch)
                counts["lines"] += batch.lines
                counts["blank"] += batch.blank
                counts["events"] += len(batch.events)
                counts["outcomes"] += len(batch.outcomes)
                counts["dead_letters"] += len(batch.dead)
                if batch.eof:
                    finished = True
                    break
        finally:
            self._reader = None
            try:
                await asyncio.to_thread(reader.close)
            finally:
                self._idle.set()
        return FileReport(**counts, finished=finished)

    async def _deliver(self, batch: _Batch) -> None:
        if batch.events:
            await self._sink.submit_events(
                batch.events, source=self._name, origins=batch.event_lines
            )
        if batch.outcomes:
            await self._sink.submit_outcomes(
                batch.outcomes, source=self._name, origins=batch.outcome_lines
            )
        if batch.dead:
            await self._sink.dead_letter(batch.dead)

    async def close(self) -> None:
        self._closing.set()
        reader = self._reader
        if reader is not None:
            await asyncio.to_thread(reader.close)
        await self._idle.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
