"""The console's reads (:mod:`shadow.ui`) and ``GET /v1/dead-letters``: how a task type's
evidence grew, which fields its disagreements are about, its latest disagreements, the
audit log newest first, and the dead letters, page by page.

Every read is over the **blind** comparisons of one agent version (the evidence, as the
``agreement`` view counts it: verdicts agree, disagree and agent_error), so the console's
chart ends at the figures ``GET /v1/agreement`` shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shadow.audit_chain import ChainEntry
from shadow.fastjson import loads
from shadow.store.audit import audit_page
from shadow.store.base import StoreBase

__all__ = ["MAX_SERIES_POINTS", "ConsolePart", "Disagreement", "FieldMisses", "SeriesPoint"]

MAX_SERIES_POINTS = 60  # points of the agreement-over-time chart, at most

_EVIDENCE = (
    "task_type = ? AND agent_version = ? AND handled_by = 'blind' "
    "AND verdict IN ('agree', 'disagree', 'agent_error')"
)


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """The evidence after its ``n``-th blind comparison (``agree`` of them agreed), made
    at ``at``."""

    n: int
    agree: int
    at: datetime


@dataclass(frozen=True, slots=True)
class FieldMisses:
    """A compared field and how many blind comparisons it did not match in (``critical``:
    of those, the ones where the field is critical)."""

    path: str
    misses: int
    critical: int


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One blind comparison that did not agree: the case, when, and the fields that did
    not match (path and reason)."""

    event_id: str
    at: datetime
    verdict: str
    critical: bool
    fields: tuple[tuple[str, str], ...]


class ConsolePart(StoreBase):
    async def agreement_series(
        self, task_type: str, agent_version: str, *, points: int = MAX_SERIES_POINTS
    ) -> list[SeriesPoint]:
        """The cumulative blind evidence of ``agent_version`` for ``task_type`` at up to
        ``points`` evenly spaced comparisons, in the order they were made; the last point
        is always the whole evidence."""

        def q() -> list[SeriesPoint]:
            con = self.con
            row = con.execute(
                f"SELECT count(*) FROM comparisons WHERE {_EVIDENCE}", [task_type, agent_version]
            ).fetchone()
            total = int(row[0]) if row else 0
            if total == 0:
                return []
            step = max(1, math.ceil(total / max(points, 1)))
            rows = con.execute(
                "SELECT n, agree, compared_at FROM (SELECT row_number() OVER w AS n, "
                "sum(CASE WHEN verdict = 'agree' THEN 1 ELSE 0 END) OVER w AS agree, "
                f"compared_at FROM comparisons WHERE {_EVIDENCE} "
                "WINDOW w AS (ORDER BY compared_at, event_id ROWS UNBOUNDED PRECEDING)) "
                "WHERE n % ? = 0 OR n = ? ORDER BY n",
                [task_type, agent_version, step, total],
            ).fetchall()
            return [SeriesPoint(int(n), int(a), at) for n, a, at in rows]

        return await self._run(q)

    async def disagreeing_fields(
        self, task_type: str, agent_version: str, *, limit: int = 10
    ) -> list[FieldMisses]:
        """The fields that most often did not match in ``agent_version``'s blind
        comparisons for ``task_type``, most misses first."""

        def q() -> list[FieldMisses]:
            rows = self.con.execute(
                "SELECT f->>'path' AS path, count(*) AS misses, "
                "count(*) FILTER (WHERE coalesce((f->>'critical')::BOOLEAN, false)) "
                f"FROM (SELECT unnest(fields::JSON[]) AS f FROM comparisons WHERE {_EVIDENCE}) "
                "WHERE NOT coalesce((f->>'matched')::BOOLEAN, true) "
                "GROUP BY path ORDER BY misses DESC, path LIMIT ?",
                [task_type, agent_version, limit],
            ).fetchall()
            return [FieldMisses(str(p), int(m), int(c)) for p, m, c in rows]

        return await self._run(q)

    async def recent_disagreements(
        self, task_type: str, agent_version: str, *, limit: int = 20
    ) -> list[Disagreement]:
        """``agent_version``'s latest blind comparisons for ``task_type`` that did not
        agree (disagree, agent_error), newest first."""

        def q() -> list[Disagreement]:
            rows = self.con.execute(
                "SELECT event_id, compared_at, verdict, critical, fields FROM comparisons "
                f"WHERE {_EVIDENCE} AND verdict <> 'agree' "
                "ORDER BY compared_at DESC, event_id DESC LIMIT ?",
                [task_type, agent_version, limit],
            ).fetchall()
            out = []
            for event_id, at, verdict, critical, fields in rows:
                parsed = loads(fields) if fields else []
                missed = tuple(
                    (str(f.get("path", "")), str(f.get("reason", "")))
                    for f in parsed
                    if isinstance(f, dict) and not f.get("matched", True)
                )
                out.append(Disagreement(str(event_id), at, str(verdict), bool(critical), missed))
            return out

        return await self._run(q)

    async def audit_newest(
        self, *, before: int | None = None, limit: int = 100
    ) -> list[ChainEntry]:
        """The audit log newest first, as stored (with its hashes): the entries with ids
        below ``before`` (all when ``None``), at most ``limit``."""

        def q() -> list[ChainEntry]:
            row = self.con.execute(
                "SELECT min(id), count(*) FROM (SELECT id FROM audit_log WHERE id < ? "
                "ORDER BY id DESC LIMIT ?)",
                [before if before is not None else 2**63 - 1, limit],
            ).fetchone()
            if row is None or not row[1]:
                return []
            return audit_page(self.con, after=int(row[0]) - 1, limit=int(row[1]))[::-1]

        return await self._run(q)

    async def dead_letter_page(
        self, *, before: int | None = None, limit: int = 100
    ) -> tuple[list[dict[str, Any]], int]:
        """Dead letters newest first: those with ids below ``before`` (all when ``None``),
        at most ``limit``, as ``{"id", "recorded_at" (ISO 8601), "source", "kind",
        "reason", "event_id", "location", "raw"}``; and how many the store holds."""

        def q() -> tuple[list[dict[str, Any]], int]:
            con = self.con
            row = con.execute("SELECT count(*) FROM dead_letters").fetchone()
            total = int(row[0]) if row else 0
            cur = con.execute(
                "SELECT id, recorded_at, source, kind, reason, event_id, location, raw "
                "FROM dead_letters WHERE id < ? ORDER BY id DESC LIMIT ?",
                [before if before is not None else 2**63 - 1, limit],
            )
            names = [d[0] for d in cur.description or ()]
            letters = []
            for values in cur.fetchall():
                letter = dict(zip(names, values, strict=True))
                letter["id"] = int(letter["id"])
                letter["recorded_at"] = letter["recorded_at"].isoformat()
                letters.append(letter)
            return letters, total

        return await self._run(q)
