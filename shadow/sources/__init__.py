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

from shadow.sources.files import FileReport, FileSource, parse_source_spec
from shadow.sources.kafka import KafkaSource, KafkaSpec, parse_kafka_spec
from shadow.sources.sink import Sink

__all__ = [
    "FileReport",
    "FileSource",
    "KafkaSource",
    "KafkaSpec",
    "Sink",
    "parse_kafka_spec",
    "parse_source_spec",
]
