"""OpenTelemetry traces, one per case: ingest, the agent call, its tool calls, the verdict.

**Off unless configured.** :func:`build_tracer` reads the standard ``OTEL_*`` variables from
the environment the composition root is given (never ``os.environ`` itself): tracing is on
when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
(``/v1/traces`` appended) is set, unless ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``; every other setting comes from the standard variables too
(:mod:`shadow.tracing_config` lists them). Off, every stage gets :data:`NO_TRACING`, whose
methods do nothing (measured: ``make bench``).

**One trace per case, across time and processes.** The spans of a case are made at
different times (ingest now, the agent call later, its tool calls meanwhile, the verdict when
the human's outcome arrives, maybe days later, maybe after a restart), so their ids are
derived, not remembered: with ``d = sha256(b"shadow-trace/1\\0" + service.name + b"\\0" +
event_id)``, the trace id is ``d[0:16]``, the ingest span's id ``d[16:24]`` and the
``invoke_agent`` span's ``d[24:32]``. Anyone who knows the service name can compute a case's
trace id; sidecars sharing ``OTEL_SERVICE_NAME`` (Kafka replicas) write one trace per case.
Sampling is decided on the trace id (``traceidratio`` keeps a case when the trace id's low 64
bits are below ratio x 2^64), so a case is kept or dropped whole.

The spans (attribute names from the OpenTelemetry GenAI and MCP semantic conventions):

- ``ingest {task_type}`` (internal, the root): a sampled event stored for the agent.
- ``invoke_agent {task_type}`` (client, child of ingest): the agent call, retries included;
  ``gen_ai.operation.name=invoke_agent``, ``gen_ai.provider.name=shadow``,
  ``gen_ai.agent.name`` (the task type), ``gen_ai.agent.version``, token usage; a failure sets
  ``error.type`` (``timeout``, the HTTP status, ``connection_failed``, ``circuit_open``,
  ``invalid_answer``, ``_OTHER``). An HTTP agent is sent this span's W3C ``traceparent``, so
  an instrumented agent's own spans join the trace.
- ``tools/call {tool}`` (server): each call the gateway answered; ``mcp.method.name``,
  ``gen_ai.tool.name``, ``gen_ai.operation.name=execute_tool``, ``shadow.tool.outcome``
  (forwarded, captured, held, refused, failed, repeated...), ``error.type=tool_error`` for a
  result with ``isError``, the JSON-RPC code for an error answer. Its parent is the
  agent's own span when the request's ``params._meta.traceparent`` (or ``traceparent``
  header) is in the case's trace, else the case's ``invoke_agent`` span (a shadow session)
  or its ingest span (a live session), with a link to a foreign ``traceparent``.
- ``evaluate {task_type}`` (internal, child of ``invoke_agent``) carrying the event
  ``gen_ai.evaluation.result``: ``gen_ai.evaluation.name=human_agreement``,
  ``gen_ai.evaluation.score.label`` (``agree``, ``disagree``, ``agent_error``),
  ``gen_ai.evaluation.score.value`` (1 or 0) and ``gen_ai.evaluation.explanation`` (the
  mismatched fields' reasons). The ``invoke_agent`` span ended long before, and a span
  cannot be changed once exported, so the event rides on this child span.

**Exporting never blocks or fails the pipeline.** Spans go to a bounded queue; a full queue
drops the new span; export loops (supervised, on the event loop; up to
:data:`EXPORTS_IN_FLIGHT` requests in flight) send batches of
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` when that many wait or every ``OTEL_BSP_SCHEDULE_DELAY``;
a batch the backend refuses or never answers is dropped. Every drop is counted in
``shadow_trace_spans_dropped_total{reason}`` (``queue_full``, ``export_failed``,
``shutdown``: left when the sidecar stopped) and logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from shadow.metrics import TraceCounters
from shadow.model import Comparison, ShadowDecision, Verdict, WorkEvent
from shadow.otlp import (
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    STATUS_ERROR,
    AttrValue,
    ExportError,
    OtlpHttpExporter,
    Span,
    SpanEvent,
    SpanLink,
    encode_request,
    encode_resource,
    encode_scope,
    encode_span,
    event_shape,
    span_shape,
)
from shadow.supervisor import TaskGroup
from shadow.tracing_config import TracingConfig

__all__ = [
    "EVALUATION_NAME",
    "NO_TRACING",
    "McpRequest",
    "NoTracer",
    "OtlpTracer",
    "Tracer",
    "TracingConfig",
    "build_tracer",
    "case_ids",
    "trace_url",
]

log = logging.getLogger("shadow.tracing")

EVALUATION_NAME = "human_agreement"
_LOG_EVERY = 60.0  # seconds between two log lines about dropped spans
_TEXT_LIMIT = 4096  # characters kept of an explanation or a status message
SHUTDOWN_FLUSH_S = 5.0  # at most this long exporting what is left when the sidecar stops
# Export loops, so up to this many requests are in flight: one at a time, a backend 50 ms
# away takes at most ~10,000 spans/s (batches of 512), about what 3,500 cases/s make.
EXPORTS_IN_FLIGHT = 4


@dataclass(frozen=True, slots=True)
class McpRequest:
    """What the gateway's MCP endpoint knows of one ``tools/call`` request, for its span."""

    request_id: str
    session_id: str | None = None
    protocol_version: str | None = None
    traceparent: str | None = None


class Tracer(Protocol):
    """What the stages call (module docstring). Every method returns at once and never
    raises."""

    @property
    def enabled(self) -> bool: ...

    def trace_id(self, event_id: str) -> str | None:
        """The case's trace id (32 hex digits), ``None`` when off or not sampled."""

    def traceparent(self, event_id: str) -> str | None:
        """The W3C ``traceparent`` of the case's ``invoke_agent`` span, ``None`` when off."""

    def ingested(self, events: Sequence[WorkEvent], *, source: str, start_ns: int) -> None:
        """Sampled events just stored for the agent (the store write began at ``start_ns``)."""

    def agent_called(self, event: WorkEvent, decision: ShadowDecision) -> None:
        """The agent answered (or failed) just now, after ``decision.latency_ms``."""

    def tool_called(
        self,
        *,
        task_type: str,
        event_id: str,
        shadow: bool,
        tool: str,
        start_ns: int,
        outcome: str,
        tool_class: str | None,
        upstream: str | None,
        level: str,
        error_type: str | None,
        error: str | None,
        request: McpRequest | None,
    ) -> None:
        """A ``tools/call`` the gateway answered just now."""

    def evaluated(self, comparisons: Sequence[Comparison]) -> None:
        """Comparisons just made (an expired join is not a verdict: no span)."""

    def exporting(self, group: TaskGroup) -> contextlib.AbstractAsyncContextManager[None]:
        """Run the export loop in ``group`` while inside; flush what is left on exit."""


class NoTracer:
    """Tracing off: the same interface, nothing done."""

    enabled = False

    def trace_id(self, event_id: str) -> str | None:
        return None

    def traceparent(self, event_id: str) -> str | None:
        return None

    def ingested(self, events: Sequence[WorkEvent], *, source: str, start_ns: int) -> None:
        return None

    def agent_called(self, event: WorkEvent, decision: ShadowDecision) -> None:
        return None

    def tool_called(self, **_: object) -> None:
        return None

    def evaluated(self, comparisons: Sequence[Comparison]) -> None:
        return None

    @contextlib.asynccontextmanager
    async def exporting(self, group: TaskGroup) -> AsyncIterator[None]:
        yield


NO_TRACING = NoTracer()


def trace_url(template: str | None, trace_id: str | None) -> str | None:
    """``SHADOW_TRACE_URL`` with ``{trace_id}`` filled in (``None`` without either)."""
    if template is None or trace_id is None:
        return None
    return template.replace("{trace_id}", trace_id)


# -- ids ------------------------------------------------------------------------------------------


def case_ids(namespace: str, event_id: str) -> tuple[bytes, bytes, bytes]:
    """``(trace id, ingest span id, invoke_agent span id)`` of a case (module docstring)."""
    return _ids(_prefix(namespace), event_id)


def _prefix(namespace: str) -> bytes:
    return b"shadow-trace/1\0" + namespace.encode("utf-8", "surrogatepass") + b"\0"


_ZEROS = {16: bytes(16), 8: bytes(8)}


def _ids(prefix: bytes, event_id: str) -> tuple[bytes, bytes, bytes]:
    d = hashlib.sha256(prefix + event_id.encode("utf-8", "surrogatepass")).digest()
    return _nonzero(d[0:16]), _nonzero(d[16:24]), _nonzero(d[24:32])


def _nonzero(ident: bytes) -> bytes:
    return ident if ident != _ZEROS[len(ident)] else ident[:-1] + b"\x01"  # zeros: invalid


def _span_id() -> bytes:
    return _nonzero(random.getrandbits(64).to_bytes(8, "big"))


def _parse_traceparent(value: str | None) -> tuple[bytes, bytes] | None:
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == "ff":
        return None
    try:
        trace, span = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        return None
    return (trace, span) if any(trace) and any(span) else None


def _agent_error_type(reason: str | None) -> str:
    text = reason or ""
    if text.startswith("timeout"):
        return "timeout"
    if text.startswith("HTTP "):
        return text[5:8]
    if text.startswith("connection failed"):
        return "connection_failed"
    if text.startswith("circuit open"):
        return "circuit_open"
    if text.startswith(("invalid JSON", "invalid agent answer", "answer is", "response larger")):
        return "invalid_answer"
    return "_OTHER"


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[:_TEXT_LIMIT] + "..."


def _package_version() -> str:
    try:
        return version("shadow-sidecar")
    except PackageNotFoundError:
        return "0"


# -- the tracer ---------------------------------------------------------------------------------


class OtlpTracer:
    """Tracing on: spans recorded as :class:`~shadow.otlp.Span` values in a bounded queue and
    exported by :meth:`exporting`'s loop through ``exporter`` (anything with the
    :class:`~shadow.otlp.OtlpHttpExporter` ``export``/``close`` methods: tests pass one that
    keeps the requests)."""

    enabled = True

    def __init__(
        self,
        config: TracingConfig,
        counters: TraceCounters,
        *,
        exporter: OtlpHttpExporter | None = None,
    ) -> None:
        self.config = config
        self._prefix = _prefix(config.service_name)
        self._bound = int(config.ratio * 2**64)
        self._counters = counters
        self._dropped = counters.dropped
        self._exporter = exporter or OtlpHttpExporter(
            config.endpoint,
            headers=config.headers,
            timeout=config.timeout,
            deadline=config.export_timeout,
            gzip_body=config.gzip,
            ssl_context=config.ssl_context(),
        )
        self._resource = encode_resource(
            {
                **config.resource,
                "telemetry.sdk.name": "shadow",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.version": _package_version(),
            }
        )
        self._scope = encode_scope("shadow", _package_version())
        # Spans encoded as they are made (bytes: small, and the export loops only join them).
        self._queue: deque[bytes] = deque()
        # Encoded once per kind of span (name, kind, fixed attributes), by a key of what
        # varies: task types and sources are few, tool names are the agents' (capped).
        self._shapes: dict[tuple[object, ...], bytes] = {}
        self._wake = asyncio.Event()
        self._failures = 0  # spans dropped since the last log line
        self._last_log = -_LOG_EVERY
        self._reasons: dict[str, str] = {}

    # -- ids --------------------------------------------------------------------------------

    def _case(self, event_id: str) -> tuple[bytes, bytes, bytes] | None:
        ids = _ids(self._prefix, event_id)
        if self._bound < 2**64 and int.from_bytes(ids[0][8:], "big") >= self._bound:
            return None
        return ids

    def trace_id(self, event_id: str) -> str | None:
        ids = self._case(event_id)
        return None if ids is None else ids[0].hex()

    def traceparent(self, event_id: str) -> str | None:
        trace, _, agent = _ids(self._prefix, event_id)
        sampled = self._bound >= 2**64 or int.from_bytes(trace[8:], "big") < self._bound
        return f"00-{trace.hex()}-{agent.hex()}-{'01' if sampled else '00'}"

    # -- spans ------------------------------------------------------------------------------

    def _put(self, span: Span) -> None:
        if len(self._queue) >= self.config.max_queue:
            self._drop("queue_full", 1, "the export queue is full")
            return
        self._queue.append(encode_span(span))
        if len(self._queue) == self.config.batch:
            self._wake.set()

    def _shape(self, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        """The encoded shape of a kind of span (or event) under ``key``, made once."""
        found = self._shapes.get(key)
        if found is None:
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            found = self._shapes[key] = make()
        return found

    def ingested(self, events: Sequence[WorkEvent], *, source: str, start_ns: int) -> None:
        end = time.time_ns()
        for event in events:
            ids = self._case(event.event_id)
            if ids is None:
                continue
            task = event.task_type
            shape = self._shapes.get(("ingest", task, source)) or self._shape(
                ("ingest", task, source),
                functools.partial(
                    span_shape,
                    f"ingest {task}",
                    KIND_INTERNAL,
                    (("shadow.task_type", task), ("shadow.source", source)),
                ),
            )
            self._put(
                Span(ids[0], ids[1], b"", shape, start_ns, end, {"shadow.event_id": event.event_id})
            )

    def agent_called(self, event: WorkEvent, decision: ShadowDecision) -> None:
        ids = self._case(event.event_id)
        if ids is None:
            return
        end = time.time_ns()
        start = end - int((decision.latency_ms or 0.0) * 1_000_000)
        task, version = event.task_type, decision.agent_version
        error = None if decision.error is None else _agent_error_type(decision.error)
        tools = decision.tool_calls

        def make() -> bytes:
            fixed: list[tuple[str, AttrValue]] = [
                ("gen_ai.operation.name", "invoke_agent"),
                ("gen_ai.provider.name", "shadow"),
                ("gen_ai.agent.name", task),
                ("gen_ai.agent.version", version),
                ("shadow.task_type", task),
            ]
            if tools:
                fixed.append(("shadow.tool_calls", True))
            if error is not None:
                fixed.append(("error.type", error))
            return span_shape(f"invoke_agent {task}", KIND_CLIENT, fixed)

        attrs: dict[str, AttrValue] = {"shadow.event_id": event.event_id}
        if decision.usage.input_tokens:
            attrs["gen_ai.usage.input_tokens"] = decision.usage.input_tokens
        if decision.usage.output_tokens:
            attrs["gen_ai.usage.output_tokens"] = decision.usage.output_tokens
        span = Span(
            ids[0],
            ids[2],
            ids[1],
            self._shape(("invoke_agent", task, version, tools, error), make),
            start,
            end,
            attrs,
        )
        if decision.error is not None:
            span.status, span.status_message = STATUS_ERROR, _clip(decision.error)
        self._put(span)

    def tool_called(
        self,
        *,
        task_type: str,
        event_id: str,
        shadow: bool,
        tool: str,
        start_ns: int,
        outcome: str,
        tool_class: str | None,
        upstream: str | None,
        level: str,
        error_type: str | None,
        error: str | None,
        request: McpRequest | None,
    ) -> None:
        ids = self._case(event_id)
        if ids is None:
            return
        parent = ids[2] if shadow else ids[1]
        links: list[SpanLink] = []
        attrs: dict[str, AttrValue] = {"shadow.event_id": event_id}
        if request is not None:
            attrs["jsonrpc.request.id"] = request.request_id
            if request.session_id:
                attrs["mcp.session.id"] = request.session_id
            if request.protocol_version:
                attrs["mcp.protocol.version"] = request.protocol_version
            remote = _parse_traceparent(request.traceparent)
            if remote is not None:
                if remote[0] == ids[0]:
                    parent = remote[1]
                else:
                    links.append(SpanLink(*remote))

        def make() -> bytes:
            fixed: list[tuple[str, AttrValue]] = [
                ("mcp.method.name", "tools/call"),
                ("gen_ai.operation.name", "execute_tool"),
                ("gen_ai.tool.name", tool),
                ("shadow.task_type", task_type),
                ("shadow.shadow_session", shadow),
                ("shadow.tool.outcome", outcome),
                ("shadow.level", level),
                ("network.transport", "tcp"),
                ("network.protocol.name", "http"),
            ]
            if tool_class is not None:
                fixed.append(("shadow.tool.class", tool_class))
            if upstream is not None:
                fixed.append(("shadow.tool.upstream", upstream))
            if error_type is not None:
                fixed.append(("error.type", error_type))
                if error_type != "tool_error":
                    fixed.append(("rpc.response.status_code", error_type))
            return span_shape(f"tools/call {tool}", KIND_SERVER, fixed)

        key = ("tools/call", task_type, tool, shadow, outcome, level, tool_class, upstream)
        span = Span(
            ids[0],
            _span_id(),
            parent,
            self._shape((*key, error_type), make),
            start_ns,
            time.time_ns(),
            attrs,
            links=links,
        )
        if error_type is not None:
            span.status, span.status_message = STATUS_ERROR, _clip(error or error_type)
        self._put(span)

    def evaluated(self, comparisons: Sequence[Comparison]) -> None:
        now = time.time_ns()
        for c in comparisons:
            if c.verdict is Verdict.EXPIRED:
                continue
            ids = self._case(c.event_id)
            if ids is None:
                continue
            label = c.verdict.value
            task, version, handled = c.task_type, c.agent_version, c.handled_by.value
            critical = c.critical_miss
            key = ("evaluate", task, version, label, critical, handled)
            shape = self._shapes.get(key) or self._shape(
                key,
                functools.partial(
                    span_shape,
                    f"evaluate {task}",
                    KIND_INTERNAL,
                    (
                        ("shadow.task_type", task),
                        ("gen_ai.agent.version", version),
                        ("gen_ai.evaluation.name", EVALUATION_NAME),
                        ("gen_ai.evaluation.score.label", label),
                        ("shadow.critical", critical),
                        ("shadow.handled_by", handled),
                    ),
                ),
            )
            result = self._shapes.get(("gen_ai.evaluation.result", label)) or self._shape(
                ("gen_ai.evaluation.result", label),
                functools.partial(
                    event_shape,
                    "gen_ai.evaluation.result",
                    (
                        ("gen_ai.evaluation.name", EVALUATION_NAME),
                        ("gen_ai.evaluation.score.label", label),
                        ("gen_ai.evaluation.score.value", 1.0 if label == "agree" else 0.0),
                    ),
                ),
            )
            explanation = "; ".join(
                f"{f.path}: {f.reason}" if f.reason else f.path for f in c.mismatches
            )
            own = {"gen_ai.evaluation.explanation": _clip(explanation)} if explanation else {}
            self._put(
                Span(
                    ids[0],
                    _span_id(),
                    ids[2],
                    shape,
                    now,
                    now,
                    {"shadow.event_id": c.event_id},
                    events=(SpanEvent(now, result, own),),
                )
            )

    # -- export -----------------------------------------------------------------------------

    def _drop(self, reason: str, n: int, why: str) -> None:
        self._dropped.labels(reason).inc(n)
        self._failures += n
        self._reasons[reason] = why
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            reasons = "; ".join(f"{r}: {w}" for r, w in sorted(self._reasons.items()))
            log.warning(
                "tracing: %d spans dropped (%s); the pipeline goes on without them; "
                "shadow_trace_spans_dropped_total counts every one",
                self._failures,
                reasons,
            )
            self._failures = 0
            self._reasons = {}

    async def _export_all(self, until: float | None = None) -> None:
        """Export what is queued, a batch at a time; with ``until`` (the loop's clock), no
        batch starts after it and none runs past it."""
        loop = asyncio.get_running_loop()
        while self._queue:
            within = None if until is None else until - loop.time()
            if within is not None and within <= 0:
                return
            take = min(self.config.batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(take)]
            body = encode_request(self._resource, self._scope, batch)
            try:
                await self._exporter.export(body, within=within)
            except asyncio.CancelledError:
                self._drop("shutdown", len(batch), "the sidecar stopped while they were sent")
                raise
            except ExportError as exc:
                self._drop("export_failed", len(batch), f"{self.config.endpoint}: {exc}")
            else:
                self._counters.exported.inc(len(batch))

    async def _loop(self) -> None:
        while True:
            if len(self._queue) < self.config.batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.delay)
            await self._export_all()

    @contextlib.asynccontextmanager
    async def exporting(self, group: TaskGroup) -> AsyncIterator[None]:
        """The export loops run in ``group`` while inside. On exit: what is queued is
        exported for at most ``OTEL_BSP_EXPORT_TIMEOUT`` or :data:`SHUTDOWN_FLUSH_S`,
        whichever is shorter (a stopping sidecar does not wait on its tracing backend); what
        is still queued then is dropped (``shutdown``)."""
        log.info(
            "tracing: exporting spans to %s (OTLP/HTTP protobuf%s), service.name %s, %s",
            self.config.endpoint,
            ", gzip" if self.config.gzip else "",
            self.config.service_name,
            "every case" if self.config.ratio >= 1 else f"{self.config.ratio:.0%} of cases",
        )
        for i in range(EXPORTS_IN_FLIGHT):
            group.spawn("tracing", self._loop, name=f"tracing-{i}")
        try:
            yield
        finally:
            await group.stop()
            loop = asyncio.get_running_loop()
            bound = min(self.config.export_timeout, SHUTDOWN_FLUSH_S)
            try:
                await self._export_all(until=loop.time() + bound)
            finally:
                left = len(self._queue)
                self._queue.clear()
                if left:
                    self._drop("shutdown", left, "the sidecar stopped before they were sent")
                await self._exporter.close()


def build_tracer(env: Mapping[str, str], counters: TraceCounters) -> Tracer:
    """The tracer ``env``'s ``OTEL_*`` variables ask for (:data:`NO_TRACING` when off).
    Raises :class:`ConfigError` for a variable out of range."""
    config = TracingConfig.from_environ(env)
    if config is None:
        return NO_TRACING
    return OtlpTracer(config, counters)
