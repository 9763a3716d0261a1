"""Scale-out: two sidecar replicas in one consumer group on 6 co-partitioned partitions.

Replica A runs with ``kafka_role=promoter``, replica B with ``kafka_role=replica``; both
publish their comparisons to the comparisons topic, and only A folds them into its ladder and
publishes levels to the compacted autonomy topic. A third, standalone sidecar in its own
group reads the same topics alone. Checked: every event reaches exactly one agent call and
one comparison on the topic, both replicas did part of the work, and the promoter's evidence
and levels equal the single sidecar's; the replica shows the same levels (followed from the
autonomy topic).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shadow.model import Level
from tests.conftest import wait_for
from tests.kafka_broker import Broker
from tests.shadow import crash_agent
from tests.shadow.conftest import Sidecar, SidecarFactory, metric
from tests.shadow.sources.kafka_data import (
    AGENT_SPEC,
    POLICY,
    expected,
    observed,
    shuffled_with_duplicates,
)

N = 1200
PARTITIONS = 6


def source(broker: Broker, group: str) -> str:
    return f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group={group}"


async def assigned(sc: Sidecar) -> set[tuple[str, str]]:
    """(topic, partition) pairs this sidecar reports lag for: its current assignment, once
    its group assigned it partitions (before that it reports the group's backlog of every
    partition)."""
    ready = await sc.get("/readyz")
    if ready.status != 200 and "waiting for partition assignment" in str(ready.body):
        return set()
    return {
        (dict(labels)["topic"], dict(labels)["partition"])
        for (name, labels), _ in (await sc.metrics()).items()
        if name == "shadow_kafka_consumer_lag_messages"
    }


async def read_all(broker: Broker, topic: str, want: int, *, rounds: int = 300) -> list[Any]:
    """Every record of ``topic`` from the start: at least ``want`` once the topic has nothing
    more, or what ``rounds`` fetches of up to 0.3 s found (a polling check passes a small
    ``rounds``: it asks again soon anyway)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    try:
        for _ in range(rounds):
            fetched = await consumer.getmany(timeout_ms=300)
            for messages in fetched.values():
                out.extend(messages)
            if len(out) >= want and not fetched:
                break  # at least ``want``, and the topic has nothing more right now
    finally:
        await consumer.stop()
    return out


def comparison_records(messages: list[Any]) -> list[Any]:
    """The comparison records among messages of the comparisons topic, which also carries
    routing records (``"kind": "handling"``; none in these tests: nothing is routed)."""
    return [m for m in messages if json.loads(m.value).get("kind") != "handling"]


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
    published = comparison_records(await read_all(broker, "cmp", N))
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

    # The replica never promotes; the promoter's levels are on the compacted topic, and the
    # replica follows them from there (test_kafka_follow.py covers the follower in depth).
    async def replica_follows() -> bool:
        return await settle(b) == levels

    await wait_for(replica_follows, "the replica to follow the promoter's levels")

    async def topic_has_levels() -> bool:
        latest: dict[str, str] = {}
        for m in await read_all(broker, "aut", 1):
            latest[m.key.decode()] = json.loads(m.value)["level"]
        return latest == levels

    await wait_for(topic_has_levels, "the autonomy topic to carry the promoter's levels")


async def test_a_replica_joining_mid_stream_never_double_counts(
    broker: Broker, sidecar: SidecarFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance in the middle of the stream: replica B joins while A holds open joins from
    the first half, and the second half arrives after the partitions moved. A committed each
    partition only up to its oldest open join, so B re-reads every record of a join still
    open at the move and completes the join in its own store: the promoter's evidence holds
    every event exactly once, with the agent's exact verdicts. What B re-read of joins that A
    had already completed (their other half was committed before the move) waits on B; when
    it expires, its 'expired' verdict never replaces A's real one."""
    calls = tmp_path / "agent-calls.log"
    monkeypatch.setenv("CRASH_AGENT_LOG", str(calls))  # read by the test agent only
    await broker.create_topics({"ev": PARTITIONS, "oc": PARTITIONS, "cmp": 3})
    common: dict[str, Any] = {
        "agent": AGENT_SPEC,
        "kafka_health_interval": 0.2,
        "kafka_comparisons_topic": "cmp",
        "batch_size": 100,
    }
    a = await sidecar(
        policy=POLICY, source=[source(broker, "grp")], kafka_role="promoter", **common
    )
    events, outcomes = shuffled_with_duplicates(range(N), seed=5)
    half_e, half_o = len(events) // 2, len(outcomes) // 2
    await broker.produce_json("ev", events[:half_e])
    await broker.produce_json("oc", outcomes[:half_o])

    async def started() -> bool:
        return await a.pipeline.store.count("comparisons") > 0

    await wait_for(started, "the promoter to compare alone first")
    b = await sidecar(policy=POLICY, source=[source(broker, "grp")], kafka_role="replica", **common)

    async def moved() -> bool:
        return len(await assigned(b)) == PARTITIONS and len(await assigned(a)) == PARTITIONS

    await wait_for(moved, "half of the partitions to move to B")
    await broker.produce_json("ev", events[half_e:])
    await broker.produce_json("oc", outcomes[half_o:])

    async def quiet() -> bool:
        lags = [
            v
            for sc in (a, b)
            for (name, _), v in (await sc.metrics()).items()
            if name == "shadow_kafka_consumer_lag_messages"
        ]
        return len(lags) == 2 * PARTITIONS and not any(lags)

    await wait_for(quiet, "both replicas to read everything")
    await a.pipeline.drain()
    await b.pipeline.drain()

    async def promoter_has_all() -> bool:
        return await a.pipeline.store.count("comparisons") == N

    await wait_for(promoter_has_all, f"the promoter to hold all {N} comparisons", tries=2400)
    await wait_for(lambda: outboxes_empty(a, b), "both replicas to publish every comparison")
    # Read at least as many records as the replicas published (read_all stops at the first
    # empty poll once it has that many: asking for fewer could miss some).
    published = comparison_records(await read_all(broker, "cmp", await published_count(a, b)))
    assert {m.key.decode() for m in published} == {crash_agent.event_id(i) for i in range(N)}
    assert observed(await a.agreement()) == expected(range(N))  # every event, exactly once
    assert await b.pipeline.store.count("decisions") > 0

    # Nothing left waiting on the promoter (it holds every comparison of the group). On B,
    # only records re-read from joins that A completed before the move: their events (and
    # duplicates) were compared by A, B holds them without their other half.
    assert await held(a) == []
    assert (await a.pipeline.store.pending())["awaiting_outcome"] == 0
    b_held = await held(b)
    pa, pb = await a.pipeline.store.pending(), await b.pipeline.store.pending()
    assert pa["awaiting_agent"] == pb["awaiting_agent"] == 0
    assert pb["awaiting_outcome"] + pb["awaiting_event"] == len(b_held)
    stored_twice = await a.pipeline.store.count("events") + await b.pipeline.store.count("events")
    outcomes_twice = (
        await a.pipeline.store.count("outcomes") + await b.pipeline.store.count("outcomes") - N
    )
    agent_calls = len(calls.read_text().split())
    print(
        f"\nmid-stream: {N} events compared once; events stored by both replicas "
        f"{stored_twice - N}, outcomes {outcomes_twice}; agent calls {agent_calls} "
        f"({agent_calls - N} repeated); "
        f"held on B after the run {len(b_held)} (awaiting outcome {pb['awaiting_outcome']}, "
        f"awaiting event {pb['awaiting_event']}); published records {len(published)}"
    )

    # Those joins expire on B (the TTL passes): B publishes 'expired' for them and the
    # promoter folds every record, yet keeps A's real verdicts.
    await b.pipeline.joiner.expire(timedelta(0))
    await a.pipeline.joiner.expire(timedelta(0))
    await wait_for(lambda: outboxes_empty(a, b), "both replicas to publish their expiries")
    end = {
        m.partition: m.offset + 1
        for m in sorted(
            await read_all(broker, "cmp", await published_count(a, b)), key=lambda m: m.offset
        )
    }
    await wait_for(lambda: folded_up_to(broker, end), "the promoter to fold every record")
    assert observed(await a.agreement()) == expected(range(N))
    assert await a.pipeline.store.count("comparisons") == N
    assert await held(a) == await held(b) == []
    for sc in (a, b):
        assert await sc.pipeline.store.pending() == {
            "awaiting_outcome": 0,
            "awaiting_event": 0,
            "awaiting_agent": 0,
        }


async def outboxes_empty(*replicas: Sidecar) -> bool:
    for sc in replicas:
        if await sc.pipeline.store.unpublished_comparisons(limit=1):
            return False
    return True


async def published_count(*replicas: Sidecar) -> int:
    """Comparison records the replicas' publishers had acknowledged by the broker."""
    total = 0.0
    for sc in replicas:
        samples = await sc.metrics()
        total += metric(samples, "shadow_kafka_published_total", stream="comparisons") or 0.0
    return int(total)


async def held(sc: Sidecar) -> list[str]:
    """Event ids whose open joins hold this replica's commits back."""
    ttl = timedelta(seconds=sc.pipeline.settings.join_ttl)
    return await sc.pipeline.store.held_event_ids(cutoff=sc.pipeline.clock() - ttl)


async def folded_up_to(broker: Broker, end: dict[int, int]) -> bool:
    """Whether the promoter's group committed the comparisons topic up to ``end``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="grp.promoter", enable_auto_commit=False
    )
    await consumer.start()
    try:
        for partition, offset in end.items():
            done = await consumer.committed(TopicPartition("cmp", partition))
            if done is None or done < offset:
                return False
        return True
    finally:
        await consumer.stop()
