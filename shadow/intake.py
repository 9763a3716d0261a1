"""Intake: what every source does with the records it read (reject, redact, sample, store,
count), apart from the pipeline's background loops.

One :class:`Intake` per process, shared by HTTP ingest, file and Kafka sources and the
sidecar's own Kafka readers (it is the :class:`~shadow.sources.Sink` they deliver to):

- :meth:`Intake.submit_events` / :meth:`Intake.submit_outcomes` return once the records are
  durably stored (the caller may then acknowledge them). Unknown task types are rejected (or
  dead-lettered for non-HTTP sources); payloads are redacted before storage; events are
  sampled for the agent by a stable hash of their id.
- Every dead letter is redacted before it is stored (:meth:`Intake.redact_letter`): a record
  that parses keeps its text without the policy's redacted fields, one that does not keeps
  at most ``dead_letter_raw_prefix`` characters (none, by default, when the policy redacts
  anything). Sources hand over the text as they read it.
- Every result is counted (``shadow_events_total``, ``shadow_outcomes_total``, dead letters
  and rejections).

What happens next is the pipeline's (:class:`~shadow.pipeline.Pipeline`), told through
:class:`IntakeHooks`: the sampled events just stored (the agent's memory feed) and the
outcomes that may complete a join.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from shadow.errors import Reason
from shadow.ingest import clip_raw
from shadow.metrics import Metrics
from shadow.model import Outcome, WorkEvent
from shadow.policy import Policy
from shadow.store import DeadLetter, PutStatus, Store
from shadow.tracing import NO_TRACING, Tracer

__all__ = ["IngestResult", "Intake", "IntakeHooks"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to one submitted record. ``status``: stored, duplicate, conflict,
    reversal, superseded, unstorable (dead-lettered by the store) or rejected (with
    ``path`` and ``reason``)."""

    event_id: str
    status: str
    path: str = ""
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status not in ("conflict", "rejected", "unstorable")


class IntakeHooks(Protocol):
    """What the intake tells the background work (the pipeline implements it). Both return
    at once."""

    def events_stored(self, events: Sequence[WorkEvent]) -> None:
        """Sampled events just stored for the first time: work for the agent."""

    def outcomes_stored(self, event_ids: Sequence[str]) -> None:
        """Outcomes stored (new, or a reversal): their joins may be ready."""


class Intake:
    """See the module docstring. ``samples`` is false without an agent (nothing is flagged
    for it); ``raw_prefix`` is how many characters of an unparseable record a dead letter
    keeps; ``tracer`` gets an ingest span for each sampled event stored (the root of its
    case's trace, :mod:`shadow.tracing`)."""

    def __init__(
        self,
        *,
        policy: Policy,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], datetime],
        raw_prefix: int,
        samples: bool,
        hooks: IntakeHooks,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self.policy = policy
        self.raw_prefix = raw_prefix
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._samples = samples
        self._hooks = hooks
        self._tracer = tracer

    async def submit_events(
        self,
        events: Sequence[WorkEvent],
        *,
        source: str,
        dead_letter_rejected: bool = True,
        origins: Sequence[str | None] | None = None,
    ) -> list[IngestResult]:
        """Validate task types, redact, sample and store ``events`` (durable on return).

        ``origins[i]`` says where ``events[i]`` was read (e.g. ``topic[partition]@offset``):
        the ``location`` of its dead letter, if it gets one. An event of an unknown task type
        is dead-lettered (unless ``dead_letter_rejected`` is false) with the event, redacted
        by every task type's paths, as ``raw``."""
        if origins is not None and len(origins) != len(events):
            raise ValueError("origins must have one entry per event")
        results: list[IngestResult | None] = [None] * len(events)
        keep: list[tuple[int, WorkEvent]] = []
        needs: list[bool] = []
        rejected: list[DeadLetter] = []
        for i, event in enumerate(events):
            task = self.policy.for_task(event.task_type)
            if task is None:
                known = ", ".join(sorted(self.policy.task_types)) or "none"
                reason = f"unknown task type {event.task_type!r}; configured: {known}"
                results[i] = IngestResult(event.event_id, "rejected", "task_type", reason)
                if dead_letter_rejected:
                    where = origins[i] if origins is not None else None
                    raw = json.dumps(event.to_json(), ensure_ascii=False)
                    letter = DeadLetter(
                        source,
                        "event",
                        reason,
                        raw,
                        event.event_id,
                        where,
                        code=Reason.UNKNOWN_TASK_TYPE,
                    )
                    rejected.append(_stored_form(self.redact_letter(letter)))
                continue
            keep.append((i, replace(event, payload=task.redact_payload(event.payload))))
            needs.append(self._samples and task.sampled(event.event_id))
        if keep:
            began = time.time_ns()
            put = await self._store.put_events(
                [e for _, e in keep],
                source=source,
                now=self._clock(),
                needs_agent=needs,
                locations=None if origins is None else [origins[i] for i, _ in keep],
            )
            fresh: list[WorkEvent] = []
            for (i, stored), r, need in zip(keep, put, needs, strict=True):
                results[i] = IngestResult(r.event_id, r.status.value, "", r.reason)
                if r.status is PutStatus.CONFLICT:
                    self._metrics.dead_letter(source, Reason.CONFLICT)
                    self._metrics.rejected("event", source, Reason.CONFLICT)
                elif need and r.status is PutStatus.STORED:
                    fresh.append(stored)
            if fresh:
                self._tracer.ingested(fresh, source=source, start_ns=began)
                self._hooks.events_stored(fresh)
        if rejected:
            await self._store.put_dead_letters(rejected, now=self._clock())
            for letter in rejected:
                self._metrics.dead_letter(source, letter.code)
        unknown = sum(1 for r in results if r is not None and r.status == "rejected")
        self._metrics.rejected("event", source, Reason.UNKNOWN_TASK_TYPE, unknown)
        final = [r for r in results if r is not None]
        self._metrics.event_results(
            [e.task_type for e in events], source, [r.status for r in final]
        )
        return final

    async def submit_outcomes(
        self,
        outcomes: Sequence[Outcome],
        *,
        source: str,
        origins: Sequence[str | None] | None = None,
    ) -> list[IngestResult]:
        """Store ``outcomes`` (durable on return) and hand their joins to the pipeline.
        ``origins`` as for :meth:`submit_events`."""
        if origins is not None and len(origins) != len(outcomes):
            raise ValueError("origins must have one entry per outcome")
        put = await self._store.put_outcomes(
            outcomes, source=source, now=self._clock(), locations=origins
        )
        for r in put:
            if r.status is PutStatus.CONFLICT:
                self._metrics.dead_letter(source, Reason.CONFLICT)
                self._metrics.rejected("outcome", source, Reason.CONFLICT)
        self._metrics.outcome_results(source, [r.status.value for r in put])
        ready = [
            r.event_id
            for r, o in zip(put, outcomes, strict=True)
            if r.status in (PutStatus.STORED, PutStatus.REVERSAL) and not o.is_second_opinion
        ]
        if ready:
            self._hooks.outcomes_stored(ready)
        return [IngestResult(r.event_id, r.status.value, "", r.reason) for r in put]

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Record input that could not be parsed (sources call this, with ``raw`` the text
        as read, not clipped): each letter is one refused record, counted under its ``code``
        as a dead letter and as a rejection. Each letter is stored as :meth:`redact_letter`
        makes it, its ``raw`` then clipped to :data:`shadow.ingest.RAW_LIMIT` characters; the
        redacted, unclipped letters come back, in order, for copies elsewhere (the Kafka
        dead-letter topic)."""
        if not letters:
            return []
        kept = [self.redact_letter(letter) for letter in letters]
        await self._store.put_dead_letters([_stored_form(k) for k in kept], now=self._clock())
        for letter in letters:
            self._metrics.dead_letter(letter.source, letter.code)
            self._metrics.rejected(letter.kind, letter.source, letter.code)
        return kept

    def redact_letter(self, letter: DeadLetter) -> DeadLetter:
        """``letter`` as it may be kept: ``raw`` through :meth:`Policy.redact_raw` (redacted
        when it parses as a record, else at most :attr:`raw_prefix` characters) and the
        reason cut where it would name a spot inside a redacted field
        (:meth:`Policy.redact_reason`)."""
        raw = letter.raw
        if raw is not None:
            raw = self.policy.redact_raw(raw, unparsed=self.raw_prefix)
        return replace(letter, raw=raw, reason=self.policy.redact_reason(letter.reason))

    def rejected(self, kind: str, source: str, code: Reason, count: int = 1) -> None:
        """Count a refusal made before the intake saw the records (an HTTP body refused
        whole, a record that did not parse)."""
        self._metrics.rejected(kind, source, code, count)


def _stored_form(letter: DeadLetter) -> DeadLetter:
    return letter if letter.raw is None else replace(letter, raw=clip_raw(letter.raw))
