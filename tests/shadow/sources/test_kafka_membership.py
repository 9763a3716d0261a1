"""Group membership of the Kafka source against a real tansu broker, through the real app
(:func:`shadow.app.build_app` under an ``AppRunner``, closed and started again as a restart
of ``shadow run`` would): not ready until the group assigned the partitions, the lag
gauges there from the start, and a restart that does not wait for the old member's
session to expire, because the member left the group on shutdown (dynamic, the default) or
comes back as the same static member (``kafka_group_instance_id``). What is asserted is the
mechanism, read from the broker (DescribeGroups), not how long anything took."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from shadow.app import build_app
from shadow.config import Settings
from shadow.policy import parse_policy
from tests.conftest import wait_for
from tests.kafka_broker import Broker
from tests.shadow import crash_agent
from tests.shadow.conftest import Sidecar, clean_settings, metric
from tests.shadow.sources.kafka_data import POLICY

GROUP = "g"
PARTS = [(t, str(p)) for t in ("ev", "oc") for p in range(2)]


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Sidecar]:
    """The real app on 127.0.0.1:0; leaving the block shuts it down as ``shadow run``
    does (the source's final commit, then its consumer stops)."""
    policy = parse_policy(POLICY)
    app = build_app(settings, policy=policy, registry=CollectorRegistry())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()  # the store, the pipeline and the Kafka source are started
    session = aiohttp.ClientSession()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield Sidecar(url, app, settings, session, policy)
    finally:
        await session.close()
        await runner.cleanup()


async def members(broker: Broker) -> list[str]:
    """The member ids the broker's coordinator holds for the group."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([GROUP])
    finally:
        await admin.close()
    [group] = response.to_object()["groups"]
    return sorted(str(m["member_id"]) for m in group["members"])


async def ready(sc: Sidecar) -> bool:
    return (await sc.get("/readyz")).status == 200


def settings_for(broker: Broker, tmp_path: Path, **extra: Any) -> Settings:
    return clean_settings(
        tmp_path,
        "member",
        source=[f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group={GROUP}"],
        kafka_health_interval=0.2,
        **extra,
    )


async def test_not_ready_until_assigned_with_lag_from_the_start_and_it_leaves_on_shutdown(
    broker: Broker, tmp_path: Path, no_shadow_env: None
) -> None:
    await broker.create_topics({"ev": 2, "oc": 2})
    await broker.produce_json("ev", [crash_agent.event(i) for i in range(40)])  # a backlog
    settings = settings_for(broker, tmp_path)
    async with serving(settings) as sc:
        # Started and connected, but the group has not assigned anything yet.
        res = await sc.get("/readyz")
        assert res.status == 503, res.body
        assert f"waiting for partition assignment of group '{GROUP}'" in res.body["error"]
        m = await sc.metrics()
        for topic, partition in PARTS:
            labels = {"topic": topic, "partition": partition}
            assert metric(m, "shadow_kafka_uncommitted_messages", **labels) == 0
            assert metric(m, "shadow_kafka_consumer_lag_messages", **labels) is not None
        backlog = sum(
            metric(m, "shadow_kafka_consumer_lag_messages", topic="ev", partition=p) or 0
            for p in ("0", "1")
        )
        assert backlog > 0  # the group's backlog is visible before the assignment

        await wait_for(lambda: ready(sc), "ready once the partitions are assigned")
        [first] = await members(broker)

    # Shut down: the member left the group, so nobody holds the partitions now and a
    # restart need not wait for the old member's session to expire.
    assert await members(broker) == []

    async with serving(settings) as sc:
        assert (await sc.get("/readyz")).status == 503
        await wait_for(lambda: ready(sc), "ready again after the restart")
        [second] = await members(broker)
        assert second != first  # a new dynamic member, alone in the group

        async def every_partition_owned() -> bool:
            m = await sc.metrics()
            return all(
                metric(m, "shadow_kafka_consumer_lag_messages", topic=t, partition=p) == 0
                for t, p in PARTS
            )

        await wait_for(every_partition_owned, "the restarted member to read every partition")


async def test_a_static_member_keeps_its_place_across_a_restart(
    broker: Broker, tmp_path: Path, no_shadow_env: None
) -> None:
    await broker.create_topics({"ev": 2, "oc": 2})
    settings = settings_for(broker, tmp_path, kafka_group_instance_id="shadow-0")
    async with serving(settings) as sc:
        await wait_for(lambda: ready(sc), "ready once the partitions are assigned")
        [first] = await members(broker)
        assert first.startswith("shadow-0")

    # A static member does not leave: the coordinator keeps its place (and its partitions)
    # for the session timeout, waiting for it to come back.
    assert await members(broker) == [first]

    async with serving(settings) as sc:
        await wait_for(lambda: ready(sc), "ready again after the restart")
        # The same member took its place back: no second member, no expired session.
        assert await members(broker) == [first]


async def test_a_sidecar_whose_broker_died_shuts_down_cleanly(
    broker: Broker, tmp_path: Path, caplog: Any
) -> None:
    """With the broker gone, aiokafka's consumer re-raises the cancellation of its own
    fetch task out of ``stop()``; the shutdown must finish anyway (and close the store),
    not end with a CancelledError."""
    await broker.create_topics({"ev": 2, "oc": 2})
    settings = settings_for(broker, tmp_path)
    async with serving(settings) as sc:
        await wait_for(lambda: ready(sc), "the sidecar ready")
        broker.kill()
    # Leaving the block ran the whole shutdown; the store is closed and can be opened again.
    from shadow.store import Store

    async with Store(settings.db) as store:
        assert await store.schema_version() > 0
