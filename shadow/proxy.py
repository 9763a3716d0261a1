"""The mirroring reverse proxy (``shadow proxy``, or ``shadow run --proxy-upstream``), for
hosts with no proxy or mesh of their own to mirror from.

Every request goes to ``proxy_upstream`` and its answer comes back unchanged: status,
reason, headers and body, streamed both ways (a body with a ``Content-Length`` of at most
:data:`WHOLE` bytes is passed in one piece, which is faster and changes nothing on the wire).
Hop-by-hop headers (``Connection`` and those it names, ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) are not forwarded; the client's ``Host`` is;
``X-Forwarded-For`` gets the client's address appended, ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` are set when absent; ``Via`` gets ``1.1 <pseudonym>`` appended (the
pseudonym is this proxy instance's, :attr:`ProxyIdentity.pseudonym`). The request target
goes upstream byte for byte as the client sent it (``raw_path``: no re-quoting, no dot
segment removal), after the upstream URL's own path. Bodies are never decompressed.

The proxy's only own answers, each a JSON ``{"error": ...}`` and one log line:

- ``502``: the upstream cannot be reached (refused, reset, ``proxy_connect_timeout``), or
  hung up before its whole answer was read (an answer is read whole when its
  ``Content-Length`` is at most :data:`WHOLE`).
- ``504``: the upstream was silent for ``proxy_read_timeout`` before its answer was read.
- ``508``: the request's ``Via`` already names this proxy: the upstream leads back to it
  (a loop is answered on its first return instead of consuming connections until none are
  left).

An answer being streamed that breaks off (or goes silent) is cut: the client's connection is
closed so it sees an incomplete answer, never a made-up ending. A start-up check
(:func:`refuse_own_address`) refuses an upstream that is the proxy's own listening address.

A request a ``mirror:`` rule matches (method and path, known before the body) is copied,
with the upstream's answer when the rule reads it (``response.*`` sources), into the
:class:`~shadow.sources.mirror.MirrorSink` after the answer has been sent, with a
``put_nowait``: a full queue, or a slow or broken store or agent, drops the copy (counted),
and the primary request is never delayed or failed by the sidecar. While the queue is full
nothing is buffered for a copy at all. A body over ``max_body_bytes`` is still proxied; its
copy is a ``too_large`` dead letter.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from shadow.config import Settings
from shadow.errors import ConfigError, Reason
from shadow.mirror import Captured, match
from shadow.server import error, handler_options
from shadow.sources.mirror import MIRROR, Mirrored, MirrorSink

__all__ = [
    "HOP_BY_HOP",
    "IDENTITY",
    "UPSTREAM",
    "WHOLE",
    "ProxyIdentity",
    "build_proxy_app",
    "refuse_own_address",
]

log = logging.getLogger("shadow.proxy")

WHOLE = 256 * 1024
"""Bodies with a ``Content-Length`` up to this many bytes are read and sent in one piece."""
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class ProxyIdentity:
    """Who this proxy is on the wire, and where it forwards to."""

    pseudonym: str
    """Its ``Via`` received-by name: unique per proxy instance unless one is given."""
    upstream: URL
    """``proxy_upstream``; its path (if any) is put before every forwarded target."""

    @classmethod
    def of(cls, settings: Settings, pseudonym: str | None = None) -> ProxyIdentity:
        if settings.proxy_upstream is None:
            raise ConfigError("the proxy needs proxy_upstream")
        return cls(
            pseudonym or f"shadow-proxy-{secrets.token_hex(6)}", URL(settings.proxy_upstream)
        )

    def target(self, request: web.Request) -> URL:
        """The upstream URL whose request target is the client's, byte for byte.

        ``URL.build(..., encoded=True)`` with the whole target as its path keeps every
        byte (``%6F``, ``/../``, ``;``, an empty ``?``); a target in absolute form (rare
        at a reverse proxy) is sent in origin form."""
        raw = request.raw_path
        if not raw.startswith("/"):
            raw = request.rel_url.raw_path_qs
        up = self.upstream
        prefix = up.raw_path.rstrip("/")
        return URL.build(
            scheme=up.scheme, authority=up.raw_authority, path=prefix + raw, encoded=True
        )

    def seen_in(self, headers: Any) -> bool:
        """Whether a ``Via`` in ``headers`` names this proxy (``1.1 <pseudonym>``)."""
        for value in headers.getall("Via", ()):
            for hop in value.split(","):
                parts = hop.split()
                if len(parts) >= 2 and parts[1] == self.pseudonym:
                    return True
        return False


UPSTREAM = web.AppKey("proxy_upstream", aiohttp.ClientSession)
IDENTITY = web.AppKey("proxy_identity", ProxyIdentity)
_SETTINGS = web.AppKey("proxy_settings", Settings)


class _BrokenOff(Exception):
    """The upstream's answer broke off after part of it was sent on (the client's
    connection is already closed)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the upstream's answer broke off")
        self.response = response


def _hop_by_hop(headers: Any) -> frozenset[str]:
    named = {h.strip().lower() for v in headers.getall("Connection", ()) for h in v.split(",")}
    return HOP_BY_HOP | named


def _request_headers(request: web.Request, pseudonym: str) -> CIMultiDict[str]:
    skip = _hop_by_hop(request.headers)
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in skip
    )
    vias = out.popall("Via", [])
    vias.append(f"{request.version.major}.{request.version.minor} {pseudonym}")
    out["Via"] = ", ".join(vias)
    remote = request.remote or ""
    seen = out.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{seen}, {remote}" if seen else remote
    out.setdefault("X-Forwarded-Proto", request.scheme)
    if request.host:
        out.setdefault("X-Forwarded-Host", request.host)
    return out


def _response_headers(up: aiohttp.ClientResponse, *, whole: bool) -> CIMultiDict[str]:
    skip = _hop_by_hop(up.headers)
    if whole:
        skip = skip | {"content-length"}  # set again by aiohttp from the body
    return CIMultiDict((k, v) for k, v in up.headers.items() if k.lower() not in skip)


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward ``request`` to the upstream; see the module docstring."""
    sink = request.app[MIRROR]
    settings = request.app[_SETTINGS]
    session = request.app[UPSTREAM]
    me = request.app[IDENTITY]
    if me.seen_in(request.headers):
        via = ", ".join(request.headers.getall("Via"))
        log.warning(
            "proxy: loop: %s %s came back through this proxy (Via: %s); "
            "the upstream %s leads back to it",
            request.method,
            request.path,
            via,
            settings.proxy_upstream,
        )
        return error(
            508,
            f"loop detected: the request already passed through this proxy ({me.pseudonym}); "
            f"its upstream leads back to it (Via: {via})",
        )
    found = match(sink.policy.mirror, request.method, request.path, with_response=True)
    if found is not None and not sink.accepting:
        sink.dropped(found[0].name)  # nothing is buffered for a copy that cannot be queued
        found = None
    wants_response = found is not None and found[0].needs_response
    limit = settings.max_body_bytes
    kept: bytearray | None = bytearray() if found is not None else None
    too_large = False

    length = request.content_length
    data: Any = None
    if request.body_exists:
        if length is not None and length <= WHOLE:
            try:
                data = await request.content.readexactly(length)
            except asyncio.IncompleteReadError as exc:  # the client went away mid-body
                raise ConnectionResetError("the client closed the connection mid-body") from exc
            if kept is not None:
                kept += data
        else:

            async def body() -> AsyncIterator[bytes]:
                nonlocal kept, too_large
                async for chunk in request.content.iter_any():
                    if kept is not None:
                        if len(kept) + len(chunk) > limit:
                            kept, too_large = None, True
                        else:
                            kept += chunk
                    yield chunk

            data = body()
    try:
        async with session.request(
            request.method,
            me.target(request),
            headers=_request_headers(request, me.pseudonym),
            data=data,
            allow_redirects=False,
        ) as up:
            answer, response_body = await _relay(request, up, keep=wants_response, limit=limit)
    except _BrokenOff as cut:
        return cut.response  # already cut; nothing to copy
    except aiohttp.ClientError as exc:
        return _failed(request, settings, exc)
    except TimeoutError:
        return _failed(request, settings, aiohttp.SocketTimeoutError())
    if found is not None:
        _copy(sink, request, kept, too_large, answer.status, up, response_body)
    return answer


def _failed(request: web.Request, settings: Settings, exc: BaseException) -> web.Response:
    """The proxy's own answer when the upstream failed before any of its answer was sent
    on; one log line, no traceback."""
    where = f"{request.method} {request.path}"
    if request.transport is None or request.transport.is_closing():
        log.info("proxy: the client left %s: %s", where, _reason(exc))
        return error(502, "the client left")  # not delivered: ends the request quietly
    upstream = settings.proxy_upstream
    if isinstance(exc, aiohttp.SocketTimeoutError):  # checked first: it is a connection error
        seconds = settings.proxy_read_timeout
        log.warning("proxy: upstream %s silent for %g s: 504 for %s", upstream, seconds, where)
        return error(504, f"the upstream was silent for {seconds:g} s")
    if isinstance(exc, aiohttp.ClientPayloadError):
        log.warning(
            "proxy: upstream %s hung up mid-answer: 502 for %s (%s)", upstream, where, _reason(exc)
        )
        return error(502, "the upstream hung up before its whole answer was read")
    log.warning("proxy: upstream %s unreachable: 502 for %s (%s)", upstream, where, _reason(exc))
    return error(502, f"the upstream did not answer: {type(exc).__name__}")


def _reason(exc: BaseException) -> str:
    """``exc`` in one line: its type, its message and the cause aiohttp wraps."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if exc.__cause__ is not None and str(exc.__cause__) not in text:
        text += f" ({type(exc.__cause__).__name__}: {exc.__cause__})".replace("\n", " ")
    return text


async def _relay(
    request: web.Request, up: aiohttp.ClientResponse, *, keep: bool, limit: int
) -> tuple[web.StreamResponse, bytes | None]:
    """The upstream's answer sent on; its body too, when ``keep`` (``None`` beyond
    ``limit``)."""
    size = up.content_length
    if size is not None and size <= WHOLE and request.method != "HEAD" and up.status >= 200:
        body = await up.read()
        whole = web.Response(
            status=up.status, reason=up.reason, body=body, headers=_response_headers(up, whole=True)
        )
        return whole, body if keep else None
    resp = web.StreamResponse(
        status=up.status, reason=up.reason, headers=_response_headers(up, whole=False)
    )
    await resp.prepare(request)
    kept: bytearray | None = bytearray() if keep else None
    chunks = up.content.iter_any()
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except (aiohttp.ClientError, TimeoutError) as exc:
            _cut(request, exc)
            raise _BrokenOff(resp) from exc
        try:
            await resp.write(chunk)
        except ConnectionError as exc:
            where = f"{request.method} {request.path}"
            log.info("proxy: the client left during the answer to %s", where)
            raise _BrokenOff(resp) from exc
        if kept is not None:
            kept = kept + chunk if len(kept) + len(chunk) <= limit else None
    await resp.write_eof()
    return resp, bytes(kept) if kept is not None else None


def _cut(request: web.Request, exc: BaseException) -> None:
    """Part of the answer is out: the client must see it cut, not a made-up ending. The
    connection is closed here and the handler returns: aiohttp's handling of a raised error
    would log a traceback for what is the upstream's doing."""
    log.warning(
        "proxy: the upstream's answer to %s %s broke off after it began; cut (%s)",
        request.method,
        request.path,
        _reason(exc),
    )
    if request.transport is not None:
        request.transport.close()


def _copy(
    sink: MirrorSink,
    request: web.Request,
    kept: bytearray | None,
    too_large: bool,
    status: int,
    up: aiohttp.ClientResponse,
    response_body: bytes | None,
) -> None:
    """Offer the copy; never raises (a copy must not fail the request it copies)."""
    try:
        seen = Captured(
            request.method,
            request.path,
            dict(request.query.items()),
            {k.lower(): v for k, v in request.headers.items()},
            bytes(kept) if kept is not None else b"",
            status,
            {k.lower(): v for k, v in up.headers.items()},
            response_body or b"",
        )
        if too_large:
            message = f"body larger than {sink.settings.max_body_bytes} bytes; proxied, not copied"
            sink.offer(Mirrored(seen, "proxy", Reason.TOO_LARGE, message))
        else:
            sink.offer(Mirrored(seen, "proxy"))
    except Exception:
        log.exception(
            "proxy: copying %s %s failed; the request was served", request.method, request.path
        )


def refuse_own_address(upstream: str, listening: socket.socket) -> None:
    """Raise :class:`~shadow.errors.ConfigError` when ``upstream`` resolves to the address
    ``listening`` (the proxy's bound socket) accepts on: such a proxy would forward every
    request to itself. A wildcard listener (``0.0.0.0``, ``::``) accepts on every local
    address; an address is local when a socket can be bound to it. Blocking (DNS): call it
    at start-up. An upstream that does not resolve yet is not refused here."""
    url = URL(upstream)
    if url.host is None or url.port is None:
        return
    bound = listening.getsockname()
    if bound[1] != url.port:
        return
    mine = ipaddress.ip_address(bound[0].split("%")[0])
    v4_too = mine.version == 6 and not listening.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    try:
        infos = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return
    for family, _, _, _, address in infos:
        theirs = ipaddress.ip_address(str(address[0]).split("%")[0])
        same = theirs == mine
        if not same and mine.is_unspecified and (theirs.version == mine.version or v4_too):
            same = _is_local(family, str(address[0]))
        if same:
            raise ConfigError(
                f"the proxy's upstream {upstream} is the proxy itself (listening on "
                f"{bound[0]}:{bound[1]}): every request would come back to it; "
                "set --upstream to the host's address"
            )


def _is_local(family: int, host: str) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True


def build_proxy_app(
    sink: MirrorSink, settings: Settings, *, pseudonym: str | None = None
) -> web.Application:
    """The proxy as an aiohttp application (its own upstream client session, closed with
    it). Serve it with :class:`shadow.server.Listener`. ``pseudonym`` is its ``Via`` name
    (default: one unique to this instance)."""
    app = web.Application(handler_args=handler_options(settings))
    app[MIRROR] = sink
    app[_SETTINGS] = settings
    app[IDENTITY] = ProxyIdentity.of(settings, pseudonym)

    async def upstream(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.proxy_connect_timeout,
            sock_read=settings.proxy_read_timeout,
        )
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            app[UPSTREAM] = session
            yield

    app.cleanup_ctx.append(upstream)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app
