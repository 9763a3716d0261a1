"""Joins: ready pairs, comparisons, TTL expiry and the agent's work queue."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import duckdb

from shadow.fastjson import dumps, loads
from shadow.model import (
    AuditEntry,
    Comparison,
    Handling,
    Outcome,
    ShadowDecision,
    Verdict,
    WorkEvent,
    as_actions,
)
from shadow.store.base import StoreBase
from shadow.store.records import (
    DeadLetter,
    JoinRow,
    Reversal,
    _col,
)


def _handling(value: str | None) -> Handling | None:
    return None if value is None else Handling(value)


def _comparison_raw(c: Comparison) -> str:
    """A comparison as its dead letter keeps it (ASCII JSON: storable whatever it holds)."""
    fields = {
        "event_id": c.event_id,
        "task_type": c.task_type,
        "agent_version": c.agent_version,
        "verdict": c.verdict.value,
        "critical": c.critical_miss,
        "outcome_hash": c.outcome_hash,
        "handled_by": c.handled_by.value,
    }
    try:
        return json.dumps({**fields, "fields": [f.to_json() for f in c.fields]})
    except (TypeError, ValueError, RecursionError):
        return json.dumps(fields)


class JoinPart(StoreBase):
    # -- join -----------------------------------------------------------------------------

    async def ready_pairs(
        self, event_ids: Sequence[str] | None = None, *, limit: int = 10_000
    ) -> list[JoinRow]:
        """Decisions with a current outcome and no up-to-date comparison.

        With ``event_ids``, only those events; without, a sweep over everything (used at
        start-up to finish work a crash interrupted)."""
        return await self._run(
            self._ready_pairs, None if event_ids is None else list(event_ids), limit
        )

    def _ready_pairs(self, event_ids: list[str] | None, limit: int) -> list[JoinRow]:
        sql = (
            "SELECT d.task_type, d.body, o.event_id, o.decision, o.actions, o.decided_by, "
            "o.decided_at, o.content_hash, h.handled_by, o.handled_by FROM decisions d "
            "JOIN events e ON e.event_id = d.event_id "
            "JOIN outcomes o ON o.event_id = d.event_id AND o.is_current "
            "LEFT JOIN handling h ON h.event_id = d.event_id "
            "LEFT JOIN comparisons c ON c.event_id = d.event_id "
            "AND c.agent_version = d.agent_version "
            "WHERE (c.event_id IS NULL OR c.outcome_hash IS DISTINCT FROM o.content_hash) "
        )
        params: list[Any] = []
        if event_ids is not None:
            sql += "AND d.event_id IN (SELECT unnest(?::VARCHAR[])) "
            params.append(event_ids)
        sql += "ORDER BY d.seq LIMIT ?"
        params.append(limit)
        out: list[JoinRow] = []
        for row in self.con.execute(sql, params).fetchall():
            task_type, body, eid, decision, actions, by, at, digest, recorded, stated = row
            outcome = Outcome(
                eid, loads(decision), as_actions(loads(actions)), by, at, _handling(stated)
            )
            out.append(
                JoinRow(
                    task_type,
                    ShadowDecision.from_stored(loads(body)),
                    outcome,
                    digest,
                    _handling(recorded),
                )
            )
        return out

    async def pairs_of(
        self, task_type: str, *, after_seq: int = -1, limit: int = 5000
    ) -> list[tuple[int, JoinRow]]:
        """Every decision of ``task_type`` with a current outcome, compared or not, in
        decision order after ``after_seq`` (with its ``seq``): what a new evidence epoch
        re-scores."""
        return await self._run(self._pairs_of, task_type, after_seq, limit)

    def _pairs_of(self, task_type: str, after_seq: int, limit: int) -> list[tuple[int, JoinRow]]:
        rows = self.con.execute(
            "SELECT d.seq, d.task_type, d.body, o.event_id, o.decision, o.actions, "
            "o.decided_by, o.decided_at, o.content_hash, h.handled_by, o.handled_by "
            "FROM decisions d "
            "JOIN outcomes o ON o.event_id = d.event_id AND o.is_current "
            "LEFT JOIN handling h ON h.event_id = d.event_id "
            "WHERE d.task_type = ? AND d.seq > ? ORDER BY d.seq LIMIT ?",
            [task_type, after_seq, limit],
        ).fetchall()
        out: list[tuple[int, JoinRow]] = []
        for seq, tt, body, eid, decision, actions, by, at, digest, recorded, stated in rows:
            outcome = Outcome(
                eid, loads(decision), as_actions(loads(actions)), by, at, _handling(stated)
            )
            row = JoinRow(
                tt, ShadowDecision.from_stored(loads(body)), outcome, digest, _handling(recorded)
            )
            out.append((int(seq), row))
        return out

    async def verdicts_of(
        self, comparisons: Sequence[Comparison]
    ) -> dict[tuple[str, str], Verdict]:
        """The stored verdict of each (event_id, agent_version) among ``comparisons``."""

        def q() -> dict[tuple[str, str], Verdict]:
            rows = self.con.execute(
                "SELECT c.event_id, c.agent_version, c.verdict FROM comparisons c JOIN "
                "(SELECT unnest(?::VARCHAR[]) AS event_id, unnest(?::VARCHAR[]) AS ver) k "
                "ON c.event_id = k.event_id AND c.agent_version = k.ver",
                [[c.event_id for c in comparisons], [c.agent_version for c in comparisons]],
            ).fetchall()
            return {(e, v): Verdict(verdict) for e, v, verdict in rows}

        return await self._run(q)

    async def put_comparisons(
        self,
        comparisons: Sequence[Comparison],
        *,
        now: datetime,
        actor: str = "joiner",
        published: bool = False,
    ) -> list[Reversal]:
        """Upsert comparisons; a changed outcome behind an existing verdict is audited as a
        reversal. Returns the reversals so callers can correct their metrics.

        An ``expired`` verdict never replaces a real one (agree, disagree, agent_error): with
        Kafka replicas, the member that lost a partition may expire a join that the new
        owner completed; a real verdict does replace an ``expired`` one. ``published``
        (the promoter folding the comparisons topic) also marks the comparisons it keeps as
        published, in the same transaction, so they are never echoed.

        A comparison the store cannot hold is dead-lettered (kind ``comparison``, source
        ``actor``) and the others are stored (``StoreBase._write_batch``)."""

        def write(chunk: list[Comparison]) -> list[Reversal]:
            return self._put_comparisons(chunk, now, actor, published)

        def letter(c: Comparison, why: str) -> DeadLetter:
            return DeadLetter(actor, "comparison", why, _comparison_raw(c), c.event_id)

        return await self._run(
            self._write_batch, "comparisons", list(comparisons), write, letter, now=now
        )

    def _put_comparisons(
        self, comparisons: list[Comparison], now: datetime, actor: str, published: bool = False
    ) -> list[Reversal]:
        if not comparisons:
            return []
        last: dict[tuple[str, str], Comparison] = {}
        for c in comparisons:  # the last per key, but never an 'expired' over a real one
            seen = last.get((c.event_id, c.agent_version))
            if seen is None or seen.verdict is Verdict.EXPIRED or c.verdict is not Verdict.EXPIRED:
                last[(c.event_id, c.agent_version)] = c
        comparisons = list(last.values())
        keys = [f"{c.event_id}\x00{c.agent_version}" for c in comparisons]
        # A join on both key columns: cheaper than comparing a concatenation of them, which
        # builds a string for every stored row.
        traces: dict[str, str] = {}
        segments: dict[str, str] = {}
        before: dict[str, tuple[Verdict, str | None]] = {}
        for eid, ver, v, digest, trace, segment in self.con.execute(
            "SELECT c.event_id, c.agent_version, c.verdict, c.outcome_hash, c.trace_id, "
            "c.segment "
            "FROM comparisons c "
            "JOIN (SELECT unnest(?::VARCHAR[]) AS event_id, unnest(?::VARCHAR[]) AS ver) k "
            "ON c.event_id = k.event_id AND c.agent_version = k.ver",
            [[c.event_id for c in comparisons], [c.agent_version for c in comparisons]],
        ).fetchall():
            before[f"{eid}\x00{ver}"] = (Verdict(v), digest)
            if trace is not None:
                traces[f"{eid}\x00{ver}"] = trace
            if segment is not None:
                segments[f"{eid}\x00{ver}"] = segment
        if traces or segments:
            # A re-score or a folded comparison keeps the trace it was made in, and the
            # segment it was stored with (its event may be gone: retention).
            comparisons = [
                replace(
                    c,
                    trace_id=c.trace_id if c.trace_id is not None else traces.get(k),
                    segment=c.segment if c.segment is not None else segments.get(k),
                )
                for c, k in zip(comparisons, keys, strict=True)
            ]
        kept = [
            (c, k)
            for c, k in zip(comparisons, keys, strict=True)
            if not (
                c.verdict is Verdict.EXPIRED and k in before and before[k][0] is not Verdict.EXPIRED
            )
        ]
        if not kept:
            return []
        comparisons, keys = [c for c, _ in kept], [k for _, k in kept]
        reversals = [
            Reversal(c.event_id, c.agent_version, before[k][0], c.verdict)
            for c, k in zip(comparisons, keys, strict=True)
            if k in before
            and before[k][0] is not Verdict.EXPIRED
            and before[k][1] != c.outcome_hash
        ]
        with self._tx() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO comparisons SELECT unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::BOOLEAN[]), unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[]), "
                "?::TIMESTAMPTZ, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
                [
                    [c.event_id for c in comparisons],
                    [c.agent_version for c in comparisons],
                    [c.task_type for c in comparisons],
                    [c.verdict.value for c in comparisons],
                    [c.critical_miss for c in comparisons],
                    [dumps([f.to_json() for f in c.fields]) for c in comparisons],
                    [c.outcome_hash for c in comparisons],
                    now,
                    [c.handled_by.value for c in comparisons],
                    [c.trace_id for c in comparisons],
                    [c.segment for c in comparisons],
                ],
            )
            # The sidecar's own event wins over the segment a comparison came with.
            self._segment_from_events(tx, [c.event_id for c in comparisons])
            # The sidecar's own routing record wins over the label a comparison came with
            # (a replica's, folded from the comparisons topic).
            tx.execute(
                "UPDATE comparisons SET handled_by = h.handled_by FROM handling h "
                "WHERE comparisons.event_id = h.event_id "
                "AND comparisons.handled_by <> h.handled_by "
                "AND h.event_id IN (SELECT unnest(?::VARCHAR[]))",
                [[c.event_id for c in comparisons]],
            )
            if published:
                self._insert_published(tx, comparisons, now)
            by_key = {f"{c.event_id}\x00{c.agent_version}": c for c in comparisons}
            entries = [
                AuditEntry(
                    at=now,
                    task_type=by_key[f"{r.event_id}\x00{r.agent_version}"].task_type,
                    actor=actor,
                    action="outcome_reversal",
                    from_level=None,
                    to_level=None,
                    reason=f"outcome for {r.event_id} changed: {r.before} -> {r.after}",
                    evidence={
                        "event_id": r.event_id,
                        "agent_version": r.agent_version,
                        "before": r.before.value,
                        "after": r.after.value,
                    },
                )
                for r in reversals
            ]
            self._insert_audit(tx, entries)
        return reversals

    async def expire(self, *, now: datetime, ttl: timedelta) -> tuple[int, int]:
        """Close joins older than ``ttl``: decisions without an outcome become ``expired``
        comparisons, outcomes without an event are flagged. Returns both counts. A late
        outcome still completes an expired join (it is re-compared)."""
        return await self._run(self._expire, now - ttl, now)

    @staticmethod
    def _segment_from_events(tx: duckdb.DuckDBPyConnection, event_ids: list[str]) -> None:
        """Copy each case's event ``segment`` onto its comparisons (schema v14), so the
        per-segment evidence outlives the events retention deletes."""
        tx.execute(
            "UPDATE comparisons SET segment = e.segment FROM events e "
            "WHERE comparisons.event_id = e.event_id "
            "AND e.event_id IN (SELECT unnest(?::VARCHAR[]))",
            [event_ids],
        )

    def _expire(self, cutoff: datetime, now: datetime) -> tuple[int, int]:
        with self._tx() as tx:
            stale = tx.execute(
                "SELECT d.event_id, d.agent_version, d.task_type FROM decisions d "
                "JOIN events e ON e.event_id = d.event_id "
                "LEFT JOIN outcomes o ON o.event_id = d.event_id "
                "LEFT JOIN comparisons c ON c.event_id = d.event_id "
                "AND c.agent_version = d.agent_version "
                "WHERE o.event_id IS NULL AND c.event_id IS NULL AND e.received_at < ?",
                [cutoff],
            ).fetchall()
            if stale:
                tx.execute(
                    "INSERT INTO comparisons SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), 'expired', false, '[]'::JSON, NULL, ?::TIMESTAMPTZ, "
                    "'blind', NULL, NULL",
                    [_col(stale, 0), _col(stale, 1), _col(stale, 2), now],
                )
                self._segment_from_events(tx, _col(stale, 0))
                tx.execute(
                    "UPDATE events SET expired = true WHERE event_id IN "
                    "(SELECT unnest(?::VARCHAR[]))",
                    [_col(stale, 0)],
                )
            orphans = tx.execute(
                "UPDATE outcomes SET expired = true WHERE NOT expired AND received_at < ? "
                "AND event_id NOT IN (SELECT event_id FROM events)",
                [cutoff],
            ).fetchone()
        return len(stale), int(orphans[0]) if orphans else 0

    async def events_awaiting_agent(self, *, limit: int = 1000) -> list[WorkEvent]:
        """Sampled events with no decision yet, oldest first (for restart recovery)."""

        def q() -> list[WorkEvent]:
            rows = self.con.execute(
                "SELECT event_id, task_type, payload, occurred_at, segment FROM events "
                "WHERE needs_agent ORDER BY received_at, event_id LIMIT ?",
                [limit],
            ).fetchall()
            return [WorkEvent(r[0], r[1], loads(r[2]), r[3], r[4]) for r in rows]

        return await self._run(q)
