"""Reading a JSONL history: one record per line with ``"kind": "event"`` or ``"kind":
"outcome"`` (DESIGN.md's data contracts), validated whole before the first case is used.

Every problem is reported with ``FILE:LINE: field: message`` (up to 10 at once, in one
:class:`~replay.errors.HistoryError`). Joining rules are those of :mod:`replay.history`:
the first of duplicate events is kept; of several outcomes the latest ``decided_at`` wins
(ties: the later line). The whole file is held in memory (as cases), which suits exports;
large histories belong in the sidecar's DuckDB file or in Parquet, which are streamed.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from replay.errors import HistoryError
from replay.model import Case
from shadow.errors import ValidationError
from shadow.model import Outcome, WorkEvent

if TYPE_CHECKING:
    from replay.history import HistoryStats

__all__ = ["MAX_ERRORS", "read_jsonl"]

MAX_ERRORS = 10  # problems listed in one HistoryError


def read_jsonl(path: Path, stats: HistoryStats) -> list[Case]:
    """Every case of a JSONL history, validated whole (all problems, up to 10, at once)."""
    events: dict[str, WorkEvent] = {}
    outcomes: dict[str, tuple[datetime | None, int, Outcome]] = {}
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
                obj = json.loads(raw)
            except ValueError as exc:
                errors.append(f"{where}: invalid JSON: {exc}")
                continue
            kind = obj.get("kind") if isinstance(obj, dict) else None
            if not isinstance(obj, dict):
                errors.append(
                    f"{where}: expected a JSON object with a kind, got {type(obj).__name__}"
                )
            elif kind == "event":
                try:
                    event = WorkEvent.from_json(obj)
                except ValidationError as exc:
                    errors.extend(f"{where}: {e}" for e in exc.errors)
                    continue
                stats.events += 1
                events.setdefault(event.event_id, event)
            elif kind == "outcome":
                try:
                    outcome = Outcome.from_json(obj)
                except ValidationError as exc:
                    errors.extend(f"{where}: {e}" for e in exc.errors)
                    continue
                stats.outcomes += 1
                ts = outcome.decided_at_ts
                old = outcomes.get(outcome.event_id)
                if old is None or _later(ts, number, old[0], old[1]):
                    outcomes[outcome.event_id] = (ts, number, outcome)
            elif kind is None:
                errors.append(f'{where}: kind: required; expected "event" or "outcome"')
            else:
                errors.append(f'{where}: kind: expected "event" or "outcome", got {kind!r}')
    if errors:
        raise HistoryError("\n".join(errors[:MAX_ERRORS]))
    cases = [Case(e, outcomes[i][2]) for i, e in sorted(events.items()) if i in outcomes]
    stats.cases = len(cases)
    stats.without_outcome = len(events) - len(cases)
    stats.outcomes_without_event = sum(1 for i in outcomes if i not in events)
    return cases


def _later(ts: datetime | None, line: int, old_ts: datetime | None, old_line: int) -> bool:
    if ts is None or old_ts is None:
        return old_ts is None and (ts is not None or line > old_line)
    return ts > old_ts or (ts == old_ts and line > old_line)
