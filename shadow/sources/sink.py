"""The interface every source delivers to (:class:`Sink`), in its own module so that the
sources import it without importing their package (which imports them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shadow.model import Outcome, WorkEvent
from shadow.store import DeadLetter

__all__ = ["Sink"]


class Sink(Protocol):
    """Where a source delivers records (:class:`shadow.intake.Intake` implements it).

    Each call returns once the records are durably taken (stored or dead-lettered), which is
    what lets a source acknowledge them (commit a Kafka offset, move on in a file). The
    per-record results of ``submit_*`` are the sink's business; sources do not inspect them.
    ``origins[i]`` says where record ``i`` was read (``"line N"``), for the dead letter the
    sink may make of it. A dead letter's ``raw`` is the input as read: the sink decides what
    of it may be kept (the intake redacts it by the policy, see
    :meth:`shadow.intake.Intake.dead_letter`).
    """

    async def submit_events(
        self, events: Sequence[WorkEvent], *, source: str, origins: Sequence[str | None]
    ) -> Sequence[object]: ...

    async def submit_outcomes(
        self, outcomes: Sequence[Outcome], *, source: str, origins: Sequence[str | None]
    ) -> Sequence[object]: ...

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> object: ...
