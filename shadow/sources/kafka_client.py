"""Kafka connection pieces shared by the source, the publisher and the promoter: the
``kafka://`` spec, the client options (security, client id), starting a client
(:func:`start_client`), leaving a consumer group on shutdown (:func:`leave_group`), and
:func:`rewind`.

``parse_kafka_spec`` and ``client_options`` raise :class:`~shadow.errors.ConfigError` naming
what is wrong (their only I/O is loading the TLS files named in the settings). When a client
cannot start, :func:`tls_problem` and :func:`sasl_problem` open one connection of their own
to the first bootstrap broker to say what TLS or SASL refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.group import LeaveGroupRequest

from shadow.config import Settings
from shadow.errors import ConfigError, Reason
from shadow.ingest import RAW_LIMIT, clip_raw
from shadow.store import DeadLetter

__all__ = [
    "KafkaSpec",
    "client_options",
    "leave_group",
    "message_dead_letter",
    "message_origin",
    "parse_kafka_spec",
    "rewind",
    "start_client",
    "stop_client",
]

log = logging.getLogger("shadow.kafka")

_LEAVE_WITHIN_S = 5.0

_SPEC_HELP = "use kafka://HOST:PORT?events=TOPIC&outcomes=TOPIC&group=GROUP"


@dataclass(frozen=True, slots=True)
class KafkaSpec:
    """A parsed ``kafka://`` source. ``bootstrap`` may list several ``host:port``."""

    bootstrap: str
    events: str
    outcomes: str
    group: str

    @property
    def name(self) -> str:
        return f"kafka://{self.bootstrap}"


def parse_kafka_spec(spec: str) -> KafkaSpec:
    """``kafka://HOST:PORT[,HOST:PORT]?events=T&outcomes=T&group=G`` -> :class:`KafkaSpec`.
    Raises :class:`ConfigError` naming what is missing or wrong."""
    parts = urlsplit(spec)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(f"source {spec!r}: no broker address; {_SPEC_HELP}")
    for hostport in parts.netloc.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"source {spec!r}: broker {hostport!r} is not HOST:PORT")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"events", "outcomes", "group"})
    if unknown:
        raise ConfigError(f"source {spec!r}: unknown parameter(s) {', '.join(unknown)}")
    values: dict[str, str] = {}
    for key in ("events", "outcomes", "group"):
        got = query.get(key, [])
        if len(got) != 1 or not got[0]:
            raise ConfigError(f"source {spec!r}: exactly one non-empty {key}= is required")
        values[key] = got[0]
    if values["events"] == values["outcomes"]:
        raise ConfigError(f"source {spec!r}: events and outcomes must be different topics")
    return KafkaSpec(parts.netloc, values["events"], values["outcomes"], values["group"])


def client_options(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Connection keyword arguments shared by every aiokafka client (security, client id)."""
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        if settings.kafka_ssl_certfile is not None:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
        opts["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        if settings.kafka_sasl_mechanism is None or settings.kafka_sasl_username is None:
            raise ConfigError(
                f"kafka_security_protocol {settings.kafka_security_protocol} needs "
                "kafka_sasl_mechanism and kafka_sasl_username (SHADOW_KAFKA_SASL_*)"
            )
        password = settings.kafka_sasl_password
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = password.get_secret_value() if password else ""
    return opts


def next_offsets(fetched: Mapping[TopicPartition, Any]) -> dict[TopicPartition, int]:
    """The offsets to commit once ``fetched`` is stored: one past each partition's last message."""
    return {tp: messages[-1].offset + 1 for tp, messages in fetched.items() if messages}


def rewind(consumer: AIOKafkaConsumer, fetched: Mapping[TopicPartition, Any]) -> None:
    """Seek every still-assigned partition of ``fetched`` back to its first fetched offset,
    so an uncommitted batch whose processing failed is read again."""
    owned = consumer.assignment()
    for tp, messages in fetched.items():
        if messages and tp in owned:
            consumer.seek(tp, messages[0].offset)


def message_dead_letter(
    message: Any,
    kind: str,
    reason: str,
    event_id: str | None = None,
    *,
    code: Reason = Reason.INVALID,
    text: str | None = None,
) -> DeadLetter:
    """The dead letter for one Kafka message: source ``kafka:<topic>``, location
    :func:`message_origin`, and as ``raw`` either ``text`` (the value already decoded, whole)
    or the value's first bytes as text (invalid UTF-8 shown as ``\\xNN``, clipped like every
    raw record); no value (a tombstone) shows nothing. The pipeline redacts ``raw`` before
    it keeps it. ``code`` is why, for counting."""
    shown = text
    value: bytes | None = message.value
    if shown is None and value is not None:
        shown = clip_raw(value[: RAW_LIMIT * 4].decode("utf-8", "backslashreplace"))
    where = message_origin(message)
    return DeadLetter(f"kafka:{message.topic}", kind, reason, shown, event_id, where, code)


def message_origin(message: Any) -> str:
    """Where a Kafka message was read: ``topic[partition]@offset``."""
    return f"{message.topic}[{message.partition}]@{message.offset}"


async def leave_group(consumer: AIOKafkaConsumer) -> bool:
    """Leave ``consumer``'s group now, so the group reassigns its partitions at once instead
    of after ``kafka_session_timeout``; call it just before ``consumer.stop()``. Returns
    whether this call sent the LeaveGroup.

    aiokafka's ``stop()`` leaves the group only when the member's generation is above 0,
    but brokers that number the first generation 0 (tansu does) then never hear from a
    member that joined once and stopped: its restart waits for the old session to expire
    before it gets any partition. So for a dynamic member at generation 0 this sends the
    LeaveGroup itself (through the consumer's own coordinator connection: aiokafka has no
    public call for it), and leaves every other case to ``stop()``. Static members
    (``group_instance_id``) never leave: keeping their place across a restart is their
    point. A broker error or no answer within 5 s is logged, not raised (the session then
    expires as before)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "_group_instance_id", None) is not None:
        return False
    if getattr(coordinator, "generation", None) != 0 or not getattr(coordinator, "member_id", ""):
        return False  # not a member, or stop() leaves by itself
    request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
    try:
        # Bounded: a shutdown must not wait the client's whole request timeout on a broker
        # that went away; the session then expires as it would have.
        async with asyncio.timeout(_LEAVE_WITHIN_S):
            response = await coordinator._send_req(request)
    except (KafkaError, TimeoutError) as e:
        log.warning(
            "leaving consumer group %s failed (%s)", coordinator.group_id, e or type(e).__name__
        )
        return False
    code = getattr(response, "error_code", 0)
    if code:
        log.warning("leaving consumer group %s: the broker answered %s", coordinator.group_id, code)
        return False
    log.info("left consumer group %s", coordinator.group_id)
    return True


async def stop_client(
    client: AIOKafkaConsumer | AIOKafkaProducer, who: str, *, within: float = 5.0
) -> None:
    """``client.stop()``, for a shutdown that must finish, and soon, broker or no broker
    (``within``: ``kafka_shutdown_timeout``).

    - A producer first gets ``within`` seconds to have what it is still sending
      acknowledged; aiokafka's own ``stop()`` would wait the whole request timeout (40 s)
      for a broker that is gone. After that the unacknowledged records are failed (nothing
      is lost: the outboxes send them again, the sources read their records again) and a
      WARNING names how many.
    - Then ``stop()`` gets ``within`` seconds; past that its connections are closed and a
      WARNING says so (a consumer can wait on a group coordinator that no longer answers).
    - With the broker gone, aiokafka's fetcher re-raises the cancellation of its own fetch
      task out of ``stop()``; that is not a cancellation of the caller, so it is logged and
      the shutdown goes on (a real cancellation of the caller still propagates)."""
    if isinstance(client, AIOKafkaProducer):
        await _flush_within(client, who, within)
    # stop() is never cancelled half-way (that would leave its sockets and tasks to the
    # garbage collector): past the bound its connections are closed under it, which fails
    # the requests it waits on, and it finishes its own cleanup.
    stopping = asyncio.ensure_future(client.stop())
    try:
        done, _ = await asyncio.wait({stopping}, timeout=within)
        if not done:
            log.warning(
                "%s: the Kafka client did not stop within %gs (broker unreachable?); its "
                "connections are closed",
                who,
                within,
            )
            inner = getattr(client, "_client", None)
            if inner is not None:
                await inner.close()
            done, _ = await asyncio.wait({stopping}, timeout=within)
            if not done:
                log.error("%s: the Kafka client still did not stop; abandoned", who)
                stopping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stopping
                return
        await stopping
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            stopping.cancel()
            raise
        log.warning("%s: the Kafka client stopped with its own fetch cancelled", who)


async def _flush_within(producer: AIOKafkaProducer, who: str, within: float) -> None:
    try:
        async with asyncio.timeout(within):
            await producer.flush()
        return
    except TimeoutError:
        pass
    # aiokafka has no public call to give up on what it is sending. Its sender task is
    # stopped first (its requests in flight end, or are ended by closing the connections),
    # so no batch is in flight; then the queued batches are failed, as its sender does when
    # it cannot go on, and stop() has nothing left to wait for.
    accumulator = getattr(producer, "_message_accumulator", None)
    sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if accumulator is None or sender is None:
        return
    given_up = len(accumulator._pending_batches) + len(_queued(accumulator))
    sender.cancel()  # nothing more is sent; it ends once its requests in flight have
    for batch in (*accumulator._pending_batches, *_queued(accumulator)):
        batch._ttl = 0  # expired: an error now fails the batch instead of queueing it again
    try:
        async with asyncio.timeout(within):
            await asyncio.wait([sender])
    except TimeoutError:
        await producer.client.close()  # fails the requests still waiting for an answer
        await asyncio.wait([sender])
    batches = _queued(accumulator)
    # A batch sent before (and queued again after an error) has a done-callback that takes
    # it out of the in-flight set; put it back there so failing it does not trip that.
    accumulator._pending_batches.update(b for b in batches if b.retry_count > 0)
    accumulator.fail_all(KafkaTimeoutError(f"not acknowledged within {within:g}s of shutdown"))
    for batch in batches:  # nobody waits for them any more: retrieve, so none is reported
        waiters = (batch.future, batch._drain_waiter, *(f for f, _ in batch._msg_futures))
        for future in waiters:
            if future.done() and not future.cancelled():
                future.exception()
    log.warning(
        "%s: %d record batch(es) not acknowledged within %gs of shutdown (broker "
        "unreachable?); they are sent again at the next start",
        who,
        given_up,
        within,
    )


def _queued(accumulator: Any) -> list[Any]:
    return [batch for queued in accumulator._batches.values() for batch in queued]


async def start_client(
    client: AIOKafkaConsumer | AIOKafkaProducer,
    who: str,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Start an aiokafka consumer or producer; on any failure (cancellation too) stop it,
    so no started client is left to the garbage collector. A broker error becomes one
    :class:`~shadow.errors.ConfigError` line naming ``who``; with the client's ``options``
    (:func:`client_options`) it also says what TLS or SASL refused, which aiokafka only
    logs (see :func:`tls_problem` and :func:`sasl_problem`)."""
    try:
        await client.start()
    except BaseException as e:
        await client.stop()
        if isinstance(e, KafkaError):
            why = await _refusal(options) if options is not None else ""
            raise ConfigError(
                f"{who}: cannot reach the broker ({e}){why}; check the address and the "
                "security settings"
            ) from None
        raise


async def _refusal(options: Mapping[str, Any]) -> str:
    tls = await tls_problem(options)
    if tls:
        return f"; TLS: {tls}"
    sasl = await sasl_problem(options)
    return f"; SASL: {sasl}" if sasl else ""


async def sasl_problem(options: Mapping[str, Any], *, within: float = 5.0) -> str | None:
    """What the first bootstrap broker answers when a connection authenticates with
    ``options``' SASL settings, or ``None`` (no SASL, accepted, or not reachable)."""
    mechanism = options.get("sasl_mechanism")
    broker = _first_broker(options)
    if not mechanism or broker is None:
        return None
    try:
        async with asyncio.timeout(within):
            conn = await create_conn(
                *broker,
                client_id=options.get("client_id", "shadow-sidecar"),
                ssl_context=options.get("ssl_context"),
                security_protocol=options.get("security_protocol", "SASL_PLAINTEXT"),
                sasl_mechanism=mechanism,
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
    except (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError) as e:
        return str(e) or type(e).__name__
    except (KafkaError, OSError, TimeoutError):
        return None
    conn.close()
    return None


def _first_broker(options: Mapping[str, Any]) -> tuple[str, int] | None:
    """``(host, port)`` of the first of ``options``' bootstrap servers (already checked by
    :func:`parse_kafka_spec`), or ``None``."""
    servers = options.get("bootstrap_servers") or []
    if not servers:
        return None
    host, _, port = str(servers[0]).strip().rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


async def tls_problem(options: Mapping[str, Any], *, within: float = 2.0) -> str | None:
    """What TLS refuses when connecting to the first bootstrap broker with ``options``'
    ``ssl_context``, or ``None`` (no TLS, no problem found, or not reachable at all: then
    the Kafka error says enough). A broker checks client certificates after the handshake
    (TLS 1.3): it then sends an alert or just closes the connection, so one read is tried
    (a broker that accepted the connection waits for a request instead)."""
    context = options.get("ssl_context")
    broker = _first_broker(options)
    if not isinstance(context, ssl.SSLContext) or broker is None:
        return None
    host, port = broker
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
    except ssl.SSLError as e:
        return _SSL_SOURCE.sub("", str(e))
    except (OSError, TimeoutError):
        return None
    try:
        async with asyncio.timeout(min(within, 0.5)):
            if not await reader.read(1):
                return (
                    "the broker closed the connection right after the handshake; it may "
                    "require a client certificate it trusts (kafka_ssl_certfile, "
                    "kafka_ssl_keyfile)"
                )
    except ssl.SSLError as e:
        return _SSL_SOURCE.sub("", str(e))
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return None
