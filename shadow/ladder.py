"""The Ladder: the one owner of autonomy in a sidecar process.

It holds every configured task type's :class:`~shadow.promotion.LadderState`, the evidence
per agent version, the current agent versions and the freeze flag **in memory**, and it is
the only thing that changes them: the promoter's evaluation after new comparisons, the
operators' moves (approve, reject, reconsider, set, freeze, unfreeze) and, on a Kafka
replica, the levels it follows. Routing and the gauges answer from memory and never touch
the store (``GET /v1/agreement`` adds the store's evidence of the moment to the states in
memory: :meth:`Ladder.current_agreement`). The store stays the durable truth: the Ladder reads
it at start (:meth:`Ladder.load`), reads the evidence before each decision, and reads the
states back after each write it makes, so memory is never ahead of what is durable.

Every read-decide-write runs under one lock, so two concurrent approvals of the same
proposal apply it once and an evaluation never writes a state decided from a read taken
before an operator's move. Each change is counted (``shadow_autonomy_changes_total``) and
logged as one ``key=value`` line.

The Ladder announces itself: after every evaluation, operator move, freeze, follow or load it
sets the evidence and ladder gauges and tells its observers (the Kafka publisher) the states,
so no caller has to remember to refresh anything after a move.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from shadow import moves, promotion
from shadow.autonomy import agreement_document
from shadow.budgets import BudgetEvidence, judge
from shadow.config import DEFAULT_JOIN_TTL_S
from shadow.errors import AutonomyError, SecondApproverRequired
from shadow.join_health import JoinHealth, invalid_reason
from shadow.metrics import Metrics
from shadow.model import AuditEntry, Comparison, Evidence, Handling, Level, Verdict
from shadow.noise import Bounded, NoiseFloor
from shadow.noise_read import read_noise_floor
from shadow.policy import Policy, TaskPolicy
from shadow.promotion import LadderState, Move, ProposalRef, Recent, Step
from shadow.segments import below_gate
from shadow.store import Store

__all__ = ["SYSTEM_ACTOR", "Ladder", "LadderObserver", "MoveResult"]

SYSTEM_ACTOR = "promoter"

log = logging.getLogger("shadow.autonomy")

_Inputs = tuple[dict[str, LadderState], dict[str, dict[str, Evidence]], dict[str, str], bool]


class LadderObserver(Protocol):
    """Told the states after each change of the Ladder; returns at once, never raises (the
    Kafka publisher queues its own work)."""

    def ladder(self, states: Mapping[str, LadderState]) -> None: ...


@dataclass(frozen=True, slots=True)
class MoveResult:
    """An operator's move and what the ladder did right after it, in the same request.

    ``step`` is the move itself (``Move.STAY`` when it changed nothing: a retried approval);
    ``then`` the ladder's own steps after it (a proposal for the next level, a demotion that
    overrides a manual set); ``level`` the level in effect once both are applied."""

    step: Step
    then: tuple[Step, ...]
    level: Level
    # A two-person move's first approval, recorded and waiting for a second approver.
    partial: Partial | None = None

    @property
    def applied(self) -> bool:
        return self.step.changed

    @property
    def overridden_by(self) -> Step | None:
        """The ladder step that moved the level away from the one the operator's move set."""
        if self.level == self.step.after.level:
            return None
        return next((s for s in self.then if s.after.level != self.step.after.level), None)

    def to_json(self) -> dict[str, Any]:
        over = self.overridden_by
        return {
            "task_type": self.step.before.task_type,
            "move": self.step.move.value,
            "applied": self.applied,
            "from": str(self.step.before.level),
            "to": str(self.level),
            "reason": self.step.reason,
            "then": [
                {
                    "move": s.move.value,
                    "from": str(s.before.level),
                    "to": str(s.after.level),
                    "reason": s.reason,
                }
                for s in self.then
            ],
            "overridden": None
            if over is None
            else {"move": over.move.value, "to": str(over.after.level), "reason": over.reason},
            "partial": None if self.partial is None else self.partial.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Partial:
    """The first of the two approvals a two-person move needs (``autonomy.two_person``):
    ``kind`` ``approve`` (of the proposal ``key`` names) or ``set`` (``key``:
    ``set L2->L4``), by ``actor``. Any change of the task type's level voids it."""

    kind: str
    key: str
    actor: str
    at: datetime
    from_level: Level
    to_level: Level
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "by": self.actor,
            "at": self.at.isoformat(),
            "from": str(self.from_level),
            "to": str(self.to_level),
            "reason": self.reason,
            "needs": "a second approver (a different credential)",
        }

    @classmethod
    def from_entry(cls, entry: AuditEntry) -> Partial | None:
        ev = entry.evidence
        try:
            return cls(
                str(ev["kind"]),
                str(ev["key"]),
                entry.actor,
                entry.at,
                Level.parse(ev["from"]),
                Level.parse(ev["to"]),
                entry.reason,
            )
        except (KeyError, ValueError, TypeError):
            return None


PARTIAL_ACTION = "partial_approval"
SEGMENT_ROUTING_ACTION = "segment_routing"  # a per_segment: route gate changed its segments


class _Recent:
    """The blind evidence of one task type's current level, folded as it arrives: the drift
    statistic since the level began, and the version's latest comparisons' critical flags
    (as many as the largest ``Gate.window`` of the task type; the window carries over a
    level change, so misses made just before a promotion still count at the new level)."""

    def __init__(
        self,
        state: LadderState,
        policy: TaskPolicy,
        base: int = 0,
        window: Sequence[bool] = (),
    ) -> None:
        self.level = state.level
        self.version = state.agent_version
        self.base = base  # the version's evidence count when this level's stream began
        gate = policy.autonomy.gate_for(state.level)
        self.size = gate.window if gate else 0
        self.drift = policy.autonomy.drift(state.level) if state.level > Level.L0 else None
        self.window: deque[bool] = deque(window, maxlen=window_size(policy))
        self.statistic = 0.0
        self.n = 0

    def fold(self, agreed: bool, critical: bool) -> None:
        if self.drift is not None:
            self.statistic = self.drift.update(self.statistic, agreed)
        self.window.append(critical)
        self.n += 1

    def view(self) -> Recent:
        start = max(len(self.window) - self.size, 0)
        critical = sum(itertools.islice(self.window, start, None)) if self.size else 0
        return Recent(self.statistic, self.n, critical)


def window_size(policy: TaskPolicy) -> int:
    """How many recent critical flags a task type keeps: its largest gate window."""
    return max((g.window for g in policy.autonomy.gates.values()), default=1) or 1


class Ladder:
    """Autonomy per task type, in memory, owned by one promoter per deployment (see the
    module docstring). ``clock`` returns aware times."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        clock: Callable[[], datetime],
        *,
        metrics: Metrics | None = None,
        observers: Sequence[LadderObserver] = (),
        decides: bool = True,
        join_ttl: timedelta = timedelta(seconds=DEFAULT_JOIN_TTL_S),
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self._observers = tuple(observers)
        # Whether this process decides the levels (standalone, the Kafka promoter) or only
        # follows the promoter's (a Kafka replica: operators' moves are refused here).
        self.decides = decides
        self._lock = asyncio.Lock()
        self._states: dict[str, LadderState] = {
            name: LadderState(name, task.autonomy.start) for name, task in policy.task_types.items()
        }
        self._evidence: dict[str, dict[str, Evidence]] = {}
        self._versions: dict[str, str] = {}
        self._frozen = False
        self._recent = {
            name: _Recent(state, policy.task_types[name]) for name, state in self._states.items()
        }
        self._stale: set[str] = set()  # task types whose folded evidence changed label
        self._partials: dict[str, Partial] = {}  # two-person moves waiting for a second
        # Join health per task type (shadow.join_health) as of its last read: at load, on
        # evaluate(health=True) (the pipeline's expiry pass) and before an operator's move.
        self.join_ttl = join_ttl
        self._health: dict[str, JoinHealth] = {}
        # Evidence per segment label (shadow.segments) and the declared segments per task type.
        self._declared = {n: t.segments for n, t in policy.task_types.items() if t.segments}
        self._segments: dict[str, dict[str, dict[str, Evidence]]] = {}
        # Per task type, the declared segments a ``per_segment: route`` gate sends to humans.
        self._routed: dict[str, frozenset[str]] = {}
        # The noise floor per task type (shadow.noise: human ceiling, self-consistency), read
        # with the join health (it moves with second opinions and repeats, not each batch).
        self._noise: dict[str, NoiseFloor] = {}
        # Per task type, its current version's budget evidence (shadow.budgets), read with
        # the evidence: one query per evaluation.
        self._budgets: dict[str, BudgetEvidence] = {}
        # (task type, budget) clearly exceeded at the current level, as last logged.
        self._exceeded: set[tuple[str, str]] = set()

    def _task(self, task_type: str) -> TaskPolicy:
        task = self.policy.task_types.get(task_type)
        if task is None:
            raise AutonomyError(f"unknown task type {task_type!r}; it is not in the policy")
        return task

    # -- memory <- store ------------------------------------------------------------------

    async def load(self) -> None:
        """Read states, evidence, versions and the freeze flag from the store (at start;
        a replica after following)."""
        async with self._lock:
            await self._read_states()
            await self._read_evidence()
            await self._read_recent()
            await self._read_partials()
            await self._read_health()
            await self._route_segments(audit=False)

    async def _read_partials(self) -> None:
        """The first approvals still waiting: a task type's newest audit entry that is one,
        unless a change of its level was audited after it."""
        self._partials = {}
        for name, task in self.policy.task_types.items():
            if not task.autonomy.two_person:
                continue
            # Only first approvals and level changes: the gateway's refusals and reviewers'
            # verdicts, however many, never hide a first approval still waiting.
            for _, entry in await self.store.audit_log(
                task_type=name, limit=1, action_or_move=PARTIAL_ACTION
            ):
                if entry.action == PARTIAL_ACTION:
                    partial = Partial.from_entry(entry)
                    if partial is not None:
                        self._partials[name] = partial

    async def _read_states(self) -> None:
        stored = await self.store.ladder_states()
        self._states = {
            name: stored.get(name) or LadderState(name, task.autonomy.start)
            for name, task in self.policy.task_types.items()
        }
        self._frozen = await self.store.is_frozen()

    async def _read_evidence(self) -> None:
        self._evidence = await self.store.evidence()
        self._versions = await self.store.current_versions()
        self._segments = await self.store.segment_evidence(self._declared)
        self._budgets = await self._budgets_now(self._versions)

    def segments_of(self, name: str) -> dict[str, Evidence]:
        """The current agent version's evidence per segment label of ``name`` (as of the
        last read): its declared segments and ``other``."""
        version = self._versions.get(name) or self._states[name].agent_version
        return self._segments.get(name, {}).get(version or "", {})

    async def _budgets_now(self, versions: Mapping[str, str]) -> dict[str, BudgetEvidence]:
        """Every task type's budget evidence for its current agent version (one query)."""
        wanted = {
            name: (
                versions.get(name) or self._states[name].agent_version,
                task.cost_ceiling(),
                sorted(
                    {
                        g.max_latency_ms_p95
                        for g in task.autonomy.gates.values()
                        if g.max_latency_ms_p95 is not None
                    }
                ),
            )
            for name, task in self.policy.task_types.items()
        }
        return await self.store.budget_evidence(wanted, now=self.clock())

    def budgets_of(self, name: str) -> BudgetEvidence | None:
        """``name``'s budget evidence as of the last read (``None`` before the first)."""
        return self._budgets.get(name)

    async def _health_now(self) -> dict[str, JoinHealth]:
        return await self.store.join_health(
            self.policy.task_types, now=self.clock(), ttl=self.join_ttl
        )

    async def _read_health(self) -> None:
        self._health = await self._health_now()
        self._noise = await self._noise_now(self._versions)

    async def _noise_now(self, versions: Mapping[str, str]) -> dict[str, NoiseFloor]:
        """Each task type's noise floor (the current agent version's for the agent's part)."""
        current = {
            name: versions.get(name) or self._states[name].agent_version
            for name in self.policy.task_types
        }
        # Judges what is new since the last read, then counts the stored verdicts.
        return await read_noise_floor(self.store, self.policy, current, self.clock)

    def ceiling_of(self, name: str) -> Bounded | None:
        """``name``'s human ceiling as of the last read (``None`` before the first)."""
        found = self._noise.get(name)
        return None if found is None else found.human_ceiling

    def invalid(self, task_type: str) -> str | None:
        """Why ``task_type``'s evidence is invalid (``min_outcome_coverage``, as of the
        last join-health read), or ``None`` while it is valid: nothing is promoted then."""
        task = self._task(task_type)
        return invalid_reason(self._health.get(task_type), task.min_outcome_coverage)

    def _counted(self, name: str, version: str | None) -> int:
        ev = self._evidence.get(name, {}).get(version or "")
        return ev.n if ev is not None else 0

    async def _read_recent(self, only: str | None = None) -> None:
        """Fold each task type's blind evidence from the store: the drift statistic over
        the comparisons since its last ladder change, the critical window over the
        version's latest ones. At start, and whenever what :meth:`observe` folded does not
        add up to the stored evidence (comparisons another writer stored, or re-compared
        after a reversal)."""
        for name, state in self._states.items():
            if only is not None and name != only:
                continue
            task = self.policy.task_types[name]
            counted = self._counted(name, state.agent_version)
            if state.agent_version is None:
                self._recent[name] = _Recent(state, task, counted)
                continue
            stream: list[tuple[bool, bool]] = []
            if state.level > Level.L0:
                stream = await self.store.level_stream(name, state.agent_version, state.updated_at)
            size = window_size(task)
            history = await self.store.level_stream(name, state.agent_version, None, last=size)
            before = history[: max(len(history) - len(stream), 0)]
            recent = _Recent(state, task, counted - len(stream), [c for _, c in before])
            for agreed, critical in stream:
                recent.fold(agreed, critical)
            self._recent[name] = recent

    async def _check_recent(self) -> None:
        stale, self._stale = self._stale, set()
        for name, recent in list(self._recent.items()):
            if name in stale or (
                recent.version is not None
                and recent.base + recent.n != self._counted(name, recent.version)
            ):
                await self._read_recent(only=name)

    def refold(self, task_types: Iterable[str]) -> None:
        """Fold these task types' blind evidence from the store again at the next decision:
        comparisons already folded changed label (a routing record that arrived after its
        comparison). Their count alone may not show it: one item that stopped being evidence
        and one that became evidence in the same batch leave it unchanged."""
        self._stale.update(t for t in task_types if t in self._recent)

    def _follow_levels(self) -> None:
        """A level or agent version that changed starts its blind evidence afresh."""
        for name, state in self._states.items():
            recent = self._recent.get(name)
            if recent is None or (recent.level, recent.version) != (
                state.level,
                state.agent_version,
            ):
                counted = self._counted(name, state.agent_version)
                same = recent is not None and recent.version in (None, state.agent_version)
                window = recent.window if recent is not None and same else ()
                self._recent[name] = _Recent(state, self.policy.task_types[name], counted, window)

    def observe(self, comparisons: Sequence[Comparison]) -> None:
        """Fold new comparisons into the drift rules of their task type's current level
        (only the version the level applies to; only blind ones are evidence). Call before
        :meth:`evaluate` (the pipeline does, after each batch of joins)."""
        for c in comparisons:
            recent = self._recent.get(c.task_type)
            if recent is None or not c.evidence:
                continue
            if recent.version is not None and c.agent_version != recent.version:
                continue
            recent.fold(c.verdict is Verdict.AGREE, c.critical_miss)

    def _inputs(self) -> _Inputs:
        return dict(self._states), self._evidence, self._versions, self._frozen

    # -- reads (memory only) --------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def evidence(self) -> Mapping[str, Mapping[str, Evidence]]:
        """``{task_type: {agent_version: Evidence}}`` as of the last read."""
        return self._evidence

    def states(self) -> dict[str, LadderState]:
        """Every configured task type's state (the policy's ``start`` when never changed)."""
        return dict(self._states)

    def state(self, task_type: str) -> LadderState:
        self._task(task_type)
        return self._states[task_type]

    def level(self, task_type: str) -> Level:
        """The level in force for routing: L0 for every task type while frozen."""
        return Level.L0 if self._frozen else self.state(task_type).level

    def route(self, task_type: str, event_id: str, segment: str | None = None) -> dict[str, Any]:
        """Who handles ``event_id`` (``GET /v1/route``), and so whether its outcome will be
        evidence (``handled_by``). L0: a human, blind. L1: a human shown the agent's
        suggestion (assisted). L2: the agent proposes and a human approves (assisted).
        L3-L4: the agent acts. From L1 up, the items the audit sample picks (a stable hash
        of the event id, ``audit_rate`` per level) go to a human without the agent's
        answer: blind, the evidence that keeps flowing after a promotion. So do the items of a
        ``segment`` a ``per_segment: route`` gate sends to humans (``segment_routed``, in the
        answer when a segment is given)."""
        task = self._task(task_type)
        level = self.level(task_type)
        audit = level >= Level.L1 and task.audited(event_id, level)
        # A segment a ``per_segment: route`` gate sends to humans: decided blind, as evidence.
        routed = level >= Level.L1 and task.segment_of(segment) in self._routed.get(
            task_type, frozenset()
        )
        audit = audit or routed
        if level == Level.L0 or audit:
            handled_by = Handling.BLIND
        elif level <= Level.L2:
            handled_by = Handling.ASSISTED
        else:
            handled_by = Handling.AGENT
        answer: dict[str, Any] = {
            "handler": "agent" if level >= Level.L2 and not audit else "human",
            "level": str(level),
            "audit": audit,
            "approval_required": level == Level.L2 and not audit,
            "suggestion": level == Level.L1 and not audit,
            "handled_by": handled_by.value,
        }
        if segment is not None:
            answer["segment_routed"] = routed
        return answer

    def agreement(self) -> dict[str, Any]:
        """The agreement document for every configured task type (see DESIGN.md), from
        memory: the evidence as of the last decision."""
        segments = {name: self.segments_of(name) for name in self._declared}
        return self._with_partials(
            agreement_document(
                self.policy,
                self._states,
                self._evidence,
                self._versions,
                self._frozen,
                segments=segments,
                routed=self._routed,
                health=self._health,
                budgets=self._budgets,
                noise=self._noise,
            )
        )

    async def current_agreement(self) -> dict[str, Any]:
        """The agreement document on the store's evidence now (``GET /v1/agreement``: a
        comparison stored a moment ago is in it even before the next decision), with the
        acceptance and the join health of the moment beside it and the states from
        memory. Memory is not changed (the ladder decides on its own join-health read)."""
        evidence = await self.store.evidence()
        versions = await self.store.current_versions()
        acceptance = await self.store.acceptance()
        reviewers = await self.store.reviewer_agreement()
        by_segment = await self.store.segment_evidence(self._declared)
        budgets = await self._budgets_now(versions)
        segments = {
            name: by_segment.get(name, {}).get(
                versions.get(name) or self._states[name].agent_version or "", {}
            )
            for name in self._declared
        }
        doc = agreement_document(
            self.policy,
            self._states,
            evidence,
            versions,
            self._frozen,
            acceptance,
            reviewers,
            segments,
            self._routed,
            health=await self._health_now(),
            budgets=budgets,
            noise=await self._noise_now(versions),
        )
        return self._with_partials(doc)

    def _with_partials(self, doc: dict[str, Any]) -> dict[str, Any]:
        for name, body in doc["task_types"].items():
            partial = self._partials.get(name)
            body["partial_approval"] = None if partial is None else partial.to_json()
        return doc

    async def history(self, task_type: str, *, limit: int) -> list[tuple[int, AuditEntry]]:
        """The audit log of ``task_type``, newest first, with the entries' ids."""
        self._task(task_type)
        return await self.store.audit_log(task_type=task_type, limit=limit)

    # -- writes ---------------------------------------------------------------------------

    async def _apply(
        self,
        steps: Sequence[Step],
        actor: str,
        *,
        frozen: bool | None = None,
        followed: Mapping[str, int] | None = None,
    ) -> None:
        changed = [s for s in steps if s.changed]
        if not changed and frozen is None:
            return
        await self.store.apply_steps(changed, actor=actor, frozen=frozen, followed=followed)
        for s in changed:
            self._partials.pop(s.after.task_type, None)
        await self._read_states()
        self._follow_levels()
        if self.metrics is not None:
            self.metrics.steps(changed)
        for s in changed:
            _log_step(s, actor)

    def announce(self) -> None:
        """Set the evidence and ladder gauges and tell the observers the states (after every
        change; :meth:`shadow.pipeline.Pipeline.refresh` calls it for a scrape too)."""
        states = self.states()
        if self.metrics is not None:
            self.metrics.evidence(self._evidence)
            self.metrics.join_health(
                self._health, {name: self.invalid(name) for name in self._health}
            )
            self.metrics.segments(
                {name: self.segments_of(name) for name in self._declared}, self._routed
            )
            self.metrics.budgets(states, self._budgets)
            self.metrics.noise_floor(self._noise)
            self.metrics.ladder(states, self._frozen)
        self._note_budgets(states)
        for observer in self._observers:
            observer.ladder(states)

    def _note_budgets(self, states: Mapping[str, LadderState]) -> None:
        """One WARNING line when a budget of a task type's current level becomes clearly
        exceeded, one INFO line when it no longer is: with ``autonomy.budgets: alert`` (no
        demotion) the line and the metric are what an operator sees."""
        now: dict[tuple[str, str], str] = {}
        for name, state in states.items():
            task = self.policy.task_types.get(name)
            gate = task.autonomy.gate_for(state.level) if task is not None else None
            if task is None or gate is None:
                continue
            for r in judge(gate, task, self._budgets.get(name)).exceeded:
                now[(name, r.name)] = r.excess
        for name, budget in sorted(now.keys() - self._exceeded):
            task = self.policy.task_types[name]
            log.warning(
                'budget exceeded task_type=%s budget=%s level=%s mode=%s reason="%s"',
                name,
                budget,
                states[name].level,
                task.autonomy.budgets,
                _clean(now[(name, budget)]),
            )
        for name, budget in sorted(self._exceeded - now.keys()):
            log.info("budget no longer exceeded task_type=%s budget=%s", name, budget)
        self._exceeded = set(now)

    async def evaluate(self, *, health: bool = False) -> list[Step]:
        """Re-decide every configured task type on fresh evidence; apply, audit and count
        what changed, and announce the result. A ladder that only follows re-reads the
        levels instead (its promoter decides). ``health``: read the join health first
        (it moves with time, not with each comparison: the pipeline asks after each
        expiry pass, so the per-batch evaluations stay cheap)."""
        if not self.decides:
            await self.reload()
            return []
        async with self._lock:
            await self._read_evidence()
            await self._check_recent()
            if health:
                await self._read_health()
            steps = await self._evaluate()
            self.announce()
            return steps

    async def reload(self) -> None:
        """Re-read everything without deciding (a Kafka replica, whose promoter decides)."""
        await self.load()
        self.announce()

    async def _evaluate(self) -> list[Step]:
        states, evidence, versions, frozen = self._inputs()
        now = self.clock()
        steps = [
            promotion.decide(
                state,
                evidence.get(name, {}),
                versions.get(name),
                self._task(name),
                frozen=frozen,
                now=now,
                recent=self._recent[name].view(),
                invalid=self.invalid(name),
                segments=self.segments_of(name),
                budgets=self.budgets_of(name),
                human_ceiling=self.ceiling_of(name),
            )
            for name, state in states.items()
        ]
        await self._apply(steps, SYSTEM_ACTOR)
        await self._route_segments(audit=True)
        return steps

    async def _route_segments(self, *, audit: bool) -> None:
        """Which declared segments each task type's ``per_segment: route`` gate (of its
        current level) sends to humans: those below the gate (:func:`shadow.segments.
        below_gate`). A change is audited (``segment_routing``) when ``audit``; at load the
        set is recomputed from the same evidence without a new entry."""
        entries: list[AuditEntry] = []
        for name, task in self.policy.task_types.items():
            state = self._states[name]
            gate = task.autonomy.gate_for(state.level)
            routed: frozenset[str] = frozenset()
            if not self._frozen and gate is not None and gate.per_segment == "route":
                failing = below_gate(gate, task, self.segments_of(name), task.autonomy.alpha)
                routed = frozenset(failing)
            before = self._routed.get(name, frozenset())
            self._routed[name] = routed
            if audit and routed != before:
                what = ", ".join(sorted(routed)) or "none"
                entries.append(
                    AuditEntry(
                        at=self.clock(),
                        task_type=name,
                        actor=SYSTEM_ACTOR,
                        action=SEGMENT_ROUTING_ACTION,
                        from_level=None,
                        to_level=None,
                        reason=(
                            f"segments sent to humans at {state.level}: {what} (below the "
                            f"{state.level} gate; the other segments keep the level)"
                        ),
                        evidence={
                            "routed": sorted(routed),
                            "before": sorted(before),
                            "segments": {
                                k: {"n": v.n, "agree": v.agree}
                                for k, v in self.segments_of(name).items()
                            },
                        },
                        policy_hash=task.hash,
                    )
                )
        if entries:
            await self.store.append_audit(entries)
            for entry in entries:
                log.warning("%s: %s", entry.task_type, entry.reason)

    def routed_segments(self, task_type: str) -> frozenset[str]:
        """The declared segments of ``task_type`` sent to humans now (``per_segment: route``)."""
        return self._routed.get(task_type, frozenset())

    async def _operator_move(
        self,
        task_type: str,
        actor: str,
        move: Callable[[LadderState, _Inputs], Step],
        *,
        two_person: Callable[[LadderState, Step, _Inputs], str | None] | None = None,
        approver: bool = True,
    ) -> MoveResult:
        """Apply an operator's move, then re-decide. ``two_person`` says whether the move
        needs two approvers, as the key the two approvals must share (``None``: it does
        not); ``approver``: whether ``actor`` may approve."""
        self._task(task_type)
        async with self._lock:
            await self._read_evidence()
            await self._read_health()
            inputs = self._inputs()
            step = move(inputs[0][task_type], inputs)
            if not step.changed:
                return MoveResult(step, (), step.after.level)
            key = None if two_person is None else two_person(inputs[0][task_type], step, inputs)
            if key is not None:
                if not approver:
                    raise SecondApproverRequired(
                        f"{step.after.level} of {task_type} needs two approvers "
                        f"(autonomy.two_person); {actor} may not approve"
                    )
                first = self._partials.get(task_type)
                if first is None or first.key != key:
                    return await self._first_approval(step, key, actor)
                if first.actor == actor:
                    raise SecondApproverRequired(
                        f"{actor} gave the first approval of {key} already; the second must "
                        "come from a different credential"
                    )
                step = dataclasses.replace(
                    step, reason=f"{step.reason} (two approvals: {first.actor}, {actor})"
                )
            await self._apply([step], actor)
            after = await self._evaluate()
            self.announce()
            then = tuple(s for s in after if s.changed and s.after.task_type == task_type)
            final = next((s.after for s in after if s.after.task_type == task_type), step.after)
            return MoveResult(step, then, final.level)

    async def _first_approval(self, step: Step, key: str, actor: str) -> MoveResult:
        """Record the first of two approvals (audited, level unchanged) and answer it."""
        name = step.before.task_type
        kind = "approve" if step.move is Move.APPROVE else "set"
        partial = Partial(
            kind, key, actor, self.clock(), step.before.level, step.after.level, step.reason
        )
        entry = AuditEntry(
            at=partial.at,
            task_type=name,
            actor=actor,
            action=PARTIAL_ACTION,
            from_level=None,
            to_level=None,
            reason=step.reason,
            evidence={
                "kind": kind,
                "key": key,
                "from": str(partial.from_level),
                "to": str(partial.to_level),
            },
            policy_hash=self.policy.hash,
        )
        await self.store.append_audit([entry])
        self._partials[name] = partial
        log.info(
            "autonomy move=partial_approval task_type=%s key=%s from=%s to=%s actor=%s "
            "needs=second_approver",
            name,
            key,
            partial.from_level,
            partial.to_level,
            actor,
        )
        stay = Step(Move.STAY, step.before, step.before, f"first approval of {key}", step.evidence)
        return MoveResult(stay, (), step.before.level, partial)

    def _needs_two(self, task: TaskPolicy) -> Callable[[LadderState, Step, _Inputs], str | None]:
        def check(state: LadderState, step: Step, inputs: _Inputs) -> str | None:
            target = step.after.level
            if target not in task.autonomy.two_person:
                return None
            if step.move is Move.APPROVE:
                proposal = state.proposal
                return proposal.id if proposal is not None else f"approve {state.level}->{target}"
            _, evidence, versions, _ = inputs
            earned = promotion.earned_level(
                state,
                evidence.get(task.name, {}),
                versions.get(task.name),
                task,
                self.segments_of(task.name),
                invalid=self.invalid(task.name),
                budgets=self.budgets_of(task.name),
                human_ceiling=self.ceiling_of(task.name),
            )
            if target <= earned or target <= state.level:
                return None  # the evidence earned it, or it is not a raise
            return f"set {state.level}->{target}"

        return check

    async def approve(
        self,
        task_type: str,
        ref: ProposalRef,
        *,
        actor: str,
        reason: str = "",
        approver: bool = True,
    ) -> MoveResult:
        """Approve the pending proposal ``ref`` names (409 when it is not the pending one;
        a no-op when it is the one approved last). To a level in ``autonomy.two_person``
        the first approval is recorded (:class:`Partial`) and a second, different approver
        applies it. Refused (:class:`AutonomyError`) while the task type's evidence is
        invalid (join health, read afresh for the move)."""
        task = self._task(task_type)

        def move(state: LadderState, inputs: _Inputs) -> Step:
            _, evidence, versions, frozen = inputs
            return moves.approve(
                state,
                ref,
                evidence.get(task_type, {}),
                versions.get(task_type),
                task,
                frozen=frozen,
                now=self.clock(),
                actor=actor,
                reason=reason,
                segments=self.segments_of(task_type),
                budgets=self.budgets_of(task_type),
            )

        def checked(state: LadderState, inputs: _Inputs) -> Step:
            step = move(state, inputs)
            invalid = self.invalid(task_type)
            if step.move is Move.APPROVE and invalid:
                raise AutonomyError(
                    f"cannot approve {step.after.level} for {task_type}: the evidence is "
                    f"invalid: {invalid}"
                )
            return step

        return await self._operator_move(
            task_type, actor, checked, two_person=self._needs_two(task), approver=approver
        )

    async def reject(
        self, task_type: str, ref: ProposalRef, *, actor: str, reason: str
    ) -> MoveResult:
        """Reject the pending proposal ``ref`` names; it is held back until the evidence
        grows by the gate's ``min_samples`` or :meth:`reconsider` is called."""
        task = self._task(task_type)

        def move(state: LadderState, inputs: _Inputs) -> Step:
            _, evidence, versions, _ = inputs
            return moves.reject(
                state,
                ref,
                evidence.get(task_type, {}),
                versions.get(task_type),
                task,
                now=self.clock(),
                actor=actor,
                reason=reason,
            )

        return await self._operator_move(task_type, actor, move)

    async def reconsider(self, task_type: str, *, actor: str, reason: str) -> MoveResult:
        """Lift a rejection's hold; the evaluation right after proposes again if it can."""
        task = self._task(task_type)

        def move(state: LadderState, inputs: _Inputs) -> Step:
            _, evidence, versions, _ = inputs
            return moves.reconsider(
                state,
                evidence.get(task_type, {}),
                versions.get(task_type),
                task,
                now=self.clock(),
                reason=reason,
            )

        return await self._operator_move(task_type, actor, move)

    async def set_level(
        self, task_type: str, level: Level, *, actor: str, reason: str, approver: bool = True
    ) -> MoveResult:
        """Set the level. The ladder evaluates right after, so the result's ``level`` may
        differ from ``level`` (a demotion the evidence forces): ``overridden_by`` says why.
        A raise to a level in ``autonomy.two_person`` above what the evidence earned needs
        two approvers (``approver``: whether ``actor`` may approve), as :meth:`approve`."""
        task = self._task(task_type)

        def move(state: LadderState, inputs: _Inputs) -> Step:
            _, evidence, versions, frozen = inputs
            return moves.manual_set(
                state,
                level,
                evidence.get(task_type, {}),
                versions.get(task_type),
                task,
                frozen=frozen,
                now=self.clock(),
                reason=reason,
            )

        return await self._operator_move(
            task_type, actor, move, two_person=self._needs_two(task), approver=approver
        )

    async def freeze(self, *, actor: str, reason: str) -> list[Step]:
        """Send every task type to L0 and block promotions until :meth:`unfreeze`."""
        return await self._freeze(True, actor, reason)

    async def unfreeze(self, *, actor: str, reason: str) -> list[Step]:
        """Lift the freeze; levels are re-earned through the gates from L0 (the evaluation
        right after may propose or promote; its steps are returned after the unfreeze's)."""
        return await self._freeze(False, actor, reason)

    async def _freeze(self, frozen: bool, actor: str, reason: str) -> list[Step]:
        move = moves.freeze if frozen else moves.unfreeze
        async with self._lock:
            await self._read_evidence()
            states, evidence, versions, _ = self._inputs()
            now = self.clock()
            steps = [
                move(
                    state,
                    evidence.get(name, {}),
                    versions.get(name),
                    self._task(name),
                    now=now,
                    reason=reason,
                )
                for name, state in states.items()
            ]
            await self._apply(steps, actor, frozen=frozen)
            if frozen:
                self.announce()
                return steps
            after = [s for s in await self._evaluate() if s.changed]
            self.announce()
            return steps + after

    async def follow(
        self,
        steps: Sequence[Step],
        *,
        actor: str,
        frozen: bool | None = None,
        followed: Mapping[str, int] | None = None,
    ) -> None:
        """A Kafka replica applies the promoter's levels (``Move.FOLLOW`` steps); ``followed``
        is the promoter's audit id now applied per task type, recorded with them."""
        async with self._lock:
            await self._apply(steps, actor, frozen=frozen, followed=followed)
            await self._read_evidence()
            self.announce()


def _clean(text: str) -> str:
    return " ".join(text.replace("\\", "\\\\").replace('"', '\\"').split())


def _log_step(s: Step, actor: str) -> None:
    """One line per change, as ``key=value`` pairs an operator can grep or parse."""
    proposal = s.after.proposal or s.before.proposal
    fields = [
        f"move={s.move.value}",
        f"task_type={s.after.task_type}",
        f"from={s.before.level}",
        f"to={s.after.level}",
        f"actor={actor}",
        f"agent_version={s.after.agent_version or '-'}",
    ]
    if s.move in (Move.PROPOSE, Move.APPROVE, Move.REJECT, Move.DROP_PROPOSAL) and proposal:
        fields.append(f"proposal={proposal.id}")
        fields.append(f"proposed={proposal.from_level}->{proposal.to_level}")
    fields += [f"n={s.evidence.n}", f"lower={s.evidence.lower:.4f}"]
    fields.append(f'reason="{_clean(s.reason)}"')
    level = logging.WARNING if s.move is Move.DEMOTE else logging.INFO
    log.log(level, "autonomy %s", " ".join(fields))
