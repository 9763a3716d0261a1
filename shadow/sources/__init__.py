"""Sources feed mirrored work into the pipeline: each reads records from somewhere and hands
them, in batches, to a :class:`Sink`.

A source never crashes on bad input: a record it cannot take becomes a
:class:`~shadow.store.DeadLetter` with the reason and where it was found. Backpressure is the
sink's job: a source reads its next batch only after the sink has taken the previous one, so
it never holds more than one batch.

Implementations: :class:`~shadow.sources.files.FileSource` (``file:PATH.jsonl``, backfills)
and :class:`~shadow.sources.kafka.KafkaSource` (``kafka://...``, see docs/kafka.md; it
commits offsets only after the sink took the records).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shadow.model import Outcome, WorkEvent
from shadow.sources.files import FileReport, FileSource, parse_source_spec
from shadow.sources.kafka import KafkaSource, KafkaSpec, parse_kafka_spec
from shadow.store import DeadLetter

__all__ = [
    "FileReport",
    "FileSource",
    "KafkaSource",
    "KafkaSpec",
    "Sink",
    "parse_kafka_spec",
    "parse_source_spec",
]


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
