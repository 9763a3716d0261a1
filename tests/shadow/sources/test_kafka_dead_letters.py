"""Dead letters of Kafka records against a real tansu broker, through the real app
(:func:`shadow.app.build_app`): every one, whichever stage refused it (the source: poison;
the pipeline: an unknown task type, a conflicting duplicate), is stored with its origin and
copied to the dead-letter topic with the origin in headers; and neither copy ever holds a
field the policy redacts."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE
from shadow.app import build_app
from shadow.pipeline import Pipeline
from shadow.policy import parse_policy
from tests.conftest import cells_holding, wait_for
from tests.kafka_broker import Broker
from tests.shadow import crash_agent
from tests.shadow.conftest import clean_settings
from tests.shadow.sources.kafka_data import AGENT_SPEC, POLICY

SECRET = "zq7-jane.doe@example.com"


@dataclass(frozen=True, slots=True)
class Running:
    pipeline: Pipeline
    registry: CollectorRegistry

    def published(self) -> float:
        labels = {"stream": "dead_letters"}
        return self.registry.get_sample_value("shadow_kafka_published_total", labels) or 0.0

    async def published_at_least(self, count: int) -> None:
        """Counted once the broker acknowledged, which may be after a reader saw them."""

        async def check() -> bool:
            return self.published() >= count

        await wait_for(check, f"{count} dead-letter copies counted")


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, broker: Broker, policy: str, **overrides: Any
) -> AsyncIterator[Running]:
    """The app as ``shadow run`` starts it (store, pipeline, Kafka source and publisher),
    stopped on exit so the test can read the DuckDB file."""
    settings = clean_settings(
        tmp_path,
        "dead",
        agent=AGENT_SPEC,
        source=[f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group=g"],
        kafka_dead_letter_topic="dlq",
        kafka_health_interval=0.2,
        batch_size=50,
        **overrides,
    )
    registry = CollectorRegistry()
    app = build_app(settings, policy=parse_policy(policy), registry=registry)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        yield Running(app[PIPELINE], registry)
    finally:
        await runner.cleanup()


async def read_all(broker: Broker, topic: str, at_least: int) -> list[Any]:
    """Every record of ``topic``: polls until ``at_least`` arrived, then a few polls more,
    so a record published twice would show."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    quiet = 0
    try:
        for _ in range(300):
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                out.extend(messages)
            quiet = 0 if batch else quiet + 1
            if len(out) >= at_least and quiet >= 5:
                break
    finally:
        await consumer.stop()
    return out


async def dead_letter_count(pipeline: Pipeline, want: int) -> bool:
    return await pipeline.store.count("dead_letters") >= want


def origin(message: Any) -> str:
    headers = dict(message.headers)
    return "{}[{}]@{}".format(
        headers["shadow-topic"].decode(),
        headers["shadow-partition"].decode(),
        headers["shadow-offset"].decode(),
    )


def ev_record(i: int, **changes: Any) -> tuple[bytes, bytes]:
    record = {**crash_agent.event(i), **changes}
    return str(record["event_id"]).encode(), json.dumps(record).encode()


def oc_record(i: int, **changes: Any) -> tuple[bytes, bytes]:
    record = {**crash_agent.outcome(i), **changes}
    return str(record["event_id"]).encode(), json.dumps(record).encode()


async def test_every_dead_letter_of_a_kafka_record_reaches_the_topic_with_its_origin(
    broker: Broker, tmp_path: Path, no_shadow_env: None
) -> None:
    """N bad records of each kind, among good ones: exactly N copies of each on the
    dead-letter topic, each naming the topic, partition and offset it was read at, the same
    origin as its row in the store."""
    n, good = 7, 40
    await broker.create_topics({"ev": 2, "oc": 2, "dlq": 1})
    events = [ev_record(i) for i in range(good)]
    outcomes = [oc_record(i) for i in range(good)]
    # Sent after the originals, on the same keys (so the same partitions, in order).
    unknown = [ev_record(good + i, task_type="unheard_of") for i in range(n)]
    event_conflicts = [ev_record(i, payload={"amount": -1.0}) for i in range(n)]
    outcome_conflicts = [oc_record(i, decision={"action": "deny"}) for i in range(n)]
    not_json = [(f"bad-{i}".encode(), b"{not json") for i in range(n)]
    no_decision = [(f"nd-{i}".encode(), b'{"event_id": "nd-%d"}' % i) for i in range(n)]
    await broker.produce("ev", events)
    await broker.produce("oc", outcomes)
    await broker.produce("ev", unknown + event_conflicts + not_json)
    await broker.produce("oc", outcome_conflicts + no_decision)
    kinds = {
        "unknown task type": ("event", n),
        "conflicting duplicate: event": ("event", n),
        "conflicting duplicate: outcome": ("outcome", n),
        "invalid JSON": ("event", n),
        "decision: required": ("outcome", n),
    }
    total = n * len(kinds)

    async with running(tmp_path, broker, POLICY) as run:
        await wait_for(lambda: dead_letter_count(run.pipeline, total), f"{total} dead letters")
        copies = await read_all(broker, "dlq", total)
        stored = await run.pipeline.store.dead_letters(limit=1000)
        await run.published_at_least(total)
        published = run.published()

    assert len(stored) == total
    assert len(copies) == total, Counter(dict(m.headers)["shadow-reason"][:40] for m in copies)
    assert published == total
    found: Counter[str] = Counter()
    for m in copies:
        reason = dict(m.headers)["shadow-reason"].decode()
        (says,) = [k for k in kinds if k in reason]
        found[says] += 1
        assert dict(m.headers)["shadow-kind"].decode() == kinds[says][0]
    assert found == {k: count for k, (_, count) in kinds.items()}

    # The origin is the message's: same key and, with nothing redacted here, the same value.
    sources = {f"{m.topic}[{m.partition}]@{m.offset}": m for m in await read_all_sources(broker)}
    origins = [origin(m) for m in copies]
    assert len(set(origins)) == total
    for copy, where in zip(copies, origins, strict=True):
        assert copy.key == sources[where].key
        assert copy.value == sources[where].value
    # The store has the same origins: every row has its location.
    assert sorted(str(d["location"]) for d in stored) == sorted(origins)


async def read_all_sources(broker: Broker) -> list[Any]:
    return [m for topic in ("ev", "oc") for m in await read_all(broker, topic, 1)]


# -- a redacted field is never kept ---------------------------------------------------------------

SECRET_POLICY = """\
task_types:
  refund_request:
    redact: [payload.customer.email, payload.card]
  ticket_routing: {}
"""


def secret_records() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], int]:
    """(events topic records, outcomes topic records, how many dead letters they make):
    every way found to carry the secret at a redacted path, or where no path can be told."""
    customers = [{"email": SECRET, "tier": "gold"}, [[{"email": SECRET}]]]
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    secret_key = {SECRET: deep}
    payload = {"customer": customers, "card": SECRET, "amount": 1.0}
    refund = crash_agent.event(0)  # index 0: refund_request, redacting
    assert refund["task_type"] == "refund_request"
    eid = str(refund["event_id"])

    def rec(key: str, body: object) -> tuple[bytes, bytes]:
        value = body if isinstance(body, bytes) else json.dumps(body).encode()
        return key.encode(), value

    events = [
        rec(eid, {**refund, "payload": payload}),  # good: stored without the secret
        rec("v-1", {**refund, "event_id": "v-1", "payload": payload, "occurred_at": "soon"}),
        rec("v-2", {**refund, "event_id": "v-2", "task_type": "unheard_of", "payload": payload}),
        rec("v-3", {"event_id": "v-3", "payload": payload}),
        # the secret as a key inside a redacted field, nested too deep: named by the reason
        rec("v-4", {**refund, "event_id": "v-4", "payload": {"customer": {"email": secret_key}}}),
        rec(
            "v-5",
            (
                '{"event_id": "v-5", "task_type": "refund_request", '
                f'"payload": {{"card": "{SECRET}"}}, "task_type": "ticket_routing"}}'
            ).encode(),
        ),
        rec("v-6", f"customer email {SECRET} was here".encode()),
        rec("v-7", b'{"event_id": "v-7", "payload": {"card": "' + SECRET.encode() + b'\xff"}}'),
        rec("v-8", {**refund, "event_id": "v-8", "payload": {**payload, "pad": "p" * 3000}}),
        rec("not-v-9", {**refund, "event_id": "v-9", "payload": payload}),  # key mismatch
        rec("v-10", [{**refund, "event_id": "v-10", "payload": payload}]),
        rec(eid, {**refund, "payload": {**payload, "amount": 2.0}}),  # conflicting duplicate
    ]
    outcomes = [
        rec(eid, crash_agent.outcome(0)),
        rec("w-1", {**crash_agent.outcome(1), "event_id": "w-1", "payload": payload}),
        rec(eid, {**crash_agent.outcome(0), "decision": {"action": "deny"}}),  # conflict
    ]
    return events, outcomes, len(events) - 1 + len(outcomes) - 1


async def test_no_redacted_field_reaches_the_store_or_the_dead_letter_topic(
    broker: Broker, tmp_path: Path, no_shadow_env: None
) -> None:
    await broker.create_topics({"ev": 2, "oc": 2, "dlq": 1})
    events, outcomes, dead = secret_records()
    await broker.produce("ev", events)
    await broker.produce("oc", outcomes)

    async with running(tmp_path, broker, SECRET_POLICY, kafka_max_message_bytes=2048) as run:
        pipeline = run.pipeline
        await wait_for(lambda: dead_letter_count(pipeline, dead), f"{dead} dead letters")
        await wait_for(lambda: _compared(pipeline), "the good event compared (by the agent)")
        copies = await read_all(broker, "dlq", dead)
        db = pipeline.store.path
        await run.published_at_least(dead)
        assert run.published() == dead

    assert len(copies) == dead
    for m in copies:
        shown = [m.key or b"", m.value or b"", *(v for _, v in m.headers)]
        assert not any(SECRET.encode() in part for part in shown), m
    # What parsed is kept, redacted (and still a record); what did not (not JSON, not UTF-8,
    # too large, an array) is not kept at all: this policy redacts.
    kept = [json.loads(m.value) for m in copies if m.value is not None]
    assert len(kept) == dead - 4
    rows, hits = cells_holding(db, SECRET)
    assert rows > dead
    assert hits == []


async def _compared(pipeline: Pipeline) -> bool:
    return await pipeline.store.count("comparisons") >= 1
