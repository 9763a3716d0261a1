"""Dashboards and alerting as code for the shadow sidecar.

- :mod:`dashboards.generate` builds the Grafana dashboards with ``grafana-foundation-sdk``
  and writes their JSON (``dashboards/grafana/*.json``, committed; ``make dashboards``).
- ``dashboards/prometheus/shadow-rules.yaml``: recording rules and alerts, with promtool unit
  tests in ``shadow-rules.test.yaml``.
- ``dashboards/provisioning/``: datasource and dashboard-provider files for a plain Grafana.

Every metric name used here is defined in :mod:`shadow.metrics`.
"""
