"""Reading a JSONL history: one record per line with ``"kind": "event"`` or ``"kind":
"outcome"`` (DESIGN.md's data contracts), validated whole before the first case is used.

Lines are parsed by :func:`shadow.ingest.parse_mixed_line`, the live file source's parser
(strict JSON: a repeated key, ``NaN`` or a lone surrogate escape is an error). Every problem
is reported with ``FILE:LINE: field: message`` (up to 10 at once, in one
:class:`~replay.errors.HistoryError`). Joining rules are those of :mod:`replay.history`:
the first of duplicate events is kept; of several outcomes the latest ``decided_at`` wins
(ties: the later line). A second opinion (an outcome's ``second_opinion`` object, or a
record with ``"second_opinion": true``, which is never an outcome) is kept one per event by
the live rule. The whole file is held in memory (as cases), which suits exports;
large histories belong in the sidecar's DuckDB file or in Parquet, which are streamed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from replay.errors import HistoryError
from replay.model import Case, HistoryStats
from shadow.ingest import RecordError, parse_mixed_line
from shadow.model import Outcome, SecondOpinion, WorkEvent

__all__ = ["MAX_ERRORS", "read_jsonl"]

MAX_ERRORS = 10  # problems listed in one HistoryError


def read_jsonl(path: Path, stats: HistoryStats) -> list[Case]:
    """Every case of a JSONL history, validated whole (all problems, up to 10, at once)."""
    events: dict[str, WorkEvent] = {}
    outcomes: dict[str, tuple[datetime | None, int, Outcome]] = {}
    seconds: dict[str, tuple[datetime | None, int, SecondOpinion]] = {}
    errors: list[str] = []
    try:
        f = path.open("rb")
    except OSError as exc:
        raise HistoryError(f"cannot read history {path}: {exc.strerror or exc}") from None
    with f:
        for number, raw in enumerate(f, start=1):
            if len(errors) >= MAX_ERRORS:
                break
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(f"{where}: not UTF-8 at byte {exc.start}")
                continue
            # The live file source's parser: the same strict JSON (no duplicate keys, NaN or
            # lone surrogates) and the same messages.
            record = parse_mixed_line(text.removeprefix("\ufeff") if number == 1 else text, number)
            if isinstance(record, RecordError):
                errors.append(f"{where}: {record}")
            elif isinstance(record, WorkEvent):
                stats.events += 1
                events.setdefault(record.event_id, record)
            else:
                second = record.as_second_opinion()
                if second is not None:
                    # Only a record that *is* one has its own decided_at (the live rule).
                    _second(seconds, record, second, number)
                if record.is_second_opinion:
                    continue  # a second opinion, never an outcome or a revision of one
                stats.outcomes += 1
                ts = record.decided_at_ts
                old = outcomes.get(record.event_id)
                if old is None or _later(ts, number, old[0], old[1]):
                    outcomes[record.event_id] = (ts, number, record)
    if errors:
        raise HistoryError("\n".join(errors[:MAX_ERRORS]))
    cases = [
        Case(e, outcomes[i][2], second=seconds[i][2] if i in seconds else None)
        for i, e in sorted(events.items())
        if i in outcomes
    ]
    stats.cases = len(cases)
    stats.without_outcome = len(events) - len(cases)
    stats.outcomes_without_event = sum(1 for i in outcomes if i not in events)
    return cases


def _second(
    seconds: dict[str, tuple[datetime | None, int, SecondOpinion]],
    record: Outcome,
    second: SecondOpinion,
    line: int,
) -> None:
    """Keep ``second`` as its event's second opinion by the live rule
    (:class:`shadow.store.noise.SecondOpinions`): the same content again changes nothing; a
    different one replaces the kept one unless that one was decided later; when either has
    no ``decided_at`` the later line wins."""
    ts = record.decided_at_ts if record.is_second_opinion else None
    old = seconds.get(record.event_id)
    if old is not None:
        if old[2].content_hash == second.content_hash:
            return
        if ts is not None and old[0] is not None and old[0] > ts:
            return
    seconds[record.event_id] = (ts, line, second)


def _later(ts: datetime | None, line: int, old_ts: datetime | None, old_line: int) -> bool:
    if ts is None or old_ts is None:
        return old_ts is None and (ts is not None or line > old_line)
    return ts > old_ts or (ts == old_ts and line > old_line)
