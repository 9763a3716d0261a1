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
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Capabilities", "Grant"]

_PREFIX = "v1."
MAX_TOKEN_CHARS = 4096


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
