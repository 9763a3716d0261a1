"""Named credentials in the Helm chart (``auth``; docs/api.md "Credentials and roles").

Rendered offline with Helm's Go SDK (``helm-python-sdk``) and validated against the
Kubernetes schemas as in test_chart.py:

- the tokens file from an existing Secret, or ``auth.tokens`` rendered into one (sha256
  digests only: no secret anywhere in what the chart renders), mounted read-only as a
  directory (never a ``subPath``, which Kubernetes does not update) and named by
  ``SHADOW_TOKENS_FILE``; ``auth.metricsOpen`` as ``SHADOW_METRICS_OPEN``;
- the rendered file read back by the sidecar's own parser, and the rendered env by its
  settings loader;
- the ServiceMonitor with a tokens file: a viewer token from ``serviceMonitor.bearerTokenSecret``
  or ``auth.metricsOpen``, else refused (by the schema, and without it by the template);
- bad values refused by ``values.schema.json`` naming the field; the simple mode unchanged.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from shadow.config import load_settings
from shadow.roles import Credential, Keyring, digest, parse_tokens
from tests.helm.test_chart import (
    CHART,
    Manifest,
    by_kind,
    check_pod,
    pod_specs,
    render,
    sidecar,
    validate,
)

pytestmark = pytest.mark.slow  # renders the chart with Helm

TOKENS_DIR = "/etc/shadow-auth"
TOKENS_PATH = f"{TOKENS_DIR}/tokens.yaml"
DIGEST = digest("not-a-real-secret")


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def tokens_volume(spec: Manifest) -> Manifest:
    """The tokens volume and its mount, checked the way the sidecar needs them: the whole
    directory, read-only, no subPath, holding tokens.yaml at the path SHADOW_TOKENS_FILE
    names."""
    c = sidecar(spec)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "shadow-tokens"]
    assert mount == {"name": "shadow-tokens", "mountPath": TOKENS_DIR, "readOnly": True}
    (volume,) = [v for v in spec["volumes"] if v["name"] == "shadow-tokens"]
    (item,) = volume["secret"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == TOKENS_PATH
    assert env_of(c)["SHADOW_TOKENS_FILE"] == {"name": "SHADOW_TOKENS_FILE", "value": TOKENS_PATH}
    return dict(volume["secret"])


def rendered_text(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=values, name="shadow", namespace="ops")
    return "\n".join(out.values())


def test_tokens_file_from_an_existing_secret() -> None:
    values = {
        "auth": {"tokensFile": {"existingSecret": "ops-tokens", "existingSecretKey": "roles"}}
    }
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == []
    docs = render(CHART, values)
    validate(docs)
    assert by_kind(docs, "Secret") == []  # the operator's Secret is used, not created
    (spec,) = pod_specs(docs)
    check_pod(spec, docs)
    assert tokens_volume(spec) == {
        "secretName": "ops-tokens",
        "items": [{"key": "roles", "path": "tokens.yaml"}],
    }
    env = env_of(sidecar(spec))
    assert "SHADOW_METRICS_OPEN" not in env
    assert "SHADOW_ADMIN_TOKEN" not in env


def test_inline_tokens_are_digests_in_a_secret_and_no_secret_anywhere(tmp_path: Path) -> None:
    plain = {"ci-viewer": secrets.token_urlsafe(32), "refunds": secrets.token_urlsafe(32)}
    tokens = [
        {"name": "ci-viewer", "roles": ["viewer"], "sha256": digest(plain["ci-viewer"])},
        {
            "name": "refunds",
            "roles": ["approver", "operator"],
            "sha256": digest(plain["refunds"]),
            "task_types": ["refund_request"],
        },
    ]
    values = {"auth": {"tokens": tokens}}
    docs = render(CHART, values)
    validate(docs)
    (secret,) = by_kind(docs, "Secret")
    (spec,) = pod_specs(docs)
    check_pod(spec, docs)
    assert tokens_volume(spec) == {
        "secretName": secret["metadata"]["name"],
        "items": [{"key": "tokens.yaml", "path": "tokens.yaml"}],
    }
    assert set(secret["data"]) == {"tokens.yaml"}
    text = base64.b64decode(secret["data"]["tokens.yaml"]).decode()
    assert parse_tokens(yaml.safe_load(text), "rendered") == {
        tokens[0]["sha256"]: Credential("ci-viewer", frozenset({"viewer"})),
        tokens[1]["sha256"]: Credential(
            "refunds", frozenset({"approver", "operator"}), frozenset({"refund_request"})
        ),
    }
    # The file as mounted: the sidecar knows each secret by its digest alone.
    (tmp_path / "tokens.yaml").write_text(text)
    keyring = Keyring(tokens_file=tmp_path / "tokens.yaml")
    found = keyring.identify(plain["refunds"])
    assert found is not None
    assert found.name == "refunds"
    assert keyring.identify(DIGEST) is None  # a digest is not a credential
    # The chart was given digests only, and no secret turns up in anything it renders.
    everything = rendered_text(values)
    for value in plain.values():
        assert value not in everything
        assert base64.b64encode(value.encode()).decode()[:40] not in everything


def test_the_sidecar_reads_the_rendered_env(monkeypatch: pytest.MonkeyPatch) -> None:
    values: dict[str, Any] = {
        "auth": {"tokens": [{"name": "a", "roles": ["viewer"], "sha256": DIGEST}]}
    }
    for metrics_open in (False, True):
        values["auth"]["metricsOpen"] = metrics_open
        (spec,) = pod_specs(render(CHART, values))
        with monkeypatch.context() as env:
            for name in [n for n in os.environ if n.startswith("SHADOW_")]:
                env.delenv(name)
            for item in sidecar(spec)["env"]:
                if "value" in item:
                    env.setenv(item["name"], item["value"])
            settings = load_settings()
        assert settings.tokens_file == Path(TOKENS_PATH)
        assert settings.metrics_open is metrics_open


def test_the_simple_mode_is_unchanged() -> None:
    for values in ({}, {"adminToken": {"value": "s3cret"}}):
        docs = render(CHART, values)
        (spec,) = pod_specs(docs)
        env = env_of(sidecar(spec))
        assert "SHADOW_TOKENS_FILE" not in env
        assert "SHADOW_METRICS_OPEN" not in env
        assert "shadow-tokens" not in {v["name"] for v in spec["volumes"]}
        assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == (
            ["shadow-shadow-sidecar"] if values else []
        )
    # An admin token next to a tokens file stays one more credential (named admin).
    docs = render(
        CHART,
        {"adminToken": {"value": "s3cret"}, "auth": {"tokensFile": {"existingSecret": "t"}}},
    )
    (spec,) = pod_specs(docs)
    env = env_of(sidecar(spec))
    assert env["SHADOW_TOKENS_FILE"]["value"] == TOKENS_PATH
    assert "secretKeyRef" in env["SHADOW_ADMIN_TOKEN"]["valueFrom"]


def test_the_tokens_file_in_a_parent_chart_and_in_scale_out(tmp_path: Path) -> None:
    parent = tmp_path / "billing-app"
    shutil.copytree(Path(__file__).resolve().parent / "parent-chart", parent)
    shutil.copytree(CHART, parent / "charts" / "shadow-sidecar")
    docs = render(parent, {"shadow-sidecar": {"auth": {"tokensFile": {"existingSecret": "t"}}}})
    validate(docs)
    (spec,) = pod_specs(docs)
    assert tokens_volume(spec)["secretName"] == "t"

    kafka = {
        "enabled": True,
        "bootstrap": "kafka:9092",
        "eventsTopic": "e",
        "outcomesTopic": "o",
        "comparisonsTopic": "c",
        "autonomyTopic": "a",
        "scaleOut": {"enabled": True},
    }
    docs = render(CHART, {"kafka": kafka, "auth": {"tokensFile": {"existingSecret": "t"}}})
    validate(docs)
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    assert len(workloads) == 2
    for workload in workloads:  # the promoter and every replica know the same credentials
        assert tokens_volume(workload["spec"]["template"]["spec"])["secretName"] == "t"


TOKENS = {"tokensFile": {"existingSecret": "ops-tokens"}}


def monitor_endpoint(values: dict[str, Any]) -> tuple[Manifest, dict[str, Any]]:
    docs = render(CHART, {"serviceMonitor": {"enabled": True}, **values})
    validate(docs)
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    (spec,) = pod_specs(docs)
    return endpoint, env_of(sidecar(spec))


def test_the_service_monitor_scrapes_with_a_viewer_token_or_open_metrics() -> None:
    bearer = {"name": "prometheus-viewer", "key": "token"}
    endpoint, env = monitor_endpoint(
        {"auth": TOKENS, "serviceMonitor": {"enabled": True, "bearerTokenSecret": bearer}}
    )
    assert endpoint["path"] == "/metrics"
    # authorization, not the deprecated bearerTokenSecret field of prometheus-operator.
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": bearer}
    assert "bearerTokenSecret" not in endpoint
    assert "SHADOW_METRICS_OPEN" not in env

    endpoint, env = monitor_endpoint({"auth": {**TOKENS, "metricsOpen": True}})
    assert "authorization" not in endpoint
    assert env["SHADOW_METRICS_OPEN"] == {"name": "SHADOW_METRICS_OPEN", "value": "true"}

    endpoint, env = monitor_endpoint({})  # the simple mode: /metrics is open as before
    assert "authorization" not in endpoint


def test_a_service_monitor_that_could_not_scrape_is_refused() -> None:
    values = {"auth": TOKENS, "serviceMonitor": {"enabled": True}}
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values=values, name="shadow", namespace="ops")
    assert "at '/serviceMonitor/bearerTokenSecret/name'" in str(caught.value)


def test_the_templates_refuse_what_the_schema_refuses_without_it(tmp_path: Path) -> None:
    chart = tmp_path / "shadow-sidecar"
    shutil.copytree(CHART, chart)
    (chart / "values.schema.json").unlink()
    one = {"name": "a", "roles": ["viewer"], "sha256": DIGEST}
    for values, needle in (
        (
            {"auth": TOKENS, "serviceMonitor": {"enabled": True}},
            "set serviceMonitor.bearerTokenSecret",
        ),
        (
            {"auth": {**TOKENS, "tokens": [one]}},
            "auth.tokensFile.existingSecret and auth.tokens: set one of them",
        ),
    ):
        with helm.Chart.load(chart) as loaded, pytest.raises(helm.HelmRenderError) as caught:
            loaded.render(values=values, name="shadow", namespace="ops")
        assert needle in str(caught.value)


def test_a_name_or_a_digest_used_twice_is_refused() -> None:
    """The schema cannot see it; the sidecar would refuse the file, so the template does."""
    first = {"name": "a", "roles": ["viewer"], "sha256": DIGEST}
    for second, needle in (
        ({**first, "sha256": digest("other")}, 'auth.tokens[1].name: "a" is used twice'),
        ({**first, "name": "b"}, 'auth.tokens[1].sha256: the same secret as "a"'),
    ):
        with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as caught:
            chart.render(values={"auth": {"tokens": [first, second]}}, name="s", namespace="o")
        assert needle in str(caught.value)


def entry(**changes: Any) -> dict[str, Any]:
    return {"auth": {"tokens": [{"name": "a", "roles": ["viewer"], "sha256": DIGEST, **changes}]}}


BAD_AUTH = [
    (entry(roles=["root"]), "/auth/tokens/0/roles/0"),
    (entry(roles=[]), "/auth/tokens/0/roles"),
    (entry(sha256="not-hex"), "/auth/tokens/0/sha256"),
    (entry(sha256=DIGEST.upper()), "/auth/tokens/0/sha256"),
    (entry(sha256=DIGEST[:63]), "/auth/tokens/0/sha256"),
    (entry(secret="hunter2"), "/auth/tokens/0"),  # a secret has no place in values
    (entry(name="has space"), "/auth/tokens/0/name"),
    (entry(task_types=[]), "/auth/tokens/0/task_types"),
    (entry(task_types=["no spaces"]), "/auth/tokens/0/task_types/0"),
    ({"auth": {**entry()["auth"], **TOKENS}}, "/auth/tokensFile/existingSecret"),
    ({"auth": {"metricsOpen": "yes"}}, "/auth/metricsOpen"),
    ({"auth": {"tokenFile": {}}}, "/auth"),
    ({"extraEnv": [{"name": "SHADOW_TOKENS_FILE", "value": "/x"}]}, "/extraEnv/0/name"),
    ({"extraEnv": [{"name": "SHADOW_METRICS_OPEN", "value": "true"}]}, "/extraEnv/0/name"),
    (
        {"serviceMonitor": {"bearerTokenSecret": {"name": "p", "key": ""}}},
        "/serviceMonitor/bearerTokenSecret/key",
    ),
]


@pytest.mark.parametrize(("values", "field"), BAD_AUTH)
def test_bad_auth_values_are_rejected_by_the_schema(values: dict[str, Any], field: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values=values, name="shadow", namespace="ops")
    message = str(caught.value)
    assert "values don't meet the specifications of the schema" in message
    assert f"at '{field}" in message, message


def test_install_notes_say_how_to_read_with_a_token() -> None:
    with helm.Chart.load(CHART) as chart:
        strict = chart.render(values={"auth": TOKENS}, name="shadow", namespace="ops")
        simple = chart.render(values={}, name="shadow", namespace="ops")
    notes = strict["shadow-sidecar/templates/NOTES.txt"]
    assert 'curl -s -H "Authorization: Bearer $SHADOW_TOKEN"' in notes
    assert f"the tokens file {TOKENS_PATH}, from secret/ops-tokens" in notes
    assert "No admin token" not in notes
    plain = simple["shadow-sidecar/templates/NOTES.txt"]
    assert "curl -s http://127.0.0.1:8750/v1/agreement" in plain
    assert "No admin token is configured" in plain
