"""How each item was handled (``handling``, schema v8): the sidecar's record of the routing
answers it gave, the evidence's independence behind it, and that table's Kafka outbox.

**When a routing record counts.** A record describes how an item *will be* handled, so it
counts only when it was made (``Routed.at``, the clock when the route was answered) no later
than the item's first outcome was received (``outcomes.received_at``, any revision) and no
later than any comparison made for the item (``comparisons.compared_at``; an ``expired``
join is not a comparison). A later record (a route asked about an item already decided) is
not stored and relabels nothing: it cannot take an item out of the evidence, or put it
back, after the fact. The check runs inside the write's transaction, against the rows
stored by then. A record made before the outcome that reaches the store after it (a write
that was in flight while the outcome was stored, or a routing record folded from the
comparisons topic after the promoter folded the comparison) still counts and relabels the
comparisons already made. On the promoter the comparison's time is when it was folded
there (the topic's records carry no outcome time), so a late route asked of one replica for
an item compared by another still counts if it reaches the promoter before that comparison
does (docs/kafka.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shadow.model import Handling, Level
from shadow.store.base import StoreBase
from shadow.store.records import DeadLetter

__all__ = ["HandlingPart", "Routed"]

log = logging.getLogger("shadow.store.handling")


@dataclass(frozen=True, slots=True)
class Routed:
    """One routing answer: ``event_id`` of ``task_type`` was answered at ``level`` so that
    it is handled by ``handled_by``."""

    event_id: str
    task_type: str
    handled_by: Handling
    level: Level
    at: datetime


class HandlingPart(StoreBase):
    async def put_handling(self, routed: Sequence[Routed], *, published: bool = False) -> int:
        """Record routing answers (upsert; a stored handling is replaced only by a less
        independent one) and relabel the comparisons of those items to match: the
        sidecar's own record wins over what an outcome stated, and over the label a
        replica's comparison came with. A record made after its item's outcome or
        comparison is ignored (the module docstring). ``published`` (folded from the
        comparisons topic) marks the rows so they are not sent again. Returns how many
        comparisons changed label."""
        relabelled, _ = await self.put_handling_batch(routed, published=published)
        return relabelled

    async def put_handling_batch(
        self, routed: Sequence[Routed], *, published: bool = False
    ) -> tuple[int, frozenset[str]]:
        """:meth:`put_handling`, and the event ids of the records that could not be stored
        (each dead-lettered with its reason; the rest of the batch is stored): a request
        whose record is among them must not be answered as if it were durable."""
        if not routed:
            return 0, frozenset()
        return await self._run(self._put_handling_safe, list(routed), published)

    def _put_handling_safe(
        self, routed: list[Routed], published: bool
    ) -> tuple[int, frozenset[str]]:
        def write(chunk: list[Routed]) -> list[tuple[str | None, int]]:
            return [(None, self._put_handling(chunk, published))]

        def failed(r: Routed, why: str) -> list[tuple[str | None, int]]:
            return [(r.event_id, 0)]

        def letter(r: Routed, why: str) -> DeadLetter:
            raw = json.dumps(
                {
                    "event_id": r.event_id,
                    "task_type": r.task_type,
                    "handled_by": r.handled_by.value,
                    "level": str(r.level),
                    "at": r.at.isoformat(),
                }
            )
            return DeadLetter("route", "handling", why, raw, r.event_id)

        out = self._write_batch(
            "handling", routed, write, letter, now=max(r.at for r in routed), failed=failed
        )
        return sum(n for _, n in out), frozenset(e for e, _ in out if e is not None)

    def _put_handling(self, routed: list[Routed], published: bool) -> int:
        ids = sorted({r.event_id for r in routed})
        with self._tx() as tx:
            # One read for the whole batch: when each item was first decided (an outcome
            # received, or a real comparison made), whether it has comparisons, and its
            # stored handling. Then plain writes: the common batch is all new items.
            known = tx.execute(
                "SELECT event_id, min(decided), bool_or(compared), max(stored) FROM ("
                "SELECT event_id, received_at AS decided, false AS compared, NULL AS stored "
                "FROM outcomes WHERE event_id IN (SELECT unnest(?::VARCHAR[])) UNION ALL "
                "SELECT event_id, CASE WHEN verdict <> 'expired' THEN compared_at END, true, "
                "NULL FROM comparisons WHERE event_id IN (SELECT unnest(?::VARCHAR[])) "
                "UNION ALL SELECT event_id, NULL, false, handled_by FROM handling "
                "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))) GROUP BY event_id",
                [ids, ids, ids],
            ).fetchall()
            decided = {eid: at for eid, at, _, _ in known if at is not None}
            compared = {eid for eid, _, has, _ in known if has}
            stored = {eid: Handling(h) for eid, _, _, h in known if h is not None}
            # Each record is judged by its own time, before the least independent answer of
            # an item is chosen: a late "agent" must not displace a timely "assisted". Of
            # the timely ones the least independent wins (an item routed twice may have been
            # shown the agent's answer once), stored or in this batch.
            best = dict(stored)
            last: dict[str, Routed] = {}
            late = 0
            for r in routed:
                first = decided.get(r.event_id)
                if first is not None and first < r.at:
                    late += 1
                    continue
                seen = best.get(r.event_id)
                if seen is None or r.handled_by.rank > seen.rank:
                    best[r.event_id] = r.handled_by
                    last[r.event_id] = r
            new = [r for r in last.values() if r.event_id not in stored]
            changed = [r for r in last.values() if r.event_id in stored]
            for sql, rows in (
                (
                    "INSERT INTO handling SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::TIMESTAMPTZ[]), "
                    "unnest(?::TIMESTAMPTZ[])",
                    new,
                ),
                (
                    "UPDATE handling SET handled_by = k.h, level = k.l, "
                    "routed_at = k.at, published_at = k.p FROM (SELECT "
                    "unnest(?::VARCHAR[]) AS e, unnest(?::VARCHAR[]) AS t, "
                    "unnest(?::VARCHAR[]) AS h, unnest(?::VARCHAR[]) AS l, "
                    "unnest(?::TIMESTAMPTZ[]) AS at, unnest(?::TIMESTAMPTZ[]) AS p) k "
                    "WHERE handling.event_id = k.e",
                    changed,
                ),
            ):
                if rows:
                    tx.execute(
                        sql,
                        [
                            [r.event_id for r in rows],
                            [r.task_type for r in rows],
                            [r.handled_by.value for r in rows],
                            [str(r.level) for r in rows],
                            [r.at for r in rows],
                            [r.at if published else None for r in rows],
                        ],
                    )
            relabel = [r.event_id for r in last.values() if r.event_id in compared]
            relabelled = 0
            if relabel:
                found = tx.execute(
                    "UPDATE comparisons SET handled_by = h.handled_by FROM handling h "
                    "WHERE comparisons.event_id = h.event_id "
                    "AND comparisons.handled_by <> h.handled_by "
                    "AND h.event_id IN (SELECT unnest(?::VARCHAR[]))",
                    [relabel],
                ).fetchone()
                relabelled = int(found[0]) if found else 0
        if late:
            log.info(
                "%d routing records ignored: made after their item's outcome or comparison "
                "(a route asked about an item already decided does not change how it counts)",
                late,
            )
        return relabelled

    async def handling_of(self, event_ids: Sequence[str]) -> dict[str, Handling]:
        """The recorded handling of these items (absent: never routed)."""

        def q() -> dict[str, Handling]:
            found = self.con.execute(
                "SELECT event_id, handled_by FROM handling "
                "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
                [list(event_ids)],
            ).fetchall()
            return {eid: Handling(h) for eid, h in found}

        return await self._run(q)

    async def acceptance(self) -> list[tuple[str, str, str, int, int]]:
        """``(task_type, agent_version, handled_by, n, agree)`` of the comparisons that are
        not evidence (the ``acceptance`` view): how often the humans kept, or the host
        echoed, what the agent proposed or did."""

        def q() -> list[tuple[str, str, str, int, int]]:
            rows = self.con.execute(
                "SELECT task_type, agent_version, handled_by, n, agree FROM acceptance ORDER BY ALL"
            ).fetchall()
            return [(t, v, h, int(n), int(a)) for t, v, h, n, a in rows]

        return await self._run(q)

    async def unpublished_handling(self, *, limit: int = 1000) -> list[Routed]:
        """Routing answers not yet on the comparisons topic, oldest first."""

        def q() -> list[Routed]:
            found = self.con.execute(
                "SELECT event_id, task_type, handled_by, level, routed_at FROM handling "
                "WHERE published_at IS NULL ORDER BY routed_at, event_id LIMIT ?",
                [limit],
            ).fetchall()
            return [Routed(e, t, Handling(h), Level.parse(lv), at) for e, t, h, lv, at in found]

        return await self._run(q)

    async def mark_handling_published(self, routed: Sequence[Routed], *, now: datetime) -> None:
        """Mark these rows published, unless a less independent answer replaced them since
        (that one still has to go out)."""
        if not routed:
            return

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "UPDATE handling SET published_at = ? FROM "
                    "(SELECT unnest(?::VARCHAR[]) AS event_id, unnest(?::VARCHAR[]) AS h) k "
                    "WHERE handling.event_id = k.event_id AND handling.handled_by = k.h",
                    [now, [r.event_id for r in routed], [r.handled_by.value for r in routed]],
                )

        await self._run(write)
