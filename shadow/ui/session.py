"""Console sign-in: sessions kept in memory, their cookie, and the CSRF tokens of their forms.

- **Sign-in** pastes an API token once (``POST /ui/signin``). The keyring checks it; the
  session keeps the credential's name and the sha256 digest of the token (never the token),
  and every request re-resolves that digest against the keyring
  (:meth:`shadow.roles.Keyring.by_digest`), so a token removed from the tokens file ends
  its sessions within the keyring's re-read interval.
- **The cookie** ``shadow_session`` holds a random id (``secrets.token_urlsafe(32)``):
  ``HttpOnly``, ``SameSite=Strict``, ``Path=/ui/``, and ``Secure`` when the request came
  over https. Sessions end after :data:`MAX_AGE_S` whatever their use, on sign-out, and
  oldest first beyond :data:`MAX_SESSIONS`. They live in this process only: a restart signs
  everyone out. The id is never logged.
- **CSRF**: every form carries ``csrf``, an HMAC of the session id under a per-process key;
  every console POST must carry the right one (403 otherwise), and a POST whose ``Origin``
  (or ``Sec-Fetch-Site``) names another site is refused before anything is read
  (:func:`foreign_origin`). The sign-in form, before any session exists, is bound the same
  way to a short-lived ``shadow_signin`` cookie.
- The API's routes never read this cookie (they take ``Authorization: Bearer`` only), so it
  can never carry a cross-site request to them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from shadow.keys import KEYRING, SETTINGS
from shadow.roles import Credential

__all__ = [
    "COOKIE",
    "MAX_AGE_S",
    "MAX_SESSIONS",
    "SESSIONS",
    "SIGNIN_AGE_S",
    "SIGNIN_COOKIE",
    "Session",
    "Sessions",
    "foreign_origin",
    "set_cookie",
    "signed_in",
]

COOKIE = "shadow_session"
SIGNIN_COOKIE = "shadow_signin"
MAX_AGE_S = 12 * 3600.0
MAX_SESSIONS = 1000
SIGNIN_AGE_S = 3600.0
_ID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


@dataclass(eq=False)
class Session:
    """One signed-in browser: the credential it signed in with (name and token digest),
    when, and the messages to show on its next page."""

    id: str
    name: str
    digest: str
    started: float
    flashes: list[tuple[str, str]] = field(default_factory=list)
    # The review queue's answer to this session's last verdict (shown once, then the next case).
    last_review: dict[str, Any] | None = None

    def flash(self, kind: str, text: str) -> None:
        """Say ``text`` on the next page (``kind``: ``ok`` or ``error``)."""
        self.flashes.append((kind, text))
        del self.flashes[:-5]

    def take_flashes(self) -> list[tuple[str, str]]:
        out, self.flashes = self.flashes, []
        return out


class Sessions:
    """The console's sessions (see the module docstring). ``clock``: monotonic seconds."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = MAX_AGE_S,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self._clock = clock
        self._max_age = max_age
        self._max = max_sessions
        self._key = secrets.token_bytes(32)
        self._open: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def start(self, credential: Credential, digest: str) -> Session:
        """A new session for ``credential`` (signed in with the token of ``digest``)."""
        self._sweep()
        while len(self._open) >= self._max:
            self._open.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), credential.name, digest, self._clock())
        self._open[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        if not _ID.match(session_id):
            return None
        session = self._open.get(session_id)
        if session is not None and self._clock() - session.started > self._max_age:
            del self._open[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._open.pop(session_id, None)

    def csrf(self, session_id: str) -> str:
        """The CSRF token of every form of session ``session_id``."""
        return self._mac(b"csrf", session_id)

    def csrf_ok(self, session_id: str, token: str) -> bool:
        return hmac.compare_digest(self.csrf(session_id), token)

    def signin_token(self, nonce: str) -> str:
        """The CSRF token of the sign-in form, bound to its ``shadow_signin`` cookie."""
        return self._mac(b"signin", nonce)

    def signin_ok(self, nonce: str, token: str) -> bool:
        return bool(_ID.match(nonce)) and hmac.compare_digest(self.signin_token(nonce), token)

    def _mac(self, purpose: bytes, value: str) -> str:
        data = purpose + b"\x00" + value.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def _sweep(self) -> None:
        now = self._clock()
        for sid in [s.id for s in self._open.values() if now - s.started > self._max_age]:
            del self._open[sid]


SESSIONS: web.AppKey[Sessions] = web.AppKey("console_sessions")


def signed_in(request: web.Request) -> tuple[Session, Credential] | None:
    """The request's session and the credential it stands for now, or ``None`` (no or an
    unknown cookie, an expired session, or a token the keyring no longer knows: that ends
    the session)."""
    sessions = request.app[SESSIONS]
    session_id = request.cookies.get(COOKIE, "")
    session = sessions.get(session_id) if session_id else None
    if session is None:
        return None
    found = request.app[KEYRING].by_digest(session.digest)
    if found is None or found.name != session.name:
        sessions.end(session.id)
        return None
    return session, found


def _secure(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"


def set_cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: float
) -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, Path=/ui/, Secure over https;
    ``max_age`` 0 deletes it."""
    response.set_cookie(
        name,
        value,
        max_age=int(max_age),
        path="/ui/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def foreign_origin(request: web.Request) -> str | None:
    """Why a console POST comes from another site, or ``None``: an ``Origin`` header that is
    not this sidecar's (the request's own scheme and host, or ``SHADOW_PUBLIC_URL``'s), or
    ``Sec-Fetch-Site: cross-site``. A request with neither header (a non-browser client)
    still needs the form's CSRF token."""
    given = request.headers.get("Origin")
    if given is not None:
        own = {f"{request.scheme}://{request.host}".lower()}
        if _secure(request):
            own.add(f"https://{request.host}".lower())
        public = request.app[SETTINGS].public_url
        if public:
            own.add(_origin(str(public)))
        if given.strip().lower() not in own:
            return f"Origin {given[:100]!r} is not this console's"
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "a cross-site request"
    return None
