"""In-process agents for the budget gate tests (tests/replay/test_budgets.py), on the paired
history of :mod:`tests.replay.paired` (not tests). Each answers like ``paired.baseline`` (right
on 160 of 200 cases) and differs only in its cost, its failures or its speed."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.replay.paired import BASELINE_WRONG, baseline

# Cases the baseline got wrong anyway: failing on them leaves agreement as it is.
FAILED = frozenset(sorted(BASELINE_WRONG)[:10])


def _costing(request: dict[str, Any], cost: float, version: str) -> dict[str, Any]:
    answer = baseline(request)
    return {**answer, "agent_version": version, "usage": {"cost_usd": cost}}


def cheap(request: dict[str, Any]) -> dict[str, Any]:
    """$0.001 an answer."""
    return _costing(request, 0.001, "cheap@1")


def dear(request: dict[str, Any]) -> dict[str, Any]:
    """$0.05 an answer."""
    return _costing(request, 0.05, "dear@2")


def spike(request: dict[str, Any]) -> dict[str, Any]:
    """$0.001 an answer, but $0.5 on one case."""
    cost = 0.5 if request["payload"]["i"] == 7 else 0.001
    return _costing(request, cost, "spike@2")


def failing(request: dict[str, Any]) -> dict[str, Any]:
    """Fails (raises) on the 10 :data:`FAILED` cases, which the baseline got wrong."""
    if request["payload"]["i"] in FAILED:
        raise RuntimeError("the model timed out")
    return {**baseline(request), "agent_version": "failing@2"}


async def slow(request: dict[str, Any]) -> dict[str, Any]:
    """Answers after at least 20 ms."""
    await asyncio.sleep(0.02)
    return {**baseline(request), "agent_version": "slow@2"}


def penny(request: dict[str, Any]) -> dict[str, Any]:
    """$0.01 an answer."""
    return _costing(request, 0.01, "penny@1")


def two_pennies(request: dict[str, Any]) -> dict[str, Any]:
    """$0.02 an answer."""
    return _costing(request, 0.02, "two@2")


def three_pennies(request: dict[str, Any]) -> dict[str, Any]:
    """$0.03 an answer."""
    return _costing(request, 0.03, "three@2")
