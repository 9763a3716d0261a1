"""Helper process for the kill -9 test in ``test_store.py`` (not a test module).

``python tests/shadow/store_worker.py DBPATH [BATCH]`` opens the store and writes, for
batch after batch of indices starting at 0, the events, then the decisions, then the
outcomes of that batch, forever. After each ``put_*`` call returns it prints one line and
flushes::

    acked <kind> <last index> stored=<n> duplicate=<n> conflict=<n> other=<n>

so the parent knows exactly what was acknowledged before it sends SIGKILL. Every record is
a pure function of its index (see :func:`event`, :func:`decision`, :func:`outcome`), so a
re-run re-sends identical records and the parent can rebuild them.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

from shadow.model import Action, Outcome, ShadowDecision, Usage, WorkEvent
from shadow.store import PutResult, PutStatus, Store

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
AGENT = "refund-agent@7"
TASK_TYPES = ("refund_request", "invoice_match", "ticket_routing")


def task_type(i: int) -> str:
    return TASK_TYPES[i % len(TASK_TYPES)]


def event(i: int) -> WorkEvent:
    return WorkEvent(
        f"ev-{i:07d}",
        task_type(i),
        {"i": i, "amount": i * 0.25, "note": "n" * (i % 37), "tags": [i % 2, i % 3]},
        occurred_at=(NOW + timedelta(seconds=i)).isoformat(),
        segment=("eu", "us", None)[i % 3],
    )


def decision(i: int) -> ShadowDecision:
    if i % 11 == 0:
        return ShadowDecision.failed(f"ev-{i:07d}", AGENT, "timeout after 30s", latency_ms=30_000)
    return ShadowDecision(
        f"ev-{i:07d}",
        AGENT,
        {"action": "approve" if i % 5 else "deny", "amount": i * 0.25},
        (Action("issue_refund", {"amount": i * 0.25}),) if i % 5 else (),
        confidence=(i % 100) / 100,
        usage=Usage(800 + i % 50, 60, 0.002),
        latency_ms=float(100 + i % 400),
    )


def outcome(i: int) -> Outcome:
    return Outcome(
        f"ev-{i:07d}",
        {"action": "approve" if i % 7 else "deny", "amount": i * 0.25},
        (Action("issue_refund", {"amount": i * 0.25}),) if i % 7 else (),
        decided_by="ops/jane",
        decided_at=(NOW + timedelta(minutes=5, seconds=i)).isoformat(),
    )


def tally(results: list[PutResult]) -> str:
    c = Counter(r.status for r in results)
    known = (PutStatus.STORED, PutStatus.DUPLICATE, PutStatus.CONFLICT)
    other = sum(n for s, n in c.items() if s not in known)
    return (
        f"stored={c[PutStatus.STORED]} duplicate={c[PutStatus.DUPLICATE]} "
        f"conflict={c[PutStatus.CONFLICT]} other={other}"
    )


async def main(path: str, batch: int) -> None:
    async with Store(path) as store:
        start = 0
        while True:
            idx = range(start, start + batch)
            last = idx[-1]
            res = await store.put_events([event(i) for i in idx], source="worker", now=NOW)
            print(f"acked event {last} {tally(res)}", flush=True)
            res = await store.put_decisions([(decision(i), task_type(i)) for i in idx], now=NOW)
            print(f"acked decision {last} {tally(res)}", flush=True)
            res = await store.put_outcomes([outcome(i) for i in idx], source="worker", now=NOW)
            print(f"acked outcome {last} {tally(res)}", flush=True)
            start += batch


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50))
