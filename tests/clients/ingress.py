"""An ingress in front of the sidecar for the client tests: a reverse proxy on loopback (the
sidecar's ``public_url``, so the tools URLs it hands out point at it) that passes every
request through and can hold one answer back.

This is where a real deployment puts a load balancer, and where a real agent's answer gets
late: :class:`Ingress` holds the sidecar's answer to the *first* request that ``hold``
matches until a later request that ``hold`` matches has been answered (or ``bound`` seconds,
a guard against a hung test, not a timing). A client whose timeout is shorter gives up on
the first request while its answer is held, and its retry goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

__all__ = ["Ingress"]

# Hop-by-hop and framing headers: each leg sets its own.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}
)


def _message(body: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


class Ingress:
    """``url``: give it to the sidecar as ``public_url``; ``target``: the sidecar's own URL,
    set once the sidecar runs. ``matched``: the JSON-RPC messages ``hold`` matched, in the
    order they arrived; ``held``: how many answers were held back."""

    def __init__(
        self, hold: Callable[[dict[str, Any] | None], bool], *, bound: float = 30.0
    ) -> None:
        self.hold = hold
        self.bound = bound
        self.url = ""
        self.target = ""
        self.matched: list[dict[str, Any]] = []
        self.held = 0
        self._answered = asyncio.Event()  # a later matching request was answered
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._pass)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Idempotent: lets a held answer go, stops serving, closes the client session."""
        self._answered.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _pass(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        assert self.target, "set target to the sidecar's URL"
        body = await request.read()
        message = _message(body) if body else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=["Content-Type", "Accept-Encoding", "User-Agent"],
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            answer_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
        if message is not None and self.hold(message):
            self.matched.append(message)
            if len(self.matched) == 1:
                self.held += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.bound):
                        await self._answered.wait()
            else:
                self._answered.set()
        return web.Response(body=payload, status=status, headers=answer_headers)
