"""shadow/metrics.py: label hygiene, and docs/metrics.md kept true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from shadow.demo import DEMO_POLICY
from shadow.metrics import OTHER, Metrics, reason_class
from shadow.policy import parse_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), parse_policy(DEMO_POLICY, source="demo policy"))


def exported(m: Metrics) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name as scraped -> (type, label names), for every metric the object defines."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in vars(m).values():
        if isinstance(value, MetricWrapperBase):
            kind = str(value._type)
            name = value._name + ("_total" if kind == "counter" else "")
            out[name] = (kind, tuple(value._labelnames))
    return out


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = re.findall(r"^\| `(shadow_\w+)` \| (\w+) \| ([^|]*) \|", DOC.read_text(), re.M)
    return {name: (kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    assert documented() == exported(metrics())


def test_label_values_stay_bounded() -> None:
    m = metrics()
    assert m.task_label("refund_request") == "refund_request"
    assert m.task_label("attacker-chosen-123") == OTHER
    assert m.field_label("refund_request", "action") == "action"
    assert m.field_label("refund_request", "actions") == "actions"
    assert m.field_label("refund_request", "payload.anything") == OTHER
    assert m.field_label("nope", "action") == OTHER
    assert m.source_label("file:/data/x.jsonl") == "file"
    assert m.source_label("kafka://b:9092?events=e") == "kafka"
    assert m.source_label("http") == "http"


def test_dead_letter_reasons_map_to_a_fixed_set() -> None:
    assert reason_class("conflicting duplicate: event r-1 already stored") == "conflict"
    assert reason_class("invalid JSON at line 3") == "malformed"
    assert reason_class("unknown task type 'x'; configured: a") == "unknown_task_type"
    assert reason_class("something nobody anticipated") == "invalid"


def test_rejections_count_per_kind_source_and_reason() -> None:
    m = metrics()
    m.rejected("event", "http", "malformed")
    m.rejected("event", "kafka://b:9092", "invalid", 3)
    m.rejected("outcome", "http", "conflict", 0)  # nothing to count: no series
    value = m.registry.get_sample_value
    assert (
        value(
            "shadow_ingest_rejected_total",
            {"kind": "event", "source": "http", "reason": "malformed"},
        )
        == 1
    )
    assert (
        value(
            "shadow_ingest_rejected_total",
            {"kind": "event", "source": "kafka", "reason": "invalid"},
        )
        == 3
    )
    assert (
        value(
            "shadow_ingest_rejected_total",
            {"kind": "outcome", "source": "http", "reason": "conflict"},
        )
        is None
    )
