"""shadow/tracing.py and shadow/otlp.py: one trace per case, through the real app, a real HTTP
agent that calls tools through the gateway (the official MCP SDK's client, a real upstream)
and a real OTLP/HTTP receiver on loopback that decodes every request with the official
protobuf classes (tests/otlp_sink.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shadow.app import build_app
from shadow.errors import ConfigError
from shadow.keys import PIPELINE, REGISTRY
from shadow.metrics import trace_counters
from shadow.model import WorkEvent
from shadow.otlp import STATUS_ERROR
from shadow.policy import parse_policy
from shadow.server import Listener
from shadow.tracing import (
    EXPORTS_IN_FLIGHT,
    NO_TRACING,
    OtlpTracer,
    TracingConfig,
    build_tracer,
    case_ids,
)
from tests.otlp_sink import ReceivedSpan, Sink, otlp_sink
from tests.shadow.conftest import (
    POLICY,
    AgentServerFactory,
    Reply,
    Sidecar,
    SidecarFactory,
    clean_settings,
)

PHOENIX_LIKE = "http://tracing.example/projects/shadow/traces/{trace_id}"


def otel(endpoint: str, **more: str) -> dict[str, str]:
    """The process environment plus tracing to ``endpoint``, exported every 20 ms."""
    return {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "20",
        "OTEL_SERVICE_NAME": "shadow-test",
        **more,
    }


async def wait_for(check: Any, what: str) -> None:
    """Poll ``check()`` until true; a bound against hangs (30 s), not a timing."""
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def case_and_outcome(
    sc: Sidecar, event_id: str = "r-1", amount: float = 42.5, task_type: str = "refund"
) -> None:
    event = {"event_id": event_id, "task_type": task_type, "payload": {"order": "o-1"}}
    outcome = {
        "event_id": event_id,
        "decision": {"action": "approve"},
        "actions": [{"tool": "issue_refund", "args": {"order_id": "o-1", "amount": amount}}],
    }
    assert (await sc.post("/v1/events", json_body=event)).status == 202
    assert (await sc.post("/v1/outcomes", json_body=outcome)).status == 202
    await sc.pipeline.drain()


def metric(sc: Sidecar, name: str, labels: Mapping[str, str] | None = None) -> float:
    return sc.app[REGISTRY].get_sample_value(name, dict(labels or {})) or 0.0


def of_trace(sink: Sink, trace_id: str) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = {}
    for s in sink.spans:
        if s.trace_id == trace_id:
            out.setdefault(s.name, []).append(s)
    return out


# -- configuration ------------------------------------------------------------------------------


def test_tracing_is_off_unless_an_otlp_endpoint_is_set() -> None:
    counters = trace_counters(CollectorRegistry())
    assert build_tracer({}, counters) is NO_TRACING
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert build_tracer({**on, "OTEL_SDK_DISABLED": "TRUE"}, counters) is NO_TRACING
    assert build_tracer({**on, "OTEL_TRACES_EXPORTER": "none"}, counters) is NO_TRACING
    # Other OTEL_* settings alone do not turn it on.
    quiet = {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}
    assert build_tracer(quiet, counters) is NO_TRACING
    assert isinstance(build_tracer(on, counters), OtlpTracer)
    assert NO_TRACING.trace_id("r-1") is None
    assert NO_TRACING.traceparent("r-1") is None


def test_the_standard_variables_configure_the_exporter() -> None:
    config = TracingConfig.from_environ(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": (
                "authorization=Basic%20abc,x-langfuse-ingestion-version=4"
            ),
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_RESOURCE_ATTRIBUTES": "service.name=billing,openinference.project.name=shadow",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
        }
    )
    assert config is not None
    assert config.endpoint == "http://collector:4318/v1/traces"
    assert config.headers == {"authorization": "Basic abc", "x-langfuse-ingestion-version": "4"}
    assert config.timeout == 2.5
    assert config.gzip
    assert config.service_name == "billing"
    assert config.resource["openinference.project.name"] == "shadow"
    assert config.ratio == 0.25
    assert (config.max_queue, config.batch) == (100, 10)
    traces = TracingConfig.from_environ(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://cloud.example/api/public/otel/v1/traces",
            "OTEL_SERVICE_NAME": "named",
        }
    )
    assert traces is not None
    assert traces.endpoint == "https://cloud.example/api/public/otel/v1/traces"
    assert traces.service_name == "named"
    assert (traces.timeout, traces.gzip, traces.ratio, traces.batch) == (10.0, False, 1.0, 512)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "TRACES_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "SAMPLER_ARG"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"}, "BATCH_SIZE"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "CERTIFICATE"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(extra: dict[str, str], named: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", **extra}
    with pytest.raises(ConfigError, match=named):
        TracingConfig.from_environ(env)


def test_a_bad_header_is_refused_without_repeating_its_value() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Basic%20s3cret,Bearer-t0ken",
    }
    with pytest.raises(ConfigError) as err:
        TracingConfig.from_environ(env)
    assert "OTEL_EXPORTER_OTLP_HEADERS: entry 2" in str(err.value)
    assert "s3cret" not in str(err.value)
    assert "t0ken" not in str(err.value)


def test_case_ids_follow_the_documented_derivation() -> None:
    d = hashlib.sha256(b"shadow-trace/1\0shadow-sidecar\0r-1029").digest()
    assert case_ids("shadow-sidecar", "r-1029") == (d[:16], d[16:24], d[24:32])
    assert case_ids("other", "r-1029")[0] != d[:16]


def test_a_ratio_sampler_keeps_or_drops_a_case_whole() -> None:
    counters = trace_counters(CollectorRegistry())
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    tracer = build_tracer(env, counters)
    kept = [e for e in (f"e-{i}" for i in range(400)) if tracer.trace_id(e) is not None]
    assert 140 < len(kept) < 260
    for e in (f"e-{i}" for i in range(400)):
        parent = tracer.traceparent(e)
        assert parent is not None
        assert parent.endswith("-01") == (e in kept)  # the agent is told the same


# -- off ------------------------------------------------------------------------------------------


async def test_off_no_traceparent_no_trace_id_no_spans(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    async with otlp_sink() as sink:
        agent = await agent_server(lambda body: Reply(200, {"decision": {"action": "approve"}}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        sc = await sidecar(agent=agent.url, environ=env)
        await case_and_outcome(sc, task_type="appeal")
        assert "traceparent" not in {k.lower() for k in agent.requests[0].headers}
        case = await sc.get("/v1/cases/r-1", headers=sc.admin)
        assert case.body["trace_id"] is None
        assert case.body["trace_url"] is None
        assert [c["trace_id"] for c in case.body["comparisons"]] == [None]
        assert sink.requests == 0


# -- on -------------------------------------------------------------------------------------------


async def test_a_failed_agent_call_is_an_error_span_and_an_agent_error_verdict(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    async with otlp_sink() as sink:
        agent = await agent_server(lambda body: Reply(500, {"error": "model overloaded"}))
        sc = await sidecar(agent=agent.url, agent_retries=0, environ=otel(sink.url))
        event = {"event_id": "e-1", "task_type": "appeal", "payload": {}}
        outcome = {"event_id": "e-1", "decision": {"action": "approve"}}
        assert (await sc.post("/v1/events", json_body=event)).status == 202
        assert (await sc.post("/v1/outcomes", json_body=outcome)).status == 202
        await sc.pipeline.drain()
        trace = case_ids("shadow-test", "e-1")[0].hex()
        await wait_for(lambda: sink.named("evaluate"), "the verdict's span")
        (call,) = of_trace(sink, trace)["invoke_agent appeal"]
        assert call.status == STATUS_ERROR
        assert call.attributes["error.type"] == "500"
        assert "HTTP 500" in call.status_message
        (verdict,) = of_trace(sink, trace)["evaluate appeal"]
        assert verdict.events[0][1]["gen_ai.evaluation.score.label"] == "agent_error"


# -- a backend that is down ---------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dropped(sc: Sidecar, reason: str) -> float:
    return metric(sc, "shadow_trace_spans_dropped_total", {"reason": reason})


async def test_a_backend_that_refuses_connections_costs_counted_spans_only(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(lambda body: Reply(200, {"decision": {"action": "approve"}}))
    env = otel(f"http://127.0.0.1:{closed_port()}", OTEL_BSP_EXPORT_TIMEOUT="300")
    sc = await sidecar(agent=agent.url, environ=env)
    events = [{"event_id": f"e-{i}", "task_type": "appeal", "payload": {"i": i}} for i in range(20)]
    outcomes = [{"event_id": f"e-{i}", "decision": {"action": "approve"}} for i in range(20)]
    assert (await sc.post("/v1/events", json_body=events)).status == 202
    assert (await sc.post("/v1/outcomes", json_body=outcomes)).status == 202
    await sc.pipeline.drain()
    assert await sc.pipeline.store.count("comparisons") == 20
    await wait_for(lambda: dropped(sc, "export_failed") >= 60, "60 spans counted as dropped")
    assert metric(sc, "shadow_trace_spans_exported_total") == 0
    ready = await sc.get("/readyz")
    assert ready.status == 200  # a tracing backend is not the sidecar's readiness


async def test_a_backend_that_never_answers_blocks_nothing(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    async with otlp_sink(hang=True) as sink:
        agent = await agent_server(lambda body: Reply(200, {"decision": {"action": "approve"}}))
        env = otel(
            sink.url,
            OTEL_BSP_MAX_QUEUE_SIZE="8",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4",
            OTEL_EXPORTER_OTLP_TIMEOUT="60000",
            OTEL_BSP_EXPORT_TIMEOUT="60000",
        )
        sc = await sidecar(agent=agent.url, environ=env)
        for batch in range(5):
            events = [
                {"event_id": f"e-{batch}-{i}", "task_type": "appeal", "payload": {}}
                for i in range(10)
            ]
            assert (await sc.post("/v1/events", json_body=events)).status == 202
            outcomes = [{"event_id": e["event_id"], "decision": {"action": "x"}} for e in events]
            assert (await sc.post("/v1/outcomes", json_body=outcomes)).status == 202
        # Every case is compared while the backend holds the first export forever.
        await sc.pipeline.drain()
        assert await sc.pipeline.store.count("comparisons") == 50
        assert 1 <= sink.requests <= EXPORTS_IN_FLIGHT  # each export loop stuck in one
        assert dropped(sc, "queue_full") > 0
        assert metric(sc, "shadow_trace_spans_exported_total") == 0
        sink.release.set()  # the backend answers again: the sidecar stops without waiting


async def test_spans_still_queued_at_shutdown_are_counted(
    agent_server: AgentServerFactory, tmp_path: Any, no_shadow_env: None
) -> None:
    async with otlp_sink(hang=True) as sink:
        agent = await agent_server(lambda body: Reply(200, {"decision": {"action": "approve"}}))
        registry = CollectorRegistry()
        env = otel(sink.url, OTEL_BSP_EXPORT_TIMEOUT="200", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2")
        settings = clean_settings(tmp_path, "s", agent=agent.url)
        app = build_app(settings, policy=parse_policy(POLICY), registry=registry, environ=env)
        listener = Listener(app, socket.create_server(("127.0.0.1", 0)), settings)
        await listener.start()
        pipeline = app[PIPELINE]
        events = [WorkEvent(f"e-{i}", "appeal", {}) for i in range(6)]
        await pipeline.intake.submit_events(events, source="http")
        await pipeline.drain()
        await wait_for(lambda: sink.requests >= 1, "the first export")
        await listener.close()

        def value(reason: str) -> float:
            found = registry.get_sample_value(
                "shadow_trace_spans_dropped_total", {"reason": reason}
            )
            return found or 0.0

        # 6 ingest and 6 invoke_agent spans: the 2 of the stalled export and those never
        # sent are dropped as "shutdown"; a batch tried in the last export bound failed.
        assert value("shutdown") >= 2
        assert value("shutdown") + value("export_failed") == 12


def test_stages_built_without_a_tracer_trace_nothing() -> None:
    """Replay and tests build the runner without one: it gets the no-op tracer."""
    from shadow.agent import AgentRunner, CallableAgent

    runner = AgentRunner(CallableAgent("tests.shadow.test_tracing:_agent", timeout=1.0))
    assert runner._tracer is NO_TRACING


def _agent(request: Mapping[str, Any]) -> dict[str, Any]:
    return {"decision": {"action": "approve"}}
