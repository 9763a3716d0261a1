"""Capabilities: the unguessable, expiring part of a tools URL, bound to one case.

A capability is ``v1.<payload>.<mac>``: the payload (base64url JSON) names the task type,
the event id, whether the session is shadow, its expiry (epoch seconds) and a random nonce;
the mac is HMAC-SHA256 of ``v1.<payload>`` under the gateway's key. Nothing is looked up to
check one, so a capability works after a restart and on every replica *when* they share
the key (``SHADOW_GATEWAY_SECRET``); with no key configured each process draws its own, and
capabilities end with the process. :meth:`Capabilities.revoke` ends one early (a shadow
session closes when the agent has answered); revocations live in memory until the
capability would have expired anyway.

A capability is checked on every request: a forged, altered, expired or revoked one is
refused, and the grant it carries is the only thing that says which case a call is for.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Capabilities", "Grant", "McpSessions", "redacted"]

_PREFIX = "v1."
MAX_TOKEN_CHARS = 4096
MAX_SESSIONS = 100_000  # handshake sessions in all
SESSIONS_PER_CAPABILITY = 16  # one case's agent retrying or reconnecting needs a few


def redacted(token: str) -> str:
    """A capability as it may be written to a log: enough to tell two apart, useless to
    replay (the first characters of its MAC)."""
    body, _, mac = token.rpartition(".")
    if not body.startswith(_PREFIX) or not mac:
        return "<not a capability>"
    return f"v1.…{mac[:6]}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Grant:
    """What a capability allows: tool calls for one (task type, event id), shadow or live,
    until ``expires_at`` (epoch seconds)."""

    task_type: str
    event_id: str
    shadow: bool
    expires_at: float
    nonce: str


class Capabilities:
    """Issues and checks capabilities. ``secret`` (bytes) is the HMAC key; ``None`` draws
    a random one. ``clock`` returns epoch seconds."""

    def __init__(self, secret: bytes | None = None, *, clock: Callable[[], float] = time.time):
        self._key = secret if secret else secrets.token_bytes(32)
        self._clock = clock
        self._revoked: dict[str, float] = {}  # nonce -> expires_at

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(
        self, task_type: str, event_id: str, *, shadow: bool, ttl: float
    ) -> tuple[str, Grant]:
        expires = round(self._clock() + ttl, 3)
        grant = Grant(task_type, event_id, shadow, expires, secrets.token_urlsafe(12))
        payload = {"t": task_type, "e": event_id, "s": shadow, "x": expires, "n": grant.nonce}
        body = _PREFIX + _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}", grant

    def authentic(self, token: str) -> bool:
        """Whether this sidecar issued ``token`` (expired or revoked ones included)."""
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(_PREFIX) or token.count(".") != 2:
            return False
        body, _, mac = token.rpartition(".")
        return hmac.compare_digest(mac.encode(), self._mac(body).encode())

    def check(self, token: str) -> tuple[Grant | None, str]:
        """The grant of a valid capability, or ``(None, why)``."""
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(_PREFIX) or token.count(".") != 2:
            return None, "not a capability"
        body, _, mac = token.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None, "not a capability of this sidecar"
        try:
            raw = json.loads(_unb64(body[len(_PREFIX) :]))
            grant = Grant(
                str(raw["t"]), str(raw["e"]), bool(raw["s"]), float(raw["x"]), str(raw["n"])
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None, "not a capability"
        now = self._clock()
        if grant.expires_at <= now:
            return None, "the capability has expired; ask for a new tools URL"
        if grant.nonce in self._revoked:
            return None, "the session is closed (its case was answered)"
        return grant, ""

    def revoke(self, grant: Grant) -> None:
        now = self._clock()
        if len(self._revoked) > 1024:
            self._revoked = {n: x for n, x in self._revoked.items() if x > now}
        self._revoked[grant.nonce] = grant.expires_at


class McpSessions:
    """Handshake-era MCP sessions: id -> (capability nonce, protocol version, expiry). At most
    :data:`SESSIONS_PER_CAPABILITY` per capability (the oldest is dropped for a new one),
    :data:`MAX_SESSIONS` in all; a capability's sessions end with its case
    (:meth:`drop`)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_id: dict[str, tuple[str, str, float]] = {}
        self._by_nonce: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, grant: Grant, version: str) -> str | None:
        now = self._clock()
        if len(self._by_id) >= MAX_SESSIONS:
            self.drop_expired(now)
            if len(self._by_id) >= MAX_SESSIONS:
                return None
        mine = self._by_nonce.setdefault(grant.nonce, [])
        while len(mine) >= SESSIONS_PER_CAPABILITY:
            self._by_id.pop(mine.pop(0), None)
        sid = secrets.token_urlsafe(24)
        self._by_id[sid] = (grant.nonce, version, grant.expires_at)
        mine.append(sid)
        return sid

    def get(self, sid: str, grant: Grant) -> str | None:
        """The session's protocol version, if ``sid`` is a live session of this grant."""
        found = self._by_id.get(sid)
        if found is None or found[0] != grant.nonce or found[2] <= self._clock():
            return None
        return found[1]

    def close(self, sid: str, grant: Grant) -> bool:
        if self.get(sid, grant) is None:
            return False
        del self._by_id[sid]
        mine = self._by_nonce.get(grant.nonce)
        if mine is not None and sid in mine:
            mine.remove(sid)
        return True

    def drop(self, nonce: str) -> None:
        """End every session of one capability (its case settled)."""
        for sid in self._by_nonce.pop(nonce, ()):
            self._by_id.pop(sid, None)

    def drop_expired(self, now: float) -> None:
        for sid in [k for k, v in self._by_id.items() if v[2] <= now]:
            nonce = self._by_id.pop(sid)[0]
            mine = self._by_nonce.get(nonce)
            if mine is not None:
                with contextlib.suppress(ValueError):
                    mine.remove(sid)
                if not mine:
                    del self._by_nonce[nonce]
