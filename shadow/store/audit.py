"""The audit log and its hash chain in SQL (:mod:`shadow.audit_chain` defines the chain).

Each function takes the connection or transaction it runs in, so the writes stay inside the
transaction of the change they record. :func:`insert_chained` is the one way a row enters
``audit_log`` (through :meth:`shadow.store.base.StoreBase._insert_audit`, which first reads
the head and takes the ids from ``audit_seq`` with :func:`reserve`, so each row's hash
covers its id): it links the rows to that head, read in the same transaction (the store's
single writer serialises these). Rows written before the chain existed are chained once, by
:func:`backfill_chain`, in the migration that added the columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import duckdb

from shadow.audit_chain import GENESIS, ChainEntry, chain_hash

__all__ = ["audit_page", "backfill_chain", "insert_chained", "reserve"]

_COLUMNS = (
    "id, recorded_at, task_type, actor, action, from_level, to_level, reason, evidence, "
    "policy_hash, prev_hash, entry_hash"
)
_BACKFILL_PAGE = 10_000  # rows read and updated at a time by backfill_chain


def reserve(tx: duckdb.DuckDBPyConnection, count: int) -> tuple[str, list[int]]:
    """The hash new entries link to (the head; :data:`~shadow.audit_chain.GENESIS` also
    when the newest entry's hash is NULL, a break the verifier names anyway) and ``count``
    new ids from ``audit_seq``, ascending: one statement, in the writer's transaction."""
    rows = tx.execute(
        "SELECT (SELECT entry_hash FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)), "
        "nextval('audit_seq') FROM range(?)",
        [count],
    ).fetchall()
    head = rows[0][0] if rows and rows[0][0] is not None else GENESIS
    return head, sorted(int(r[1]) for r in rows)


def insert_chained(tx: duckdb.DuckDBPyConnection, head: str, entries: Sequence[ChainEntry]) -> None:
    """Append ``entries`` (ids from :func:`reserve`, texts as they will be stored; their
    hash fields are not read), the first linked to ``head``, in one statement."""
    if not entries:
        return
    prev = head
    rows: list[tuple[ChainEntry, str, str]] = []
    for entry in entries:
        digest = chain_hash(entry, prev)
        rows.append((entry, prev, digest))
        prev = digest
    tx.execute(
        f"INSERT INTO audit_log ({_COLUMNS}) SELECT unnest(?::BIGINT[]), "
        "unnest(?::TIMESTAMPTZ[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
        "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
        "unnest(?::VARCHAR[]), unnest(?::VARCHAR[])::JSON, unnest(?::VARCHAR[]), "
        "unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
        [
            [c.id for c, _, _ in rows],
            [c.recorded_at for c, _, _ in rows],
            [c.task_type for c, _, _ in rows],
            [c.actor for c, _, _ in rows],
            [c.action for c, _, _ in rows],
            [c.from_level for c, _, _ in rows],
            [c.to_level for c, _, _ in rows],
            [c.reason for c, _, _ in rows],
            [json.dumps(c.evidence) for c, _, _ in rows],
            [c.policy_hash for c, _, _ in rows],
            [p for _, p, _ in rows],
            [d for _, _, d in rows],
        ],
    )


def audit_page(con: duckdb.DuckDBPyConnection, *, after: int, limit: int) -> list[ChainEntry]:
    """Up to ``limit`` entries with ids above ``after``, in id order, as stored."""
    rows = con.execute(
        f"SELECT {_COLUMNS} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?", [after, limit]
    ).fetchall()
    return [
        ChainEntry(
            id=int(r[0]),
            recorded_at=r[1],
            task_type=r[2],
            actor=r[3],
            action=r[4],
            from_level=r[5],
            to_level=r[6],
            reason=r[7],
            evidence=None if r[8] is None else json.loads(r[8]),
            policy_hash=r[9],
            prev_hash=r[10],
            entry_hash=r[11],
        )
        for r in rows
    ]


def backfill_chain(tx: duckdb.DuckDBPyConnection) -> int:
    """Chain every row of a log written before the chain existed (in id order, from
    :data:`~shadow.audit_chain.GENESIS`), in ``tx``, so an old store gets a whole chain
    and no NULL hash is left for a tamperer to hide behind. Hashes what is stored. The
    number of rows chained."""
    prev, after, done = GENESIS, 0, 0
    while page := audit_page(tx, after=after, limit=_BACKFILL_PAGE):
        ids, prevs, digests = [], [], []
        for entry in page:
            digest = chain_hash(entry, prev)
            ids.append(entry.id)
            prevs.append(prev)
            digests.append(digest)
            prev = digest
        tx.execute(
            "UPDATE audit_log SET prev_hash = u.p, entry_hash = u.h FROM (SELECT "
            "unnest(?::BIGINT[]) AS i, unnest(?::VARCHAR[]) AS p, unnest(?::VARCHAR[]) AS h) u "
            "WHERE audit_log.id = u.i",
            [ids, prevs, digests],
        )
        after, done = page[-1].id, done + len(page)
    return done
