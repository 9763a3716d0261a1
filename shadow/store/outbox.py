"""The Kafka outboxes (comparisons and ladder changes not yet acknowledged by the broker),
a replica's place in the promoter's changes, and replay evidence (``shadow replay
--record-evidence``), kept apart from live evidence.

The autonomy outbox (schema v7, table ``autonomy_outbox``): every ladder change this
sidecar decides is a row, written by :meth:`~shadow.store.ladder.LadderPart.apply_steps` in
the transaction that applies and audits it, keyed by the id of the audit row that recorded
it, holding the autonomy topic's value for it (:func:`change_record`). The publisher sends
the rows in audit id order and marks each one published once the broker acknowledged it.
Steps a replica follows from the promoter (move ``follow``) are not this sidecar's own
decisions and get no row; instead ``autonomy_followed`` keeps, per task type, the
promoter's audit id the replica last applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import duckdb

from shadow.model import (
    AuditEntry,
    Comparison,
    FieldResult,
    Handling,
    Verdict,
)
from shadow.promotion import LadderState, Step
from shadow.store.base import StoreBase, storable, storable_json
from shadow.store.records import (
    ReplayEvidence,
)


def ladder_json(state: LadderState) -> dict[str, Any]:
    """One task type's ladder state as the autonomy topic carries it (docs/kafka.md)."""
    return {
        "task_type": state.task_type,
        "level": str(state.level),
        "agent_version": state.agent_version,
        "proposal": None if state.proposal is None else str(state.proposal.to_level),
        "updated_at": state.updated_at.isoformat() if state.updated_at else None,
    }


def change_record(step: Step, *, audit_id: int, actor: str, frozen: bool) -> dict[str, Any]:
    """The autonomy topic's value for one audited change: the state after it
    (:func:`ladder_json`), the global freeze flag after it, the audited reason
    (``"<action> by <actor>: <reason>"``) and the change itself: the audit id, the action,
    the actor and the levels before and after."""
    return {
        **ladder_json(step.after),
        "frozen": frozen,
        "reason": f"{step.move.value} by {actor}: {step.reason}",
        "audit_id": audit_id,
        "action": step.move.value,
        "actor": actor,
        "from_level": str(step.before.level),
        "to_level": str(step.after.level),
    }


def insert_changes(
    tx: duckdb.DuckDBPyConnection, changes: Sequence[tuple[int, dict[str, Any]]]
) -> None:
    """Queue ``(audit_id, change_record)`` pairs in the autonomy outbox (inside the caller's
    transaction: the change, its audit row and its outbox row commit together). Like its
    audit row, an outbox row is never set aside: its text is made storable instead (an
    actor's or reason's lone surrogate kept as its escape)."""
    for audit_id, record in changes:
        tx.execute(
            "INSERT INTO autonomy_outbox (audit_id, task_type, record) VALUES (?, ?, ?::JSON)",
            [audit_id, storable(record["task_type"]), storable_json(record)],
        )


def record_followed(tx: duckdb.DuckDBPyConnection, followed: Mapping[str, int]) -> None:
    """Remember the promoter's audit id last applied per task type (a replica)."""
    for task_type, audit_id in followed.items():
        tx.execute("INSERT OR REPLACE INTO autonomy_followed VALUES (?, ?)", [task_type, audit_id])


class OutboxPart(StoreBase):
    # -- Kafka outbox (shadow.sources.publish) ------------------------------------------

    async def unpublished_comparisons(self, *, limit: int = 1000) -> list[Comparison]:
        """Comparisons whose current verdict and outcome revision are not yet marked
        published (oldest first): the comparisons topic's outbox."""

        def q() -> list[Comparison]:
            rows = self.con.execute(
                "SELECT c.event_id, c.task_type, c.agent_version, c.verdict, c.critical, "
                "c.fields, c.outcome_hash, c.handled_by, c.trace_id, c.segment FROM comparisons c "
                "LEFT JOIN published_comparisons p ON p.event_id = c.event_id "
                "AND p.agent_version = c.agent_version "
                "WHERE p.event_id IS NULL OR p.verdict <> c.verdict "
                "OR p.outcome_hash IS DISTINCT FROM c.outcome_hash "
                "ORDER BY c.compared_at, c.event_id, c.agent_version LIMIT ?",
                [limit],
            ).fetchall()
            return [
                Comparison(
                    r[0],
                    r[1],
                    r[2],
                    Verdict(r[3]),
                    tuple(FieldResult.from_json(f) for f in json.loads(r[5])),
                    bool(r[4]),
                    r[6],
                    Handling(r[7]),
                    trace_id=r[8],
                    segment=r[9],
                )
                for r in rows
            ]

        return await self._run(q)

    async def mark_published(self, comparisons: Sequence[Comparison], *, now: datetime) -> None:
        """Record that these comparisons (verdict and outcome revision) were published."""
        if not comparisons:
            return
        rows = list({(c.event_id, c.agent_version): c for c in comparisons}.values())

        def write() -> None:
            with self._tx() as tx:
                self._insert_published(tx, rows, now)

        await self._run(write)

    # -- autonomy outbox (shadow.sources.publish) and follower (shadow.sources.follow) ----

    async def unpublished_changes(self, *, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        """Ladder changes not yet marked published, as ``(audit_id, record)`` in audit id
        order (the order they were decided in): the autonomy topic's outbox."""

        def q() -> list[tuple[int, dict[str, Any]]]:
            rows = self.con.execute(
                "SELECT audit_id, record FROM autonomy_outbox WHERE published_at IS NULL "
                "ORDER BY audit_id LIMIT ?",
                [limit],
            ).fetchall()
            return [(int(r[0]), json.loads(r[1])) for r in rows]

        return await self._run(q)

    async def mark_changes_published(self, audit_ids: Sequence[int], *, now: datetime) -> None:
        """Record that the broker acknowledged these changes."""
        if not audit_ids:
            return

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "UPDATE autonomy_outbox SET published_at = ?::TIMESTAMPTZ "
                    "WHERE audit_id IN (SELECT unnest(?::BIGINT[]))",
                    [now, list(audit_ids)],
                )

        await self._run(write)

    async def latest_changes(self) -> dict[str, tuple[int, dict[str, Any]] | None]:
        """Every task type with a change in the outbox, and its newest *published* change as
        ``(audit_id, record)`` (``None`` while none is published yet)."""

        def q() -> dict[str, tuple[int, dict[str, Any]] | None]:
            rows = self.con.execute(
                "SELECT task_type, max(audit_id) FILTER (WHERE published_at IS NOT NULL), "
                "arg_max(record, audit_id) FILTER (WHERE published_at IS NOT NULL) "
                "FROM autonomy_outbox GROUP BY task_type"
            ).fetchall()
            return {
                str(r[0]): None if r[1] is None else (int(r[1]), json.loads(r[2])) for r in rows
            }

        return await self._run(q)

    async def followed_audit_ids(self) -> dict[str, int]:
        """A replica's place in the promoter's changes: per task type, the promoter's audit
        id it last applied (see :meth:`~shadow.store.ladder.LadderPart.apply_steps`)."""

        def q() -> dict[str, int]:
            rows = self.con.execute("SELECT task_type, audit_id FROM autonomy_followed").fetchall()
            return {str(r[0]): int(r[1]) for r in rows}

        return await self._run(q)

    # -- replay evidence (shadow replay --record-evidence) -------------------------------

    async def put_replay_evidence(
        self,
        entries: Sequence[ReplayEvidence],
        *,
        run_id: str,
        history: str,
        now: datetime,
        actor: str = "replay",
    ) -> None:
        """Keep a replay run's per task type results, each audited (action
        ``replay_evidence``), in one transaction. Never touches live evidence or levels."""

        def write() -> None:
            with self._tx() as tx:
                for e in entries:
                    tx.execute(
                        "INSERT INTO replay_evidence (run_id, recorded_at, task_type, "
                        "agent_version, n, agree, critical, errors, lower, upper, policy_hash, "
                        "history, report) VALUES (?, ?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                        "?, ?::JSON)",
                        [
                            storable(run_id),
                            now,
                            storable(e.task_type),
                            storable(e.agent_version),
                            e.n,
                            e.agree,
                            e.critical,
                            e.errors,
                            e.lower,
                            e.upper,
                            storable(e.policy_hash),
                            storable(history),
                            storable_json(e.report),
                        ],
                    )
                self._insert_audit(
                    tx,
                    [
                        AuditEntry(
                            at=now,
                            task_type=e.task_type,
                            actor=actor,
                            action="replay_evidence",
                            from_level=None,
                            to_level=None,
                            reason=(
                                f"replay {run_id} of {history}: agent {e.agent_version} agreed "
                                f"{e.agree}/{e.n} (replay evidence, not live evidence)"
                            ),
                            evidence={
                                "run_id": run_id,
                                "agent_version": e.agent_version,
                                "n": e.n,
                                "agree": e.agree,
                                "critical": e.critical,
                                "errors": e.errors,
                                "lower": e.lower,
                                "upper": e.upper,
                                "source": "replay",
                            },
                            policy_hash=e.policy_hash,
                        )
                        for e in entries
                    ],
                )

        await self._run(write)

    async def replay_evidence(self, *, task_type: str | None = None) -> list[dict[str, Any]]:
        """Recorded replay results, oldest first (without the report bodies)."""

        def q() -> list[dict[str, Any]]:
            sql = (
                "SELECT run_id, recorded_at, task_type, agent_version, n, agree, critical, "
                "errors, lower, upper, policy_hash, history FROM replay_evidence "
            )
            params: list[Any] = []
            if task_type is not None:
                sql += "WHERE task_type = ? "
                params.append(task_type)
            cur = self.con.execute(sql + "ORDER BY id", params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

        return await self._run(q)
