"""The noise floor's rows (:mod:`shadow.noise` has the definitions): second opinions, one
per event, and the agent's repeated tries of a case.

A second opinion is written in the transaction of the outcome batch that carried it
(:class:`SecondOpinions`, used by :meth:`shadow.store.ingest.IngestPart.put_outcomes`). One
per event: the same content again is a duplicate (nothing changes); a different one replaces
the stored one unless the stored one has the later ``decided_at`` (then the new one is
``superseded`` and not kept); when either has no ``decided_at`` the later arrival wins.
Repeats are their own table: never in ``decisions`` or ``comparisons``, so no query of the
evidence can see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import orjson

from shadow.fastjson import dumps
from shadow.model import Outcome, ShadowDecision, as_actions
from shadow.noise import CeilingRow, RepeatRow
from shadow.store.base import StoreBase
from shadow.store.records import PutStatus

__all__ = ["NoisePart", "SecondOpinions"]


class SecondOpinions:
    """The second opinions of one outcome batch: decided against what is stored (and
    earlier in the batch), written with the batch (:meth:`write`)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, source: str, now: datetime) -> None:
        self._con = con
        self._source = source
        self._now = now
        self._known: dict[str, tuple[str, datetime | None]] | None = None
        self._rows: dict[str, tuple[Any, ...]] = {}

    def add(self, o: Outcome, ts: datetime | None) -> PutStatus:
        """Take the second opinion ``o`` carries or is (``ts``: its decided_at, aware; only
        a record that is one has its own). ``duplicate`` for the same content, ``superseded``
        when the stored one was decided later, else ``stored``."""
        second = o.as_second_opinion()
        if second is None:
            return PutStatus.DUPLICATE
        if self._known is None:
            self._known = {}
        if o.event_id not in self._known:
            row = self._con.execute(
                "SELECT content_hash, decided_at_ts FROM second_opinions WHERE event_id = ?",
                [o.event_id],
            ).fetchone()
            if row is not None:
                self._known[o.event_id] = (row[0], row[1])
        digest = second.content_hash
        stored = self._known.get(o.event_id)
        if stored is not None:
            if stored[0] == digest:
                return PutStatus.DUPLICATE
            if ts is not None and stored[1] is not None and stored[1] > ts:
                return PutStatus.SUPERSEDED
        self._known[o.event_id] = (digest, ts)
        self._rows[o.event_id] = (
            o.event_id,
            dumps(second.decision),
            dumps([a.to_json() for a in second.actions]),
            second.decided_by,
            o.decided_at if o.is_second_opinion else None,
            ts,
            digest,
            self._source,
            self._now,
        )
        return PutStatus.STORED

    def write(self, tx: duckdb.DuckDBPyConnection) -> None:
        if not self._rows:
            return
        rows = list(self._rows.values())
        tx.execute(
            "DELETE FROM second_opinions WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
            [[r[0] for r in rows]],
        )
        tx.executemany(
            "INSERT INTO second_opinions VALUES (?, ?::JSON, ?::JSON, ?, ?, ?, ?, ?, ?)", rows
        )


class NoisePart(StoreBase):
    async def put_repeats(
        self, repeats: Sequence[tuple[ShadowDecision, str, int]], *, now: datetime
    ) -> None:
        """Store the agent's repeated tries as ``(decision, task_type, attempt)``; a try
        already stored is kept (the first answer of a try wins)."""
        rows = [
            (d.event_id, attempt, task_type, d.agent_version, dumps(d.to_json()), d.error, now)
            for d, task_type, attempt in repeats
        ]
        if not rows:
            return

        def write() -> None:
            with self._tx() as tx:
                tx.executemany(
                    "INSERT INTO repeats VALUES (?, ?, ?, ?, ?::JSON, ?, ?) ON CONFLICT DO NOTHING",
                    rows,
                )

        await self._run(write)

    async def second_opinion_rows(self) -> list[CeilingRow]:
        """Every event with a current outcome and a second opinion, with its task type (its
        event's, else its comparisons') and the agent's decisions for it."""

        def q() -> list[CeilingRow]:
            rows = self.con.execute(
                "SELECT s.event_id, coalesce(e.task_type, "
                "(SELECT any_value(c.task_type) FROM comparisons c WHERE c.event_id = s.event_id)),"
                " o.decision, o.actions, s.decision, s.actions "
                "FROM second_opinions s "
                "JOIN outcomes o ON o.event_id = s.event_id AND o.is_current "
                "LEFT JOIN events e ON e.event_id = s.event_id ORDER BY s.event_id"
            ).fetchall()
            agent: dict[str, dict[str, ShadowDecision]] = {}
            for eid, version, body in self.con.execute(
                "SELECT d.event_id, d.agent_version, d.body FROM decisions d "
                "WHERE d.event_id IN (SELECT event_id FROM second_opinions)"
            ).fetchall():
                agent.setdefault(eid, {})[version] = ShadowDecision.from_stored(_loads(body))
            return [
                CeilingRow(
                    eid,
                    tt,
                    _loads(dec),
                    as_actions(_loads(acts)),
                    _loads(sdec),
                    as_actions(_loads(sacts)),
                    agent.get(eid, {}),
                )
                for eid, tt, dec, acts, sdec, sacts in rows
                if tt is not None
            ]

        return await self._run(q)

    async def repeat_rows(self) -> list[RepeatRow]:
        """Every repeated case whose first decision is stored, with the tries answered by
        the same agent version."""

        def q() -> list[RepeatRow]:
            out: dict[tuple[str, str], RepeatRow] = {}
            for eid, tt, version, attempt, body, first in self.con.execute(
                "SELECT r.event_id, r.task_type, r.agent_version, r.attempt, r.body, d.body "
                "FROM repeats r JOIN decisions d "
                "ON d.event_id = r.event_id AND d.agent_version = r.agent_version "
                "ORDER BY r.event_id, r.attempt"
            ).fetchall():
                key = (eid, version)
                row = out.get(key)
                if row is None:
                    row = out[key] = RepeatRow(
                        eid, tt, version, ShadowDecision.from_stored(_loads(first)), {}
                    )
                row.tries[int(attempt)] = ShadowDecision.from_stored(_loads(body))
            return list(out.values())

        return await self._run(q)


def _loads(raw: Any) -> Any:
    return orjson.loads(raw) if isinstance(raw, str | bytes) else raw
