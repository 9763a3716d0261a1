"""What every synthetic task type of the demo shares: the case record and the small
helpers that make reviewers human (typing habits, delays, names). Pure; randomness comes
from the caller's ``random.Random``."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

JSON = dict[str, Any]


@dataclass(frozen=True)
class DemoCase:
    """One unit of work: the event (JSON per the work-event contract) and the human outcome
    for it (JSON per the outcome contract)."""

    event: dict[str, Any]
    outcome: dict[str, Any]

    @property
    def task_type(self) -> str:
        return str(self.event["task_type"])


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(x: float) -> float:
    return round(x, 2) + 0.0  # + 0.0: never -0.0


def _case(
    event_id: str,
    task_type: str,
    occurred: datetime,
    segment: str,
    payload: JSON,
    decision: JSON,
    actions: list[JSON],
    reviewer: str,
    delay: timedelta,
) -> DemoCase:
    event = {
        "event_id": event_id,
        "task_type": task_type,
        "payload": payload,
        "occurred_at": _ts(occurred),
        "segment": segment,
    }
    outcome: JSON = {"event_id": event_id, "decision": decision}
    if actions:
        outcome["actions"] = actions
    outcome["decided_by"] = reviewer
    outcome["decided_at"] = _ts(occurred + max(delay, timedelta(minutes=2)))
    return DemoCase(event, outcome)


def _delay(
    rng: random.Random, median_minutes: float, sigma: float, cap_minutes: float
) -> timedelta:
    minutes = min(cap_minutes, median_minutes * math.exp(rng.gauss(0.0, sigma)))
    return timedelta(seconds=round(minutes * 60))


# fmt: off
_FIRST: Final = (
    "anna", "ben", "chloe", "david", "elena", "farid", "grace", "hugo", "ines", "jonas",
    "kira", "liam", "mei", "noah", "olga", "pedro", "quinn", "rosa", "sami", "tara",
)
_LAST: Final = (
    "meyer", "okafor", "novak", "garcia", "smith", "rossi", "kowalski", "tanaka",
    "dubois", "larsen", "silva", "murphy", "schmidt", "haddad", "nguyen", "berg",
)
# fmt: on


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_FIRST), rng.choice(_LAST)


def _messy(rng: random.Random, text: str) -> str:
    """How a person types a canned reason: case and spacing vary, the words do not."""
    roll = rng.random()
    if roll < 0.08:
        return text.lower()
    if roll < 0.12:
        return text.upper()
    if roll < 0.18:
        return "  " + text.replace(" ", "  ", 1) + " "
    return text


def _shuffled(rng: random.Random, items: list[str]) -> list[str]:
    out = list(items)
    rng.shuffle(out)
    if out and rng.random() < 0.03:
        out.append(out[0])  # a tag entered twice: a set ignores duplicates
    return out
