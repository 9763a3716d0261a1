"""The Prometheus rules pass ``promtool check rules`` and their unit tests
(``promtool test rules dashboards/prometheus/shadow-rules.test.yaml``), and every alert
links to a runbook section that exists in docs/operating.md.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.conftest import require_tool
from tests.dashboards.promql import ROOT, RULES_FILE, RULES_TEST_FILE

OPERATING = ROOT / "docs" / "operating.md"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES_FILE), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 28 rules found" in done.stdout


def test_promtool_unit_tests() -> None:
    done = promtool("test", "rules", RULES_TEST_FILE.name, cwd=RULES_TEST_FILE.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = RULES_FILE.read_text().replace(
        "expr: task_type:shadow_agent_errors:ratio_rate5m > 0.05",
        "expr: task_type:shadow_agent_errors:ratio_rate5m > > 0.05",
    )
    assert broken != RULES_FILE.read_text()
    (tmp_path / "rules.yaml").write_text(broken)
    done = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert done.returncode != 0
    assert "ShadowAgentErrorRate" in done.stdout + done.stderr or "parse" in done.stderr


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_a_runbook_section() -> None:
    doc = yaml.safe_load(RULES_FILE.read_text())
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "ShadowLowerBoundNearGate",
        "ShadowAutonomyDemoted",
        "ShadowCriticalMissAtL3",
        "ShadowAgentErrorRate",
        "ShadowKafkaLagGrowing",
        "ShadowDeadLetterSpike",
        "ShadowToolApprovalsWaiting",
        "ShadowEvidenceInvalid",
        "ShadowBudgetExceeded",
        "ShadowSidecarDown",
    }
    anchors = {
        _anchor(line.lstrip("#"))
        for line in OPERATING.read_text().splitlines()
        if line.startswith("#")
    }
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path.endswith("/docs/operating.md"), url
        assert anchor == alert["alert"].lower(), url
        assert anchor in anchors, f"docs/operating.md has no section for {alert['alert']}"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["description"]
