"""The noise floor: how often two humans agree (the human ceiling), how often the agent
agrees with itself (self-consistency, stability), and the fields where humans disagree with
each other as often as with the agent (noisy fields). Pure: each human-vs-human pair and
each repeated try is judged once with the task type's own compare rules (:mod:`shadow.diff`)
by :func:`judge_human` and :func:`judge_repeat`; the store keeps those verdicts (like
comparisons: evidence that outlives retention) and counts them (:mod:`shadow.store.noise`,
driven by :mod:`shadow.noise_read`); :func:`floor_of` bounds the counts with
:mod:`shadow.stats` at the task type's alpha.

- **human_ceiling** ``{n, agree, agreement, lower, upper}``: over the events whose current
  outcome was decided **blind** and that have a second opinion, ``agree`` those whose two
  decisions (and actions) compare equal. An outcome decided with the agent's answer shown
  (``assisted``) or by the agent is not the humans' own noise: not counted. Humans only:
  the agent's evidence (``n``, ``agree``) never changes.
- **self_consistency** ``{n, agree, agreement, lower, upper}``: over the current agent
  version's repeated cases whose first answer and every repeat (``repeats`` of them) were
  answers (no error), ``agree`` those where each repeat compares equal to the first.
- **stable** ``{n, stable, rate, lower, upper}`` (pass^k-style): over the repeated cases with
  every try recorded (errors included), ``stable`` those answered on every try and the same
  on every pair of tries. A try that errors is a failed try: the case is not stable. With
  ``repeats: 1`` and no errors it equals self_consistency.
- **noisy_fields**: per compared field over the events with a blind first outcome, a second
  opinion *and* a comparison of the current agent version against that outcome revision:
  ``human_disagree`` (the two humans differ on it) and ``agent_disagree`` (the agent differs
  from the first outcome on it). A field is noisy when ``n >= NOISY_MIN_CASES`` and
  ``human_disagree >= max(agent_disagree, 1)``: humans disagree with each other at least as
  often as with the agent, so the agent's misses there are not evidence against it (Diffy's
  noise idea, applied to people).

A verdict records what it judged: the outcome revision and second opinion (their content
hashes), how the first outcome was handled, and the compare rules (``compare_hash``); when
any of these changes (an outcome revision, a newer second opinion, a routing record, new
compare rules: a new evidence epoch) it is judged again, once. A repeated try is judged
against its case's first decision and every earlier try when it is stored, and again under
new compare rules. After retention deletes the bodies the verdicts stay, as they are.

The bounds are the anytime-valid ones of the agreement (:func:`shadow.stats.lower_bound`,
:func:`~shadow.stats.upper_bound`), each at the task type's alpha; with nothing counted
they are 0 and 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from shadow.diff import Differ
from shadow.model import Action, ShadowDecision
from shadow.policy import Gate, TaskPolicy
from shadow.stats import lower_bound, upper_bound

__all__ = [
    "NOISY_MIN_CASES",
    "Bounded",
    "HumanPair",
    "HumanVerdict",
    "NoiseCounts",
    "NoiseFloor",
    "RepeatTry",
    "RepeatVerdict",
    "ceiling_note",
    "floor_of",
    "judge_human",
    "judge_repeat",
    "relative_policy",
    "threshold",
]

NOISY_MIN_CASES = 20
"""Events (with a second opinion and an agent comparison) a field needs to be judged noisy."""


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


@dataclass(frozen=True, slots=True)
class HumanPair:
    """An event's current outcome and its second opinion, to be judged (or judged again)."""

    event_id: str
    task_type: str
    decision: dict[str, Any]
    actions: tuple[Action, ...]
    outcome_hash: str
    second: dict[str, Any]
    second_actions: tuple[Action, ...]
    second_hash: str
    handled_by: str  # the first outcome's: the routing record's, else as stated, else blind


@dataclass(frozen=True, slots=True)
class HumanVerdict:
    """The first outcome against the second opinion, and what was judged."""

    event_id: str
    task_type: str
    alike: bool
    fields: tuple[tuple[str, bool], ...]  # (path, matched) of every compared field
    outcome_hash: str
    second_hash: str
    compare_hash: str
    handled_by: str


@dataclass(frozen=True, slots=True)
class RepeatTry:
    """A stored repeated try, its case's first decision and the earlier tries (the same
    agent version's), to be judged."""

    event_id: str
    attempt: int
    task_type: str
    agent_version: str
    first: ShadowDecision
    earlier: tuple[ShadowDecision, ...]
    this: ShadowDecision


@dataclass(frozen=True, slots=True)
class RepeatVerdict:
    """One repeated try judged: ``answered`` (it and the first decision are answers),
    ``alike_first`` (it compares equal to the first), ``alike_all`` (and to every earlier
    try: every pair of a case's tries is covered by its tries' verdicts)."""

    event_id: str
    attempt: int
    task_type: str
    agent_version: str
    answered: bool
    alike_first: bool
    alike_all: bool
    compare_hash: str


@dataclass(frozen=True, slots=True)
class NoiseCounts:
    """One task type's counted verdicts (the store's aggregates)."""

    ceiling_n: int = 0
    ceiling_agree: int = 0
    consistency_n: int = 0  # cases answered on every try
    consistency_agree: int = 0
    stable_n: int = 0  # cases with every try recorded
    stable: int = 0
    fields: tuple[tuple[str, int, int, int], ...] = ()  # (path, n, human, agent disagree)


def _answered(d: ShadowDecision) -> bool:
    return d.error is None and d.decision is not None


def judge_human(pair: HumanPair, differ: Differ, compare_hash: str) -> HumanVerdict:
    """The first outcome against the second opinion under ``differ`` (the task type's
    rules, whose hash is ``compare_hash``)."""
    result = differ(pair.decision, pair.second, pair.actions, pair.second_actions)
    return HumanVerdict(
        pair.event_id,
        pair.task_type,
        result.agree,
        tuple((f.path, f.matched) for f in result.fields),
        pair.outcome_hash,
        pair.second_hash,
        compare_hash,
        pair.handled_by,
    )


def judge_repeat(t: RepeatTry, differ: Differ, compare_hash: str) -> RepeatVerdict:
    """A repeated try against its case's first decision and each earlier try."""
    answered = _answered(t.first) and _answered(t.this)
    alike_first = answered and _alike(differ, t.first, t.this)
    alike_all = alike_first and all(_alike(differ, e, t.this) for e in t.earlier)
    return RepeatVerdict(
        t.event_id,
        t.attempt,
        t.task_type,
        t.agent_version,
        answered,
        alike_first,
        alike_all,
        compare_hash,
    )


def floor_of(counts: NoiseCounts, alpha: float) -> NoiseFloor:
    """The :class:`NoiseFloor` of one task type's counts, bounded at ``alpha``; the noisy
    fields (see the module docstring) most human disagreement first."""
    flagged = [
        {"field": path, "n": n, "human_disagree": h, "agent_disagree": a}
        for path, n, h, a in counts.fields
        if n >= NOISY_MIN_CASES and h >= max(a, 1)
    ]
    return NoiseFloor(
        Bounded.of(counts.ceiling_agree, counts.ceiling_n, alpha),
        Bounded.of(counts.consistency_agree, counts.consistency_n, alpha),
        Bounded.of(counts.stable, counts.stable_n, alpha),
        tuple(sorted(flagged, key=lambda f: (-f["human_disagree"], f["field"]))),
    )


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
