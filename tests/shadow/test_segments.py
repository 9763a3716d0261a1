"""Evidence per segment (shadow.segments, and its use in shadow.promotion and the ladder):
a promotion needs every declared segment to pass on its own (``per_segment``), a segment below
the current level's gate demotes (``each``) or is routed to humans while the others keep the
level (``route``), the agreement document and the metrics keep the declared segments and
``other`` only, however many segment names arrive, through the real app and store."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shadow import promotion
from shadow.model import Comparison, Evidence, Level, Verdict, WorkEvent
from shadow.policy import TaskPolicy, parse_policy
from shadow.promotion import LadderState, Move
from shadow.segments import below_gate, promotion_check
from shadow.sources.publish import comparison_from_json, comparison_json
from shadow.stats import lower_bound
from shadow.store import Store
from tests.conftest import FakeClock, StoreFactory
from tests.shadow.conftest import (
    AgentServerFactory,
    Sidecar,
    SidecarFactory,
    metric,
    secret_auth,
    write_tokens,
)
from tests.shadow.test_api_autonomy import answer
from tests.shadow.test_store import AGENT, TASK, dec, join_all, oc

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def task(per_segment: str = "each", mode: str = "auto") -> TaskPolicy:
    text = f"""
task_types:
  refund:
    segments: [eu, us]
    autonomy:
      ceiling: L2
      mode: {mode}
      gates:
        L1: {{agreement: 0.80, min_samples: 50, per_segment: {per_segment}}}
        L2: {{agreement: 0.90, min_samples: 100, per_segment: {per_segment}}}
"""
    return parse_policy(text).task_types["refund"]


def ev(n: int, agree: int) -> Evidence:
    return Evidence("refund", "v1", n, agree, 0, 0)


def decide(level: Level, total: Evidence, segments: dict[str, Evidence], t: TaskPolicy) -> Any:
    state = LadderState("refund", level, "v1")
    return promotion.decide(state, {"v1": total}, "v1", t, frozen=False, now=NOW, segments=segments)


# -- pure ---------------------------------------------------------------------------------------


def test_a_promotion_needs_every_declared_segment_to_pass_on_its_own() -> None:
    t = task()
    gate = t.autonomy.gates[Level.L1]
    good = {"eu": ev(200, 198), "us": ev(200, 197)}
    assert promotion_check(gate, t, good, 0.05).met
    step = decide(Level.L0, ev(400, 395), good, t)
    assert step.move is Move.PROMOTE
    # Simpson's paradox: fine overall, one segment far below the gate.
    bad = {"eu": ev(380, 379), "us": ev(60, 36)}
    step = decide(Level.L0, ev(440, 415), bad, t)
    assert step.move is Move.STAY
    assert "segment us: lower bound" in step.reason
    assert "segment eu" not in step.reason
    # A declared segment without min_samples holds the promotion, and says so.
    thin = {"eu": ev(400, 399), "us": ev(20, 20)}
    step = decide(Level.L0, ev(420, 419), thin, t)
    assert step.move is Move.STAY
    assert "segment us: n 20 < min_samples 50" in step.reason
    # Undeclared segments ("other") never hold a promotion on their own.
    other = {**good, "other": ev(10, 1)}
    assert decide(Level.L0, ev(410, 396), other, t).move is Move.PROMOTE


def test_the_segment_check_uses_each_segments_own_lower_bound_at_alpha() -> None:
    t = task()
    gate = t.autonomy.gates[Level.L1]
    for agree in range(40, 61):
        found = {"eu": ev(60, agree), "us": ev(500, 495)}
        expected = lower_bound(agree, 60, 0.05) >= gate.agreement
        assert promotion_check(gate, t, found, 0.05).met is expected, agree


def test_a_segment_below_the_current_gate_demotes_with_each() -> None:
    t = task("each")
    at_l2 = {"eu": ev(900, 890), "us": ev(300, 200)}
    step = decide(Level.L2, ev(1200, 1090), at_l2, t)
    assert step.move is Move.DEMOTE
    assert step.after.level == Level.L0  # us is below the L1 gate too
    assert "segment below the L2 gate 0.9: us upper bound" in step.reason
    mild = {"eu": ev(900, 890), "us": ev(2000, 1740)}  # below 0.90, plausibly above 0.80
    step = decide(Level.L2, ev(2900, 2630), mild, t)
    assert step.move is Move.DEMOTE
    assert step.after.level == Level.L1


def test_demotion_splits_alpha_across_the_segments_it_watches() -> None:
    t = task("each")
    gate = t.autonomy.gates[Level.L2]
    one = {"eu": ev(2000, 1740)}
    two = {"eu": ev(2000, 1740), "us": ev(300, 299)}
    assert set(below_gate(gate, t, one, 0.05)) == {"eu"}
    # With two segments watched each bound is at alpha/2: wider, so it takes more to alarm.
    assert below_gate(gate, t, two, 0.05)["eu"] > below_gate(gate, t, one, 0.05)["eu"]


def test_route_mode_never_demotes_for_a_segment() -> None:
    t = task("route")
    step = decide(Level.L2, ev(1200, 1090), {"eu": ev(900, 890), "us": ev(300, 200)}, t)
    assert step.move is not Move.DEMOTE


@pytest.mark.parametrize(
    ("segments", "says"),
    [
        ("[eu, eu]", "listed twice"),
        ("[other]", "undeclared"),
        ("[' eu']", "not a segment name"),
        ("eu", "expected a list"),
    ],
)
def test_a_wrong_segments_key_is_named(segments: str, says: str) -> None:
    text = f"task_types:\n  t:\n    segments: {segments}\n"
    with pytest.raises(Exception, match=says):
        parse_policy(text)


def test_per_segment_needs_declared_segments_and_a_known_value() -> None:
    gates = "{L1: {agreement: 0.9, min_samples: 1, per_segment: %s}}"
    with pytest.raises(Exception, match="needs declared segments"):
        parse_policy(f"task_types:\n  t:\n    autonomy:\n      gates: {gates % 'each'}\n")
    with pytest.raises(Exception, match="use each or route"):
        parse_policy(
            f"task_types:\n  t:\n    segments: [eu]\n    autonomy:\n      gates: {gates % 'some'}\n"
        )


# -- through the real app ------------------------------------------------------------------------

POLICY = """
task_types:
  refund:
    segments: [eu, us]
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
    autonomy:
      ceiling: L2
      mode: propose
      audit_rate: 1.0
      drift: {threshold: 100}   # this test is about segments: no drift demotion
      gates:
        L1: {agreement: 0.80, min_samples: 40, per_segment: %s}
        L2: {agreement: 0.90, min_samples: 80, per_segment: %s}
"""


auth = secret_auth


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    roles = {"ops": ["operator", "approver"], "host": ["host"], "ingest": ["ingest"]}
    return write_tokens(tmp_path / "tokens.yaml", {n: {"roles": r} for n, r in roles.items()})


async def start(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path, mode: str
) -> Sidecar:
    agent = await agent_server(answer)
    return await sidecar(
        policy=POLICY % (mode, mode),
        agent=agent.url,
        tokens_file=tokens_file,
        admin_token=None,
        metrics_open=True,
    )


async def feed(sc: Sidecar, prefix: str, segment: str | None, count: int, wrong: int) -> None:
    ids = [f"{prefix}-{i}" for i in range(count)]
    events = [
        {
            "event_id": e,
            "task_type": "refund",
            "payload": {"expect": {"action": "approve"}},
            **({"segment": segment} if segment is not None else {}),
        }
        for e in ids
    ]
    outcomes = [
        {"event_id": e, "decision": {"action": "deny" if k < wrong else "approve"}}
        for k, e in enumerate(ids)
    ]
    for path, records in (("/v1/events", events), ("/v1/outcomes", outcomes)):
        res = await sc.post(path, json_body=records, headers=auth("ingest"))
        assert res.status == 202, res.body
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()


async def doc(sc: Sidecar) -> dict[str, Any]:
    res = await sc.get("/v1/agreement", headers=auth("ops"))
    assert res.status == 200, res.body
    return dict(res.body["task_types"]["refund"])


async def test_the_agreement_document_and_metrics_keep_declared_segments_and_other(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file, "each")
    await feed(sc, "eu", "eu", 50, 1)
    await feed(sc, "us", "us", 30, 6)
    # A flood of undeclared segment names, and items with none: all of them are "other".
    for i in range(12):
        await feed(sc, f"x{i}", f"flood-{i}", 2, 0)
    await feed(sc, "none", None, 3, 0)
    body = await doc(sc)
    segments = body["segments"]
    assert list(segments) == ["eu", "us", "other"]
    assert (segments["eu"]["n"], segments["eu"]["agree"]) == (50, 49)
    assert (segments["us"]["n"], segments["us"]["agree"]) == (30, 24)
    assert (segments["other"]["n"], segments["other"]["agree"]) == (27, 27)
    assert set(segments["eu"]) >= {"n", "agree", "agreement", "lower", "upper", "critical"}
    assert body["n"] == 107
    # Overall the gate is met, but us holds the promotion (n 30 < 40).
    assert body["level"] == "L0"
    assert body["proposal"] is None
    samples = await sc.metrics()
    labels = {dict(key[1])["segment"] for key in samples if key[0] == "shadow_segment_comparisons"}
    assert metric(samples, "shadow_segment_comparisons", task_type="refund", segment="us") == 30
    assert len(labels) == 3  # eu, us, other: bounded


async def test_route_mode_sends_a_failing_segment_to_humans_and_keeps_the_level(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> None:
    sc = await start(sidecar, agent_server, tokens_file, "route")
    await feed(sc, "eu", "eu", 120, 1)
    await feed(sc, "us", "us", 120, 3)
    body = await doc(sc)
    assert body["proposal"]["to_level"] == "L1"
    res = await sc.post("/v1/autonomy/refund/approve", json_body={"to": "L1"}, headers=auth("ops"))
    assert res.status == 200, res.body
    # us goes bad (audited blind items: audit_rate 1.0 keeps them evidence at L1).
    await feed(sc, "us-bad", "us", 80, 60)
    body = await doc(sc)
    assert body["level"] == "L1"  # route mode: the others keep the level
    assert body["segments"]["us"]["routed_to_humans"] is True
    assert body["segments"]["eu"]["routed_to_humans"] is False
    routed = await sc.get("/v1/route/refund?event_id=n-1&segment=us", headers=auth("host"))
    assert routed.status == 200, routed.body
    assert routed.body["segment_routed"] is True
    assert (routed.body["handler"], routed.body["handled_by"]) == ("human", "blind")
    kept = await sc.get("/v1/route/refund?event_id=n-2&segment=eu", headers=auth("host"))
    assert kept.body["segment_routed"] is False
    bad = await sc.get("/v1/route/refund?event_id=n-3&segment=e%01u", headers=auth("host"))
    assert bad.status == 400
    history = await sc.pipeline.store.audit_log(task_type="refund", limit=50)
    entries = [e for _, e in history if e.action == "segment_routing"]
    assert len(entries) == 1
    assert entries[0].evidence["routed"] == ["us"]
    samples = await sc.metrics()
    assert metric(samples, "shadow_segment_routed", task_type="refund", segment="us") == 1


async def test_segment_evidence_outlives_the_events_retention_deletes(
    store: Store, clock: FakeClock
) -> None:
    t0 = clock()
    events = [
        WorkEvent(f"e{i}", TASK, {"amount": 1}, segment="eu" if i < 3 else "mars") for i in range(5)
    ]
    await store.put_events(events, source="k", now=t0)
    await store.put_decisions([(dec(f"e{i}"), TASK) for i in range(5)], now=t0)
    await store.put_outcomes([oc(f"e{i}") for i in range(5)], source="k", now=t0)
    await join_all(store, t0)
    declared = {TASK: ("eu", "us")}
    before = await store.segment_evidence(declared)
    clock.advance(days=3)
    purged = await store.purge(cutoff=clock() - timedelta(days=1))
    assert purged.events == 5
    after = await store.segment_evidence(declared)
    assert after == before
    counts = {k: v.n for k, v in after[TASK][AGENT].items()}
    assert counts == {"eu": 3, "other": 2}


async def test_a_promoter_that_never_saw_the_events_keeps_the_segments_of_the_topic(
    store: Store, store_factory: StoreFactory, clock: FakeClock
) -> None:
    """Kafka replicas publish their comparisons and the promoter folds them into its own
    store, which has none of the events: each comparison carries its segment (and trace id)
    on the topic, so the promoter's per-segment evidence is the replica's."""
    t0 = clock()
    events = [
        WorkEvent(f"e{i}", TASK, {"amount": 1}, segment="eu" if i < 3 else "us") for i in range(5)
    ]
    await store.put_events(events, source="k", now=t0)
    await store.put_decisions([(dec(f"e{i}"), TASK) for i in range(5)], now=t0)
    await store.put_outcomes([oc(f"e{i}") for i in range(5)], source="k", now=t0)
    await join_all(store, t0)
    outbox = await store.unpublished_comparisons()
    assert {c.segment for c in outbox} == {"eu", "us"}
    records = [json.loads(json.dumps(comparison_json(c))) for c in outbox]
    assert all("segment" in r and "trace_id" in r for r in records)
    promoter = await store_factory("promoter.duckdb")
    await promoter.put_comparisons(
        [comparison_from_json(r) for r in records], now=t0, actor="promoter", published=True
    )
    declared = {TASK: ("eu", "us")}
    assert await promoter.segment_evidence(declared) == await store.segment_evidence(declared)
    assert await promoter.count("events") == 0


async def test_a_rescore_after_retention_keeps_the_segment(store: Store, clock: FakeClock) -> None:
    t0 = clock()
    await store.put_events([WorkEvent("e1", TASK, {"amount": 1}, segment="eu")], source="k", now=t0)
    await store.put_decisions([(dec("e1"), TASK)], now=t0)
    await store.put_outcomes([oc("e1")], source="k", now=t0)
    await join_all(store, t0)
    clock.advance(days=3)
    await store.purge(cutoff=clock() - timedelta(days=1))
    (kept,) = await store.unpublished_comparisons()
    # The joiner's comparison carries no segment: the store keeps the one it had.
    await store.put_comparisons([replace(kept, segment=None)], now=clock())
    evidence = await store.segment_evidence({TASK: ("eu",)})
    assert {k: v.n for k, v in evidence[TASK][AGENT].items()} == {"eu": 1}


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("segment", "e\x01u", "control characters"),
        ("segment", "", "non-empty"),
        ("segment", 7, "non-empty string"),
        ("segment", "x" * 10_000, "too long"),
        ("trace_id", "not-a-trace", "32 lowercase hex"),
        ("trace_id", "A" * 32, "32 lowercase hex"),
        ("trace_id", 12, "32 lowercase hex"),
    ],
)
def test_a_hostile_segment_or_trace_id_on_the_topic_is_refused(
    field: str, value: object, says: str
) -> None:
    record = comparison_json(Comparison("e1", TASK, AGENT, Verdict.AGREE, (), False, "h"))
    with pytest.raises(ValueError, match=says):
        comparison_from_json({**record, field: value})


def test_records_from_sidecars_before_the_segment_still_fold() -> None:
    record = comparison_json(Comparison("e1", TASK, AGENT, Verdict.AGREE, (), False, "h"))
    del record["segment"], record["trace_id"]
    c = comparison_from_json(record)
    assert (c.segment, c.trace_id) == (None, None)
