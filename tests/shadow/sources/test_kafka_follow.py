"""Replicas follow the promoter's levels from the compacted autonomy topic.

A promoter (``kafka_role=promoter``) and a replica (``kafka_role=replica``) share one
consumer group on a real tansu broker; the replica's :class:`~shadow.sources.follow.
AutonomyFollower` applies every record of the autonomy topic to its own ladder, so its
``/v1/route``, ``/v1/autonomy`` and ``/v1/agreement`` answer the promoter's levels. Checked:
evidence-driven promotions, manual sets, freeze and unfreeze reach the replica; a replica
started later is ready only once it shows the levels; stale, repeated and poison records do
not move the replica's ladder; writes to a replica's autonomy API are refused.
"""

from __future__ import annotations

import json
from typing import Any

from shadow.sources.follow import FOLLOW_ACTOR
from tests.conftest import wait_for
from tests.kafka_broker import Broker
from tests.shadow.conftest import Sidecar, SidecarFactory
from tests.shadow.sources.kafka_data import AGENT_SPEC, POLICY, shuffled_with_duplicates
from tests.shadow.sources.test_kafka_replicas import assigned, read_all, settle, source

N = 300
TASKS = ("refund_request", "ticket_routing")


def common(**extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kafka_health_interval": 0.2,
        "kafka_comparisons_topic": "cmp",
        "kafka_autonomy_topic": "aut",
        "batch_size": 200,
    }
    values.update(extra)
    return values


async def levels(sc: Sidecar) -> tuple[bool, dict[str, str]]:
    """(frozen, level per task type) from ``GET /v1/autonomy``."""
    res = await sc.get("/v1/autonomy")
    assert res.status == 200, res.body
    return res.body["frozen"], {t: v["level"] for t, v in res.body["task_types"].items()}


async def route(sc: Sidecar, task: str) -> dict[str, Any]:
    res = await sc.get(f"/v1/route/{task}?event_id=e-1", headers=sc.admin)
    assert res.status == 200, res.body
    return dict(res.body)


async def same_levels(replica: Sidecar, promoter: Sidecar, what: str) -> None:
    async def check() -> bool:
        return await levels(replica) == await levels(promoter)

    await wait_for(check, what)


async def follows(replica: Sidecar, task: str) -> list[dict[str, Any]]:
    res = await replica.get(f"/v1/autonomy/{task}/history?limit=1000")
    assert res.status == 200, res.body
    return [e for e in res.body["entries"] if e["action"] == "follow"]


async def test_a_replica_follows_promotions_sets_and_freezes(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 3, "oc": 3, "cmp": 1, "aut": 1}, compact=["aut"])
    a = await sidecar(
        policy=POLICY,
        source=[source(broker, "grp")],
        kafka_role="promoter",
        **common(agent=AGENT_SPEC),
    )
    b = await sidecar(
        policy=POLICY,
        source=[source(broker, "grp")],
        kafka_role="replica",
        **common(agent=AGENT_SPEC),
    )

    async def b_ready() -> bool:
        return (await b.get("/readyz")).status == 200

    await wait_for(b_ready, "the replica to read the (empty) autonomy topic")

    async def split() -> bool:
        return bool(await assigned(a)) and bool(await assigned(b))

    await wait_for(split, "both sidecars to own partitions")
    events, outcomes = shuffled_with_duplicates(range(N), seed=9)
    await broker.produce_json("ev", events)
    await broker.produce_json("oc", outcomes)

    async def promoter_has_all() -> bool:
        return await a.pipeline.store.count("comparisons") >= N

    await wait_for(promoter_has_all, f"the promoter to hold all {N} comparisons", tries=2400)
    await a.pipeline.drain()
    promoted = await settle(a)
    assert promoted == {"refund_request": "L1", "ticket_routing": "L2"}  # earned on evidence

    # The replica shows the promoter's levels on every read endpoint.
    await same_levels(b, a, "the replica to follow the promotions")
    for task in TASKS:
        assert (await route(b, task))["level"] == promoted[task]
    assert (await route(b, "ticket_routing"))["handler"] == "agent"
    doc = await b.agreement()
    assert {t: v["level"] for t, v in doc["task_types"].items()} == promoted
    # Its own evidence is partial; re-deciding on it never moves the followed ladder.
    assert 0 < sum(v["n"] for v in doc["task_types"].values()) < N
    assert await settle(b) == promoted
    entries = await follows(b, "refund_request")
    assert entries[0]["actor"] == FOLLOW_ACTOR
    assert entries[0]["to_level"] == "L1"
    assert "promote by promoter: gate L1 met" in entries[0]["reason"]
    assert "aut[0]@" in entries[0]["reason"]

    # Writes to the replica's autonomy API are refused: the promoter owns the levels.
    for method, path, body in (
        ("PUT", "/v1/autonomy/refund_request", {"level": "L2"}),
        ("POST", "/v1/autonomy/refund_request/approve", {}),
        ("POST", "/v1/freeze", {}),
        ("POST", "/v1/unfreeze", {}),
    ):
        res = await b.request(method, path, json_body=body, headers=b.admin)
        assert res.status == 409, (path, res.body)
        assert "autonomy levels are owned by the promoter" in res.body["error"]
    # So are the review queue's claims and verdicts: the promoter decides on its own store.
    verdicts: list[tuple[str, str, dict[str, str] | None]] = [
        ("GET", "/v1/review/next", None),
        ("POST", "/v1/review/c-any", {"verdict": "a_right", "reason": "other"}),
        ("POST", "/v1/cases/r-0/adjudication", {"verdict": "agent_right", "reason": "other"}),
    ]
    for method, path, verdict in verdicts:
        res = await b.request(method, path, json_body=verdict, headers=b.admin)
        assert res.status == 409, (path, res.body)
        assert "the review queue is the promoter's" in res.body["error"]
    assert await levels(b) == (False, promoted)

    # An operator's set on the promoter: the replica routes to the agent at L2.
    res = await a.put(
        "/v1/autonomy/refund_request",
        json_body={"level": "L2", "reason": "ops approved"},
        headers=a.admin,
    )
    assert res.status == 200, res.body

    async def b_routes_to_agent() -> bool:
        return bool((await route(b, "refund_request"))["handler"] == "agent")

    await wait_for(b_routes_to_agent, "the replica to route refund_request to the agent")
    assert "manual_set by admin: ops approved" in (await follows(b, "refund_request"))[0]["reason"]

    # Freeze on the promoter: the replica routes everything to a human.
    assert (await a.post("/v1/freeze", json_body={}, headers=a.admin)).status == 200

    async def b_frozen() -> bool:
        routes = [await route(b, task) for task in TASKS]
        return (await levels(b))[0] and all(
            r["handler"] == "human" and r["level"] == "L0" for r in routes
        )

    await wait_for(b_frozen, "the replica to follow the freeze")
    assert (await b.get("/v1/autonomy/ticket_routing")).body["frozen"] is True

    assert (await a.post("/v1/unfreeze", json_body={}, headers=a.admin)).status == 200
    await same_levels(b, a, "the replica to follow the unfreeze")
    assert (await levels(b))[0] is False

    # A replica started after all this reads the topic from the start and is ready only
    # once it shows the promoter's current levels (no agent: it only follows here).
    c = await sidecar(
        policy=POLICY, source=[source(broker, "late")], kafka_role="replica", **common()
    )

    async def c_ready() -> bool:
        return (await c.get("/readyz")).status == 200

    await wait_for(c_ready, "the late replica to become ready")
    assert await levels(c) == await levels(a)


async def test_stale_repeated_and_poison_records_do_not_move_a_replica(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 1, "oc": 1, "cmp": 1, "aut": 1}, compact=["aut"])
    a = await sidecar(
        policy=POLICY, source=[source(broker, "grp")], kafka_role="promoter", **common()
    )
    b = await sidecar(
        policy=POLICY, source=[source(broker, "grp")], kafka_role="replica", **common()
    )
    res = await a.put("/v1/autonomy/refund_request", json_body={"level": "L2"}, headers=a.admin)
    assert res.status == 200, res.body

    async def b_at_l2() -> bool:
        return (await levels(b))[1]["refund_request"] == "L2"

    await wait_for(b_at_l2, "the replica to follow L2")
    assert len(await follows(b, "refund_request")) == 1

    # The promoter's own record again (a re-delivery or a re-publish at its start), an older
    # record arriving late, and poison.
    current = [m for m in await read_all(broker, "aut", 1) if m.key == b"refund_request"][-1]
    old = json.loads(current.value) | {"level": "L0", "updated_at": "2000-01-01T00:00:00+00:00"}
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"refund_request", b"{not json"),
        (b"nope", json.dumps({"task_type": "nope", "level": "L1"}).encode()),
        (b"refund_request", json.dumps(old | {"level": "L9"}).encode()),
        (b"ticket_routing", json.dumps(old).encode()),  # key is not the task type
        (b"refund_request", b"[1, 2]"),
        (b"refund_request", json.dumps(old | {"audit_id": "seven"}).encode()),
    ]
    await broker.produce(
        "aut",
        [(current.key, current.value), (b"refund_request", json.dumps(old).encode()), *poison],
    )
    # A later change behind them all shows the follower read past them.
    res = await a.put("/v1/autonomy/ticket_routing", json_body={"level": "L1"}, headers=a.admin)
    assert res.status == 200, res.body

    async def b_saw_marker() -> bool:
        return (await levels(b))[1]["ticket_routing"] == "L1"

    await wait_for(b_saw_marker, "the replica to follow the change after the poison")
    assert (await levels(b))[1]["refund_request"] == "L2"  # not regressed
    assert len(await follows(b, "refund_request")) == 1  # the repeat changed nothing
    dead = [d for d in await b.pipeline.store.dead_letters() if d["kind"] == "autonomy"]
    reasons = sorted(d["reason"] for d in dead)
    assert len(reasons) == len(poison)
    assert all(r.startswith("invalid autonomy record: ") for r in reasons)
    joined = " | ".join(reasons)
    for says in (
        "not JSON",
        "'nope' is not in this replica's policy",
        "level:",
        "key 'ticket_routing' does not match task_type 'refund_request'",
        "expected a JSON object, got list",
        "audit_id: expected a positive integer or null, got 'seven'",
    ):
        assert says in joined, says
    assert {d["location"].split("@")[0] for d in dead} == {"aut[0]"}

    async def b_ready() -> bool:  # poison does not keep it unready (its group join may)
        return (await b.get("/readyz")).status == 200

    await wait_for(b_ready, "the replica to be ready despite the poison")


async def test_a_replica_waits_not_ready_for_a_missing_autonomy_topic(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    await broker.create_topics({"ev": 1, "oc": 1, "cmp": 1})
    b = await sidecar(
        policy=POLICY, source=[source(broker, "grp")], kafka_role="replica", **common()
    )
    res = await b.get("/readyz")
    assert res.status == 503
    assert "autonomy topic 'aut'" in res.body["error"]
    assert "does not exist yet" in res.body["error"]
    await broker.create_topics({"aut": 1}, compact=["aut"])

    async def ready() -> bool:
        return (await b.get("/readyz")).status == 200

    await wait_for(ready, "the replica to find the topic and catch up")


async def test_a_replica_applies_each_of_the_promoters_changes_once_and_in_order(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    """Changes in quick succession on the promoter each become one followed step on the
    replica, in the promoter's order, identified by the promoter's audit id; a record whose
    audit id the replica has applied is skipped even when its time is later (a replayed or
    forged record cannot move the ladder back)."""
    await broker.create_topics({"ev": 1, "oc": 1, "cmp": 1, "aut": 1}, compact=["aut"])
    a = await sidecar(
        policy=POLICY, source=[source(broker, "grp")], kafka_role="promoter", **common()
    )
    b = await sidecar(
        policy=POLICY, source=[source(broker, "grp")], kafka_role="replica", **common()
    )
    for task, level in (
        ("refund_request", "L1"),
        ("refund_request", "L2"),
        ("ticket_routing", "L2"),
        ("refund_request", "L3"),
        ("ticket_routing", "L1"),
    ):
        res = await a.put(f"/v1/autonomy/{task}", json_body={"level": level}, headers=a.admin)
        assert res.status == 200, res.body
    promoter = [
        (i, e.task_type, str(e.from_level), str(e.to_level))
        for i, e in sorted(await a.pipeline.store.audit_log(limit=1000))
        if e.to_level is not None
    ]
    assert len(promoter) >= 5

    async def replica_steps() -> list[tuple[int, str, str, str]]:
        out = []
        for _, e in sorted(await b.pipeline.store.audit_log(limit=1000)):
            if e.action == "follow":
                audit_id = int(e.reason.split("promoter audit ")[1].split(",")[0])
                out.append((audit_id, e.task_type, str(e.from_level), str(e.to_level)))
        return out

    async def followed_all() -> bool:
        return len(await replica_steps()) >= len(promoter)

    await wait_for(followed_all, "the replica to follow every change")
    assert await replica_steps() == promoter  # each change once, in order, same levels
    last = {task: i for i, task, _, _ in promoter}
    assert await b.pipeline.store.followed_audit_ids() == last
    assert await levels(b) == await levels(a)

    # The latest refund_request record again, with a much later time and another level.
    current = [m for m in await read_all(broker, "aut", 1) if m.key == b"refund_request"][-1]
    replayed = json.loads(current.value) | {
        "level": "L0",
        "updated_at": "2999-01-01T00:00:00+00:00",
    }
    await broker.produce("aut", [(b"refund_request", json.dumps(replayed).encode())])
    res = await a.put("/v1/autonomy/ticket_routing", json_body={"level": "L0"}, headers=a.admin)
    assert res.status == 200, res.body

    async def b_saw_marker() -> bool:
        return (await levels(b))[1]["ticket_routing"] == "L0"

    await wait_for(b_saw_marker, "the replica to follow the change after the replayed record")
    assert await levels(b) == await levels(a)
    assert [s for s in await replica_steps() if s[1] == "refund_request"] == [
        s for s in promoter if s[1] == "refund_request"
    ]
