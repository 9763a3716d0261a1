"""shadow/metrics.py: label hygiene, and docs/metrics.md kept true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from shadow.demo import DEMO_POLICY
from shadow.errors import Reason
from shadow.metrics import (
    DEAD_LETTER_REASONS,
    OTHER,
    REPEAT_SKIPS,
    Metrics,
    auth_refusals,
    trace_counters,
)
from shadow.noise import Bounded, NoiseFloor
from shadow.policy import parse_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), parse_policy(DEMO_POLICY, source="demo policy"))


def exported(m: Metrics) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name as scraped -> (type, label names), for every metric the object defines, and
    those the app defines before the store opens (credential refusals, tracing)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    tracing = trace_counters(CollectorRegistry())
    early = [auth_refusals(CollectorRegistry()), tracing.exported, tracing.dropped]
    for value in [*vars(m).values(), *early]:
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


def test_dead_letters_are_counted_under_their_code_and_exported_at_zero() -> None:
    m = metrics()
    value = m.registry.get_sample_value
    for source in ("http", "file", "kafka"):
        for reason in DEAD_LETTER_REASONS:
            labels = {"source": source, "reason": reason.value}
            assert value("shadow_dead_letters_total", labels) == 0
    m.dead_letter("file:/data/in.jsonl", Reason.INVALID)
    assert value("shadow_dead_letters_total", {"source": "file", "reason": "invalid"}) == 1
    assert value("shadow_dead_letters_total", {"source": "file", "reason": "too_large"}) == 0


def test_rejections_count_per_kind_source_and_reason() -> None:
    m = metrics()
    m.rejected("event", "http", Reason.MALFORMED)
    m.rejected("event", "kafka://b:9092", Reason.INVALID, 3)
    m.rejected("outcome", "http", Reason.CONFLICT, 0)  # nothing to count: no series
    m.rejected("attacker-chosen", "http", Reason.BAD_KIND)
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
    assert (
        value(
            "shadow_ingest_rejected_total",
            {"kind": "unknown", "source": "http", "reason": "bad_kind"},
        )
        == 1
    )


def test_the_noise_floor_gauges_have_no_series_until_measured() -> None:
    policy = parse_policy(
        "task_types:\n  refund:\n    repeat_rate: 0.1\n  other_task: {}\n", source="t"
    )
    m = Metrics(CollectorRegistry(), policy)
    value = m.registry.get_sample_value
    # Skipped repeats are exported at 0 for a task type that repeats, none for one that doesn't.
    for reason in REPEAT_SKIPS:
        labels = {"task_type": "refund", "reason": reason}
        assert value("shadow_repeats_skipped_total", labels) == 0
        assert value("shadow_repeats_skipped_total", {**labels, "task_type": "other_task"}) is None
    m.repeat_skipped("refund", "queue_full")
    m.repeat_skipped("attacker-chosen", "queue_full")
    assert (
        value("shadow_repeats_skipped_total", {"task_type": "refund", "reason": "queue_full"}) == 1
    )
    assert value("shadow_repeats_skipped_total", {"task_type": OTHER, "reason": "queue_full"}) == 1
    nothing = Bounded.of(0, 0, 0.05)
    measured = Bounded.of(7, 10, 0.05)
    noisy = ({"field": "reason", "n": 25, "human_disagree": 8, "agent_disagree": 6},)
    m.noise_floor({"refund": NoiseFloor(measured, nothing, nothing, noisy)})
    for bound, expected in (
        ("estimate", 0.7),
        ("lower", measured.lower),
        ("upper", measured.upper),
    ):
        labels = {"task_type": "refund", "bound": bound}
        assert value("shadow_human_ceiling", labels) == pytest.approx(expected)
        assert value("shadow_self_consistency", labels) is None  # n 0: nothing measured
    assert value("shadow_noisy_fields", {"task_type": "refund"}) == 1
    # A floor read without the second opinions (none left for the current rules): removed.
    m.noise_floor(
        {
            "refund": NoiseFloor(nothing, measured, nothing),
            "unknown": NoiseFloor(measured, measured, measured),
        }
    )
    assert value("shadow_human_ceiling", {"task_type": "refund", "bound": "lower"}) is None
    assert value("shadow_self_consistency", {"task_type": "refund", "bound": "estimate"}) == 0.7
    assert value("shadow_noisy_fields", {"task_type": "refund"}) == 0
    assert value("shadow_human_ceiling", {"task_type": "unknown", "bound": "lower"}) is None
