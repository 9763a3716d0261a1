"""The replay loop: history batches → answers (cache, agent or store) → diff → tallies.

For each batch of selected cases, in ``event_id`` order: cases whose task type the policy
rejects are skipped (counted); payloads are redacted with the task type's rules, exactly as
the live pipeline does before the agent sees them; the :class:`AnswerSource` answers the
batch; each answer is compared with the recorded outcome by :func:`shadow.joiner.compare`
(the live sidecar's verdict, with :class:`shadow.diff.Differ` under the policy's rules) and
tallied in a :class:`~replay.report.TaskStats`. The comparison carries the live label of how
the item was handled (:attr:`shadow.store.JoinRow.handled_by`: the sidecar's routing record,
else the outcome's ``handled_by``, else blind): only blind comparisons are evidence, the
others are tallied as acceptance, as in ``GET /v1/agreement``.

Repeated cases (the noise floor, :mod:`replay.noise`): after a batch is scored, the cases
of a task type with ``repeat_rate`` that its stable hash picks
(:meth:`shadow.policy.TaskPolicy.repeated`, as live) go to the agent ``repeats`` more times,
marked ``repeat: k`` as the live sidecar marks them; the tries are judged against the
case's first answer and tallied apart from the evidence (``ReplayRunner(repeats=False)``,
``--no-repeats``: no repeat call at all).

Batches run one after another: every answer of a batch is cached (one transaction) before
the next batch's first call, so after ``kill -9`` at most the calls of one batch were
made and not kept. Setting ``stop`` (Ctrl-C) ends the run after the answers in flight are
handled; the result then says ``complete: False`` and holds exactly the cases scored, a
consistent partial report. The cache makes the next run resume where this one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from replay.cache import VersionChanged, canonical_request
from replay.history import History, HistoryStats
from replay.model import Case
from replay.report import TaskStats
from shadow.diff import Differ
from shadow.fastjson import loads
from shadow.joiner import compare
from shadow.model import ShadowDecision, WorkEvent
from shadow.policy import Policy
from shadow.store import JoinRow

__all__ = ["AnswerSource", "ReplayResult", "ReplayRunner", "StoreAnswers"]

Progress = Callable[[int], None]
_NO_PAYLOAD: Mapping[str, Any] = MappingProxyType({})


class AnswerSource(Protocol):
    """Answers for a batch of (redacted) events, in order; ``None`` for an event with no
    answer (the run was stopped, or a stored version never answered it)."""

    async def answers(
        self,
        events: Sequence[WorkEvent],
        stop: asyncio.Event | None = None,
        *,
        texts: Sequence[bytes] | None = None,
        handover: bool = False,
        repeat: int | None = None,
    ) -> list[ShadowDecision | None]:
        """``texts`` are the events' canonical request JSON
        (:func:`replay.cache.canonical_request`); with ``handover`` the caller never reads
        the events' payloads again (an in-process agent may keep or change them).
        ``repeat``: these are the ``repeat``-th tries of repeated cases (the noise floor,
        marked as the live sidecar marks them; a source that cannot repeat answers
        ``None``)."""
        ...

    async def flush(self) -> None:
        """Wait until the answers handed out are durable (if the source keeps any)."""


class StoreAnswers:
    """The decisions one agent version made live, read from the sidecar's DuckDB history:
    a baseline scored with the replay's own policy on the same selected cases."""

    def __init__(self, history: History, version: str) -> None:
        self.history = history
        self.version = version

    async def answers(
        self,
        events: Sequence[WorkEvent],
        stop: asyncio.Event | None = None,
        *,
        texts: Sequence[bytes] | None = None,
        handover: bool = False,
        repeat: int | None = None,
    ) -> list[ShadowDecision | None]:
        if repeat is not None:  # the live tries are not a baseline's: none to replay
            return [None] * len(events)
        found = await self.history.stored_decisions(self.version, [e.event_id for e in events])
        return [found.get(e.event_id) for e in events]

    async def flush(self) -> None:
        return None


@dataclass(slots=True)
class ReplayResult:
    tasks: dict[str, TaskStats]
    stats: HistoryStats
    complete: bool
    skipped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    passes: int = 1

    @property
    def scored(self) -> int:
        """Cases compared: the evidence (``n``) and the acceptance of every task type."""
        return sum(t.compared_cases for t in self.tasks.values())


class ReplayRunner:
    """Runs one history through one answer source under one policy."""

    def __init__(
        self,
        history: History,
        policy: Policy,
        source: AnswerSource,
        *,
        examples: int = 5,
        stop: asyncio.Event | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
        repeats: bool = True,
    ) -> None:
        """``repeats``: send the policy's repeated cases (``repeat_rate``) to the agent
        again, ``repeats`` tries each (``--no-repeats``: off)."""
        self.history = history
        self.repeats = repeats
        self.policy = policy
        self.source = source
        self.examples = examples
        self.stop = stop
        self.progress = progress
        self.clock = clock
        self._differs: dict[str, Differ] = {}

    async def run(self) -> ReplayResult:
        start = self.clock()
        passes = 1
        while True:
            try:
                result = await self._pass()
            except VersionChanged:  # the cache has reset itself for the new pass
                passes += 1
                continue
            result.seconds = self.clock() - start
            result.passes = passes
            return result

    async def _pass(self) -> ReplayResult:
        tasks: dict[str, TaskStats] = {}
        skipped: Counter[str] = Counter()
        complete = True
        batches = self.history.batches()
        # The next batch is read (on the history's thread) while this one is answered.
        ahead: asyncio.Future[list[Case] | None] = asyncio.ensure_future(anext(batches, None))
        try:
            while (batch := await ahead) is not None:
                ahead = asyncio.ensure_future(anext(batches, None))
                stopped = await self._batch(batch, tasks, skipped)
                if stopped:
                    complete = False
                    break
        finally:
            await self.source.flush()
            if not ahead.done():
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ahead
            await batches.aclose()
        return ReplayResult(dict(sorted(tasks.items())), self.history.stats, complete, skipped)

    async def _batch(
        self, batch: list[Case], tasks: dict[str, TaskStats], skipped: Counter[str]
    ) -> bool:
        """Answer and score one batch; ``True`` when the run was stopped meanwhile."""
        known: list[tuple[Case, WorkEvent]] = []
        for case in batch:
            task = self.policy.for_task(case.task_type)
            if task is None:
                skipped["unknown_task_type"] += 1
                continue
            event = case.event
            if task.redact:
                event = WorkEvent(
                    event.event_id,
                    event.task_type,
                    task.redact_payload(event.payload),
                    event.occurred_at,
                    event.segment,
                )
            known.append((case, event))
        # The canonical request text is both the cache key's input and the runner's own
        # copy of the (redacted) payload: the payload objects are handed to the source,
        # which may give them to an in-process agent without copying them.
        texts = [canonical_request(e) for _, e in known]
        answers = await self.source.answers(
            [e for _, e in known], self.stop, texts=texts, handover=True
        )
        stopped = self.stop is not None and self.stop.is_set()
        again: list[tuple[Case, bytes, ShadowDecision]] = []
        for (case, _), text, answer in zip(known, texts, answers, strict=True):
            if answer is None:
                if not stopped:
                    skipped["no_answer"] += 1
                continue
            tt = case.task_type
            stats = tasks.get(tt)
            if stats is None:
                task = self.policy.for_task(tt)
                assert task is not None
                stats = tasks[tt] = TaskStats(
                    tt,
                    task,
                    examples=self.examples,
                    prices=self.policy.prices,
                    repeats=self.repeats,
                )
            # The live join's row, with the sidecar's routing record: ``c.handled_by`` is
            # the live rule's label, so only what the live ladder counts is evidence.
            c = compare(JoinRow(tt, answer, case.outcome, "", case.recorded), self._differ(tt))
            # Only a critical miss shows the payload (an example): parse it back then.
            payload = loads(text)["payload"] if c.critical_miss else _NO_PAYLOAD
            stats.add(case, payload, answer, c)
            if self.repeats and stats.task.repeated(case.event_id):
                again.append((case, text, answer))
        if again and not stopped:
            await self._repeat(again, tasks)
            stopped = self.stop is not None and self.stop.is_set()
        if self.progress is not None:
            self.progress(len(batch))
        return stopped

    async def _repeat(
        self, cases: list[tuple[Case, bytes, ShadowDecision]], tasks: dict[str, TaskStats]
    ) -> None:
        """The repeated cases' extra tries, as the live sidecar makes them: try ``k`` of a
        case only after its try ``k - 1`` came back, each marked ``repeat: k``; a case whose
        tries did not all come back (the run was stopped) is not counted."""
        tries: list[list[ShadowDecision]] = [[] for _ in cases]
        wanted = [tasks[case.task_type].task.repeats for case, _, _ in cases]
        for attempt in range(1, max(wanted) + 1):
            idx = [i for i, w in enumerate(wanted) if w >= attempt and len(tries[i]) == attempt - 1]
            if not idx or (self.stop is not None and self.stop.is_set()):
                break
            # A fresh copy of each (redacted) payload: the first call handed its over.
            events = [_event(cases[i][0], cases[i][1]) for i in idx]
            answers = await self.source.answers(
                events,
                self.stop,
                texts=[cases[i][1] for i in idx],
                handover=True,
                repeat=attempt,
            )
            for i, answer in zip(idx, answers, strict=True):
                if answer is not None:
                    tries[i].append(answer)
        for (case, _, first), got, want in zip(cases, tries, wanted, strict=True):
            if len(got) == want:
                tasks[case.task_type].add_repeat(first, got)

    def _differ(self, task_type: str) -> Differ:
        found = self._differs.get(task_type)
        if found is None:
            task = self.policy.for_task(task_type)
            assert task is not None
            found = self._differs[task_type] = Differ(task.compare)
        return found


def _event(case: Case, text: bytes) -> WorkEvent:
    """``case``'s event as the agent was sent it (payload redacted), from the canonical
    request text."""
    e = case.event
    return WorkEvent(e.event_id, e.task_type, loads(text)["payload"], e.occurred_at, e.segment)


def summary(result: ReplayResult) -> dict[str, Any]:
    """The ``history`` counts of a result: the file's, how many cases were read (``read``,
    also ``selected`` -- every selected case when the run is complete), scored, skipped and
    why, and ``unscored``: read but not scored because the run was stopped (a partial run
    reads ahead of what it scores; 0 when complete)."""
    skipped = sum(result.skipped.values())
    read = result.stats.selected
    return {
        **result.stats.to_json(),
        "read": read,
        "scored": result.scored,
        "unscored": max(read - result.scored - skipped, 0),
        "skipped": dict(sorted(result.skipped.items())),
    }
