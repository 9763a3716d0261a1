"""The autonomy registry: applies the ladder's decisions to stored state, with audit.

It reads evidence and states from the :class:`~shadow.store.Store`, asks the pure
functions in :mod:`shadow.promotion` what to do, and writes the new states and their audit
entries back in one transaction. Operators' moves (approve, set, freeze, unfreeze) go
through here too, so every change has an actor, a reason and an evidence snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shadow import moves, promotion
from shadow.errors import AutonomyError
from shadow.metrics import Metrics
from shadow.model import Evidence, Level
from shadow.policy import Gate, Policy, TaskPolicy
from shadow.promotion import LadderState, Move, ProposalRef, Step
from shadow.stats import lower_bound
from shadow.store import Store

__all__ = ["AutonomyRegistry", "MoveResult", "agreement_document", "agreements_needed"]

SYSTEM_ACTOR = "promoter"

log = logging.getLogger("shadow.autonomy")

_Inputs = tuple[dict[str, LadderState], dict[str, dict[str, Evidence]], dict[str, str], bool]


@dataclass(frozen=True, slots=True)
class MoveResult:
    """An operator's move and what the ladder did right after it, in the same request.

    ``step`` is the move itself (``Move.STAY`` when it changed nothing: a retried approval);
    ``then`` the ladder's own steps after it (a proposal for the next level, a demotion that
    overrides a manual set); ``level`` the level in effect once both are applied."""

    step: Step
    then: tuple[Step, ...]
    level: Level

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
        }


class AutonomyRegistry:
    """Per task type autonomy levels, owned by one promoter. ``clock`` returns aware times.

    Every read-decide-write (evaluation and operators' moves) runs under one lock, so two
    concurrent approvals of the same proposal apply it once and an evaluation never writes
    a state decided from a read taken before an operator's move. Each change is counted in
    ``metrics`` (``shadow_autonomy_changes_total``) and logged as one line."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        clock: Callable[[], datetime],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self._lock = asyncio.Lock()

    def _task(self, task_type: str) -> TaskPolicy:
        task = self.policy.task_types.get(task_type)
        if task is None:
            raise AutonomyError(f"unknown task type {task_type!r}; it is not in the policy")
        return task

    async def states(self) -> dict[str, LadderState]:
        """Every configured task type's state (the policy's ``start`` when never changed)."""
        stored = await self.store.ladder_states()
        return {
            name: stored.get(name) or LadderState(name, task.autonomy.start)
            for name, task in self.policy.task_types.items()
        }

    async def state(self, task_type: str) -> LadderState:
        task = self._task(task_type)
        stored = await self.store.ladder_states()
        return stored.get(task_type) or LadderState(task_type, task.autonomy.start)

    async def _inputs(self) -> _Inputs:
        return (
            await self.states(),
            await self.store.evidence(),
            await self.store.current_versions(),
            await self.store.is_frozen(),
        )

    async def _apply(
        self, steps: Sequence[Step], actor: str, *, frozen: bool | None = None
    ) -> None:
        changed = [s for s in steps if s.changed]
        if not changed and frozen is None:
            return
        await self.store.apply_steps(changed, actor=actor, frozen=frozen)
        if self.metrics is not None:
            self.metrics.steps(changed)
        for s in changed:
            _log_step(s, actor)

    async def evaluate(self) -> list[Step]:
        """Re-decide every configured task type; apply, audit and count what changed."""
        async with self._lock:
            return await self._evaluate(await self._inputs())

    async def _evaluate(self, inputs: _Inputs) -> list[Step]:
        states, evidence, versions, frozen = inputs
        now = self.clock()
        steps = [
            promotion.decide(
                state,
                evidence.get(name, {}),
                versions.get(name),
                self._task(name),
                frozen=frozen,
                now=now,
            )
            for name, state in states.items()
        ]
        await self._apply(steps, SYSTEM_ACTOR)
        return steps

    async def _operator_move(
        self, task_type: str, actor: str, move: Callable[[LadderState, _Inputs], Step]
    ) -> MoveResult:
        self._task(task_type)
        async with self._lock:
            inputs = await self._inputs()
            step = move(inputs[0][task_type], inputs)
            if not step.changed:
                return MoveResult(step, (), step.after.level)
            await self._apply([step], actor)
            after = await self._evaluate(await self._inputs())
            then = tuple(s for s in after if s.changed and s.after.task_type == task_type)
            final = next((s.after for s in after if s.after.task_type == task_type), step.after)
            return MoveResult(step, then, final.level)

    async def approve(
        self, task_type: str, ref: ProposalRef, *, actor: str, reason: str = ""
    ) -> MoveResult:
        """Approve the pending proposal ``ref`` names (409 when it is not the pending one;
        a no-op when it is the one approved last)."""
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
            )

        return await self._operator_move(task_type, actor, move)

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
        self, task_type: str, level: Level, *, actor: str, reason: str
    ) -> MoveResult:
        """Set the level. The ladder evaluates right after, so the result's ``level`` may
        differ from ``level`` (a demotion the evidence forces): ``overridden_by`` says why."""
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

        return await self._operator_move(task_type, actor, move)

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
            states, evidence, versions, _ = await self._inputs()
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
                return steps
            return steps + [s for s in await self._evaluate(await self._inputs()) if s.changed]

    async def is_frozen(self) -> bool:
        return await self.store.is_frozen()

    async def agreement(self) -> dict[str, Any]:
        """The agreement document for every configured task type (see DESIGN.md)."""
        states, evidence, versions, frozen = await self._inputs()
        return agreement_document(self.policy, states, evidence, versions, frozen)


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


def agreements_needed(agree: int, n: int, gate: Gate, alpha: float) -> int | None:
    """How many more agreeing comparisons (and nothing else) would meet ``gate``'s bound
    and sample count; ``None`` when over 10 million would be needed."""

    def ok(k: int) -> bool:
        return n + k >= gate.min_samples and lower_bound(agree + k, n + k, alpha) >= gate.agreement

    if ok(0):
        return 0
    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > 10_000_000:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def agreement_document(
    policy: Policy,
    states: Mapping[str, LadderState],
    evidence: Mapping[str, Mapping[str, Evidence]],
    versions: Mapping[str, str],
    frozen: bool,
) -> dict[str, Any]:
    """The ``GET /v1/agreement`` document (also ``shadow status --json``): the evidence of
    the current agent version of each configured task type."""
    out: dict[str, Any] = {}
    for name, task in policy.task_types.items():
        state = states.get(name) or LadderState(name, task.autonomy.start)
        version = versions.get(name) or state.agent_version
        ev = evidence.get(name, {}).get(version or "") or Evidence(name, version or "")
        snap = promotion.snapshot(ev, task, version)
        target = Level(state.level + 1) if state.level < Level.L4 else None
        gate = (
            task.autonomy.gate_for(target) if target and target <= task.autonomy.ceiling else None
        )
        next_gate = None
        if gate is not None:
            next_gate = {
                "level": str(gate.level),
                "agreement": gate.agreement,
                "min_samples": gate.min_samples,
                "max_critical": gate.max_critical,
                "met": promotion.gate_status(gate, snap).met,
                "agreements_needed": agreements_needed(ev.agree, ev.n, gate, snap.alpha),
            }
        out[name] = {
            "level": str(state.level),
            "agent_version": version,
            **promotion.agreement_fields(
                ev.n, ev.agree, snap.lower, snap.upper, ev.critical, ev.errors
            ),
            "next_gate": next_gate,
            "proposal": state.proposal.to_json() if state.proposal else None,
            "last_decision": state.decided.to_json() if state.decided else None,
            "ceiling": str(task.autonomy.ceiling),
            "mode": task.autonomy.mode.value,
        }
    return {"frozen": frozen, "task_types": out}
