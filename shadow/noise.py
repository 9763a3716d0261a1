"""The noise floor: how often two humans agree (the human ceiling), how often the agent
agrees with itself (self-consistency, stability), and the fields where humans disagree with
each other as often as with the agent (noisy fields). Pure: the store reads the rows
(:mod:`shadow.store.noise`), this judges them with each task type's own compare rules
(:mod:`shadow.diff`) and bounds them with :mod:`shadow.stats` at the task type's alpha.

- **human_ceiling** ``{n, agree, agreement, lower, upper}``: over the events with a current
  outcome and a second opinion, ``agree`` those whose two decisions (and actions) compare
  equal. Humans only: the agent's evidence (``n``, ``agree``) never changes.
- **self_consistency** ``{n, agree, agreement, lower, upper}``: over the current agent
  version's repeated cases whose first answer and every repeat (``repeats`` of them) were
  answers (no error), ``agree`` those where each repeat compares equal to the first.
- **stable** ``{n, stable, rate, lower, upper}`` (pass^k-style): over the repeated cases with
  every try recorded (errors included), ``stable`` those answered on every try and the same
  on every pair of tries. A try that errors is a failed try: the case is not stable. With
  ``repeats: 1`` and no errors it equals self_consistency.
- **noisy_fields**: per compared field over the events with a second opinion *and* a
  decision of the current agent version: ``human_disagree`` (the two humans differ on it)
  and ``agent_disagree`` (the agent differs from the first outcome on it). A field is noisy
  when ``n >= NOISY_MIN_CASES`` and ``human_disagree >= max(agent_disagree, 1)``: humans
  disagree with each other at least as often as with the agent, so the agent's misses there
  are not evidence against it (Diffy's noise idea, applied to people).

The bounds are the anytime-valid ones of the agreement (:func:`shadow.stats.lower_bound`,
:func:`~shadow.stats.upper_bound`), each at the task type's alpha; with nothing counted
they are 0 and 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shadow.diff import Differ
from shadow.model import Action, ShadowDecision
from shadow.policy import Gate, Policy, TaskPolicy
from shadow.stats import lower_bound, upper_bound

__all__ = [
    "NOISY_MIN_CASES",
    "Bounded",
    "CeilingRow",
    "NoiseFloor",
    "RepeatRow",
    "ceiling_note",
    "human_ceilings",
    "noise_floor",
    "noisy_fields",
    "relative_policy",
    "self_consistency",
    "threshold",
]

NOISY_MIN_CASES = 20
"""Events (with a second opinion and an agent decision) a field needs to be judged noisy."""


@dataclass(frozen=True, slots=True)
class CeilingRow:
    """One event with a current outcome and a second opinion, and the agent's decisions for
    it by version (for the noisy-field count)."""

    event_id: str
    task_type: str
    decision: dict[str, Any]
    actions: tuple[Action, ...]
    second: dict[str, Any]
    second_actions: tuple[Action, ...]
    agent: dict[str, ShadowDecision]


@dataclass(frozen=True, slots=True)
class RepeatRow:
    """A repeated case: its first decision and the repeats by the same agent version."""

    event_id: str
    task_type: str
    agent_version: str
    first: ShadowDecision
    tries: dict[int, ShadowDecision]  # by attempt (1, 2, ...)


@dataclass(frozen=True, slots=True)
class Bounded:
    """A share ``agree / n`` with its two-sided anytime-valid bounds."""

    n: int
    agree: int
    lower: float
    upper: float

    @classmethod
    def of(cls, agree: int, n: int, alpha: float) -> Bounded:
        if n == 0:
            return cls(0, 0, 0.0, 1.0)
        return cls(n, agree, lower_bound(agree, n, alpha), upper_bound(agree, n, alpha))

    @property
    def share(self) -> float | None:
        return self.agree / self.n if self.n else None

    def to_json(self, count: str = "agree", share: str = "agreement") -> dict[str, Any]:
        """``{n, agree, agreement, lower, upper}`` (the names given), rounded to 4 places."""
        return {
            "n": self.n,
            count: self.agree,
            share: None if self.share is None else round(self.share, 4),
            "lower": round(self.lower, 4),
            "upper": round(self.upper, 4),
        }


@dataclass(frozen=True, slots=True)
class NoiseFloor:
    """One task type's noise floor (the current agent version's for the agent's parts)."""

    human_ceiling: Bounded
    self_consistency: Bounded
    stable: Bounded
    noisy_fields: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``/v1/agreement`` fields: human_ceiling, self_consistency, stable,
        noisy_fields."""
        return {
            "human_ceiling": self.human_ceiling.to_json(),
            "self_consistency": self.self_consistency.to_json(),
            "stable": self.stable.to_json("stable", "rate"),
            "noisy_fields": list(self.noisy_fields),
        }


def empty(alpha: float) -> NoiseFloor:
    nothing = Bounded.of(0, 0, alpha)
    return NoiseFloor(nothing, nothing, nothing)


def _alike(differ: Differ, a: ShadowDecision, b: ShadowDecision) -> bool:
    if a.decision is None or b.decision is None:
        return False
    return differ(a.decision, b.decision, a.actions, b.actions).agree


def human_ceilings(policy: Policy, rows: Iterable[CeilingRow]) -> dict[str, Bounded]:
    """Per configured task type: the first outcome against the second opinion."""
    counts: dict[str, list[int]] = {}
    differs = {name: Differ(t.compare) for name, t in policy.task_types.items()}
    for row in rows:
        differ = differs.get(row.task_type)
        if differ is None:
            continue
        c = counts.setdefault(row.task_type, [0, 0])
        c[0] += 1
        c[1] += differ(row.decision, row.second, row.actions, row.second_actions).agree
    out: dict[str, Bounded] = {}
    for name, t in policy.task_types.items():
        n, agree = counts.get(name, [0, 0])
        out[name] = Bounded.of(agree, n, t.autonomy.alpha)
    return out


def self_consistency(
    differ: Differ, rows: Iterable[RepeatRow], repeats: int, alpha: float
) -> tuple[Bounded, Bounded]:
    """(self_consistency, stable) over ``rows`` (one task type, one agent version), each
    case judged on its first ``repeats`` tries."""
    answered = agree = made = stable = 0
    for row in rows:
        tries = [row.tries.get(k) for k in range(1, repeats + 1)]
        if any(t is None for t in tries):
            continue
        every: list[ShadowDecision] = [row.first, *(t for t in tries if t is not None)]
        made += 1
        ok = all(t.error is None and t.decision is not None for t in every)
        if not ok:
            continue
        answered += 1
        if all(_alike(differ, row.first, t) for t in every[1:]):
            agree += 1
            if all(_alike(differ, a, b) for a, b in itertools.combinations(every, 2)):
                stable += 1
    return Bounded.of(agree, answered, alpha), Bounded.of(stable, made, alpha)


def noisy_fields(
    differ: Differ, rows: Iterable[CeilingRow], version: str | None
) -> tuple[dict[str, Any], ...]:
    """The fields flagged noisy (see the module docstring), most human disagreement first."""
    seen: dict[str, list[int]] = {}  # field -> [n, human_disagree, agent_disagree]
    for row in rows:
        agent = row.agent.get(version or "")
        if agent is None or agent.decision is None:
            continue
        humans = differ(row.decision, row.second, row.actions, row.second_actions)
        versus = differ(agent.decision, row.decision, agent.actions, row.actions)
        missed_h = {f.path for f in humans.fields if not f.matched}
        missed_a = {f.path for f in versus.fields if not f.matched}
        for path in {f.path for f in humans.fields} | {f.path for f in versus.fields}:
            c = seen.setdefault(path, [0, 0, 0])
            c[0] += 1
            c[1] += path in missed_h
            c[2] += path in missed_a
    flagged = [
        {"field": path, "n": n, "human_disagree": h, "agent_disagree": a}
        for path, (n, h, a) in seen.items()
        if n >= NOISY_MIN_CASES and h >= max(a, 1)
    ]
    return tuple(sorted(flagged, key=lambda f: (-f["human_disagree"], f["field"])))


def noise_floor(
    policy: Policy,
    ceiling_rows: Sequence[CeilingRow],
    repeat_rows: Sequence[RepeatRow],
    versions: Mapping[str, str | None],
) -> dict[str, NoiseFloor]:
    """Every configured task type's :class:`NoiseFloor`, the agent's parts for its version
    in ``versions``."""
    ceilings = human_ceilings(policy, ceiling_rows)
    out: dict[str, NoiseFloor] = {}
    for name, task in policy.task_types.items():
        differ = Differ(task.compare)
        version = versions.get(name)
        mine = [r for r in repeat_rows if r.task_type == name and r.agent_version == version]
        consistent, stable = self_consistency(differ, mine, task.repeats, task.autonomy.alpha)
        noisy = noisy_fields(differ, [r for r in ceiling_rows if r.task_type == name], version)
        out[name] = NoiseFloor(ceilings[name], consistent, stable, noisy)
    return out


# -- gates relative to the human ceiling (``agreement: {below_human: m}``) ------------------


def threshold(gate: Gate, ceiling: Bounded | None, *, demotion: bool = False) -> float:
    """The agreement a ``below_human`` gate asks for now: for a promotion the ceiling's
    upper bound minus the margin (one-sided in the safe direction: the agent's lower bound
    must reach it), for a demotion the ceiling's lower bound minus the margin (the agent's
    upper bound below it demotes). No second opinions yet: the upper bound is 1 (so
    ``1 - m``, the gate's ``agreement``) and the lower bound 0. A fixed gate: its
    ``agreement``."""
    if gate.below_human is None:
        return gate.agreement
    found = ceiling if ceiling is not None else Bounded.of(0, 0, 0.05)
    bound = found.lower if demotion else found.upper
    return min(max(bound - gate.below_human, 0.0), 1.0)


def ceiling_note(gate: Gate, ceiling: Bounded | None, *, demotion: bool = False) -> str:
    """Where a ``below_human`` gate's threshold came from, for reason lines ('' for a
    fixed gate)."""
    if gate.below_human is None:
        return ""
    found = ceiling if ceiling is not None else Bounded.of(0, 0, 0.05)
    which = "lower" if demotion else "upper"
    bound = found.lower if demotion else found.upper
    now = threshold(gate, found, demotion=demotion)
    if found.n == 0:
        return (
            f"below_human {gate.below_human:g}: no second opinions yet, the human ceiling's "
            f"{which} bound is {bound:g}, so the threshold is {now:.4f}"
        )
    return (
        f"below_human {gate.below_human:g}: human ceiling {which} bound {bound:.4f} "
        f"(n {found.n}, agree {found.agree}) - {gate.below_human:g} = "
        f"{now:.4f}"
    )


def relative_policy(
    policy: TaskPolicy, ceiling: Bounded | None, *, demotion: bool = False
) -> TaskPolicy:
    """``policy`` with each ``below_human`` gate's ``agreement`` set to its threshold now
    (:func:`threshold`); unchanged (the same object) when no gate is relative."""
    gates = policy.autonomy.gates
    if all(g.below_human is None for g in gates.values()):
        return policy
    moved = {
        level: replace(g, agreement=threshold(g, ceiling, demotion=demotion))
        for level, g in gates.items()
    }
    return replace(policy, autonomy=replace(policy.autonomy, gates=moved))
