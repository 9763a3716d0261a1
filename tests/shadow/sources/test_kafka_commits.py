"""Held-back commits against a real tansu broker: each partition is committed only up to its
oldest open join, and its commit moves on as joins complete or expire, also when nothing new
arrives on it."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE
from shadow.app import build_app
from shadow.config import load_settings
from shadow.errors import ConfigError
from shadow.model import Comparison, Verdict
from shadow.policy import parse_policy
from shadow.sources.publish import ComparisonFollower, comparison_json
from shadow.store import Store
from tests.conftest import FakeClock, wait_for
from tests.kafka_broker import Broker
from tests.shadow import crash_agent
from tests.shadow.conftest import Sidecar, SidecarFactory, clean_settings, metric
from tests.shadow.sources.conftest import BrokerFactory
from tests.shadow.sources.kafka_data import AGENT_SPEC, POLICY, expected, observed

EV, OC = TopicPartition("ev", 0), TopicPartition("oc", 0)


async def committed(broker: Broker, group: str) -> dict[str, int | None]:
    """The group's committed offset of each topic's partition 0 (``None``: none yet)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {tp.topic: await consumer.committed(tp) for tp in (EV, OC)}
    finally:
        await consumer.stop()


async def held(sc: Sidecar) -> list[str]:
    ttl = timedelta(seconds=sc.pipeline.settings.join_ttl)
    return await sc.pipeline.store.held_event_ids(cutoff=sc.pipeline.clock() - ttl)


async def test_a_partition_is_committed_as_its_joins_close_without_new_records(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 1, "oc": 1})
    sc = await sidecar(
        policy=POLICY,
        agent=AGENT_SPEC,
        source=[f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group=g"],
        kafka_health_interval=0.2,
        batch_size=50,
    )
    store = sc.pipeline.store
    await broker.produce_json("ev", [crash_agent.event(i) for i in range(20)])

    async def answered() -> bool:
        return await store.count("decisions") == 20

    await wait_for(answered, "the agent to answer all 20 events")
    # Every event awaits its outcome: nothing of the events partition is committed.
    assert await committed(broker, "g") == {"ev": None, "oc": None}
    assert len(await held(sc)) == 20

    async def uncommitted(want: int) -> bool:
        m = await sc.metrics()
        held_back = metric(m, "shadow_kafka_uncommitted_messages", topic="ev", partition="0")
        unread = metric(m, "shadow_kafka_consumer_lag_messages", topic="ev", partition="0")
        return held_back == want and unread == 0

    await wait_for(lambda: uncommitted(20), "20 read but uncommitted events in the gauge")

    # Outcomes arrive on the other topic only; the events partition gets no new record, yet
    # its commit moves to its end once the joins are complete.
    await broker.produce_json("oc", [crash_agent.outcome(i) for i in range(20)])

    async def both_committed(want: dict[str, int | None]) -> bool:
        return await committed(broker, "g") == want

    await wait_for(lambda: both_committed({"ev": 20, "oc": 20}), "commits at 20 and 20")
    assert await store.count("comparisons") == 20
    assert await held(sc) == []
    await wait_for(lambda: uncommitted(0), "the uncommitted gauge back at 0")

    # Five more events without outcomes hold the events partition at offset 20 ...
    await broker.produce_json("ev", [crash_agent.event(i) for i in range(20, 25)])

    async def answered_all() -> bool:
        return await store.count("decisions") == 25

    await wait_for(answered_all, "the agent to answer the five new events")
    assert await committed(broker, "g") == {"ev": 20, "oc": 20}
    # ... until they expire (the TTL passed): then it moves to the end, again without traffic.
    assert await sc.pipeline.joiner.expire(timedelta(0)) == (5, 0)
    await wait_for(lambda: both_committed({"ev": 25, "oc": 20}), "the commit past expired joins")
    assert await held(sc) == []
    assert observed(await sc.agreement()) == expected(range(20))


async def test_sources_on_two_clusters_with_the_same_topic_names_keep_their_own_commits(
    broker_factory: BrokerFactory, sidecar: SidecarFactory
) -> None:
    """Two ``kafka://`` sources, same topic and group names, different clusters: each
    partition's commit follows only its own cluster's joins. Cluster A's joins all
    complete, so A commits to its end; cluster B's events never get an outcome, so B stays
    held at its first one (positions are keyed by source, schema v5)."""
    a, b = await broker_factory(), await broker_factory()
    for broker in (a, b):
        await broker.create_topics({"ev": 1, "oc": 1})
    sc = await sidecar(
        policy=POLICY,
        agent=AGENT_SPEC,
        source=[f"kafka://{x.bootstrap}?events=ev&outcomes=oc&group=g" for x in (a, b)],
        kafka_health_interval=0.2,
        kafka_commit_interval=0.2,
        batch_size=50,
    )
    await b.produce_json("ev", [crash_agent.event(i) for i in range(1000, 1010)])
    await a.produce_json("ev", [crash_agent.event(i) for i in range(40)])
    await a.produce_json("oc", [crash_agent.outcome(i) for i in range(40)])
    store = sc.pipeline.store

    async def settled() -> bool:
        return (
            await store.count("comparisons") == 40
            and await store.count("decisions") == 50
            and await committed(a, "g") == {"ev": 40, "oc": 40}
        )

    await wait_for(settled, "cluster A's commits at its end")
    assert await committed(b, "g") == {"ev": None, "oc": None}
    assert len(await held(sc)) == 10  # B's ten events, awaiting their outcomes


async def run_with_a_long_interval(
    broker: Broker,
    tmp_path: Path,
    *,
    n: int,
    batch_size: int,
    until: Callable[[Store], Awaitable[bool]],
    what: str,
    agent: str | None = AGENT_SPEC,
) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """``n`` events then their outcomes through one source with ``kafka_commit_interval``
    = 60 s (the real app, :func:`shadow.app.build_app`): the group's committed
    offsets once ``until(store)`` holds (polled for at most 30 s, half the interval), and
    after the source closed."""

    await broker.create_topics({"ev": 1, "oc": 1})
    await broker.produce_json("ev", [crash_agent.event(i) for i in range(n)])
    await broker.produce_json("oc", [crash_agent.outcome(i) for i in range(n)])
    settings = clean_settings(
        tmp_path,
        "interval",
        agent=agent,
        source=[f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group=g"],
        batch_size=batch_size,
        kafka_commit_interval=60.0,
    )
    app = build_app(
        settings, policy=parse_policy(POLICY), registry=CollectorRegistry(), clock=FakeClock()
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # the store, the pipeline and the Kafka source, as `shadow run`
    try:
        store = app[PIPELINE].store
        await wait_for(lambda: until(store), what, tries=600)
        early = await committed(broker, "g")
    finally:
        await runner.cleanup()  # closes the source: its final commit
    return early, await committed(broker, "g")


async def test_commits_wait_for_the_commit_interval_and_shutdown_commits_everything(
    broker: Broker, tmp_path: Path, no_shadow_env: None
) -> None:
    """With a long ``kafka_commit_interval``, batches after the first are stored and
    compared but not committed (no commit is due; 400 records stay under the ten batches'
    worth of positions that force one); closing the source commits all of it."""

    async def compared(store: Store) -> bool:
        return await store.count("comparisons") == 200

    early, final = await run_with_a_long_interval(
        broker, tmp_path, n=200, batch_size=50, until=compared, what="all 200 comparisons"
    )
    # The first batch's commit was due at once (its joins were still open).
    assert all(v is None or v <= 50 for v in early.values()), early
    assert final == {"ev": 200, "oc": 200}


async def test_ten_batches_of_positions_make_a_commit_due_before_the_interval(
    broker: Broker, tmp_path: Path, no_shadow_env: None
) -> None:
    """Positions wait in memory until the next commit; ten batches' worth (here 100) makes
    one due even within a long interval, so memory stays bounded and commits move on.
    Without an agent every stored event closes at once (nothing to wait for), so the
    events partition commits as far as was delivered at each forced commit."""

    async def events_committed(store: Store) -> bool:
        # By the third forced commit (~310 of the 400 records), at least 110 were events.
        return ((await committed(broker, "g"))["ev"] or 0) >= 100

    early, final = await run_with_a_long_interval(
        broker,
        tmp_path,
        n=200,
        batch_size=10,
        until=events_committed,
        what="forced commits of the events partition before the 60 s interval",
        agent=None,
    )
    assert (early["ev"] or 0) >= 100  # the first batch alone would commit at most 10
    assert (final["ev"] or 0) >= (early["ev"] or 0)  # closing commits what it has, never less


async def test_the_promoter_never_lets_an_expired_verdict_replace_a_real_one(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    """After a rebalance the old owner of a partition may expire a join that the new owner
    completed, and publish that 'expired' verdict before or after the real one. The promoter
    keeps the real verdict either way (in one fetched batch or across batches), and a real
    verdict replaces an 'expired' one."""
    await broker.create_topics({"ev": 1, "oc": 1, "cmp": 1})
    sc = await sidecar(
        policy=POLICY,
        source=[f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group=g"],
        kafka_role="promoter",
        kafka_comparisons_topic="cmp",
        kafka_health_interval=0.2,
    )
    store = sc.pipeline.store
    task, version = "refund_request", crash_agent.AGENT_VERSION

    def record(eid: str, verdict: Verdict, critical: bool = False) -> dict[str, Any]:
        digest = None if verdict is Verdict.EXPIRED else f"h-{eid}"
        return comparison_json(Comparison(eid, task, version, verdict, (), critical, digest))

    async def folded(n: int) -> bool:
        return await store.count("comparisons") == n

    # x: real first, expired later (another batch); y: expired first, real later.
    await broker.produce_json("cmp", [record("x", Verdict.AGREE), record("y", Verdict.EXPIRED)])
    await wait_for(lambda: folded(2), "the first two comparisons folded")
    # w: real then expired in one batch; z: only expired.
    await broker.produce_json(
        "cmp",
        [
            record("x", Verdict.EXPIRED),
            record("y", Verdict.DISAGREE, critical=True),
            record("w", Verdict.AGREE),
            record("w", Verdict.EXPIRED),
            record("z", Verdict.EXPIRED),
        ],
    )
    await wait_for(lambda: folded(4), "all four keys folded")

    async def settled() -> bool:
        evidence = (await store.evidence()).get(task, {}).get(version)
        return evidence is not None and evidence.n == 3

    await wait_for(settled, "the promoter's evidence to hold x, y and w")
    evidence = (await store.evidence())[task][version]
    assert (evidence.n, evidence.agree, evidence.critical, evidence.errors) == (3, 2, 1, 0)
    # what was folded is marked published: the promoter echoes nothing back
    assert await store.unpublished_comparisons(limit=10) == []

    # A record that is not a comparison is a dead letter, shown as text like any other
    # Kafka dead letter, and folding goes on.
    await broker.produce("cmp", [(b"v", b'{"event_id": "v"}'), (b"bad", b"\xffnot json")])
    await broker.produce_json("cmp", [record("u", Verdict.AGREE)])
    await wait_for(lambda: folded(5), "the comparison after the poison folded")
    letters = {str(d["raw"]): d for d in await store.dead_letters(limit=10)}
    assert set(letters) == {'{"event_id": "v"}', "\\xffnot json"}
    for d in letters.values():
        assert d["source"] == "kafka:cmp"
        assert d["kind"] == "comparison"
        assert str(d["location"]).startswith("cmp[0]@")
        assert str(d["reason"]).startswith("invalid comparison record: ")


async def test_a_promoter_that_cannot_reach_the_broker_says_so_and_leaks_no_consumer(
    tmp_path: Path,
) -> None:
    """The promoter's comparisons reader fails start-up with one clear line and stops the
    consumer it created (aiokafka warns about an unclosed one when it is collected)."""
    settings = load_settings(
        db=str(tmp_path / "p.duckdb"), config=None, kafka_comparisons_topic="cmp"
    )
    nothing = cast(Any, None)
    follower = ComparisonFollower(
        settings,
        "127.0.0.1:1",
        "grp",
        ladder=nothing,
        store=nothing,
        intake=nothing,
        clock=nothing,
        evaluate=nothing,
    )
    with pytest.raises(ConfigError, match=r"promoter kafka://127\.0\.0\.1:1: cannot reach"):
        await follower.start()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in seen if "Unclosed AIOKafkaConsumer" in str(w.message)]
