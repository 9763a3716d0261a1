"""Replay's values: a recorded case (event with its human outcome) and the selection of
cases to replay. Pure: no I/O, no clock.

Selection (every reader applies the same rules, so a history selects the same cases in
every format):

``task_types``
    Keep only these task types (``None``: all).
``since`` / ``until``
    Keep cases whose time is in ``[since, until)``. A case's time is the event's
    ``occurred_at``, else the outcome's ``decided_at``; with a time bound set, a case
    with neither is left out.
``sample``
    Keep a fraction of cases chosen by a stable hash of ``event_id``
    (:func:`shadow.policy.stable_fraction` with salt ``"replay"``): the same cases on
    every run, machine and format, so a resumed run and its baseline see the same set.
``limit``
    Keep at most this many cases, in ``event_id`` order (readers yield cases sorted by
    ``event_id``), after the other rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shadow.model import Handling, Outcome, SecondOpinion, WorkEvent
from shadow.policy import stable_fraction

__all__ = ["Case", "HistoryStats", "Selection", "most_common_version"]

SAMPLE_SALT = "replay"


@dataclass(frozen=True, slots=True)
class Case:
    """One recorded case: the work event as recorded and the human's current outcome.

    ``recorded`` is the sidecar's own record of how the item was handled (its routing
    answer, from a sidecar DuckDB history's ``handling`` table; ``None``: never routed, or a
    JSONL/Parquet history). With the outcome's own ``handled_by`` it decides whether the
    case is evidence, by the live rule (:attr:`shadow.store.JoinRow.handled_by`): the
    record, else what the outcome states, else blind. ``trace_id`` is the case's live
    OpenTelemetry trace (a sidecar history whose comparison kept one: shadow.tracing), shown
    with the report's example cases. ``second`` is the event's second opinion (an
    independent second human decision: the human ceiling, :mod:`replay.noise`), never
    evidence about the agent."""

    event: WorkEvent
    outcome: Outcome
    recorded: Handling | None = None
    trace_id: str | None = None
    second: SecondOpinion | None = None

    @property
    def event_id(self) -> str:
        return self.event.event_id

    @property
    def task_type(self) -> str:
        return self.event.task_type

    def time(self) -> datetime | None:
        """``occurred_at``, else ``decided_at`` (both are validated ISO-8601 with a zone)."""
        text = self.event.occurred_at or self.outcome.decided_at
        if text is None:
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which recorded cases to replay; see the module docstring."""

    task_types: frozenset[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    sample: float = 1.0
    limit: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.sample <= 1.0:
            raise ValueError(f"sample must be in (0, 1], got {self.sample}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a timezone, e.g. 2026-11-20T00:00:00Z")

    def accepts(self, case: Case) -> bool:
        """Every rule except ``limit`` (which depends on the order of the whole history)."""
        if self.task_types is not None and case.task_type not in self.task_types:
            return False
        if self.since is not None or self.until is not None:
            when = case.time()
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when >= self.until:
                return False
        return self.sample >= 1.0 or stable_fraction(case.event_id, SAMPLE_SALT) < self.sample

    def to_json(self) -> dict[str, object]:
        return {
            "task_types": sorted(self.task_types) if self.task_types is not None else None,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "sample": self.sample,
            "limit": self.limit,
        }


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
    second_opinions: int = 0  # selected cases with a second opinion (the human ceiling)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "events": self.events,
            "outcomes": self.outcomes,
            "cases": self.cases,
            "without_outcome": self.without_outcome,
            "outcomes_without_event": self.outcomes_without_event,
            "selected": self.selected,
            "second_opinions": self.second_opinions,
        }


def most_common_version(counts: Mapping[str, int]) -> str | None:
    """The agent version with the most answers; on a tie the first in sort order, so a
    sharded run (counts merged in any order) names the version a single run names."""
    if not counts:
        return None
    return min(counts, key=lambda v: (-counts[v], v))
