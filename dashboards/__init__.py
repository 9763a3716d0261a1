"""Dashboards and alerting as code for the shadow sidecar.

- :mod:`dashboards.generate` writes the Grafana dashboards' JSON (``dashboards/grafana/*.json``,
  committed; ``make dashboards``), built with ``grafana-foundation-sdk`` in
  :mod:`dashboards.agreement` and :mod:`dashboards.pipeline_health` from the pieces in
  :mod:`dashboards.panels`.
- ``dashboards/prometheus/shadow-rules.yaml``: recording rules and alerts, with promtool unit
  tests in ``shadow-rules.test.yaml``.
- ``dashboards/provisioning/``: datasource and dashboard-provider files for a plain Grafana.

Every metric name used here is defined in :mod:`shadow.metrics`.
"""
