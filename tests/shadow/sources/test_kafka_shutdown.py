"""A shutdown finishes within ``kafka_shutdown_timeout`` whatever the broker does, against a
real tansu broker: gone (killed: connections refused) or hung (stopped with SIGSTOP: requests
never answered). aiokafka's own ``stop()`` waits the whole request timeout (40 s) for what a
producer is still sending; :func:`shadow.sources.kafka_client.stop_client` gives up after
the bound, says so in one WARNING line, and leaves nothing behind (no unretrieved error, no
failing callback, no open connection). Nothing is lost by it: the publisher's outboxes send
again what was not acknowledged (``test_kafka_publish``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from shadow.sources.kafka_client import stop_client
from tests.kafka_broker import Broker

BOUND = 0.5


@contextlib.contextmanager
def loop_reports() -> Iterator[list[str]]:
    """What the running loop's exception handler is given meanwhile (an error nobody
    retrieved, a callback that raised)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(
        lambda _loop, context: seen.append(
            f"{context.get('message')}: {context.get('exception')!r}"
        )
    )
    try:
        yield seen
    finally:
        gc.collect()  # an unretrieved future's error is reported when it is collected
        loop.set_exception_handler(previous)


async def started_producer(broker: Broker) -> AIOKafkaProducer:
    await broker.create_topics({"t": 1})
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    await producer.send_and_wait("t", b"acknowledged")
    return producer


def open_connections(client: Any) -> int:
    return sum(1 for conn in client._conns.values() if conn.connected())


@pytest.mark.parametrize("outage", ["killed", "hung"])
async def test_a_producer_stops_within_the_bound_and_says_what_it_gave_up(
    broker: Broker, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    producer = await started_producer(broker)
    process = broker.process
    assert process is not None
    if outage == "killed":
        broker.kill()
    else:
        process.send_signal(signal.SIGSTOP)
    try:
        with loop_reports() as reports:
            sent = await producer.send("t", b"never acknowledged")
            await asyncio.sleep(0.2)  # the sender has tried it (in flight when hung)
            caplog.set_level(logging.WARNING, logger="shadow.kafka")
            await stop_client(producer, "publisher", within=BOUND)
            assert sent.done()
            # Failed, not acknowledged: as it waited (killed) or by the closed connection (hung).
            with pytest.raises(KafkaError):
                sent.result()
            del sent
        assert reports == []
        assert open_connections(producer.client) == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "shadow.kafka"]
        assert len(lines) == 1, lines
        assert "publisher: 1 record batch(es) not acknowledged within 0.5s" in lines[0]
    finally:
        if outage == "hung":
            process.send_signal(signal.SIGCONT)
        else:
            await broker.start()


async def test_a_producer_with_nothing_pending_stops_without_a_word(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    producer = await started_producer(broker)
    caplog.set_level(logging.WARNING, logger="shadow.kafka")
    await stop_client(producer, "publisher", within=BOUND)
    assert [r for r in caplog.records if r.name == "shadow.kafka"] == []
    assert open_connections(producer.client) == 0


async def test_a_consumer_in_a_group_stops_within_the_bound_when_the_broker_hangs(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    await broker.create_topics({"t": 1})
    consumer = AIOKafkaConsumer(
        "t",
        bootstrap_servers=broker.bootstrap,
        group_id="g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,  # as the sidecar's consumers
    )
    await consumer.start()
    await broker.produce("t", [(b"k", b"v")])
    got = await consumer.getmany(timeout_ms=5000)
    assert sum(len(v) for v in got.values()) == 1
    process = broker.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        caplog.set_level(logging.WARNING, logger="shadow.kafka")
        with loop_reports() as reports:
            await stop_client(consumer, "source", within=BOUND)
        assert reports == []
        assert open_connections(consumer._client) == 0
    finally:
        process.send_signal(signal.SIGCONT)
