"""The mirroring reverse proxy (``shadow proxy``, or ``shadow run --proxy-upstream``), for
hosts with no proxy or mesh of their own to mirror from.

Every request goes to ``proxy_upstream`` and its answer comes back unchanged: status,
reason, headers and body, streamed both ways (a body with a ``Content-Length`` of at most
:data:`WHOLE` bytes is passed in one piece, which is faster and changes nothing on the wire).
Hop-by-hop headers (``Connection`` and those it names, ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) are not forwarded; the client's ``Host`` is;
``X-Forwarded-For`` gets the client's address appended, ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` are set when absent. Bodies are never decompressed. An upstream that
cannot be reached is a JSON ``502``, one that does not answer within
``proxy_read_timeout`` a ``504``: those are the proxy's only own answers.

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
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from shadow.config import Settings
from shadow.errors import Reason
from shadow.mirror import Captured, match
from shadow.server import error, handler_options
from shadow.sources.mirror import MIRROR, Mirrored, MirrorSink

__all__ = ["HOP_BY_HOP", "UPSTREAM", "WHOLE", "build_proxy_app"]

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
UPSTREAM = web.AppKey("proxy_upstream", aiohttp.ClientSession)
_SETTINGS = web.AppKey("proxy_settings", Settings)


def _hop_by_hop(headers: Any) -> frozenset[str]:
    named = {h.strip().lower() for v in headers.getall("Connection", ()) for h in v.split(",")}
    return HOP_BY_HOP | named


def _request_headers(request: web.Request) -> CIMultiDict[str]:
    skip = _hop_by_hop(request.headers)
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in skip
    )
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
    url = settings.proxy_upstream + request.path_qs  # type: ignore[operator]
    try:
        async with session.request(
            request.method,
            url,
            headers=_request_headers(request),
            data=data,
            allow_redirects=False,
        ) as up:
            answer, response_body = await _relay(request, up, keep=wants_response, limit=limit)
    except aiohttp.ClientConnectionError as exc:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away: nothing to answer
        log.warning("proxy: upstream %s unreachable: %s", settings.proxy_upstream, exc)
        return error(502, f"the upstream did not answer: {type(exc).__name__}")
    except TimeoutError:
        return error(504, f"the upstream was silent for {settings.proxy_read_timeout:g} s")
    if found is not None:
        _copy(sink, request, kept, too_large, answer.status, up, response_body)
    return answer


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
    try:
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
            if kept is not None:
                kept = kept + chunk if len(kept) + len(chunk) <= limit else None
    except aiohttp.ClientError as exc:
        # Part of the answer is out: the client must see it cut, not a made-up ending.
        log.warning("proxy: the upstream's answer broke off: %s", exc)
        raise ConnectionResetError("the upstream's answer broke off") from exc
    await resp.write_eof()
    return resp, bytes(kept) if kept is not None else None


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


def build_proxy_app(sink: MirrorSink, settings: Settings) -> web.Application:
    """The proxy as an aiohttp application (its own upstream client session, closed with
    it). Serve it with :class:`shadow.server.Listener`."""
    app = web.Application(handler_args=handler_options(settings))
    app[MIRROR] = sink
    app[_SETTINGS] = settings

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
