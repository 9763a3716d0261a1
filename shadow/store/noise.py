"""The noise floor's rows (:mod:`shadow.noise` has the definitions): second opinions, one
per event, the agent's repeated tries of a case, and the verdicts judged on them (schema
v17): each judged once and counted by aggregate queries (:meth:`NoisePart.noise_counts`),
so a read of the noise floor costs SQL over the verdicts, not a diff of every body.

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
from shadow.noise import HumanPair, HumanVerdict, NoiseCounts, RepeatTry, RepeatVerdict
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

    # -- verdicts (shadow.noise): judged once, counted in SQL ---------------------------------

    async def pending_human(
        self, rules: Sequence[tuple[str, str]], *, limit: int = 5000
    ) -> list[HumanPair]:
        """Events with a current outcome and a second opinion whose verdict is missing or
        judged something else (another outcome revision, second opinion, handling or compare
        rules), for the task types in ``rules`` (``(task_type, compare_hash)``). The task
        type is the event's, else its comparisons' (a promoter folding the comparisons
        topic); one known neither way waits."""

        def q() -> list[HumanPair]:
            rows = self.con.execute(_PENDING_HUMAN, [*_columns(rules, 2), limit]).fetchall()
            return [
                HumanPair(
                    eid,
                    tt,
                    _loads(dec),
                    as_actions(_loads(acts)),
                    ohash,
                    _loads(sdec),
                    as_actions(_loads(sacts)),
                    shash,
                    handled,
                )
                for eid, tt, dec, acts, ohash, sdec, sacts, shash, handled in rows
            ]

        return await self._run(q)

    async def put_human_verdicts(self, verdicts: Sequence[HumanVerdict], *, now: datetime) -> None:
        """Store (or replace) each event's human-vs-human verdict (one statement per batch)."""
        if not verdicts:
            return
        columns = [
            [v.event_id for v in verdicts],
            [v.task_type for v in verdicts],
            [v.alike for v in verdicts],
            [dumps([{"path": p, "matched": m} for p, m in v.fields]) for v in verdicts],
            [v.outcome_hash for v in verdicts],
            [v.second_hash for v in verdicts],
            [v.compare_hash for v in verdicts],
            [v.handled_by for v in verdicts],
            now,
        ]

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR REPLACE INTO human_verdicts SELECT unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(?::BOOLEAN[]), unnest(?::VARCHAR[])::JSON, "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), ?::TIMESTAMPTZ",
                    columns,
                )

        await self._run(write)

    async def pending_repeats(
        self, rules: Sequence[tuple[str, str]], *, limit: int = 5000
    ) -> list[RepeatTry]:
        """Stored repeated tries whose case's first decision (the same agent version's) is
        stored and whose verdict is missing or judged under other compare rules, with their
        earlier tries."""

        def q() -> list[RepeatTry]:
            rows = self.con.execute(_PENDING_REPEATS, [*_columns(rules, 2), limit]).fetchall()
            if not rows:
                return []
            tries: dict[tuple[str, str], dict[int, ShadowDecision]] = {}
            for eid, version, attempt, body in self.con.execute(
                "SELECT event_id, agent_version, attempt, body FROM repeats "
                "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
                [sorted({r[0] for r in rows})],
            ).fetchall():
                found = ShadowDecision.from_stored(_loads(body))
                tries.setdefault((eid, version), {})[int(attempt)] = found
            out = []
            for eid, attempt, tt, version, first in rows:
                mine = tries.get((eid, version), {})
                earlier = tuple(d for k, d in sorted(mine.items()) if k < attempt)
                this = mine.get(int(attempt))
                if this is None:  # deleted in between: judged when it is back, if ever
                    continue
                first_d = ShadowDecision.from_stored(_loads(first))
                out.append(RepeatTry(eid, int(attempt), tt, version, first_d, earlier, this))
            return out

        return await self._run(q)

    async def put_repeat_verdicts(
        self, verdicts: Sequence[RepeatVerdict], *, now: datetime
    ) -> None:
        """Store (or replace) each repeated try's verdict (one statement per batch)."""
        if not verdicts:
            return
        columns = [
            [v.event_id for v in verdicts],
            [v.attempt for v in verdicts],
            [v.task_type for v in verdicts],
            [v.agent_version for v in verdicts],
            [v.answered for v in verdicts],
            [v.alike_first for v in verdicts],
            [v.alike_all for v in verdicts],
            [v.compare_hash for v in verdicts],
            now,
        ]

        def write() -> None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR REPLACE INTO repeat_verdicts SELECT unnest(?::VARCHAR[]), "
                    "unnest(?::INTEGER[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                    "unnest(?::BOOLEAN[]), unnest(?::BOOLEAN[]), unnest(?::BOOLEAN[]), "
                    "unnest(?::VARCHAR[]), ?::TIMESTAMPTZ",
                    columns,
                )

        await self._run(write)

    async def noise_counts(
        self, wanted: Sequence[tuple[str, str | None, int]]
    ) -> dict[str, NoiseCounts]:
        """Per task type in ``wanted`` (``(task_type, current agent version, repeats)``) the
        counted verdicts: the human ceiling (blind first outcomes), the version's repeated
        cases judged on their first ``repeats`` tries, and per field the human and agent
        disagreements (aggregate queries over the stored verdicts and comparisons)."""
        names = [w[0] for w in wanted]
        versions = [w[1] or "" for w in wanted]
        repeats = [w[2] for w in wanted]

        def q() -> dict[str, NoiseCounts]:
            ceiling = {
                tt: (int(n), int(agree))
                for tt, n, agree in self.con.execute(_CEILING, [names]).fetchall()
            }
            consistency = {
                tt: tuple(int(x) for x in rest)
                for tt, *rest in self.con.execute(
                    _CONSISTENCY, [names, versions, repeats]
                ).fetchall()
            }
            fields: dict[str, list[tuple[str, int, int, int]]] = {}
            for tt, path, n, h, a in self.con.execute(_FIELDS, [names, versions]).fetchall():
                fields.setdefault(tt, []).append((path, int(n), int(h), int(a)))
            out = {}
            for name in names:
                c_n, c_agree = ceiling.get(name, (0, 0))
                made, answered, agree, stable = consistency.get(name, (0, 0, 0, 0))
                out[name] = NoiseCounts(
                    c_n, c_agree, answered, agree, made, stable, tuple(fields.get(name, ()))
                )
            return out

        return await self._run(q)


# Second opinions with a current outcome and a known, wanted task type, whose verdict is
# missing or judged something else than what is stored now.
_PENDING_HUMAN = """
WITH k AS (SELECT unnest(?::VARCHAR[]) AS t, unnest(?::VARCHAR[]) AS ch),
s AS (
    SELECT s.event_id, s.decision, s.actions, s.content_hash,
           coalesce(e.task_type, (SELECT any_value(c.task_type) FROM comparisons c
                                  WHERE c.event_id = s.event_id)) AS tt
    FROM second_opinions s LEFT JOIN events e ON e.event_id = s.event_id
)
SELECT s.event_id, s.tt, o.decision, o.actions, o.content_hash, s.decision, s.actions,
       s.content_hash, coalesce(h.handled_by, o.handled_by, 'blind') AS handled
FROM s JOIN k ON k.t = s.tt
JOIN outcomes o ON o.event_id = s.event_id AND o.is_current
LEFT JOIN handling h ON h.event_id = s.event_id
LEFT JOIN human_verdicts v ON v.event_id = s.event_id
WHERE v.event_id IS NULL OR v.task_type <> s.tt OR v.outcome_hash <> o.content_hash
   OR v.second_hash <> s.content_hash OR v.compare_hash <> k.ch
   OR v.handled_by <> coalesce(h.handled_by, o.handled_by, 'blind')
ORDER BY s.event_id
LIMIT ?
"""

# Repeated tries with their case's first decision and no verdict under the current rules.
_PENDING_REPEATS = """
WITH k AS (SELECT unnest(?::VARCHAR[]) AS t, unnest(?::VARCHAR[]) AS ch)
SELECT r.event_id, r.attempt, r.task_type, r.agent_version, d.body
FROM repeats r JOIN k ON k.t = r.task_type
JOIN decisions d ON d.event_id = r.event_id AND d.agent_version = r.agent_version
LEFT JOIN repeat_verdicts v ON v.event_id = r.event_id AND v.attempt = r.attempt
WHERE v.event_id IS NULL OR v.compare_hash <> k.ch
ORDER BY r.event_id, r.attempt
LIMIT ?
"""

_CEILING = """
SELECT task_type, count(*), count(*) FILTER (WHERE alike) FROM human_verdicts
WHERE handled_by = 'blind' AND task_type IN (SELECT unnest(?::VARCHAR[]))
GROUP BY task_type
"""

# Per task type, its current version's cases with every one of their first ``repeats``
# tries judged: made, answered on every try, alike the first on every try, and stable.
_CONSISTENCY = """
WITH k AS (SELECT unnest(?::VARCHAR[]) AS t, unnest(?::VARCHAR[]) AS v,
                  unnest(?::INTEGER[]) AS reps),
cases AS (
    SELECT r.task_type, r.event_id, k.reps, count(*) AS tries,
           bool_and(r.answered) AS answered, bool_and(r.alike_first) AS agree,
           bool_and(r.alike_all) AS same
    FROM repeat_verdicts r
    JOIN k ON r.task_type = k.t AND r.agent_version = k.v AND r.attempt <= k.reps
    GROUP BY r.task_type, r.event_id, k.reps
)
SELECT task_type, count(*), count(*) FILTER (WHERE answered),
       count(*) FILTER (WHERE answered AND agree), count(*) FILTER (WHERE answered AND same)
FROM cases WHERE tries = reps
GROUP BY task_type
"""

# Per task type and field: the events with a blind human verdict and a comparison of the
# current version against the same outcome revision (an answer: agree or disagree), the
# ones where the humans differ on the field, and those where the agent does. The
# comparison's note on declared actions (match tool_calls) is not a compared field.
_FIELDS = """
WITH k AS (SELECT unnest(?::VARCHAR[]) AS t, unnest(?::VARCHAR[]) AS v),
pairs AS (
    SELECT hv.task_type, hv.event_id, hv.fields AS hf, c.fields AS cf
    FROM human_verdicts hv JOIN k ON hv.task_type = k.t
    JOIN comparisons c ON c.event_id = hv.event_id AND c.agent_version = k.v
         AND c.outcome_hash = hv.outcome_hash
    WHERE hv.handled_by = 'blind' AND c.handled_by = 'blind'
      AND c.verdict IN ('agree', 'disagree')
),
humans AS (
    SELECT task_type, event_id,
           unnest(from_json(hf, '[{"path": "VARCHAR", "matched": "BOOLEAN"}]')) AS f
    FROM pairs
),
agent AS (
    SELECT task_type, event_id,
           unnest(from_json(cf, '[{"path": "VARCHAR", "match": "VARCHAR", "matched": "BOOLEAN"}]'))
           AS f
    FROM pairs
),
per AS (
    SELECT task_type, event_id, f.path AS path, NOT f.matched AS h, false AS a FROM humans
    UNION ALL
    SELECT task_type, event_id, f.path, false, NOT f.matched FROM agent
    WHERE f.match IS DISTINCT FROM 'tool_calls'
),
fields AS (
    SELECT task_type, event_id, path, bool_or(h) AS h, bool_or(a) AS a
    FROM per GROUP BY task_type, event_id, path
)
SELECT task_type, path, count(*), count(*) FILTER (WHERE h), count(*) FILTER (WHERE a)
FROM fields GROUP BY task_type, path ORDER BY task_type, path
"""


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """``rows`` as ``width`` lists, one per column (for ``unnest`` parameters)."""
    return [[r[i] for r in rows] for i in range(width)]


def _loads(raw: Any) -> Any:
    return orjson.loads(raw) if isinstance(raw, str | bytes) else raw
