"""Where Kafka records came from, and how far each partition may be committed.

Table ``source_positions`` (schema v4) maps ``(topic, partition, offset)`` to the record's
``event_id``; since schema v5 the ``topic`` column names the source too
(``BOOTSTRAP/GROUP/TOPIC``, :class:`shadow.sources.kafka_commit.HeldCommits`), so sources
on different clusters never share rows. The Kafka source writes a row for every record it
hands to the pipeline (also for duplicates, so a crash between storing a batch and
recording its positions is repaired by the re-delivery), after the records are durable and
before it commits their offsets.

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
HEAD_ROWS = 512

# CTEs ending in ``open_ids``: the ids among ``ids`` (a CTE with an ``event_id`` column)
# whose join is open; ``$cutoff`` is now minus the join TTL. Every table is filtered by
# ``ids`` first, so the cost follows the number of ids, not the size of the store.
_OPEN_IDS = """
ev AS (SELECT event_id, expired, received_at, needs_agent FROM events
       WHERE event_id IN (SELECT event_id FROM ids)),
answered AS (SELECT DISTINCT d.event_id FROM decisions d LEFT JOIN comparisons c
             ON c.event_id = d.event_id AND c.agent_version = d.agent_version
             WHERE d.event_id IN (SELECT event_id FROM ids) AND c.event_id IS NULL),
compared AS (SELECT DISTINCT event_id FROM comparisons
             WHERE event_id IN (SELECT event_id FROM ids)),
waiting AS (SELECT DISTINCT event_id FROM outcomes
            WHERE event_id IN (SELECT event_id FROM ids) AND is_current AND NOT expired
            AND received_at >= $cutoff),
open_ids AS (
    SELECT i.event_id FROM (SELECT DISTINCT event_id FROM ids) i
    LEFT JOIN ev ON ev.event_id = i.event_id
    LEFT JOIN answered a ON a.event_id = i.event_id
    LEFT JOIN compared c ON c.event_id = i.event_id
    LEFT JOIN waiting w ON w.event_id = i.event_id
    WHERE (ev.event_id IS NOT NULL AND NOT ev.expired AND ev.received_at >= $cutoff
           AND (ev.needs_agent OR a.event_id IS NOT NULL))
       OR (ev.event_id IS NULL AND c.event_id IS NULL AND w.event_id IS NOT NULL)
)"""


class PositionPart(StoreBase):
    # -- Kafka source positions (shadow.sources.kafka) ------------------------------------

    async def record_positions(self, positions: Sequence[SourcePosition]) -> None:
        """Remember where each record came from (a position seen before is kept)."""
        if positions:
            await self._run(self._commit_offsets, [], None, HEAD_ROWS, list(positions))

    async def commit_offsets(
        self,
        spans: Sequence[PartitionSpan],
        *,
        cutoff: datetime,
        record: Sequence[SourcePosition] = (),
        head: int = HEAD_ROWS,
    ) -> dict[tuple[str, int], int]:
        """The offset each partition may be committed to: its oldest open record in
        ``[floor, end)``, else ``end``. Records older than ``cutoff`` (now minus the join
        TTL) are closed. Deletes the rows the result moves past (and those below ``floor``).
        At most ``head`` rows per partition are examined; if they are all closed and more
        follow, the result is the offset after them (the next call goes on from there).
        ``record``: positions to remember first, in the same transaction (as
        :meth:`record_positions`)."""
        if not spans and not record:
            return {}
        return await self._run(self._commit_offsets, list(spans), cutoff, head, list(record))

    def _commit_offsets(
        self,
        spans: list[PartitionSpan],
        cutoff: datetime | None,
        head: int,
        record: list[SourcePosition],
    ) -> dict[tuple[str, int], int]:
        with self._tx() as tx:
            if record:
                tx.execute(
                    "INSERT OR IGNORE INTO source_positions SELECT unnest(?::VARCHAR[]), "
                    "unnest(?::INTEGER[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[])",
                    [_col(record, 0), _col(record, 1), _col(record, 2), _col(record, 3)],
                )
            if not spans:
                return {}
            # The first ``head`` rows of each partition's span, whether each is open.
            heads = " UNION ALL ".join(
                "(SELECT topic, kafka_partition, kafka_offset, event_id FROM source_positions "
                f"WHERE topic = $t{i} AND kafka_partition = $p{i} AND kafka_offset >= $f{i} "
                f"AND kafka_offset < $e{i} ORDER BY kafka_offset LIMIT $head)"
                for i in range(len(spans))
            )
            params: dict[str, object] = {"head": head, "cutoff": cutoff}
            for i, (topic, part, floor, end) in enumerate(spans):
                params.update({f"t{i}": topic, f"p{i}": part, f"f{i}": floor, f"e{i}": end})
            found = {
                (topic, part): (first_open, last, n)
                for topic, part, first_open, last, n in tx.execute(
                    f"WITH head AS ({heads}), ids AS (SELECT event_id FROM head), {_OPEN_IDS} "
                    "SELECT h.topic, h.kafka_partition, "
                    "min(h.kafka_offset) FILTER (WHERE o.event_id IS NOT NULL), "
                    "max(h.kafka_offset), count(*) FROM head h "
                    "LEFT JOIN open_ids o ON o.event_id = h.event_id "
                    "GROUP BY h.topic, h.kafka_partition",
                    params,
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
                [[t for t, _ in out], [p for _, p in out], list(out.values())],
            )
        return out

    async def held_event_ids(self, *, cutoff: datetime) -> list[str]:
        """The ``event_id`` of every tracked record whose join is open (what holds commits
        back), sorted; for diagnostics and tests."""

        def q() -> list[str]:
            rows = self.con.execute(
                f"WITH ids AS (SELECT event_id FROM source_positions), {_OPEN_IDS} "
                "SELECT event_id FROM open_ids ORDER BY event_id",
                {"cutoff": cutoff},
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run(q)
