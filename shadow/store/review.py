"""The review queue's rows (schema v12): claims and adjudications (:mod:`shadow.review`).

Every method runs in one call on the store's thread, so a claim is drawn and recorded with
no other write in between: two reviewers asking at once never get the same case beyond
``reviews_per_case``, and an answer is checked against its claim in the transaction that
stores it.

**Which cases are drawn.** A case is eligible for a reviewer when its comparison of the
task type's current agent version is blind evidence (``handled_by = 'blind'``) with verdict
``agree`` or ``disagree`` (an ``agent_error`` has nothing to judge), its event and current
outcome are stored, the reviewer has not adjudicated it, and its blind adjudications plus
the other reviewers' unexpired open claims are fewer than ``reviews_per_case``. The draw is
uniform within the stratum (``pick`` in [0, 1), from the caller's random source, indexes
the eligible rows in event id order).

**Which adjudications are evidence** (:func:`review_counts`): blind ones whose
comparison is still the same (same outcome revision, same verdict, still blind). Per case
the majority of its reviews decides; a tie is not acceptable (conservative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from typing import Any

import duckdb

from shadow.fastjson import loads
from shadow.model import AuditEntry
from shadow.store.base import StoreBase

__all__ = [
    "ADJUDICATION_COLUMNS",
    "AdjudicationRow",
    "ClaimRow",
    "Counts",
    "Drawn",
    "ReviewConflict",
    "ReviewPart",
    "ReviewRefused",
    "adjudication_row",
    "review_counts",
]

JSON = dict[str, Any]

ADJUDICATION_COLUMNS = (
    "id, recorded_at, task_type, event_id, agent_version, outcome_hash, reviewer, verdict, "
    "reason, note, blind, stratum, acceptable, claim"
)
_CLAIM_COLUMNS = (
    "claim, task_type, event_id, agent_version, outcome_hash, stratum, reviewer, a_is, "
    "claimed_at, expires_at, answered_at"
)
ADJUDICATION_ACTION = "adjudication"  # the audit log's action for a reviewer's verdict


class ReviewRefused(Exception):
    """A claim that cannot be answered: ``status`` is the HTTP status that says why (404
    unknown or another reviewer's, 410 expired)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReviewConflict(Exception):
    """The reviewer already gave another verdict on this case (409)."""


@dataclass(frozen=True, slots=True)
class AdjudicationRow:
    id: int
    recorded_at: datetime
    task_type: str
    event_id: str
    agent_version: str
    outcome_hash: str | None
    reviewer: str
    verdict: str
    reason: str
    note: str
    blind: bool
    stratum: str | None
    acceptable: bool
    claim: str | None

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "task_type": self.task_type,
            "agent_version": self.agent_version,
            "reviewer": self.reviewer,
            "verdict": self.verdict,
            "reason": self.reason,
            "note": self.note,
            "blind": self.blind,
            "stratum": self.stratum,
            "acceptable": self.acceptable,
            "at": self.recorded_at.isoformat(),
        }

    def same_answer(self, verdict: str, reason: str, note: str) -> bool:
        return (self.verdict, self.reason, self.note) == (verdict, reason, note)


@dataclass(frozen=True, slots=True)
class ClaimRow:
    claim: str
    task_type: str
    event_id: str
    agent_version: str
    outcome_hash: str | None
    stratum: str
    reviewer: str
    a_is: str  # agent | human: the decision shown as A
    claimed_at: datetime
    expires_at: datetime
    answered_at: datetime | None


@dataclass(frozen=True, slots=True)
class Drawn:
    """A claim with what the reviewer is shown: the event (redacted as stored) and the two
    decisions (``agent`` and ``human``: ``{"decision", "actions"}``), and how many cases
    are left for this reviewer after it."""

    claim: ClaimRow
    event: JSON
    agent: JSON
    human: JSON
    remaining: int


def adjudication_row(row: Sequence[Any]) -> AdjudicationRow:
    return AdjudicationRow(
        int(row[0]),
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        bool(row[10]),
        row[11],
        bool(row[12]),
        row[13],
    )


def _claim(row: Sequence[Any]) -> ClaimRow:
    return ClaimRow(*row)


# The eligible cases of one stratum for one reviewer (parameters: task type, version,
# stratum, reviewer, now, reviewer, reviews_per_case).
_ELIGIBLE = """
    SELECT c.event_id, c.outcome_hash FROM comparisons c
    JOIN events e ON e.event_id = c.event_id
    WHERE c.task_type = ? AND c.agent_version = ? AND c.verdict = ? AND c.handled_by = 'blind'
      AND EXISTS (SELECT 1 FROM outcomes o WHERE o.event_id = c.event_id AND o.is_current)
      AND NOT EXISTS (SELECT 1 FROM adjudications a WHERE a.event_id = c.event_id
                      AND a.agent_version = c.agent_version AND a.reviewer = ?)
      AND (SELECT count(*) FROM adjudications a WHERE a.event_id = c.event_id
           AND a.agent_version = c.agent_version AND a.blind)
        + (SELECT count(*) FROM review_claims r WHERE r.event_id = c.event_id
           AND r.agent_version = c.agent_version AND r.answered_at IS NULL
           AND r.expires_at > ? AND r.reviewer <> ?) < ?
"""


Counts = tuple[int, int, int, int, int, int]


def review_counts(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], Counts]:
    """Per ``(task_type, agent_version)``: ``(reviewed_agree, acceptable_agree,
    reviewed_disagree, acceptable_disagree, cases with two or more blind reviews, of those
    the cases whose reviewers all gave the same verdict)``, over the blind adjudications
    that are evidence (module docstring). Runs on the store's thread (the caller's query)."""
    rows = con.execute(
        "WITH per_case AS (SELECT a.task_type, a.agent_version, a.event_id, "
        "c.verdict AS stratum, count(*) AS reviews, "
        "count(*) FILTER (WHERE a.acceptable) AS ok, "
        "count(DISTINCT a.verdict) AS verdicts "
        "FROM adjudications a JOIN comparisons c ON c.event_id = a.event_id "
        "AND c.agent_version = a.agent_version AND c.verdict = a.stratum "
        "AND c.outcome_hash IS NOT DISTINCT FROM a.outcome_hash "
        "AND c.handled_by = 'blind' WHERE a.blind "
        "GROUP BY a.task_type, a.agent_version, a.event_id, c.verdict) "
        "SELECT task_type, agent_version, "
        "count(*) FILTER (WHERE stratum = 'agree'), "
        "count(*) FILTER (WHERE stratum = 'agree' AND ok * 2 > reviews), "
        "count(*) FILTER (WHERE stratum = 'disagree'), "
        "count(*) FILTER (WHERE stratum = 'disagree' AND ok * 2 > reviews), "
        "count(*) FILTER (WHERE reviews >= 2), "
        "count(*) FILTER (WHERE reviews >= 2 AND verdicts = 1) "
        "FROM per_case GROUP BY task_type, agent_version"
    ).fetchall()
    out: dict[tuple[str, str], Counts] = {}
    for r in rows:
        a, b, c, d, e, f = (int(x) for x in r[2:])
        out[(r[0], r[1])] = (a, b, c, d, e, f)
    return out


class ReviewPart(StoreBase):
    # -- the queue --------------------------------------------------------------------------

    async def draw_claim(
        self,
        *,
        task_type: str,
        agent_version: str,
        reviewer: str,
        strata: Sequence[str],
        pick: float,
        per_case: int,
        claim_id: str,
        a_is: str,
        now: datetime,
        expires_at: datetime,
    ) -> Drawn | None:
        """The reviewer's unexpired open claim for ``task_type`` if there is one (a repeated
        ask answers the same case), else a new claim on a case drawn uniformly from the
        first of ``strata`` with an eligible case (module docstring); ``None`` when none
        has one."""
        return await self._run(
            self._draw,
            task_type,
            agent_version,
            reviewer,
            tuple(strata),
            pick,
            per_case,
            claim_id,
            a_is,
            now,
            expires_at,
        )

    def _eligible(
        self,
        con: duckdb.DuckDBPyConnection,
        task_type: str,
        version: str,
        stratum: str,
        reviewer: str,
        now: datetime,
        per_case: int,
        *,
        count: bool = False,
        offset: int = 0,
    ) -> Any:
        sql = _ELIGIBLE
        params = [task_type, version, stratum, reviewer, now, reviewer, per_case]
        if count:
            return con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]  # type: ignore[index]
        return con.execute(
            f"{sql} ORDER BY c.event_id LIMIT 1 OFFSET ?", [*params, offset]
        ).fetchone()

    def _remaining(
        self,
        con: duckdb.DuckDBPyConnection,
        task_type: str,
        version: str,
        reviewer: str,
        now: datetime,
        per_case: int,
    ) -> int:
        """How many cases of both strata are still eligible for ``reviewer``."""
        return sum(
            int(self._eligible(con, task_type, version, s, reviewer, now, per_case, count=True))
            for s in ("agree", "disagree")
        )

    def _draw(
        self,
        task_type: str,
        version: str,
        reviewer: str,
        strata: tuple[str, ...],
        pick: float,
        per_case: int,
        claim_id: str,
        a_is: str,
        now: datetime,
        expires_at: datetime,
    ) -> Drawn | None:
        with self._tx() as tx:
            held = tx.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM review_claims WHERE reviewer = ? AND task_type = ? "
                "AND answered_at IS NULL AND expires_at > ? ORDER BY claimed_at DESC LIMIT 1",
                [reviewer, task_type, now],
            ).fetchone()
            if held is not None:
                claim = _claim(held)
            else:
                chosen: tuple[str, str | None, str] | None = None
                for stratum in strata:
                    total = int(
                        self._eligible(
                            tx, task_type, version, stratum, reviewer, now, per_case, count=True
                        )
                    )
                    if total == 0:
                        continue
                    offset = min(int(pick * total), total - 1)
                    row = self._eligible(
                        tx, task_type, version, stratum, reviewer, now, per_case, offset=offset
                    )
                    if row is not None:
                        chosen = (row[0], row[1], stratum)
                        break
                if chosen is None:
                    return None
                event_id, digest, stratum = chosen
                claim = ClaimRow(
                    claim_id,
                    task_type,
                    event_id,
                    version,
                    digest,
                    stratum,
                    reviewer,
                    a_is,
                    now,
                    expires_at,
                    None,
                )
                tx.execute(
                    f"INSERT INTO review_claims ({_CLAIM_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ)",
                    list(astuple(claim)),
                )
            shown = self._shown(tx, claim)
            remaining = self._remaining(tx, task_type, version, reviewer, now, per_case)
        event, agent, human = shown
        return Drawn(claim, event, agent, human, remaining)

    @staticmethod
    def _shown(con: duckdb.DuckDBPyConnection, claim: ClaimRow) -> tuple[JSON, JSON, JSON]:
        ev = con.execute(
            "SELECT task_type, payload, occurred_at, segment FROM events WHERE event_id = ?",
            [claim.event_id],
        ).fetchone()
        event: JSON = {"task_type": claim.task_type, "payload": {}, "occurred_at": None}
        if ev is not None:
            event = {
                "task_type": ev[0],
                "payload": loads(ev[1]),
                "occurred_at": ev[2],
                "segment": ev[3],
            }
        body = con.execute(
            "SELECT body FROM decisions WHERE event_id = ? AND agent_version = ?",
            [claim.event_id, claim.agent_version],
        ).fetchone()
        decided = loads(body[0]) if body is not None else {}
        agent = {"decision": decided.get("decision"), "actions": decided.get("actions") or []}
        out = con.execute(
            "SELECT decision, actions FROM outcomes WHERE event_id = ? AND is_current",
            [claim.event_id],
        ).fetchone()
        human: JSON = {"decision": None, "actions": []}
        if out is not None:
            human = {"decision": loads(out[0]), "actions": loads(out[1]) or []}
        return event, agent, human

    async def claim_row(self, claim: str) -> ClaimRow | None:
        def q() -> ClaimRow | None:
            row = self.con.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM review_claims WHERE claim = ?", [claim]
            ).fetchone()
            return None if row is None else _claim(row)

        return await self._run(q)

    async def answer_claim(
        self,
        claim: str,
        *,
        reviewer: str,
        verdict: str,
        reason: str,
        note: str,
        acceptable: bool,
        now: datetime,
    ) -> tuple[AdjudicationRow, bool]:
        """Store the verdict on ``claim`` (already mapped to agent/human terms) with its
        audit entry, in one transaction; ``(row, created)``. The same answer again returns
        the stored row (``created`` false). Raises :class:`ReviewRefused` (404: unknown or
        another reviewer's claim; 410: expired unanswered) or :class:`ReviewConflict`."""
        return await self._run(
            self._answer, claim, reviewer, verdict, reason, note, acceptable, now
        )

    def _answer(
        self,
        claim_id: str,
        reviewer: str,
        verdict: str,
        reason: str,
        note: str,
        acceptable: bool,
        now: datetime,
    ) -> tuple[AdjudicationRow, bool]:
        with self._tx() as tx:
            row = tx.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM review_claims WHERE claim = ?", [claim_id]
            ).fetchone()
            if row is None or row[6] != reviewer:
                raise ReviewRefused(404, f"unknown claim {claim_id!r} (or not yours)")
            claim = _claim(row)
            found = self._own(tx, claim.event_id, claim.agent_version, reviewer)
            if found is not None:
                if found.claim == claim_id and found.same_answer(verdict, reason, note):
                    return found, False
                raise ReviewConflict(
                    f"you already adjudicated this case ({found.verdict}, {found.reason}); "
                    "a verdict is not changed"
                )
            if claim.answered_at is None and claim.expires_at <= now:
                raise ReviewRefused(
                    410, f"claim {claim_id} expired at {claim.expires_at.isoformat()}"
                )
            stored = self._insert(
                tx,
                now=now,
                task_type=claim.task_type,
                event_id=claim.event_id,
                agent_version=claim.agent_version,
                outcome_hash=claim.outcome_hash,
                reviewer=reviewer,
                verdict=verdict,
                reason=reason,
                note=note,
                blind=True,
                stratum=claim.stratum,
                acceptable=acceptable,
                claim=claim_id,
            )
            tx.execute(
                "UPDATE review_claims SET answered_at = ?::TIMESTAMPTZ WHERE claim = ?",
                [now, claim_id],
            )
            return stored, True

    async def adjudicate(
        self,
        *,
        event_id: str,
        agent_version: str,
        task_type: str,
        reviewer: str,
        verdict: str,
        reason: str,
        note: str,
        acceptable: bool,
        now: datetime,
    ) -> tuple[AdjudicationRow, bool]:
        """A direct (not blind) verdict on a case, with its audit entry; ``(row, created)``
        as :meth:`answer_claim`. Raises :class:`ReviewConflict` for another verdict by the
        same reviewer on the same case."""

        def q() -> tuple[AdjudicationRow, bool]:
            with self._tx() as tx:
                found = self._own(tx, event_id, agent_version, reviewer)
                if found is not None:
                    if not found.blind and found.same_answer(verdict, reason, note):
                        return found, False
                    raise ReviewConflict(
                        f"you already adjudicated this case ({found.verdict}, {found.reason}); "
                        "a verdict is not changed"
                    )
                compared = tx.execute(
                    "SELECT verdict, outcome_hash FROM comparisons WHERE event_id = ? "
                    "AND agent_version = ?",
                    [event_id, agent_version],
                ).fetchone()
                stored = self._insert(
                    tx,
                    now=now,
                    task_type=task_type,
                    event_id=event_id,
                    agent_version=agent_version,
                    outcome_hash=None if compared is None else compared[1],
                    reviewer=reviewer,
                    verdict=verdict,
                    reason=reason,
                    note=note,
                    blind=False,
                    stratum=None if compared is None else compared[0],
                    acceptable=acceptable,
                    claim=None,
                )
                return stored, True

        return await self._run(q)

    @staticmethod
    def _own(
        con: duckdb.DuckDBPyConnection, event_id: str, version: str, reviewer: str
    ) -> AdjudicationRow | None:
        row = con.execute(
            f"SELECT {ADJUDICATION_COLUMNS} FROM adjudications WHERE event_id = ? "
            "AND agent_version = ? AND reviewer = ?",
            [event_id, version, reviewer],
        ).fetchone()
        return None if row is None else adjudication_row(row)

    def _insert(
        self, tx: duckdb.DuckDBPyConnection, *, now: datetime, **row: Any
    ) -> AdjudicationRow:
        got = tx.execute(
            "INSERT INTO adjudications (recorded_at, task_type, event_id, agent_version, "
            "outcome_hash, reviewer, verdict, reason, note, blind, stratum, acceptable, claim) "
            "VALUES (?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"RETURNING {ADJUDICATION_COLUMNS}",
            [
                now,
                row["task_type"],
                row["event_id"],
                row["agent_version"],
                row["outcome_hash"],
                row["reviewer"],
                row["verdict"],
                row["reason"],
                row["note"],
                row["blind"],
                row["stratum"],
                row["acceptable"],
                row["claim"],
            ],
        ).fetchone()
        assert got is not None
        stored = adjudication_row(got)
        self._insert_audit(
            tx,
            [
                AuditEntry(
                    at=now,
                    task_type=stored.task_type,
                    actor=stored.reviewer,
                    action=ADJUDICATION_ACTION,
                    from_level=None,
                    to_level=None,
                    reason=f"{stored.verdict} ({stored.reason})",
                    evidence={
                        "adjudication_id": stored.id,
                        "event_id": stored.event_id,
                        "agent_version": stored.agent_version,
                        "verdict": stored.verdict,
                        "reason": stored.reason,
                        "blind": stored.blind,
                        "stratum": stored.stratum,
                        "acceptable": stored.acceptable,
                    },
                )
            ],
        )
        return stored

    # -- reads ------------------------------------------------------------------------------

    async def adjudications(self, event_id: str) -> list[AdjudicationRow]:
        """Every verdict on ``event_id`` (any agent version), oldest first."""

        def q() -> list[AdjudicationRow]:
            rows = self.con.execute(
                f"SELECT {ADJUDICATION_COLUMNS} FROM adjudications WHERE event_id = ? ORDER BY id",
                [event_id],
            ).fetchall()
            return [adjudication_row(r) for r in rows]

        return await self._run(q)

    async def reviewer_agreement(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Per ``(task_type, agent_version)``: (cases with two or more blind reviews that
        are evidence, of those the cases whose reviewers all gave the same verdict)."""

        def q() -> dict[tuple[str, str], tuple[int, int]]:
            return {key: (c[4], c[5]) for key, c in review_counts(self.con).items()}

        return await self._run(q)

    async def queue_state(
        self, *, task_type: str, agent_version: str, reviewer: str, per_case: int, now: datetime
    ) -> tuple[int, int]:
        """``(open claims on task_type, cases still eligible for reviewer)``."""

        def q() -> tuple[int, int]:
            con = self.con
            found = con.execute(
                "SELECT count(*) FROM review_claims WHERE task_type = ? AND answered_at IS NULL "
                "AND expires_at > ?",
                [task_type, now],
            ).fetchone()
            remaining = self._remaining(con, task_type, agent_version, reviewer, now, per_case)
            return (int(found[0]) if found else 0), remaining

        return await self._run(q)
