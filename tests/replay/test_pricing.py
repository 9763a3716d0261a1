"""Replay prices an answer that reports tokens but no cost with the live sidecar's function
(shadow.budgets.price: the usage's model, else the task type's ``model``, in the policy's
``prices``), so replay and live agree on its cost; the cost budget is judged on that price,
a model with no price leaves the cost unknown (never 0), and a cached answer read back is
priced again, not taken for a reported cost of 0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shadow.budgets import price
from shadow.model import Usage
from shadow.policy import parse_policy
from tests.replay.test_budgets import COMPARE, Run

AGENTS = "tests.replay.priced"
CASES = 200


def policy_text(input_usd: float, output_usd: float, budget: float = 0.01) -> str:
    return f"""
prices:
  small: {{input_usd_per_mtok: {input_usd}, output_usd_per_mtok: {output_usd}}}
task_types:
  claim:{COMPARE}
    model: small
    autonomy:
      ceiling: L1
      gates:
        L1: {{agreement: 0.5, min_samples: 20, max_cost_usd_per_decision: {budget}}}
"""


Replay = Callable[..., dict[str, Any]]


@pytest.fixture
def replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Replay:
    """``shadow replay`` (test_budgets.Run) on the paired history with the policy given per
    call and the cache options (default ``--no-cache``); answers the report."""
    run = Run(tmp_path, capsys, AGENTS)

    def priced(agent: str, policy: str, *cache: str) -> dict[str, Any]:
        run.policy.write_text(policy)
        code, _, doc = run(agent, cache=cache or ("--no-cache",))
        assert code == 0  # no --fail-if-worse: a failure is reported, not an exit code
        return doc

    return priced


def budget_failures(doc: dict[str, Any]) -> list[dict[str, Any]]:
    failures: list[dict[str, Any]] = doc["budgets"]["failures"]
    return failures


def test_tokens_without_a_cost_are_priced_as_live_and_the_budget_judged_on_that(
    replay: Replay,
) -> None:
    # $10 / $50 per million tokens: 1,000 in and 200 out cost $0.02 an answer.
    dear = policy_text(10.0, 50.0)
    live = price(Usage(1000, 200, cost_source="unknown"), "small", parse_policy(dear).prices)
    assert live.cost_source == "priced"
    assert live.cost_usd == pytest.approx(0.02)
    doc = replay("tokens", dear)
    entry = doc["task_types"]["claim"]
    assert entry["usage"] == {
        "input_tokens": 1000 * CASES,
        "output_tokens": 200 * CASES,
        "cost_usd": pytest.approx(live.cost_usd * CASES),
    }
    cost = entry["budgets"]["cost_usd_per_decision"]
    assert cost["unknown"] == 0
    assert cost["n"] == CASES
    assert cost["mean"] == pytest.approx(live.cost_usd)
    assert cost["exceeded"] is True
    [failure] = budget_failures(doc)
    assert failure["budget"] == "cost_usd_per_decision"
    assert "mean $0.0200 per decision over 200 answers" in failure["reason"]

    # $1 / $5: $0.002 an answer, within the $0.01 budget.
    doc = replay("tokens", policy_text(1.0, 5.0))
    assert budget_failures(doc) == []
    cost = doc["task_types"]["claim"]["budgets"]["cost_usd_per_decision"]
    assert cost["mean"] == pytest.approx(0.002)
    assert cost["exceeded"] is False
    assert doc["task_types"]["claim"]["usage"]["cost_usd"] == pytest.approx(0.002 * CASES)


def test_a_model_with_no_price_leaves_the_cost_unknown_never_zero(replay: Replay) -> None:
    # The answer names its own model, which has no price: the task type's model is not used.
    doc = replay("mystery", policy_text(1.0, 5.0))
    entry = doc["task_types"]["claim"]
    assert entry["usage"]["cost_usd"] == 0
    cost = entry["budgets"]["cost_usd_per_decision"]
    assert cost["unknown"] == CASES
    assert cost["n"] == 0
    assert cost["exceeded"] is True
    [failure] = budget_failures(doc)
    assert "cost unknown for 200 of 200 answers" in failure["reason"]


def test_a_cached_answer_with_tokens_only_is_priced_again_when_read_back(
    replay: Replay, tmp_path: Path
) -> None:
    cache = ("--cache", str(tmp_path / "cache.duckdb"))
    first = replay("tokens", policy_text(10.0, 50.0), *cache)
    assert first["run"]["agent_calls"] == CASES
    assert first["task_types"]["claim"]["budgets"]["cost_usd_per_decision"]["mean"] == (
        pytest.approx(0.02)
    )
    # The second run answers every case from the cache, under a new price.
    doc = replay("tokens", policy_text(1.0, 5.0), *cache)
    assert doc["run"]["agent_calls"] == 0
    assert doc["run"]["cache_hits"] == CASES
    cost = doc["task_types"]["claim"]["budgets"]["cost_usd_per_decision"]
    assert cost["unknown"] == 0
    assert cost["mean"] == pytest.approx(0.002)
    assert budget_failures(doc) == []
    # An unknown cost stays unknown through the cache, never a reported 0.
    replay("mystery", policy_text(1.0, 5.0), *cache)
    doc = replay("mystery", policy_text(1.0, 5.0), *cache)
    assert doc["run"]["cache_hits"] == CASES
    assert doc["task_types"]["claim"]["budgets"]["cost_usd_per_decision"]["unknown"] == CASES
    assert len(budget_failures(doc)) == 1
