"""The joiner: event ⋈ decision ⋈ outcome, in any order, any number of times.

Pending joins live in the store as rows; the joiner asks the store which decisions now have
a current outcome and no up-to-date comparison, diffs them under the task type's rules and
writes the comparisons back. Re-running it is harmless: a pair is compared once per outcome
revision, so duplicates never count twice and an outcome reversal re-compares (and is
audited by the store).

:func:`compare` is the pure part; :class:`Joiner` drives it against a :class:`Store`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shadow.diff import Differ
from shadow.model import Action, AuditEntry, Comparison, FieldResult, Verdict
from shadow.policy import CompareRules, Policy
from shadow.store import JoinRow, Reversal, Store

__all__ = ["JoinReport", "Joiner", "compare", "declared_note"]

_STRICT = CompareRules()


def compare(row: JoinRow, differ: Differ, trace_id: str | None = None) -> Comparison:
    """The verdict for one joined pair. An agent error is a verdict of its own (it counts
    against the agent, but is not a critical miss: nothing was done). ``trace_id``: the
    case's trace, kept with the comparison (shadow.tracing)."""
    d = row.decision
    if d.error is not None or d.decision is None:
        reason = d.error or "agent returned no decision"
        return Comparison(
            event_id=d.event_id,
            task_type=row.task_type,
            agent_version=d.agent_version,
            verdict=Verdict.AGENT_ERROR,
            fields=(FieldResult("decision", "agent", False, False, reason),),
            critical_miss=False,
            outcome_hash=row.outcome_hash,
            handled_by=row.handled_by,
            trace_id=trace_id,
        )
    result = differ(d.decision, row.outcome.decision, d.actions, row.outcome.actions)
    fields = result.fields
    if d.declared_actions is not None:
        fields = (*fields, declared_note(d.declared_actions, d.actions))
    return Comparison(
        event_id=d.event_id,
        task_type=row.task_type,
        agent_version=d.agent_version,
        verdict=Verdict.AGREE if result.agree else Verdict.DISAGREE,
        fields=fields,
        critical_miss=result.critical_miss,
        outcome_hash=row.outcome_hash,
        handled_by=row.handled_by,
        trace_id=trace_id,
    )


def _tools(actions: Sequence[Action]) -> str:
    return "[" + ", ".join(a.tool for a in actions) + "]"


def declared_note(declared: Sequence[Action], called: Sequence[Action]) -> FieldResult:
    """The comparison's note that the agent's answer listed other actions than the tool
    calls it made through the gateway (the calls are what is compared; the note is not a
    mismatch, so it does not change the verdict)."""
    return FieldResult(
        "actions.declared",
        "tool_calls",
        True,
        False,
        f"the agent's answer listed {_tools(declared)}, its tool calls were {_tools(called)}; "
        "the tool calls are compared",
    )


@dataclass(slots=True)
class JoinReport:
    comparisons: list[Comparison] = field(default_factory=list)
    reversals: list[Reversal] = field(default_factory=list)
    # Task types of outcomes whose stated handled_by the sidecar's routing record overruled.
    conflicts: list[str] = field(default_factory=list)


class Joiner:
    """Completes joins against the store. ``clock`` returns an aware ``datetime``.

    Unknown task types (no policy any more) are compared with strict exact rules rather
    than left pending forever.
    """

    def __init__(
        self,
        store: Store,
        policy: Policy,
        clock: Callable[[], datetime],
        *,
        batch: int = 5000,
        before: Callable[[], Awaitable[None]] | None = None,
        trace_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self.store = store
        # Run before each join: the routing records still in memory reach the store first
        # (shadow.handling), so each comparison is labelled with how its item was handled.
        self.before = before
        # The case's trace id (shadow.tracing), kept with each comparison it makes; None:
        # tracing off.
        self.trace_of = trace_of
        self.policy = policy
        self.clock = clock
        self.batch = batch
        self._differs: dict[str, Differ] = {}

    def differ_for(self, task_type: str) -> Differ:
        found = self._differs.get(task_type)
        if found is None:
            task = self.policy.for_task(task_type)
            found = Differ(task.compare if task is not None else _STRICT)
            self._differs[task_type] = found
        return found

    async def join(self, event_ids: Sequence[str] | None = None) -> JoinReport:
        """Compare every ready pair among ``event_ids`` (all events when ``None``)."""
        report = JoinReport()
        if self.before is not None:
            await self.before()
        while True:
            # One row more than a batch tells whether another query is needed (a full
            # batch alone would cost one more query that finds nothing).
            rows = await self.store.ready_pairs(event_ids, limit=self.batch + 1)
            more = len(rows) > self.batch
            rows = rows[: self.batch]
            if not rows:
                return report
            trace_of = self.trace_of
            comparisons = [
                compare(
                    r,
                    self.differ_for(r.task_type),
                    None if trace_of is None else trace_of(r.decision.event_id),
                )
                for r in rows
            ]
            report.conflicts += [r.task_type for r in rows if r.handling_conflict]
            report.reversals += await self.store.put_comparisons(comparisons, now=self.clock())
            report.comparisons += comparisons
            if not more:
                return report

    async def new_epochs(self) -> list[AuditEntry]:
        """Start a new evidence epoch for every configured task type whose compare rules
        changed since its comparisons were made: re-score every stored decision that has an
        outcome under the new rules (in place: the evidence is never empty or mixed in
        between), then keep the epoch and audit it with the old and new hashes. Call before
        the ladder reads the evidence (the pipeline does, at start). Returns the audit
        entries."""
        started: list[AuditEntry] = []
        for name, task in self.policy.task_types.items():
            kept = await self.store.epoch_of(name)
            epoch = {"compare_hash": task.compare_hash, "policy_hash": self.policy.hash}
            if kept is None:  # the first start that keeps epochs: these rules made them
                await self.store.set_epoch(name, {**epoch, "epoch": 1})
                continue
            if kept.get("compare_hash") == task.compare_hash:
                continue
            rescored, changed = await self._rescore(name)
            number = int(kept.get("epoch", 1)) + 1
            entry = AuditEntry(
                at=self.clock(),
                task_type=name,
                actor="sidecar",
                action="evidence_epoch",
                from_level=None,
                to_level=None,
                reason=(
                    f"compare rules changed: evidence epoch {number}, {rescored} comparisons "
                    f"re-scored under the new rules, {changed} verdicts changed"
                ),
                evidence={
                    "epoch": number,
                    "rescored": rescored,
                    "verdicts_changed": changed,
                    "old_compare_hash": kept.get("compare_hash"),
                    "new_compare_hash": task.compare_hash,
                    "old_policy_hash": kept.get("policy_hash"),
                    "new_policy_hash": self.policy.hash,
                },
                policy_hash=self.policy.hash,
            )
            await self.store.set_epoch(name, {**epoch, "epoch": number}, entry)
            started.append(entry)
        return started

    async def _rescore(self, task_type: str) -> tuple[int, int]:
        differ = self.differ_for(task_type)
        rescored = changed = 0
        after = -1
        while True:
            page = await self.store.pairs_of(task_type, after_seq=after, limit=self.batch)
            if not page:
                return rescored, changed
            after = page[-1][0]
            comparisons = [compare(row, differ) for _, row in page]
            before = await self.store.verdicts_of(comparisons)
            await self.store.put_comparisons(comparisons, now=self.clock(), actor="epoch")
            rescored += len(comparisons)
            changed += sum(
                1
                for c in comparisons
                if before.get((c.event_id, c.agent_version)) not in (None, c.verdict)
            )

    async def expire(self, ttl: timedelta) -> tuple[int, int]:
        """Close joins older than ``ttl`` (see :meth:`Store.expire`)."""
        return await self.store.expire(now=self.clock(), ttl=ttl)
