"""A recorded history with known agreement, and the agents that answer it (not tests).

Every case is a pure function of its index, so the exact report numbers are known:

``refund`` (60 cases, ``rf-000`` .. ``rf-059``), amount ``2 * i``: the human approves when
the amount is below 80 (``i < 40``). The *candidate* approves below 100 (``i < 50``), so
``i`` in 40..49 is a critical miss on ``action`` (10); it returns ``amount + 1`` for
``i % 20 == 0`` (0, 20, 40: 3 amount mismatches) and ``amount + 0.005`` (within the 0.01
tolerance) otherwise. Disagreements: {40..49} + {0, 20} = 12, so agree = 48 of 60.

``ticket`` (40 cases, ``tk-000`` .. ``tk-039``): the human's queue is billing, tech, sales
for ``i % 3`` = 0, 1, 2. The candidate says ``payments`` for billing (an equivalent class,
so it matches), ``sales`` when ``i % 10 == 9`` (mismatches at 9, 19, 39; 29 is sales anyway)
and fails with HTTP 500 for ``i == 5`` (one agent error). So n = 40, agree = 36,
disagree = 3, errors = 1.

The *baseline* agent answers exactly like the human (100% agreement) except for the same
HTTP 500 at ``tk-005``: the candidate is significantly worse on ``refund`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

AGENT_VERSION = "cand@2"
BASELINE_VERSION = "base@1"
QUEUES = ("billing", "tech", "sales")

POLICY = """
task_types:
  refund:
    redact: [payload.customer.email]
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L2
      gates:
        L1: {agreement: 0.6, min_samples: 20}
        L2: {agreement: 0.95, min_samples: 50}
  ticket:
    compare:
      fields:
        queue: {match: exact, equivalent: [[billing, payments]]}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L1
      gates:
        L1: {agreement: 0.7, min_samples: 30}
"""


def refund_event(i: int) -> dict[str, Any]:
    return {
        "kind": "event",
        "event_id": f"rf-{i:03d}",
        "task_type": "refund",
        "payload": {"amount": 2 * i, "customer": {"email": f"c{i}@example.com", "tier": "gold"}},
        "occurred_at": f"2026-11-{1 + i % 20:02d}T10:00:00Z",
    }


def refund_outcome(i: int) -> dict[str, Any]:
    return {
        "kind": "outcome",
        "event_id": f"rf-{i:03d}",
        "decision": {"action": "approve" if i < 40 else "deny", "amount": 2 * i},
        "decided_by": "ops/jane",
        "decided_at": f"2026-11-{1 + i % 20:02d}T11:00:00Z",
    }


def ticket_event(i: int) -> dict[str, Any]:
    return {
        "kind": "event",
        "event_id": f"tk-{i:03d}",
        "task_type": "ticket",
        "payload": {"subject": f"ticket {i}", "kind": QUEUES[i % 3]},
        "occurred_at": f"2026-11-{1 + i % 20:02d}T12:00:00Z",
    }


def ticket_outcome(i: int) -> dict[str, Any]:
    return {
        "kind": "outcome",
        "event_id": f"tk-{i:03d}",
        "decision": {"queue": QUEUES[i % 3]},
        "decided_at": f"2026-11-{1 + i % 20:02d}T13:00:00Z",
    }


def records() -> list[dict[str, Any]]:
    """Events and outcomes interleaved in an order that is not the event_id order."""
    out: list[dict[str, Any]] = []
    for i in reversed(range(60)):
        out += [refund_outcome(i), refund_event(i)]
    for i in range(40):
        out += [ticket_event(i), ticket_outcome(i)]
    return out


def write_jsonl(path: Path, items: list[dict[str, Any]] | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in (items or records())))
    return path


def index(event_id: str) -> int:
    return int(event_id.split("-")[1])


def candidate_answer(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the candidate agent for one request."""
    i = index(request["event_id"])
    if request["task_type"] == "refund":
        amount = request["payload"]["amount"]
        off = 1 if i % 20 == 0 else 0.005
        decision = {"action": "approve" if i < 50 else "deny", "amount": amount + off}
        return 200, {
            "decision": decision,
            "agent_version": AGENT_VERSION,
            "usage": {"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.002},
        }
    if i == 5:
        return 500, {"error": "model overloaded"}
    queue = QUEUES[i % 3]
    if i % 10 == 9:
        queue = "sales"
    elif queue == "billing":
        queue = "payments"
    return 200, {"decision": {"queue": queue}, "agent_version": AGENT_VERSION}


def baseline_answer(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    i = index(request["event_id"])
    if request["task_type"] == "refund":
        amount = request["payload"]["amount"]
        decision = {"action": "approve" if i < 40 else "deny", "amount": amount}
        return 200, {"decision": decision, "agent_version": BASELINE_VERSION}
    if i == 5:
        return 500, {"error": "model overloaded"}
    return 200, {"decision": {"queue": QUEUES[i % 3]}, "agent_version": BASELINE_VERSION}


class AgentFailed(Exception):
    """What the in-process agents raise where the HTTP agent answers 500."""


async def candidate(request: dict[str, Any]) -> dict[str, Any]:
    """``tests.replay.data:candidate`` -- the candidate as a module:callable agent."""
    status, body = candidate_answer(request)
    if status != 200:
        raise AgentFailed(body["error"])
    return body


async def baseline(request: dict[str, Any]) -> dict[str, Any]:
    status, body = baseline_answer(request)
    if status != 200:
        raise AgentFailed(body["error"])
    return body
