"""The autonomy registry: applies the ladder's decisions to stored state, with audit.

It reads evidence and states from the :class:`~shadow.store.Store`, asks the pure
functions in :mod:`shadow.promotion` what to do, and writes the new states and their audit
entries back in one transaction. Operators' moves (approve, set, freeze, unfreeze) go
through here too, so every change has an actor, a reason and an evidence snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from shadow import promotion
from shadow.errors import AutonomyError
from shadow.model import Evidence, Level
from shadow.policy import Gate, Policy, TaskPolicy
from shadow.promotion import LadderState, Step
from shadow.stats import lower_bound
from shadow.store import Store

__all__ = ["AutonomyRegistry", "agreement_document", "agreements_needed"]

SYSTEM_ACTOR = "promoter"


class AutonomyRegistry:
    """Per task type autonomy levels, owned by one promoter. ``clock`` returns aware times."""

    def __init__(self, store: Store, policy: Policy, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

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

    async def _inputs(
        self,
    ) -> tuple[dict[str, LadderState], dict[str, dict[str, Evidence]], dict[str, str], bool]:
        return (
            await self.states(),
            await self.store.evidence(),
            await self.store.current_versions(),
            await self.store.is_frozen(),
        )

    async def evaluate(self) -> list[Step]:
        """Re-decide every configured task type; apply and audit what changed."""
        states, evidence, versions, frozen = await self._inputs()
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
        changed = [s for s in steps if s.changed]
        if changed:
            await self.store.apply_steps(changed, actor=SYSTEM_ACTOR)
        return steps

    async def approve(self, task_type: str, *, actor: str) -> Step:
        task = self._task(task_type)
        states, evidence, versions, frozen = await self._inputs()
        step = promotion.approve(
            states[task_type],
            evidence.get(task_type, {}),
            versions.get(task_type),
            task,
            frozen=frozen,
            now=self.clock(),
        )
        await self.store.apply_steps([step], actor=actor)
        return step

    async def set_level(self, task_type: str, level: Level, *, actor: str, reason: str) -> Step:
        task = self._task(task_type)
        states, evidence, versions, frozen = await self._inputs()
        step = promotion.manual_set(
            states[task_type],
            level,
            evidence.get(task_type, {}),
            versions.get(task_type),
            task,
            frozen=frozen,
            now=self.clock(),
            reason=reason,
        )
        await self.store.apply_steps([step], actor=actor)
        return step

    async def freeze(self, *, actor: str, reason: str) -> list[Step]:
        """Send every task type to L0 and block promotions until :meth:`unfreeze`."""
        return await self._freeze(True, actor, reason)

    async def unfreeze(self, *, actor: str, reason: str) -> list[Step]:
        """Lift the freeze; levels are re-earned through the gates from L0."""
        return await self._freeze(False, actor, reason)

    async def _freeze(self, frozen: bool, actor: str, reason: str) -> list[Step]:
        states, evidence, versions, _ = await self._inputs()
        move = promotion.freeze if frozen else promotion.unfreeze
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
        await self.store.apply_steps(steps, actor=actor, frozen=frozen)
        return steps

    async def is_frozen(self) -> bool:
        return await self.store.is_frozen()

    async def agreement(self) -> dict[str, Any]:
        """The agreement document for every configured task type (see DESIGN.md)."""
        states, evidence, versions, frozen = await self._inputs()
        return agreement_document(self.policy, states, evidence, versions, frozen)


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
            "ceiling": str(task.autonomy.ceiling),
            "mode": task.autonomy.mode.value,
        }
    return {"frozen": frozen, "task_types": out}
