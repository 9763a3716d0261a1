"""The committed dashboards match their generator, and every name they use exists.

Tests :mod:`dashboards.generate`: the JSON in ``dashboards/grafana/`` (and the Helm chart's
copies) is exactly what the generator writes, so a hand edit or a forgotten ``make
dashboards`` fails here; every metric or recording-rule name in a query is one that
:mod:`shadow.metrics` exports or ``shadow-rules.yaml`` records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from dashboards import generate
from shadow.demo import DEMO_POLICY
from shadow.metrics import Metrics
from shadow.policy import parse_policy
from tests.dashboards.promql import GRAFANA_DIR, RULES_FILE, dashboard_queries, rule_exprs

ROOT = generate.ROOT
NAME = re.compile(r"\b(shadow_[a-z_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b")


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry, parse_policy(DEMO_POLICY, source="demo"))
    names = {s.name for family in registry.collect() for s in family.samples}
    # Labelled series exist once a label set is used; the families name them all.
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def recorded_names() -> set[str]:
    return {q.where.rsplit(" / ", 1)[1] for kind, q in rule_exprs() if kind == "record"}


@pytest.mark.parametrize("rel", sorted(generate.render_all()))
def test_committed_file_matches_the_generator(rel: str) -> None:
    expected = generate.render_all()[rel]
    path = ROOT / rel
    assert path.is_file(), f"{rel} is missing: run `make dashboards`"
    assert path.read_text(encoding="utf-8") == expected, f"{rel} is stale: run `make dashboards`"


def test_write_all_rewrites_only_stale_files(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / generate.RULES).parent.mkdir(parents=True)
    (root / generate.RULES).write_text(RULES_FILE.read_text(encoding="utf-8"))
    assert sorted(generate.write_all(root)) == sorted(generate.render_all(root))
    assert generate.write_all(root) == []  # idempotent
    stale = root / "dashboards/grafana/shadow-agreement.json"
    stale.write_text(stale.read_text().replace("Agreement over time", "Agreement"))
    assert generate.write_all(root) == ["dashboards/grafana/shadow-agreement.json"]


def test_every_name_in_a_query_exists() -> None:
    known = exported_names() | recorded_names()
    unknown: list[tuple[str, str]] = []
    queries = [q for _, q in rule_exprs()]
    for path in sorted(GRAFANA_DIR.glob("*.json")):
        panels, variables = dashboard_queries(path)
        queries += panels + variables
    for q in queries:
        unknown += [(q.where, name) for name in NAME.findall(q.expr) if name not in known]
    assert not unknown, unknown
    assert len(queries) > 40


def test_dashboards_have_their_panels_and_variables() -> None:
    agreement = json.loads((GRAFANA_DIR / "shadow-agreement.json").read_text())
    health = json.loads((GRAFANA_DIR / "shadow-pipeline-health.json").read_text())
    assert (agreement["uid"], health["uid"]) == ("shadow-agreement", "shadow-pipeline-health")
    titles = {p["title"] for d in (agreement, health) for p in d["panels"] if p["type"] != "row"}
    assert titles == {
        "Agreement over time",
        "Lower and upper bound against each gate",
        "Agreement against the noise floor",
        "Evidence",
        "Autonomy level",
        "Critical misses",
        "Top disagreeing fields",
        "Proposals waiting for approval",
        "Agreement per segment",
        "Segments sent to humans",
        "Budget burn",
        "Budgets exceeded",
        "Projected daily cost: agent vs human",
        "Ingest rate by source",
        "Agent latency p50 / p95 / p99",
        "Agent errors",
        "Cost per decision",
        "Cost per day",
        "Pending joins",
        "Dead letters by reason",
        "Kafka lag and uncommitted",
        "Rows deleted by retention",
        "Tool calls by outcome and class",
        "Gateway latency p50 / p95 / p99",
        "Approvals pending",
        "Oldest approval waiting",
    }
    names = [v["name"] for v in agreement["templating"]["list"]]
    assert names == ["datasource", "task_type", "agent_version", "segment"]
    assert {a["name"] for a in agreement["annotations"]["list"]} == {"Promotions", "Demotions"}
    for d in (agreement, health):
        for p in d["panels"]:
            if p["type"] != "row":
                assert p["targets"], p["title"]
                assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])


def test_provisioning_files_point_at_the_dashboards() -> None:
    prov = ROOT / "dashboards" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "shadow-prometheus.yaml").read_text())
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    provider = yaml.safe_load((prov / "dashboards" / "shadow.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"
    assert provider["providers"][0]["options"]["path"].endswith("/shadow")
