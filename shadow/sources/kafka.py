"""The Kafka source: ``--source kafka://HOST:PORT?events=TOPIC&outcomes=TOPIC&group=GROUP``.

One consumer in consumer group ``GROUP`` reads the work-events topic and the outcomes topic.
Values are one JSON record each (DESIGN.md data contracts), keyed by ``event_id``.

Contract (see docs/kafka.md for the topology and the multi-replica design):

- **At-least-once in, exactly-once in effect.** Auto-commit is off. A fetched batch is handed
  to the intake (``submit_events``, ``submit_outcomes``, ``dead_letter``: each returns
  once durable) and only then are its offsets committed. A crash between the two re-delivers
  the batch; the store dedupes by ``event_id`` (one comparison per ``(event_id,
  agent_version)``). Revocation in a rebalance waits for the batch in flight and its commit.
- **Commits held back to the oldest open join** (:mod:`shadow.sources.kafka_commit`). Where
  each record came from is recorded in the store (``source_positions``) before its offset
  is committed, and a partition is committed only up to its oldest record whose join is
  still open (an event awaiting the agent or its outcome, an outcome awaiting its event;
  :mod:`shadow.store.positions`), else to its end. So when a rebalance moves a partition,
  the next owner re-reads every record of every open join and completes it in its own
  store: a join is never split between two replicas' stores. Commits run at most every
  ``kafka_commit_interval`` (1 s; 0 commits after every batch) while records flow or a
  commit is held back (joins complete without new records), and at revocation and
  shutdown; never backwards. Cost: a restart or rebalance re-reads each partition from its oldest
  open join (at most ``join_ttl`` old: older joins are closed), deduplicated by the store;
  the new owner calls the agent again for re-read events it had not stored.
- **Co-partitioning.** Events and outcomes of one ``event_id`` must reach the same replica:
  both topics must have the same partition count and be keyed by ``event_id``, and the
  group uses the range assignor (partition *n* of both topics go to the same member).
  :meth:`KafkaSource.start` refuses unequal partition counts or a missing topic with a
  :class:`~shadow.errors.ConfigError`; a record whose key is not its ``event_id`` is a dead
  letter.
- **Poison** (not UTF-8, not JSON, schema violations, no value, larger than
  ``kafka_max_message_bytes``) becomes a dead letter (``location`` = ``topic[partition]@
  offset``); consumption continues. So does a record the intake refuses (an unknown task
  type, a conflicting duplicate). With ``kafka_dead_letter_topic`` every one of them, of
  either kind, is also copied to that topic: the value redacted as the stored dead letter
  is (:meth:`shadow.intake.Intake.redact_letter`), the reason and the origin in headers.
- **Backpressure.** While at least ``kafka_pause_backlog`` stored events await the agent
  (the agent runner is saturated), every assigned partition is paused; they resume at
  ``kafka_resume_backlog``. RAM holds at most one fetch per partition, the store at most
  the threshold plus one batch; the rest of a backlog stays in Kafka.
- **Group membership.** Dynamic by default: on shutdown the member leaves the group
  (:func:`~shadow.sources.kafka_client.leave_group`), so the partitions move at once and a
  restart gets them without waiting for the old session to expire. With
  ``kafka_group_instance_id`` the member is static: a restart (even after a crash) with
  the same id takes its partitions back without a rebalance, but a member that stops for
  good holds them until ``kafka_session_timeout`` (docs/kafka.md, "Group membership").
- **Operations.** ``shadow_kafka_consumer_lag_messages{topic,partition}`` (high watermark
  minus the consumer's position: not read yet), ``shadow_kafka_uncommitted_messages`` (read
  and stored, not committed yet: what a restart re-reads), ``shadow_kafka_connected``
  (metadata probe every ``kafka_health_interval``). Until the group's first assignment, both
  gauges have a series for every partition of both topics: uncommitted 0, lag the group's
  backlog (the partition's end offset minus the group's committed offset); afterwards only
  for the partitions this member owns. :meth:`KafkaSource.not_ready` feeds ``/readyz``: not
  ready while the broker does not answer, and until the group's first assignment. The
  client reconnects by itself after a broker restart.

Errors: configuration problems raise :class:`~shadow.errors.ConfigError`; broker errors
(``aiokafka.errors.KafkaError``) are logged and retried, never raised out of :meth:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from shadow.config import Settings
from shadow.errors import ConfigError, Reason
from shadow.ingest import RecordError, parse_record
from shadow.model import Outcome, WorkEvent
from shadow.sources.kafka_client import (
    KafkaSpec,
    client_options,
    leave_group,
    message_dead_letter,
    message_origin,
    parse_kafka_spec,
    rewind,
    start_client,
    stop_client,
)
from shadow.sources.kafka_commit import HeldCommits
from shadow.store import DeadLetter
from shadow.store.positions import SourcePosition

if TYPE_CHECKING:
    from shadow.intake import IngestResult, Intake
    from shadow.metrics import Metrics
    from shadow.sources.publish import KafkaPublisher
    from shadow.store import Store

__all__ = ["KafkaSource", "KafkaSpec", "client_options", "parse_kafka_spec", "rewind"]

log = logging.getLogger("shadow.kafka")

_POLL_MS = 200
_RETRY_S = 1.0
_BACKPRESSURE_CHECK_S = 0.25
_LAG_EVERY_S = 1.0


@dataclass(slots=True)
class _Batch:
    events: list[WorkEvent] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    event_messages: list[Any] = field(default_factory=list)  # one per event
    outcome_messages: list[Any] = field(default_factory=list)  # one per outcome
    dead: list[tuple[DeadLetter, Any]] = field(default_factory=list)  # (letter, message)
    positions: list[SourcePosition] = field(default_factory=list)  # of events and outcomes


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # The batch in flight finishes (stored and committed) before the partitions go, and
        # each goes committed up to its oldest open join, so the next owner re-reads those.
        revoked = list(revoked)
        source = self._source
        async with source._delivering:
            consumer = source._consumer
            if consumer is not None:
                try:
                    await source._commits.commit(consumer, revoked)
                except Exception:
                    log.exception("%s: committing revoked partitions failed", source.spec.name)
            source._commits.forget(revoked)
        for tp in revoked:
            source._forget_lag(tp)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = sorted((tp.topic, tp.partition) for tp in assigned)
        log.info("%s: assigned %s", self._source.spec.name, parts)
        self._source._assigned = True  # even with none: more members than partitions
        if self._source._paused and assigned:
            self._source._consumer_or_fail().pause(*assigned)


class KafkaSource:
    """Feeds one ``kafka://`` source into ``intake``; see the module docstring. ``store``
    keeps where records came from (the held-back commits), ``backlog`` counts the stored
    events awaiting the agent (backpressure; ``None`` without an agent).

    ``await start()`` connects, checks co-partitioning and subscribes (raising
    :class:`ConfigError` on a bad topology); ``await run()`` consumes until :meth:`close`.
    An async context manager; :meth:`close` is idempotent. ``publisher`` (optional) gets the
    copies for the dead-letter topic. ``group_instance_id`` (optional) makes the member
    static (see the module docstring).
    """

    def __init__(
        self,
        spec: KafkaSpec,
        intake: Intake,
        settings: Settings,
        *,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], datetime],
        backlog: Callable[[], Awaitable[int]] | None = None,
        publisher: KafkaPublisher | None = None,
        group_instance_id: str | None = None,
    ) -> None:
        self.spec = spec
        self.group_instance_id = group_instance_id
        self._intake = intake
        self._metrics = metrics
        self._backlog = backlog  # events awaiting the agent; None without an agent
        self._settings = settings
        self._publisher = publisher
        self._consumer: AIOKafkaConsumer | None = None
        self._delivering = asyncio.Lock()
        self._paused = False
        self._next_check = 0.0
        self._estimate = 0  # upper bound of stored events awaiting the agent
        self._lagging: set[TopicPartition] = set()  # partitions with a lag gauge
        self._next_lag = 0.0
        self._next_commit = 0.0
        self._commits = HeldCommits(
            spec.name,
            store,
            clock,
            timedelta(seconds=settings.join_ttl),
            scope=f"{spec.bootstrap}/{spec.group}",
        )
        self._closing = asyncio.Event()
        self._connected = False
        self._problem = "not started"
        self._assigned = False  # the group's first assignment arrived
        self._partitions: list[TopicPartition] = []  # of both topics, from the metadata

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._consumer is not None:
            return self
        s = self._settings
        max_fetch = max(1_048_576, s.kafka_max_message_bytes + 65_536)
        options = client_options(s, self.spec.bootstrap)
        consumer = AIOKafkaConsumer(
            **options,
            group_id=self.spec.group,
            group_instance_id=self.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset=s.kafka_start,
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.kafka_session_timeout * 1000),
            heartbeat_interval_ms=max(100, int(s.kafka_session_timeout * 1000 / 3)),
            max_partition_fetch_bytes=max_fetch,
            fetch_max_bytes=max(max_fetch, 52_428_800),
        )
        await start_client(consumer, f"Kafka source {self.spec.name}", options)
        try:
            await self._check_topology(consumer)
            await self._group_backlog(consumer)
        except BaseException:
            await consumer.stop()
            raise
        consumer.subscribe([self.spec.events, self.spec.outcomes], listener=_Listener(self))
        self._consumer = consumer
        self._set_connected(True, "")
        return self

    async def _check_topology(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await consumer.topics()  # fresh metadata for every topic
        except KafkaError as e:
            raise ConfigError(
                f"Kafka source {self.spec.name}: cannot reach the broker ({e}); "
                "check the address and security settings"
            ) from None
        counts: dict[str, int] = {}
        partitions: list[TopicPartition] = []
        for role, topic in (("events", self.spec.events), ("outcomes", self.spec.outcomes)):
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise ConfigError(
                    f"Kafka source {self.spec.name}: {role} topic {topic!r} does not exist; "
                    "create it with the same partition count as the other topic"
                )
            counts[role] = len(parts)
            partitions += [TopicPartition(topic, p) for p in sorted(parts)]
        if counts["events"] != counts["outcomes"]:
            raise ConfigError(
                f"Kafka source {self.spec.name}: topics are not co-partitioned: events topic "
                f"{self.spec.events!r} has {counts['events']} partitions but outcomes topic "
                f"{self.spec.outcomes!r} has {counts['outcomes']}; both must have the same "
                "partition count and be keyed by event_id so an event and its outcome reach "
                "the same replica"
            )
        self._partitions = partitions

    async def close(self) -> None:
        self._closing.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            async with self._delivering:
                within = self._settings.kafka_shutdown_timeout
                try:  # as far as joins completed since the last commit allow
                    async with asyncio.timeout(within):
                        await self._commits.commit(consumer)
                except TimeoutError:
                    log.warning(
                        "%s: final commit not answered within %gs; the records since the "
                        "last commit are read again at the next start",
                        self.spec.name,
                        within,
                    )
                except Exception as e:
                    log.warning("%s: final commit failed (%s)", self.spec.name, e)
                await leave_group(consumer)  # partitions move now, not after the session
                await stop_client(consumer, self.spec.name, within=within)
        self._set_connected(False, "source closed")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- health -----------------------------------------------------------------------------

    def not_ready(self) -> str | None:
        """Why ``/readyz`` must fail: the broker does not answer, or the group has not
        assigned this member its partitions yet (``None`` once both are fine)."""
        if not self._connected:
            return f"Kafka {self.spec.name}: {self._problem}"
        if not self._assigned:
            why = (
                "a static member takes its place back as it rejoins"
                if self.group_instance_id
                else "a previous member that did not leave the group, after a crash, holds "
                "its partitions until its session expires (kafka_session_timeout)"
            )
            return (
                f"Kafka {self.spec.name}: waiting for partition assignment of group "
                f"{self.spec.group!r} ({why})"
            )
        return None

    def _set_connected(self, ok: bool, problem: str) -> None:
        if ok != self._connected:
            level = logging.INFO if ok else logging.WARNING
            log.log(level, "%s: %s", self.spec.name, "broker reachable" if ok else problem)
        self._connected, self._problem = ok, problem
        self._metrics.kafka_connected.set(1 if ok else 0)

    async def probe(self) -> None:
        """Ask the broker for metadata every ``kafka_health_interval`` until cancelled:
        readiness and ``shadow_kafka_connected`` follow the answers (the stack runs it
        under the supervisor, restarted if it ever fails)."""
        interval = self._settings.kafka_health_interval
        while True:
            consumer = self._consumer
            if consumer is not None:
                try:
                    await asyncio.wait_for(consumer.topics(), timeout=max(interval, 1.0))
                    self._set_connected(True, "")
                except (KafkaError, TimeoutError) as e:
                    self._set_connected(False, f"broker unreachable ({e or type(e).__name__})")
            await asyncio.sleep(interval)

    def _consumer_or_fail(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError(f"{self.spec.name}: source is not started")
        return self._consumer

    # -- consuming --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`close`. Broker trouble is logged and retried."""
        consumer = self._consumer_or_fail()
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            await self._backpressure(consumer, loop.time())
            try:
                fetched = await consumer.getmany(
                    timeout_ms=_POLL_MS, max_records=self._settings.batch_size
                )
            except KafkaError as e:
                log.warning("%s: fetch failed (%s); retrying", self.spec.name, e)
                await asyncio.sleep(0.5)
                continue
            if fetched and not self._closing.is_set():
                try:
                    async with self._delivering:
                        await self._deliver(consumer, fetched)
                except Exception:
                    # Store or dead-letter topic failed: nothing was committed, so read the
                    # batch again (what was stored already comes back as duplicates).
                    log.exception("%s: delivering a batch failed; retrying it", self.spec.name)
                    rewind(consumer, fetched)
                    await asyncio.sleep(_RETRY_S)
            if loop.time() >= self._next_lag:
                self._next_lag = loop.time() + _LAG_EVERY_S
                await self._update_lag(consumer)
            if self._commits.held and loop.time() >= self._next_commit:
                # Batches not committed yet, or joins that completed without new records:
                # move the held-back commits on.
                self._next_commit = loop.time() + self._settings.kafka_commit_interval
                try:
                    async with self._delivering:
                        await self._commits.commit(consumer)
                except Exception:
                    log.exception("%s: advancing held-back commits failed", self.spec.name)

    async def _deliver(
        self, consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, Any]
    ) -> None:
        batch = _Batch()
        for tp, messages in fetched.items():
            for message in messages:
                taken = len(batch.events) + len(batch.outcomes)
                self._parse(tp.topic, message, batch)
                if len(batch.events) + len(batch.outcomes) > taken:
                    record = (
                        batch.events[-1] if tp.topic == self.spec.events else batch.outcomes[-1]
                    )
                    batch.positions.append(
                        (tp.topic, tp.partition, message.offset, record.event_id)
                    )
        # Dead letters of this batch for the dead-letter topic: (message, letter as kept).
        copies: list[tuple[Any, DeadLetter]] = []
        if batch.events:
            results = await self._intake.submit_events(
                batch.events,
                source=f"kafka:{self.spec.events}",
                origins=[message_origin(m) for m in batch.event_messages],
            )
            copies += self._refused("event", results, batch.event_messages)
        if batch.outcomes:
            results = await self._intake.submit_outcomes(
                batch.outcomes,
                source=f"kafka:{self.spec.outcomes}",
                origins=[message_origin(m) for m in batch.outcome_messages],
            )
            copies += self._refused("outcome", results, batch.outcome_messages)
        if batch.dead:
            kept = await self._intake.dead_letter([letter for letter, _ in batch.dead])
            copies += [(m, k) for (_, m), k in zip(batch.dead, kept, strict=True)]
        if copies and self._publisher is not None:
            await self._publisher.dead_letters(copies)
        self._estimate += len(batch.events)
        # Durable before committed: a crash before this line re-delivers the batch, and its
        # re-delivered duplicates record the positions then. Commits (the positions kept
        # since the last one and one query over every held-back partition, in one store
        # transaction, then one broker round trip) run at most every kafka_commit_interval
        # (or after ten batches' positions); the batches in between are committed by the
        # next one.
        now = asyncio.get_running_loop().time()
        # Also due once many positions wait in memory (a long interval, a fast stream).
        due = now >= self._next_commit or self._commits.pending >= 10 * self._settings.batch_size
        if due:
            self._next_commit = now + self._settings.kafka_commit_interval
        await self._commits.delivered(consumer, fetched, batch.positions, commit=due)

    def _refused(
        self, kind: str, results: Iterable[IngestResult], messages: Iterable[Any]
    ) -> list[tuple[Any, DeadLetter]]:
        """The records the intake dead-lettered (unknown task type, conflicting duplicate),
        as the dead-letter topic gets them; nothing without that topic."""
        if self._publisher is None or not self._settings.kafka_dead_letter_topic:
            return []
        out: list[tuple[Any, DeadLetter]] = []
        for result, message in zip(results, messages, strict=True):
            if result.accepted:
                continue
            text = message.value.decode("utf-8").removeprefix("\ufeff")  # it parsed
            letter = message_dead_letter(message, kind, result.reason, result.event_id, text=text)
            out.append((message, self._intake.redact_letter(letter)))
        return out

    def _parse(self, topic: str, message: Any, batch: _Batch) -> None:
        kind = "event" if topic == self.spec.events else "outcome"
        value: bytes | None = message.value
        limit = self._settings.kafka_max_message_bytes

        def dead(
            reason: str, code: Reason, event_id: str | None = None, text: str | None = None
        ) -> None:
            letter = message_dead_letter(message, kind, reason, event_id, code=code, text=text)
            batch.dead.append((letter, message))

        if value is None:
            dead("message has no value (a tombstone); expected one JSON record", Reason.MALFORMED)
            return
        if len(value) > limit:
            dead(
                f"message too large: {len(value)} bytes; the limit is {limit} "
                "(kafka_max_message_bytes)",
                Reason.TOO_LARGE,
            )
            return
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as e:
            dead(f"message is not UTF-8 at byte {e.start}", Reason.ENCODING)
            return
        text = text.removeprefix("\ufeff")
        record = parse_record(text, kind=kind)
        if isinstance(record, RecordError):
            dead(str(record), record.code, record.event_id, text)
            return
        key = message.key
        if key is not None and key != record.event_id.encode("utf-8"):
            shown_key = key[:100].decode("utf-8", "backslashreplace")
            dead(
                f"message key {shown_key!r} does not match event_id {record.event_id!r}; key "
                "events and outcomes by event_id (co-partitioning)",
                Reason.INVALID,
                record.event_id,
                text,
            )
            return
        if isinstance(record, WorkEvent):
            batch.events.append(record)
            batch.event_messages.append(message)
        else:
            batch.outcomes.append(record)
            batch.outcome_messages.append(message)

    # -- backpressure and lag ---------------------------------------------------------------

    async def _backpressure(self, consumer: AIOKafkaConsumer, now: float) -> None:
        """Pause at ``kafka_pause_backlog`` stored events awaiting the agent, resume at
        ``kafka_resume_backlog``. The store is asked only when an upper-bound estimate (last
        count + events delivered since) reaches the threshold, so the backlog never exceeds
        the threshold by more than one batch and the check costs nothing when the agent
        keeps up. (Whether the agent workers are all busy flips each time one frees up;
        the backlog thresholds give the hysteresis.)"""
        s = self._settings
        if self._backlog is None:
            return
        if not self._paused and self._estimate < s.kafka_pause_backlog:
            return
        if self._paused and now < self._next_check:
            return
        self._next_check = now + _BACKPRESSURE_CHECK_S
        backlog = await self._backlog()
        self._estimate = backlog
        if not self._paused and backlog >= s.kafka_pause_backlog:
            self._paused = True
            consumer.pause(*consumer.assignment())
            self._metrics.kafka_paused.set(1)
            log.info("%s: paused (%d events await the agent)", self.spec.name, backlog)
        elif self._paused and backlog <= s.kafka_resume_backlog:
            self._paused = False
            consumer.resume(*consumer.assignment())
            self._metrics.kafka_paused.set(0)
            log.info("%s: resumed (%d events await the agent)", self.spec.name, backlog)

    async def _group_backlog(self, consumer: AIOKafkaConsumer) -> None:
        """Before the group's first assignment: a lag series for every partition of both
        topics, the group's backlog (end offset minus the group's committed offset, or the
        start offset ``kafka_start`` picks when nothing is committed), and uncommitted 0
        (this member has read nothing). Broker errors leave the last values."""
        metrics = self._metrics
        parts = self._partitions
        try:
            async with asyncio.timeout(max(self._settings.kafka_health_interval, 5.0)):
                ends = await consumer.end_offsets(parts)
                if self._settings.kafka_start == "earliest":
                    starts = await consumer.beginning_offsets(parts)
                else:
                    starts = ends
                committed = {tp: await consumer.committed(tp) for tp in parts}
        except (KafkaError, TimeoutError) as e:
            log.debug("%s: reading the group's backlog failed (%s)", self.spec.name, e)
            ends, starts, committed = {}, {}, {}
        for tp in parts:
            labels = (tp.topic, str(tp.partition))
            metrics.kafka_uncommitted.labels(*labels).set(0)
            gauge = metrics.kafka_lag.labels(*labels)
            if tp in ends:
                at = committed.get(tp)
                gauge.set(max(0, ends[tp] - (starts.get(tp, 0) if at is None else at)))
            self._lagging.add(tp)

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        if not self._assigned:
            await self._group_backlog(consumer)
            return
        gauge = self._metrics.kafka_lag
        held = self._metrics.kafka_uncommitted
        for tp in consumer.assignment():
            held.labels(tp.topic, str(tp.partition)).set(self._commits.uncommitted(tp))
            self._lagging.add(tp)
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), timeout=0.5)
            except (KafkaError, TimeoutError):
                continue
            gauge.labels(tp.topic, str(tp.partition)).set(max(0, high - position))
        # A rebalance during the awaits above may have taken partitions away.
        for tp in self._lagging - consumer.assignment():
            self._forget_lag(tp)

    def _forget_lag(self, tp: TopicPartition) -> None:
        self._lagging.discard(tp)
        metrics = self._metrics
        for gauge in (metrics.kafka_lag, metrics.kafka_uncommitted):
            with contextlib.suppress(KeyError):
                gauge.remove(tp.topic, str(tp.partition))
