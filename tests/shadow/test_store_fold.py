"""The promoter's fold of comparisons from several replicas (``put_comparisons`` with
``published=True``): an 'expired' verdict never replaces a real one, a real one replaces an
'expired' one, and what is kept is marked published in the same transaction. Real DuckDB
file; raw SQL through ``Store.con`` only reads rows while no store call is in flight."""

from __future__ import annotations

from shadow.model import Comparison, Verdict
from shadow.store import Store
from tests.conftest import FakeClock
from tests.shadow.test_store import TASK, sql

V = "agent@1"


def cmp(eid: str, verdict: Verdict) -> Comparison:
    digest = None if verdict is Verdict.EXPIRED else f"h-{eid}"
    return Comparison(eid, TASK, V, verdict, (), verdict is Verdict.DISAGREE, digest)


def verdicts(store: Store, table: str = "comparisons") -> dict[str, str]:
    return {str(e): str(v) for e, v in sql(store, f"SELECT event_id, verdict FROM {table}")}


async def test_expired_never_replaces_a_real_verdict(store: Store, clock: FakeClock) -> None:
    now = clock()
    first = [cmp("real-first", Verdict.AGREE), cmp("expired-first", Verdict.EXPIRED)]
    assert await store.put_comparisons(first, now=now, actor="kafka", published=True) == []
    later = [
        cmp("real-first", Verdict.EXPIRED),  # the old owner expired what the new one compared
        cmp("expired-first", Verdict.DISAGREE),  # the real verdict replaces the expired one
        cmp("one-batch", Verdict.AGENT_ERROR),
        cmp("one-batch", Verdict.EXPIRED),  # same batch, after the real one
        cmp("batch-rev", Verdict.EXPIRED),
        cmp("batch-rev", Verdict.AGREE),  # same batch, before the real one
        cmp("only-expired", Verdict.EXPIRED),
    ]
    # no reversal: an expired verdict is never a reversal, in either direction
    assert await store.put_comparisons(later, now=now, actor="kafka", published=True) == []
    assert verdicts(store) == {
        "real-first": "agree",
        "expired-first": "disagree",
        "one-batch": "agent_error",
        "batch-rev": "agree",
        "only-expired": "expired",
    }
    # marked published exactly as kept: the outbox has nothing to echo
    assert verdicts(store, "published_comparisons") == verdicts(store)
    assert await store.unpublished_comparisons() == []
    # a batch of expired verdicts only, all over real ones: nothing changes
    stale = [cmp("real-first", Verdict.EXPIRED), cmp("batch-rev", Verdict.EXPIRED)]
    assert await store.put_comparisons(stale, now=now, actor="kafka", published=True) == []
    assert verdicts(store)["real-first"] == "agree"
    assert await store.audit_log() == []


async def test_local_comparisons_are_not_marked_published(store: Store, clock: FakeClock) -> None:
    await store.put_comparisons([cmp("mine", Verdict.AGREE)], now=clock())
    assert verdicts(store, "published_comparisons") == {}
    assert [c.event_id for c in await store.unpublished_comparisons()] == ["mine"]
