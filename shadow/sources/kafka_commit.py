"""What a Kafka source commits: each partition only up to its oldest open join.

:class:`HeldCommits` keeps, per assigned partition, the first offset delivered since the
assignment (the *floor*: the group's committed offset when reading started, so nothing
below it is ever sent), one past the last delivered record (the *end*) and the offset last
committed. After a batch is stored, :meth:`HeldCommits.delivered` records where its records
came from (in memory until the next commit: a crash before it re-delivers those records
anyway); when a commit is due (the source commits at most every ``kafka_commit_interval``),
it writes the positions gathered since the last one and asks for each partition's oldest
open record, in one store transaction (:meth:`shadow.store.Store.commit_offsets`), and
commits that, or the end when nothing is open; never lower than what it committed before.
So a commit never passes a record whose position is not durable.
A partition whose commit is held back is looked at again periodically and at revocation,
so its commit advances as its joins complete or expire, even with no new traffic.

The source calls it under its delivery lock, so a commit never sees a batch whose records
are stored but whose positions are not yet recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from shadow.store import Store
from shadow.store.positions import SourcePosition

__all__ = ["HeldCommits"]

log = logging.getLogger("shadow.kafka")

_COMMIT_TIMEOUT_S = 5.0


@dataclass(slots=True)
class _Span:
    committed: int  # the floor at first: where this assignment started reading
    end: int


class HeldCommits:
    """Per-partition commit state of one source; see the module docstring. ``scope``
    names the source in the store's ``source_positions`` (its rows' ``topic`` is
    ``SCOPE/TOPIC``), so sources on different clusters or groups never share rows."""

    def __init__(
        self,
        name: str,
        store: Store,
        clock: Callable[[], datetime],
        ttl: timedelta,
        *,
        scope: str,
    ) -> None:
        self._name = name
        self._scope = scope
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._spans: dict[TopicPartition, _Span] = {}
        # Positions delivered since the last commit computation, by (topic, partition,
        # offset): a batch delivered again after a failure adds nothing.
        self._pending: dict[tuple[str, int, int], str] = {}  # -> event_id

    @property
    def pending(self) -> int:
        """Positions kept in memory until the next commit computation."""
        return len(self._pending)

    def uncommitted(self, tp: TopicPartition) -> int:
        """Records of ``tp`` delivered since its committed offset (0 when not tracked)."""
        span = self._spans.get(tp)
        return 0 if span is None else max(0, span.end - span.committed)

    @property
    def held(self) -> bool:
        """Whether some partition is committed short of what was delivered."""
        return any(s.committed < s.end for s in self._spans.values())

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Revoked partitions: their next owner (maybe this source again) starts afresh
        from the group's committed offset."""
        tps = list(tps)
        gone = {(self._key(tp.topic), tp.partition) for tp in tps}
        for tp in tps:
            self._spans.pop(tp, None)
        if gone:
            self._pending = {k: p for k, p in self._pending.items() if k[:2] not in gone}

    async def delivered(
        self,
        consumer: AIOKafkaConsumer,
        fetched: Mapping[TopicPartition, Any],
        positions: Sequence[SourcePosition],
        *,
        commit: bool = True,
    ) -> None:
        """A batch is stored: keep its ``positions`` and, with ``commit``, record every
        kept position and commit every held-back partition, in one store transaction. If
        the store fails nothing is committed and the source reads the batch again. Without
        ``commit`` the batch's partitions stay held back until the next :meth:`commit` (or
        a later batch with ``commit``)."""
        for tp, messages in fetched.items():
            if messages:
                span = self._spans.setdefault(tp, _Span(messages[0].offset, messages[0].offset))
                span.end = max(span.end, messages[-1].offset + 1)
        for topic, partition, offset, event_id in positions:
            self._pending[(self._key(topic), partition, offset)] = event_id
        if commit:
            await self.commit(consumer)

    async def commit(
        self, consumer: AIOKafkaConsumer, only: Iterable[TopicPartition] | None = None
    ) -> None:
        """Commit every tracked partition (or ``only`` those) up to its oldest open join.
        Store errors propagate (nothing is committed); broker errors are logged."""
        chosen = self._spans if only is None else only
        await self._commit(consumer, await self._compute(chosen))

    async def _compute(self, chosen: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """How far each chosen, held-back partition may now be committed (only advances),
        after recording the kept positions (all of them: a commit never passes a record
        whose position is not durable)."""
        spans = self._spans
        todo = sorted(
            (tp for tp in set(chosen) if tp in spans and spans[tp].committed < spans[tp].end),
            key=lambda tp: (tp.topic, tp.partition),
        )
        if not todo and not self._pending:
            return {}
        found = await self._store.commit_offsets(
            [
                (self._key(tp.topic), tp.partition, spans[tp].committed, spans[tp].end)
                for tp in todo
            ],
            cutoff=self._clock() - self._ttl,
            record=[(*key, event_id) for key, event_id in self._pending.items()],
        )
        # Recorded. The source calls this under its delivery lock, so no position was
        # kept meanwhile.
        self._pending = {}
        out: dict[TopicPartition, int] = {}
        for tp in todo:
            target = found.get((self._key(tp.topic), tp.partition), spans[tp].committed)
            if target > spans[tp].committed:  # never backwards
                out[tp] = target
        return out

    def _key(self, topic: str) -> str:
        return f"{self._scope}/{topic}"

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        if not offsets or not _in_group(consumer):
            return
        try:
            # Bounded: aiokafka retries retriable errors (an unknown topic after a broker
            # restart, say) forever, and this may run inside a rebalance.
            await asyncio.wait_for(consumer.commit(offsets), timeout=_COMMIT_TIMEOUT_S)
        except (KafkaError, TimeoutError) as e:
            # Stored already: a re-delivery is deduplicated by the store.
            why = e or type(e).__name__
            log.warning("%s: commit failed (%s); records may be re-delivered", self._name, why)
            return
        for tp, offset in offsets.items():
            if tp in self._spans:
                self._spans[tp].committed = max(self._spans[tp].committed, offset)


def _in_group(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer is still a member of its group's current generation. After its
    membership was lost (a session timeout, a broker that forgot the group), aiokafka would
    send a generation-less commit, which a broker may accept even though the partitions
    have moved on; like Kafka's ``onPartitionsLost``, such partitions are not committed
    (their records are re-delivered and deduplicated). aiokafka has no public accessor."""
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    if not isinstance(generation, int):
        return True  # cannot tell (another aiokafka): let the broker decide
    return generation >= 0 and bool(getattr(coordinator, "member_id", ""))
