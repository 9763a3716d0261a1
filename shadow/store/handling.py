"""How each item was handled (``handling``, schema v8): the sidecar's record of the routing
answers it gave, the evidence's independence behind it, and that table's Kafka outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shadow.model import Handling, Level
from shadow.store.base import StoreBase

__all__ = ["HandlingPart", "Routed"]


@dataclass(frozen=True, slots=True)
class Routed:
    """One routing answer: ``event_id`` of ``task_type`` was answered at ``level`` so that
    it is handled by ``handled_by``."""

    event_id: str
    task_type: str
    handled_by: Handling
    level: Level
    at: datetime


# The least independent handling of a batch row and the stored one wins: an item routed
# twice may have been shown the agent's answer once.
_RANK = "CASE {0} WHEN 'agent' THEN 2 WHEN 'assisted' THEN 1 ELSE 0 END"


class HandlingPart(StoreBase):
    async def put_handling(self, routed: Sequence[Routed], *, published: bool = False) -> int:
        """Record routing answers (upsert; a stored handling is replaced only by a less
        independent one) and relabel the comparisons of those items to match: the
        sidecar's own record wins over what an outcome stated, and over the label a
        replica's comparison came with. ``published`` (folded from the comparisons topic)
        marks the rows so they are not sent again. Returns how many comparisons changed
        label."""
        if not routed:
            return 0
        last: dict[str, Routed] = {}
        for r in routed:
            seen = last.get(r.event_id)
            if seen is None or r.handled_by.rank > seen.handled_by.rank:
                last[r.event_id] = r
        rows = list(last.values())
        return await self._run(self._put_handling, rows, published)

    def _put_handling(self, rows: list[Routed], published: bool) -> int:
        ids = [r.event_id for r in rows]
        replaces = f"{_RANK.format('excluded.handled_by')} > {_RANK.format('handling.handled_by')}"
        take = ", ".join(
            f"{col} = CASE WHEN {replaces} THEN excluded.{col} ELSE handling.{col} END"
            for col in ("handled_by", "level", "routed_at", "published_at")
        )
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO handling SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::TIMESTAMPTZ[]), "
                f"unnest(?::TIMESTAMPTZ[]) ON CONFLICT (event_id) DO UPDATE SET {take}",
                [
                    ids,
                    [r.task_type for r in rows],
                    [r.handled_by.value for r in rows],
                    [str(r.level) for r in rows],
                    [r.at for r in rows],
                    [r.at if published else None for r in rows],
                ],
            )
            changed = tx.execute(
                "UPDATE comparisons SET handled_by = h.handled_by FROM handling h "
                "WHERE comparisons.event_id = h.event_id "
                "AND comparisons.handled_by <> h.handled_by "
                "AND h.event_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids],
            ).fetchone()
        return int(changed[0]) if changed else 0

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
