"""The *Pipeline health* dashboard (``shadow-pipeline-health``): ingest rate by source,
agent latency p50/p95/p99, agent errors, cost per decision and per day, pending joins, dead
letters by reason, Kafka consumer lag; the tool gateway's calls by outcome and class, its
latency p50/p95/p99, pending approvals and the oldest one's age."""

from __future__ import annotations

from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashboards.panels import TASK, bars, link, query, variables

__all__ = ["pipeline_health"]


def pipeline_health() -> Dashboard:
    return (
        Dashboard("Shadow sidecar / Pipeline health")
        .uid("shadow-pipeline-health")
        .description(
            "Ingest, agent calls, cost, joins, dead letters, Kafka lag and the tool gateway."
        )
        .tags(["shadow-sidecar"])
        .time("now-6h", "now")
        .refresh("1m")
        .timezone(common.TimeZoneUtc)
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(variables(with_version=False))  # type: ignore[arg-type]
        .link(link("Agreement", "shadow-agreement"))
        .with_row(Row("Ingest and agent"))
        .with_panel(
            timeseries.Panel()
            .title("Ingest rate by source")
            .unit("reqps")
            .span(12)
            .height(8)
            .with_target(
                query(
                    f"sum by (source) (source_task_type:shadow_events:rate5m{{{TASK}}})",
                    "events {{source}}",
                    "A",
                )
            )
            .with_target(query("source:shadow_outcomes:rate5m", "outcomes {{source}}", "B"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Agent latency p50 / p95 / p99")
            .unit("s")
            .span(12)
            .height(8)
            .with_target(
                query(
                    f"task_type:shadow_agent_latency_seconds:p50_5m{{{TASK}}}",
                    "{{task_type}} p50",
                    "A",
                )
            )
            .with_target(
                query(
                    f"task_type:shadow_agent_latency_seconds:p95_5m{{{TASK}}}",
                    "{{task_type}} p95",
                    "B",
                )
            )
            .with_target(
                query(
                    f"task_type:shadow_agent_latency_seconds:p99_5m{{{TASK}}}",
                    "{{task_type}} p99",
                    "C",
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Agent errors")
            .description("Failed agent calls per second, and their share of all calls.")
            .unit("reqps")
            .span(12)
            .height(8)
            .with_target(
                query(
                    'sum by (task_type) (rate(shadow_agent_calls_total{result="error", '
                    f"{TASK}}}[$__rate_interval]))",
                    "{{task_type}} errors/s",
                    "A",
                )
            )
            .with_target(
                query(
                    f"task_type:shadow_agent_errors:ratio_rate5m{{{TASK}}}",
                    "{{task_type}} error ratio",
                    "B",
                )
            )
            .with_target(query("shadow_agent_breaker_open", "breaker open", "C"))
        )
        .with_panel(
            stat.Panel()
            .title("Cost per decision")
            .unit("currencyUSD")
            .decimals(4)
            .span(6)
            .height(8)
            .with_target(
                query(
                    f"task_type:shadow_agent_cost_usd_per_decision:ratio_rate5m{{{TASK}}}",
                    "{{task_type}}",
                    "A",
                )
            )
        )
        .with_panel(
            stat.Panel()
            .title("Cost per day")
            .unit("currencyUSD")
            .decimals(2)
            .span(6)
            .height(8)
            .with_target(
                query(
                    f"task_type:shadow_agent_cost_usd:increase1d{{{TASK}}}",
                    "{{task_type}}",
                    "A",
                )
            )
        )
        .with_row(Row("Joins, dead letters, Kafka"))
        .with_panel(
            timeseries.Panel()
            .title("Pending joins")
            .unit("short")
            .span(8)
            .height(8)
            .with_target(query("shadow_pending_joins", "{{waiting_for}}", "A"))
        )
        .with_panel(
            bars(
                "Dead letters by reason",
                "sum by (source, reason) (increase(shadow_dead_letters_total[$__rate_interval]))",
                "{{source}} {{reason}}",
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Kafka lag and uncommitted")
            .description(
                "Unread: messages behind the end of each topic partition. Uncommitted: read "
                "and stored but not committed yet (held back by open joins, or waiting for "
                "the next commit), what a restart or rebalance reads again."
            )
            .unit("short")
            .span(8)
            .height(8)
            .with_target(
                query(
                    "sum by (topic, partition) (shadow_kafka_consumer_lag_messages)",
                    "{{topic}}/{{partition}} unread",
                    "A",
                )
            )
            .with_target(
                query(
                    "sum by (topic, partition) (shadow_kafka_uncommitted_messages)",
                    "{{topic}}/{{partition}} uncommitted",
                    "B",
                )
            )
        )
        .with_panel(
            bars(
                "Rows deleted by retention",
                "sum by (table) (increase(shadow_purged_rows_total[$__rate_interval]))",
                "{{table}}",
            ).description(
                "Closed cases (events, outcomes, decisions) and dead letters older than "
                "SHADOW_RETENTION, deleted by the expiry runs; comparisons are kept. Flat at "
                "zero while retention is off (docs/operating.md#retention)."
            )
        )
        .with_row(Row("Tool gateway"))
        .with_panel(
            timeseries.Panel()
            .title("Tool calls by outcome and class")
            .description(
                "Tool calls through the gateway per second: reads forwarded; writes captured "
                "(shadow), refused (L0/L1, frozen, off the allowlist), held for approval (L2, "
                "L3 audit items) and what became of them, forwarded (L3/L4) (docs/gateway.md)."
            )
            .unit("reqps")
            .span(12)
            .height(8)
            .with_target(
                query(
                    "sum by (task_type, class, outcome) "
                    f"(task_type_class_outcome:shadow_tool_calls:rate5m{{{TASK}}})",
                    "{{task_type}} {{class}} {{outcome}}",
                    "A",
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Gateway latency p50 / p95 / p99")
            .description(
                "Time to answer the calls the gateway forwarded (the upstream's time included) "
                "or captured; held calls and decided approvals are left out (that is a "
                "person's time)."
            )
            .unit("s")
            .span(12)
            .height(8)
            .with_target(
                query(
                    f"task_type:shadow_tool_call_seconds:p50_5m{{{TASK}}}",
                    "{{task_type}} p50",
                    "A",
                )
            )
            .with_target(
                query(
                    f"task_type:shadow_tool_call_seconds:p95_5m{{{TASK}}}",
                    "{{task_type}} p95",
                    "B",
                )
            )
            .with_target(
                query(
                    f"task_type:shadow_tool_call_seconds:p99_5m{{{TASK}}}",
                    "{{task_type}} p99",
                    "C",
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Approvals pending")
            .description("Tool writes held for a person's approval now (`shadow approvals list`).")
            .unit("short")
            .span(12)
            .height(8)
            .with_target(
                query(
                    f"sum by (task_type) (shadow_tool_approvals_pending{{{TASK}}})",
                    "{{task_type}}",
                    "A",
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Oldest approval waiting")
            .description(
                "Age of the oldest held write per task type (0 when none waits). The "
                "ShadowToolApprovalsWaiting alert fires past 15 minutes; an approval nobody "
                "decides expires at gateway_approval_timeout."
            )
            .unit("s")
            .span(12)
            .height(8)
            .with_target(
                query(
                    f"max by (task_type) (shadow_tool_approval_oldest_seconds{{{TASK}}})",
                    "{{task_type}}",
                    "A",
                )
            )
        )
    )
