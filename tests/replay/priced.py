"""In-process agents for the replay pricing tests (tests/replay/test_pricing.py), on the paired
history of :mod:`tests.replay.paired` (not tests). Each answers like ``paired.baseline`` and
reports tokens but no ``cost_usd``, so its cost is whatever the policy's price table makes it."""

from __future__ import annotations

from typing import Any

from tests.replay.paired import baseline


def tokens(request: dict[str, Any]) -> dict[str, Any]:
    """1,000 input and 200 output tokens an answer, no model named: the task type's."""
    usage = {"input_tokens": 1000, "output_tokens": 200}
    return {**baseline(request), "agent_version": "tokens@1", "usage": usage}


def mystery(request: dict[str, Any]) -> dict[str, Any]:
    """The same tokens from a model the policy has no price for."""
    usage = {"input_tokens": 1000, "output_tokens": 200, "model": "mystery"}
    return {**baseline(request), "agent_version": "mystery@1", "usage": usage}
