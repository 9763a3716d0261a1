"""A real OTLP/HTTP traces receiver on a loopback port, for the tracing tests and bench.

``POST /v1/traces`` takes an ``ExportTraceServiceRequest`` (protobuf, gzip or not), decodes
it with the official generated classes (``opentelemetry-proto``) unless ``decode`` is off
(the bench's sink only counts bytes), and answers 200; ``status`` makes it answer that code
instead, ``hang`` makes it answer nothing until ``release`` is set (a backend that accepts
connections and then stalls). The spans it kept are plain dicts (:class:`ReceivedSpan`)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]
    status: int
    status_message: str
    resource: dict[str, Any]


@dataclass(eq=False)
class Sink:
    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    bytes: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200
    hang: bool = False
    decode: bool = True
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        self.bytes += len(body)
        self.headers.append(dict(request.headers))
        self.arrived.set()
        if self.hang:
            await self.release.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="refused by the test sink")
        if self.decode:
            if request.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            assert request.headers["Content-Type"] == "application/x-protobuf"
            self._keep(ExportTraceServiceRequest.FromString(body))
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    def _keep(self, req: ExportTraceServiceRequest) -> None:
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            s.kind,
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                            {a.key: _value(a.value) for a in s.attributes},
                            [
                                (e.name, {a.key: _value(a.value) for a in e.attributes})
                                for e in s.events
                            ],
                            [(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                            s.status.code,
                            s.status.message,
                            resource,
                        )
                    )

    def named(self, prefix: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]


@asynccontextmanager
async def otlp_sink(**options: Any) -> AsyncIterator[Sink]:
    """A :class:`Sink` served on 127.0.0.1 (a free port) while inside."""
    sink = Sink(**options)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", sink.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    sink.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield sink
    finally:
        sink.release.set()
        await runner.cleanup()


async def _serve_discarding() -> None:
    """A receiver in a process of its own (the bench's): prints its URL, takes and discards
    every request until stdin closes."""
    async with otlp_sink(decode=False) as sink:
        print(sink.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(_serve_discarding())
