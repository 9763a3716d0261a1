"""The Helm chart ``helm/shadow-sidecar``, linted and rendered offline with Helm's own Go SDK
(``helm-python-sdk``), across value combinations:

- standalone Deployment (HTTP only, and Kafka mode with ServiceMonitor, PrometheusRule and
  an admin token), persistence on/off, existing ConfigMap/Secret/claim;
- the sidecar named templates included from a tiny parent chart (tests/helm/parent-chart);
- the optional NetworkPolicy that leaves the agent's pods only the sidecar (and DNS);
- every rendered manifest validated against the Kubernetes JSON schemas
  (``kubernetes-validate``, offline) for the oldest supported and the newest Kubernetes; the
  prometheus-operator objects (no schema there) checked against what they select and with
  ``promtool check rules``;
- bad values rejected by ``values.schema.json`` with an error naming the field.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]  # no py.typed; used for validate()
import pytest
import yaml

from tests.conftest import require_tool

pytestmark = pytest.mark.slow  # renders the chart with Helm across many value sets

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shadow-sidecar"
PARENT = Path(__file__).resolve().parent / "parent-chart"
GRAFANA = ROOT / "dashboards" / "grafana"
RULES = ROOT / "dashboards" / "prometheus" / "shadow-rules.yaml"
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CRDS = {"ServiceMonitor", "PrometheusRule"}
DEFAULT_RUNBOOKS = "https://github.com/shadow-sidecar/shadow-sidecar/blob/main/docs/operating.md"

Manifest = dict[str, Any]


def render(chart: Path, values: dict[str, Any] | None = None) -> list[Manifest]:
    with helm.Chart.load(chart) as loaded:
        out = loaded.render(values=values or {}, name="shadow", namespace="ops")
    docs: list[Manifest] = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def validate(docs: list[Manifest]) -> None:
    for doc in docs:
        if doc["kind"] in CRDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                name = doc["metadata"]["name"]
                raise AssertionError(
                    f"{doc['kind']}/{name} at {where} (k8s {version}): {exc.message}"
                ) from None


def pod_specs(docs: list[Manifest]) -> Iterator[Manifest]:
    for d in by_kind(docs, "Deployment"):
        yield d["spec"]["template"]["spec"]


def sidecar(spec: Manifest) -> Manifest:
    found: list[Manifest] = [c for c in spec["containers"] if c["name"] == "shadow-sidecar"]
    assert len(found) == 1, spec["containers"]
    return found[0]


def check_pod(spec: Manifest, docs: list[Manifest]) -> None:
    """Non-root, read-only root, probes, and every volume resolves to a rendered object or to
    a value the user named (existing*)."""
    c = sidecar(spec)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    # /etc/shadow-auth: the tokens file, only with auth.* (tests/helm/test_auth.py).
    assert set(mounts) - {"/etc/shadow-auth"} == {"/etc/shadow", "/var/lib/shadow", "/tmp"}
    assert not [m for m in c["volumeMounts"] if "subPath" in m]  # a subPath is never updated
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(mounts.values()) <= set(volumes)
    assert "emptyDir" in volumes[mounts["/tmp"]]
    args = c["args"]
    assert args[:2] == ["run", "--config"]
    assert args[args.index("--db") + 1].startswith("/var/lib/shadow/")
    assert args[args.index("--config") + 1] == "/etc/shadow/policy.yaml"


def names(docs: list[Manifest], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in by_kind(docs, kind)}


def token_secret(c: Manifest) -> str | None:
    for env in c["env"]:
        if env["name"] == "SHADOW_ADMIN_TOKEN":
            return str(env["valueFrom"]["secretKeyRef"]["name"])
    return None


def test_lint_is_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_defaults_render_a_standalone_deployment() -> None:
    docs = render(CHART)
    validate(docs)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
    ]
    (spec,) = pod_specs(docs)
    check_pod(spec, docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shadow-data"]["persistentVolumeClaim"]["claimName"] in names(
        docs, "PersistentVolumeClaim"
    )
    assert volumes["shadow-policy"]["configMap"]["name"] in names(docs, "ConfigMap")
    assert token_secret(sidecar(spec)) is None  # no token: the write API is refused
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    policy = yaml.safe_load(
        next(d for d in by_kind(docs, "ConfigMap") if "policy.yaml" in d["data"])["data"][
            "policy.yaml"
        ]
    )
    assert "refund_request" in policy["task_types"]


def test_kafka_mode_with_monitoring_and_token() -> None:
    values = {
        "kafka": {
            "enabled": True,
            "bootstrap": "kafka.data.svc:9092",
            "eventsTopic": "work-events",
            "outcomesTopic": "outcomes",
            "group": "shadow",
        },
        "agent": {"url": "http://refund-agent:9000/decide"},
        "adminToken": {"value": "s3cret"},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }
    docs = render(CHART, values)
    validate(docs)
    (spec,) = pod_specs(docs)
    check_pod(spec, docs)
    args = sidecar(spec)["args"]
    source = args[args.index("--source") + 1]
    assert source == "kafka://kafka.data.svc:9092?events=work-events&outcomes=outcomes&group=shadow"
    assert args[args.index("--agent") + 1] == "http://refund-agent:9000/decide"
    (secret,) = by_kind(docs, "Secret")
    assert token_secret(sidecar(spec)) == secret["metadata"]["name"]
    (service,) = by_kind(docs, "Service")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [
        service["spec"]["ports"][0]["name"]
    ]
    relabel = monitor["spec"]["endpoints"][0]["relabelings"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "shadow-sidecar"} in relabel
    pod_labels = by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_prometheus_rule_carries_the_tested_rules(tmp_path: Path) -> None:
    base = "https://git.example.com/ops/shadow/-/blob/main/docs/operating.md"
    docs = render(CHART, {"prometheusRule": {"enabled": True, "runbookBaseUrl": base}})
    (rule,) = by_kind(docs, "PrometheusRule")
    expected = yaml.safe_load(RULES.read_text().replace(DEFAULT_RUNBOOKS, base))
    assert rule["spec"]["groups"] == expected["groups"]
    urls = [
        r["annotations"]["runbook_url"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    alerts = [r for g in expected["groups"] for r in g["rules"] if "alert" in r]
    assert len(urls) == len(alerts) >= 9  # every alert has its runbook (ShadowEvidenceInvalid too)
    assert all(u.startswith(base + "#") for u in urls)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run(
        [require_tool("promtool"), "check", "rules", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_config_maps_hold_the_committed_dashboards() -> None:
    docs = render(CHART)
    boards = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert {d["metadata"]["labels"]["grafana_dashboard"] for d in boards} == {"1"}
    data = {k: v for d in boards for k, v in d["data"].items()}
    committed = {p.name: p.read_text() for p in GRAFANA.glob("*.json")}
    assert set(data) == set(committed)
    for name, text in committed.items():
        assert json.loads(data[name]) == json.loads(text), name


def test_persistence_off_and_dashboards_off() -> None:
    docs = render(CHART, {"persistence": {"enabled": False}, "dashboards": {"enabled": False}})
    validate(docs)
    assert by_kind(docs, "PersistentVolumeClaim") == []
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service"]
    (spec,) = pod_specs(docs)
    check_pod(spec, docs)
    data = next(v for v in spec["volumes"] if v["name"] == "shadow-data")
    assert data == {"name": "shadow-data", "emptyDir": {}}


def test_existing_config_map_secret_and_claim_are_used_not_created() -> None:
    values = {
        "policy": {"existingConfigMap": "ops-policy", "content": ""},
        "adminToken": {"existingSecret": "ops-token", "existingSecretKey": "token"},
        "persistence": {"existingClaim": "ops-data"},
        "dashboards": {"enabled": False},
    }
    docs = render(CHART, values)
    validate(docs)
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Service"]
    (spec,) = pod_specs(docs)
    check_pod(spec, docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shadow-policy"]["configMap"]["name"] == "ops-policy"
    assert volumes["shadow-data"]["persistentVolumeClaim"]["claimName"] == "ops-data"
    env = {e["name"]: e for e in sidecar(spec)["env"]}
    assert env["SHADOW_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "ops-token",
        "key": "token",
    }


@pytest.fixture
def parent_chart(tmp_path: Path) -> Path:
    """The test parent chart with this chart vendored into its charts/ directory."""
    chart = tmp_path / "billing-app"
    shutil.copytree(PARENT, chart)
    shutil.copytree(CHART, chart / "charts" / "shadow-sidecar")
    return chart


def test_sidecar_named_templates_in_a_parent_chart(parent_chart: Path) -> None:
    report = helm.lint(parent_chart, strict=True, with_subcharts=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = render(parent_chart)
    validate(docs)
    deployments = by_kind(docs, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == ["billing-app"]  # no standalone one
    (spec,) = pod_specs(docs)
    assert [c["name"] for c in spec["containers"]] == ["billing-app", "shadow-sidecar"]
    check_pod(spec, docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shadow-policy"]["configMap"]["name"] == "billing-shadow-policy"
    assert "billing-shadow-policy" in names(docs, "ConfigMap")
    assert volumes["shadow-data"]["persistentVolumeClaim"]["claimName"] in names(
        docs, "PersistentVolumeClaim"
    )
    assert token_secret(sidecar(spec)) in names(docs, "Secret")
    (service,) = by_kind(docs, "Service")
    pod_labels = deployments[0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == {"app": "billing-app"}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    assert spec["securityContext"]["fsGroup"] == 10001  # the data volume is writable


def test_proxy_mode_in_the_hosts_pod_and_the_mirror_listener(parent_chart: Path) -> None:
    values = {"shadow-sidecar": {"proxy": {"upstreamPort": 8080}, "mirror": {"port": 8751}}}
    docs = render(parent_chart, values)
    validate(docs)
    (spec,) = pod_specs(docs)
    container = sidecar(spec)
    args = container["args"]
    assert args[args.index("--proxy-upstream") + 1] == "http://127.0.0.1:8080"
    assert args[args.index("--proxy-listen") + 1] == "0.0.0.0:8760"
    assert args[args.index("--mirror-port") + 1] == "8751"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"shadow-http": 8750, "shadow-mirror": 8751, "shadow-proxy": 8760}
    (service,) = by_kind(docs, "Service")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: p["targetPort"] for n, p in by_name.items()} == {
        "http": "shadow-http",
        "mirror": "shadow-mirror",
        "proxy": "shadow-proxy",
    }
    assert (by_name["mirror"]["port"], by_name["proxy"]["port"]) == (8751, 8760)


def test_mirroring_is_off_by_default() -> None:
    docs = render(CHART)
    (spec,) = pod_specs(docs)
    args = sidecar(spec)["args"]
    assert "--mirror-port" not in args
    assert "--proxy-upstream" not in args
    (service,) = by_kind(docs, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    docs = render(CHART, {"mirror": {"port": 9001, "servicePort": 80}})
    validate(docs)
    (service,) = by_kind(docs, "Service")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("http", 8750),
        ("mirror", 80),
    ]


AGENT_PODS = {"app.kubernetes.io/name": "refund-agent"}


def network_policy(docs: list[Manifest]) -> Manifest:
    (policy,) = by_kind(docs, "NetworkPolicy")
    return policy


def test_network_policy_is_absent_by_default() -> None:
    assert by_kind(render(CHART), "NetworkPolicy") == []
    # Without the agent's labels it is refused, not rendered for every pod of the namespace.
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as caught:
        chart.render(values={"networkPolicy": {"enabled": True}}, name="shadow", namespace="ops")
    assert "networkPolicy.agentPodSelector" in str(caught.value)


def test_network_policy_lets_the_agent_reach_only_the_sidecar_and_dns() -> None:
    docs = render(CHART, {"networkPolicy": {"enabled": True, "agentPodSelector": AGENT_PODS}})
    validate(docs)
    policy = network_policy(docs)
    assert policy["metadata"]["namespace"] == "ops"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": AGENT_PODS}
    assert spec["policyTypes"] == ["Egress"]  # the agent's ingress (the sidecar's calls) is open
    assert "ingress" not in spec
    to_sidecar, dns = spec["egress"]
    (peer,) = to_sidecar["to"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}
    # The peer is the pods the Service sends to, on the port its `http` port targets.
    (service,) = by_kind(docs, "Service")
    (deployment,) = by_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    ports = {p["name"]: p["containerPort"] for p in sidecar(next(pod_specs(docs)))["ports"]}
    assert to_sidecar["ports"] == [{"protocol": "TCP", "port": ports[http["targetPort"]]}]
    assert not set(AGENT_PODS.items()) <= set(pod_labels.items())  # never the sidecar itself
    (dns_peer,) = dns["to"]
    assert dns_peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert dns_peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]


def test_network_policy_in_the_agents_namespace_with_extra_egress() -> None:
    model = {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}
    values = {
        "containerPort": 9750,
        "service": {"selector": {"app": "host"}},
        "networkPolicy": {
            "enabled": True,
            "agentPodSelector": AGENT_PODS,
            "agentNamespace": "agents",
            "dns": {"enabled": False},
            "extraEgress": [model],
        },
    }
    docs = render(CHART, values)
    validate(docs)
    policy = network_policy(docs)
    assert policy["metadata"]["namespace"] == "agents"
    to_sidecar, extra = policy["spec"]["egress"]
    (peer,) = to_sidecar["to"]
    # The sidecar stays in the release's namespace, in the pods the Service selects.
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ops"}
    assert peer["podSelector"] == {"matchLabels": {"app": "host"}}
    assert to_sidecar["ports"] == [{"protocol": "TCP", "port": 9750}]
    assert extra == model


def test_network_policy_reaches_every_sidecar_in_scale_out() -> None:
    values = {
        "kafka": {
            "enabled": True,
            "bootstrap": "kafka:9092",
            "eventsTopic": "e",
            "outcomesTopic": "o",
            "comparisonsTopic": "c",
            "autonomyTopic": "a",
            "scaleOut": {"enabled": True},
        },
        "networkPolicy": {"enabled": True, "agentPodSelector": AGENT_PODS},
    }
    docs = render(CHART, values)
    selector = network_policy(docs)["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"]
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    assert len(workloads) == 2
    for workload in workloads:
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


BAD_VALUES = [
    ({"proxy": {"upstreamPort": 70000}}, "/proxy/upstreamPort"),
    ({"mirror": {"port": -1}}, "/mirror/port"),
    (
        {"securityContext": {"runAsNonRoot": False, "readOnlyRootFilesystem": True}},
        "/securityContext/runAsNonRoot",
    ),
    (
        {"securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": False}},
        "/securityContext/readOnlyRootFilesystem",
    ),
    (
        {"podSecurityContext": {"runAsNonRoot": True, "runAsUser": 0}},
        "/podSecurityContext/runAsUser",
    ),
    ({"kafka": {"enabled": True}}, "/kafka/bootstrap"),
    (
        {
            "kafka": {
                "enabled": True,
                "bootstrap": "kafka:9092",
                "eventsTopic": "bad topic!",
                "outcomesTopic": "o",
            }
        },
        "/kafka/eventsTopic",
    ),
    ({"service": {"port": 70000}}, "/service/port"),
    ({"persistence": {"size": "lots"}}, "/persistence/size"),
    ({"adminToken": {"value": "x", "existingSecret": "y"}}, "/adminToken/existingSecret"),
    ({"agent": {"url": "ftp://agent"}}, "/agent/url"),
    ({"policy": {"content": ""}}, "/policy"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"replicaCount": 3}, "replicaCount"),
    ({"networkPolicy": {"agentNamespace": "Not_A_Namespace"}}, "/networkPolicy/agentNamespace"),
    ({"networkPolicy": {"agentPodSelector": {"app": 1}}}, "/networkPolicy/agentPodSelector"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES)
def test_bad_values_are_rejected_by_the_schema(values: dict[str, Any], field: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values=values, name="shadow", namespace="ops")
    message = str(caught.value)
    assert "values don't meet the specifications of the schema" in message
    assert field in message, message


def test_schema_validation_catches_a_broken_manifest() -> None:
    docs = render(CHART)
    (deployment,) = by_kind(docs, "Deployment")
    sidecar(deployment["spec"]["template"]["spec"])["ports"][0]["containerPort"] = "http"
    with pytest.raises(AssertionError, match="containerPort"):
        validate([deployment])
    sidecar(deployment["spec"]["template"]["spec"])["ports"][0]["containerPort"] = 8750
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError, match="readinesProbe"):
        validate([deployment])
