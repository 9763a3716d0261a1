"""The replay budget gates (replay.budgets) and the error-rate and cost regression tests
(replay.gate): each budget fails a candidate clearly over it and passes one clearly within,
through ``shadow replay`` on a real history; the exact binomial bound against scipy; a
candidate exactly at a budget is failed in at most alpha of seeded simulated runs; the
strictest budget of the rungs is the one judged; a baseline from before per-case costs still
loads."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as sps

from replay.bounds import bernstein_width, beta_cdf, clopper_pearson
from replay.budgets import judge_budgets, task_budgets
from replay.document import load_report
from replay.errors import ReplayError
from replay.model import Case
from replay.report import TaskStats
from shadow.cli import main
from shadow.model import Comparison, Outcome, ShadowDecision, Usage, Verdict, WorkEvent
from shadow.policy import parse_policy
from tests.replay import paired

AGENTS = "tests.replay.budgeted"
COMPARE = """
    compare:
      fields:
        action: {match: exact, critical: true}
        code: {match: exact}
      unlisted: ignore
"""


def policy_text(l1: str = "", l2: str = "", *, start: str = "L0", ceiling: str = "L2") -> str:
    """The paired history's task type with budgets on its L1 and L2 gates."""
    return f"""
task_types:
  claim:{COMPARE}
    autonomy:
      start: {start}
      ceiling: {ceiling}
      gates:
        L1: {{agreement: 0.5, min_samples: 20{", " + l1 if l1 else ""}}}
        L2: {{agreement: 0.6, min_samples: 20{", " + l2 if l2 else ""}}}
"""


class Run:
    """``shadow replay`` in this process, on a JSONL history, with a given policy."""

    def __init__(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], agents: str = AGENTS
    ) -> None:
        self.dir = tmp_path
        self.capsys = capsys
        self.agents = agents  # the module the agents are named in
        self.history, _ = paired.write(tmp_path)
        self.policy = tmp_path / "budgets.yaml"

    def __call__(
        self, agent: str, *extra: str, cache: Sequence[str] = ("--no-cache",)
    ) -> tuple[int, str, dict[str, Any]]:
        out_path = self.dir / f"{agent}-{len(list(self.dir.iterdir()))}.json"
        code = main(
            [
                "replay",
                "--history",
                str(self.history),
                "--agent",
                f"{self.agents}:{agent}",
                "--config",
                str(self.policy),
                "--no-progress",
                *cache,
                "--json",
                str(out_path),
                *extra,
            ]
        )
        out = self.capsys.readouterr()
        assert code in (0, 1), out.err
        return code, out.out, json.loads(out_path.read_text())

    def baseline(self, agent: str = "cheap") -> Path:
        code, _, doc = self(agent)
        assert code == 0
        path = self.dir / "base.json"
        path.write_text(json.dumps(doc))
        return path

    def gate(self, policy: str, agent: str, base: str = "cheap") -> tuple[int, str, Any]:
        """The candidate ``agent`` with ``--fail-if-worse`` against ``base``'s report."""
        self.policy.write_text(policy)
        baseline = self.baseline(base)
        return self(agent, "--baseline", str(baseline), "--fail-if-worse")


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path, capsys)


def budget_failures(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in doc["regression"]["failures"] if f["gate"] == "budget"]


# -- each budget through shadow replay ------------------------------------------------------


def test_a_cost_clearly_over_the_budget_fails_and_one_within_passes(run: Run) -> None:
    policy = policy_text("max_cost_usd_per_decision: 0.01")
    code, out, doc = run.gate(policy, "dear")
    assert code == 1
    [failure] = budget_failures(doc)
    assert failure["budget"] == "cost_usd_per_decision"
    # $0.05 each, variance 0: the lower bound is 0.05 less the range term alone.
    width = 7 * 0.1 * math.log(2 / 0.05) / (3 * 199)
    assert failure["reason"] == (
        f"claim: cost budget: mean $0.0500 per decision over 200 answers, empirical-Bernstein "
        f"lower bound ${0.05 - width:.4f} > $0.0100 (+{((0.05 - width) / 0.01 - 1) * 100:.0f}%)"
        " (level 0.05/1 = 0.05)"
    )
    assert failure["reason"] in " ".join(out.split())  # the terminal lists it (wrapped)
    entry = doc["task_types"]["claim"]["budgets"]
    assert entry["levels"] == {"cost_usd_per_decision": "L1"}
    assert entry["cost_range_usd"] == pytest.approx(0.1)
    assert entry["cost_usd_per_decision"]["exceeded"] is True
    assert entry["latency_ms_p95"] is None
    assert entry["error_rate"] is None
    assert doc["budgets"]["tests"] == 1

    code, _, doc = run.gate(policy, "cheap")
    assert code == 0
    assert budget_failures(doc) == []
    cost = doc["task_types"]["claim"]["budgets"]["cost_usd_per_decision"]
    assert cost["exceeded"] is False
    assert cost["mean"] == pytest.approx(0.001)
    assert "within $0.0100" in cost["statement"]


def test_one_answer_above_the_cost_ceiling_fails_on_its_own(run: Run) -> None:
    # Mean $0.0035, well within $0.01; one answer at $0.5 is above M = 10 x $0.01.
    code, _, doc = run.gate(policy_text("max_cost_usd_per_decision: 0.01"), "spike")
    assert code == 1
    [failure] = budget_failures(doc)
    assert "1 of 200 answers cost more than the ceiling $0.1000" in failure["reason"]
    assert "largest $0.5000, +400%" in failure["reason"]
    cost = doc["task_types"]["claim"]["budgets"]["cost_usd_per_decision"]
    assert cost["above_ceiling"] == 1
    assert cost["lower"] < 0.01  # the bound itself is within: the ceiling fails it


def test_an_error_rate_clearly_over_the_budget_fails_and_one_within_passes(run: Run) -> None:
    code, _, doc = run.gate(policy_text("max_error_rate: 0.01"), "failing")
    assert code == 1
    [failure] = budget_failures(doc)
    low, _ = clopper_pearson(10, 200, 0.05)
    assert failure["budget"] == "error_rate"
    assert failure["reason"] == (
        f"claim: error budget: 10 of 200 answers failed (rate 0.0500), exact lower bound "
        f"{low:.4f} > 0.01 (+{(low / 0.01 - 1) * 100:.0f}%) (level 0.05/1 = 0.05)"
    )

    code, _, doc = run.gate(policy_text("max_error_rate: 0.2"), "failing")
    # Within the budget; the error-rate regression vs the baseline still fails it (below).
    assert budget_failures(doc) == []
    assert doc["task_types"]["claim"]["budgets"]["error_rate"]["exceeded"] is False


def test_a_p95_latency_clearly_over_the_budget_fails_and_one_within_passes(run: Run) -> None:
    # Every answer takes at least 20 ms (the agent sleeps): all 200 are over 1 ms.
    code, _, doc = run.gate(policy_text(l2="max_latency_ms_p95: 1"), "slow", base="slow")
    assert code == 1
    [failure] = budget_failures(doc)
    assert failure["budget"] == "latency_ms_p95"
    assert "latency budget: 200 of 200 answers over 1 ms" in failure["reason"]
    assert "of the share over > 0.05" in failure["reason"]
    lat = doc["task_types"]["claim"]["budgets"]["latency_ms_p95"]
    assert lat["over"] == 200
    assert lat["p95"] >= 20
    assert doc["task_types"]["claim"]["budgets"]["levels"] == {"latency_ms_p95": "L2"}

    code, _, doc = run.gate(policy_text(l2="max_latency_ms_p95: 600000"), "slow", base="slow")
    assert code == 0
    assert doc["task_types"]["claim"]["budgets"]["latency_ms_p95"]["over"] == 0


def test_budgets_are_judged_without_a_baseline_and_share_alpha(run: Run) -> None:
    run.policy.write_text(
        policy_text(
            "max_cost_usd_per_decision: 0.01, max_error_rate: 0.5, max_latency_ms_p95: 1000000"
        )
    )
    code, _, doc = run("dear")
    assert code == 0  # no --fail-if-worse: reported, not an exit code
    assert doc["regression"] is None
    block = doc["budgets"]
    assert block["tests"] == 3
    assert block["level"] == pytest.approx(0.05 / 3)
    assert [f["budget"] for f in block["failures"]] == ["cost_usd_per_decision"]
    assert "(level 0.05/3 = 0.01667)" in block["failures"][0]["reason"]


def test_no_budget_stated_means_no_budget_block(run: Run) -> None:
    run.policy.write_text(policy_text())
    _, _, doc = run("dear")
    assert doc["task_types"]["claim"]["budgets"] is None
    assert doc["budgets"] == {
        "test": doc["budgets"]["test"],
        "alpha": 0.05,
        "tests": 0,
        "level": None,
        "failures": [],
    }


# -- which budget ---------------------------------------------------------------------------


def test_the_strictest_budget_of_the_rungs_it_can_climb_is_judged() -> None:
    def budgets(**kw: str) -> Any:
        task = parse_policy(
            policy_text("max_cost_usd_per_decision: 0.05", "max_cost_usd_per_decision: 0.01", **kw)
        ).task_types["claim"]
        return task_budgets(task)

    both = budgets()
    assert both.values == {"cost_usd_per_decision": 0.01}
    assert both.levels == {"cost_usd_per_decision": "L2"}
    # M: 10 x the largest cost budget of the gates (the live bound's range).
    assert both.cost_range == pytest.approx(0.5)
    assert budgets(ceiling="L1").values == {"cost_usd_per_decision": 0.05}
    assert budgets(start="L1").levels == {"cost_usd_per_decision": "L2"}
    assert task_budgets(parse_policy(policy_text()).task_types["claim"]) is None


# -- the regression tests vs the baseline ---------------------------------------------------


def test_more_agent_errors_fail_the_error_rate_regression_at_equal_agreement(run: Run) -> None:
    code, _, doc = run.gate(policy_text(), "failing")
    assert code == 1
    entry = doc["task_types"]["claim"]["baseline"]
    assert entry["significantly_worse"] is False  # failed where the baseline was wrong
    err = entry["error_rate"]
    assert (err["test"], err["worse"], err["better"]) == ("paired", 10, 0)
    assert err["p_worse"] == 1 / 2048
    [failure] = doc["regression"]["failures"]
    assert failure["gate"] == "error_rate"
    assert failure["reason"] == (
        "claim: error rate 0.0500 vs 0.0000 (+5.00 pp): significantly worse (paired on 200 "
        "cases: 10 agent errors only in the candidate, 0 only in the baseline, one-sided "
        "mid-p = 0.0004883, level 0.05/1 = 0.05)"
    )


def big_history(directory: Path, n: int) -> Path:
    path = directory / "big.jsonl"
    lines = []
    for i in range(n):
        event_id = f"big-{i:05d}"
        event = {"kind": "event", "event_id": event_id, "task_type": "claim", "payload": {"i": i}}
        outcome = {"kind": "outcome", "event_id": event_id, "decision": paired.human(i)}
        lines += [json.dumps(event), json.dumps(outcome)]
    path.write_text("\n".join(lines) + "\n")
    return path


def renamed(report: Path) -> Path:
    """The report as if it had scored other cases: nothing to pair with."""
    doc = json.loads(report.read_text())
    for entry in doc["task_types"].values():
        entry["case_costs"] = {f"other-{k}": v for k, v in entry["case_costs"].items()}
        del entry["cases"], entry["case_segments"]
    out = report.with_name("renamed-" + report.name)
    out.write_text(json.dumps(doc))
    return out


def test_a_cost_increase_fails_the_regression_paired_where_unpaired_it_is_not_shown(
    run: Run,
) -> None:
    run.history = big_history(run.dir, 2000)
    # Budget $0.1 (M = $1): neither $0.01, $0.02 nor $0.03 is over it.
    code, _, doc = run.gate(policy_text("max_cost_usd_per_decision: 0.1"), "two_pennies", "penny")
    assert code == 1
    cost = doc["task_types"]["claim"]["baseline"]["cost"]
    assert cost["test"] == "paired"
    assert cost["significantly_worse"] is True
    width = bernstein_width(2000, 0.0, 2.0, 0.05)
    assert cost["lower"] == pytest.approx(0.01 - width, abs=1e-6)
    [failure] = doc["regression"]["failures"]
    assert failure["gate"] == "cost"
    assert (
        "mean cost $0.0200 vs $0.0100 per answer (+100%): significantly higher"
        in (failure["reason"])
    )

    unpaired = renamed(run.dir / "base.json")
    code, _, doc = run("two_pennies", "--baseline", str(unpaired), "--fail-if-worse")
    cost = doc["task_types"]["claim"]["baseline"]["cost"]
    assert (code, cost["test"], cost["significantly_worse"]) == (0, "unpaired", False)
    code, _, doc = run("three_pennies", "--baseline", str(unpaired), "--fail-if-worse")
    assert code == 1
    assert doc["task_types"]["claim"]["baseline"]["cost"]["significantly_worse"] is True


def test_no_cost_range_no_cost_regression(run: Run) -> None:
    code, _, doc = run.gate(policy_text(), "dear")
    assert code == 0
    cost = doc["task_types"]["claim"]["baseline"]["cost"]
    assert cost["test"] is None
    assert cost["statement"].startswith("not compared: no cost range")


def test_a_baseline_from_before_per_case_costs_still_loads(run: Run) -> None:
    run.policy.write_text(policy_text("max_cost_usd_per_decision: 0.01"))
    base = run.baseline()
    doc = json.loads(base.read_text())
    for entry in doc["task_types"].values():
        del entry["case_costs"], entry["budgets"]
    del doc["budgets"]
    old = run.dir / "old.json"
    old.write_text(json.dumps(doc))
    code, _, out = run("dear", "--baseline", str(old), "--fail-if-worse")
    assert code == 1  # the budget still fails it
    cost = out["task_types"]["claim"]["baseline"]["cost"]
    assert cost["statement"] == "not compared: no per-case costs on one side"

    doc["task_types"]["claim"]["case_costs"] = {"pc-000": -1}
    old.write_text(json.dumps(doc))
    with pytest.raises(ReplayError, match=r"task_types\.claim\.case_costs\.pc-000: expected"):
        load_report(old)


# -- the bounds -----------------------------------------------------------------------------

GRID = [(0, 10), (1, 10), (5, 10), (10, 10), (3, 200), (30, 1000), (500, 1000), (12, 10**6)]


@pytest.mark.parametrize(("k", "n"), GRID)
@pytest.mark.parametrize("delta", [0.05, 0.01, 0.05 / 6, 1e-4])
def test_clopper_pearson_matches_scipy(k: int, n: int, delta: float) -> None:
    low, up = clopper_pearson(k, n, delta)
    ref_low = 0.0 if k == 0 else float(sps.beta.ppf(delta, k, n - k + 1))
    ref_up = 1.0 if k == n else float(sps.beta.ppf(1 - delta, k + 1, n - k))
    assert low == pytest.approx(ref_low, rel=1e-9, abs=1e-15)
    assert up == pytest.approx(ref_up, rel=1e-9, abs=1e-15)
    # The lower bound is where the exact binomial test of p <= bound just rejects.
    if k > 0:
        assert float(sps.binom.sf(k - 1, n, low)) == pytest.approx(delta, rel=1e-6)


def test_beta_cdf_matches_scipy() -> None:
    for x, a, b in [(0.3, 2.0, 5.0), (0.9, 0.5, 0.5), (0.01, 50.0, 1000.0), (0.5, 1e5, 1e5)]:
        assert beta_cdf(x, a, b) == pytest.approx(float(sps.beta.cdf(x, a, b)), rel=1e-9)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(11, 10, 0.05)
    with pytest.raises(ValueError, match="delta"):
        clopper_pearson(1, 10, 0.0)
    with pytest.raises(ValueError, match="delta"):
        bernstein_width(10, 0.1, 1.0, 1.5)
    assert bernstein_width(1, 0.0, 1.0, 0.05) == math.inf


# -- at the budget: failed in at most alpha of seeded simulated runs ------------------------


def stats_of(policy: str, answers: list[tuple[float, float | None, bool]]) -> TaskStats:
    """A real tally of ``(cost, latency_ms, failed)`` answers, each scored like a replay."""
    task = parse_policy(policy).task_types["claim"]
    stats = TaskStats("claim", task)
    for i, (cost, latency, failed) in enumerate(answers):
        event_id = f"s-{i}"
        case = Case(WorkEvent(event_id, "claim", {}), Outcome(event_id, {"action": "deny"}))
        usage = Usage(cost_usd=cost)
        if failed:
            d = ShadowDecision(event_id, "v", None, usage=usage, latency_ms=latency, error="x")
            verdict = Verdict.AGENT_ERROR
        else:
            d = ShadowDecision(event_id, "v", {"action": "deny"}, usage=usage, latency_ms=latency)
            verdict = Verdict.AGREE
        stats.add(case, {}, d, Comparison(event_id, "claim", "v", verdict))
    return stats


def failed_share(policy: str, draw: Any, runs: int, n: int) -> float:
    rng = random.Random(20261207)
    failed = 0
    for _ in range(runs):
        stats = stats_of(policy, [draw(rng) for _ in range(n)])
        entries: dict[str, dict[str, Any]] = {"claim": {}}
        failed += bool(judge_budgets({"claim": stats}, entries, alpha=0.05)["failures"])
    return failed / runs


RUNS, N = 400, 200


def exact_failure(p: float, limit: float) -> float:
    """The chance the exact binomial rule fails ``N`` answers whose true rate is ``p``:
    ``P(X >= k)``, ``k`` the smallest count whose lower bound is above ``limit``."""
    k = next(k for k in range(N + 1) if clopper_pearson(k, N, 0.05)[0] > limit)
    return float(sps.binom.sf(k - 1, N, p))


def consistent(share: float, p: float) -> bool:
    """``share`` of ``RUNS`` simulated runs is within 3 standard errors of ``p``."""
    return abs(share - p) <= 3 * math.sqrt(p * (1 - p) / RUNS)


def test_an_error_rate_exactly_at_the_budget_fails_at_most_alpha_of_runs() -> None:
    share = failed_share(
        policy_text("max_error_rate: 0.1"), lambda r: (0.0, 1.0, r.random() < 0.1), RUNS, N
    )
    # The guarantee, exactly; the simulation through the gate agrees with it.
    exact = exact_failure(0.1, 0.1)
    assert exact <= 0.05
    assert consistent(share, exact), (share, exact)


def test_a_p95_exactly_at_the_budget_fails_at_most_alpha_of_runs() -> None:
    # Log-normal latencies (mu 5, sigma 1) whose 95th percentile is the budget exactly: the
    # share over it is 0.05, whatever the distribution.
    p95 = math.exp(5.0 + 1.0 * float(sps.norm.ppf(0.95)))
    share = failed_share(
        policy_text(f"max_latency_ms_p95: {p95!r}"),
        lambda r: (0.0, r.lognormvariate(5.0, 1.0), False),
        RUNS,
        N,
    )
    exact = exact_failure(0.05, 0.05)
    assert exact <= 0.05
    assert consistent(share, exact), (share, exact)


def test_a_mean_cost_exactly_at_the_budget_fails_at_most_alpha_of_runs() -> None:
    # Skewed costs in [0, M], M = 10 x the budget: M x Beta(0.5, 4.5) has mean M / 10.
    budget = 0.01
    share = failed_share(
        policy_text(f"max_cost_usd_per_decision: {budget}"),
        lambda r: (10 * budget * r.betavariate(0.5, 4.5), 1.0, False),
        RUNS,
        N,
    )
    assert share <= 0.05
