"""Evidence, ladder state, the hash-chained audit log (:mod:`shadow.store.audit`) and the
freeze flag."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import duckdb

from shadow.audit_chain import ChainEntry, ChainState, ChainWalk
from shadow.budgets import BudgetEvidence
from shadow.model import (
    AuditEntry,
    Evidence,
    Level,
)
from shadow.promotion import Decided, Hold, LadderState, Move, Proposal, Step
from shadow.store.audit import audit_page
from shadow.store.base import StoreBase
from shadow.store.outbox import change_record, insert_changes, record_followed
from shadow.store.records import (
    _stamp,
)
from shadow.store.review import review_counts

# Decisions a version may be silent for and still be the current one (current_versions).
ACTIVE_WINDOW = 1000


class LadderPart(StoreBase):
    # -- evidence and autonomy ------------------------------------------------------------

    async def evidence(self) -> dict[str, dict[str, Evidence]]:
        """``{task_type: {agent_version: Evidence}}`` from the ``agreement`` view, with the
        reviewed sample's counts (:func:`shadow.store.review.review_counts`)."""

        def q() -> dict[str, dict[str, Evidence]]:
            out: dict[str, dict[str, Evidence]] = {}
            reviewed = review_counts(self.con)
            for tt, ver, n, agree, critical, errors, _expired in self.con.execute(
                "SELECT * FROM agreement"
            ).fetchall():
                counts = reviewed.get((tt, ver), (0, 0, 0, 0, 0, 0))
                out.setdefault(tt, {})[ver] = Evidence(
                    tt, ver, n, agree, critical, errors, *counts[:4]
                )
            return out

        return await self._run(q)

    async def segment_evidence(
        self, declared: Mapping[str, Sequence[str]]
    ) -> dict[str, dict[str, dict[str, Evidence]]]:
        """``{task_type: {agent_version: {segment: Evidence}}}`` over the blind comparisons
        (as the ``agreement`` view counts them), by the segment of each case's event (kept
        with the comparison, schema v14, so it outlives the event): a
        segment ``declared`` for its task type is its own label, every other (and none) is
        ``other``. The folding happens in the query, so a flood of undeclared segment names
        never makes more than one row per declared segment and ``other``."""
        pairs = [(t, seg) for t, segs in declared.items() for seg in segs]

        def q() -> dict[str, dict[str, dict[str, Evidence]]]:
            out: dict[str, dict[str, dict[str, Evidence]]] = {}
            rows = self.con.execute(
                "WITH d AS (SELECT unnest(?::VARCHAR[]) AS task_type, "
                "unnest(?::VARCHAR[]) AS segment) "
                "SELECT c.task_type, c.agent_version, coalesce(d.segment, 'other') AS label, "
                "count(*) FILTER (WHERE c.verdict IN ('agree', 'disagree', 'agent_error')), "
                "count(*) FILTER (WHERE c.verdict = 'agree'), "
                "count(*) FILTER (WHERE c.critical), "
                "count(*) FILTER (WHERE c.verdict = 'agent_error') "
                "FROM comparisons c "
                "LEFT JOIN d ON d.task_type = c.task_type AND d.segment = c.segment "
                "WHERE c.handled_by = 'blind' "
                "GROUP BY c.task_type, c.agent_version, label",
                [[p[0] for p in pairs], [p[1] for p in pairs]],
            ).fetchall()
            for tt, ver, label, n, agree, critical, errors in rows:
                out.setdefault(tt, {}).setdefault(ver, {})[label] = Evidence(
                    tt, ver, int(n), int(agree), int(critical), int(errors)
                )
            return out

        return await self._run(q)

    async def budget_evidence(
        self,
        wanted: Mapping[str, tuple[str | None, float | None, Sequence[float]]],
        *,
        now: datetime,
    ) -> dict[str, BudgetEvidence]:
        """Per task type, the aggregates its budgets are judged on (shadow.budgets), in one
        query: ``wanted`` maps a task type to (its current agent version, its cost ceiling
        or ``None``, its latency budgets in ms). Over that version's decisions: how many,
        how many failed, the known costs' count, sum, sum capped at the ceiling and largest
        (a cost is known unless ``cost_source`` is ``unknown``; rows from before schema v15
        were reported), the observed p95 latency, and per latency budget the decisions
        slower than it or with no latency (fail closed); and the events of the task type
        received in the 24 h before ``now``."""
        names = list(wanted)
        limits = sorted({t for _, _, ts in wanted.values() for t in ts})
        over = "".join(
            ", count(d.event_id) FILTER (WHERE d.latency_ms IS NULL OR d.latency_ms > ?)"
            for _ in limits
        )
        known = "coalesce(d.cost_source, 'reported') <> 'unknown'"
        sql = (
            "WITH w AS (SELECT unnest(?::VARCHAR[]) AS task_type, "
            "unnest(?::VARCHAR[]) AS agent_version, unnest(?::DOUBLE[]) AS ceiling), "
            "v AS (SELECT task_type, count(*) AS volume FROM events "
            "WHERE received_at > ?::TIMESTAMPTZ AND task_type IN (SELECT task_type FROM w) "
            "GROUP BY task_type) "
            "SELECT w.task_type, count(d.event_id), count(d.error), "
            f"count(d.event_id) FILTER (WHERE {known}), "
            f"coalesce(sum(d.cost_usd) FILTER (WHERE {known}), 0), "
            f"coalesce(sum(least(d.cost_usd, coalesce(w.ceiling, d.cost_usd))) "
            f"FILTER (WHERE {known}), 0), "
            f"max(d.cost_usd) FILTER (WHERE {known}), "
            f"quantile_disc(d.latency_ms, 0.95), any_value(v.volume){over} "
            "FROM w LEFT JOIN decisions d "
            "ON d.task_type = w.task_type AND d.agent_version = w.agent_version "
            "LEFT JOIN v ON v.task_type = w.task_type "
            "GROUP BY w.task_type"
        )
        params: list[Any] = [
            names,
            [wanted[t][0] or "" for t in names],
            [wanted[t][1] for t in names],
            now - timedelta(hours=24),
            *limits,
        ]

        def q() -> dict[str, BudgetEvidence]:
            out: dict[str, BudgetEvidence] = {}
            if not names:
                return out
            for row in self.con.execute(sql, params).fetchall():
                tt, n, errors, cost_n, total, clipped, top, p95, volume, *counts = row
                mine = set(wanted[tt][2])
                out[tt] = BudgetEvidence(
                    n=int(n),
                    errors=int(errors),
                    cost_n=int(cost_n),
                    cost_sum=float(total),
                    cost_clipped=float(clipped),
                    cost_max=None if top is None else float(top),
                    over={t: int(c) for t, c in zip(limits, counts, strict=True) if t in mine},
                    p95=None if p95 is None else float(p95),
                    volume_per_day=int(volume or 0),
                )
            return out

        return await self._run(q)

    async def current_versions(self) -> dict[str, str]:
        """The current agent version per task type: of the versions that made at least one
        of the task type's last :data:`ACTIVE_WINDOW` decisions, the one introduced last
        (whose first decision is newest). A canary answering beside the old version is
        current from its first decision on and stays so while both answer (no flipping
        with each interleaved decision); once it stops answering for that many decisions
        (a rollback), the old version is current again."""

        def q() -> dict[str, str]:
            rows = self.con.execute(
                "WITH v AS (SELECT task_type, agent_version, min(seq) AS first_seq, "
                "max(seq) AS last_seq FROM decisions GROUP BY task_type, agent_version), "
                "recent AS (SELECT task_type, "
                "(SELECT min(seq) FROM (SELECT seq FROM decisions d "
                "WHERE d.task_type = t.task_type ORDER BY seq DESC LIMIT ?)) AS since "
                "FROM (SELECT DISTINCT task_type FROM decisions) t) "
                "SELECT v.task_type, arg_max(v.agent_version, v.first_seq) FROM v "
                "JOIN recent USING (task_type) WHERE v.last_seq >= recent.since "
                "GROUP BY v.task_type",
                [ACTIVE_WINDOW],
            ).fetchall()
            return dict(rows)

        return await self._run(q)

    async def level_stream(
        self, task_type: str, agent_version: str, since: datetime | None, *, last: int = 0
    ) -> list[tuple[bool, bool]]:
        """``(agreed, critical)`` of every blind comparison (agree, disagree, agent_error)
        of ``agent_version`` for ``task_type`` made at or after ``since``, oldest first (with
        ``last``, only the newest ``last`` of them): the evidence the drift rules fold at
        start (:class:`shadow.ladder.Ladder`)."""

        def q() -> list[tuple[bool, bool]]:
            sql = (
                "SELECT verdict = 'agree', critical FROM comparisons "
                "WHERE task_type = ? AND agent_version = ? AND handled_by = 'blind' "
                "AND verdict IN ('agree', 'disagree', 'agent_error') "
            )
            params: list[Any] = [task_type, agent_version]
            if since is not None:
                sql += "AND compared_at >= ?::TIMESTAMPTZ "
                params.append(since)
            if last:
                sql += "ORDER BY compared_at DESC, event_id DESC LIMIT ?"
                params.append(last)
                rows = self.con.execute(sql, params).fetchall()[::-1]
            else:
                sql += "ORDER BY compared_at, event_id"
                rows = self.con.execute(sql, params).fetchall()
            return [(bool(a), bool(c)) for a, c in rows]

        return await self._run(q)

    async def ladder_states(self) -> dict[str, LadderState]:
        def q() -> dict[str, LadderState]:
            out: dict[str, LadderState] = {}
            for tt, level, ver, proposal, updated, decided, hold in self.con.execute(
                "SELECT task_type, level, agent_version, proposal, updated_at, decided, hold "
                "FROM autonomy"
            ).fetchall():
                prop = Proposal.from_json(json.loads(proposal), tt) if proposal else None
                dec = Decided.from_json(json.loads(decided)) if decided else None
                held = Hold.from_json(json.loads(hold)) if hold else None
                out[tt] = LadderState(tt, Level(level), ver, prop, updated, dec, held)
            return out

        return await self._run(q)

    async def apply_steps(
        self,
        steps: Sequence[Step],
        *,
        actor: str,
        frozen: bool | None = None,
        followed: Mapping[str, int] | None = None,
    ) -> None:
        """Persist the new states of ``steps`` and audit each change, in one transaction.
        ``frozen`` also sets the global freeze flag in the same transaction.

        Each change this sidecar decided (every move but ``follow``) is also queued, in the
        same transaction, in the autonomy outbox under its audit id
        (:func:`~shadow.store.outbox.change_record`, with the freeze flag in force after
        the transaction), so the autonomy topic gets every change, in order, even when the
        broker is away or the process dies before publishing. ``followed`` (a replica):
        the promoter's audit id now applied per task type, recorded in the same
        transaction."""
        await self._run(self._apply_steps, list(steps), actor, frozen, dict(followed or {}))

    def _apply_steps(
        self, steps: list[Step], actor: str, frozen: bool | None, followed: dict[str, int]
    ) -> None:
        changed = [s for s in steps if s.changed]
        with self._tx() as tx:
            for s in changed:
                a = s.after
                tx.execute(
                    "INSERT OR REPLACE INTO autonomy "
                    "(task_type, level, agent_version, proposal, updated_at, decided, hold) "
                    "VALUES (?, ?, ?, ?, ?::TIMESTAMPTZ, ?, ?)",
                    [
                        a.task_type,
                        int(a.level),
                        a.agent_version,
                        json.dumps(a.proposal.to_json()) if a.proposal else None,
                        a.updated_at,
                        json.dumps(a.decided.to_json()) if a.decided else None,
                        json.dumps(a.hold.to_json()) if a.hold else None,
                    ],
                )
            ids = self._insert_audit(
                tx,
                [
                    AuditEntry(
                        at=_stamp(s),
                        task_type=s.after.task_type,
                        actor=actor,
                        action=s.move.value,
                        from_level=s.before.level,
                        to_level=s.after.level,
                        reason=s.reason,
                        evidence=s.evidence.to_json(),
                        policy_hash=s.evidence.policy_hash,
                    )
                    for s in changed
                ],
            )
            own = [(i, s) for i, s in zip(ids, changed, strict=True) if s.move is not Move.FOLLOW]
            if own:
                in_force = self._frozen(tx) if frozen is None else frozen
                insert_changes(
                    tx,
                    [
                        (i, change_record(s, audit_id=i, actor=actor, frozen=in_force))
                        for i, s in own
                    ],
                )
            if followed:
                record_followed(tx, followed)
            if frozen is not None:
                tx.execute(
                    "INSERT OR REPLACE INTO sidecar_state VALUES ('frozen', ?::JSON)",
                    [json.dumps(frozen)],
                )

    @staticmethod
    def _frozen(con: duckdb.DuckDBPyConnection) -> bool:
        row = con.execute("SELECT value FROM sidecar_state WHERE key = 'frozen'").fetchone()
        return bool(json.loads(row[0])) if row else False

    async def epoch_of(self, task_type: str) -> dict[str, Any] | None:
        """The evidence epoch ``task_type``'s comparisons were scored in: ``{"epoch",
        "compare_hash", "policy_hash"}`` (``None`` before the first start that kept it)."""

        def q() -> dict[str, Any] | None:
            row = self.con.execute(
                "SELECT value FROM sidecar_state WHERE key = ?", [f"epoch:{task_type}"]
            ).fetchone()
            return dict(json.loads(row[0])) if row else None

        return await self._run(q)

    async def set_epoch(
        self, task_type: str, epoch: dict[str, Any], entry: AuditEntry | None = None
    ) -> None:
        """Keep ``task_type``'s epoch, and audit its start (``entry``) in the same
        transaction."""

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR REPLACE INTO sidecar_state VALUES (?, ?::JSON)",
                    [f"epoch:{task_type}", json.dumps(epoch)],
                )
                if entry is not None:
                    self._insert_audit(tx, [entry])

        await self._run(write)

    async def save_policy(self, text: str, digest: str) -> None:
        """Keep the policy in force with the evidence, so ``shadow status --db`` can read
        a database without the policy file."""

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR REPLACE INTO sidecar_state VALUES ('policy', ?::JSON)",
                    [json.dumps({"text": text, "hash": digest})],
                )

        await self._run(write)

    async def policy_text(self) -> str | None:
        def q() -> str | None:
            row = self.con.execute(
                "SELECT value FROM sidecar_state WHERE key = 'policy'"
            ).fetchone()
            return str(json.loads(row[0])["text"]) if row else None

        return await self._run(q)

    async def is_frozen(self) -> bool:
        return await self._run(lambda: self._frozen(self.con))

    async def audit_log(
        self,
        *,
        task_type: str | None = None,
        limit: int = 100,
        action_or_move: str | None = None,
    ) -> list[tuple[int, AuditEntry]]:
        """Newest first, as ``(id, entry)``; with ``action_or_move``, only the entries with
        that action or a level change."""

        def q() -> list[tuple[int, AuditEntry]]:
            sql = (
                "SELECT id, recorded_at, task_type, actor, action, from_level, to_level, reason, "
                "evidence, policy_hash FROM audit_log WHERE true "
            )
            params: list[Any] = []
            if task_type is not None:
                sql += "AND task_type = ? "
                params.append(task_type)
            if action_or_move is not None:
                sql += "AND (action = ? OR to_level IS NOT NULL) "
                params.append(action_or_move)
            sql += "ORDER BY id DESC LIMIT ?"
            params.append(limit)
            out = []
            for row in self.con.execute(sql, params).fetchall():
                entry = AuditEntry(
                    at=row[1],
                    task_type=row[2],
                    actor=row[3],
                    action=row[4],
                    from_level=Level.parse(row[5]) if row[5] else None,
                    to_level=Level.parse(row[6]) if row[6] else None,
                    reason=row[7],
                    evidence=json.loads(row[8]),
                    policy_hash=row[9],
                )
                out.append((int(row[0]), entry))
            return out

        return await self._run(q)

    async def audit_entries(self, *, after: int = 0, limit: int = 1000) -> list[ChainEntry]:
        """The audit log as stored, with its hashes: up to ``limit`` entries with ids above
        ``after``, oldest first (a page of ``GET /v1/audit``)."""
        return await self._run(lambda: audit_page(self.con, after=after, limit=limit))

    async def audit_chain(self, *, page: int = 10_000) -> ChainState:
        """Walk the whole audit log's hash chain (:class:`~shadow.audit_chain.ChainWalk`),
        ``page`` entries per read, so a long log is neither one read nor holds the store's
        thread from its writers for the whole walk. Entries appended during the walk are
        walked too (they come after, in id order)."""
        walk = ChainWalk()
        while True:
            after = walk.last_id or 0
            entries = await self.audit_entries(after=after, limit=page)
            walk.feed(entries)
            if len(entries) < page:
                return walk.state

    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]:
        def q() -> list[dict[str, Any]]:
            cur = self.con.execute(
                "SELECT id, recorded_at, source, kind, reason, event_id, location, raw "
                "FROM dead_letters "
                "ORDER BY id DESC LIMIT ?",
                [limit],
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

        return await self._run(q)
