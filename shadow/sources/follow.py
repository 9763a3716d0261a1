"""The replica's follower of the compacted autonomy topic (``kafka_role=replica``).

The promoter publishes every ladder change to ``kafka_autonomy_topic`` (key = task type,
value :func:`shadow.store.outbox.change_record`, with the promoter's ``audit_id``).
:class:`AutonomyFollower` reads that topic on a replica and applies each record to the
replica's own ladder state, so the replica's ``/v1/route``, ``/v1/autonomy`` and
``/v1/agreement`` answer the promoter's level.

Contract:

- **No group, whole topic.** The consumer has no group id: it assigns every partition of the
  topic itself and seeks to the beginning at each start, so a fresh replica sees the latest
  record of every task type (the topic is compacted) and no offsets are ever committed.
- **Every step, in order, once.** A record with an ``audit_id`` is applied when that id is
  above the promoter's audit id this replica last applied for the task type (kept in the
  store with the step, ``autonomy_followed``), so each of the promoter's changes becomes
  one step here, in the promoter's order; a re-delivery, the promoter's re-send at its
  start, or an older record that arrives late changes nothing (counted in
  :attr:`AutonomyFollower.skipped`). A record without ``audit_id`` (a snapshot of a task
  type with no change in the promoter's outbox, or a promoter from before audit ids) is
  applied only when its ``updated_at`` (the promoter's time of the change) is later than
  the replica's stored ``updated_at``; without ``updated_at`` it is the policy's start
  state, which nothing needs to follow.
- **Applied like a ladder move.** One transaction per fetched batch: the new states, the
  global freeze flag (the record's ``frozen``, when present) and one audit entry per applied
  record (action ``follow``, actor ``promoter (autonomy topic)``, the promoter's own
  reason when the record carries it, its audit id, and where the record came from). The
  evidence snapshot in that entry is the replica's local, partial evidence; the replica
  never decides.
- **Poison** (not JSON, a missing or wrong field, a task type not in this replica's policy,
  a key that is not the task type) becomes a dead letter (kind ``autonomy``, location
  ``topic[partition]@offset``); following continues. Tombstones (a deleted key) are skipped.
- **Readiness.** :meth:`AutonomyFollower.not_ready` says why ``/readyz`` must wait until the
  follower has read every partition up to the high watermark seen at start-up: until then
  the replica's levels may be behind the promoter's. A topic that does not exist yet keeps
  the replica not ready (it looks again every second) rather than failing start-up.

A store failure while applying is logged, the batch is read again a second later.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from shadow import promotion
from shadow.config import Settings
from shadow.errors import ConfigError
from shadow.model import Level
from shadow.promotion import LadderState, Move, Proposal, Step
from shadow.sources.kafka_client import (
    client_options,
    message_dead_letter,
    rewind,
    stop_client,
)
from shadow.store import DeadLetter

if TYPE_CHECKING:
    from shadow.intake import Intake
    from shadow.ladder import Ladder
    from shadow.store import Store

__all__ = ["FOLLOW_ACTOR", "AutonomyFollower", "LevelRecord", "parse_level_record"]

log = logging.getLogger("shadow.kafka.follow")

FOLLOW_ACTOR = "promoter (autonomy topic)"
_RETRY_S = 1.0
_BATCH = 500


@dataclass(frozen=True, slots=True)
class LevelRecord:
    """One record of the autonomy topic, checked."""

    task_type: str
    level: Level
    agent_version: str | None
    proposal: Level | None
    updated_at: datetime | None
    frozen: bool | None
    reason: str | None
    audit_id: int | None = None  # the promoter's audit-log id of the change


def parse_level_record(
    value: bytes, key: bytes | None, task_types: Mapping[str, Any]
) -> LevelRecord:
    """Check one autonomy record; ``ValueError`` names the field that is wrong."""
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    name = obj.get("task_type")
    if not isinstance(name, str) or not name:
        raise ValueError("task_type: missing or not a string")
    if name not in task_types:
        raise ValueError(f"task_type: {name!r} is not in this replica's policy")
    if key is not None and key != name.encode("utf-8"):
        shown = key[:100].decode("utf-8", "backslashreplace")
        raise ValueError(f"key {shown!r} does not match task_type {name!r}")

    def optional(field: str, kind: type) -> Any:
        got = obj.get(field)
        if got is not None and not isinstance(got, kind):
            raise ValueError(f"{field}: expected {kind.__name__} or null, got {got!r}")
        return got

    try:
        level = Level.parse(obj.get("level"))
    except ValueError as e:
        raise ValueError(f"level: {e}") from None
    proposal_text = optional("proposal", str)
    try:
        proposal = None if proposal_text is None else Level.parse(proposal_text)
    except ValueError as e:
        raise ValueError(f"proposal: {e}") from None
    audit_id = obj.get("audit_id")
    if audit_id is not None and (
        not isinstance(audit_id, int) or isinstance(audit_id, bool) or audit_id < 1
    ):
        raise ValueError(f"audit_id: expected a positive integer or null, got {audit_id!r}")
    stamp = optional("updated_at", str)
    try:
        updated_at = None if stamp is None else datetime.fromisoformat(stamp)
    except ValueError:
        raise ValueError(f"updated_at: {stamp!r} is not an ISO 8601 time") from None
    if updated_at is not None and updated_at.tzinfo is None:
        raise ValueError(f"updated_at: {stamp!r} has no time zone")
    return LevelRecord(
        task_type=name,
        level=level,
        agent_version=optional("agent_version", str),
        proposal=proposal,
        updated_at=updated_at,
        frozen=optional("frozen", bool),
        reason=optional("reason", str),
        audit_id=audit_id,
    )


class AutonomyFollower:
    """Follows the promoter's levels on a replica; see the module docstring. An async
    context manager; :meth:`close` is idempotent; :meth:`run` follows until closed."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        ladder: Ladder,
        store: Store,
        intake: Intake,
    ) -> None:
        topic = settings.kafka_autonomy_topic
        if topic is None:
            raise ConfigError("following levels needs kafka_autonomy_topic")
        self.topic = topic
        self._settings = settings
        self._bootstrap = bootstrap
        self._ladder = ladder
        self._store = store
        self._intake = intake
        self._consumer: AIOKafkaConsumer | None = None
        self._caught_up = False
        self._progress = "not started"
        self.applied = 0  # records that changed the replica's ladder
        self.skipped = 0  # stale, repeated or start-state records

    async def start(self) -> Self:
        if self._consumer is not None:
            return self
        try:
            self._consumer = await self._connect()
        except KafkaError as e:
            raise ConfigError(
                f"autonomy follower kafka://{self._bootstrap}: cannot reach the broker ({e})"
            ) from None
        return self

    async def _connect(self) -> AIOKafkaConsumer:
        """A started consumer (its start loads every topic's metadata), assigned if the
        topic exists."""
        consumer = AIOKafkaConsumer(
            **client_options(self._settings, self._bootstrap),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            await self._assign(consumer)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _assign(self, consumer: AIOKafkaConsumer) -> bool:
        """Assign every partition of the topic from its beginning; False while it is missing
        (the replica stays not ready and looks again every second)."""
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            self._progress = (
                "the topic does not exist yet; create it with cleanup.policy=compact (the "
                "promoter publishes there)"
            )
            return False
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
        await consumer.seek_to_beginning()
        self._progress = "starting"
        return True

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_client(
                consumer, "autonomy follower", within=self._settings.kafka_shutdown_timeout
            )

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def not_ready(self) -> str | None:
        """Why ``/readyz`` must wait: the topic is not read up to its end yet."""
        if self._caught_up:
            return None
        return (
            f"Kafka replica: catching up with the promoter's levels on autonomy topic "
            f"{self.topic!r} ({self._progress})"
        )

    async def run(self) -> None:
        """Follow until :meth:`close`; broker and store trouble is logged and retried."""
        while self._consumer is not None:
            consumer = self._consumer
            if not consumer.assignment():
                # A consumer without subscriptions never refreshes other topics' partitions:
                # once the topic exists, start over with a fresh consumer.
                try:
                    if self.topic in await consumer.topics():
                        fresh = await self._connect()
                        if self._consumer is not consumer:  # closed meanwhile
                            await fresh.stop()
                            return
                        self._consumer = fresh
                        await consumer.stop()
                    else:
                        await asyncio.sleep(_RETRY_S)
                except KafkaError as e:
                    log.warning("looking for the autonomy topic failed (%s); retrying", e)
                    await asyncio.sleep(_RETRY_S)
                continue
            try:
                fetched = await consumer.getmany(timeout_ms=200, max_records=_BATCH)
            except KafkaError as e:
                log.warning("reading the autonomy topic failed (%s); retrying", e)
                await asyncio.sleep(_RETRY_S)
                continue
            if fetched:
                try:
                    await self._apply(fetched)
                except Exception:
                    log.exception("applying the promoter's levels failed; retrying the batch")
                    rewind(consumer, fetched)
                    await asyncio.sleep(_RETRY_S)
                    continue
            if not self._caught_up:
                await self._check_caught_up(consumer)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        behind: list[str] = []
        for tp in sorted(consumer.assignment(), key=lambda tp: tp.partition):
            high = consumer.highwater(tp)
            if high is None:
                behind.append(f"partition {tp.partition}: no fetch answered yet")
                continue
            position = await consumer.position(tp)
            if position < high:
                behind.append(f"partition {tp.partition}: at {position} of {high}")
        if behind:
            self._progress = "; ".join(behind)
            return
        self._caught_up = True
        log.info(
            "caught up with autonomy topic %r (%d applied, %d skipped)",
            self.topic,
            self.applied,
            self.skipped,
        )

    async def _apply(self, fetched: Mapping[TopicPartition, Any]) -> None:
        policy = self._ladder.policy
        records: list[tuple[LevelRecord, str]] = []
        bad: list[DeadLetter] = []
        for messages in fetched.values():
            for m in messages:
                where = f"{m.topic}[{m.partition}]@{m.offset}"
                if m.value is None:
                    continue  # a tombstone: the key was deleted; nothing to follow
                try:
                    records.append((parse_level_record(m.value, m.key, policy.task_types), where))
                except ValueError as e:
                    reason = f"invalid autonomy record: {e}"
                    bad.append(message_dead_letter(m, "autonomy", reason))
        await self._intake.dead_letter(bad)
        if not records:
            return
        store = self._store
        states = self._ladder.states()
        evidence = await store.evidence()
        seen = await store.followed_audit_ids()
        followed: dict[str, int] = {}
        steps: list[Step] = []
        frozen: bool | None = None
        for rec, where in records:
            before = states[rec.task_type]
            if not self._new(rec, before, seen):
                self.skipped += 1
                continue
            assert rec.updated_at is not None  # _new refuses records without a time
            task = policy.task_types[rec.task_type]
            snap = promotion.snapshot(
                evidence.get(rec.task_type, {}).get(rec.agent_version or ""),
                task,
                rec.agent_version,
            )
            proposal = None
            if rec.proposal is not None:
                proposal = Proposal.make(
                    rec.task_type, rec.level, rec.proposal, rec.agent_version, rec.updated_at, snap
                )
            after = LadderState(
                rec.task_type, rec.level, rec.agent_version, proposal, rec.updated_at
            )
            why = rec.reason or f"the promoter's level is {rec.level}"
            change = "" if rec.audit_id is None else f"promoter audit {rec.audit_id}, "
            reason = (
                f"followed from {where} ({change}promoter time {rec.updated_at.isoformat()}): {why}"
            )
            steps.append(Step(Move.FOLLOW, before, after, reason, snap))
            states[rec.task_type] = after
            if rec.audit_id is not None:
                seen[rec.task_type] = followed[rec.task_type] = rec.audit_id
            if rec.frozen is not None:
                frozen = rec.frozen
        if not steps:
            return
        # The Ladder announces what it now follows (gauges, observers) itself.
        await self._ladder.follow(steps, actor=FOLLOW_ACTOR, frozen=frozen, followed=followed)
        self.applied += len(steps)

    @staticmethod
    def _new(rec: LevelRecord, before: LadderState, seen: Mapping[str, int]) -> bool:
        """Whether ``rec`` is a change this replica has not applied yet: by the promoter's
        audit id when the record has one, else by the promoter's time of the change."""
        if rec.updated_at is None:
            return False
        if rec.audit_id is not None:
            return rec.audit_id > seen.get(rec.task_type, 0)
        return before.updated_at is None or rec.updated_at > before.updated_at
