"""Kafka scale-out in the Helm chart (``kafka.scaleOut``; docs/kafka.md "Several replicas").

Rendered offline with Helm's Go SDK (``helm-python-sdk``) and validated against the
Kubernetes schemas of the oldest supported and the newest Kubernetes, as in test_chart.py:

- one promoter pod template (the Deployment: 1 replica, Recreate, its own PVC) with
  ``SHADOW_KAFKA_ROLE=promoter``, and a StatefulSet of replicas (``volumeClaimTemplates``: one
  DuckDB per pod) with ``SHADOW_KAFKA_ROLE=replica``; the two containers are identical except
  for that role (same group, topics, policy, token, probes, resources, securityContext);
- the API Service selects only the promoter, a headless Service the replicas, the workloads'
  selectors never overlap, and the ServiceMonitor scrapes both under ``job="shadow-sidecar"``;
- the rendered arguments and environment are read back by the sidecar's own CLI parser and
  settings loader, so every name is one ``shadow run`` understands;
- bad values are refused by ``values.schema.json`` naming the field, and without the schema
  by the template itself; the default render keeps its selectors (an upgrade never breaks).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]  # no py.typed
import pytest

from shadow.cli import _parser
from shadow.config import load_settings
from shadow.sources.kafka_client import parse_kafka_spec
from tests.helm.test_chart import (
    CHART,
    CRDS,
    Manifest,
    by_kind,
    check_pod,
    render,
    sidecar,
    validate,
)

pytestmark = pytest.mark.slow  # renders the chart with Helm

KAFKA: dict[str, Any] = {
    "enabled": True,
    "bootstrap": "kafka.data.svc:9092",
    "eventsTopic": "work-events",
    "outcomesTopic": "work-outcomes",
    "group": "shadow",
    "comparisonsTopic": "shadow.comparisons",
    "autonomyTopic": "shadow.autonomy",
    "scaleOut": {"enabled": True, "replicas": 3},
}
SCALE_OUT: dict[str, Any] = {
    "kafka": KAFKA,
    "agent": {"url": "http://refund-agent:9000/decide"},
    "adminToken": {"value": "s3cret"},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"


def with_values(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(base)
    values.update(changes)
    return values


def workloads(docs: list[Manifest]) -> list[Manifest]:
    return by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def role_of(template: Manifest) -> str | None:
    role = env_of(sidecar(template["spec"])).get("SHADOW_KAFKA_ROLE")
    return None if role is None else str(role["value"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def scale_out() -> tuple[list[Manifest], Manifest, Manifest]:
    docs = render(CHART, SCALE_OUT)
    (deployment,) = by_kind(docs, "Deployment")
    (statefulset,) = by_kind(docs, "StatefulSet")
    return docs, deployment, statefulset


def test_scale_out_lints_clean() -> None:
    report = helm.lint(CHART, SCALE_OUT, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_scale_out_renders_one_promoter_and_a_stateful_set_of_replicas() -> None:
    docs, deployment, statefulset = scale_out()
    validate(docs)  # KUBE_VERSIONS: 1.25.0 and kubernetes-validate's newest
    for doc in docs:
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "PrometheusRule",
        "Secret",
        "Service",
        "Service",
        "ServiceMonitor",
        "StatefulSet",
    ]
    roles = [role_of(w["spec"]["template"]) for w in workloads(docs)]
    assert sorted(r or "" for r in roles) == ["promoter", "replica"]
    assert roles.count("promoter") == 1

    # The promoter: one pod, never two on its volume (nor two promoters), its own PVC.
    assert role_of(deployment["spec"]["template"]) == "promoter"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    promoter = deployment["spec"]["template"]["spec"]
    check_pod(promoter, docs)
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")
    data = {v["name"]: v for v in promoter["volumes"]}["shadow-data"]
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]

    # The replicas: one DuckDB volume per pod from the claim templates, none shared.
    assert role_of(statefulset["spec"]["template"]) == "replica"
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "shadow-data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in claim["spec"]
    replica = spec["template"]["spec"]
    assert "shadow-data" not in {v["name"] for v in replica["volumes"]}
    claimed = {**replica, "volumes": [*replica["volumes"], {"name": "shadow-data", "pvc": {}}]}
    check_pod(claimed, docs)


def test_promoter_and_replicas_run_the_same_sidecar_but_for_the_role() -> None:
    _, deployment, statefulset = scale_out()
    promoter = sidecar(deployment["spec"]["template"]["spec"])
    replica = sidecar(statefulset["spec"]["template"]["spec"])
    env_p, env_r = env_of(promoter), env_of(replica)
    assert env_p.pop("SHADOW_KAFKA_ROLE")["value"] == "promoter"
    assert env_r.pop("SHADOW_KAFKA_ROLE")["value"] == "replica"
    assert env_p == env_r
    assert env_p["SHADOW_KAFKA_COMPARISONS_TOPIC"]["value"] == "shadow.comparisons"
    assert env_p["SHADOW_KAFKA_AUTONOMY_TOPIC"]["value"] == "shadow.autonomy"
    assert "secretKeyRef" in env_p["SHADOW_ADMIN_TOKEN"]["valueFrom"]
    # Same args (group, topics, agent, db path), probes, resources, securityContext, mounts.
    assert {k: v for k, v in promoter.items() if k != "env"} == {
        k: v for k, v in replica.items() if k != "env"
    }
    args = promoter["args"]
    assert args[args.index("--source") + 1] == (
        "kafka://kafka.data.svc:9092?events=work-events&outcomes=work-outcomes&group=shadow"
    )
    # Same pod otherwise: policy ConfigMap, /tmp emptyDir, pod securityContext, scheduling.
    pod_p = dict(deployment["spec"]["template"]["spec"])
    pod_r = dict(statefulset["spec"]["template"]["spec"])
    for pod in (pod_p, pod_r):
        pod.pop("containers")
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "shadow-data"]
    assert pod_p == pod_r


def test_the_sidecar_reads_the_rendered_args_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pod's args through ``shadow``'s own parser and its env through the settings
    loader: the role, topics and group arrive as the sidecar's settings."""
    _, deployment, statefulset = scale_out()
    seen = {}
    for workload in (deployment, statefulset):
        container = sidecar(workload["spec"]["template"]["spec"])
        with monkeypatch.context() as env:
            for name in [n for n in os.environ if n.startswith("SHADOW_")]:
                env.delenv(name)
            for item in container["env"]:
                if "value" in item:
                    env.setenv(item["name"], item["value"])
            args = _parser().parse_args(container["args"])
            assert args.command == "run"
            settings = load_settings(
                config=args.config,
                db=args.db,
                host=args.host,
                port=args.port,
                agent=args.agent,
                source=args.source,
                agent_concurrency=args.agent_concurrency,
                agent_timeout=args.agent_timeout,
            )
        (source,) = settings.source
        spec = parse_kafka_spec(source)
        assert (spec.events, spec.outcomes, spec.group) == (
            "work-events",
            "work-outcomes",
            "shadow",
        )
        assert settings.kafka_comparisons_topic == "shadow.comparisons"
        assert settings.kafka_autonomy_topic == "shadow.autonomy"
        assert settings.db == "/var/lib/shadow/shadow.duckdb"
        seen[workload["kind"]] = settings.kafka_role
    assert seen == {"Deployment": "promoter", "StatefulSet": "replica"}


def test_the_api_service_selects_only_the_promoter() -> None:
    docs, deployment, statefulset = scale_out()
    promoter_labels = deployment["spec"]["template"]["metadata"]["labels"]
    replica_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    api = services[deployment["metadata"]["name"]]
    headless = services[statefulset["spec"]["serviceName"]]
    assert api["spec"].get("clusterIP") != "None"
    assert selects(api["spec"]["selector"], promoter_labels)
    assert not selects(api["spec"]["selector"], replica_labels)
    # Replicas keep HTTP ingest, reachable per pod through the headless Service.
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], replica_labels)
    assert not selects(headless["spec"]["selector"], promoter_labels)
    assert headless["spec"]["ports"][0]["targetPort"] == "shadow-http"
    # The two workloads never claim each other's pods.
    assert selects(deployment["spec"]["selector"]["matchLabels"], promoter_labels)
    assert not selects(deployment["spec"]["selector"]["matchLabels"], replica_labels)
    assert selects(statefulset["spec"]["selector"]["matchLabels"], replica_labels)
    assert not selects(statefulset["spec"]["selector"]["matchLabels"], promoter_labels)
    assert promoter_labels[COMPONENT] == "promoter"
    assert replica_labels[COMPONENT] == "replica"


def test_the_service_monitor_scrapes_the_promoter_and_every_replica() -> None:
    docs, _, _ = scale_out()
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    scraped = [
        s
        for s in by_kind(docs, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert len(scraped) == 2
    pods = {
        w["kind"]
        for w in workloads(docs)
        for s in scraped
        if selects(s["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
    }
    assert pods == {"Deployment", "StatefulSet"}
    # Each pod once: the promoter through the API Service only, the replicas through the
    # headless one only (checked above), all under the job the rules and dashboards use.
    relabel = endpoint["relabelings"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "shadow-sidecar"} in relabel
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
        "targetLabel": "kafka_role",
    } in relabel


def test_replica_storage_and_persistence_off() -> None:
    kafka = copy.deepcopy(KAFKA)
    kafka["scaleOut"]["persistence"] = {"storageClass": "fast-ssd", "size": "50Gi"}
    docs = render(CHART, with_values(SCALE_OUT, kafka=kafka))
    validate(docs)
    (statefulset,) = by_kind(docs, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")  # the promoter's keeps `persistence`
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"

    docs = render(CHART, with_values(SCALE_OUT, persistence={"enabled": False}))
    validate(docs)
    assert by_kind(docs, "PersistentVolumeClaim") == []
    for workload in workloads(docs):
        assert "volumeClaimTemplates" not in workload["spec"]
        pod = workload["spec"]["template"]["spec"]
        check_pod(pod, docs)
        data = {v["name"]: v for v in pod["volumes"]}["shadow-data"]
        assert data == {"name": "shadow-data", "emptyDir": {}}


def test_without_scale_out_nothing_changes() -> None:
    """Default and single-sidecar Kafka renders keep their selectors (immutable on a
    Deployment: a change would break every upgrade) and get no role."""
    for values in ({}, {"kafka": {**KAFKA, "scaleOut": {"enabled": False, "replicas": 3}}}):
        docs = render(CHART, values)
        validate(docs)
        assert by_kind(docs, "StatefulSet") == []
        (service,) = by_kind(docs, "Service")
        (deployment,) = by_kind(docs, "Deployment")
        selector = {NAME: "shadow-sidecar", INSTANCE: "shadow"}
        assert deployment["spec"]["selector"]["matchLabels"] == selector
        assert service["spec"]["selector"] == selector
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels[COMPONENT] == "shadow-sidecar"
        assert "SHADOW_KAFKA_ROLE" not in env_of(sidecar(deployment["spec"]["template"]["spec"]))
    # One sidecar may still publish comparisons and levels (docs/kafka.md): topics, no role.
    env = env_of(sidecar(deployment["spec"]["template"]["spec"]))
    assert env["SHADOW_KAFKA_COMPARISONS_TOPIC"]["value"] == "shadow.comparisons"
    assert env["SHADOW_KAFKA_AUTONOMY_TOPIC"]["value"] == "shadow.autonomy"


BAD_SCALE_OUT = [
    ({**KAFKA, "comparisonsTopic": ""}, {}, "/kafka/comparisonsTopic"),
    ({**KAFKA, "autonomyTopic": ""}, {}, "/kafka/autonomyTopic"),
    ({**KAFKA, "enabled": False}, {}, "/kafka/enabled"),
    ({"scaleOut": {"enabled": True}}, {}, "/kafka/enabled"),
    ({**KAFKA, "scaleOut": {"enabled": True, "replicas": 0}}, {}, "/kafka/scaleOut/replicas"),
    ({**KAFKA, "scaleOut": {"enabled": True, "replicas": "3"}}, {}, "/kafka/scaleOut/replicas"),
    (
        {**KAFKA, "scaleOut": {"enabled": True, "persistence": {"size": "big"}}},
        {},
        "/kafka/scaleOut/persistence/size",
    ),
    ({**KAFKA, "scaleOut": {"enabled": True, "replica": 3}}, {}, "/kafka/scaleOut"),
    (KAFKA, {"deployment": {"enabled": False}}, "/deployment/enabled"),
    (KAFKA, {"service": {"selector": {"app": "billing"}}}, "/service/selector"),
    (KAFKA, {"extraEnv": [{"name": "SHADOW_KAFKA_ROLE", "value": "x"}]}, "/extraEnv/0/name"),
]


@pytest.mark.parametrize(("kafka", "more", "field"), BAD_SCALE_OUT)
def test_bad_scale_out_values_are_rejected_by_the_schema(
    kafka: dict[str, Any], more: dict[str, Any], field: str
) -> None:
    values = {"kafka": kafka, **more}
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values=values, name="shadow", namespace="ops")
    message = str(caught.value)
    assert "values don't meet the specifications of the schema" in message
    assert f"at '{field}'" in message, message


def test_the_templates_refuse_scale_out_without_kafka_even_without_the_schema(
    tmp_path: Path,
) -> None:
    chart = tmp_path / "shadow-sidecar"
    shutil.copytree(CHART, chart)
    (chart / "values.schema.json").unlink()
    for values, needs in (
        ({"kafka": {"scaleOut": {"enabled": True}}}, "needs kafka.enabled"),
        ({"kafka": KAFKA, "deployment": {"enabled": False}}, "needs deployment.enabled"),
    ):
        with helm.Chart.load(chart) as loaded, pytest.raises(helm.HelmRenderError) as caught:
            loaded.render(values=values, name="shadow", namespace="ops")
        assert f"kafka.scaleOut.enabled {needs}" in str(caught.value)


def test_install_notes_name_the_promoter_and_the_partitions_needed() -> None:
    with helm.Chart.load(CHART) as chart:
        notes = chart.render(values=SCALE_OUT, name="shadow", namespace="ops")[
            "shadow-sidecar/templates/NOTES.txt"
        ]
        default = chart.render(values={}, name="shadow", namespace="ops")[
            "shadow-sidecar/templates/NOTES.txt"
        ]
    assert "deployment/shadow-shadow-sidecar is the promoter" in notes
    assert "statefulset/shadow-shadow-sidecar-replica runs 3 replicas" in notes
    assert "at least 4 partitions" in notes
    assert "scale-out" not in default
