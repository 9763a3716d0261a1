"""A typed client for host systems: events and outcomes, routing, live tool sessions and
held writes, in two flavours with one behaviour: :class:`Client` (blocking, the standard
library's ``urllib``, no event loop) and :class:`AsyncClient` (aiohttp).

::

    from shadow.client import Client

    with Client("http://127.0.0.1:8750", token="...") as shadow:
        shadow.send_events([{"event_id": "r-1", "task_type": "refund_request", "payload": {...}}])
        route = shadow.route("refund_request", "r-1")     # {"handler", "level", "handled_by", ...}
        shadow.send_outcomes([{"event_id": "r-1", "decision": {"action": "approve"}}])

**Ingest** sends NDJSON batches of ``batch_size`` records, gzip-compressed by default, with the
token as ``Authorization: Bearer`` (``token``) or ``X-Shadow-Ingest-Token``
(``ingest_token``), and signed (``X-Shadow-Signature``) when given ``signature_secret``, with
the code the sidecar checks with (:mod:`shadow.signing`). The answer's per-record errors come
back in :class:`IngestResult` (a batch is not refused for one bad record).

**Retries are safe by construction.** Ingest is idempotent on the sidecar's side (a
re-delivered record is a ``duplicate``; nothing is counted twice), and so is a route (the
first routing record of an item is the one kept). So those are retried on a connection error
and on 408, 429, 502, 503 and 504, up to ``retries`` times with doubling backoff. Opening a
session, approving and rejecting are retried only when the request never reached the
sidecar (connection refused).

**Errors** are the ones the API defines, as exceptions rooted at :class:`ShadowAPIError`
(``status``, ``message``, ``errors``): :class:`BadRequest` (400), :class:`Unauthorized`
(401), :class:`Forbidden` (403), :class:`NotFound` (404), :class:`Conflict` (409),
:class:`PayloadTooLarge` (413), :class:`Unavailable` (503, other 5xx, or no connection:
``status`` 0). Importing this module imports no store, broker or server code.
"""

from __future__ import annotations

import asyncio
import gzip as gzip_module
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode

from shadow.signing import TOKEN_HEADER, sign

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Forbidden",
    "IngestResult",
    "NotFound",
    "PayloadTooLarge",
    "ShadowAPIError",
    "Unauthorized",
    "Unavailable",
]

RETRYABLE = frozenset({408, 429, 502, 503, 504})
DEFAULT_BATCH = 500
DEFAULT_TIMEOUT = 30.0


class ShadowAPIError(Exception):
    """An answer the API defines as an error: ``status`` (0 when no answer came), the
    server's ``message``, and ``errors`` (per-field or per-record, when given)."""

    def __init__(self, status: int, message: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.errors = list(errors)


class BadRequest(ShadowAPIError):
    """400: the body or a parameter was refused (``errors`` says which)."""


class Unauthorized(ShadowAPIError):
    """401: no credential, or one the sidecar does not know."""


class Forbidden(ShadowAPIError):
    """403: the credential lacks the role or the task type."""


class NotFound(ShadowAPIError):
    """404: an unknown task type, approval or case."""


class Conflict(ShadowAPIError):
    """409: conflicts with what is stored (every record of a batch, an approval settled)."""


class PayloadTooLarge(ShadowAPIError):
    """413: a batch over the sidecar's ``max_body_bytes`` or ``max_records``."""


class Unavailable(ShadowAPIError):
    """503 or another 5xx, or no connection at all (``status`` 0): try again later."""


_ERRORS: dict[int, type[ShadowAPIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
}


@dataclass(slots=True)
class IngestResult:
    """What the sidecar took of the records sent, summed over every batch: ``accepted``,
    ``results`` (``stored``, ``duplicate``, ``reversal``... counts) and ``errors`` (one per
    bad record, ``line`` counted from 1 over all records sent, as in the API's answer)."""

    accepted: int = 0
    results: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add(self, body: Mapping[str, Any], offset: int) -> None:
        self.accepted += int(body.get("accepted", 0))
        for status, count in (body.get("results") or {}).items():
            self.results[status] = self.results.get(status, 0) + int(count)
        for item in body.get("errors") or []:
            entry = dict(item)
            if isinstance(entry.get("line"), int):
                entry["line"] += offset
            self.errors.append(entry)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str  # with the query
    headers: dict[str, str]
    body: bytes | None
    idempotent: bool


def _error(status: int, text: str) -> ShadowAPIError:
    message, errors = text.strip()[:500] or f"HTTP {status}", []
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("error") or message)
        found = body.get("errors")
        if isinstance(found, list):
            errors = [e for e in found if isinstance(e, dict)]
    kind = _ERRORS.get(status) or (Unavailable if status >= 500 else ShadowAPIError)
    return kind(status, message, errors)


def _batches(records: Iterable[Mapping[str, Any]], size: int) -> Iterable[list[Mapping[str, Any]]]:
    batch: list[Mapping[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Base:
    """What both clients share: building each request, and reading each answer."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ingest_token: str | None = None,
        signature_secret: str | bytes | None = None,
        signature_header: str = "X-Shadow-Signature",
        gzip: bool = True,
        batch_size: int = DEFAULT_BATCH,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if batch_size < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("batch_size >= 1, retries >= 0, timeout > 0 and backoff >= 0")
        self.url = url.rstrip("/")
        self.token = token
        self.ingest_token = ingest_token
        key = signature_secret.encode() if isinstance(signature_secret, str) else signature_secret
        self.signature_key = key
        self.signature_header = signature_header
        self.gzip = gzip
        self.batch_size = batch_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def _headers(self, *, ingest: bool = False) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if ingest and self.ingest_token:
            headers[TOKEN_HEADER] = self.ingest_token
        return headers

    def _ingest(self, kind: str, batch: Sequence[Mapping[str, Any]]) -> _Request:
        path = f"/v1/{kind}"
        body = b"".join(
            json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in batch
        )
        headers = self._headers(ingest=True)
        headers["Content-Type"] = "application/x-ndjson"
        if self.gzip:
            body = gzip_module.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        if self.signature_key is not None:
            headers[self.signature_header] = sign(self.signature_key, "POST", path, body, headers)
        return _Request("POST", path, headers, body, idempotent=True)

    def _json(
        self, method: str, path: str, body: Mapping[str, Any] | None, *, idem: bool
    ) -> _Request:
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return _Request(method, path, headers, data, idempotent=idem)

    def _route(self, task_type: str, event_id: str) -> _Request:
        query = urlencode({"event_id": event_id})
        return self._json("GET", f"/v1/route/{quote(task_type, safe='')}?{query}", None, idem=True)

    def _session(self, task_type: str, event_id: str) -> _Request:
        body = {"task_type": task_type, "event_id": event_id}
        return self._json("POST", "/v1/sessions", body, idem=False)

    def _approvals(self, status: str) -> _Request:
        return self._json("GET", f"/v1/approvals?{urlencode({'status': status})}", None, idem=True)

    def _decide(self, approval_id: str, verdict: str, reason: str | None) -> _Request:
        body = {} if reason is None else {"reason": reason}
        path = f"/v1/approvals/{quote(approval_id, safe='')}/{verdict}"
        return self._json("POST", path, body, idem=False)

    def _pause(self, attempt: int) -> float:
        return float(self.backoff * (2**attempt))


class Client(_Base):
    """The blocking client (see the module docstring); ``with Client(...) as c:``."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (each request is its own connection); for symmetry."""

    def _send(self, req: _Request) -> Any:
        attempt = 0
        while True:
            request = urllib.request.Request(
                self.url + req.path, data=req.body, headers=req.headers, method=req.method
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    text = resp.read().decode("utf-8", "replace")
                    return json.loads(text) if text.strip() else None
            except urllib.error.HTTPError as exc:
                failure = _error(exc.code, exc.read().decode("utf-8", "replace"))
                retry = req.idempotent and exc.code in RETRYABLE
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                failure = Unavailable(0, f"no answer from {self.url}: {reason}")
                refused = isinstance(reason, ConnectionRefusedError)
                retry = req.idempotent or refused
            if not retry or attempt >= self.retries:
                raise failure
            time.sleep(self._pause(attempt))
            attempt += 1

    def _ingest_all(self, kind: str, records: Iterable[Mapping[str, Any]]) -> IngestResult:
        result, offset = IngestResult(), 0
        for batch in _batches(records, self.batch_size):
            result.add(self._send(self._ingest(kind, batch)) or {}, offset)
            offset += len(batch)
        return result

    def send_events(self, records: Iterable[Mapping[str, Any]]) -> IngestResult:
        """``POST /v1/events`` in batches; durable on the sidecar when this returns."""
        return self._ingest_all("events", records)

    def send_outcomes(self, records: Iterable[Mapping[str, Any]]) -> IngestResult:
        """``POST /v1/outcomes`` in batches; durable on the sidecar when this returns."""
        return self._ingest_all("outcomes", records)

    def route(self, task_type: str, event_id: str) -> dict[str, Any]:
        """``GET /v1/route/{task_type}?event_id=``: who handles the item, and how."""
        return dict(self._send(self._route(task_type, event_id)))

    def open_session(self, task_type: str, event_id: str) -> dict[str, Any]:
        """``POST /v1/sessions``: a live tools URL for the agent working this item."""
        return dict(self._send(self._session(task_type, event_id)))

    def approvals(self, status: str = "pending") -> list[dict[str, Any]]:
        """``GET /v1/approvals?status=``: held tool writes."""
        return list(self._send(self._approvals(status))["approvals"])

    def approve(self, approval_id: str, reason: str | None = None) -> dict[str, Any]:
        """``POST /v1/approvals/{id}/approve``: forward the held write."""
        return dict(self._send(self._decide(approval_id, "approve", reason)))

    def reject(self, approval_id: str, reason: str) -> dict[str, Any]:
        """``POST /v1/approvals/{id}/reject`` (a reason is required)."""
        return dict(self._send(self._decide(approval_id, "reject", reason)))

    def agreement(self) -> dict[str, Any]:
        """``GET /v1/agreement``: the evidence and level of every task type."""
        return dict(self._send(self._json("GET", "/v1/agreement", None, idem=True)))


class AsyncClient(_Base):
    """The asyncio client (see the module docstring); ``async with AsyncClient(...) as c:``.
    ``session``: an aiohttp ``ClientSession`` to use (not closed here); else one is made."""

    def __init__(self, url: str, *, session: Any = None, **options: Any) -> None:
        super().__init__(url, **options)
        self._session: Any = session
        self._owned = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session this client made (idempotent)."""
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> Any:
        if self._session is None:
            import aiohttp  # the host's event loop only; the blocking client never needs it

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), auto_decompress=True
            )
        return self._session

    async def _send(self, req: _Request) -> Any:
        import aiohttp

        attempt = 0
        while True:
            try:
                async with self._client().request(
                    req.method,
                    self.url + req.path,
                    data=req.body,
                    headers=req.headers,
                ) as resp:
                    text = await resp.text(errors="replace")
                    if resp.status < 400:
                        return json.loads(text) if text.strip() else None
                    failure = _error(resp.status, text)
                    retry = req.idempotent and resp.status in RETRYABLE
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failure = Unavailable(0, f"no answer from {self.url}: {exc}")
                refused = isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                    exc.os_error, ConnectionRefusedError
                )
                retry = req.idempotent or refused
            if not retry or attempt >= self.retries:
                raise failure
            await asyncio.sleep(self._pause(attempt))
            attempt += 1

    async def _ingest_all(self, kind: str, records: Iterable[Mapping[str, Any]]) -> IngestResult:
        result, offset = IngestResult(), 0
        for batch in _batches(records, self.batch_size):
            result.add(await self._send(self._ingest(kind, batch)) or {}, offset)
            offset += len(batch)
        return result

    async def send_events(self, records: Iterable[Mapping[str, Any]]) -> IngestResult:
        """``POST /v1/events`` in batches; durable on the sidecar when this returns."""
        return await self._ingest_all("events", records)

    async def send_outcomes(self, records: Iterable[Mapping[str, Any]]) -> IngestResult:
        """``POST /v1/outcomes`` in batches; durable on the sidecar when this returns."""
        return await self._ingest_all("outcomes", records)

    async def route(self, task_type: str, event_id: str) -> dict[str, Any]:
        """``GET /v1/route/{task_type}?event_id=``: who handles the item, and how."""
        return dict(await self._send(self._route(task_type, event_id)))

    async def open_session(self, task_type: str, event_id: str) -> dict[str, Any]:
        """``POST /v1/sessions``: a live tools URL for the agent working this item."""
        return dict(await self._send(self._session(task_type, event_id)))

    async def approvals(self, status: str = "pending") -> list[dict[str, Any]]:
        """``GET /v1/approvals?status=``: held tool writes."""
        return list((await self._send(self._approvals(status)))["approvals"])

    async def approve(self, approval_id: str, reason: str | None = None) -> dict[str, Any]:
        """``POST /v1/approvals/{id}/approve``: forward the held write."""
        return dict(await self._send(self._decide(approval_id, "approve", reason)))

    async def reject(self, approval_id: str, reason: str) -> dict[str, Any]:
        """``POST /v1/approvals/{id}/reject`` (a reason is required)."""
        return dict(await self._send(self._decide(approval_id, "reject", reason)))

    async def agreement(self) -> dict[str, Any]:
        """``GET /v1/agreement``: the evidence and level of every task type."""
        return dict(await self._send(self._json("GET", "/v1/agreement", None, idem=True)))
