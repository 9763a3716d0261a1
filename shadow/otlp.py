"""OTLP over HTTP/protobuf: the spans :mod:`shadow.tracing` records, encoded and sent.

Why not the OpenTelemetry SDK's tracer and exporter: measured on the 2-core development
machine, a span through the SDK costs about 24 µs to create and end and 27 µs more to encode
(``opentelemetry-exporter-otlp-proto-common``), all of it Python under the GIL the pipeline
needs. A case makes at least three spans (ingest, ``invoke_agent``, the verdict), so the SDK
would take the end-to-end rate to about 0.6 of the rate without tracing; the goal is 0.9
(``make bench``: tests/bench/bench_tracing.py measures both). So spans are plain records
(:class:`Span`), encoded here straight into the OTLP protobuf wire format
(``opentelemetry/proto/collector/trace/v1/trace_service.proto``, field numbers below), with
every constant piece (attribute keys; a kind of span's name, kind and fixed attributes:
:func:`span_shape`) encoded once.
The tests decode what this writes with the official generated classes (``opentelemetry-proto``)
and send it to a real backend (Arize Phoenix).

:class:`OtlpHttpExporter` POSTs an ``ExportTraceServiceRequest`` with
``Content-Type: application/x-protobuf`` (optionally gzip), as the OTLP/HTTP specification
says: a 2xx is success; 429, 502, 503, 504 and connection errors are retried with backoff
(``Retry-After`` honoured) within the export's time bound; anything else fails the batch.
Failures are :class:`ExportError`; the caller counts the spans as dropped.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

__all__ = [
    "KIND_CLIENT",
    "KIND_INTERNAL",
    "KIND_SERVER",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_UNSET",
    "AttrValue",
    "ExportError",
    "OtlpHttpExporter",
    "Span",
    "SpanEvent",
    "SpanLink",
    "encode_request",
    "encode_resource",
    "encode_scope",
    "encode_span",
    "event_shape",
    "span_shape",
]

AttrValue = str | bool | int | float

# SpanKind and Status.StatusCode (trace.proto).
KIND_INTERNAL = 1
KIND_SERVER = 2
KIND_CLIENT = 3
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2


@dataclass(slots=True)
class SpanEvent:
    """An event; ``shape`` is its encoded name and fixed attributes (:func:`event_shape`)."""

    time_ns: int
    shape: bytes
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)


@dataclass(slots=True)
class SpanLink:
    trace_id: bytes
    span_id: bytes


@dataclass(slots=True)
class Span:
    """One finished span. ``shape`` is the encoded part every span of its kind shares (its
    name, kind and fixed attributes: :func:`span_shape`, made once per kind by the caller);
    ``attributes`` are this span's own."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_id: bytes  # 8 bytes, or b"" for a root span
    shape: bytes
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    events: Sequence[SpanEvent] = ()
    links: Sequence[SpanLink] = ()
    status: int = STATUS_UNSET
    status_message: str = ""


class ExportError(Exception):
    """A batch the backend did not take (after the retries its failure allowed)."""


# -- the wire format ----------------------------------------------------------------------------

_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack


_SMALL = [bytes((i,)) for i in range(128)]  # one-byte varints: most lengths here


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field_number: int, wire_type: int) -> bytes:
    return _varint((field_number << 3) | wire_type)


def _delimited(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, messages."""
    return _tag(field_number, 2) + _varint(len(payload)) + payload


def _ld(tag: bytes, payload: bytes) -> bytes:
    """:func:`_delimited` with the tag already encoded (the hot path)."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")  # protobuf strings must be valid UTF-8


def _any(value: AttrValue) -> bytes:
    """An ``AnyValue``: string 1, bool 2, int 3 (int64), double 4."""
    if isinstance(value, str):
        return _ld(b"\x0a", _text(value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    return b"\x21" + _double(float(value))


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    found = _KEYS.get(key)
    if found is None:
        found = _KEYS[key] = _ld(b"\x0a", _text(key))
    return found


def _attribute(field_number: int, key: str, value: AttrValue) -> bytes:
    """One ``KeyValue`` as the repeated field ``field_number`` of its message."""
    return _ld(_tag(field_number, 2), _key(key) + _ld(b"\x12", _any(value)))


def _attributes(field_number: int, attrs: Iterable[tuple[str, AttrValue]]) -> bytes:
    return b"".join(_attribute(field_number, k, v) for k, v in attrs)


def _own_attribute(tag: bytes, key: str, value: AttrValue) -> bytes:
    """One ``KeyValue`` (``tag``: of its field). A short string, the usual case, is laid
    out in one join with its lengths computed (each fits in one byte)."""
    head = _KEYS.get(key) or _key(key)
    if isinstance(value, str):
        text = value.encode("utf-8", "replace")
        n = len(text)
        size = len(head) + n + 4
        if size < 0x80:
            return b"".join(
                (tag, _SMALL[size], head, b"\x12", _SMALL[n + 2], b"\x0a", _SMALL[n], text)
            )
        return _ld(tag, head + _ld(b"\x12", _ld(b"\x0a", text)))
    return _ld(tag, head + _ld(b"\x12", _any(value)))


def span_shape(name: str, kind: int, fixed: Iterable[tuple[str, AttrValue]] = ()) -> bytes:
    """The encoded name (5), kind (6) and ``fixed`` attributes (9) of a kind of span."""
    return _delimited(5, _text(name)) + b"\x30" + _varint(kind) + _attributes(9, fixed)


def event_shape(name: str, fixed: Iterable[tuple[str, AttrValue]] = ()) -> bytes:
    """The encoded name (2) and ``fixed`` attributes (3) of a kind of span event."""
    return _delimited(2, _text(name)) + _attributes(3, fixed)


def encode_span(s: Span) -> bytes:
    """A ``Span`` message as the field ``ScopeSpans.spans``: trace_id 1, span_id 2,
    parent_span_id 4, name 5 and kind 6 (the shape), start 7 and end 8 (fixed64),
    attributes 9, events 11, links 13, status 15."""
    parts = [b"\x0a\x10", s.trace_id, b"\x12\x08", s.span_id]
    if s.parent_id:
        parts += (b"\x22\x08", s.parent_id)
    parts += (s.shape, b"\x39", _fixed64(s.start_ns), b"\x41", _fixed64(s.end_ns))
    for k, v in s.attributes.items():
        parts.append(_own_attribute(b"\x4a", k, v))
    for e in s.events:
        own = b"".join(_own_attribute(b"\x1a", k, v) for k, v in e.attributes.items())
        parts.append(_ld(b"\x5a", b"\x09" + _fixed64(e.time_ns) + e.shape + own))
    for link in s.links:
        parts.append(_delimited(13, _delimited(1, link.trace_id) + _delimited(2, link.span_id)))
    if s.status:
        status = b"\x18" + _varint(s.status)
        if s.status_message:
            status = _delimited(2, _text(s.status_message)) + status
        parts.append(_delimited(15, status))
    return _ld(b"\x12", b"".join(parts))  # ScopeSpans.spans is field 2


def encode_resource(attributes: Mapping[str, AttrValue]) -> bytes:
    """A ``Resource`` message (its attributes are field 1)."""
    return _attributes(1, attributes.items())


def encode_scope(name: str, version: str) -> bytes:
    """An ``InstrumentationScope`` message: name 1, version 2."""
    return _delimited(1, _text(name)) + _delimited(2, _text(version))


def encode_request(resource: bytes, scope: bytes, spans: Sequence[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest``: one ``ResourceSpans`` (resource 1, scope_spans 2)
    holding one ``ScopeSpans`` (scope 1, spans 2: each :func:`encode_span`'s bytes)."""
    scope_spans = _delimited(1, scope) + b"".join(spans)
    resource_spans = _delimited(1, resource) + _delimited(2, scope_spans)
    return _delimited(1, resource_spans)


# -- the exporter -------------------------------------------------------------------------------

_RETRIABLE = frozenset({429, 502, 503, 504})


class OtlpHttpExporter:
    """POSTs encoded requests to ``endpoint`` (the full traces URL). ``timeout`` bounds one
    attempt, ``deadline`` one export with its retries (seconds). Owns its aiohttp session
    (made on first use); :meth:`close` is idempotent."""

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        deadline: float,
        gzip_body: bool,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._headers = {
            **headers,
            "Content-Type": "application/x-protobuf",
            **({"Content-Encoding": "gzip"} if gzip_body else {}),
        }
        self._timeout = timeout
        self._deadline = deadline
        self._gzip = gzip_body
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=4, ssl=self._ssl if self._ssl else True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def export(self, body: bytes, *, within: float | None = None) -> None:
        """Send one request, retries included within ``deadline`` (or ``within`` seconds
        when shorter); :class:`ExportError` when the backend did not take it."""
        if self._closed:
            raise ExportError("the exporter is closed")
        if self._gzip:
            body = await asyncio.to_thread(gzip.compress, body, 6)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (self._deadline if within is None else min(self._deadline, within))
        delay = 0.5
        while True:
            left = give_up - loop.time()
            retry_after: float | None = None
            try:
                async with self._client().post(
                    self.endpoint,
                    data=body,
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=max(0.001, min(self._timeout, left))),
                    allow_redirects=False,
                ) as resp:
                    if 200 <= resp.status < 300:
                        await resp.read()
                        return
                    text = (await resp.content.read(300)).decode("utf-8", "replace")
                    why = f"HTTP {resp.status}" + (f": {' '.join(text.split())}" if text else "")
                    if resp.status not in _RETRIABLE:
                        raise ExportError(why)
                    retry_after = _seconds(resp.headers.get("Retry-After"))
            except TimeoutError:
                why = "timed out"
            except aiohttp.ClientError as exc:
                why = f"{type(exc).__name__}: {exc}"
            wait = retry_after if retry_after is not None else delay
            if loop.time() + wait >= give_up:
                raise ExportError(why)
            await asyncio.sleep(wait)
            delay *= 2


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 60 else None
