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
  reason, Kafka consumer lag and uncommitted messages, rows deleted by retention.
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

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.agreement import agreement
from dashboards.pipeline_health import pipeline_health

__all__ = ["DASHBOARDS", "ROOT", "build_all", "main", "render_all", "write_all"]

ROOT = Path(__file__).resolve().parent.parent
RULES = Path("dashboards/prometheus/shadow-rules.yaml")
CHART_FILES = Path("helm/shadow-sidecar/files")


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
