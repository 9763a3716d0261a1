"""The *Agreement* dashboard (``shadow-agreement``): per task type and agent version —
agreement over time, the anytime-valid bounds against each gate's threshold line, evidence,
autonomy level as a state timeline with promotions and demotions as annotations, critical
misses, top disagreeing fields, proposals waiting for approval, and per segment (variable
``$segment``: the declared segments and ``other``) agreement with its lower bound and whether
a ``per_segment: route`` gate sends the segment to humans; agreement against the noise floor
(the human ceiling with its bounds, the agent's self-consistency); budget burn (each budget's upper
bound over it, with a line at 1), the budgets clearly exceeded, and the projected daily cost
of the agent and of humans."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, dashboard, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashboards.panels import (
    LEVEL_COLORS,
    LEVELS,
    TASK,
    TASK_SEGMENT,
    TASK_VERSION,
    bars,
    change_annotation,
    dashed,
    link,
    query,
    variables,
)

__all__ = ["agreement"]


def agreement() -> Dashboard:
    level_map = model.ValueMap(
        {v: model.ValueMappingResult(text=t, color=LEVEL_COLORS[v]) for v, t in LEVELS.items()}
    )
    return (
        Dashboard("Shadow sidecar / Agreement")
        .uid("shadow-agreement")
        .description("Agreement, evidence and autonomy per task type and agent version.")
        .tags(["shadow-sidecar"])
        .time("now-24h", "now")
        .refresh("1m")
        .timezone(common.TimeZoneUtc)
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(variables(with_version=True, with_segment=True))  # type: ignore[arg-type]
        .annotation(change_annotation("Promotions", "promote|approve|manual_set", "green"))
        .annotation(change_annotation("Demotions", "demote", "red"))
        .link(link("Pipeline health", "shadow-pipeline-health"))
        .with_row(Row("Agreement"))
        .with_panel(
            timeseries.Panel()
            .title("Agreement over time")
            .description("Observed agreement of the evidence (agree / n).")
            .unit("percentunit")
            .min(0)
            .max(1)
            .span(12)
            .height(8)
            .with_target(
                query(
                    f"shadow_agreement_ratio{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}}",
                    "A",
                )
            )
        )
        .with_panel(
            dashed(".* gate L.*")
            .title("Lower and upper bound against each gate")
            .description(
                "Anytime-valid bounds. Promotion needs lower ≥ the next gate; demotion "
                "happens when upper < the gate of the current level. Dashed: gates."
            )
            .unit("percentunit")
            .max(1)
            .span(12)
            .height(8)
            .with_target(
                query(
                    f"shadow_agreement_lower_ratio{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} lower",
                    "A",
                )
            )
            .with_target(
                query(
                    f"shadow_agreement_upper_ratio{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} upper",
                    "B",
                )
            )
            .with_target(
                query(
                    f"shadow_gate_agreement_ratio{{{TASK}}}",
                    "{{task_type}} gate {{level}}",
                    "C",
                )
            )
        )
        .with_panel(
            dashed(".* (lower|upper)$")
            .title("Agreement against the noise floor")
            .description(
                "The agent's agreement with the humans next to the humans' agreement with "
                "each other (human ceiling: blind first outcomes against second opinions, "
                "dashed: its bounds) and the agent's agreement with itself on repeated cases "
                "(self-consistency). An agent near the ceiling is as good as the humans' "
                "own noise lets anyone look; a below_human gate is judged against it."
            )
            .unit("percentunit")
            .max(1)
            .span(24)
            .height(8)
            .with_target(
                query(
                    f"shadow_agreement_ratio{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} agreement",
                    "A",
                )
            )
            .with_target(
                query(
                    f'shadow_human_ceiling{{{TASK}, bound="estimate"}}',
                    "{{task_type}} human ceiling",
                    "B",
                )
            )
            .with_target(
                query(
                    f'shadow_human_ceiling{{{TASK}, bound=~"lower|upper"}}',
                    "{{task_type}} human ceiling {{bound}}",
                    "C",
                )
            )
            .with_target(
                query(
                    f'shadow_self_consistency{{{TASK}, bound="estimate"}}',
                    "{{task_type}} self-consistency",
                    "D",
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Evidence")
            .description("Comparisons counted as evidence (n), agreements and critical misses.")
            .unit("short")
            .span(8)
            .height(8)
            .with_target(
                query(
                    f"shadow_evidence_comparisons{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} n",
                    "A",
                )
            )
            .with_target(
                query(
                    f"shadow_evidence_agreements{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} agree",
                    "B",
                )
            )
        )
        .with_panel(
            statetimeline.Panel()
            .title("Autonomy level")
            .description("Level per task type; promotions and demotions are annotations.")
            .mappings([level_map])
            .span(16)
            .height(8)
            .with_target(query(f"shadow_autonomy_level{{{TASK}}}", "{{task_type}}", "A"))
            .with_target(query("shadow_frozen", "frozen", "B"))
        )
        .with_row(Row("Misses and proposals"))
        .with_panel(
            bars(
                "Critical misses",
                "sum by (task_type, agent_version) (increase(shadow_critical_misses_total"
                f"{{{TASK_VERSION}}}[$__rate_interval]))",
                "{{task_type}} {{agent_version}}",
            ).description("Comparisons with a critical field mismatch, per interval.")
        )
        .with_panel(
            bargauge.Panel()
            .title("Top disagreeing fields")
            .description("Field-level mismatches over the dashboard's time range.")
            .orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.BASIC)
            .unit("short")
            .span(8)
            .height(8)
            .with_target(
                query(
                    "topk(10, sum by (task_type, field) (increase(shadow_field_mismatches_total"
                    f"{{{TASK}}}[$__range])))",
                    "{{task_type}} {{field}}",
                    "A",
                    instant=True,
                )
            )
        )
        .with_panel(
            table.Panel()
            .title("Proposals waiting for approval")
            .description(
                "Promotions proposed (mode: propose) and not yet approved: "
                "`shadow autonomy approve TASK_TYPE`."
            )
            .mappings([level_map])
            .span(8)
            .height(8)
            .with_target(
                query(
                    f"shadow_autonomy_proposal_level{{{TASK}}} > 0",
                    "{{task_type}}",
                    "A",
                    instant=True,
                )
            )
            .with_target(
                query(
                    f"task_type:shadow_gate_agreement:next{{{TASK}}}",
                    "{{task_type}} next gate",
                    "B",
                    instant=True,
                )
            )
        )
        .with_row(Row("Segments"))
        .with_panel(
            dashed(".* lower")
            .title("Agreement per segment")
            .description(
                "The current agent version's agreement per declared segment (and other), "
                "with its anytime-valid lower bound (dashed). A gate with per_segment needs "
                "every declared segment to pass on its own."
            )
            .unit("percentunit")
            .max(1)
            .span(16)
            .height(8)
            .with_target(
                query(
                    f"shadow_segment_agreement_ratio{{{TASK_SEGMENT}}}",
                    "{{task_type}} {{segment}}",
                    "A",
                )
            )
            .with_target(
                query(
                    f"shadow_segment_agreement_lower_ratio{{{TASK_SEGMENT}}}",
                    "{{task_type}} {{segment}} lower",
                    "B",
                )
            )
        )
        .with_panel(
            table.Panel()
            .title("Segments sent to humans")
            .description(
                "1 for a declared segment a per_segment: route gate sends to humans (blind) "
                "while the others keep the level; with each segment's evidence (n)."
            )
            .span(8)
            .height(8)
            .with_target(
                query(
                    f"shadow_segment_routed{{{TASK_SEGMENT}}}",
                    "{{task_type}} {{segment}}",
                    "A",
                    instant=True,
                )
            )
            .with_target(
                query(
                    f"shadow_segment_comparisons{{{TASK_SEGMENT}}}",
                    "{{task_type}} {{segment}} n",
                    "B",
                    instant=True,
                )
            )
        )
        .with_row(Row("Budgets"))
        .with_panel(
            timeseries.Panel()
            .title("Budget burn")
            .description(
                "Per budget the gate judged states (cost_usd_per_decision, latency_ms_p95, "
                "error_rate): its upper confidence bound over the budget. At or above the line "
                "at 1 the budget is not met and holds the promotion."
            )
            .unit("percentunit")
            .min(0)
            .thresholds(
                dashboard.ThresholdsConfig()
                .mode(model.ThresholdsMode.ABSOLUTE)
                .steps(
                    [
                        model.Threshold(value=None, color="green"),
                        model.Threshold(value=1.0, color="red"),
                    ]
                )
            )
            .thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(
                    common.GraphTresholdsStyleMode.LINE
                )
            )
            .span(10)
            .height(8)
            .with_target(
                query(
                    f"shadow_budget_burn_ratio{{{TASK}}}",
                    "{{task_type}} {{budget}}",
                    "A",
                )
            )
        )
        .with_panel(
            table.Panel()
            .title("Budgets exceeded")
            .description(
                "1 while a budget of the current level's gate is clearly exceeded (its lower "
                "bound above it): autonomy.budgets: demote has demoted, alert only alerts "
                "(ShadowBudgetExceeded)."
            )
            .span(6)
            .height(8)
            .with_target(
                query(
                    f"shadow_budget_exceeded{{{TASK}}}",
                    "{{task_type}} {{budget}}",
                    "A",
                    instant=True,
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Projected daily cost: agent vs human")
            .description(
                "The events of the last 24 h times the agent's mean known cost per decision "
                "(agent) and times the policy's human_cost_usd_per_decision (human)."
            )
            .unit("currencyUSD")
            .min(0)
            .span(8)
            .height(8)
            .with_target(
                query(
                    f"shadow_projected_daily_cost_usd{{{TASK}}}",
                    "{{task_type}} {{who}}",
                    "A",
                )
            )
        )
    )
