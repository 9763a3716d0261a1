"""Everything Kafka in one ``shadow run``: sources, the publisher, the promoter's follower.

:func:`shadow.app.build_app` builds one :class:`KafkaStack` from the ``kafka://`` sources
and the settings, hands :attr:`KafkaStack.observers` and :attr:`KafkaStack.promote` to the
Ladder (its observers, and whether it decides or follows), then enters
:meth:`KafkaStack.running`, which starts (in order) the publisher, every source (connect +
co-partitioning check: a :class:`~shadow.errors.ConfigError` here aborts start-up) and, with
``kafka_role=promoter``, the comparisons follower; it stops them in reverse. With
``kafka_role=replica`` and ``kafka_autonomy_topic`` it also starts the
:class:`~shadow.sources.follow.AutonomyFollower`, which applies the promoter's levels to
this replica's ladder. :meth:`not_ready` feeds ``/readyz``: every source until its group
assigned it partitions and while its broker does not answer, and a replica until its
follower has read the autonomy topic to the end once.

Their loops run under the supervisor (the ``group`` given to :meth:`KafkaStack.running`):
``kafka-source``, ``kafka-promoter`` and ``kafka-follow`` hold their client's state, so a
failure of one is fatal; ``kafka-publisher`` (the outboxes are in the store) and each
source's ``kafka-health`` probe restart with backoff.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from shadow.config import Settings
from shadow.errors import ConfigError
from shadow.metrics import Metrics
from shadow.sources.follow import AutonomyFollower
from shadow.sources.kafka import KafkaSource, KafkaSpec
from shadow.sources.publish import ComparisonFollower, KafkaPublisher

if TYPE_CHECKING:
    from shadow.pipeline import Pipeline, PipelineObserver
    from shadow.supervisor import TaskGroup
from shadow.store import Store

__all__ = ["KafkaStack"]

log = logging.getLogger("shadow.kafka")


class KafkaStack:
    """The Kafka side of one sidecar; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        specs: Sequence[KafkaSpec],
        *,
        store: Store,
        clock: Callable[[], datetime],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.specs = list(specs)
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.sources: list[KafkaSource] = []
        self.follower: ComparisonFollower | None = None
        self.levels: AutonomyFollower | None = None  # a replica following the promoter
        self.publisher: KafkaPublisher | None = None
        publishes = (
            settings.kafka_comparisons_topic
            or settings.kafka_autonomy_topic
            or settings.kafka_dead_letter_topic
        )
        if settings.kafka_role != "standalone" and not self.specs:
            raise ConfigError(f"kafka_role={settings.kafka_role} needs a kafka:// source")
        if settings.kafka_role != "standalone" and not settings.kafka_comparisons_topic:
            raise ConfigError(
                f"kafka_role={settings.kafka_role} needs kafka_comparisons_topic: replicas "
                "publish their comparisons there and the promoter reads them"
            )
        if self.specs and publishes:
            self.publisher = KafkaPublisher(
                settings,
                self.specs[0].bootstrap,
                store,
                clock,
                metrics,
                decides=self.promote,
                folds=settings.kafka_role == "promoter",
            )

    @property
    def observers(self) -> list[PipelineObserver]:
        return [self.publisher] if self.publisher is not None else []

    @property
    def promote(self) -> bool:
        return self.settings.kafka_role != "replica"

    def not_ready(self) -> str | None:
        """Every reason ``/readyz`` must wait (sources, then the replica's follower), joined
        by ``"; "``, or ``None``."""
        checks = [source.not_ready for source in self.sources]
        if self.levels is not None:
            checks.append(self.levels.not_ready)
        problems = [problem for check in checks if (problem := check())]
        return "; ".join(problems) or None

    def _instance_id(self, index: int) -> str | None:
        """The static member id of the ``index``-th source (``kafka_group_instance_id``; a
        second source in the same process gets ``-1`` appended, and so on, so two sources
        sharing a group never fence each other)."""
        base = self.settings.kafka_group_instance_id
        if base is None:
            return None
        return base if index == 0 else f"{base}-{index}"

    @contextlib.asynccontextmanager
    async def running(self, pipeline: Pipeline, group: TaskGroup) -> AsyncIterator[KafkaStack]:
        """Start everything (see the module docstring); the sources' and followers' loops
        run in ``group`` (supervised). They cannot safely start again on the same client
        after a failure, so a failure of one is fatal: ``shadow run`` stops with exit 1 (and
        the orchestrator starts a fresh process, which resumes from the committed offsets)."""
        if not self.specs:
            yield self
            return
        async with contextlib.AsyncExitStack() as stack:
            if self.publisher is not None:
                await stack.enter_async_context(self.publisher)
            for i, spec in enumerate(self.specs):
                source = KafkaSource(
                    spec,
                    pipeline.intake,
                    self.settings,
                    store=self.store,
                    metrics=self.metrics,
                    clock=self.clock,
                    backlog=None if pipeline.agent is None else self.store.awaiting_agent,
                    publisher=self.publisher,
                    group_instance_id=self._instance_id(i),
                )
                await stack.enter_async_context(source)
                self.sources.append(source)
            if self.settings.kafka_role == "promoter":
                spec = self.specs[0]
                self.follower = ComparisonFollower(
                    self.settings,
                    spec.bootstrap,
                    spec.group,
                    ladder=pipeline.ladder,
                    store=self.store,
                    intake=pipeline.intake,
                    clock=self.clock,
                    evaluate=pipeline.evaluate,
                )
                await self.follower.start()
                stack.push_async_callback(self.follower.close)
            if self.settings.kafka_role == "replica" and self.settings.kafka_autonomy_topic:
                self.levels = AutonomyFollower(
                    self.settings,
                    self.specs[0].bootstrap,
                    ladder=pipeline.ladder,
                    store=self.store,
                    intake=pipeline.intake,
                )
                await stack.enter_async_context(self.levels)
            # The publisher's and the probes' loops keep nothing of their own (the outboxes
            # are in the store), so they restart; a consuming loop holds its client's state.
            if self.publisher is not None and self.publisher.publishes:
                group.spawn("kafka-publisher", self.publisher.run)
            for s in self.sources:
                group.spawn("kafka-health", s.probe, name=f"kafka-health {s.spec.name}")
                group.spawn(
                    "kafka-source", s.run, name=f"kafka-source {s.spec.name}", restart=False
                )
            if self.follower is not None:
                group.spawn("kafka-promoter", self.follower.run, restart=False)
            if self.levels is not None:
                group.spawn("kafka-follow", self.levels.run, restart=False)
            try:
                yield self
            finally:
                await group.stop()
