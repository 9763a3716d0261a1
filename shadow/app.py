"""The composition root: ``build_app(settings)`` wires every resource of ``shadow run``.

Resources are opened in order through aiohttp ``cleanup_ctx`` and closed in reverse:
store → agent runner → pipeline → sources. The HTTP behaviour every runner of the app gets
(JSON errors, ``Expect: 100-continue``, header timeout, bodies left compressed for ingest)
is wired here from :mod:`shadow.server`; serve it with :class:`shadow.server.Listener` to
also answer what aiohttp's parser refuses in JSON. Handlers reach them through typed
``web.AppKey``s (:mod:`shadow.keys`); the route table is :func:`shadow.routes.routes`.
Seams (metrics registry, clock, policy) are arguments so tests pass real lightweight
implementations.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from shadow.agent import AgentRunner, AgentTransport, CircuitBreaker, ToolSessions, load_agent
from shadow.config import Settings
from shadow.errors import ConfigError
from shadow.gateway import Gateway, build_gateway, describe_gateway
from shadow.ingest_auth import IngestAuth
from shadow.intake import Intake
from shadow.keys import (
    AUTH,
    GATEWAY,
    HANDLING,
    INTAKE,
    KEYRING,
    LADDER,
    ON_FREEZE,
    PIPELINE,
    READINESS,
    REGISTRY,
    REVIEW,
    SETTINGS,
    STARTUP,
    TRACER,
)
from shadow.ladder import Ladder
from shadow.metrics import Metrics, auth_refusals, trace_counters
from shadow.pipeline import Pipeline
from shadow.policy import Policy, load_policy
from shadow.review import ReviewQueue
from shadow.roles import Keyring
from shadow.routes import console_routes, routes
from shadow.server import (
    LISTEN_URL,
    expect_continue,
    handler_options,
    json_errors,
    with_expect_handler,
)
from shadow.sources.files import FileSource, parse_source_spec
from shadow.sources.kafka import parse_kafka_spec
from shadow.sources.kafka_stack import KafkaStack
from shadow.sources.mirror import MIRROR, MirrorSink, build_mirror_app
from shadow.store import Store
from shadow.supervisor import SUPERVISOR, Supervisor
from shadow.tracing import NO_TRACING, Tracer, build_tracer
from shadow.ui import SESSIONS, Sessions, console_headers

__all__ = [
    "GC_THRESHOLDS",
    "SWITCH_INTERVAL",
    "build_app",
    "build_runner",
    "side_apps",
    "tune_gc",
    "tune_switching",
    "utc_now",
]

# Young collections every 50,000 net allocations instead of CPython's 700 (see tune_gc).
GC_THRESHOLDS = (50_000, 20, 20)
# Seconds a thread may hold the GIL while another waits, instead of CPython's 0.005 (see
# tune_switching).
SWITCH_INTERVAL = 0.0005

log = logging.getLogger("shadow.app")


def utc_now() -> datetime:
    return datetime.now(UTC)


def tune_gc() -> None:
    """Garbage collection for a long-running sidecar (``shadow run`` calls this once the
    app is built). Each record allocates dozens of short-lived containers that reference
    counting frees, yet CPython's default thresholds start a collection every 700 net
    allocations: a process producing 40,000 Kafka records and running them through the
    sidecar spent about 0.9 s in 1,600 collections. So: everything alive after start-up
    (modules, settings, the app) moves to the permanent generation (``gc.freeze``), which
    collections skip, and the young generation is collected every ``GC_THRESHOLDS[0]``
    allocations. Cyclic garbage still goes, just in larger, rarer sweeps."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def tune_switching() -> None:
    """GIL hand-over for a sidecar whose store works on its own thread (``shadow run``
    calls this once). While that thread is busy, the event loop waits for the GIL after
    each socket write for up to the switch interval (5 ms by default), so a burst of store
    work delayed every answer by tens of milliseconds, the mirror target's included: at
    500 mirrored requests/s through nginx, the host's median went from 27 ms to 9 ms with
    :data:`SWITCH_INTERVAL` (tests/bench/bench_mirror.py, a loaded machine)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def build_runner(
    settings: Settings,
    *,
    transport: AgentTransport | None = None,
    tools: ToolSessions | None = None,
    tracer: Tracer = NO_TRACING,
) -> AgentRunner | None:
    """The agent runner for ``settings.agent`` (``None`` without an agent); ``transport``
    when already loaded, ``tools`` the tool gateway (each attempt's shadow session),
    ``tracer`` the case traces (each call an ``invoke_agent`` span)."""
    if not settings.agent:
        return None
    if transport is None:
        transport = load_agent(settings.agent, timeout=settings.agent_timeout)
    return AgentRunner(
        transport,
        concurrency=settings.agent_concurrency,
        retries=settings.agent_retries,
        backoff=settings.agent_backoff,
        breaker=CircuitBreaker(
            failure_threshold=settings.breaker_failures, reset_after=settings.breaker_reset
        ),
        default_version=settings.agent_version,
        tools=tools,
        tracer=tracer,
    )


def build_app(
    settings: Settings,
    *,
    policy: Policy | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], datetime] = utc_now,
    environ: Mapping[str, str] | None = None,
    open_store: Callable[[str], Store] = Store,
    transport: AgentTransport | None = None,
) -> web.Application:
    """The sidecar as an aiohttp application. Raises ConfigError/PolicyError up front.

    ``environ`` resolves the policy's ``env:NAME`` upstream headers (the process
    environment by default: this is the composition root). ``open_store`` makes the store
    from ``settings.db`` (a seam: tests wrap the real store). ``transport`` is the agent's
    transport when the caller built it (``shadow agent check`` wraps the one
    ``settings.agent`` names, to see each raw answer); used only with ``settings.agent``
    set, and closed with the app. The mirror listener and the
    proxy are separate applications on their own sockets (:func:`side_apps`), sharing this
    one's intake through its mirror sink."""
    if policy is None:
        if settings.config is None:
            raise ConfigError("a policy file is required: pass --config POLICY.yaml")
        policy = load_policy(settings.config)
    specs = [parse_source_spec(s) for s in settings.source]
    kafka_specs = [parse_kafka_spec(spec) for kind, spec in specs if kind == "kafka"]
    specs = [(kind, spec) for kind, spec in specs if kind == "file"]
    for _, spec in specs:
        if not Path(spec).is_file():
            raise ConfigError(f"source file {spec} does not exist")
    metrics_registry = registry if registry is not None else CollectorRegistry()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[json_errors],
        handler_args=handler_options(settings),
    )
    app[SETTINGS] = settings
    app[REGISTRY] = metrics_registry
    app[READINESS] = []
    app[ON_FREEZE] = []
    refusals = auth_refusals(metrics_registry)
    keyring = Keyring(
        tokens_file=settings.tokens_file,
        admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
        ingest_tokens=[t.get_secret_value() for t in settings.ingest_tokens],
        on_refusal=lambda role, status: refusals.labels(role, str(status)).inc(),
    )
    app[KEYRING] = keyring
    app[READINESS].append(keyring.not_ready)
    auth = IngestAuth.from_settings(settings, keyring)
    app[AUTH] = auth
    app.add_routes(
        with_expect_handler(
            [*routes(), *console_routes()], expect_continue(settings.max_body_bytes)
        )
    )
    app[SESSIONS] = Sessions()  # the console's sign-in sessions (shadow.ui)
    app.on_response_prepare.append(console_headers)
    resolved: Policy = policy
    two_person = sorted(n for n, t in policy.task_types.items() if t.autonomy.two_person)
    if two_person and settings.tokens_file is None:
        raise ConfigError(
            f"task_types.{two_person[0]}.autonomy.two_person needs named credentials: set "
            "SHADOW_TOKENS_FILE (two approvals by one shared admin token prove nothing)"
        )
    sink = MirrorSink(settings, resolved, auth)
    app[MIRROR] = sink
    env = environ if environ is not None else os.environ
    # OpenTelemetry traces, one per case (shadow.tracing): off unless env's OTEL_* variables
    # name an OTLP endpoint; a bad one is refused now.
    tracer = build_tracer(env, trace_counters(metrics_registry))
    app[TRACER] = tracer
    # Resolved now, so a bad --agent is refused before anything listens or touches the DB.
    if transport is None and settings.agent:
        transport = load_agent(
            settings.agent,
            timeout=settings.agent_timeout,
            traceparent=tracer.traceparent if tracer.enabled else None,
        )
    upstreams = build_gateway(resolved, settings, env)  # a missing env:NAME is refused now
    app[STARTUP] = describe_gateway(resolved)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with open_store(settings.db) as store:
            runner: AgentRunner | None = None
            try:
                metrics = Metrics(metrics_registry, resolved)
                store.observe_set_aside(metrics.set_aside)
                # Every background task runs under this one supervisor (shadow.supervisor).
                supervisor = Supervisor(metrics)
                app[SUPERVISOR] = supervisor
                app[READINESS].append(supervisor.not_ready)
                kafka = KafkaStack(settings, kafka_specs, store=store, clock=clock, metrics=metrics)
                app[READINESS].append(kafka.not_ready)
                # Built in dependency order, each handed what it uses; nothing is patched
                # after construction.
                ladder = Ladder(
                    store,
                    resolved,
                    clock,
                    metrics=metrics,
                    observers=kafka.observers,
                    decides=kafka.promote,
                    join_ttl=timedelta(seconds=settings.join_ttl),
                )
                base = settings.public_url or app.get(
                    LISTEN_URL, f"http://{settings.host}:{settings.port}"
                )
                gateway = Gateway.create(
                    settings,
                    resolved,
                    ladder,
                    store,
                    metrics,
                    upstreams,
                    clock,
                    base,
                    supervisor=supervisor,
                    tracer=tracer,
                )
                runner = build_runner(settings, transport=transport, tools=gateway, tracer=tracer)
                pipeline = Pipeline(
                    settings=settings,
                    policy=resolved,
                    store=store,
                    agent=runner,
                    metrics=metrics,
                    clock=clock,
                    observers=kafka.observers,
                    supervisor=supervisor,
                    ladder=ladder,
                    tracer=tracer,
                )
                app[GATEWAY] = gateway
                app[ON_FREEZE].append(gateway.frozen)
                async with (
                    tracer.exporting(supervisor.group("tracing")),  # the last to close
                    gateway,
                    pipeline,
                    kafka.running(pipeline, supervisor.group("kafka")),
                    sink.running(pipeline.intake, metrics, supervisor.group("mirror")),
                ):
                    app[PIPELINE] = pipeline
                    app[LADDER] = pipeline.ladder
                    app[INTAKE] = pipeline.intake
                    app[HANDLING] = pipeline.handling
                    app[REVIEW] = ReviewQueue(store, resolved, pipeline.ladder, clock)
                    files = supervisor.group("files")
                    for _, path in specs:
                        files.spawn(
                            "file-source",
                            functools.partial(_run_file, path, pipeline.intake),
                            name=f"file-source {path}",
                        )
                    yield
                    await files.stop()
            finally:
                if runner is not None:
                    await runner.close()

    app.cleanup_ctx.append(resources)
    return app


def side_apps(app: web.Application) -> list[tuple[str, web.Application, str]]:
    """The applications that serve beside ``app`` on their own sockets, as
    ``(what, application, "HOST:PORT")``: the mirror listener (``mirror_port``) and the
    mirroring proxy (``proxy_upstream``, on ``proxy_listen``). Start them after ``app``
    (they use its pipeline) and stop them before it."""
    from shadow.proxy import build_proxy_app

    settings = app[SETTINGS]
    sink = app[MIRROR]
    out: list[tuple[str, web.Application, str]] = []
    if settings.mirror_port is not None:
        host = settings.mirror_host or settings.host
        out.append(("mirror", build_mirror_app(sink), f"{host}:{settings.mirror_port}"))
    if settings.proxy_upstream is not None:
        out.append(("proxy", build_proxy_app(sink, settings), settings.proxy_listen))
    return out


async def _run_file(path: str, intake: Intake) -> None:
    """Read one JSONL file into ``intake`` (supervised: a failure is logged and counted, and
    the file is read again after a backoff; what it stored before is deduplicated)."""
    log.info("file source %s starting", path)
    async with FileSource(path, intake) as source:
        report = await source.run()
    log.info("file source %s done: %s", path, report)
