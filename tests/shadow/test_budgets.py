"""Budgets as guardrails (shadow.budgets, and its use in shadow.promotion, the ladder, the
agreement document and the metrics): a promotion needs each budget of the target gate met
(an upper confidence bound within it), a blocked promotion names the budget and by how much,
a budget clearly exceeded at the current level demotes or only alerts, costs are priced from
the policy's price table when the agent reports tokens only, and an unknown cost is never 0.
Through the real store, app and ladder."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shadow import promotion
from shadow.budgets import BudgetEvidence, cost_bounds, judge, price, projected_daily_cost
from shadow.errors import PolicyError, ValidationError
from shadow.model import Level, ShadowDecision, Usage, WorkEvent
from shadow.policy import Price, TaskPolicy, parse_policy
from shadow.promotion import LadderState, Move
from shadow.stats import lower_bound, upper_bound
from shadow.store import Store
from tests.conftest import FakeClock
from tests.shadow.conftest import AgentServerFactory, Reply, Sidecar, SidecarFactory, metric
from tests.shadow.test_store import TASK, dec, sql

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def task(gates: str, extra: str = "", budgets: str = "demote") -> TaskPolicy:
    text = f"""
prices:
  small: {{input_usd_per_mtok: 1.0, output_usd_per_mtok: 4.0}}
task_types:
  refund:
{extra}
    autonomy:
      ceiling: L2
      mode: auto
      budgets: {budgets}
      gates:
{gates}
"""
    return parse_policy(text).task_types["refund"]


GATES = """\
        L1: {agreement: 0.5, min_samples: 10, max_cost_usd_per_decision: 0.02}
        L2: {agreement: 0.5, min_samples: 10, max_cost_usd_per_decision: 0.01,
             max_latency_ms_p95: 2000, max_error_rate: 0.05}
"""


def evidence_at(n: int, mean_cost: float, **kw: Any) -> BudgetEvidence:
    return BudgetEvidence(
        n=n, cost_n=n, cost_sum=mean_cost * n, cost_clipped=mean_cost * n, cost_max=mean_cost, **kw
    )


def decide(level: Level, t: TaskPolicy, budgets: BudgetEvidence, n: int = 500) -> Any:
    from shadow.model import Evidence

    state = LadderState("refund", level, "v1")
    ev = {"v1": Evidence("refund", "v1", n, n, 0, 0)}
    return promotion.decide(state, ev, "v1", t, frozen=False, now=NOW, budgets=budgets)


# -- the constructions -------------------------------------------------------------------------


def test_the_cost_bound_is_the_stated_normal_mixture_at_each_budgets_share() -> None:
    total, n, ceiling, a = 3.0, 400, 0.1, 0.05 / 3
    low, up = cost_bounds(total, n, ceiling, a)
    var = (ceiling / 2) ** 2
    v, rho = n * var, 100 * var
    radius = math.sqrt(2 * (v + rho) * math.log(math.sqrt((v + rho) / rho) / a)) / n
    assert up == pytest.approx(total / n + radius)
    assert low == pytest.approx(max(total / n - radius, 0.0))
    assert cost_bounds(0.0, 0, ceiling, a) == (0.0, ceiling)
    # Each budget of a gate stating three is judged at alpha / 3.
    t = task(GATES)
    gate = t.autonomy.gates[Level.L2]
    ev = evidence_at(400, 0.0075, errors=4, over={2000.0: 5})
    judged = judge(gate, t, ev)
    share = 0.05 / 3
    err = judged.get("error_rate")
    assert err is not None
    assert err.upper == upper_bound(4, 400, share)
    lat = judged.get("latency_ms_p95")
    assert lat is not None
    assert lat.upper == upper_bound(5, 400, share)
    cost = judged.get("cost_usd_per_decision")
    assert cost is not None
    assert cost.upper == pytest.approx(cost_bounds(3.0, 400, 0.2, share)[1])  # M = 10 x 0.02


def test_a_blocked_promotion_names_its_budget_and_by_how_much() -> None:
    t = task(GATES)
    # Agreement is perfect; the L1 cost budget of $0.02 is what holds the promotion.
    step = decide(Level.L0, t, evidence_at(200, 0.03))
    assert step.move is Move.STAY
    assert "gate L1 not met: cost budget: upper bound $" in step.reason
    assert "> $0.0200 per decision (+" in step.reason
    up = cost_bounds(0.03 * 200, 200, 0.2, 0.05)[1]
    assert f"${up:.4f}" in step.reason
    assert f"(+{(up / 0.02 - 1) * 100:.0f}%)" in step.reason
    # Comfortably within: promoted, and the reason says the gate was met.
    step = decide(Level.L0, t, evidence_at(3000, 0.002))
    assert step.move is Move.PROMOTE
    # At L1 the L2 gate's three budgets each name what is missing.
    ev = evidence_at(3000, 0.002, errors=600, over={2000.0: 1000}, p95=4100.0)
    step = decide(Level.L1, t, ev)
    assert step.move is Move.STAY
    assert "latency budget: upper bound" in step.reason
    assert "of the share over 2000 ms > 0.05" in step.reason
    assert "observed p95 4100 ms" in step.reason
    assert "error budget: upper bound" in step.reason
    assert "cost budget" not in step.reason  # met: 0.002 with n 3000 at M 0.2


def test_the_latency_and_error_bounds_are_the_proportion_bounds() -> None:
    t = task(GATES)
    gate = t.autonomy.gates[Level.L2]
    share = 0.05 / 3
    for over in range(0, 40, 3):
        ev = evidence_at(400, 0.001, over={2000.0: over})
        lat = judge(gate, t, ev).get("latency_ms_p95")
        assert lat is not None
        assert lat.met is (upper_bound(over, 400, share) <= 0.05), over
        assert lat.exceeded is (lower_bound(over, 400, share) > 0.05), over
    # A latency budget the store did not count: every decision counts as over (fail closed).
    lat = judge(gate, t, evidence_at(400, 0.001)).get("latency_ms_p95")
    assert lat is not None
    assert not lat.met
    assert lat.fields["over"] == 400


def test_an_unknown_cost_or_one_above_the_ceiling_never_meets_the_budget() -> None:
    t = task(GATES, "    cost_ceiling_usd: 0.05")
    gate = t.autonomy.gates[Level.L1]
    unknown = BudgetEvidence(n=1000, cost_n=997, cost_sum=0.0, cost_clipped=0.0, cost_max=0.0)
    result = judge(gate, t, unknown).get("cost_usd_per_decision")
    assert result is not None
    assert not result.met
    assert "cost unknown for 3 of 1000 decisions" in result.missing
    assert "it cannot be met" in result.missing
    spike = BudgetEvidence(n=1000, cost_n=1000, cost_sum=1.0, cost_clipped=0.999, cost_max=1.0)
    result = judge(gate, t, spike).get("cost_usd_per_decision")
    assert result is not None
    assert not result.met
    assert "a decision cost $1.0000, above the cost ceiling $0.0500" in result.missing
    step = decide(Level.L0, t, spike)
    assert step.move is Move.STAY
    assert "above the cost ceiling" in step.reason


def test_a_clearly_exceeded_budget_demotes_or_only_alerts() -> None:
    t = task(GATES)
    # At L2 the error rate is far above 0.05, the cost fine for L1 and L2.
    bad = evidence_at(2000, 0.001, errors=400, over={2000.0: 0})
    step = decide(Level.L2, t, bad)
    assert step.move is Move.DEMOTE
    assert step.after.level == Level.L1  # L1 states no error budget
    assert "budget of the L2 gate clearly exceeded: error budget: lower bound" in step.reason
    assert "> 0.05 (+" in step.reason
    # Costs far above both gates' budgets: down to L0.
    costly = evidence_at(2000, 0.05, errors=0, over={2000.0: 0})
    step = decide(Level.L2, t, costly)
    assert step.move is Move.DEMOTE
    assert step.after.level == Level.L0
    assert "cost budget: lower bound $" in step.reason
    # budgets: alert: no move; the exceeded budget is reported (metrics, document).
    quiet = task(GATES, budgets="alert")
    assert decide(Level.L2, quiet, bad).move is not Move.DEMOTE
    current = quiet.autonomy.gates[Level.L2]
    assert [r.name for r in judge(current, quiet, bad).exceeded] == ["error_rate"]
    # Not clearly exceeded (only not yet shown to be met): no demotion.
    thin = evidence_at(20, 0.001, errors=2, over={2000.0: 0})
    assert decide(Level.L2, t, thin).move is not Move.DEMOTE


def test_a_pending_proposal_and_the_earned_level_need_the_budgets_too() -> None:
    from shadow.model import Evidence

    t = task(GATES)
    ev = {"v1": Evidence("refund", "v1", 500, 500, 0, 0)}
    state = LadderState("refund", Level.L0, "v1")
    assert promotion.earned_level(state, ev, "v1", t, budgets=evidence_at(3000, 0.002)) == (
        Level.L1
    )
    assert promotion.earned_level(state, ev, "v1", t, budgets=evidence_at(3000, 0.05)) == (Level.L0)
    propose = parse_policy(
        "prices: {}\ntask_types:\n  refund:\n    autonomy:\n      ceiling: L2\n"
        "      mode: propose\n      gates:\n" + GATES
    ).task_types["refund"]
    step = promotion.decide(
        state, ev, "v1", propose, frozen=False, now=NOW, budgets=evidence_at(3000, 0.002)
    )
    assert step.move is Move.PROPOSE
    proposed = step.after
    assert proposed.proposal is not None
    stale = promotion.stale_proposal(
        proposed,
        proposed.proposal,
        promotion.snap_for(proposed, ev, "v1", propose),
        "v1",
        propose,
        budgets=evidence_at(3000, 0.05),
    )
    assert stale is not None
    assert "cost budget: upper bound" in stale


# -- pricing and the policy ----------------------------------------------------------------------


def test_tokens_without_a_cost_are_priced_by_the_model_and_never_silently_zero() -> None:
    prices = {"small": Price(1.0, 4.0)}
    reported = Usage(1000, 100, 0.5, "small", "reported")
    assert price(reported, None, prices) is reported
    priced = price(Usage(1_000_000, 250_000, 0.0, "small", "unknown"), None, prices)
    assert (priced.cost_usd, priced.cost_source) == (2.0, "priced")
    # No model in the usage: the task type's model.
    by_task = price(Usage(2_000_000, 0, 0.0, None, "unknown"), "small", prices)
    assert (by_task.cost_usd, by_task.cost_source) == (2.0, "priced")
    # A model with no price, or nothing to price: unknown, never 0 reported.
    assert price(Usage(10, 10, 0.0, "huge", "unknown"), "small", prices).cost_source == "unknown"
    assert price(Usage(0, 0, 0.0, None, "unknown"), "small", prices).cost_source == "unknown"


def test_the_agent_contract_gains_an_optional_usage_model_and_rejects_hostile_usage() -> None:
    def parse(usage: object) -> ShadowDecision:
        body = {"decision": {"a": 1}, "usage": usage}
        return ShadowDecision.from_agent_response("e1", body, default_version="v1")

    d = parse({"input_tokens": 10, "output_tokens": 2, "model": "small"})
    assert (d.usage.model, d.usage.cost_source, d.usage.cost_usd) == ("small", "unknown", 0.0)
    assert d.to_json()["usage"]["model"] == "small"
    assert parse({"cost_usd": 0.01}).usage.cost_source == "reported"
    assert parse({"cost_usd": 0.01}).to_json()["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.01,
    }
    no_usage = ShadowDecision.from_agent_response("e1", {"decision": {}}, default_version="v1")
    assert no_usage.usage.cost_source == "unknown"
    for hostile, says in [
        ({"cost_usd": -1}, "usage.cost_usd"),
        ({"cost_usd": float("nan")}, "usage.cost_usd"),
        ({"cost_usd": 1e300}, "usage.cost_usd"),
        ({"input_tokens": 1e300}, "usage.input_tokens"),
        ({"output_tokens": -5}, "usage.output_tokens"),
        ({"model": "sm\ud800all"}, "usage.model"),
        ({"model": "a\nb"}, "usage.model"),
        ({"model": 7}, "usage.model"),
        ({"model": "m" * 10_000}, "usage.model"),
    ]:
        with pytest.raises(ValidationError, match=says):
            parse(hostile)


@pytest.mark.parametrize(
    ("text", "path", "says"),
    [
        ("prices: {m: {input_usd_per_mtok: -1, output_usd_per_mtok: 1}}", "prices.m", "number"),
        ("prices: {m: {input_usd_per_mtok: 1}}", "prices.m.output_usd_per_mtok", "required"),
        ("prices: {m: {input_usd_per_mtok: 1, output_usd_per_mtok: .nan}}", "prices.m", "number"),
        ("prices: [m]", "prices", "mapping"),
        ("task_types: {t: {model: nope}}", "task_types.t.model", "has no price"),
        ("task_types: {t: {cost_ceiling_usd: 0}}", "task_types.t.cost_ceiling_usd", "(0"),
        ("task_types: {t: {human_cost_usd_per_decision: -2}}", "human_cost_usd", "[0"),
        ("task_types: {t: {autonomy: {budgets: maybe}}}", "autonomy.budgets", "demote or alert"),
        (
            "task_types: {t: {cost_ceiling_usd: 0.01, autonomy: {ceiling: L1, gates: "
            "{L1: {agreement: 0.9, max_cost_usd_per_decision: 0.05}}}}}",
            "task_types.t.cost_ceiling_usd",
            "below L1's max_cost_usd_per_decision",
        ),
        (
            "task_types: {t: {autonomy: {ceiling: L1, gates: {L1: {agreement: 0.9, "
            "max_error_rate: 0}}}}}",
            "max_error_rate",
            "(0",
        ),
        (
            "task_types: {t: {autonomy: {ceiling: L1, gates: {L1: {agreement: 0.9, "
            "max_latency_ms_p95: fast}}}}}",
            "max_latency_ms_p95",
            "number",
        ),
    ],
)
def test_bad_budget_and_price_keys_are_named(text: str, path: str, says: str) -> None:
    if "task_types" not in text:
        text += "\ntask_types: {t: {}}"
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert path in str(info.value), str(info.value)
    assert says in str(info.value), str(info.value)


def test_the_policy_keys_are_kept() -> None:
    t = task(GATES, "    model: small\n    human_cost_usd_per_decision: 0.9")
    assert (t.model, t.human_cost_usd_per_decision, t.cost_ceiling_usd) == ("small", 0.9, None)
    assert t.cost_ceiling() == pytest.approx(0.2)  # 10 x the largest cost budget
    assert t.autonomy.budgets == "demote"
    assert task(GATES, budgets="alert").autonomy.budgets == "alert"


# -- the store -----------------------------------------------------------------------------------


async def test_budget_evidence_aggregates_the_current_versions_decisions(
    store: Store, clock: FakeClock
) -> None:
    t0 = clock()
    events = [WorkEvent(f"e{i}", TASK, {"amount": 1}) for i in range(8)]
    await store.put_events(events[:2], source="k", now=t0 - timedelta(hours=30))
    await store.put_events(events[2:], source="k", now=t0 - timedelta(hours=1))

    def with_usage(i: int, usage: Usage, latency: float | None, error: str | None = None) -> Any:
        d = dec(f"e{i}", latency=latency or 0.0)
        return (
            ShadowDecision(
                d.event_id,
                d.agent_version,
                None if error else d.decision,
                usage=usage,
                latency_ms=latency,
                error=error,
            ),
            TASK,
        )

    rows = [
        with_usage(0, Usage(1, 1, 0.01), 100.0),
        with_usage(1, Usage(1, 1, 0.03), 2500.0),
        with_usage(2, Usage(1, 1, 0.5, cost_source="priced"), 1500.0),  # above a 0.2 ceiling
        with_usage(3, Usage(1, 1, 0.0, "huge", "unknown"), 900.0),  # unknown
        with_usage(4, Usage(), None, error="timeout"),  # no latency: over every budget
        with_usage(5, Usage(1, 1, 0.02), 3000.0),
    ]
    await store.put_decisions(rows, now=t0)
    other = dec("e6", version="old@1")
    await store.put_decisions([(other, TASK)], now=t0)
    found = await store.budget_evidence(
        {TASK: (dec().agent_version, 0.2, [1000.0, 2000.0]), "nothing": (None, None, [])},
        now=t0,
    )
    ev = found[TASK]
    assert (ev.n, ev.errors, ev.cost_n) == (6, 1, 5)
    assert ev.cost_unknown == 1
    assert ev.cost_sum == pytest.approx(0.01 + 0.03 + 0.5 + 0.0 + 0.02)
    assert ev.cost_clipped == pytest.approx(0.01 + 0.03 + 0.2 + 0.0 + 0.02)
    assert ev.cost_max == pytest.approx(0.5)
    assert ev.over == {1000.0: 4, 2000.0: 3}  # 2500, 1500, None, 3000 / 2500, None, 3000
    assert ev.volume_per_day == 6  # two events arrived 30 h ago
    assert found["nothing"] == BudgetEvidence()


def test_projected_daily_cost_is_the_volume_times_each_cost() -> None:
    t = task(GATES, "    human_cost_usd_per_decision: 0.75")
    ev = BudgetEvidence(n=4, cost_n=4, cost_sum=0.1, volume_per_day=1200)
    assert projected_daily_cost(t, ev) == {
        "volume_per_day": 1200,
        "agent_usd": pytest.approx(30.0),
        "human_usd": 900.0,
    }
    bare = task(GATES)
    assert projected_daily_cost(bare, BudgetEvidence(n=3, volume_per_day=7)) == {
        "volume_per_day": 7,
        "agent_usd": None,
        "human_usd": None,
    }


# -- through the real app ------------------------------------------------------------------------

POLICY = """
prices:
  small: {input_usd_per_mtok: 2.0, output_usd_per_mtok: 8.0}
task_types:
  refund:
    model: small
    human_cost_usd_per_decision: 0.5
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
    autonomy:
      ceiling: L2
      mode: %s
      budgets: %s
      audit_rate: 1.0
      drift: {threshold: 100}
      gates:
        L1: {agreement: 0.5, min_samples: 20, max_cost_usd_per_decision: 0.01}
        L2: {agreement: 0.5, min_samples: 20, max_cost_usd_per_decision: 0.01,
             max_error_rate: 0.2, max_latency_ms_p95: 60000}
"""


def echo(request: dict[str, Any]) -> Reply:
    """The fake agent: agrees, reports the usage the event's payload asks for, or fails."""
    payload = request["payload"]
    if payload.get("fail"):
        return Reply(500, {"error": "boom"})
    body: dict[str, Any] = {"decision": {"action": "approve"}, "agent_version": "v1"}
    if "usage" in payload:
        body["usage"] = payload["usage"]
    return Reply(200, body)


async def start(
    sidecar: SidecarFactory,
    agent_server: AgentServerFactory,
    mode: str = "auto",
    budgets: str = "demote",
) -> tuple[Sidecar, FakeClock]:
    agent = await agent_server(echo)
    clock = FakeClock()
    sc = await sidecar(
        policy=POLICY % (mode, budgets), agent=agent.url, clock=clock, agent_retries=0
    )
    return sc, clock


async def feed(sc: Sidecar, prefix: str, count: int, **payload: Any) -> None:
    ids = [f"{prefix}-{i}" for i in range(count)]
    events = [{"event_id": e, "task_type": "refund", "payload": payload} for e in ids]
    outcomes = [{"event_id": e, "decision": {"action": "approve"}} for e in ids]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()


async def doc(sc: Sidecar) -> dict[str, Any]:
    res = await sc.get("/v1/agreement")
    assert res.status == 200, res.body
    return dict(res.body["task_types"]["refund"])


async def test_a_costly_agent_is_held_by_its_budget_then_promoted_once_it_is_met(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc, _ = await start(sidecar, agent_server)
    # Priced from tokens by the task type's model: 2,000 in + 1,000 out = $0.012 each.
    await feed(sc, "dear", 40, usage={"input_tokens": 2000, "output_tokens": 1000})
    body = await doc(sc)
    assert body["level"] == "L0"
    gate = body["next_gate"]
    assert gate["level"] == "L1"
    assert (gate["met"], gate["agreement_met"]) == (False, True)
    assert gate["budgets_met"] is False
    assert len(gate["budgets_missing"]) == 1
    assert gate["budgets_missing"][0].startswith("cost budget: upper bound $")
    assert "> $0.0100 per decision (+" in gate["budgets_missing"][0]
    cost = body["budgets"]["cost_usd_per_decision"]
    assert body["budgets"]["gate"] == "L1"
    assert body["budgets"]["mode"] == "demote"
    assert cost["n"] == 40
    assert cost["mean"] == pytest.approx(0.012)
    assert cost["met"] is False
    assert body["budgets"]["error_rate"] is None
    history = await sc.pipeline.store.audit_log(task_type="refund", limit=5)
    assert not [e for _, e in history if e.action == "promote"]
    # A cheap stretch brings the mean (and its bound) under the budget: promoted.
    await feed(sc, "cheap", 2000, usage={"cost_usd": 0.0001})
    body = await doc(sc)
    assert body["level"] in ("L1", "L2")
    assert body["budgets"]["cost_usd_per_decision"]["met"] is True
    samples = await sc.metrics()
    assert (
        metric(samples, "shadow_budget_limit", task_type="refund", budget="cost_usd_per_decision")
        == 0.01
    )


async def test_an_unknown_model_holds_the_promotion_and_says_why(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc, _ = await start(sidecar, agent_server)
    await feed(sc, "odd", 1, usage={"input_tokens": 10, "output_tokens": 10, "model": "mystery"})
    await feed(sc, "cheap", 500, usage={"cost_usd": 0.0001})
    body = await doc(sc)
    assert body["level"] == "L0"
    missing = body["next_gate"]["budgets_missing"]
    assert missing == [
        "cost budget: cost unknown for 1 of 501 decisions (tokens without cost_usd and no "
        "price for their model, or no usage reported); it cannot be met"
    ]
    assert body["budgets"]["cost_usd_per_decision"]["unknown"] == 1
    stored = sql(
        sc.pipeline.store,
        "SELECT cost_source, cost_usd, body->>'$.usage.model' FROM decisions "
        "WHERE event_id IN ('odd-0', 'cheap-0') ORDER BY event_id",
    )
    assert stored == [("reported", 0.0001, None), ("unknown", 0.0, "mystery")]


async def test_a_clear_excess_at_the_current_level_demotes_or_alerts(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shadow.autonomy")
    for mode in ("demote", "alert"):
        caplog.clear()
        sc, _ = await start(sidecar, agent_server, budgets=mode)
        await feed(sc, f"{mode}-ok", 600, usage={"cost_usd": 0.0001})
        body = await doc(sc)
        assert body["level"] == "L2", body["next_gate"]
        # The agent starts failing: far above L2's 0.2 error budget.
        await feed(sc, f"{mode}-bad", 600, fail=True)
        body = await doc(sc)
        samples = await sc.metrics()
        if mode == "demote":
            assert body["level"] == "L1"
            history = await sc.pipeline.store.audit_log(task_type="refund", limit=5)
            demoted = [e for _, e in history if e.to_level == Level.L1]
            assert demoted
            assert "error budget: lower bound" in demoted[0].reason
            # Breaker-open failures have no latency: counted as slow (fail closed).
            assert "latency budget: lower bound" in demoted[0].reason
        else:
            assert body["level"] == "L2"
            assert body["budgets"]["exceeded_at_current"] == ["latency_ms_p95", "error_rate"]
            assert body["budgets"]["error_rate"]["exceeded"] is True
            assert (
                metric(samples, "shadow_budget_exceeded", task_type="refund", budget="error_rate")
                == 1
            )
            # No move, so one log line per budget says it (once, not at every evaluation).
            lines = [r.getMessage() for r in caplog.records if "budget exceeded" in r.getMessage()]
            assert sorted(line.split()[3] for line in lines) == [
                "budget=error_rate",
                "budget=latency_ms_p95",
            ], lines
            assert all(
                r.levelno == logging.WARNING
                for r in caplog.records
                if "budget exc" in r.getMessage()
            )
            assert "mode=alert" in lines[0]
            assert 'reason="error budget: lower bound' in " ".join(lines)


async def test_projected_daily_cost_counts_the_last_24_hours(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc, clock = await start(sidecar, agent_server)
    await feed(sc, "old", 30, usage={"cost_usd": 0.004})
    clock.advance(hours=25)
    await feed(sc, "new", 10, usage={"cost_usd": 0.004})
    body = await doc(sc)
    assert body["projected_daily_cost"] == {
        "volume_per_day": 10,
        "agent_usd": pytest.approx(0.04),
        "human_usd": 5.0,
    }
    samples = await sc.metrics()
    assert metric(
        samples, "shadow_projected_daily_cost_usd", task_type="refund", who="human"
    ) == pytest.approx(5.0)
    assert metric(
        samples, "shadow_projected_daily_cost_usd", task_type="refund", who="agent"
    ) == pytest.approx(0.04)
