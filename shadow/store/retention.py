"""Retention: closed cases and dead letters older than a cutoff leave the store.

The sidecar otherwise keeps every event, outcome, decision and dead letter, so a tap on a
busy stream fills its disk, and the deduplicating lookups and join queries, which scan their
tables, slow down as it grows. :meth:`RetentionPart.purge` deletes, in transactions of at
most ``limit`` cases:

- a **case** (its event, every outcome revision, every agent decision, its second opinion
  and the agent's repeated tries: they carry human and agent decisions), when all of its
  rows arrived before ``cutoff`` and nothing about it is still open: the event is not
  awaiting the agent, every decision has its comparison, and no comparison waits to be
  redone for a newer current outcome (what :meth:`shadow.store.Store.ready_pairs` would
  return), and no second opinion or repeated try waits for its verdict (shadow.noise_read);
- an **orphan outcome** (no event stored for its ``event_id``), when every revision arrived
  before ``cutoff`` and was expired by :meth:`shadow.store.Store.expire`, with its second
  opinion;
- a **lone second opinion** (neither its event nor an outcome ever came) received before
  ``cutoff``;
- **dead letters** recorded before ``cutoff``.

Comparisons are kept: they are the evidence behind the gates (the ``agreement`` view counts
every one), small, and what the audit log points at; the noise floor's verdicts
(``human_verdicts``, ``repeat_verdicts``) are kept for the same reason, so the human ceiling,
self-consistency and noisy fields are the same after a purge; the audit log, the ladder and
the replay evidence are kept too. Kafka positions need nothing: only open joins hold a commit,
and a purged case is closed.

What a purge changes, and why ``retention`` must be longer than ``join_ttl``
(:class:`shadow.config.Settings` refuses anything else): a case older than the retention
is history the store no longer has. A record of it delivered again (a Kafka offset reset, a
re-sent file) is stored as new, and its event goes to the agent again; but the kept
comparison, keyed by ``(event_id, agent_version)``, already covers the same outcome, so
nothing is compared or counted twice (a *different* outcome is compared and audited as a
reversal, as always). A late outcome for a purged case waits for its event until
``join_ttl`` and is expired, not compared. Replay reads history from the store, so it sees
the retention window only.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass
from datetime import datetime
from typing import Any

from shadow.store.base import StoreBase

__all__ = ["Purged", "RetentionPart"]

# Event ids of closed cases whose rows all arrived before $cutoff, oldest first.
_CLOSED_CASES = """
SELECT e.event_id FROM events e
WHERE e.received_at < $cutoff AND NOT e.needs_agent
  AND NOT EXISTS (SELECT 1 FROM outcomes o
                  WHERE o.event_id = e.event_id AND o.received_at >= $cutoff)
  AND NOT EXISTS (SELECT 1 FROM decisions d
                  WHERE d.event_id = e.event_id AND d.received_at >= $cutoff)
  AND NOT EXISTS (SELECT 1 FROM decisions d LEFT JOIN comparisons c
                    ON c.event_id = d.event_id AND c.agent_version = d.agent_version
                  LEFT JOIN outcomes o ON o.event_id = d.event_id AND o.is_current
                  WHERE d.event_id = e.event_id
                    AND (c.event_id IS NULL
                         OR (o.event_id IS NOT NULL
                             AND c.outcome_hash IS DISTINCT FROM o.content_hash)))
  AND NOT EXISTS (SELECT 1 FROM second_opinions s
                  WHERE s.event_id = e.event_id AND s.received_at >= $cutoff)
  AND NOT EXISTS (SELECT 1 FROM repeats r
                  WHERE r.event_id = e.event_id AND r.received_at >= $cutoff)
  AND NOT EXISTS (SELECT 1 FROM second_opinions s
                  JOIN outcomes o ON o.event_id = s.event_id AND o.is_current
                  LEFT JOIN human_verdicts v ON v.event_id = s.event_id
                  WHERE s.event_id = e.event_id
                    AND (v.event_id IS NULL OR v.outcome_hash <> o.content_hash
                         OR v.second_hash <> s.content_hash))
  AND NOT EXISTS (SELECT 1 FROM repeats r
                  JOIN decisions d ON d.event_id = r.event_id
                       AND d.agent_version = r.agent_version
                  LEFT JOIN repeat_verdicts v ON v.event_id = r.event_id
                       AND v.attempt = r.attempt
                  WHERE r.event_id = e.event_id AND v.event_id IS NULL)
ORDER BY e.received_at, e.event_id
LIMIT $limit
"""

# Event ids of outcomes with no event, every revision expired and older than $cutoff.
_ORPHANS = """
SELECT event_id FROM outcomes o
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = o.event_id)
GROUP BY event_id
HAVING bool_and(expired) AND max(received_at) < $cutoff
ORDER BY max(received_at), event_id
LIMIT $limit
"""


# Second opinions whose event and outcome never came, received before $cutoff.
_LONE_SECOND_OPINIONS = """
SELECT s.event_id FROM second_opinions s
WHERE s.received_at < $cutoff
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = s.event_id)
  AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.event_id = s.event_id)
ORDER BY s.received_at, s.event_id
LIMIT $limit
"""

_TABLES = ("events", "outcomes", "decisions", "second_opinions", "repeats")
"""The tables a purged case leaves (by ``event_id``), in :class:`Purged`'s order."""


@dataclass(frozen=True, slots=True)
class Purged:
    """Rows deleted by one :meth:`RetentionPart.purge`, per table."""

    events: int = 0
    outcomes: int = 0
    decisions: int = 0
    second_opinions: int = 0
    repeats: int = 0
    dead_letters: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def total(self) -> int:
        return sum(astuple(self))

    def by_table(self) -> dict[str, int]:
        return asdict(self)


class RetentionPart(StoreBase):
    async def purge(self, *, cutoff: datetime, limit: int = 10_000) -> Purged:
        """Delete what the module docstring lists as older than ``cutoff``: one transaction
        per ``limit`` cases (other store calls run in between), until none is left."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        total = Purged()
        for select in (_CLOSED_CASES, _ORPHANS, _LONE_SECOND_OPINIONS):
            while True:
                step, cases = await self._run(self._purge_cases, select, cutoff, limit)
                total += step
                if cases < limit:
                    break
        return total + await self._run(self._purge_dead_letters, cutoff)

    def _purge_cases(self, select: str, cutoff: datetime, limit: int) -> tuple[Purged, int]:
        """One transaction: up to ``limit`` cases chosen by ``select``; also their count."""
        with self._tx() as tx:
            ids = [
                row[0] for row in tx.execute(select, {"cutoff": cutoff, "limit": limit}).fetchall()
            ]
            if not ids:
                return Purged(), 0
            counts = [
                _deleted(
                    tx.execute(
                        f"DELETE FROM {table} WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
                        [ids],
                    ).fetchone()
                )
                for table in _TABLES
            ]
        return Purged(*counts), len(ids)

    def _purge_dead_letters(self, cutoff: datetime) -> Purged:
        with self._tx() as tx:
            row = tx.execute("DELETE FROM dead_letters WHERE recorded_at < ?", [cutoff]).fetchone()
        return Purged(dead_letters=_deleted(row))


def _deleted(row: tuple[Any, ...] | None) -> int:
    """The count a DuckDB DELETE returns."""
    return int(row[0]) if row else 0
