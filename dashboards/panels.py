"""Shared pieces of the dashboards: the datasource variable, Grafana's template variables
(``$task_type``, ``$agent_version``), query, annotation and link builders.

Every query selects task types with ``task_type=~"$task_type"`` (multi-value and "All" become
a regex group) and goes through the ``${datasource}`` variable.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

__all__ = [
    "DS",
    "LEVELS",
    "LEVEL_COLORS",
    "TASK",
    "TASK_VERSION",
    "bars",
    "change_annotation",
    "dashed",
    "link",
    "query",
    "variables",
]

DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TASK = 'task_type=~"$task_type"'
TASK_VERSION = 'task_type=~"$task_type", agent_version=~"$agent_version"'
TASK_SEGMENT = 'task_type=~"$task_type", segment=~"$segment"'
LEVELS = {str(i): f"L{i}" for i in range(5)}
LEVEL_COLORS = {"0": "text", "1": "blue", "2": "purple", "3": "orange", "4": "green"}


def query(expr: str, legend: str, ref: str, *, instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)
    return q.instant() if instant else q.range()


def variables(
    *, with_version: bool, with_segment: bool = False
) -> list[DatasourceVariable | QueryVariable]:
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
    if with_segment:
        # The declared segments and "other" (shadow.segments): a bounded set of values.
        out.append(
            QueryVariable("segment")
            .label("Segment")
            .datasource(DS)
            .query(f"label_values(shadow_segment_comparisons{{{TASK}}}, segment)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )
    return out


def bars(title: str, expr: str, legend: str) -> timeseries.Panel:
    """A third-width time series panel of counts per interval, drawn as bars, of one query
    (an ``increase(...[$__rate_interval])``)."""
    return (
        timeseries.Panel()
        .title(title)
        .draw_style(common.GraphDrawStyle.BARS)
        .unit("short")
        .span(8)
        .height(8)
        .with_target(query(expr, legend, "A"))
    )


def dashed(regexp: str) -> timeseries.Panel:
    """A time series panel whose series matching ``regexp`` are drawn as dashed lines."""
    return timeseries.Panel().override_by_regexp(
        regexp,
        [
            model.DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
            model.DynamicConfigValue("custom.fillOpacity", 0),
        ],
    )


def change_annotation(name: str, moves: str, color: str) -> AnnotationQuery:
    expr = (
        f'sum by (task_type, move) (increase(shadow_autonomy_changes_total{{move=~"{moves}", '
        f"{TASK}}}[$__rate_interval])) > 0"
    )
    return AnnotationQuery().name(name).datasource(DS).enable(True).icon_color(color).expr(expr)


def link(title: str, uid: str) -> DashboardLink:
    return (
        DashboardLink(title)
        .type(model.DashboardLinkType.LINK)
        .url(f"/d/{uid}")
        .include_vars(True)
        .keep_time(True)
    )
