"""A deterministic in-process agent for the kill -9 test in ``test_crash.py`` (not a test).

``shadow run --agent tests.shadow.crash_agent:agent`` loads :func:`agent`. Every record is
a pure function of its index ``i`` (event id ``cr-<i>``), and so is the agent's answer, so
the test knows exactly which comparisons must agree, disagree or miss critically:

- ``i % 7 == 0``: the agent denies what the human approved (a *critical* disagreement);
- otherwise ``i % 5 == 0``: the amount is off by one (a non-critical disagreement);
- otherwise it agrees.

Environment (read here, in the helper, never by the product):

``CRASH_AGENT_LOG``
    If set, a file to which every call appends ``<event_id>\\n`` (to count re-calls after a
    crash: delivery to the agent is at-least-once).
``CRASH_AGENT_DELAY``
    Seconds each call sleeps (default 0), to keep agent work in flight at a kill.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

AGENT_VERSION = "crash-agent@1"
TASK_TYPES = ("refund_request", "ticket_routing")
EVENT_PREFIX = "cr-"

Verdict = Literal["agree", "disagree", "critical"]


def event_id(i: int) -> str:
    return f"{EVENT_PREFIX}{i:06d}"


def index(eid: str) -> int:
    return int(eid.removeprefix(EVENT_PREFIX))


def amount(i: int) -> float:
    return round(10 + (i % 97) * 1.25, 2)


def event(i: int) -> dict[str, Any]:
    return {
        "event_id": event_id(i),
        "task_type": TASK_TYPES[i % len(TASK_TYPES)],
        "payload": {"amount": amount(i), "customer": {"email": f"c{i}@example.com"}},
        "occurred_at": "2026-11-20T10:00:00Z",
    }


def outcome(i: int) -> dict[str, Any]:
    return {
        "event_id": event_id(i),
        "decision": {"action": "approve", "amount": amount(i)},
        "decided_by": "ops/jane",
        "decided_at": "2026-11-20T10:07:00Z",
    }


def expected_verdict(i: int) -> Verdict:
    if i % 7 == 0:
        return "critical"
    if i % 5 == 0:
        return "disagree"
    return "agree"


def _answer(i: int) -> dict[str, Any]:
    verdict = expected_verdict(i)
    action = "deny" if verdict == "critical" else "approve"
    value = amount(i) + (1.0 if verdict == "disagree" else 0.0)
    return {
        "decision": {"action": action, "amount": value},
        "agent_version": AGENT_VERSION,
        "confidence": 0.9,
    }


def _log(eid: str) -> None:
    path = os.environ.get("CRASH_AGENT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(eid + "\n")


async def agent(request: dict[str, Any]) -> dict[str, Any]:
    """The agent callable: answers by the rule above, from the request's event id only."""
    eid = str(request["event_id"])
    delay = float(os.environ.get("CRASH_AGENT_DELAY") or 0)
    if delay > 0:
        await asyncio.sleep(delay)
    _log(eid)
    return _answer(index(eid))
