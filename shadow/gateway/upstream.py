"""One upstream MCP server, reached with the official MCP SDK's ``Client`` (Streamable
HTTP; the SDK negotiates the protocol revision: ``server/discover`` first, the
``initialize`` handshake for servers that predate it).

The client lives in a task of its own (:meth:`UpstreamClient.start`), because the SDK's
transports are anyio task groups that must be entered and left by the same task; callers on
other tasks send requests through it. It connects on first use and again after a transport
failure, so an upstream that is down at start-up or restarts later is picked up without a
sidecar restart. Upstream credentials (``headers``) are sent only to the upstream.

Errors: every failure is an :class:`UpstreamError` carrying a one-line reason; the SDK's
and httpx2's exceptions are translated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shadow.errors import UpstreamError

if TYPE_CHECKING:
    from mcp import Client

# The MCP SDK (and httpx2) are imported where a session starts or a call fails, not with the
# module: importing them costs about a second, which every ``shadow`` command (status,
# autonomy, approvals) would pay with or without a gateway.

__all__ = ["UpstreamClient", "UpstreamError"]

log = logging.getLogger("shadow.gateway")

_PAGES = 100  # a paginator that never ends cannot hang a listing


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class UpstreamClient:
    """The SDK client of one upstream. ``timeout`` bounds each request (seconds)."""

    def __init__(self, name: str, url: str, headers: dict[str, str], *, timeout: float) -> None:
        self.name = name
        self.url = url
        self._headers = headers
        self._timeout = timeout
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._wanted = asyncio.Event()
        self._broken = asyncio.Event()
        self._stop = asyncio.Event()
        self._failed = asyncio.Event()  # a connection attempt ended; waiting callers give up
        self._task: asyncio.Task[None] | None = None
        self._error = "not connected yet"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Idempotent: closes the session (and its HTTP client) and ends the task."""
        self._stop.set()
        self._wanted.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        while not self._stop.is_set():
            await self._wanted.wait()
            if self._stop.is_set():
                return
            try:
                async with (
                    httpx2.AsyncClient(
                        headers=self._headers, timeout=httpx2.Timeout(self._timeout)
                    ) as http,
                    Client(
                        streamable_http_client(self.url, http_client=http),
                        cache=None,
                        read_timeout_seconds=self._timeout,
                    ) as client,
                ):
                    self._client = client
                    self._broken.clear()
                    self._connected.set()
                    log.info(
                        "gateway upstream %s connected (%s)", self.name, client.protocol_version
                    )
                    stop = asyncio.ensure_future(self._stop.wait())
                    broken = asyncio.ensure_future(self._broken.wait())
                    try:
                        await asyncio.wait({stop, broken}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop.cancel()
                        broken.cancel()
            except Exception as exc:  # boundary: whatever the SDK or the network raised
                why = _clip(str(exc) or type(exc).__name__)
                self._error = f"cannot connect to upstream {self.name}: {why}"
                log.warning("gateway %s", self._error)
            finally:
                self._client = None
                self._connected.clear()
            if not self._stop.is_set():
                self._wanted.clear()  # reconnect on the next call, not in a loop
                self._failed.set()

    async def _session(self) -> Client:
        if self._client is not None and self._connected.is_set():
            return self._client
        if self._stop.is_set():
            raise UpstreamError(f"upstream {self.name} is closed")
        self._failed.clear()
        self._wanted.set()
        connected = asyncio.ensure_future(self._connected.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait(
                {connected, failed}, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            connected.cancel()
            failed.cancel()
        if self._client is None:
            raise UpstreamError(self._error)
        return self._client

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool the upstream lists now, as JSON objects (MCP ``Tool`` shape)."""
        client = await self._session()
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            for _ in range(_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools.extend(
                    t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in page.tools
                )
                cursor = page.next_cursor
                if not cursor:
                    break
        except _mcp_error() as exc:
            raise UpstreamError(
                f"upstream {self.name}: tools/list failed: {_clip(str(exc))}"
            ) from None
        except Exception as exc:  # boundary: transport failures
            self._broken.set()
            raise UpstreamError(
                f"upstream {self.name}: {_clip(str(exc) or type(exc).__name__)}"
            ) from None
        return tools

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, guard: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """The upstream's ``CallToolResult`` for ``name`` as a JSON object. ``guard`` is
        called right before the request is sent, after the connection is ready (it raises
        to stop the call: the last check of a write's level). An upstream that cannot be
        reached raises :class:`UpstreamError` with ``sent=False``: nothing left."""
        try:
            client = await self._session()
        except UpstreamError as exc:
            raise UpstreamError(str(exc), sent=False) from None
        if guard is not None:
            guard()
        try:
            result = await client.call_tool(name, arguments)
        except _mcp_error() as exc:
            raise UpstreamError(f"upstream {self.name}: {_clip(str(exc))}") from None
        except Exception as exc:  # boundary: transport failures
            self._broken.set()
            raise UpstreamError(
                f"upstream {self.name}: {_clip(str(exc) or type(exc).__name__)}"
            ) from None
        out = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        out.pop("_meta", None)
        out.pop("resultType", None)
        return out


def _mcp_error() -> type[Exception]:
    from mcp import MCPError

    return MCPError
