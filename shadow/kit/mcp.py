"""A case's MCP session: one official-SDK ``Client`` on the case's tools URL.

:meth:`Case.tools <shadow.kit.Case.tools>` opens it on first use and the service closes it
before the case is answered, so every tool call the agent made is in the case's record
before the sidecar settles it. The session is held open by a task of its own (the SDK's
transport runs an anyio task group, which must be entered and left in one task): a
handler may then use the client from any task it starts (``asyncio.gather``, a framework's
tool runner), and the service closes it from its own.

- **Timeouts.** Connecting and sending are bounded by :data:`CONNECT_TIMEOUT`; reading an
  answer by the case's deadline (a tool call can never outlive the case).
- **No automatic retry.** The SDK's client sends each ``tools/call`` once and so does this
  session (no transport retries). Whoever retries a write decides to; the gateway attaches
  an identical retry to the first write anyway (docs/gateway.md).
- **Closing.** A handshake session is ended with ``DELETE``; an answer other than 2xx (a
  ``404`` from a sidecar that no longer knows the session, say) is logged by the SDK and
  otherwise ignored, as is any failure to close: the case's decision stands, and the
  gateway ends a case's sessions itself when the case settles. Closing is bounded by
  :data:`CLOSE_TIMEOUT`, after which the holding task is cancelled.

The tools URL is a credential (it grants the case's tools): it is never logged, and error
messages name it ``<tools URL>``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from shadow.kit.errors import ToolsError, describe, scrub

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["CLOSE_TIMEOUT", "CONNECT_TIMEOUT", "ToolSession"]

CONNECT_TIMEOUT = 5.0  # seconds to connect, send a request or get a pooled connection
CLOSE_TIMEOUT = 1.0  # seconds closing may take before the session is abandoned
CLIENT_NAME = "shadow-kit"

log = logging.getLogger("shadow.kit")


class ToolSession:
    """The SDK ``Client`` of one tools URL, opened once (:meth:`client`) and closed once
    (:meth:`close`, idempotent). ``read_timeout``: seconds to wait for any one answer."""

    def __init__(self, url: str, *, read_timeout: float) -> None:
        self._url = url
        self._read_timeout = read_timeout
        self._client: Client | None = None
        self._holder: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def opened(self) -> bool:
        return self._holder is not None

    async def client(self) -> Client:
        """The open client; the first call opens it (later ones wait for that)."""
        async with self._lock:
            if self._closed:
                raise ToolsError("the case's tools session is closed (the case was answered)")
            if self._holder is None:
                self._holder = asyncio.get_running_loop().create_task(self._hold())
            holder = self._holder
            if self._client is None:
                ready = asyncio.ensure_future(self._ready.wait())
                try:
                    await asyncio.wait([ready, holder], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ready.cancel()
            if self._client is None:  # the holder ended: it could not open the session
                exc = holder.exception() if holder.done() and not holder.cancelled() else None
                why = describe(exc) if exc is not None else "it ended before it opened"
                raise ToolsError(f"cannot open the case's tools session: {scrub(why, self._url)}")
            return self._client

    async def _hold(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.types import Implementation

        timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=self._read_timeout)
        async with (
            httpx2.AsyncClient(timeout=timeout, follow_redirects=False) as http,
            Client(
                streamable_http_client(self._url, http_client=http),
                read_timeout_seconds=self._read_timeout,
                client_info=Implementation(name=CLIENT_NAME, version="1"),
            ) as client,
        ):
            self._client = client
            self._ready.set()
            await self._stop.wait()

    async def close(self) -> None:
        """End the session (``DELETE`` for a handshake session) within
        :data:`CLOSE_TIMEOUT`; failures are logged, never raised."""
        self._closed = True
        self._stop.set()
        holder, self._holder = self._holder, None
        self._client = None
        if holder is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(holder)
        except TimeoutError:
            holder.cancel()
            await asyncio.wait([holder])
            if not holder.cancelled():
                holder.exception()  # retrieved: it is the abandoned session's, not news
            log.warning("closing a case's tools session took over %s s; abandoned", CLOSE_TIMEOUT)
        except Exception as exc:
            why = scrub(describe(exc), self._url)
            log.warning("closing a case's tools session failed: %s", why)
