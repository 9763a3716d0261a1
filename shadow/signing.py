"""Request signatures for ingest (docs/mirroring.md, "What a signature covers"): what a
sender signs and the header value it sends. Its own small module, importing nothing of the
sidecar, so a host's client (:mod:`shadow.client`) signs with the same code the sidecar checks
with (:mod:`shadow.ingest_auth`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Protocol

__all__ = ["SCHEME", "SIGNED_HEADERS", "TOKEN_HEADER", "Headers", "sign", "string_to_sign"]

TOKEN_HEADER = "X-Shadow-Ingest-Token"
SCHEME = "shadow-signature-v1"
"""The first line of every string to sign: names the scheme, so a later one cannot be
confused with it."""
SIGNED_HEADERS = ("content-encoding", "content-type")
"""Headers every signature covers (when sent): they decide how the body is read."""


class _MultiHeaders(Protocol):
    def getall(self, key: str, default: list[str]) -> list[str]: ...


Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def _values(headers: Headers | _MultiHeaders, names: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, value)`` for each of ``names`` (lower-cased, sorted) that ``headers`` holds;
    repeated values joined with ``,`` in the order sent, each stripped of surrounding
    whitespace."""
    wanted = sorted({n.lower() for n in names})
    found: dict[str, list[str]] = {}
    if hasattr(headers, "getall"):  # aiohttp's CIMultiDict: every value of a repeated header
        for name in wanted:
            found[name] = list(headers.getall(name, []))
    else:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            if name.lower() in wanted:
                found.setdefault(name.lower(), []).append(value)
    return [(n, ",".join(v.strip() for v in found[n])) for n in wanted if found.get(n)]


def string_to_sign(
    method: str,
    target: str,
    body: bytes,
    headers: Headers | _MultiHeaders = (),
    *,
    read: Iterable[str] = (),
) -> bytes:
    """What a signature signs (docs/mirroring.md, "What a signature covers"), UTF-8, its
    lines joined by ``\\n`` with none after the last::

        shadow-signature-v1
        METHOD
        /path/as/sent             (percent-encoding kept; the mirror target: the host's path)
        query=as&sent             (without "?"; an empty line when there is none)
        content-type:application/json      one line per signed header the request has:
        x-region:eu                        lower-cased name, ":", value; sorted by name
        <hex SHA-256 of the raw body as sent>

    ``target`` is the path and query as sent (``/refunds?source=web``). The signed headers
    are :data:`SIGNED_HEADERS` and ``read`` (the request headers the matching mirror rule
    reads, :attr:`shadow.mirror.MirrorRule.request_headers`); ``headers`` may hold others,
    which are left out."""
    path, _, query = target.partition("?")
    lines = [SCHEME, method.upper(), path, query]
    lines += [f"{name}:{value}" for name, value in _values(headers, [*SIGNED_HEADERS, *read])]
    lines.append(hashlib.sha256(body).hexdigest())
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def sign(
    key: bytes,
    method: str,
    target: str,
    body: bytes,
    headers: Headers = (),
    *,
    read: Iterable[str] = (),
) -> str:
    """The signature header value (``sha256=<hex>``) of a request a sender is about to send:
    ``target`` its path and query (for a mirrored request, the host's own:
    ``/refunds?source=web``), ``headers`` the headers it sends, ``read`` the headers the
    mirror rule for it reads (see :func:`string_to_sign`)."""
    message = string_to_sign(method, target, body, headers, read=read)
    return "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()
