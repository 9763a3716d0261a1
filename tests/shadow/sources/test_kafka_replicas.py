"""Scale-out: two sidecar replicas in one consumer group on 6 co-partitioned partitions.

Replica A runs with ``kafka_role=promoter``, replica B with ``kafka_role=replica``; both
publish their comparisons to the comparisons topic, and only A folds them into its ladder and
publishes levels to the compacted autonomy topic. A third, standalone sidecar in its own
group reads the same topics alone. Checked: every event reaches exactly one agent call and
one comparison on the topic, both replicas did part of the work, and the promoter's evidence
and levels equal the single sidecar's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from shadow.model import Level
from tests.kafka_broker import Broker
from tests.shadow.conftest import Sidecar, SidecarFactory
from tests.shadow.sources.kafka_data import (
    AGENT_SPEC,
    POLICY,
    expected,
    observed,
    shuffled_with_duplicates,
    wait_for,
)

N = 1200
PARTITIONS = 6


def source(broker: Broker, group: str) -> str:
    return f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group={group}"


async def assigned(sc: Sidecar) -> set[tuple[str, str]]:
    """(topic, partition) pairs this sidecar reports lag for: its current assignment."""
    return {
        (dict(labels)["topic"], dict(labels)["partition"])
        for (name, labels), _ in (await sc.metrics()).items()
        if name == "shadow_kafka_consumer_lag_messages"
    }


async def read_all(broker: Broker, topic: str, want: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    try:
        for _ in range(300):
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(messages)
            if len(out) >= want:
                break
    finally:
        await consumer.stop()
    return out


async def settle(sc: Sidecar) -> dict[str, str]:
    """Re-decide until the ladder stops moving (one level per decision); the levels."""
    for _ in range(Level.L4 + 1):
        await sc.pipeline.evaluate()
    doc = await sc.agreement()
    return {t: v["level"] for t, v in doc["task_types"].items()}


async def test_two_replicas_compare_each_event_once_and_promote_like_one(
    broker: Broker, sidecar: SidecarFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "agent-calls.log"
    monkeypatch.setenv("CRASH_AGENT_LOG", str(calls))  # read by the test agent only
    await broker.create_topics(
        {"ev": PARTITIONS, "oc": PARTITIONS, "cmp": 3, "aut": 1}, compact=["aut"]
    )
    common: dict[str, Any] = {
        "agent": AGENT_SPEC,
        "kafka_health_interval": 0.2,
        "kafka_comparisons_topic": "cmp",
        "kafka_autonomy_topic": "aut",
        "batch_size": 200,
    }
    a = await sidecar(
        policy=POLICY, source=[source(broker, "grp")], kafka_role="promoter", **common
    )
    b = await sidecar(policy=POLICY, source=[source(broker, "grp")], kafka_role="replica", **common)

    everything = {(t, str(p)) for t in ("ev", "oc") for p in range(PARTITIONS)}

    async def split() -> bool:
        mine, theirs = await assigned(a), await assigned(b)
        # Range assignment: the same partition numbers of both topics on each replica.
        return (
            mine | theirs == everything
            and not mine & theirs
            and {p for t, p in mine if t == "ev"} == {p for t, p in mine if t == "oc"}
            and len(mine) == PARTITIONS
        )

    await wait_for(split, "the group to split 6+6 partitions between the replicas")
    events, outcomes = shuffled_with_duplicates(range(N), seed=21)
    await broker.produce_json("ev", events)
    await broker.produce_json("oc", outcomes)

    async def promoter_has_all() -> bool:
        return await a.pipeline.store.count("comparisons") >= N

    await wait_for(promoter_has_all, f"the promoter to hold all {N} comparisons", tries=2400)
    await a.pipeline.drain()
    await b.pipeline.drain()

    # Each event: one agent call in the whole group, one comparison on the topic.
    ids = calls.read_text().split()
    assert len(ids) == N
    assert len(set(ids)) == N
    published = await read_all(broker, "cmp", N)
    keys = [m.key.decode() for m in published]
    assert len(keys) == N
    assert len(set(keys)) == N
    by_b = await b.pipeline.store.count("comparisons")
    assert 0 < by_b < N  # both replicas did part of the work
    assert await b.pipeline.store.count("events") + await a.pipeline.store.count("events") == N

    # One sidecar alone on the same data.
    solo = await sidecar(policy=POLICY, source=[source(broker, "solo")], agent=AGENT_SPEC)

    async def solo_done() -> bool:
        return await solo.pipeline.store.count("comparisons") >= N

    await wait_for(solo_done, f"the single sidecar to compare all {N}", tries=2400)
    await solo.pipeline.drain()

    assert observed(await a.agreement()) == expected(range(N))
    assert observed(await solo.agreement()) == expected(range(N))
    levels = await settle(a)
    assert levels == await settle(solo)
    assert set(levels.values()) != {"L0"}  # the data moves the ladder

    # The replica never promotes; the promoter's levels are on the compacted topic.
    assert set((await settle(b)).values()) == {"L0"}

    async def topic_has_levels() -> bool:
        latest: dict[str, str] = {}
        for m in await read_all(broker, "aut", 1):
            latest[m.key.decode()] = json.loads(m.value)["level"]
        return latest == levels

    await wait_for(topic_has_levels, "the autonomy topic to carry the promoter's levels")
