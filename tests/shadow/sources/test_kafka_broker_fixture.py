"""The test broker itself (:mod:`tests.kafka_broker`): its port stays reserved across a
restart, a broker that died is reported with its exit code and log, and the liveness check
wants a Kafka answer, not just an open port."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.kafka_broker import (
    Broker,
    BrokerDied,
    BrokerNotAnswering,
    PortTaken,
    api_versions,
)
from tests.shadow.sources.conftest import BrokerFactory, require_broker

API_VERSIONS, METADATA = 18, 3

# Stands in for tansu: binds the --listener-url port (with SO_REUSEADDR, as tansu does) and
# answers every connection with an HTTP error, as a stray non-Kafka server on the port would.
PLAIN_TCP = """
import socket, sys
port = int(sys.argv[sys.argv.index("--listener-url") + 1].rsplit(":", 1)[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
print("plain tcp server on", port, flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n")
    c.close()
"""

EXITS = """
import sys
print("tansu: cannot start: address in use", flush=True)
sys.exit(3)
"""


def fake_binary(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def bind_plain(port: int) -> OSError | None:
    """Bind ``port`` as an unrelated process would (no SO_REUSEADDR); the error, if any."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e
        return None


async def test_a_restart_comes_back_on_the_same_port_no_one_took_meanwhile(
    broker: Broker,
) -> None:
    port = broker.port
    keys = await api_versions(port)
    assert API_VERSIONS in keys
    assert METADATA in keys

    broker.kill()
    with pytest.raises(BrokerNotAnswering):
        await api_versions(port, within=1.0)
    taken = bind_plain(port)
    assert taken is not None
    assert taken.errno == errno.EADDRINUSE

    await broker.start()
    assert broker.port == port
    assert METADATA in await api_versions(port)
    await broker.create_topics({"t": 1})
    assert await broker.produce("t", [(b"k", b"v")]) == 1


async def test_the_port_is_released_by_stop(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory()
    await broker.stop()
    await broker.stop()  # idempotent
    assert bind_plain(broker.port) is None


async def test_a_broker_killed_from_outside_is_reported_with_its_exit_code(
    tmp_path: Path,
) -> None:
    async with Broker(require_broker(), tmp_path / "tansu.log") as broker:
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGKILL)
        broker.process.wait()
        with pytest.raises(BrokerDied) as died:
            await broker.check()
        assert died.value.returncode == -signal.SIGKILL
        message = str(died.value)
        assert "exit code -9 (killed by SIGKILL)" in message
        assert f"port {broker.port}" in message
        assert "listening on" in message  # the tail of tansu's own output
        assert "exit code -9" in broker.diagnose()


async def test_a_broker_that_exits_at_start_is_reported_with_its_exit_code_and_output(
    tmp_path: Path,
) -> None:
    broker = Broker(fake_binary(tmp_path, "exits", EXITS), tmp_path / "exits.log")
    try:
        with pytest.raises(BrokerDied, match="exited while starting with exit code 3") as died:
            await broker.start(within=10)
        assert died.value.returncode == 3
        assert "cannot start: address in use" in str(died.value)
        assert broker.process is None
    finally:
        await broker.stop()


async def test_a_stopped_broker_is_reported_as_not_answering(tmp_path: Path) -> None:
    """A broker that runs but has stopped answering (here: SIGSTOP) fails the check clearly
    within its bound, instead of a timeout deep in a test."""
    async with Broker(require_broker(), tmp_path / "tansu.log") as broker:
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerNotAnswering, match="runs but does not answer on port"):
                await broker.check(within=0.5)
            assert "runs but does not answer ApiVersions" in broker.diagnose(timeout=0.5)
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        await broker.check()
        assert "answers ApiVersions" in broker.diagnose()


async def test_the_liveness_check_wants_a_kafka_answer_not_an_open_port(tmp_path: Path) -> None:
    async def http_error(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the prober gives up and closes
        writer.close()
        await writer.wait_closed()

    for handler, expected in ((http_error, "not a Kafka response"), (silent, "within 0.3s")):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(BrokerNotAnswering, match=expected):
                await api_versions(port, within=0.3)
        finally:
            server.close()
            await server.wait_closed()


async def test_a_plain_tcp_server_in_the_brokers_place_fails_start_clearly(
    tmp_path: Path,
) -> None:
    broker = Broker(fake_binary(tmp_path, "plain", PLAIN_TCP), tmp_path / "plain.log")
    try:
        with pytest.raises(BrokerNotAnswering) as failed:
            await broker.start(within=2.0)
        message = str(failed.value)
        assert f"ApiVersions on port {broker.port}: not a Kafka response" in message
        assert "plain tcp server on" in message  # the log tail
        assert broker.process is None  # killed, not left behind
    finally:
        await broker.stop()


def test_a_port_someone_listens_on_cannot_be_reserved(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PortTaken, match="cannot reserve"):
            Broker("tansu", tmp_path / "x.log", s.getsockname()[1])
