"""The noise floor in a replay: the human ceiling of the history's second opinions and the
candidate's self-consistency on repeated tries, judged and bounded exactly as the live
sidecar does (:mod:`shadow.noise`).

:class:`NoiseTally` keeps one task type's counts (a :class:`shadow.noise.NoiseCounts` in the
making, a few integers and one counter per compared field), merges across shards in any
order, and is turned into the report's fields by :func:`shadow.noise.floor_of`, the live
function, so the same cases give the numbers ``GET /v1/agreement`` gives:

- ``human_ceiling``: each scored case whose outcome was decided **blind** (the live rule:
  the sidecar's routing record, else what the outcome states, else blind) and that has a
  second opinion, judged by :func:`shadow.noise.judge_human` (the first outcome against the
  second opinion under the task type's compare rules).
- ``noisy_fields``: per compared field over those cases the candidate answered (agree or
  disagree; an agent error compares no field): the humans differ on it, the candidate differs
  from the first outcome on it (the declared-actions note of ``match: tool_calls`` is not a
  field), flagged by the live rule (:data:`shadow.noise.NOISY_MIN_CASES`).
- ``self_consistency`` and ``stable``: each repeated case (the live stable hash,
  :meth:`shadow.policy.TaskPolicy.repeated`) with every one of its ``repeats`` tries
  answered back, each try judged by :func:`shadow.noise.judge_repeat` against the first
  answer and every earlier try. Never in ``n``, ``agree`` or anything else of the evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shadow.diff import Differ
from shadow.evidence_view import noise_text
from shadow.model import (
    Comparison,
    Handling,
    Outcome,
    SecondOpinion,
    ShadowDecision,
    Verdict,
)
from shadow.noise import (
    HumanPair,
    NoiseCounts,
    RepeatTry,
    floor_of,
    judge_human,
    judge_repeat,
)
from shadow.policy import TaskPolicy

__all__ = ["NoiseTally", "noise_line"]

# The match of the comparison's declared-actions note (shadow.joiner.declared_note): not a
# compared field, as in the live count.
_TOOL_CALLS = "tool_calls"


class NoiseTally:
    """One task type's human-vs-human and repeated-try counts; see the module doc."""

    __slots__ = (
        "answered",
        "ceiling_agree",
        "ceiling_n",
        "consistent",
        "fields",
        "made",
        "stable",
        "tries",
    )

    def __init__(self) -> None:
        self.ceiling_n = self.ceiling_agree = 0
        self.fields: dict[str, list[int]] = {}  # path -> [n, human_disagree, agent_disagree]
        self.made = self.answered = self.consistent = self.stable = 0
        self.tries = 0  # repeated tries answered back (agent calls or cache hits)

    def add_pair(
        self,
        task: TaskPolicy,
        differ: Differ,
        case_id: str,
        c: Comparison,
        outcome: Outcome,
        second: SecondOpinion,
    ) -> None:
        """A scored case with a second opinion (``outcome``: its current
        :class:`~shadow.model.Outcome`; ``c``: the candidate's comparison with it)."""
        if c.handled_by is not Handling.BLIND:
            return  # the humans' own noise only: an outcome anchored by the agent is not
        verdict = judge_human(
            HumanPair(
                case_id,
                c.task_type,
                outcome.decision,
                outcome.actions,
                outcome.content_hash,
                second.decision,
                second.actions,
                second.content_hash,
                c.handled_by.value,
            ),
            differ,
            task.compare_hash,
        )
        self.ceiling_n += 1
        self.ceiling_agree += verdict.alike
        if c.verdict not in (Verdict.AGREE, Verdict.DISAGREE):
            return
        seen: dict[str, list[bool]] = {}
        for path, matched in verdict.fields:
            seen.setdefault(path, [False, False])[0] |= not matched
        for f in c.fields:
            if f.match == _TOOL_CALLS:
                continue
            seen.setdefault(f.path, [False, False])[1] |= not f.matched
        for path, (h, a) in seen.items():
            counts = self.fields.setdefault(path, [0, 0, 0])
            counts[0] += 1
            counts[1] += h
            counts[2] += a

    def add_repeat(
        self,
        task: TaskPolicy,
        differ: Differ,
        task_type: str,
        first: ShadowDecision,
        tries: Sequence[ShadowDecision],
    ) -> None:
        """A repeated case with every one of its tries (in order: try 1, 2, ...)."""
        verdicts = [
            judge_repeat(
                RepeatTry(
                    first.event_id,
                    k,
                    task_type,
                    first.agent_version,
                    first,
                    tuple(tries[: k - 1]),
                    this,
                ),
                differ,
                task.compare_hash,
            )
            for k, this in enumerate(tries, start=1)
        ]
        self.tries += len(tries)
        self.made += 1
        if all(v.answered for v in verdicts):
            self.answered += 1
            self.consistent += all(v.alike_first for v in verdicts)
            self.stable += all(v.alike_all for v in verdicts)

    def merge(self, other: NoiseTally) -> None:
        self.ceiling_n += other.ceiling_n
        self.ceiling_agree += other.ceiling_agree
        for path, (n, h, a) in other.fields.items():
            mine = self.fields.setdefault(path, [0, 0, 0])
            mine[0] += n
            mine[1] += h
            mine[2] += a
        self.made += other.made
        self.answered += other.answered
        self.consistent += other.consistent
        self.stable += other.stable
        self.tries += other.tries

    def counts(self) -> NoiseCounts:
        return NoiseCounts(
            self.ceiling_n,
            self.ceiling_agree,
            self.answered,
            self.consistent,
            self.made,
            self.stable,
            tuple((p, n, h, a) for p, (n, h, a) in sorted(self.fields.items())),
        )

    def entry(self, task: TaskPolicy, *, repeats: bool) -> dict[str, Any]:
        """The report's ``human_ceiling``, ``self_consistency``, ``stable``,
        ``noisy_fields`` (the ``GET /v1/agreement`` names and rounding) and ``repeats``
        (the policy's ``repeat_rate`` and ``repeats``, whether this run repeated, the cases
        repeated and the tries answered)."""
        return {
            **floor_of(self.counts(), task.autonomy.alpha).to_json(),
            "repeats": {
                "repeat_rate": task.repeat_rate,
                "repeats": task.repeats,
                "enabled": repeats and task.repeat_rate > 0,
                "cases": self.made,
                "tries": self.tries,
            },
        }


def noise_line(entry: Mapping[str, Any]) -> str | None:
    """A report entry's noise floor in one line, as the live views write it
    (:func:`shadow.evidence_view.noise_text`), saying when this run did not repeat the
    policy's repeated cases (``--no-repeats``); ``None`` with nothing to say."""
    text = noise_text(entry)
    reps = entry.get("repeats") or {}
    off = None
    if reps.get("repeat_rate") and not reps.get("enabled"):
        off = "self-consistency: off (--no-repeats)"
    shown = [p for p in (text, off) if p]
    return "; ".join(shown) if shown else None
