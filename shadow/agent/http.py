"""The HTTP transport: ``POST`` with the shadow markers, bounded answers, aiohttp errors
translated into :class:`~shadow.errors.AgentError`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
from yarl import URL

from shadow.agent.base import _SNIPPET_BYTES, _check_timeout, _clip, _kind
from shadow.errors import AgentError, ConfigError


class HttpAgent:
    """``POST``s requests to an agent URL.

    Owns an ``aiohttp.ClientSession`` (created on first use, closed by :meth:`close`) unless
    ``session`` is passed, which then stays the caller's to close. Redirects are not followed
    (a 3xx is a failed call): shadow traffic goes to the configured agent and nowhere else.
    ``traceparent(event_id)`` gives the W3C ``traceparent`` header of the case's
    ``invoke_agent`` span (:meth:`shadow.tracing.Tracer.traceparent`; ``None``: no header),
    so an instrumented agent's own spans join the case's trace.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_response_bytes: int = 1_048_576,
        session: aiohttp.ClientSession | None = None,
        traceparent: Callable[[str], str | None] | None = None,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"agent URL must be http(s)://host[:port]/path, got {url!r}")
        if max_response_bytes < 1:
            raise ConfigError(f"max_response_bytes must be at least 1, got {max_response_bytes}")
        self.url = url
        self._timeout = _check_timeout(timeout)
        self._max_bytes = max_response_bytes
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._traceparent = traceparent

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise AgentError("agent client is closed")
        if self._session is None:
            # No connector limit: the runner's semaphore is the one bound on calls in flight,
            # and a second queue here would eat into each call's timeout.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            body = json.dumps(dict(request), separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise AgentError(f"request is not JSON: {exc}") from None
        headers = {
            "Content-Type": "application/json",
            "X-Shadow-Mode": "true",
            "X-Shadow-Event-Id": str(request.get("event_id", "")),
        }
        if request.get("tools_url"):
            headers["X-Shadow-Tools-Url"] = str(request["tools_url"])
        if request.get("repeat") is not None:  # a repeated case's try (shadow.noise)
            headers["X-Shadow-Repeat"] = str(request["repeat"])
        if self._traceparent is not None:
            parent = self._traceparent(headers["X-Shadow-Event-Id"])
            if parent is not None:
                headers["traceparent"] = parent
        session = self._client()
        try:
            async with session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as resp:
                if not 200 <= resp.status < 300:
                    snippet = await resp.content.read(_SNIPPET_BYTES)
                    text = _clip(snippet.decode("utf-8", "replace")) or resp.reason
                    raise AgentError(
                        f"HTTP {resp.status}: {text}" if text else f"HTTP {resp.status}"
                    )
                raw = await self._read_limited(resp)
        # Order matters: aiohttp's ServerTimeoutError is both a TimeoutError and a
        # ClientConnectionError, and a timeout must never be retried.
        except TimeoutError:
            raise AgentError(f"timeout after {self._timeout} s") from None
        except aiohttp.ClientConnectionError as exc:
            raise AgentError(f"connection failed: {_clip(str(exc))}", retriable=True) from None
        except aiohttp.ClientError as exc:
            raise AgentError(f"{type(exc).__name__}: {_clip(str(exc))}") from None
        return _parse_answer(raw)

    async def _read_limited(self, resp: aiohttp.ClientResponse) -> bytes:
        too_big = f"response larger than the limit of {self._max_bytes} bytes"
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            raise AgentError(too_big)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65_536):
            size += len(chunk)
            if size > self._max_bytes:
                raise AgentError(too_big)
            chunks.append(chunk)
        return b"".join(chunks)


def _parse_answer(raw: bytes) -> Mapping[str, Any]:
    if not raw.strip():
        raise AgentError("invalid JSON: empty body")
    try:
        value = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise AgentError(f"invalid JSON: {_clip(str(exc))}") from None
    except RecursionError:
        raise AgentError("invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise AgentError(f"answer is {_kind(value)}, expected a JSON object")
    return value
