"""Generate the sidecar's Grafana dashboards (``python -m dashboards.generate``).

Contract: :func:`render_all` returns the exact bytes of every committed output file, keyed by
its path relative to the repository root; :func:`write_all` writes them (``make
dashboards``); ``--check`` exits 1 when a committed file differs, and
``tests/dashboards/test_generate.py`` fails the suite then. Outputs:

- ``dashboards/grafana/shadow-agreement.json``: per task type — agreement over time, bounds
  against each gate's threshold line, evidence count, autonomy level as a state timeline
  with promotions and demotions as annotations, critical misses, top disagreeing fields,
  proposals waiting for approval. Variables ``$task_type`` and ``$agent_version``.
- ``dashboards/grafana/shadow-pipeline-health.json``: ingest rate by source, agent latency
  p50/p95/p99, agent errors, cost per decision and per day, pending joins, dead letters by
  reason, Kafka consumer lag.
- Copies of both and of ``dashboards/prometheus/shadow-rules.yaml`` inside the Helm chart
  (``helm/shadow-sidecar/files/``), because ``.Files.Get`` cannot reach outside a chart.

Queries use only metric names from :mod:`shadow.metrics` and recording rules from
``shadow-rules.yaml``; every one is evaluated against a real Prometheus scraping a real
sidecar by ``tests/dashboards/test_prometheus_queries.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

__all__ = ["DASHBOARDS", "ROOT", "build_all", "main", "render_all", "write_all"]

ROOT = Path(__file__).resolve().parent.parent
RULES = Path("dashboards/prometheus/shadow-rules.yaml")
CHART_FILES = Path("helm/shadow-sidecar/files")

DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TASK = 'task_type=~"$task_type"'
TASK_VERSION = 'task_type=~"$task_type", agent_version=~"$agent_version"'
LEVELS = {str(i): f"L{i}" for i in range(5)}
LEVEL_COLORS = {"0": "text", "1": "blue", "2": "purple", "3": "orange", "4": "green"}


def _q(expr: str, legend: str, ref: str, *, instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)
    return q.instant() if instant else q.range()


def _variables(*, with_version: bool) -> list[DatasourceVariable | QueryVariable]:
    out: list[DatasourceVariable | QueryVariable] = [
        DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    ]
    out.append(
        QueryVariable("task_type")
        .label("Task type")
        .datasource(DS)
        .query("label_values(shadow_autonomy_level, task_type)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if with_version:
        out.append(
            QueryVariable("agent_version")
            .label("Agent version")
            .datasource(DS)
            .query(f"label_values(shadow_evidence_comparisons{{{TASK}}}, agent_version)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )
    return out


def _dashed(regexp: str) -> timeseries.Panel:
    """A time series panel whose series matching ``regexp`` are drawn as dashed lines."""
    return timeseries.Panel().override_by_regexp(
        regexp,
        [
            model.DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
            model.DynamicConfigValue("custom.fillOpacity", 0),
        ],
    )


def _change_annotation(name: str, moves: str, color: str) -> AnnotationQuery:
    expr = (
        f'sum by (task_type, move) (increase(shadow_autonomy_changes_total{{move=~"{moves}", '
        f"{TASK}}}[$__rate_interval])) > 0"
    )
    return AnnotationQuery().name(name).datasource(DS).enable(True).icon_color(color).expr(expr)


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
        .variables(_variables(with_version=True))  # type: ignore[arg-type]
        .annotation(_change_annotation("Promotions", "promote|approve|manual_set", "green"))
        .annotation(_change_annotation("Demotions", "demote", "red"))
        .link(_link("Pipeline health", "shadow-pipeline-health"))
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
                _q(
                    f"shadow_agreement_ratio{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}}",
                    "A",
                )
            )
        )
        .with_panel(
            _dashed(".* gate L.*")
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
                _q(
                    f"shadow_agreement_lower_ratio{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} lower",
                    "A",
                )
            )
            .with_target(
                _q(
                    f"shadow_agreement_upper_ratio{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} upper",
                    "B",
                )
            )
            .with_target(
                _q(
                    f"shadow_gate_agreement_ratio{{{TASK}}}",
                    "{{task_type}} gate {{level}}",
                    "C",
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
                _q(
                    f"shadow_evidence_comparisons{{{TASK_VERSION}}}",
                    "{{task_type}} {{agent_version}} n",
                    "A",
                )
            )
            .with_target(
                _q(
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
            .with_target(_q(f"shadow_autonomy_level{{{TASK}}}", "{{task_type}}", "A"))
            .with_target(_q("shadow_frozen", "frozen", "B"))
        )
        .with_row(Row("Misses and proposals"))
        .with_panel(
            timeseries.Panel()
            .title("Critical misses")
            .description("Comparisons with a critical field mismatch, per interval.")
            .draw_style(common.GraphDrawStyle.BARS)
            .unit("short")
            .span(8)
            .height(8)
            .with_target(
                _q(
                    "sum by (task_type, agent_version) (increase(shadow_critical_misses_total"
                    f"{{{TASK_VERSION}}}[$__rate_interval]))",
                    "{{task_type}} {{agent_version}}",
                    "A",
                )
            )
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
                _q(
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
                _q(
                    f"shadow_autonomy_proposal_level{{{TASK}}} > 0",
                    "{{task_type}}",
                    "A",
                    instant=True,
                )
            )
            .with_target(
                _q(
                    f"task_type:shadow_gate_agreement:next{{{TASK}}}",
                    "{{task_type}} next gate",
                    "B",
                    instant=True,
                )
            )
        )
    )


def pipeline_health() -> Dashboard:
    return (
        Dashboard("Shadow sidecar / Pipeline health")
        .uid("shadow-pipeline-health")
        .description("Ingest, agent calls, cost, joins, dead letters and Kafka lag.")
        .tags(["shadow-sidecar"])
        .time("now-6h", "now")
        .refresh("1m")
        .timezone(common.TimeZoneUtc)
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(_variables(with_version=False))  # type: ignore[arg-type]
        .link(_link("Agreement", "shadow-agreement"))
        .with_row(Row("Ingest and agent"))
        .with_panel(
            timeseries.Panel()
            .title("Ingest rate by source")
            .unit("reqps")
            .span(12)
            .height(8)
            .with_target(
                _q(
                    f"sum by (source) (source_task_type:shadow_events:rate5m{{{TASK}}})",
                    "events {{source}}",
                    "A",
                )
            )
            .with_target(_q("source:shadow_outcomes:rate5m", "outcomes {{source}}", "B"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Agent latency p50 / p95 / p99")
            .unit("s")
            .span(12)
            .height(8)
            .with_target(
                _q(
                    f"task_type:shadow_agent_latency_seconds:p50_5m{{{TASK}}}",
                    "{{task_type}} p50",
                    "A",
                )
            )
            .with_target(
                _q(
                    f"task_type:shadow_agent_latency_seconds:p95_5m{{{TASK}}}",
                    "{{task_type}} p95",
                    "B",
                )
            )
            .with_target(
                _q(
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
                _q(
                    'sum by (task_type) (rate(shadow_agent_calls_total{result="error", '
                    f"{TASK}}}[$__rate_interval]))",
                    "{{task_type}} errors/s",
                    "A",
                )
            )
            .with_target(
                _q(
                    f"task_type:shadow_agent_errors:ratio_rate5m{{{TASK}}}",
                    "{{task_type}} error ratio",
                    "B",
                )
            )
            .with_target(_q("shadow_agent_breaker_open", "breaker open", "C"))
        )
        .with_panel(
            stat.Panel()
            .title("Cost per decision")
            .unit("currencyUSD")
            .decimals(4)
            .span(6)
            .height(8)
            .with_target(
                _q(
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
                _q(
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
            .with_target(_q("shadow_pending_joins", "{{waiting_for}}", "A"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Dead letters by reason")
            .draw_style(common.GraphDrawStyle.BARS)
            .unit("short")
            .span(8)
            .height(8)
            .with_target(
                _q(
                    "sum by (source, reason) "
                    "(increase(shadow_dead_letters_total[$__rate_interval]))",
                    "{{source}} {{reason}}",
                    "A",
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Kafka consumer lag")
            .description("Messages behind the end of each topic partition.")
            .unit("short")
            .span(8)
            .height(8)
            .with_target(
                _q(
                    "sum by (topic, partition) (shadow_kafka_consumer_lag_messages)",
                    "{{topic}}/{{partition}}",
                    "A",
                )
            )
        )
    )


def _link(title: str, uid: str) -> DashboardLink:
    return (
        DashboardLink(title)
        .type(model.DashboardLinkType.LINK)
        .url(f"/d/{uid}")
        .include_vars(True)
        .keep_time(True)
    )


#: Output file (relative to the repository root) -> dashboard builder.
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "dashboards/grafana/shadow-agreement.json": agreement,
    "dashboards/grafana/shadow-pipeline-health.json": pipeline_health,
}


def build_all() -> dict[str, str]:
    """Dashboard JSON text per output path (stable: sorted keys, two-space indent)."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {path: encoder.encode(make().build()) + "\n" for path, make in DASHBOARDS.items()}


def render_all(root: Path = ROOT) -> dict[str, str]:
    """Every generated file, including the Helm chart's copies, by repository-relative path."""
    out = build_all()
    for path, text in list(out.items()):
        out[str(CHART_FILES / "dashboards" / Path(path).name)] = text
    out[str(CHART_FILES / RULES.name)] = (root / RULES).read_text(encoding="utf-8")
    return out


def write_all(root: Path = ROOT) -> list[str]:
    """Write every generated file under ``root``; returns the paths that changed."""
    changed = []
    for rel, text in render_all(root).items():
        path = root / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        changed.append(rel)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = [
            rel
            for rel, text in render_all().items()
            if not (ROOT / rel).is_file() or (ROOT / rel).read_text(encoding="utf-8") != text
        ]
        for rel in stale:
            print(f"out of date: {rel} (run `make dashboards`)", file=sys.stderr)
        return 1 if stale else 0
    for rel in write_all():
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
