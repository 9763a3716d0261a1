"""The autonomy topic is a change feed of the ladder, against a real tansu broker through
the real app: every change (automatic promotions and demotions, operators' moves through
the API and the registry, freezes) is one record, in order, carrying the audit id of the
audit-log row that recorded it and its from/to levels; changes made while the broker is
away are published once it is back, in order (the store's outbox)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shadow.model import Level
from tests.conftest import wait_for
from tests.kafka_broker import Broker, free_port
from tests.kafka_proxy import BrokerProxy
from tests.shadow.conftest import Sidecar, SidecarFactory, clean_settings, metric
from tests.shadow.sources.conftest import require_broker
from tests.shadow.sources.kafka_data import AGENT_SPEC, POLICY, shuffled_with_duplicates
from tests.shadow.sources.test_kafka_membership import serving
from tests.shadow.sources.test_kafka_replicas import read_all, settle, source

TASKS = ("refund_request", "ticket_routing")
Change = tuple[int, str, str, str, str]  # audit id, task type, action, from, to


async def records(broker: Broker, want: int, *, rounds: int = 300) -> list[dict[str, Any]]:
    return [json.loads(m.value) for m in await read_all(broker, "aut", want, rounds=rounds)]


def changes(recs: list[dict[str, Any]]) -> list[Change]:
    """The change records of the topic, in topic order (snapshots have no audit id)."""
    return [
        (r["audit_id"], r["task_type"], r["action"], r["from_level"], r["to_level"])
        for r in recs
        if r.get("audit_id") is not None
    ]


async def audited(sc: Sidecar, *, after: int = 0) -> list[Change]:
    """The sidecar's ladder changes from its audit log, oldest first."""
    return [
        (i, e.task_type, e.action, str(e.from_level), str(e.to_level))
        for i, e in sorted(await sc.pipeline.store.audit_log(limit=10_000))
        if e.to_level is not None and i > after
    ]


def assert_in_order(got: list[Change]) -> None:
    ids = [c[0] for c in got]
    assert ids == sorted(set(ids)), f"audit ids not strictly increasing: {ids}"


async def test_every_change_reaches_the_autonomy_topic_in_order_with_its_audit_id(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    n = 300
    await broker.create_topics({"ev": 3, "oc": 3, "aut": 1}, compact=["aut"])
    sc = await sidecar(
        policy=POLICY,
        agent=AGENT_SPEC,
        source=[source(broker, "g")],
        kafka_autonomy_topic="aut",
        kafka_health_interval=0.2,
        batch_size=50,
    )
    # Automatic promotions, one level per decision, decided as the comparisons come in.
    events, outcomes = shuffled_with_duplicates(range(n), seed=3)
    await broker.produce_json("ev", events)
    await broker.produce_json("oc", outcomes)

    async def compared() -> bool:
        return await sc.pipeline.store.count("comparisons") >= n

    await wait_for(compared, f"{n} comparisons", tries=2400)
    await sc.pipeline.drain()
    assert await settle(sc) == {"refund_request": "L1", "ticket_routing": "L2"}

    # Operators' moves in quick succession, each followed by the ladder's own reaction
    # (the API re-decides at once: L3 with critical misses is demoted again).
    for level, why in (("L2", "pilot"), ("L3", "pilot, week 2")):
        res = await sc.put(
            "/v1/autonomy/refund_request",
            json_body={"level": level, "reason": why},
            headers=sc.admin,
        )
        assert res.status == 200, res.body
    registry = sc.pipeline.ladder
    await registry.set_level("ticket_routing", Level.L1, actor="ops/cli", reason="hold")
    await sc.pipeline.evaluate()
    assert (await sc.post("/v1/freeze", json_body={}, headers=sc.admin)).status == 200
    assert (await sc.post("/v1/unfreeze", json_body={}, headers=sc.admin)).status == 200
    final = await settle(sc)

    want = await audited(sc)
    actions = {c[2] for c in want}
    assert {"promote", "manual_set", "freeze", "unfreeze"} <= actions, actions
    assert len(want) >= 12

    async def all_published() -> bool:
        return len(changes(await records(broker, len(want)))) >= len(want)

    await wait_for(all_published, f"all {len(want)} changes on the autonomy topic")
    recs = await records(broker, len(want))
    got = changes(recs)
    assert got == want  # every step, in the order decided, none twice
    assert_in_order(got)
    for r in recs:
        if r.get("audit_id") is not None:
            assert r["level"] == r["to_level"]
            assert r["reason"].startswith(f"{r['action']} by {r['actor']}: ")
    # Consecutive steps of a task type chain: each starts where the previous one ended.
    for task in TASKS:
        steps = [c for c in got if c[1] == task]
        assert all(a[4] == b[3] for a, b in itertools.pairwise(steps)), steps
    # Freeze and unfreeze: one record per task type each, the freeze flag in force after.
    frozen = {r["task_type"]: r["frozen"] for r in recs if r.get("action") == "freeze"}
    assert frozen == dict.fromkeys(TASKS, True)
    # Before any change, a snapshot of each task type's state (no audit id).
    assert {(r["task_type"], r["level"]) for r in recs if r.get("audit_id") is None} == {
        (t, "L0") for t in TASKS
    }
    # What compaction keeps, the latest record per task type, is the current level.
    latest = {r["task_type"]: r["level"] for r in recs}
    assert latest == final
    m = await sc.metrics()
    assert metric(m, "shadow_kafka_published_total", stream="autonomy") == len(recs)


# Its own wait for the outage's changes (2400 tries of 0.05 s) is the bound, not the
# per-test default: on a loaded 2-core machine the broker's restart and the producer's
# reconnect alone can take most of two minutes.
@pytest.fixture
async def partitioned(tmp_path: Path) -> AsyncIterator[tuple[Broker, BrokerProxy]]:
    """A broker whose clients all go through a :class:`BrokerProxy` that can cut them off
    (a network partition) while the broker keeps its topics."""
    port = free_port()
    proxy = BrokerProxy(port)
    await proxy.start()
    broker = Broker(require_broker(), tmp_path / "tansu.log", port, advertised_port=proxy.port)
    try:
        await broker.start()
        yield broker, proxy
    finally:
        await broker.stop()
        await proxy.stop()


@pytest.mark.timeout(300)
async def test_changes_made_while_the_broker_is_away_are_published_in_order_once_it_is_back(
    partitioned: tuple[Broker, BrokerProxy], sidecar: SidecarFactory
) -> None:
    """The broker goes away (every connection to it closed, new ones refused) while the
    ladder moves: the changes stay queued in the store and then reach the topic, every one,
    in order. (A partition rather than a restart: a restarted memory broker forgets its
    topics and acknowledges the records sent to them before the test can create them again,
    so it would lose what a real broker keeps on disk.)"""
    broker, proxy = partitioned
    await broker.create_topics({"ev": 1, "oc": 1, "aut": 1}, compact=["aut"])
    sc = await sidecar(
        policy=POLICY,
        source=[source(broker, "g")],
        kafka_autonomy_topic="aut",
        kafka_health_interval=0.2,
    )
    res = await sc.put("/v1/autonomy/refund_request", json_body={"level": "L1"}, headers=sc.admin)
    assert res.status == 200, res.body
    before = await audited(sc)

    async def published_before() -> bool:
        return changes(await records(broker, 3, rounds=10)) == before

    await wait_for(published_before, "the first change on the topic")
    last = before[-1][0]

    await proxy.cut()
    try:
        await wait_for(lambda: not_ready(sc), "/readyz not ready while the broker is away")
        moves = (("refund_request", "L2"), ("refund_request", "L3"), ("ticket_routing", "L1"))
        for task, level in moves:
            res = await sc.put(f"/v1/autonomy/{task}", json_body={"level": level}, headers=sc.admin)
            assert res.status == 200, res.body
        assert (await sc.post("/v1/freeze", json_body={}, headers=sc.admin)).status == 200
        during = await audited(sc, after=last)
        assert len(during) >= 5
        queued = [a for a, _ in await sc.pipeline.store.unpublished_changes() if a > last]
        assert queued == [c[0] for c in during]  # kept in the store
    finally:
        proxy.mend()

    async def published_after() -> bool:
        got = changes(await records(broker, len(before) + len(during), rounds=10))
        return len([c for c in got if c[0] > last]) >= len(during)

    await wait_for(published_after, "the outage's changes on the topic", tries=2400)
    got = [c for c in changes(await records(broker, len(before) + len(during))) if c[0] > last]
    assert got == during
    assert_in_order(got)
    assert await sc.pipeline.store.unpublished_changes() == []


async def not_ready(sc: Sidecar) -> bool:
    return (await sc.get("/readyz")).status == 503


async def test_a_restart_publishes_what_was_queued_then_repeats_each_latest_change(
    broker: Broker, tmp_path: Path, no_shadow_env: None
) -> None:
    """Changes still queued when the process stops (the broker was away) are published by
    the next start, in order, before each task type's latest change is sent again with the
    same audit id (readers skip it; a recreated topic learns every level)."""
    await broker.create_topics({"ev": 1, "oc": 1, "aut": 1}, compact=["aut"])
    settings = clean_settings(
        tmp_path,
        "restart",
        source=[source(broker, "g")],
        kafka_autonomy_topic="aut",
        kafka_health_interval=0.2,
    )
    async with serving(settings) as sc:
        res = await sc.put(
            "/v1/autonomy/refund_request", json_body={"level": "L1"}, headers=sc.admin
        )
        assert res.status == 200, res.body
        first = await audited(sc)

        async def published() -> bool:
            return changes(await records(broker, 3)) == first

        await wait_for(published, "the first change on the topic")
        broker.kill()
        for task, level in (("refund_request", "L2"), ("ticket_routing", "L1")):
            res = await sc.put(f"/v1/autonomy/{task}", json_body={"level": level}, headers=sc.admin)
            assert res.status == 200, res.body
        queued = await audited(sc, after=first[-1][0])
        assert [a for a, _ in await sc.pipeline.store.unpublished_changes()] == [
            c[0] for c in queued
        ]

    await broker.start()  # memory storage: an empty broker, the topic created again
    await broker.create_topics({"ev": 1, "oc": 1, "aut": 1}, compact=["aut"])
    async with serving(settings) as sc:
        latest = {c[1]: c for c in first + queued}  # per task type, the last one
        again = sorted(latest.values())
        want = queued + again

        async def all_sent() -> bool:
            return len(changes(await records(broker, len(want)))) >= len(want)

        await wait_for(all_sent, "the queued changes, then each latest change again")
        assert changes(await records(broker, len(want))) == want
        assert await sc.pipeline.store.unpublished_changes() == []
