"""The Kafka outbox (comparisons not yet acknowledged by the broker) and replay evidence
(``shadow replay --record-evidence``), kept apart from live evidence."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shadow.model import (
    AuditEntry,
    Comparison,
    FieldResult,
    Verdict,
)
from shadow.store.base import StoreBase
from shadow.store.records import (
    ReplayEvidence,
)


class OutboxPart(StoreBase):
    # -- Kafka outbox (shadow.sources.publish) ------------------------------------------

    async def unpublished_comparisons(self, *, limit: int = 1000) -> list[Comparison]:
        """Comparisons whose current verdict and outcome revision are not yet marked
        published (oldest first): the comparisons topic's outbox."""

        def q() -> list[Comparison]:
            rows = self.con.execute(
                "SELECT c.event_id, c.task_type, c.agent_version, c.verdict, c.critical, "
                "c.fields, c.outcome_hash FROM comparisons c "
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
                            run_id,
                            now,
                            e.task_type,
                            e.agent_version,
                            e.n,
                            e.agree,
                            e.critical,
                            e.errors,
                            e.lower,
                            e.upper,
                            e.policy_hash,
                            history,
                            json.dumps(e.report),
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
