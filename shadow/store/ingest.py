"""Events, outcomes, agent decisions and dead letters: idempotent batched writes. A record
the store cannot hold is dead-lettered with DuckDB's reason and reported ``unstorable``;
the rest of its batch is stored (:meth:`~shadow.store.base.StoreBase._write_batch`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb

from shadow.errors import Reason
from shadow.fastjson import dumps
from shadow.model import (
    Outcome,
    ShadowDecision,
    WorkEvent,
)
from shadow.store.base import StoreBase, storable
from shadow.store.noise import SecondOpinions
from shadow.store.records import (
    DeadLetter,
    PutResult,
    PutStatus,
    _col,
)


class IngestPart(StoreBase):
    # -- ingest ---------------------------------------------------------------------------

    async def put_events(
        self,
        events: Sequence[WorkEvent],
        *,
        source: str,
        now: datetime,
        needs_agent: Sequence[bool] | None = None,
        locations: Sequence[str | None] | None = None,
    ) -> list[PutResult]:
        """Store (already redacted) events. ``needs_agent[i]``: sampled for the agent.
        ``locations[i]``: where ``events[i]`` was read, the ``location`` of its dead letter
        should it conflict with the stored one."""
        flags = list(needs_agent) if needs_agent is not None else [True] * len(events)
        if len(flags) != len(events):
            raise ValueError("needs_agent must have one flag per event")
        where = _locations(locations, len(events))
        rows = list(zip(events, flags, where, strict=True))

        def write(chunk: list[tuple[WorkEvent, bool, str | None]]) -> list[PutResult]:
            return self._put_events(
                [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk], source, now
            )

        def letter(row: tuple[WorkEvent, bool, str | None], why: str) -> DeadLetter:
            event = row[0]
            return DeadLetter(source, "event", why, _raw(event.to_json), event.event_id, row[2])

        return await self._run(
            self._write_batch,
            "events",
            rows,
            write,
            letter,
            now=now,
            failed=lambda row, why: [_unstorable(row[0].event_id, why)],
        )

    def _put_events(
        self,
        events: list[WorkEvent],
        flags: list[bool],
        where: list[str | None],
        source: str,
        now: datetime,
    ) -> list[PutResult]:
        ids = list({e.event_id for e in events})
        known: dict[str, str] = dict(
            self.con.execute(
                "SELECT event_id, content_hash FROM events "
                "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids],
            ).fetchall()
        )
        results: list[PutResult] = []
        rows: list[tuple[Any, ...]] = []
        dead: list[DeadLetter] = []
        for event, flag, location in zip(events, flags, where, strict=True):
            digest = event.content_hash
            old = known.get(event.event_id)
            if old is None:
                known[event.event_id] = digest
                rows.append(
                    (
                        event.event_id,
                        event.task_type,
                        dumps(event.payload),
                        event.occurred_at,
                        event.segment,
                        digest,
                        flag,
                    )
                )
                results.append(PutResult(event.event_id, PutStatus.STORED))
            elif old == digest:
                results.append(PutResult(event.event_id, PutStatus.DUPLICATE))
            else:
                reason = (
                    f"conflicting duplicate: event {event.event_id} is already stored with "
                    "different content; the first version is kept"
                )
                results.append(PutResult(event.event_id, PutStatus.CONFLICT, reason))
                raw = json.dumps(event.to_json())
                dead.append(
                    DeadLetter(
                        source,
                        "event",
                        reason,
                        raw,
                        event.event_id,
                        location,
                        code=Reason.CONFLICT,
                    )
                )
        with self._tx() as tx:
            if rows:
                tx.execute(
                    "INSERT INTO events SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), ?, ?::TIMESTAMPTZ, unnest(?::BOOLEAN[]), false",
                    [*(_col(rows, i) for i in range(6)), source, now, _col(rows, 6)],
                )
            self._insert_dead(tx, dead, now)
        return results

    async def put_outcomes(
        self,
        outcomes: Sequence[Outcome],
        *,
        source: str,
        now: datetime,
        locations: Sequence[str | None] | None = None,
    ) -> list[PutResult]:
        """Store outcomes; ``locations`` as for :meth:`put_events`."""
        where = _locations(locations, len(outcomes))
        rows = list(zip(outcomes, where, strict=True))

        def write(chunk: list[tuple[Outcome, str | None]]) -> list[PutResult]:
            return self._put_outcomes([r[0] for r in chunk], [r[1] for r in chunk], source, now)

        def letter(row: tuple[Outcome, str | None], why: str) -> DeadLetter:
            o = row[0]
            return DeadLetter(source, "outcome", why, _raw(o.to_json), o.event_id, row[1])

        return await self._run(
            self._write_batch,
            "outcomes",
            rows,
            write,
            letter,
            now=now,
            failed=lambda row, why: [_unstorable(row[0].event_id, why)],
        )

    def _put_outcomes(
        self, outcomes: list[Outcome], where: list[str | None], source: str, now: datetime
    ) -> list[PutResult]:
        ids = list({o.event_id for o in outcomes})
        # event_id -> list of [revision, hash, decided_at_ts, is_current]
        known: dict[str, list[list[Any]]] = {}
        for eid, rev, digest, ts, cur in self.con.execute(
            "SELECT event_id, revision, content_hash, decided_at_ts, is_current FROM outcomes "
            "WHERE event_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY revision",
            [ids],
        ).fetchall():
            known.setdefault(eid, []).append([rev, digest, ts, cur])
        results: list[PutResult] = []
        rows: list[tuple[Any, ...]] = []
        demote: list[tuple[str, int]] = []  # revisions that stop being current
        dead: list[DeadLetter] = []
        seconds = SecondOpinions(self.con, source, now)  # shadow.store.noise
        for o, location in zip(outcomes, where, strict=True):
            digest = o.content_hash
            ts = o.decided_at_ts
            if ts is not None and ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            if o.is_second_opinion:  # stored as the event's second opinion, nothing else
                results.append(PutResult(o.event_id, seconds.add(o, ts)))
                continue
            revs = known.setdefault(o.event_id, [])
            current = next((r for r in revs if r[3]), None)
            if (current is not None and current[1] == digest) or any(
                r[1] == digest and (ts is None or r[2] == ts) for r in revs
            ):
                results.append(PutResult(o.event_id, PutStatus.DUPLICATE))
                seconds.add(o, None)  # a second opinion it carries (none: nothing)
                continue
            if current is None:
                status = PutStatus.STORED
            elif ts is not None and (current[2] is None or ts > current[2]):
                status = PutStatus.REVERSAL
            elif ts is not None and current[2] is not None and ts < current[2]:
                status = PutStatus.SUPERSEDED
            else:
                reason = (
                    f"conflicting duplicate: outcome for {o.event_id} already recorded with a "
                    "different decision and no later decided_at; send a later decided_at to "
                    "reverse it"
                )
                results.append(PutResult(o.event_id, PutStatus.CONFLICT, reason))
                raw = json.dumps(o.to_json())
                dead.append(
                    DeadLetter(
                        source,
                        "outcome",
                        reason,
                        raw,
                        o.event_id,
                        location,
                        code=Reason.CONFLICT,
                    )
                )
                continue
            is_current = status is not PutStatus.SUPERSEDED
            if status is PutStatus.REVERSAL and current is not None:
                current[3] = False
                demote.append((o.event_id, current[0]))
            revision = len(revs) + 1
            revs.append([revision, digest, ts, is_current])
            actions = dumps([a.to_json() for a in o.actions])
            rows.append(
                (
                    o.event_id,
                    revision,
                    is_current,
                    dumps(o.decision),
                    actions,
                    o.decided_by,
                    o.decided_at,
                    ts,
                    digest,
                    None if o.handled_by is None else o.handled_by.value,
                )
            )
            results.append(PutResult(o.event_id, status))
            seconds.add(o, None)
        with self._tx() as tx:
            # A revision inserted in this batch and demoted in the same batch is written
            # with its final flag, so only rows already on disk need the UPDATE.
            final = {(r[0], r[1]): r[2] for r in rows}
            for eid, rev in demote:
                if (eid, rev) in final:
                    continue
                tx.execute(
                    "UPDATE outcomes SET is_current = false WHERE event_id = ? AND revision = ?",
                    [eid, rev],
                )
            if rows:
                flags = [next(r[3] for r in known[row[0]] if r[0] == row[1]) for row in rows]
                tx.execute(
                    "INSERT INTO outcomes SELECT unnest(?::VARCHAR[]), unnest(?::INTEGER[]), "
                    "unnest(?::BOOLEAN[]), unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[])::JSON, "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::TIMESTAMPTZ[]), "
                    "unnest(?::VARCHAR[]), ?, ?::TIMESTAMPTZ, false, unnest(?::VARCHAR[])",
                    [
                        _col(rows, 0),
                        _col(rows, 1),
                        flags,
                        *(_col(rows, i) for i in range(3, 9)),
                        source,
                        now,
                        _col(rows, 9),
                    ],
                )
            seconds.write(tx)
            self._insert_dead(tx, dead, now)
        return results

    async def put_decisions(
        self,
        decisions: Sequence[tuple[ShadowDecision, str]],
        *,
        now: datetime,
        source: str = "agent",
    ) -> list[PutResult]:
        """Store agent decisions as ``(decision, task_type)`` pairs; first answer wins. A
        decision the store cannot hold is dead-lettered and its event no longer waits for
        the agent (asking again would give the same answer, and fail the same way)."""

        def write(chunk: list[tuple[ShadowDecision, str]]) -> list[PutResult]:
            return self._put_decisions(chunk, now, source)

        def letter(row: tuple[ShadowDecision, str], why: str) -> DeadLetter:
            d = row[0]
            return DeadLetter(source, "decision", why, _raw(d.to_json), d.event_id)

        def answered(tx: duckdb.DuckDBPyConnection, row: tuple[ShadowDecision, str]) -> None:
            event_id = storable(row[0].event_id)
            if event_id == row[0].event_id:  # else no such event could have been stored
                tx.execute(
                    "UPDATE events SET needs_agent = false WHERE needs_agent AND event_id = ?",
                    [event_id],
                )

        return await self._run(
            self._write_batch,
            "decisions",
            list(decisions),
            write,
            letter,
            now=now,
            failed=lambda row, why: [_unstorable(row[0].event_id, why)],
            aside=answered,
        )

    def _put_decisions(
        self, decisions: list[tuple[ShadowDecision, str]], now: datetime, source: str
    ) -> list[PutResult]:
        keys = sorted({(d.event_id, d.agent_version) for d, _ in decisions})
        known: dict[str, str] = {
            f"{eid}\x00{ver}": digest
            for eid, ver, digest in self.con.execute(
                "SELECT d.event_id, d.agent_version, d.content_hash FROM decisions d "
                "JOIN (SELECT unnest(?::VARCHAR[]) AS event_id, unnest(?::VARCHAR[]) AS ver) k "
                "ON d.event_id = k.event_id AND d.agent_version = k.ver",
                [[k[0] for k in keys], [k[1] for k in keys]],
            ).fetchall()
        }
        results: list[PutResult] = []
        rows: list[tuple[Any, ...]] = []
        dead: list[DeadLetter] = []
        for d, task_type in decisions:
            key = f"{d.event_id}\x00{d.agent_version}"
            digest = d.content_hash
            old = known.get(key)
            if old is None:
                known[key] = digest
                u = d.usage
                rows.append(
                    (
                        d.event_id,
                        d.agent_version,
                        task_type,
                        dumps(d.to_json()),
                        digest,
                        d.error,
                        d.latency_ms,
                        u.input_tokens,
                        u.output_tokens,
                        u.cost_usd,
                        u.cost_source,
                    )
                )
                results.append(PutResult(d.event_id, PutStatus.STORED))
            elif old == digest:
                results.append(PutResult(d.event_id, PutStatus.DUPLICATE))
            else:
                reason = (
                    f"conflicting duplicate: agent {d.agent_version} already answered "
                    f"{d.event_id} differently; the first answer is kept"
                )
                results.append(PutResult(d.event_id, PutStatus.CONFLICT, reason))
                dead.append(
                    DeadLetter(
                        source,
                        "decision",
                        reason,
                        json.dumps(d.to_json()),
                        d.event_id,
                        code=Reason.CONFLICT,
                    )
                )
        with self._tx() as tx:
            if rows:
                tx.execute(
                    "INSERT INTO decisions (event_id, agent_version, task_type, body, "
                    "content_hash, error, latency_ms, input_tokens, output_tokens, cost_usd, "
                    "cost_source, received_at) SELECT unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[])::JSON, "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::DOUBLE[]), "
                    "unnest(?::BIGINT[]), unnest(?::BIGINT[]), unnest(?::DOUBLE[]), "
                    "unnest(?::VARCHAR[]), ?::TIMESTAMPTZ",
                    [*(_col(rows, i) for i in range(11)), now],
                )
                tx.execute(
                    "UPDATE events SET needs_agent = false WHERE needs_agent AND event_id IN "
                    "(SELECT unnest(?::VARCHAR[]))",
                    [_col(rows, 0)],
                )
            self._insert_dead(tx, dead, now)
        return results

    async def put_dead_letters(self, letters: Sequence[DeadLetter], *, now: datetime) -> None:
        def write() -> None:
            with self._tx() as tx:
                self._insert_dead(tx, list(letters), now)

        await self._run(write)


def _unstorable(event_id: str, why: str) -> PutResult:
    return PutResult(storable(event_id) or "", PutStatus.UNSTORABLE, why)


def _raw(to_json: Callable[[], Any]) -> str:
    """A record's JSON for its dead letter (ASCII, so storable), or its repr when even the
    record cannot be written as JSON."""
    try:
        value = to_json()
    except Exception:
        return "<a record that cannot be shown>"
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return storable(repr(value)) or ""


def _locations(locations: Sequence[str | None] | None, n: int) -> list[str | None]:
    if locations is None:
        return [None] * n
    if len(locations) != n:
        raise ValueError("locations must have one entry per record")
    return list(locations)
