"""Where Kafka records came from, and how far each partition may be committed.

Table ``source_positions`` (schema v4) maps ``(topic, partition, offset)`` to the record's
``event_id``. The Kafka source writes a row for every record it hands to the pipeline (also
for duplicates, so a crash between storing a batch and recording its positions is repaired
by the re-delivery), after the records are durable and before it commits their offsets.

A partition is then committed only up to its **oldest open join**: the lowest offset whose
record belongs to a join this store still waits to complete, so whichever group member
owns the partition next re-reads, from Kafka, every record of every open join. A record's
join is *open*, as in :meth:`Store.pending`, while

- its event is stored, sampled (awaiting the agent, or answered with no comparison yet) and
  neither expired nor older than the TTL: the event still needs its outcome; or
- no event is stored for its ``event_id``, a current outcome that is neither expired nor
  older than the TTL waits for it, and no comparison for it is known (the promoter holds
  the group's comparisons: one folded from another replica completes the join).

Both halves of an open join hold their partitions back (an outcome stored before its event
was answered is re-read along with the event). Unsampled events, expired joins, joins older
than the TTL, compared joins and records the pipeline rejected never hold anything back.
Closing is monotone (a comparison, an expiry or the TTL never reverts), so rows below the
oldest open one are deleted as the commit moves past them: the table holds the records
between each partition's oldest open join and its end, and each computation looks at a
bounded head of each partition (:data:`HEAD_ROWS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shadow.store.base import StoreBase
from shadow.store.records import _col

__all__ = ["HEAD_ROWS", "PartitionSpan", "PositionPart", "SourcePosition"]

# (topic, partition, offset, event_id) of one record handed to the pipeline.
SourcePosition = tuple[str, int, int, str]
# (topic, partition, floor, end): offsets below ``floor`` are committed already (by this
# member or the previous owner); ``end`` is one past the last record delivered.
PartitionSpan = tuple[str, int, int, int]

# At most this many rows per partition are examined per computation; a longer run of closed
# rows is worked through over the next calls (committing the offset reached so far).
HEAD_ROWS = 5000

# Whether the join of ``p.event_id`` is open; the one parameter is the TTL cutoff.
_OPEN = """(
    EXISTS (SELECT 1 FROM events e WHERE e.event_id = p.event_id AND NOT e.expired
            AND e.received_at >= $cutoff
            AND (e.needs_agent OR EXISTS (
                SELECT 1 FROM decisions d WHERE d.event_id = e.event_id AND NOT EXISTS (
                    SELECT 1 FROM comparisons c WHERE c.event_id = d.event_id
                    AND c.agent_version = d.agent_version))))
    OR (NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = p.event_id)
        AND NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.event_id = p.event_id)
        AND EXISTS (SELECT 1 FROM outcomes o WHERE o.event_id = p.event_id AND o.is_current
                    AND NOT o.expired AND o.received_at >= $cutoff))
)"""


class PositionPart(StoreBase):
    # -- Kafka source positions (shadow.sources.kafka) ------------------------------------

    async def record_positions(self, positions: Sequence[SourcePosition]) -> None:
        """Remember where each record came from (a position seen before is kept)."""
        if not positions:
            return
        rows = list(positions)

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR IGNORE INTO source_positions SELECT unnest(?::VARCHAR[]), "
                    "unnest(?::INTEGER[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[])",
                    [_col(rows, 0), _col(rows, 1), _col(rows, 2), _col(rows, 3)],
                )

        await self._run(write)

    async def commit_offsets(
        self, spans: Sequence[PartitionSpan], *, cutoff: datetime, head: int = HEAD_ROWS
    ) -> dict[tuple[str, int], int]:
        """The offset each partition may be committed to: its oldest open record in
        ``[floor, end)``, else ``end``. Records older than ``cutoff`` (now minus the join
        TTL) are closed. Deletes the rows the result moves past (and those below ``floor``).
        At most ``head`` rows per partition are examined; if they are all closed and more
        follow, the result is the offset after them (the next call goes on from there)."""
        if not spans:
            return {}
        return await self._run(self._commit_offsets, list(spans), cutoff, head)

    def _commit_offsets(
        self, spans: list[PartitionSpan], cutoff: datetime, head: int
    ) -> dict[tuple[str, int], int]:
        with self._tx() as tx:
            found = {
                (topic, part): (first_open, last, n)
                for topic, part, first_open, last, n in tx.execute(
                    "WITH spans AS (SELECT unnest($topics::VARCHAR[]) AS topic, "
                    "unnest($parts::INTEGER[]) AS kafka_partition, "
                    "unnest($floors::BIGINT[]) AS floor, unnest($ends::BIGINT[]) AS hi), "
                    "head AS (SELECT p.topic, p.kafka_partition, p.kafka_offset, p.event_id "
                    "FROM source_positions p JOIN spans s ON s.topic = p.topic "
                    "AND s.kafka_partition = p.kafka_partition "
                    "WHERE p.kafka_offset >= s.floor AND p.kafka_offset < s.hi "
                    "QUALIFY row_number() OVER (PARTITION BY p.topic, p.kafka_partition "
                    "ORDER BY p.kafka_offset) <= $head), "
                    f"marked AS (SELECT p.*, {_OPEN} AS is_open FROM head p) "
                    "SELECT topic, kafka_partition, min(kafka_offset) FILTER (WHERE is_open), "
                    "max(kafka_offset), count(*) FROM marked GROUP BY topic, kafka_partition",
                    {
                        "topics": _col(spans, 0),
                        "parts": _col(spans, 1),
                        "floors": _col(spans, 2),
                        "ends": _col(spans, 3),
                        "head": head,
                        "cutoff": cutoff,
                    },
                ).fetchall()
            }
            out: dict[tuple[str, int], int] = {}
            for topic, part, _floor, end in spans:
                first_open, last, n = found.get((topic, part), (None, None, 0))
                if first_open is not None:
                    out[(topic, part)] = int(first_open)
                elif n >= head and last is not None:
                    out[(topic, part)] = int(last) + 1
                else:
                    out[(topic, part)] = end
            # Rows below the result are closed (or committed by someone else): drop them.
            tx.execute(
                "DELETE FROM source_positions p USING (SELECT unnest(?::VARCHAR[]) AS topic, "
                "unnest(?::INTEGER[]) AS kafka_partition, unnest(?::BIGINT[]) AS below) d "
                "WHERE p.topic = d.topic AND p.kafka_partition = d.kafka_partition "
                "AND p.kafka_offset < d.below",
                [
                    [topic for topic, _ in out],
                    [part for _, part in out],
                    list(out.values()),
                ],
            )
        return out

    async def held_event_ids(self, *, cutoff: datetime) -> list[str]:
        """The ``event_id`` of every tracked record whose join is open (what holds commits
        back), sorted; for diagnostics and tests."""

        def q() -> list[str]:
            rows = self.con.execute(
                f"SELECT DISTINCT event_id FROM source_positions p WHERE {_OPEN} ORDER BY event_id",
                {"cutoff": cutoff},
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run(q)
