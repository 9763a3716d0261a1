"""Independent evidence across the Kafka scale-out: the promoter counts as evidence exactly
the items a human decided blind, whichever member answered the item's route and whichever
compared it.

Promoter A and replica B share one group on 4 co-partitioned partitions; the task type
starts at L3 with a quarter of the items sent to a blind audit. The host routes half of each
kind of item on A, half on B (an item's route and its comparison are on different members
for about half of them), echoes the agent's decision as the outcome of agent-handled items,
and posts an independent human decision for the audited ones. Also: an outcome that claims
``blind`` for an agent-handled item, routes asked after the item's outcome (ignored by the
member and by the promoter), a batch in which the replica's labels are wrong both ways, and
malformed ``kind: handling`` records on the comparisons topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from shadow.checks import MAX_ID_LENGTH
from shadow.model import Level
from shadow.policy import parse_policy
from tests.conftest import wait_for
from tests.kafka_broker import Broker
from tests.shadow import crash_agent
from tests.shadow.conftest import Sidecar, SidecarFactory, metric
from tests.shadow.sources.kafka_data import AGENT_SPEC
from tests.shadow.sources.test_kafka_replicas import assigned, source

N = 120
PARTITIONS = 4
TASK = "refund_request"
AUDIT_RATE = 0.25


def _policy(max_critical: int) -> str:
    # The L3 gate demotes once the blind critical misses exceed max_critical (over a window
    # holding every comparison of the run); agreement and drift never move the level here.
    return f"""\
task_types:
  {TASK}:
    compare:
      fields:
        action: {{match: exact, critical: true}}
        amount: {{match: number, abs: 0.01}}
      unlisted: ignore
    autonomy:
      start: L3
      ceiling: L3
      mode: propose
      audit_rate: {AUDIT_RATE}
      drift: {{threshold: 100}}
      gates:
        L3: {{agreement: 0.05, min_samples: 1, max_critical: {max_critical},
              critical_window: 100000}}
"""


def audited(i: int) -> bool:
    policy = parse_policy(_policy(0))
    return policy.task_types[TASK].audited(crash_agent.event_id(i), Level.L3)


def event(i: int) -> dict[str, Any]:
    return {**crash_agent.event(i), "task_type": TASK}


def agent_decision(i: int) -> dict[str, Any]:
    """What the crash agent decides for item ``i`` (the host echoes it when the agent acted)."""
    verdict = crash_agent.expected_verdict(i)
    return {
        "action": "deny" if verdict == "critical" else "approve",
        "amount": crash_agent.amount(i) + (1.0 if verdict == "disagree" else 0.0),
    }


def echoed(i: int, **extra: Any) -> dict[str, Any]:
    return {**crash_agent.outcome(i), "decision": agent_decision(i), **extra}


def human(i: int, **extra: Any) -> dict[str, Any]:
    """An independent human decision (disagrees with the agent when i % 5 or i % 7 is 0)."""
    return {**crash_agent.outcome(i), **extra}


async def route(sc: Sidecar, i: int) -> str:
    res = await sc.get(f"/v1/route/{TASK}?event_id={crash_agent.event_id(i)}", headers=sc.admin)
    assert res.status == 200, res.body
    assert res.body["level"] == "L3"
    return str(res.body["handled_by"])


async def counts(sc: Sidecar) -> tuple[int, int]:
    """The promoter's evidence ``n`` and its acceptance ``agent.n`` for the task type."""
    doc = (await sc.agreement())["task_types"][TASK]
    return int(doc["n"]), int(doc["acceptance"]["agent"]["n"])


async def published_handling(sc: Sidecar) -> float:
    return metric(await sc.metrics(), "shadow_kafka_published_total", stream="handling") or 0.0


async def conflicts(sc: Sidecar) -> float:
    samples = await sc.metrics()
    return metric(samples, "shadow_handling_conflicts_total", task_type=TASK) or 0.0


def pick(items: Iterable[int], k: int) -> list[int]:
    chosen = list(items)[:k]
    assert len(chosen) == k, "too few items of a kind for the scenario"
    return chosen


async def test_the_promoter_counts_only_blind_items_wherever_routed_and_compared(
    broker: Broker, sidecar: SidecarFactory
) -> None:
    blind = {i for i in range(N) if audited(i)}
    # Every blind critical miss of the run but one, which the last batch adds (item y).
    policy = _policy(max_critical=sum(1 for i in blind if i % 7 == 0))
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
        policy=policy, source=[source(broker, "grp")], kafka_role="promoter", **common
    )
    b = await sidecar(policy=policy, source=[source(broker, "grp")], kafka_role="replica", **common)

    async def split() -> bool:
        mine, theirs = await assigned(a), await assigned(b)
        return len(mine) == len(theirs) == PARTITIONS and not mine & theirs

    await wait_for(split, "the group to split the partitions between A and B")
    on_a = {int(p) for t, p in await assigned(a) if t == "ev"}
    everywhere = list(range(PARTITIONS))

    def compared_on_a(i: int) -> bool:
        key = crash_agent.event_id(i).encode()
        return DefaultPartitioner()(key, everywhere, everywhere) in on_a

    agent_on_b = [i for i in range(N) if i not in blind and not compared_on_a(i)]
    agent_on_a = [i for i in range(N) if i not in blind and compared_on_a(i)]
    c1, c2, x = pick(agent_on_b, 3)  # c1, c2 claim blind; x is mislabelled by B (below)
    late = pick(agent_on_b[3:], 2) + pick(agent_on_a, 2)  # outcome first, route later
    y = pick((i for i in sorted(blind) if not compared_on_a(i) and i % 7 != 0), 1)[0]
    routed_by: dict[int, Sidecar] = {c1: b, c2: a, x: a, y: a}
    rest = [i for i in range(N) if i not in routed_by and i not in late]
    # Half of each kind (blind or not, compared on A or on B) routed on A, half on B.
    for kind in {(i in blind, compared_on_a(i)) for i in rest}:
        same = [i for i in rest if (i in blind, compared_on_a(i)) == kind]
        assert len(same) >= 2, kind
        for n, i in enumerate(same):
            routed_by[i] = a if n % 2 == 0 else b
    for n, i in enumerate(late):
        routed_by[i] = a if n % 2 == 0 else b

    await broker.produce_json("ev", [event(i) for i in range(N)])

    async def decided() -> bool:
        return (
            await a.pipeline.store.count("decisions") + await b.pipeline.store.count("decisions")
            == N
        )

    await wait_for(decided, "the agent to decide every event")

    # Route every item but the late ones; answers follow the audit sample.
    first = [i for i in range(N) if i not in late]
    for i in first:
        assert await route(routed_by[i], i) == ("blind" if i in blind else "agent"), i
    on_b = sum(1 for i in first if routed_by[i] is b)

    async def b_published() -> bool:
        return await published_handling(b) == on_b

    await wait_for(b_published, "B to publish its routing records")
    assert await published_handling(a) == 0  # the promoter publishes none

    async def a_knows() -> bool:
        known = await a.pipeline.store.handling_of([crash_agent.event_id(i) for i in first])
        return len(known) == len(first)

    await wait_for(a_knows, "the promoter to hold every routing record")

    # Outcomes of everything but x and y: echoes for agent-handled items (c1 and c2 claiming
    # blind), independent decisions for the audit sample; the late items are still unrouted.
    outcomes = []
    for i in range(N):
        if i in (x, y):
            continue
        if i in blind:
            outcomes.append(human(i))
        elif i in (c1, c2):
            outcomes.append(echoed(i, handled_by="blind"))
        else:
            outcomes.append(echoed(i))
    await broker.produce_json("oc", outcomes)
    blind_first = len(blind) - 1  # all but y
    agent_first = N - len(blind) - 1 - len(late)  # all but x and the late ones

    async def counted(want: tuple[int, int]) -> bool:
        return await a.pipeline.store.count("comparisons") == len(outcomes) and (
            await counts(a) == want
        )

    # The late items were never routed when compared: blind, for now.
    want = (blind_first + len(late), agent_first)
    await wait_for(lambda: counted(want), f"the promoter's evidence and acceptance to be {want}")
    assert await conflicts(b) == 1  # c1: routed and compared on B, the outcome claimed blind
    assert await conflicts(a) == 0
    # c2 (routed on A, compared on B, claiming blind): B had no record and believed the
    # outcome; the promoter's record overruled it, so it is not evidence either.
    store = a.pipeline.store
    assert (await store.handling_of([crash_agent.event_id(c2)]))[crash_agent.event_id(c2)] == (
        "agent"
    )
    disagree = sum(1 for i in blind if i != y and (i % 5 == 0 or i % 7 == 0))
    doc = (await a.agreement())["task_types"][TASK]
    assert disagree > 0
    assert doc["agree"] == blind_first - disagree + len(late)

    # Routes asked for the late items after their outcomes: answered, but the records are
    # ignored (by the member that holds the outcome, and by the promoter, which folded the
    # comparison before the record): how they count does not change after the fact.
    for i in late:
        assert await route(routed_by[i], i) == "agent"
    on_b += sum(1 for i in late if routed_by[i] is b and compared_on_a(i))
    await wait_for(b_published, "B to publish the records it could not judge late")
    await a.pipeline.handling.flush()
    await a.pipeline.evaluate()
    assert await counts(a) == want
    ids = [crash_agent.event_id(i) for i in late]
    assert await a.pipeline.store.handling_of(ids) == {}
    assert a.pipeline.ladder.evidence[TASK][crash_agent.AGENT_VERSION].n == blind_first + len(late)
    assert (await a.agreement())["task_types"][TASK]["level"] == "L3"

    # Malformed routing records on the comparisons topic: dead letters, and folding goes on.
    good = {
        "kind": "handling",
        "event_id": "cr-bad",
        "task_type": TASK,
        "handled_by": "agent",
        "level": "L3",
        "routed_at": "2026-11-20T10:00:00+00:00",
    }
    bad: list[dict[str, Any] | list[Any]] = [
        {"kind": "handling", "event_id": "cr-bad-1"},
        {**good, "handled_by": "robot"},
        {**good, "level": "L9"},
        {**good, "routed_at": "2026-11-20T10:00:00"},
        {**good, "routed_at": "yesterday"},
        {**good, "event_id": 7},
        {**good, "event_id": ""},
        {**good, "event_id": "x" * (MAX_ID_LENGTH + 1)},
        {**good, "event_id": "cr-\n-bad"},
        {**good, "task_type": None},
        ["kind", "handling"],
    ]
    await broker.produce("cmp", [(b"cr-bad", json.dumps(v).encode()) for v in bad])

    async def dead() -> bool:
        letters = await store.dead_letters(limit=100)
        return sum(1 for d in letters if str(d.get("location", "")).startswith("cmp[")) == len(bad)

    await wait_for(dead, f"{len(bad)} dead letters from the comparisons topic")
    assert await store.handling_of(["cr-bad", "cr-bad-1", "x" * (MAX_ID_LENGTH + 1)]) == {}

    # One batch in which B's labels are wrong both ways: x was routed on A to the agent (B
    # has no record: blind), y on A to a blind audit while its outcome claims "assisted" (B
    # believes it). The promoter's records win in its drift fold too: y's critical miss is
    # the one over the L3 gate's limit, so the promoter demotes to L2.
    await broker.produce_json("oc", [echoed(x), human(y, decision={"action": "deny", "amount": 1})])
    want = (len(blind) + len(late), N - len(blind) - len(late))
    await wait_for(lambda: counted_all(a, want), f"x and y folded, evidence {want}")

    async def demoted() -> bool:
        return str((await a.agreement())["task_types"][TASK]["level"]) == "L2"

    await wait_for(demoted, "the promoter to demote on y's blind critical miss")
    assert await counts(a) == want
    assert await store.handling_of(ids) == {}  # folded before x and y were: still ignored


async def counted_all(a: Sidecar, want: tuple[int, int]) -> bool:
    return await a.pipeline.store.count("comparisons") == N and await counts(a) == want
