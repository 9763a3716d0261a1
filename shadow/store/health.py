"""Join health: how well each task type's events and outcomes join (:mod:`shadow.join_health`
has the definitions and the judgement; this is the store's read of the counts).

Every count is over a bounded window, so its cost follows the window, not the history: the
last ``window`` sampled events, outcomes or routing records whose join TTL has passed, the
sampled events still inside the TTL, and the conflict dead letters since the window began.
Rows are appended in arrival order, so DuckDB's min/max zone maps skip the row groups outside
a time range: each window is looked for in the hour before ``now - ttl`` first, then in a
range eight times as long, and so on until it is full or reaches the oldest row (a task type
with steady traffic needs one step). An event's decision is received after the event, so
only the decisions of that range are read too; the windows' outcomes and events are then
found by ``event_id``. Measured with 3 task types and as many decisions, outcomes and routing
records as events, on 2 busy cores: about 25 ms per task type with 100,000 events, about 30 ms
with 1,000,000 (the windows are found in bounded ranges; looking up their outcomes still reads
every outcome's id). The ladder reads it after each
expiry pass and before an operator's move, ``GET /v1/agreement`` with each document.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import duckdb

from shadow.join_health import WINDOW, JoinHealth
from shadow.store.base import StoreBase

__all__ = ["HealthPart"]

FIRST_SPAN = timedelta(hours=1)  # the first range each window is looked for in
GROWTH = 8  # how much longer each next range is

# $1 task type, $2 now - ttl, $3 ttl, $4 window, $5 the range's start: covered and missing
# among the last ``window`` sampled events (awaiting the agent, or answered) of the range
# whose TTL has passed, and the oldest of them. Covered: an outcome received within the TTL.
_WINDOW_SQL = """
WITH w AS (
    SELECT e.event_id, e.received_at FROM events e
    WHERE e.task_type = $1 AND e.received_at <= $2 AND e.received_at > $5
    AND (e.needs_agent OR e.event_id IN (
        SELECT event_id FROM decisions WHERE task_type = $1 AND received_at > $5))
    ORDER BY e.received_at DESC, e.event_id DESC LIMIT $4
),
answered AS (
    SELECT DISTINCT w.event_id FROM w JOIN outcomes o ON o.event_id = w.event_id
    WHERE o.received_at <= w.received_at + $3
)
SELECT count(*), count(a.event_id), min(w.received_at)
FROM w LEFT JOIN answered a ON a.event_id = w.event_id
"""

# $1 task type, $2 now - ttl, $3 now: sampled events still inside their TTL.
_PENDING_SQL = """
SELECT count(*) FROM events e WHERE e.task_type = $1 AND e.received_at > $2
AND e.received_at <= $3 AND (e.needs_agent
OR e.event_id IN (SELECT event_id FROM decisions WHERE task_type = $1 AND received_at > $2))
"""

# $1 task type, $2 since: conflicting duplicates of the task type's events and outcomes
# (the store's reason for them starts so: shadow.store.ingest).
_CONFLICTS_SQL = """
SELECT count(*) FROM dead_letters dl JOIN events e ON e.event_id = dl.event_id
WHERE e.task_type = $1 AND dl.recorded_at >= $2 AND dl.kind IN ('event', 'outcome')
AND dl.reason LIKE 'conflicting duplicate:%'
"""

# $1 task type, $2 now - ttl, $3 ttl, $4 window, $5 the range's start: of the last
# ``window`` routing records of the range whose TTL has passed, those with no outcome
# received within it.
_ROUTED_SQL = """
WITH r AS (
    SELECT event_id, routed_at FROM handling
    WHERE task_type = $1 AND routed_at <= $2 AND routed_at > $5
    ORDER BY routed_at DESC, event_id DESC LIMIT $4
),
answered AS (
    SELECT DISTINCT r.event_id FROM r JOIN outcomes o ON o.event_id = r.event_id
    WHERE o.received_at <= r.routed_at + $3
)
SELECT count(*), count(*) - count(a.event_id) FROM r LEFT JOIN answered a ON a.event_id = r.event_id
"""

# $1 now - ttl, $2 ttl, $3 window, $4 the range's start: of the last ``window`` outcomes
# (first revisions) of the range whose TTL has passed, those whose event was not received
# within it.
_UNKNOWN_SQL = """
WITH o AS (
    SELECT event_id, received_at FROM outcomes
    WHERE revision = 1 AND received_at <= $1 AND received_at > $4
    ORDER BY received_at DESC, event_id DESC LIMIT $3
),
known AS (
    SELECT DISTINCT o.event_id FROM o JOIN events e ON e.event_id = o.event_id
    WHERE e.received_at <= o.received_at + $2
)
SELECT count(*), count(*) - count(k.event_id) FROM o LEFT JOIN known k ON k.event_id = o.event_id
"""


class HealthPart(StoreBase):
    async def join_health(
        self, task_types: Iterable[str], *, now: datetime, ttl: timedelta, window: int = WINDOW
    ) -> dict[str, JoinHealth]:
        """Each of ``task_types``' :class:`~shadow.join_health.JoinHealth` at ``now`` with
        join TTL ``ttl``, each count over the last ``window`` judged items (one read, on
        the store's thread)."""
        names = list(task_types)
        return await self._run(self._join_health, names, now, ttl, window)

    def _join_health(
        self, names: list[str], now: datetime, ttl: timedelta, window: int
    ) -> dict[str, JoinHealth]:
        con = self.con
        cutoff = now - ttl

        def one(sql: str, params: list[object]) -> tuple[object, ...]:
            row = con.execute(sql, params).fetchone()
            assert row is not None
            return tuple(row)

        def oldest(sql: str) -> datetime | None:
            (value,) = one(sql, [])
            return value if isinstance(value, datetime) else None

        first_event = oldest("SELECT min(received_at) FROM events")
        first_route = oldest("SELECT min(routed_at) FROM handling")
        first_outcome = oldest("SELECT min(received_at) FROM outcomes")
        windowed = _Windowed(con, cutoff, ttl, window)
        _, unknown = windowed.rows(_UNKNOWN_SQL, [], first_outcome)
        out: dict[str, JoinHealth] = {}
        for name in names:
            judged, covered, since = windowed.rows(_WINDOW_SQL, [name], first_event)
            (pending,) = one(_PENDING_SQL, [name, cutoff, now])
            start = since if isinstance(since, datetime) else cutoff
            (conflicts,) = one(_CONFLICTS_SQL, [name, start])
            _, routed = windowed.rows(_ROUTED_SQL, [name], first_route)
            out[name] = JoinHealth(
                covered=_int(covered),
                missing=_int(judged) - _int(covered),
                pending=_int(pending),
                unknown_outcomes=_int(unknown),
                conflicts=_int(conflicts),
                routed_unanswered=_int(routed),
            )
        return out


class _Windowed:
    """Runs a windowed query (its first column: the rows in the window; its parameters: the
    ``leading`` ones, then ``now - ttl``, ``ttl``, ``window`` and the range's start) over
    ranges ending at ``now - ttl``, each :data:`GROWTH` times longer than the one before,
    until the window is full or the range reaches ``first`` (the table's oldest row)."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, cutoff: datetime, ttl: timedelta, window: int
    ) -> None:
        self.con = con
        self.cutoff, self.ttl, self.window = cutoff, ttl, window

    def rows(self, sql: str, leading: list[object], first: datetime | None) -> tuple[object, ...]:
        span = FIRST_SPAN
        while True:
            start = self.cutoff - span
            params = [*leading, self.cutoff, self.ttl, self.window, start]
            found = tuple(self.con.execute(sql, params).fetchone() or (0,))
            if _int(found[0]) >= self.window or first is None or start < first:
                return found
            span *= GROWTH


def _int(value: object) -> int:
    return int(value) if isinstance(value, int) else 0
