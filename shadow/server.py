"""The HTTP server around the API: every answer is JSON, slow clients are cut off, and a
client that goes away costs one log line.

- :func:`json_errors` (middleware): an HTTP error raised by aiohttp or a handler (404, 405,
  413 from reading a body...) becomes ``{"error": "..."}`` with its status and headers; a
  failure of the store (:class:`~shadow.errors.StoreError`: full disk, damaged file...) is a
  503 with its one-line message (the store logs one warning line per change of its state,
  not one per request); an exception nobody
  handled is a JSON 500 logged with its traceback (that is a bug); a client that disconnects
  mid-request is one warning line.
- :class:`JsonErrorHandler`: aiohttp answers what its HTTP parser refuses (a bad request
  line, malformed or oversized headers) before any middleware runs. This connection handler
  makes those answers JSON too, and logs each as one line instead of a traceback.
- :func:`expect_continue`, :func:`send_continue`: ``Expect: 100-continue`` answered in JSON;
  a body whose declared ``Content-Length`` is over the limit is refused with 413 before
  ``100 Continue`` is sent, so the client never sends it.
- Timeouts (:func:`handler_options`): ``header_timeout`` bounds how long a connection may
  take to deliver a complete request head (request line and headers), counted from when it
  connects or its previous answer was sent; a slow sender is disconnected, and an idle
  keep-alive connection closes after the same time (aiohttp keeps one timer for both).
  ``body_timeout`` bounds reading an ingest body (408, :mod:`shadow.api`).
- :class:`Listener` serves an application on a listening socket with all of the above;
  :func:`run_server` is ``shadow run``'s loop (until SIGINT or SIGTERM).
- Capabilities are never logged: a tools URL's path (``/mcp/<capability>``) is a credential.
  Every line the server writes shows it as ``/mcp/v1.…<6 characters of its MAC>`` (enough to
  tell two apart, useless to replay): the access log (:class:`RedactedAccessLogger`, aiohttp's
  default format), this module's own lines, and, through :func:`redact_logs` (a filter on
  aiohttp's and the sidecar's server loggers), any message or traceback of theirs.

Bodies are not decompressed by aiohttp (``auto_decompress=False``): ingest decodes them
itself (:func:`shadow.ingest.decode_body`), so a truncated gzip stream is refused whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.log import access_logger

from shadow.config import Settings
from shadow.errors import StoreError
from shadow.supervisor import SUPERVISOR

__all__ = [
    "LISTEN_URL",
    "ExpectHandler",
    "JsonErrorHandler",
    "Listener",
    "RedactedAccessLogger",
    "declared_too_large",
    "error",
    "expect_continue",
    "handler_options",
    "json_errors",
    "redact",
    "redact_logs",
    "run_server",
    "send_continue",
    "with_expect_handler",
]

log = logging.getLogger("shadow.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]

# nginx's code for "client closed request": the answer is never delivered, but the access
# log says what happened.
CLIENT_CLOSED = 499
# The address the Listener serves on (``http://host:port``), set before start-up so the tool
# gateway can hand out tools URLs without a configured ``public_url``.
LISTEN_URL = web.AppKey("listen_url", str)
_SHOWN = 200  # characters of a client-chosen path or header value repeated in a message


def error(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> web.Response:
    """The JSON error answer: ``{"error": message}``, plus ``errors`` when given."""
    body: dict[str, Any] = {"error": message}
    if errors is not None:
        body["errors"] = errors
    return web.json_response(body, status=status)


def handler_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of aiohttp's connection handler for ``settings`` (also passed as
    the application's ``handler_args``, so every runner of the app gets them)."""
    return {"auto_decompress": False, "keepalive_timeout": settings.header_timeout}


# -- capabilities out of the logs ------------------------------------------------------------

# A tools URL's last segment (shadow.gateway.capability: ``v1.<payload>.<mac>``), and a
# capability anywhere else in a text (a tools URL quoted in a message).
_MCP_SEGMENT = re.compile(r"(/mcp/)(?!v1\.…|…)([^/?#\s\"'<>]+)", re.IGNORECASE)
_CAPABILITY = re.compile(r"v1\.[A-Za-z0-9_-]{8,}\.([A-Za-z0-9_-]{6,})")


def _redacted(segment: str) -> str:
    """A capability as a log may show it (as :func:`shadow.gateway.capability.redacted`):
    the first 6 characters of its MAC. Anything else in its place is not shown at all."""
    found = _CAPABILITY.fullmatch(segment)
    return f"v1.…{found[1][:6]}" if found else "…"


def redact(text: str) -> str:
    """``text`` with every capability in it, in a tools URL's path or on its own, redacted
    (idempotent: a redacted form stays as it is)."""
    if "v1." not in text and "/mcp/" not in text.lower():
        return text
    text = _MCP_SEGMENT.sub(lambda m: m[1] + _redacted(m[2]), text)
    return _CAPABILITY.sub(lambda m: _redacted(m[0]), text)


class _RedactFilter(logging.Filter):
    """Rewrites a record whose message or traceback holds a capability; passes every one."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if redact(text) != text:
                record.exc_text = text  # what a formatter prints instead of formatting anew
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = _RedactFilter()
# The loggers that write request paths: aiohttp's access, server and web loggers, and the
# sidecar's own server and gateway loggers (a filter acts on its logger's records only).
_REDACTED_LOGGERS = (
    "aiohttp.access",
    "aiohttp.server",
    "aiohttp.web",
    "asyncio",
    "shadow.server",
    "shadow.gateway",
    # The HTTP clients an in-process agent reaches its tools URL with (the MCP SDK's is
    # httpx2): they log every request's URL at INFO.
    "httpx",
    "httpx2",
)


def redact_logs() -> None:
    """Install the capability filter on the loggers that write request paths (idempotent;
    :class:`Listener` calls it before serving)."""
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class RedactedAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line in its default format (``%a %t "%r" %s %b "%{Referer}i"
    "%{User-Agent}i"``) with capabilities redacted from the request line and the referer.
    ``access_log_format`` is not read: a format could name the raw path again."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        start = datetime.now().astimezone() - timedelta(seconds=time)
        version = request.version
        self.logger.info(
            '%s %s "%s %s HTTP/%d.%d" %d %d "%s" "%s"',
            request.remote or "-",
            start.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
            request.method,
            redact(request.raw_path),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            redact(request.headers.get("Referer", "-")),
            redact(request.headers.get("User-Agent", "-")),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


# -- errors -----------------------------------------------------------------------------------


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer of a routed request in JSON (see the module docstring)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return _from_http_exception(request, exc)
    except ConnectionError as exc:
        _log_disconnect(request, exc)
        return error(CLIENT_CLOSED, "client disconnected")
    except TimeoutError:
        log.exception("%s %s timed out", request.method, _shown_path(request))
        return error(504, "the sidecar timed out answering; see its log")
    except StoreError as exc:
        # The store logs each change of its state once (shadow.store.base); a line per
        # refused request would bury it (a full disk refuses every request).
        message = " ".join(str(exc).split()) or "the store failed"
        log.debug("%s %s: %s", request.method, _shown_path(request), message)
        return error(503, message)
    except Exception:
        log.exception("%s %s failed", request.method, _shown_path(request))
        return error(500, "internal error; see the sidecar's log")


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        message = f"no route {request.method} {_clip(request.path)}; GET /openapi.json lists them"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.method} is not allowed on {_clip(request.path)}; use {allowed}"
    else:
        message = exc.text or exc.reason
    resp = error(exc.status, message)
    for name, value in exc.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            resp.headers[name] = value
    return resp


def _log_disconnect(request: web.BaseRequest, exc: BaseException) -> None:
    log.warning(
        "client %s disconnected during %s %s (%s)",
        request.remote,
        request.method,
        _shown_path(request),
        redact(_one_line(str(exc))) or type(exc).__name__,
    )


def _shown_path(request: web.BaseRequest) -> str:
    """The request's path as a log line may show it: clipped, capabilities redacted."""
    return _clip(redact(request.path))


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _one_line(text: str) -> str:
    return _clip(" ".join(text.split()))


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what aiohttp itself refuses in JSON.

    aiohttp offers no hook for the requests its parser rejects (aio-libs/aiohttp#3287), so
    :meth:`handle_error`, which builds those answers, is overridden: the answer is JSON and
    the connection closes, as aiohttp does; a client error is one log line; an unexpected
    exception keeps its traceback in the log.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            _log_disconnect(request, exc)
        elif status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.warning(
                "refused a malformed request from %s: %s",
                request.remote,
                _one_line(message or str(exc)),
            )
        if request.writer.output_size > 0:  # part of an answer is out: nothing can follow
            raise ConnectionError("an answer was partly sent; cannot send an error after it")
        if status >= 500:
            text = "internal error; see the sidecar's log"
        else:
            text = f"malformed request: {_one_line(message or str(exc) or 'unreadable')}"
        resp = error(status, text)
        resp.force_close()
        return resp


# -- Expect: 100-continue ---------------------------------------------------------------------


async def send_continue(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's default expect handler, in JSON: ``100 Continue`` for ``Expect:
    100-continue`` on HTTP/1.1, a JSON 417 for any other expectation."""
    if request.version != HttpVersion11:
        return None
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        refusal = error(417, f"unsupported Expect {_clip(expect)!r}; only 100-continue is")
        refusal.force_close()
        return refusal
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # The interim answer is not the answer: aiohttp refuses to send an error after output.
    request.writer.output_size = 0
    return None


def declared_too_large(request: web.BaseRequest, max_bytes: int) -> web.Response | None:
    """A JSON 413 when the declared ``Content-Length`` is over ``max_bytes`` (the connection
    closes after it: the body is never read), else ``None``."""
    length = request.content_length
    if length is None or length <= max_bytes:
        return None
    refusal = error(
        413,
        f"body larger than {max_bytes} bytes ({length} declared); split it or raise max_body_bytes",
    )
    refusal.force_close()
    return refusal


def expect_continue(max_bytes: int) -> ExpectHandler:
    """An ``expect_handler`` for aiohttp routes: 413 before ``100 Continue`` when the declared
    body is over ``max_bytes``, else :func:`send_continue`."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        refusal = declared_too_large(request, max_bytes)
        return refusal if refusal is not None else await send_continue(request)

    return expect


def with_expect_handler(defs: Iterable[web.RouteDef], handler: ExpectHandler) -> list[web.RouteDef]:
    """``defs`` with ``handler`` as the expect handler of every route that names none."""
    return [
        d
        if "expect_handler" in d.kwargs
        else web.RouteDef(d.method, d.path, d.handler, {**d.kwargs, "expect_handler": handler})
        for d in defs
    ]


# -- serving ----------------------------------------------------------------------------------


class Listener:
    """Serves ``app`` on ``sock`` (bound and listening) with :class:`JsonErrorHandler` and
    the timeouts of ``settings``.

    An async context manager: entering runs the application's start-up (its
    ``cleanup_ctx``: store, pipeline, sources) and starts accepting; :meth:`close` is
    idempotent, stops accepting, lets requests in flight finish for up to
    ``shutdown_timeout`` seconds, then runs the application's clean-up. The socket is the
    listener's: :meth:`close` closes it, also after a failed :meth:`start`.
    """

    def __init__(
        self,
        app: web.Application,
        sock: socket.socket,
        settings: Settings,
        *,
        access_log: logging.Logger | None = access_logger,
        shutdown_timeout: float = 60.0,
    ) -> None:
        self._app = app
        self._sock = sock
        self._settings = settings
        self._access_log = access_log
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked, for port 0)."""
        return int(self._sock.getsockname()[1])

    async def start(self) -> Self:
        redact_logs()
        runner = web.AppRunner(
            self._app,
            access_log=self._access_log,
            access_log_class=RedactedAccessLogger,
            shutdown_timeout=self._shutdown_timeout,
        )
        self._runner = runner
        if LISTEN_URL not in self._app:
            host = self._sock.getsockname()[0]
            host = f"[{host}]" if ":" in host else host
            self._app[LISTEN_URL] = f"http://{host}:{self.port}"
        try:
            await runner.setup()
            manager = runner.server
            if manager is None:  # setup() sets it or raises
                raise RuntimeError("the aiohttp runner has no server after setup")
            loop = asyncio.get_running_loop()
            # aiohttp's runners pass access_log=None to turn the access log off, as here.
            options = {
                **handler_options(self._settings),
                "access_log": self._access_log,
                "access_log_class": RedactedAccessLogger,
            }

            def connection() -> JsonErrorHandler:
                return JsonErrorHandler(manager, loop=loop, **options)

            self._server = await loop.create_server(connection, sock=self._sock)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        runner, self._runner = self._runner, None
        if server is not None:
            server.close()
        if runner is not None:
            await runner.cleanup()
        if server is not None:
            await server.wait_closed()
        self._sock.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def serve(
    app: web.Application,
    sock: socket.socket,
    settings: Settings,
    beside: Sequence[tuple[web.Application, socket.socket]] = (),
    announce: Sequence[str] = (),
) -> int:
    """Serve ``app`` on ``sock`` (and each of ``beside`` on its socket, started after ``app``
    and stopped before it) until SIGINT or SIGTERM, or until a background task that cannot
    restart fails (:mod:`shadow.supervisor`), then shut down gracefully. The exit code: 0, or
    1 after such a failure. ``announce``: the lines that say what is serving, printed (each
    ``shadow: <line>`` on stdout) and logged (one INFO line) once every listener and the
    app's resources (store, sources) are up, never before."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(Listener(app, sock, settings))
            for other, other_sock in beside:
                await stack.enter_async_context(
                    Listener(other, other_sock, settings, shutdown_timeout=5.0)
                )
            for line in announce:
                print(f"shadow: {line}", flush=True)
            if announce:
                log.info("serving: %s", "; ".join(announce))
            supervisor = app.get(SUPERVISOR)
            waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
            if supervisor is not None:
                waits.add(asyncio.ensure_future(supervisor.wait_fatal()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            code = 1 if supervisor is not None and supervisor.fatal is not None else 0
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, ValueError):
                loop.remove_signal_handler(sig)
    return code


def run_server(
    app: web.Application,
    sock: socket.socket,
    settings: Settings,
    beside: Sequence[tuple[web.Application, socket.socket]] = (),
    announce: Sequence[str] = (),
) -> int:
    """``shadow run``'s server loop: :func:`serve` in a fresh event loop; its exit code."""
    return asyncio.run(serve(app, sock, settings, beside, announce))
