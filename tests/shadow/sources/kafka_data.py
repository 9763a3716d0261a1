"""Shared data for the Kafka tests (not a test module): the policy, the records of the
deterministic agent :mod:`tests.shadow.crash_agent`, and the counts they must produce."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tests.conftest import wait_for
from tests.shadow import crash_agent

if TYPE_CHECKING:
    from tests.kafka_broker import Broker
    from tests.shadow.conftest import Sidecar

AGENT_SPEC = "tests.shadow.crash_agent:agent"

# auto mode with small gates, so levels move and replica runs can be compared on them.
POLICY = """\
task_types:
  refund_request:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L3
      mode: auto
      gates:
        L1: {agreement: 0.5, min_samples: 30}
        L2: {agreement: 0.6, min_samples: 100}
        L3: {agreement: 0.9, min_samples: 200, max_critical: 0}
  ticket_routing:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L2
      mode: auto
      gates:
        L1: {agreement: 0.5, min_samples: 50}
        L2: {agreement: 0.55, min_samples: 150}
"""


def expected(indices: Iterable[int]) -> dict[str, dict[str, int]]:
    """Per task type: n, agree and critical by the agent's rule."""
    out: dict[str, Counter[str]] = {t: Counter() for t in crash_agent.TASK_TYPES}
    for i in indices:
        c = out[crash_agent.TASK_TYPES[i % len(crash_agent.TASK_TYPES)]]
        verdict = crash_agent.expected_verdict(i)
        c["n"] += 1
        c["agree"] += verdict == "agree"
        c["critical"] += verdict == "critical"
    return {t: {k: c[k] for k in ("n", "agree", "critical")} for t, c in out.items()}


def observed(agreement: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        t: {k: int(v[k]) for k in ("n", "agree", "critical")}
        for t, v in agreement["task_types"].items()
    }


def shuffled_with_duplicates(
    indices: Iterable[int], seed: int, every: int = 3
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events and outcomes for ``indices``, each list shuffled, every ``every``-th record
    sent twice."""
    rng = random.Random(seed)
    events = [crash_agent.event(i) for i in indices]
    outcomes = [crash_agent.outcome(i) for i in indices]
    events += events[::every]
    outcomes += outcomes[1::every]
    rng.shuffle(events)
    rng.shuffle(outcomes)
    return events, outcomes


async def compare_and_publish(sc: Sidecar, broker: Broker, n: int, how: str) -> None:
    """Produce ``n`` cases on ev/oc, wait until the sidecar compared all of them with the
    expected counts and published each comparison (``how``: the connection, for messages)."""
    from tests.shadow.conftest import metric

    await broker.produce_json("ev", [crash_agent.event(i) for i in range(n)])
    await broker.produce_json("oc", [crash_agent.outcome(i) for i in range(n)])

    async def compared() -> bool:
        return await sc.pipeline.store.count("comparisons") == n

    await wait_for(compared, f"{n} comparisons {how}")
    assert observed(await sc.agreement()) == expected(range(n))

    async def published() -> bool:
        value = metric(await sc.metrics(), "shadow_kafka_published_total", stream="comparisons")
        return value == n

    await wait_for(published, f"{n} comparisons published {how}")
