"""A failed batch is rewound and read again: nothing lost, nothing counted twice.

The failure is real: the sidecar's own :class:`~shadow.store.Store` is closed under the
running Kafka source (every write then raises ``StoreError: store is closed``), records and
poison are produced while it is closed, and the store is opened again. The source must have
logged the failed delivery, kept its offsets uncommitted, sought back, and after the store is
back stored every record exactly once (duplicates in the input counted as duplicates, each
poison message one dead letter).
"""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.kafka_broker import Broker
from tests.shadow import crash_agent
from tests.shadow.conftest import SidecarFactory, metric
from tests.shadow.sources.kafka_data import POLICY, shuffled_with_duplicates
from tests.shadow.sources.test_kafka_replicas import source

N = 120


async def test_a_batch_that_failed_to_store_is_read_again_exactly_once(
    broker: Broker, sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await broker.create_topics({"ev": 2, "oc": 2})
    # No agent: the source and the store alone (nothing else writes while the store is shut).
    sc = await sidecar(
        policy=POLICY, source=[source(broker, "g")], kafka_health_interval=0.2, batch_size=50
    )

    async def assigned() -> bool:
        return (
            await sc.pipeline.store.count("events") == 0 and (await sc.get("/readyz")).status == 200
        )

    await wait_for(assigned, "the source to be ready")
    store = sc.pipeline.store
    await store.close()
    events, outcomes = shuffled_with_duplicates(range(N), seed=3)
    await broker.produce_json("ev", events)
    await broker.produce_json("oc", outcomes)
    poison = [(b"p-1", b"{not json"), (b"p-2", b'{"event_id": "p-2"}')]
    await broker.produce("ev", poison)

    def failures() -> int:
        return sum(
            "delivering a batch failed; retrying it" in r.getMessage() for r in caplog.records
        )

    async def failed_twice() -> bool:
        return failures() >= 2

    await wait_for(failed_twice, "the source to fail on the closed store and retry", tries=2400)
    assert "store is closed" in caplog.text
    await store.open()

    async def stored() -> bool:
        return (
            await store.count("events") == N
            and await store.count("outcomes") == N
            and await store.count("dead_letters") == len(poison)
        )

    await wait_for(stored, "every record to be stored after the store came back")

    async def lag_zero() -> bool:
        m = await sc.metrics()
        lags = [
            metric(m, name, topic=t, partition=str(p))
            for name in ("shadow_kafka_consumer_lag_messages", "shadow_kafka_uncommitted_messages")
            for t in ("ev", "oc")
            for p in range(2)
        ]
        return all(v == 0 for v in lags)  # all read, and all committed

    await wait_for(lag_zero, "the source to commit everything")
    assert await store.count("events") == N
    assert await store.count("outcomes") == N
    letters = await store.dead_letters()
    assert len(letters) == len(poison)
    assert sorted(d["kind"] for d in letters) == ["event", "event"]
    m = await sc.metrics()

    def total(result: str) -> float:
        return sum(
            metric(m, "shadow_events_total", task_type=t, source="kafka", result=result) or 0
            for t in crash_agent.TASK_TYPES
        )

    # Counted once each: the failed attempts stored nothing and counted nothing.
    assert total("stored") == N
    assert total("duplicate") == len(events) - N
    assert (await sc.get("/readyz")).status == 200
