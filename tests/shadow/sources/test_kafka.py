"""The Kafka source against a real tansu broker process, through the real app
(:func:`shadow.app.build_app` served on loopback) and a real aiokafka producer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from shadow.errors import ConfigError
from shadow.sources.kafka import parse_kafka_spec
from tests.conftest import wait_for
from tests.kafka_broker import Broker
from tests.shadow import crash_agent
from tests.shadow.conftest import Sidecar, SidecarFactory, metric
from tests.shadow.sources.conftest import BrokerFactory
from tests.shadow.sources.kafka_data import (
    AGENT_SPEC,
    POLICY,
    expected,
    observed,
    shuffled_with_duplicates,
)


def spec(broker: Broker, events: str = "ev", outcomes: str = "oc", group: str = "g") -> str:
    return f"kafka://{broker.bootstrap}?events={events}&outcomes={outcomes}&group={group}"


async def start(sidecar: SidecarFactory, broker: Broker, **overrides: Any) -> Sidecar:
    values: dict[str, Any] = {
        "agent": AGENT_SPEC,
        "source": [spec(broker)],
        "kafka_health_interval": 0.2,
        "batch_size": 200,
    }
    values.update(overrides)
    return await sidecar(policy=POLICY, **values)


async def comparisons(sc: Sidecar) -> int:
    return await sc.pipeline.store.count("comparisons")


# -- the spec -----------------------------------------------------------------------------------


def test_spec_parses_brokers_topics_and_group() -> None:
    s = parse_kafka_spec("kafka://a:9092,b:9093?events=ev&outcomes=oc&group=shadow")
    assert (s.bootstrap, s.events, s.outcomes, s.group) == ("a:9092,b:9093", "ev", "oc", "shadow")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("kafka://?events=e&outcomes=o&group=g", "no broker address"),
        ("kafka://host?events=e&outcomes=o&group=g", "is not HOST:PORT"),
        ("kafka://h:1?events=e&group=g", "outcomes="),
        ("kafka://h:1?events=e&outcomes=o&group=", "group="),
        ("kafka://h:1?events=e&outcomes=o&group=g&x=1", "unknown parameter(s) x"),
        ("kafka://h:1?events=e&outcomes=e&group=g", "different topics"),
    ],
)
def test_spec_errors_name_the_problem(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_kafka_spec(text)
    assert says in str(info.value)


# -- exact counts -------------------------------------------------------------------------------


async def test_exact_counts_with_shuffled_and_duplicated_records(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    n = 600
    await broker.create_topics({"ev": 3, "oc": 3})
    events, outcomes = shuffled_with_duplicates(range(n), seed=4)
    # Half is waiting before the sidecar starts, half arrives while it consumes.
    await broker.produce_json("oc", outcomes[: len(outcomes) // 2])
    await broker.produce_json("ev", events[: len(events) // 2])
    sc = await start(sidecar, broker)
    await broker.produce_json("ev", events[len(events) // 2 :])
    await broker.produce_json("oc", outcomes[len(outcomes) // 2 :])

    await wait_for(lambda: _at_least(sc, n), f"{n} comparisons")
    await sc.pipeline.drain()
    assert observed(await sc.agreement()) == expected(range(n))
    store = sc.pipeline.store
    assert await store.count("comparisons") == n
    assert await store.count("events") == n
    assert await store.count("decisions") == n
    assert await store.count("dead_letters") == 0

    async def lag_drained() -> bool:
        m = await sc.metrics()
        lags = [
            metric(m, name, topic=t, partition=str(p))
            for name in ("shadow_kafka_consumer_lag_messages", "shadow_kafka_uncommitted_messages")
            for t in ("ev", "oc")
            for p in range(3)
        ]
        return all(v == 0 for v in lags)  # all read, and all committed

    await wait_for(lag_drained, "zero lag on all six partitions")
    m = await sc.metrics()
    assert metric(m, "shadow_kafka_connected") == 1
    dup_events = sum(
        metric(m, "shadow_events_total", task_type=t, source="kafka", result="duplicate") or 0
        for t in crash_agent.TASK_TYPES
    )
    assert dup_events == len(events) - n
    stored = sum(
        metric(m, "shadow_events_total", task_type=t, source="kafka", result="stored") or 0
        for t in crash_agent.TASK_TYPES
    )
    assert stored == n
    assert (await sc.get("/readyz")).status == 200


async def _at_least(sc: Sidecar, n: int) -> bool:
    return await comparisons(sc) >= n


# -- poison -------------------------------------------------------------------------------------


async def test_retention_deletes_compared_cases_and_a_replayed_stream_is_not_counted_twice(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    """A tap with retention: compared cases leave the store once older than it, the
    evidence stays, every offset is committed, and the same records produced again (as an
    offset reset would deliver them) are stored anew but not compared or counted again."""
    n = 60
    await broker.create_topics({"ev": 3, "oc": 3})
    events, outcomes = shuffled_with_duplicates(range(n), seed=9)
    sc = await start(sidecar, broker, join_ttl=4.0, retention=5.0, expire_interval=0.25)
    await broker.produce_json("ev", events)
    await broker.produce_json("oc", outcomes)
    await wait_for(lambda: _at_least(sc, n), f"{n} comparisons")
    evidence = observed(await sc.agreement())
    assert evidence == expected(range(n))
    store = sc.pipeline.store

    async def purged() -> bool:
        m = await sc.metrics()
        return metric(m, "shadow_purged_rows_total", table="events") == n

    await wait_for(purged, f"retention to delete the {n} cases")
    assert await store.count("events") == await store.count("outcomes") == 0
    assert await store.count("decisions") == 0
    assert await store.count("comparisons") == n
    assert observed(await sc.agreement()) == evidence
    made = await _comparisons_made(sc)

    # the same stream again: new offsets, known (but deleted) cases
    await broker.produce_json("ev", events)
    await broker.produce_json("oc", outcomes)

    async def stored_again() -> bool:
        return await store.count("decisions") == n and await store.count("outcomes") == n

    await wait_for(stored_again, "the replayed cases to be stored and answered again")
    await sc.pipeline.drain()
    assert await store.count("comparisons") == n
    assert observed(await sc.agreement()) == evidence
    assert await _comparisons_made(sc) == made  # nothing compared again

    async def committed() -> bool:
        m = await sc.metrics()
        return all(
            metric(m, "shadow_kafka_uncommitted_messages", topic=t, partition=str(p)) == 0
            for t in ("ev", "oc")
            for p in range(3)
        )

    await wait_for(committed, "every offset committed")


async def _comparisons_made(sc: Sidecar) -> float:
    """``shadow_comparisons_total`` over every label set."""
    return sum(
        v for (name, _), v in (await sc.metrics()).items() if name == "shadow_comparisons_total"
    )


async def test_poison_goes_to_dead_letters_and_the_topic_while_good_records_flow(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    n = 200
    await broker.create_topics({"ev": 2, "oc": 2, "dlq": 1})
    good_events = [json.dumps(crash_agent.event(i)).encode() for i in range(n)]
    ok = crash_agent.event(9999)
    poison: list[tuple[bytes | None, bytes | None, str]] = [
        (b"p1", b"{not json", "Expecting property name"),
        (b"p2", b"\xff\xfe garbage", "not UTF-8"),
        (b"p3", json.dumps({"event_id": "p3", "payload": {}}).encode(), "task_type"),
        (b"p4", json.dumps({**ok, "event_id": "p4", "pad": "x" * 3000}).encode(), "too large"),
        (b"p5", None, "tombstone"),
        (b"not-p6", json.dumps({**ok, "event_id": "p6"}).encode(), "does not match event_id"),
        # One valid event wrapped in an array is still not one JSON object per message.
        (b"p7", json.dumps([{**ok, "event_id": "p7"}]).encode(), "got an array"),
        (b"p8", b'{"event_id": "p8"} {"event_id": "p8"}', "expected exactly one object"),
        (
            b"p9",
            json.dumps({**ok, "event_id": "p9", "kind": "outcome"}).encode(),
            'expected "event"',
        ),
    ]
    # Poison in the middle of the stream: good records before and after it.
    records: list[tuple[bytes | None, bytes | None]] = [
        (crash_agent.event_id(i).encode(), good_events[i]) for i in range(n // 2)
    ]
    records += [(k, v) for k, v, _ in poison]
    records += [(crash_agent.event_id(i).encode(), good_events[i]) for i in range(n // 2, n)]
    await broker.produce("ev", records)
    await broker.produce_json("oc", [crash_agent.outcome(i) for i in range(n)])
    await broker.produce("oc", [(b"q1", b'{"event_id": "q1"}')])  # outcome without decision

    sc = await start(sidecar, broker, kafka_dead_letter_topic="dlq", kafka_max_message_bytes=2048)
    await wait_for(lambda: _at_least(sc, n), f"{n} comparisons")
    store = sc.pipeline.store
    await wait_for(
        lambda: _count_is(store.count("dead_letters"), len(poison) + 1), "eight dead letters"
    )
    letters = await store.dead_letters(limit=100)
    by_location = {str(d["location"]): d for d in letters}
    for key, _, says in poison:
        found = [d for d in letters if says in str(d["reason"])]
        assert len(found) == 1, f"want one dead letter for {key!r} saying {says!r}: {letters}"
        assert str(found[0]["location"]).startswith("ev[")
        # Reasons speak of messages, never of HTTP bodies or content types.
        assert "ndjson" not in str(found[0]["reason"])
        assert "body" not in str(found[0]["reason"])
    assert any(loc.startswith("oc[") for loc in by_location)
    assert observed(await sc.agreement()) == expected(range(n))

    copies = await _read_topic(broker, "dlq", len(poison) + 1)
    reasons = {m.key: dict(m.headers)["shadow-reason"].decode() for m in copies}
    assert "does not match event_id" in reasons[b"not-p6"]
    assert dict(copies[0].headers)["shadow-topic"] in (b"ev", b"oc")
    m = await sc.metrics()
    total = sum(v for (name, labels), v in m.items() if name == "shadow_dead_letters_total")
    assert total == len(poison) + 1
    assert metric(m, "shadow_kafka_published_total", stream="dead_letters") == len(poison) + 1


async def test_refused_records_are_counted_once_each_under_their_code(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 1, "oc": 1})
    ok = crash_agent.event(1)
    two_bad_fields = {"event_id": "k2", "task_type": 7, "payload": "x"}
    await broker.produce(
        "ev",
        [
            (b"k1", json.dumps({**ok, "event_id": "k1"}).encode()),
            (b"k2", json.dumps(two_bad_fields).encode()),
            (b"k3", json.dumps({**ok, "event_id": "k3", "segment": "s" * 300}).encode()),
            (b"k4", b"\xff not UTF-8"),
        ],
    )
    sc = await start(sidecar, broker)
    store = sc.pipeline.store
    await wait_for(lambda: _count_is(store.count("dead_letters"), 3), "three dead letters")
    m = await sc.metrics()

    def count(name: str, **labels: str) -> float:
        return metric(m, name, **labels) or 0

    rejected = "shadow_ingest_rejected_total"
    assert count(rejected, kind="event", source="kafka", reason="invalid") == 2
    assert count(rejected, kind="event", source="kafka", reason="encoding") == 1
    # "segment: too long" is an invalid record, not a message too large.
    assert count("shadow_dead_letters_total", source="kafka", reason="invalid") == 2
    assert count("shadow_dead_letters_total", source="kafka", reason="too_large") == 0


async def _count_is(value: Any, want: int) -> bool:
    return int(await value) == want


async def _read_topic(broker: Broker, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    try:
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                out.extend(messages)
            if len(out) >= count:
                break
    finally:
        await consumer.stop()
    return out


# -- topology -----------------------------------------------------------------------------------


async def test_co_partitioning_mismatch_is_refused_at_start(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 3, "oc": 2})
    with pytest.raises(ConfigError) as info:
        await start(sidecar, broker)
    message = str(info.value)
    assert "not co-partitioned" in message
    assert "'ev' has 3 partitions" in message
    assert "'oc' has 2" in message


async def test_missing_topic_is_refused_at_start(broker: Broker, sidecar: SidecarFactory) -> None:
    await broker.create_topics({"ev": 2})
    with pytest.raises(ConfigError, match="outcomes topic 'oc' does not exist"):
        await start(sidecar, broker)


# -- broker restart ----------------------------------------------------------------------------


async def test_broker_restart_makes_it_unready_then_it_recovers(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    """tansu keeps everything in memory: a restart forgets topics, records and committed
    offsets. So the test recreates the topics and sends the second half after the restart;
    what it checks is that the sidecar notices (not ready), reconnects by itself, rejoins
    its group and consumes the new records, with the first half already durable."""
    first, second = range(150), range(150, 300)
    await broker.create_topics({"ev": 2, "oc": 2})
    sc = await start(sidecar, broker)
    await broker.produce_json("ev", [crash_agent.event(i) for i in first])
    await broker.produce_json("oc", [crash_agent.outcome(i) for i in first])
    await wait_for(lambda: _at_least(sc, len(first)), "the first half compared")

    broker.kill()
    await wait_for(lambda: _status_is(sc, "/readyz", 503), "/readyz 503 while the broker is down")
    res = await sc.get("/readyz")
    assert "Kafka" in res.body["error"]
    assert metric(await sc.metrics(), "shadow_kafka_connected") == 0
    assert (await sc.get("/healthz")).status == 200

    await broker.start()
    await broker.create_topics({"ev": 2, "oc": 2})
    await wait_for(lambda: _status_is(sc, "/readyz", 200), "/readyz 200 after the restart")
    await broker.produce_json("ev", [crash_agent.event(i) for i in second])
    await broker.produce_json("oc", [crash_agent.outcome(i) for i in second])
    await wait_for(lambda: _at_least(sc, 300), "the second half compared")
    await sc.pipeline.drain()
    assert observed(await sc.agreement()) == expected(range(300))
    assert await sc.pipeline.store.count("comparisons") == 300


async def _status_is(sc: Sidecar, path: str, status: int) -> bool:
    return (await sc.get(path)).status == status


# -- backpressure -------------------------------------------------------------------------------


async def test_backpressure_pauses_partitions_and_bounds_the_stored_backlog(
    broker: Broker, sidecar: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, pause, resume, batch = 400, 60, 20, 25
    monkeypatch.setenv("CRASH_AGENT_DELAY", "0.01")  # read by the test agent only
    await broker.create_topics({"ev": 2, "oc": 2})
    await broker.produce_json("ev", [crash_agent.event(i) for i in range(n)])
    await broker.produce_json("oc", [crash_agent.outcome(i) for i in range(n)])
    sc = await start(
        sidecar,
        broker,
        agent_concurrency=2,
        batch_size=batch,
        kafka_pause_backlog=pause,
        kafka_resume_backlog=resume,
    )
    store = sc.pipeline.store
    most, paused_seen, lag_seen = 0, False, 0.0
    while await comparisons(sc) < n:
        most = max(most, (await store.pending())["awaiting_agent"])
        m = await sc.metrics()
        if metric(m, "shadow_kafka_paused") == 1:
            paused_seen = True
            lag_seen = max(
                lag_seen,
                *(
                    metric(m, "shadow_kafka_consumer_lag_messages", topic="ev", partition=p) or 0
                    for p in ("0", "1")
                ),
            )
        await _sleep()
    assert paused_seen
    assert lag_seen > 0
    assert most < pause + batch
    assert observed(await sc.agreement()) == expected(range(n))
    await wait_for(lambda: _paused_is(sc, 0), "resumed at the end")


async def _paused_is(sc: Sidecar, value: int) -> bool:
    return metric(await sc.metrics(), "shadow_kafka_paused") == value


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.02)


_ = BrokerFactory  # re-exported fixture type for the replica tests


# -- settings -----------------------------------------------------------------------------------


def test_sasl_needs_a_mechanism_and_a_user() -> None:
    from shadow.config import Settings
    from shadow.sources.kafka import client_options

    sasl: dict[str, Any] = {"kafka_security_protocol": "SASL_SSL"}
    settings = Settings(**sasl)
    with pytest.raises(ConfigError, match="needs kafka_sasl_mechanism and kafka_sasl_username"):
        client_options(settings, "h:1")
    values: dict[str, Any] = {
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "shadow",
        "kafka_sasl_password": "pw",
        "kafka_client_id": "sidecar-7",
    }
    ok = Settings(**values)
    opts = client_options(ok, "a:1,b:2")
    assert opts["bootstrap_servers"] == ["a:1", "b:2"]
    assert (opts["sasl_mechanism"], opts["sasl_plain_password"]) == ("SCRAM-SHA-256", "pw")
    assert opts["client_id"] == "sidecar-7"


async def test_replica_role_needs_a_comparisons_topic(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 1, "oc": 1})
    with pytest.raises(ConfigError, match="kafka_role=replica needs kafka_comparisons_topic"):
        await start(sidecar, broker, kafka_role="replica")


async def test_promoter_dead_letters_an_unreadable_comparison(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 1, "oc": 1, "cmp": 1})
    await broker.produce("cmp", [(b"x", b'{"event_id": "x"}'), (b"y", b"\xff")])
    sc = await start(sidecar, broker, kafka_role="promoter", kafka_comparisons_topic="cmp")
    store = sc.pipeline.store
    await wait_for(lambda: _count_is(store.count("dead_letters"), 2), "two dead letters")
    letters = await store.dead_letters()
    assert {d["kind"] for d in letters} == {"comparison"}
    assert {d["location"] for d in letters} == {"cmp[0]@0", "cmp[0]@1"}
    assert any("KeyError" in d["reason"] for d in letters)
    assert await store.count("comparisons") == 0


@pytest.mark.parametrize("bad", [-0.5, 61.0, "soon"])
def test_a_commit_interval_out_of_range_is_refused(bad: object) -> None:
    from pydantic import ValidationError

    from shadow.config import Settings

    values: dict[str, Any] = {"kafka_commit_interval": bad}
    with pytest.raises(ValidationError, match="kafka_commit_interval"):
        Settings(**values)
    values["kafka_commit_interval"] = 0
    assert Settings(**values).kafka_commit_interval == 0
