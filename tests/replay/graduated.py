"""A task type that graduated above L0, with known evidence (not tests).

``refund`` items ``g-000`` .. ``g-499`` are routed by the host, 100 at L0, 100 at L1 and 300
at L3 (in that order, the ladder promoted in between); ``n-000`` .. ``n-009`` are never
routed. The amount of the ``k``-th item is ``(37 k) mod 100``.

- The humans' own judgement (``truth``) approves below 60.
- The old agent, ``old@1``, approves below 80: it was wrong on a fifth of the amounts.
- An outcome whose item the agent handled (L3), or decided by a human shown the agent's
  proposal (L1 suggestions), repeats the old agent's decision; a blind outcome (L0, the audit
  sample from L1 up, items never routed) is the humans' own judgement.

The sidecar labels each item as :meth:`shadow.ladder.Ladder.route` answers (:func:`label`);
an item never routed takes what its outcome states, else blind. In the sidecar's store the
outcomes of five agent-handled items falsely state ``blind`` (the routing record wins) and
``n-000`` .. ``n-003`` state ``agent``; in the exported files every outcome states its label
(blind ones every other time, the rest leave it out: absent means blind).

Candidates: ``near_old`` approves below 76 (close to the old agent, so it repeats most of its
echoed decisions, and wrong on amounts 60..75); ``truthful`` approves below 60 (always right
on the blind outcomes, but it contradicts a fifth of the echoes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadow.model import Handling, Level
from shadow.policy import TaskPolicy, parse_policy

OLD_VERSION = "old@1"
NEAR_OLD_VERSION = "near-old@2"
TRUTHFUL_VERSION = "truthful@2"

POLICY = """
task_types:
  refund:
    compare:
      fields:
        action: {match: exact, critical: true}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L3
      mode: propose
      audit_rate: 0.1
      gates:
        L1: {agreement: 0.5, min_samples: 50}
        L2: {agreement: 0.5, min_samples: 80}
        L3: {agreement: 0.5, min_samples: 100}
"""

PHASES: tuple[tuple[Level, int], ...] = ((Level.L0, 100), (Level.L1, 100), (Level.L3, 300))
NEVER_ROUTED = 10
STATED_AGENT = 4  # n-000 .. n-003 state "agent"
FALSE_BLIND = 5  # the first five agent-handled items' outcomes claim "blind" (store only)


def task() -> TaskPolicy:
    found = parse_policy(POLICY).for_task("refund")
    assert found is not None
    return found


def action(amount: int, below: int) -> str:
    return "approve" if amount < below else "deny"


def truth(amount: int) -> str:
    return action(amount, 60)


def old(amount: int) -> str:
    return action(amount, 80)


def near_old_action(amount: int) -> str:
    return action(amount, 76)


def truthful_action(amount: int) -> str:
    return truth(amount)


def label(t: TaskPolicy, event_id: str, level: Level) -> Handling:
    """How the sidecar routes ``event_id`` at ``level`` (GET /v1/route's ``handled_by``)."""
    if level == Level.L0 or t.audited(event_id, level):
        return Handling.BLIND
    return Handling.ASSISTED if level <= Level.L2 else Handling.AGENT


@dataclass(frozen=True, slots=True)
class Item:
    event_id: str
    amount: int
    level: Level | None  # the level it was routed at; None: never routed
    handled_by: Handling  # the live label
    stated: Handling | None  # what its outcome states in the sidecar's store

    @property
    def decision(self) -> str:
        """What the outcome says: the humans' own judgement only when blind."""
        return truth(self.amount) if self.handled_by is Handling.BLIND else old(self.amount)


def items() -> list[Item]:
    t = task()
    out: list[Item] = []
    k = 0
    false_claims = 0
    for level, count in PHASES:
        for _ in range(count):
            eid = f"g-{k:03d}"
            h = label(t, eid, level)
            stated = None
            if h is Handling.AGENT and false_claims < FALSE_BLIND:
                stated, false_claims = Handling.BLIND, false_claims + 1
            out.append(Item(eid, (37 * k) % 100, level, h, stated))
            k += 1
    for j in range(NEVER_ROUTED):
        stated = Handling.AGENT if j < STATED_AGENT else None
        out.append(Item(f"n-{j:03d}", (37 * k) % 100, None, stated or Handling.BLIND, stated))
        k += 1
    return out


def event(item: Item) -> dict[str, Any]:
    return {
        "kind": "event",
        "event_id": item.event_id,
        "task_type": "refund",
        "payload": {"amount": item.amount},
    }


def outcome(item: Item, *, stated: Handling | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "outcome",
        "event_id": item.event_id,
        "decision": {"action": item.decision},
    }
    if stated is not None:
        out["handled_by"] = stated.value
    return out


def exported(item: Item, index: int) -> Handling | None:
    """What an exported outcome states: its label; blind ones every other time only."""
    if item.handled_by is Handling.BLIND and index % 2:
        return None
    return item.handled_by


def file_records() -> list[dict[str, Any]]:
    """The history as an export (JSONL/Parquet records), each outcome stating its label."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items()):
        out += [event(item), outcome(item, stated=exported(item, i))]
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@dataclass(frozen=True, slots=True)
class Expected:
    """A candidate's expected report figures on this history."""

    n: int
    agree: int
    acceptance: dict[str, dict[str, Any]]
    all_n: int  # every outcome, as replay counted before it honoured handling
    all_agree: int

    @property
    def agreement(self) -> float:
        return round(self.agree / self.n, 4)

    @property
    def all_agreement(self) -> float:
        return round(self.all_agree / self.all_n, 4)


def expected(candidate: Any) -> Expected:
    """``candidate``: amount -> action."""
    n = agree = 0
    acc_n = {Handling.AGENT: 0, Handling.ASSISTED: 0}
    acc_agree = {Handling.AGENT: 0, Handling.ASSISTED: 0}
    for item in items():
        ok = candidate(item.amount) == item.decision
        if item.handled_by is Handling.BLIND:
            n += 1
            agree += ok
        else:
            acc_n[item.handled_by] += 1
            acc_agree[item.handled_by] += ok
    acceptance = {
        h.value: {
            "n": acc_n[h],
            "agree": acc_agree[h],
            "agreement": acc_agree[h] / acc_n[h] if acc_n[h] else None,
        }
        for h in (Handling.AGENT, Handling.ASSISTED)
    }
    all_n = n + sum(acc_n.values())
    return Expected(n, agree, acceptance, all_n, agree + sum(acc_agree.values()))


def _answer(request: dict[str, Any], decide: Any, version: str) -> dict[str, Any]:
    return {
        "decision": {"action": decide(request["payload"]["amount"])},
        "agent_version": version,
    }


async def near_old(request: dict[str, Any]) -> dict[str, Any]:
    """``tests.replay.graduated:near_old`` -- a module:callable candidate."""
    return _answer(request, near_old_action, NEAR_OLD_VERSION)


async def truthful(request: dict[str, Any]) -> dict[str, Any]:
    """``tests.replay.graduated:truthful`` -- a module:callable candidate."""
    return _answer(request, truthful_action, TRUTHFUL_VERSION)


async def old_agent(request: dict[str, Any]) -> dict[str, Any]:
    """``tests.replay.graduated:old_agent`` -- the old agent, in process."""
    return _answer(request, old, OLD_VERSION)
