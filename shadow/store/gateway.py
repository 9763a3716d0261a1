"""The tool gateway's tables (schema v9): one row per tool call, and the writes held for a
human's approval.

Approvals are the part that must survive a ``kill -9``: a held write is a row before the
agent hears that it is held, and forwarding one is *at most once* by construction. Claiming
an approval (:meth:`GatewayPart.claim_approval`) moves it from ``pending`` to ``forwarding``
in one committed statement that only succeeds from ``pending``; only the caller whose claim
succeeded calls the upstream, then records ``forwarded`` or ``failed``. A row still in
``forwarding`` when the store opens again belongs to a process that died mid-call: it is
``failed`` (:meth:`GatewayPart.fail_interrupted`), never sent again, since nobody can know
whether the upstream acted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shadow.model import AuditEntry
from shadow.store.base import StoreBase
from shadow.store.records import DeadLetter

__all__ = ["APPROVAL_STATES", "ApprovalRow", "GatewayPart", "ToolCallRow"]

APPROVAL_STATES = ("pending", "forwarding", "forwarded", "failed", "rejected", "expired", "refused")


@dataclass(frozen=True, slots=True)
class ToolCallRow:
    """One tool call through the gateway (table ``tool_calls``)."""

    at: datetime
    task_type: str
    event_id: str
    shadow: bool
    level: str
    tool: str
    upstream: str | None
    tool_class: str | None
    outcome: str
    latency_ms: float
    error: str | None
    args: Any
    approval_id: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """One write held for a human (table ``tool_approvals``)."""

    id: str
    created_at: datetime
    expires_at: datetime
    task_type: str
    event_id: str
    level: str
    tool: str
    upstream: str
    upstream_tool: str
    args: Any
    status: str = "pending"
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    result: Any = None
    error: str | None = None
    # sha256 of the tool and its canonical arguments as the agent sent them (before
    # redaction): what an approver approves, and what an identical retry is matched on.
    digest: str | None = None
    repeat_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "task_type": self.task_type,
            "event_id": self.event_id,
            "level": self.level,
            "tool": self.tool,
            "upstream": self.upstream,
            "args": self.args,
            "args_digest": self.digest,
            "repeat": self.repeat_key,
            "status": self.status,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "reason": self.reason,
            "result": self.result,
            "error": self.error,
        }


_APPROVAL_COLUMNS = (
    "id, created_at, expires_at, task_type, event_id, level, tool, upstream, upstream_tool, "
    "args, status, decided_by, decided_at, reason, result, error, digest, repeat_key"
)


def _approval(row: Sequence[Any]) -> ApprovalRow:
    return ApprovalRow(
        id=row[0],
        created_at=row[1],
        expires_at=row[2],
        task_type=row[3],
        event_id=row[4],
        level=row[5],
        tool=row[6],
        upstream=row[7],
        upstream_tool=row[8],
        args=json.loads(row[9]),
        status=row[10],
        decided_by=row[11],
        decided_at=row[12],
        reason=row[13],
        result=json.loads(row[14]) if row[14] is not None else None,
        error=row[15],
        digest=row[16],
        repeat_key=row[17],
    )


def _call_raw(row: ToolCallRow) -> str:
    """A call row as its dead letter keeps it (ASCII JSON: storable whatever it holds)."""
    fields = {
        "at": row.at.isoformat(),
        "task_type": row.task_type,
        "event_id": row.event_id,
        "shadow": row.shadow,
        "level": row.level,
        "tool": row.tool,
        "upstream": row.upstream,
        "class": row.tool_class,
        "outcome": row.outcome,
        "error": row.error,
        "args": row.args,
        "approval_id": row.approval_id,
    }
    try:
        return json.dumps(fields)
    except (TypeError, ValueError, RecursionError):
        return repr(fields)


class GatewayPart(StoreBase):
    async def put_tool_calls(self, rows: Sequence[ToolCallRow]) -> None:
        """Append call rows in one transaction and one statement (column arrays unnested:
        a parameterised ``executemany`` costs a statement per row). A row the store cannot
        hold (a lone surrogate in a tool name or argument) is dead-lettered (source
        ``gateway``, kind ``tool_call``) and the others are stored
        (:meth:`~shadow.store.base.StoreBase._write_batch`)."""
        if not rows:
            return

        def write(chunk: list[ToolCallRow]) -> list[None]:
            self._put_tool_calls(chunk)
            return []

        def letter(row: ToolCallRow, why: str) -> DeadLetter:
            return DeadLetter("gateway", "tool_call", why, _call_raw(row), row.event_id)

        await self._run(self._write_batch, "tool_calls", list(rows), write, letter, now=rows[-1].at)

    def _put_tool_calls(self, rows: list[ToolCallRow]) -> None:
        cols = (
            [r.at for r in rows],
            [r.task_type for r in rows],
            [r.event_id for r in rows],
            [r.shadow for r in rows],
            [r.level for r in rows],
            [r.tool for r in rows],
            [r.upstream for r in rows],
            [r.tool_class for r in rows],
            [r.outcome for r in rows],
            [r.latency_ms for r in rows],
            [r.error for r in rows],
            [json.dumps(r.args) for r in rows],
            [r.approval_id for r in rows],
        )
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO tool_calls (called_at, task_type, event_id, shadow, level, tool, "
                "upstream, class, outcome, latency_ms, error, args, approval_id) "
                "SELECT unnest(?::TIMESTAMPTZ[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::BOOLEAN[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::DOUBLE[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[])::JSON, "
                "unnest(?::VARCHAR[])",
                list(cols),
            )

    async def tool_calls(
        self, *, event_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Call rows in call order (oldest first), optionally of one case."""

        def q() -> list[dict[str, Any]]:
            sql = (
                "SELECT id, called_at, task_type, event_id, shadow, level, tool, upstream, class, "
                "outcome, latency_ms, error, args, approval_id FROM tool_calls "
            )
            params: list[Any] = []
            if event_id is not None:
                sql += "WHERE event_id = ? "
                params.append(event_id)
            sql += "ORDER BY id LIMIT ?"
            params.append(limit)
            cur = self.con.execute(sql, params)
            names = [d[0] for d in cur.description]
            out = []
            for row in cur.fetchall():
                item = dict(zip(names, row, strict=True))
                item["args"] = json.loads(item["args"])
                out.append(item)
            return out

        return await self._run(q)

    async def tool_summary(self) -> dict[str, dict[str, int]]:
        """Per task type: the calls recorded, counted by ``"<class>/<outcome>"``
        (``"read/forwarded"``, ``"write/captured"``, ...; ``"-/refused"`` for a refusal
        before any class), and ``"compared"``: the comparisons whose decision's actions are
        the writes its agent's tool calls captured."""

        def q() -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            calls = self.con.execute(
                "SELECT task_type, coalesce(class, '-'), outcome, count(*) FROM tool_calls "
                "GROUP BY ALL ORDER BY ALL"
            ).fetchall()
            for task_type, cls, outcome, n in calls:
                out.setdefault(task_type, {})[f"{cls}/{outcome}"] = int(n)
            compared = self.con.execute(
                "SELECT c.task_type, count(*) FROM comparisons c JOIN decisions d "
                "USING (event_id, agent_version) "
                "WHERE coalesce(json_extract(d.body, '$.tool_calls')::BOOLEAN, false) "
                "GROUP BY ALL ORDER BY ALL"
            ).fetchall()
            for task_type, n in compared:
                out.setdefault(task_type, {})["compared"] = int(n)
            return out

        return await self._run(q)

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append audit entries that record no level change of their own (the gateway's calls
        refused off the allowlist, first approvals, segments routed to humans), chained."""
        if not entries:
            return

        def q() -> None:
            with self._tx() as tx:
                self._insert_audit(tx, list(entries))

        await self._run(q)

    async def put_approval(self, row: ApprovalRow) -> None:
        """Store a held write (durable before the agent hears it is held)."""

        def q() -> None:
            with self._tx() as tx:
                tx.execute(
                    f"INSERT INTO tool_approvals ({_APPROVAL_COLUMNS}) VALUES (?, ?::TIMESTAMPTZ, "
                    "?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?::JSON, ?, NULL, NULL, NULL, NULL, NULL, "
                    "?, ?)",
                    [
                        row.id,
                        row.created_at,
                        row.expires_at,
                        row.task_type,
                        row.event_id,
                        row.level,
                        row.tool,
                        row.upstream,
                        row.upstream_tool,
                        json.dumps(row.args),
                        row.status,
                        row.digest,
                        row.repeat_key,
                    ],
                )

        await self._run(q)

    async def approvals(self, *, status: str | None = None, limit: int = 500) -> list[ApprovalRow]:
        """Approvals, oldest first (``status`` filters)."""

        def q() -> list[ApprovalRow]:
            sql = f"SELECT {_APPROVAL_COLUMNS} FROM tool_approvals "
            params: list[Any] = []
            if status is not None:
                sql += "WHERE status = ? "
                params.append(status)
            sql += "ORDER BY created_at, id LIMIT ?"
            params.append(limit)
            return [_approval(r) for r in self.con.execute(sql, params).fetchall()]

        return await self._run(q)

    async def approval(self, approval_id: str) -> ApprovalRow | None:
        def q() -> ApprovalRow | None:
            row = self.con.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM tool_approvals WHERE id = ?", [approval_id]
            ).fetchone()
            return _approval(row) if row else None

        return await self._run(q)

    async def decide_approval(
        self,
        approval_id: str,
        status: str,
        *,
        actor: str,
        reason: str,
        now: datetime,
        audit: AuditEntry | None = None,
    ) -> ApprovalRow | None:
        """Move a *pending* approval to ``status`` (``forwarding`` to claim it for
        forwarding, or ``rejected``, ``expired``, ``refused``), audited in the same
        transaction. ``None`` when it is not pending (someone else decided first)."""
        if status not in APPROVAL_STATES or status == "pending":
            raise ValueError(f"not a decision: {status!r}")

        def q() -> ApprovalRow | None:
            with self._tx() as tx:
                row = tx.execute(
                    "UPDATE tool_approvals SET status = ?, decided_by = ?, decided_at = "
                    "?::TIMESTAMPTZ, reason = ? WHERE id = ? AND status = 'pending' "
                    f"RETURNING {_APPROVAL_COLUMNS}",
                    [status, actor, now, reason, approval_id],
                ).fetchone()
                if row is None:
                    return None
                if audit is not None:
                    self._insert_audit(tx, [audit])
                return _approval(row)

        return await self._run(q)

    async def finish_approval(
        self, approval_id: str, *, status: str, result: Any = None, error: str | None = None
    ) -> None:
        """Record what forwarding a claimed approval did (``forwarded`` or ``failed``), or
        ``refused`` when the last check before sending refused it (nothing was sent)."""
        if status not in ("forwarded", "failed", "refused"):
            raise ValueError(f"not a forwarding result: {status!r}")

        def q() -> None:
            with self._tx() as tx:
                tx.execute(
                    "UPDATE tool_approvals SET status = ?, result = ?::JSON, error = ? "
                    "WHERE id = ? AND status = 'forwarding'",
                    [status, None if result is None else json.dumps(result), error, approval_id],
                )

        await self._run(q)

    async def fail_interrupted(self) -> list[str]:
        """Approvals a previous process claimed but never finished: ``failed``, with why."""

        def q() -> list[str]:
            with self._tx() as tx:
                rows = tx.execute(
                    "UPDATE tool_approvals SET status = 'failed', error = 'the sidecar stopped "
                    "while forwarding this call; whether the upstream acted is unknown, so it "
                    "is not sent again' WHERE status = 'forwarding' RETURNING id"
                ).fetchall()
                return [str(r[0]) for r in rows]

        return await self._run(q)
