"""One case, whole: every row the store keeps about one event id, read at once
(``GET /v1/cases/{event_id}``, :mod:`shadow.cases_api`).

A case is the event, each agent version's decision (with its latency and cost), the outcome
revisions, the comparisons with their per-field results, the sidecar's routing record
(``handling``), the tool calls the gateway recorded and the reviewers' adjudications.
:meth:`CasePart.case` reads them in one call on the store's thread: no write can run
between its queries (every DuckDB call runs on that one thread), so the parts agree with
each other.

**Redaction.** The event's payload is read as stored, and it is stored already redacted:
:meth:`shadow.intake.Intake.submit_events` replaces each payload with
``TaskPolicy.redact_payload(payload)`` before :meth:`~shadow.store.ingest.IngestPart.put_events`
sees it, so the policy's ``redact`` paths never reach the ``events`` table (and every dead
letter is redacted, :meth:`~shadow.intake.Intake.redact_letter`). Tool call arguments are
stored without the ``tools.redact`` paths too (:mod:`shadow.gateway.core`). The agent's own
answer is stored as it answered (its ``declared_actions`` are not redacted), so the route
applies the policy in force again before answering (:func:`shadow.cases_api.redacted`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shadow.fastjson import loads
from shadow.store.base import StoreBase
from shadow.store.review import ADJUDICATION_COLUMNS, adjudication_row

__all__ = ["MAX_CASE_TOOL_CALLS", "CasePart", "CaseView"]

MAX_CASE_TOOL_CALLS = 1000  # the first calls of a case shown; ``tool_calls_total`` counts all

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class CaseView:
    """Everything the store keeps about one event id, as JSON-ready parts (see the module
    docstring). ``event`` and ``handling`` are ``None`` when not stored; the tuples are in
    arrival order (decisions by when they were stored, outcomes by revision, tool calls by
    call order, comparisons by when they were made)."""

    event_id: str
    task_type: str | None
    event: JSON | None
    decisions: tuple[JSON, ...]
    outcomes: tuple[JSON, ...]
    comparisons: tuple[JSON, ...]
    handling: JSON | None
    tool_calls: tuple[JSON, ...]
    tool_calls_total: int
    adjudications: tuple[JSON, ...] = ()  # reviewers' verdicts, oldest first

    def to_json(self) -> JSON:
        """The answer of ``GET /v1/cases/{event_id}`` (docs/api.md); the route hides the
        ``adjudications`` from a reviewer who has not judged the case yet."""
        return {
            "event_id": self.event_id,
            "task_type": self.task_type,
            "event": None if self.event is None else dict(self.event),
            "decisions": [dict(d) for d in self.decisions],
            "outcomes": [dict(o) for o in self.outcomes],
            "comparisons": [dict(c) for c in self.comparisons],
            "handling": None if self.handling is None else dict(self.handling),
            "tool_calls": [dict(t) for t in self.tool_calls],
            "tool_calls_total": self.tool_calls_total,
            "adjudications": [dict(a) for a in self.adjudications],
        }


def _at(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class CasePart(StoreBase):
    async def case(self, event_id: str) -> CaseView | None:
        """Every row kept about ``event_id`` (one call on the store's thread), or ``None``
        when the store holds nothing about it: no event, outcome, decision, comparison,
        routing record or tool call. A case may lack its event (an outcome waiting for it,
        a route asked before it arrived, or a case retention purged, whose comparisons are
        kept as evidence)."""
        return await self._run(self._case, event_id)

    def _case(self, event_id: str) -> CaseView | None:
        con = self.con
        row = con.execute(
            "SELECT task_type, payload, occurred_at, segment, source, received_at, "
            "needs_agent, expired FROM events WHERE event_id = ?",
            [event_id],
        ).fetchone()
        event: JSON | None = None
        if row is not None:
            event = {
                "event_id": event_id,
                "task_type": row[0],
                "payload": loads(row[1]),
                "occurred_at": row[2],
                "segment": row[3],
                "source": row[4],
                "received_at": _at(row[5]),
                "awaiting_agent": bool(row[6]),
                "expired": bool(row[7]),
            }
        outcome_rows = con.execute(
            "SELECT revision, is_current, decision, actions, decided_by, decided_at, "
            "handled_by, content_hash, source, received_at, expired FROM outcomes "
            "WHERE event_id = ? ORDER BY revision",
            [event_id],
        ).fetchall()
        outcomes = tuple(
            {
                "revision": int(rev),
                "current": bool(current),
                "decision": loads(decision),
                "actions": loads(actions),
                "decided_by": by,
                "decided_at": at,
                "handled_by": handled,
                "source": source,
                "received_at": _at(received),
                "expired": bool(expired),
            }
            for rev, current, decision, actions, by, at, handled, _, source, received, expired in (
                outcome_rows
            )
        )
        decisions = tuple(
            _decision(loads(body), task_type, latency, tokens_in, tokens_out, cost, received)
            for task_type, body, latency, tokens_in, tokens_out, cost, received in con.execute(
                "SELECT task_type, body, latency_ms, input_tokens, output_tokens, cost_usd, "
                "received_at FROM decisions WHERE event_id = ? ORDER BY seq",
                [event_id],
            ).fetchall()
        )
        comparisons = tuple(
            {
                "agent_version": version,
                "task_type": task_type,
                "verdict": verdict,
                "critical": bool(critical),
                "handled_by": handled,
                "outcome_revision": _revision_of(digest, outcome_rows),
                "compared_at": _at(compared),
                "fields": loads(fields),
                "trace_id": trace,
            }
            for version, task_type, verdict, critical, handled, digest, compared, fields, trace in (
                con.execute(
                    "SELECT agent_version, task_type, verdict, critical, handled_by, "
                    "outcome_hash, compared_at, fields, trace_id FROM comparisons "
                    "WHERE event_id = ? "
                    "ORDER BY compared_at, agent_version",
                    [event_id],
                ).fetchall()
            )
        )
        found = con.execute(
            "SELECT task_type, handled_by, level, routed_at FROM handling WHERE event_id = ?",
            [event_id],
        ).fetchone()
        handling: JSON | None = None
        if found is not None:
            handling = {
                "task_type": found[0],
                "handled_by": found[1],
                "level": found[2],
                "routed_at": _at(found[3]),
            }
        cur = con.execute(
            "SELECT id, called_at, task_type, shadow, level, tool, upstream, class, outcome, "
            "latency_ms, error, args, approval_id, count(*) OVER () AS total FROM tool_calls "
            "WHERE event_id = ? ORDER BY id LIMIT ?",
            [event_id, MAX_CASE_TOOL_CALLS],
        )
        names = [d[0] for d in cur.description]
        calls: list[JSON] = []
        total = 0
        for call in cur.fetchall():
            item = dict(zip(names, call, strict=True))
            total = int(item.pop("total"))
            item["called_at"] = _at(item["called_at"])
            item["args"] = loads(item["args"])
            calls.append(item)
        judged = tuple(
            row.to_json()
            for row in (
                adjudication_row(r)
                for r in con.execute(
                    f"SELECT {ADJUDICATION_COLUMNS} FROM adjudications WHERE event_id = ? "
                    "ORDER BY id",
                    [event_id],
                ).fetchall()
            )
        )
        if (
            event is None
            and not outcomes
            and not decisions
            and not comparisons
            and handling is None
            and not calls
        ):
            return None
        named = [event, *decisions, *comparisons, handling, *calls]  # outcomes name none
        return CaseView(
            event_id=event_id,
            task_type=next((p["task_type"] for p in named if p is not None), None),
            event=event,
            decisions=decisions,
            outcomes=outcomes,
            comparisons=comparisons,
            handling=handling,
            tool_calls=tuple(calls),
            tool_calls_total=total,
            adjudications=judged,
        )


def _decision(
    body: JSON,
    task_type: str,
    latency_ms: float | None,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float,
    received_at: datetime,
) -> JSON:
    """One stored agent decision (its body is :meth:`shadow.model.ShadowDecision.to_json`)."""
    return {
        "agent_version": body["agent_version"],
        "task_type": task_type,
        "decision": body.get("decision"),
        "actions": body.get("actions") or [],
        "declared_actions": body.get("declared_actions"),
        "actions_captured": bool(body.get("tool_calls", False)),
        "confidence": body.get("confidence"),
        "error": body.get("error"),
        "latency_ms": latency_ms,
        "usage": {
            "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens),
            "cost_usd": float(cost_usd),
        },
        "received_at": _at(received_at),
    }


def _revision_of(digest: str | None, outcomes: Sequence[tuple[Any, ...]]) -> int | None:
    """The outcome revision a comparison was made against (by its content hash): the
    current one when it matches, else the latest that does; ``None`` for an expired join."""
    if digest is None:
        return None
    matching = [(bool(row[1]), int(row[0])) for row in outcomes if row[7] == digest]
    return max(matching)[1] if matching else None
