"""A paired history: one baseline and three candidates that answer the same 200 cases, each
worse in a way only part of the regression gate sees (not tests).

``claim`` cases ``pc-000`` .. ``pc-199``; segment ``eu`` for even ``i``, ``us`` for odd. The
human decides ``action`` (critical) = deny when ``i % 3 == 0``, else approve, and
``code`` = ``c{i % 7}``. An agent is *wrong* on a case by answering ``code`` = ``x`` (a plain
disagreement) or the other ``action`` (a critical miss).

- ``baseline`` (``base@1``): wrong code where ``i % 10`` is 8 or 9: 160 of 200 (80 %), 20
  wrong in each segment.
- ``flips`` (``flips@2``): the baseline, and a wrong code on 7 more cases (:data:`FLIPPED`):
  153 of 200. Unpaired, 0.765 vs 0.80 is nothing (one-sided p 0.198); paired, 7 cases
  went right -> wrong and none the other way: mid-p = 1/2 * P(X = 7), X ~ Bin(7, 1/2) =
  1/256. Per segment 4 and 3 flips: mid-p 1/32 and 1/16, not below 0.05/2.
- ``segment_shift`` (``shift@2``): right on the baseline's 10 wrong ``eu`` cases below 100
  (:data:`SHIFT_FIXED`) and wrong on 10 ``us`` cases it had right (:data:`SHIFT_BROKEN`):
  160 of 200 again, paired 10 vs 10 (mid-p 0.5), but ``us`` fell from 0.80 to 0.70:
  paired mid-p 1/2048 < 0.05/2.
- ``critical`` (``crit@2``): right on 10 of the baseline's wrong cases
  (:data:`CRIT_FIXED`) and the wrong ``action`` on 10 it had right (:data:`CRIT_BROKEN`),
  5 of each in each segment: agreement unchanged (160, paired 10 vs 10), critical misses
  0 -> 10 (paired mid-p 1/2048).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

N = 200
POLICY = """
task_types:
  claim:
    compare:
      fields:
        action: {match: exact, critical: true}
        code: {match: exact}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L1
      gates:
        L1: {agreement: 0.5, min_samples: 20}
"""

BASELINE_WRONG = frozenset(i for i in range(N) if i % 10 in (8, 9))
FLIPPED = frozenset({0, 1, 10, 11, 20, 21, 30})
SHIFT_FIXED = frozenset(i for i in range(100) if i % 10 == 8)
SHIFT_BROKEN = frozenset({1, 3, 5, 7, 11, 13, 15, 17, 21, 23})
CRIT_FIXED = frozenset({8, 18, 28, 38, 48, 9, 19, 29, 39, 49})
CRIT_BROKEN = frozenset({0, 10, 20, 30, 40, 1, 11, 21, 31, 41})


def segment(i: int) -> str:
    return "eu" if i % 2 == 0 else "us"


def human(i: int) -> dict[str, Any]:
    return {"action": "deny" if i % 3 == 0 else "approve", "code": f"c{i % 7}"}


def records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(N):
        event_id = f"pc-{i:03d}"
        out.append(
            {
                "kind": "event",
                "event_id": event_id,
                "task_type": "claim",
                "payload": {"i": i},
                "segment": segment(i),
            }
        )
        out.append({"kind": "outcome", "event_id": event_id, "decision": human(i)})
    return out


def write(directory: Path) -> tuple[Path, Path]:
    """The history (JSONL) and the policy file."""
    history, policy = directory / "paired.jsonl", directory / "paired.yaml"
    history.write_text("".join(json.dumps(r) + "\n" for r in records()))
    policy.write_text(POLICY)
    return history, policy


def _answer(i: int, *, wrong_code: bool, wrong_action: bool, version: str) -> dict[str, Any]:
    decision = human(i)
    if wrong_code:
        decision["code"] = "x"
    if wrong_action:
        decision["action"] = "approve" if decision["action"] == "deny" else "deny"
    return {"decision": decision, "agent_version": version}


def _i(request: dict[str, Any]) -> int:
    return int(request["payload"]["i"])


def baseline(request: dict[str, Any]) -> dict[str, Any]:
    i = _i(request)
    return _answer(i, wrong_code=i in BASELINE_WRONG, wrong_action=False, version="base@1")


def flips(request: dict[str, Any]) -> dict[str, Any]:
    i = _i(request)
    wrong = i in BASELINE_WRONG or i in FLIPPED
    return _answer(i, wrong_code=wrong, wrong_action=False, version="flips@2")


def segment_shift(request: dict[str, Any]) -> dict[str, Any]:
    i = _i(request)
    wrong = (i in BASELINE_WRONG and i not in SHIFT_FIXED) or i in SHIFT_BROKEN
    return _answer(i, wrong_code=wrong, wrong_action=False, version="shift@2")


def critical(request: dict[str, Any]) -> dict[str, Any]:
    i = _i(request)
    wrong = i in BASELINE_WRONG and i not in CRIT_FIXED
    return _answer(i, wrong_code=wrong, wrong_action=i in CRIT_BROKEN, version="crit@2")
