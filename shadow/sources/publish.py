"""Publishing to Kafka, and the promoter that folds every replica's comparisons together.

:class:`KafkaPublisher` is a :class:`~shadow.pipeline.PipelineObserver` with its own task:

- **Comparisons** (``kafka_comparisons_topic``): an outbox. The store remembers which
  comparison revision was published (``published_comparisons``, schema v2); the publisher
  sends what is not yet marked, waits for the broker's acknowledgement, then marks it. A
  crash in between re-publishes; consumers upsert by ``(event_id, agent_version)``. Key:
  ``event_id``. Value: :func:`comparison_json`.
- **Autonomy** (``kafka_autonomy_topic``, create it with ``cleanup.policy=compact``): a
  change feed of the ladder, key = task type. Every change this sidecar decides (automatic
  or an operator's) is one record, :func:`~shadow.store.outbox.change_record`: the state
  after it (:func:`~shadow.store.outbox.ladder_json`), ``frozen`` (the global freeze flag
  after it), ``reason`` (``"<action> by <actor>: <reason>"``), and the change itself:
  ``audit_id`` (the id of the audit-log row that recorded it), ``action``, ``actor``,
  ``from_level``, ``to_level``. An outbox: the store queues each change with its audit row
  (``autonomy_outbox``, schema v7); the publisher sends the queue in audit id order, one
  record at a time, and marks each once the broker acknowledged it, so changes made while
  the broker is away, or before a crash, are published later, in order; a crash between
  the acknowledgement and the mark publishes that change again (same ``audit_id``).
  After the queue is drained at each start, each configured task type's latest change is
  sent again (same ``audit_id``; readers skip ids they have seen), or, for a task type with
  none in the outbox, a snapshot of its state with ``audit_id`` null, so a recreated topic
  or a new reader learns every level. Never from ``kafka_role=replica``. Replicas follow it
  (:mod:`shadow.sources.follow`).
- **Dead letters** (``kafka_dead_letter_topic``): one record per dead letter of a Kafka
  record, whichever stage refused it (the source: poison; the pipeline: an unknown task
  type, a conflicting duplicate), same key as the message. The value is the message as
  the dead letter keeps it (:meth:`shadow.intake.Intake.redact_letter`): the record
  without the policy's redacted fields, or at most ``dead_letter_raw_prefix`` characters
  of what does not parse, or no value at all. Headers: ``shadow-reason``, ``shadow-kind``,
  and the origin ``shadow-topic``, ``shadow-partition``, ``shadow-offset``.

:class:`ComparisonFollower` runs on the one replica with ``kafka_role=promoter``: it reads
the comparisons topic (consumer group ``<group>.promoter``), upserts every replica's
comparisons into its own store (marked published, so they are not echoed), commits, and
re-decides the ladder; a record it cannot read becomes a dead letter (kind
``comparison``). Replicas (``kafka_role=replica``) never promote.

Publishing never slows the pipeline: observer calls only wake the publisher's task, and
broker errors are retried with a pause (counted in ``shadow_kafka_publish_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from shadow.checks import MAX_ID_LENGTH, TASK_TYPE_RE, brief
from shadow.config import Settings
from shadow.errors import ConfigError
from shadow.metrics import Metrics
from shadow.model import Comparison, FieldResult, Handling, Level, Verdict
from shadow.promotion import LadderState
from shadow.sources.kafka_client import (
    client_options,
    message_dead_letter,
    next_offsets,
    rewind,
    start_client,
    stop_client,
)
from shadow.store import DeadLetter, Routed, Store
from shadow.store.outbox import ladder_json

if TYPE_CHECKING:
    from shadow.intake import Intake
    from shadow.ladder import Ladder

__all__ = [
    "ComparisonFollower",
    "KafkaPublisher",
    "comparison_from_json",
    "comparison_json",
    "handling_from_json",
    "handling_json",
]

log = logging.getLogger("shadow.kafka.publish")

_CONTROL = re.compile("[\x00-\x1f\x7f]")
_TRACE_ID = re.compile("[0-9a-f]{32}")

_RETRY_S = 1.0
_POLL_S = 1.0
_OUTBOX_BATCH = 1000


def comparison_json(c: Comparison) -> dict[str, Any]:
    return {
        "event_id": c.event_id,
        "task_type": c.task_type,
        "agent_version": c.agent_version,
        "verdict": c.verdict.value,
        "critical_miss": c.critical_miss,
        "outcome_hash": c.outcome_hash,
        "fields": [f.to_json() for f in c.fields],
        "handled_by": c.handled_by.value,
        "segment": c.segment,
        "trace_id": c.trace_id,
    }


def handling_json(r: Routed) -> dict[str, Any]:
    """A routing answer as the comparisons topic carries it (``kind: handling``)."""
    return {
        "kind": "handling",
        "event_id": r.event_id,
        "task_type": r.task_type,
        "handled_by": r.handled_by.value,
        "level": str(r.level),
        "routed_at": r.at.isoformat(),
    }


def handling_from_json(obj: Mapping[str, Any]) -> Routed:
    """Inverse of :func:`handling_json`; raises ``KeyError``/``ValueError`` on bad input."""
    at = datetime.fromisoformat(str(obj["routed_at"]))
    if at.tzinfo is None:
        raise ValueError("routed_at has no time zone")
    task_type = _text(obj["task_type"])
    if not TASK_TYPE_RE.match(task_type):
        raise ValueError(f"task_type {task_type!r} is not a task type name")
    return Routed(
        event_id=_text(obj["event_id"]),
        task_type=task_type,
        handled_by=Handling(obj["handled_by"]),
        level=Level.parse(obj["level"]),
        at=at,
    )


def _text(value: object) -> str:
    """An identifier as the HTTP API accepts one: non-empty, at most ``MAX_ID_LENGTH``
    characters, no control characters (a topic record is no more trusted than a request)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {brief(value)}")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"too long ({len(value)} characters); at most {MAX_ID_LENGTH}")
    if _CONTROL.search(value):
        raise ValueError(f"must not contain control characters, got {brief(value)}")
    return value


def comparison_from_json(obj: Mapping[str, Any]) -> Comparison:
    """Inverse of :func:`comparison_json`; raises ``KeyError``/``ValueError`` on bad input."""
    return Comparison(
        event_id=str(obj["event_id"]),
        task_type=str(obj["task_type"]),
        agent_version=str(obj["agent_version"]),
        verdict=Verdict(obj["verdict"]),
        fields=tuple(FieldResult.from_json(f) for f in obj["fields"]),
        critical_miss=bool(obj["critical_miss"]),
        outcome_hash=obj.get("outcome_hash"),
        # Records from sidecars before independent evidence carry none: they were blind.
        handled_by=Handling(obj.get("handled_by", "blind")),
        # Records from sidecars before these fields carry neither.
        trace_id=_trace_id(obj.get("trace_id")),
        segment=None if obj.get("segment") is None else _text(obj["segment"]),
    )


def _trace_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TRACE_ID.fullmatch(value):
        raise ValueError(f"trace_id must be 32 lowercase hex digits, got {brief(value)}")
    return value


def _encode(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


class KafkaPublisher:
    """Publishes comparisons, autonomy changes and dead-letter copies; see the module
    docstring. An async context manager with an idempotent :meth:`close`."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        store: Store,
        clock: Callable[[], datetime],
        metrics: Metrics,
        *,
        decides: bool = True,
        folds: bool = False,
    ) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        # What this process's place in a Kafka deployment asks of it (the stack says):
        # only a process that decides the ladder publishes its changes, and the process
        # that folds every replica's comparisons (the promoter) publishes no routing
        # records (its own are already in its store, where the replicas' land).
        self._decides = decides
        self._folds = folds
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        self._states: dict[str, LadderState] = {}  # every configured task type's, latest
        self._republished = False  # each task type's latest change sent again since start

    async def start(self) -> Self:
        if self._producer is not None:
            return self
        # acks=all; not idempotent: tansu has no InitProducerId, and consumers upsert anyway.
        options = client_options(self._settings, self._bootstrap)
        producer = AIOKafkaProducer(
            **options,
            acks="all",
            max_request_size=max(1_048_576, self._settings.kafka_max_message_bytes + 65_536),
        )
        await start_client(producer, f"Kafka publisher kafka://{self._bootstrap}", options)
        self._producer = producer
        self._wake.set()
        return self

    @property
    def publishes(self) -> bool:
        """Whether :meth:`run` has outboxes to send (a comparisons or autonomy topic)."""
        s = self._settings
        return bool(s.kafka_comparisons_topic or s.kafka_autonomy_topic)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_client(producer, "publisher", within=self._settings.kafka_shutdown_timeout)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- PipelineObserver ---------------------------------------------------------------------

    def comparisons_stored(self, comparisons: Sequence[Comparison]) -> None:
        self._wake.set()

    def ladder(self, states: Mapping[str, LadderState]) -> None:
        # The changes themselves come from the store's outbox; the states are only for the
        # snapshot of task types that never changed.
        self._states.update(states)
        self._wake.set()

    # -- publishing -------------------------------------------------------------------------

    async def dead_letters(self, copies: Sequence[tuple[Any, DeadLetter]]) -> None:
        """Copy dead letters to the dead-letter topic (no-op without one): for each Kafka
        message, its dead letter as kept (redacted ``raw``, reason). Returns once the broker
        acknowledged every copy; raises ``KafkaError`` otherwise (the source retries)."""
        topic = self._settings.kafka_dead_letter_topic
        if topic is None or self._producer is None or not copies:
            return
        limit = self._settings.kafka_max_message_bytes
        sent: list[asyncio.Future[Any]] = []
        failed: BaseException | None = None
        try:
            for message, letter in copies:
                headers = [
                    ("shadow-reason", letter.reason.encode("utf-8")),
                    ("shadow-kind", letter.kind.encode("utf-8")),
                    ("shadow-topic", str(message.topic).encode("utf-8")),
                    ("shadow-partition", str(message.partition).encode("ascii")),
                    ("shadow-offset", str(message.offset).encode("ascii")),
                ]
                value = None if letter.raw is None else letter.raw.encode("utf-8")
                if value is not None and len(value) > limit:
                    value = value[:limit]
                    headers.append(("shadow-truncated", b"true"))
                sent.append(
                    await self._producer.send(topic, value=value, key=message.key, headers=headers)
                )
        except KafkaError as e:
            failed = e
        # Every queued send is awaited, so none is left with an unretrieved error.
        for outcome in await asyncio.gather(*sent, return_exceptions=True):
            if failed is None and isinstance(outcome, BaseException):
                failed = outcome
        if failed is not None:
            self._metrics.kafka_publish_errors.labels("dead_letters").inc()
            raise failed
        self._metrics.kafka_published.labels("dead_letters").inc(len(copies))

    async def run(self) -> None:
        """Send the outboxes whenever woken (and every second) until cancelled; broker and
        store errors are logged and retried after a pause (the stack runs it under the
        supervisor, restarted if it ever fails: the outboxes are in the store)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=_POLL_S)
            self._wake.clear()
            try:
                await self._publish_handling()
                await self._publish_comparisons()
                await self._publish_ladder()
            except KafkaError as e:
                log.warning("publishing to Kafka failed (%s); retrying", e)
                await asyncio.sleep(_RETRY_S)
                self._wake.set()
            except Exception:  # the store: the outbox is still there next time
                log.exception("reading a Kafka outbox failed; retrying")
                await asyncio.sleep(_RETRY_S)
                self._wake.set()

    async def _publish_handling(self) -> None:
        """Routing answers go out before comparisons: the promoter then mostly learns how
        an item was handled before it counts the item (when not, it relabels it)."""
        topic = self._settings.kafka_comparisons_topic
        if topic is None or self._producer is None or self._folds:
            return
        while True:
            todo = await self._store.unpublished_handling(limit=_OUTBOX_BATCH)
            if not todo:
                return
            try:
                sent = [
                    await self._producer.send(
                        topic, value=_encode(handling_json(r)), key=r.event_id.encode("utf-8")
                    )
                    for r in todo
                ]
                await asyncio.gather(*sent)
            except KafkaError:
                self._metrics.kafka_publish_errors.labels("handling").inc()
                raise
            await self._store.mark_handling_published(todo, now=self._clock())
            self._metrics.kafka_published.labels("handling").inc(len(todo))

    def handling_recorded(self) -> None:
        """A routing answer was stored (:class:`shadow.handling.HandlingLog`): publish it."""
        self._wake.set()

    async def _publish_comparisons(self) -> None:
        topic = self._settings.kafka_comparisons_topic
        if topic is None or self._producer is None:
            return
        while True:
            todo = await self._store.unpublished_comparisons(limit=_OUTBOX_BATCH)
            if not todo:
                return
            try:
                sent = [
                    await self._producer.send(
                        topic, value=_encode(comparison_json(c)), key=c.event_id.encode("utf-8")
                    )
                    for c in todo
                ]
                await asyncio.gather(*sent)
            except KafkaError:
                self._metrics.kafka_publish_errors.labels("comparisons").inc()
                raise
            await self._store.mark_published(todo, now=self._clock())
            self._metrics.kafka_published.labels("comparisons").inc(len(todo))

    async def _publish_ladder(self) -> None:
        topic = self._settings.kafka_autonomy_topic
        # A replica's ladder is not the ladder: only the process that decides publishes.
        producer = self._producer
        if topic is None or producer is None or not self._decides:
            return
        while True:
            todo = await self._store.unpublished_changes(limit=_OUTBOX_BATCH)
            if not todo:
                break
            # One at a time: a record must be acknowledged before the next is sent, so a
            # failed send can never let a later change overtake it on the topic.
            for audit_id, record in todo:
                await self._send_ladder(producer, topic, record)
                await self._store.mark_changes_published([audit_id], now=self._clock())
        if not self._republished and self._states:
            await self._republish(producer, topic)
            self._republished = True

    async def _republish(self, producer: AIOKafkaProducer, topic: str) -> None:
        """Each configured task type's latest published change again, or a snapshot of its
        state when the outbox has no change of it at all (a task type at its start level,
        or a store from before the outbox): a recreated topic, or a reader that missed the
        history, learns every level. Readers skip the audit ids they have seen."""
        latest = await self._store.latest_changes()
        frozen = await self._store.is_frozen()
        snapshots = []
        for name, state in sorted(self._states.items()):
            if name in latest:
                continue
            value = ladder_json(state)
            snapshots.append(
                {
                    **value,
                    "frozen": frozen,
                    "reason": await self._reason(name, value),
                    "audit_id": None,
                    "action": None,
                    "actor": None,
                    "from_level": None,
                    "to_level": None,
                }
            )
        # Only published changes are sent again: one still queued is sent by the next drain,
        # after the older ones, so no reader sees a change before the ones that preceded it.
        again = sorted(
            (c for name, c in latest.items() if c is not None and name in self._states),
            key=lambda change: change[0],
        )
        for record in snapshots + [record for _, record in again]:
            await self._send_ladder(producer, topic, record)

    async def _send_ladder(
        self, producer: AIOKafkaProducer, topic: str, record: Mapping[str, Any]
    ) -> None:
        try:
            await producer.send_and_wait(
                topic, value=_encode(record), key=str(record["task_type"]).encode("utf-8")
            )
        except KafkaError:
            self._metrics.kafka_publish_errors.labels("autonomy").inc()
            raise
        self._metrics.kafka_published.labels("autonomy").inc()

    async def _reason(self, name: str, value: Mapping[str, Any]) -> str | None:
        """The audited reason of the change that produced ``value`` (same time), if any."""
        stamp = value.get("updated_at")
        if stamp is None:
            return None
        at = datetime.fromisoformat(stamp)
        for _, entry in await self._store.audit_log(task_type=name, limit=10):
            if entry.at == at:
                return f"{entry.action} by {entry.actor}: {entry.reason}"
        return None


class ComparisonFollower:
    """The promoter's reader of the comparisons topic; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        group: str,
        *,
        ladder: Ladder,
        store: Store,
        intake: Intake,
        clock: Callable[[], datetime],
        evaluate: Callable[[], Awaitable[None]],
    ) -> None:
        topic = settings.kafka_comparisons_topic
        if topic is None:
            raise ConfigError("kafka_role=promoter needs kafka_comparisons_topic")
        self._topic = topic
        self._settings = settings
        self._bootstrap = bootstrap
        self._group = f"{group}.promoter"
        self._ladder = ladder
        self._store = store
        self._intake = intake
        self._clock = clock
        self._evaluate = evaluate  # re-decide the ladder, then the gauges and observers
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> Self:
        if self._consumer is None:
            options = client_options(self._settings, self._bootstrap)
            consumer = AIOKafkaConsumer(
                self._topic,
                **options,
                group_id=self._group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await start_client(consumer, f"promoter kafka://{self._bootstrap}", options)
            self._consumer = consumer
        return self

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_client(
                consumer, "comparison follower", within=self._settings.kafka_shutdown_timeout
            )

    async def run(self) -> None:
        """Fold comparisons into the store until closed; commit after each stored batch."""
        while self._consumer is not None:
            consumer = self._consumer
            try:
                fetched = await consumer.getmany(timeout_ms=200, max_records=_OUTBOX_BATCH)
            except KafkaError as e:
                log.warning("reading comparisons failed (%s); retrying", e)
                await asyncio.sleep(_RETRY_S)
                continue
            if not fetched:
                continue
            try:
                await self._fold(consumer, fetched)
            except Exception:
                log.exception("folding comparisons failed; retrying the batch")
                rewind(consumer, fetched)
                await asyncio.sleep(_RETRY_S)

    async def _fold(self, consumer: AIOKafkaConsumer, fetched: Mapping[Any, Any]) -> None:
        comparisons: list[Comparison] = []
        routed: list[Routed] = []
        bad: list[DeadLetter] = []
        for messages in fetched.values():
            for m in messages:
                try:
                    value = json.loads(m.value)
                    if isinstance(value, dict) and value.get("kind") == "handling":
                        routed.append(handling_from_json(value))
                    else:
                        comparisons.append(comparison_from_json(value))
                except (KeyError, ValueError, TypeError, AttributeError) as e:
                    reason = f"invalid comparison record: {type(e).__name__}: {e}"
                    bad.append(message_dead_letter(m, "comparison", reason))
        await self._intake.dead_letter(bad)
        store = self._store
        now = self._clock()
        # How items were handled first: the comparisons of this batch then keep the label
        # of the sidecar that answered the route, whichever replica compared them.
        relabelled = await store.put_handling(routed, published=True)
        # Marked published in the same transaction: the outbox must never see them as this
        # sidecar's own to publish. An 'expired' record never replaces a real verdict (the
        # member that lost a partition may expire a join its new owner completed).
        await store.put_comparisons(comparisons, now=now, actor="kafka", published=True)
        with contextlib.suppress(KafkaError):
            await consumer.commit(next_offsets(fetched))
        ladder = self._ladder
        if relabelled:  # comparisons folded before changed label: fold them again
            ladder.refold({r.task_type for r in routed})
        # The drift fold takes each comparison with the label the store gave it (this
        # sidecar's routing record wins over the replica's label), not the one it came with.
        recorded = await store.handling_of([c.event_id for c in comparisons])
        ladder.observe(
            [
                dataclasses.replace(c, handled_by=recorded[c.event_id])
                if c.event_id in recorded
                else c
                for c in comparisons
            ]
        )
        await self._evaluate()
