"""helm/Dockerfile agrees with the chart and the repository (no Docker engine in the test
environment, so the image itself is not built here): multi-stage, runs as the non-root UID
the chart's securityContext names, copies only paths that exist and that its
``.dockerignore`` lets through, and its entry point is the ``shadow`` command the chart's
``args`` continue.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "helm" / "Dockerfile"
IGNORE = ROOT / "helm" / "Dockerfile.dockerignore"
VALUES = ROOT / "helm" / "shadow-sidecar" / "values.yaml"


def instructions() -> list[tuple[str, str]]:
    out = []
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_multi_stage_and_non_root() -> None:
    steps = instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith(" AS build")
    assert ("COPY", "--from=build /opt/shadow /opt/shadow") in steps
    users = [rest for word, rest in steps if word == "USER"]
    assert users == ["10001:10001"]
    values = yaml.safe_load(VALUES.read_text())
    assert values["securityContext"]["runAsUser"] == 10001
    assert values["podSecurityContext"]["fsGroup"] == 10001
    assert ("ENTRYPOINT", '["shadow"]') in steps


def test_copied_paths_exist_and_pass_the_dockerignore() -> None:
    allowed = {
        line[1:].rstrip("/") for line in IGNORE.read_text().splitlines() if line.startswith("!")
    }
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from" not in rest]
    sources = [s.rstrip("/") for rest in copies for s in rest.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "shadow", "replay"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source in allowed, source


def test_data_and_temp_paths_match_the_chart() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"SHADOW_DB=/var/lib/shadow/", text)
    assert "HOME=/tmp" in text
    assert 'VOLUME ["/var/lib/shadow"]' in text
