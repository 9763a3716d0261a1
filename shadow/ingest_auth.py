"""Who may write work into the sidecar: optional ingest tokens and request signatures,
separate from the admin token (which only guards autonomy writes).

- **Tokens** (``ingest_tokens``): a request carries one in ``X-Shadow-Ingest-Token``, or, on
  ``/v1/events`` and ``/v1/outcomes``, as ``Authorization: Bearer <token>`` (a mirrored
  request's ``Authorization`` header is the host's own, so the mirror target reads only
  ``X-Shadow-Ingest-Token``, which the proxy in front sets on the mirror location).
- **Signatures** (``ingest_signature_secret`` or ``ingest_signature_secret_file``): the
  ``ingest_signature_header`` (default ``X-Shadow-Signature``) must be ``sha256=<hex>``, the
  HMAC-SHA256 under the shared secret of the request's :func:`string_to_sign`: its method,
  path and query as sent, the headers that decide what is read (``Content-Type``,
  ``Content-Encoding`` and, at the mirror target, every header the matching mirror rule
  reads) and the SHA-256 of the raw body as sent (before any decompression). So a signed
  request replayed on another path, with another query or another value of a header a rule
  reads, is refused: each of those can change which case a record is for.

Both are compared in constant time. With neither configured, ingest is open (as before).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shadow.config import Settings
from shadow.errors import ConfigError, Reason
from shadow.roles import Keyring
from shadow.signing import (
    SCHEME,
    SIGNED_HEADERS,
    TOKEN_HEADER,
    sign,
    string_to_sign,
)

__all__ = ["SCHEME", "SIGNED_HEADERS", "TOKEN_HEADER", "IngestAuth", "sign", "string_to_sign"]


@dataclass(frozen=True, slots=True)
class IngestAuth:
    """The ingest credentials of one sidecar; :meth:`from_settings` builds it once."""

    tokens: tuple[bytes, ...] = ()
    key: bytes | None = None
    header: str = "X-Shadow-Signature"
    # With a tokens file (Keyring.strict), ingest needs a credential with the ingest role
    # (SHADOW_INGEST_TOKENS are such credentials too).
    keyring: Keyring | None = None

    @classmethod
    def from_settings(cls, settings: Settings, keyring: Keyring | None = None) -> IngestAuth:
        """Raises :class:`ConfigError` when the secret file cannot be read or is empty."""
        tokens = tuple(t.get_secret_value().encode() for t in settings.ingest_tokens)
        key: bytes | None = None
        if settings.ingest_signature_secret is not None:
            key = settings.ingest_signature_secret.get_secret_value().encode()
        path = settings.ingest_signature_secret_file
        if path is not None:
            try:
                key = path.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    f"ingest_signature_secret_file {path}: cannot read it ({exc.strerror})"
                ) from None
        if key is not None and not key:
            raise ConfigError("the ingest signature secret is empty; set one or leave it unset")
        return cls(tokens, key, settings.ingest_signature_header, keyring)

    @property
    def summary(self) -> str:
        """How ingest is guarded, for ``shadow run``'s start-up line: ``open (...)``,
        ``tokens (N)``, ``signatures (HEADER)`` or ``tokens (N) + signatures (HEADER)``."""
        parts = []
        if self.keyring is not None and self.keyring.strict:
            parts.append("credentials with the ingest role")
        elif self.tokens:
            parts.append(f"tokens ({len(self.tokens)})")
        if self.key is not None:
            parts.append(f"signatures ({self.header})")
        return " + ".join(parts) or "open (no SHADOW_INGEST_TOKENS, no signature secret)"

    def token_refusal(
        self, headers: Mapping[str, str], *, bearer: bool
    ) -> tuple[Reason, str] | None:
        """Why the headers alone refuse the request (no or a wrong token), else ``None``."""
        strict = self.keyring is not None and self.keyring.strict
        if not self.tokens and not strict:
            return None
        given = headers.get(TOKEN_HEADER)
        if given is None and bearer:
            scheme, _, value = headers.get("Authorization", "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else None
        if given is None:
            if self.keyring is not None and strict:
                self.keyring.refused("ingest", 401)
            where = f"{TOKEN_HEADER}" + (" or 'Authorization: Bearer <token>'" if bearer else "")
            return Reason.UNAUTHORIZED, f"an ingest token is required: send {where}"
        if self.keyring is not None and strict:
            found = self.keyring.identify(given)
            if found is not None and found.has("ingest"):
                return None
            self.keyring.refused("ingest", 401)
            if found is not None:
                held = ", ".join(sorted(found.roles))
                return Reason.UNAUTHORIZED, (
                    f"{found.name} has the role(s) {held}; ingest needs the ingest role; "
                    "nothing was stored"
                )
            return Reason.UNAUTHORIZED, "unknown ingest token; nothing was stored"
        raw = given.encode("utf-8", "surrogateescape")
        # Every token is compared, so the time taken does not say which one came close.
        matched = [hmac.compare_digest(raw, token) for token in self.tokens]
        if not any(matched):
            return Reason.UNAUTHORIZED, "wrong ingest token; nothing was stored"
        return None

    def signature_refusal(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        method: str,
        target: str,
        read: Iterable[str] = (),
    ) -> tuple[Reason, str] | None:
        """Why the request's signature refuses it (missing, malformed, not matching), else
        ``None``. ``target`` is the path and query as sent (the host's, at the mirror
        target) and ``read`` the headers the matching mirror rule reads."""
        if self.key is None:
            return None
        given = headers.get(self.header)
        if given is None:
            return (
                Reason.BAD_SIGNATURE,
                f"a signature is required: send {self.header}: sha256=<hex>",
            )
        read = [name for name in read if name.lower() != self.header.lower()]
        message = string_to_sign(method, target, body, headers, read=read)
        expected = "sha256=" + hmac.new(self.key, message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
            signed = ", ".join(sorted({*SIGNED_HEADERS, *(n.lower() for n in read)}))
            return Reason.BAD_SIGNATURE, (
                f"{self.header} does not match the request (HMAC-SHA256 of {SCHEME}: method, "
                f"path, query, headers {signed} when sent, and the body's SHA-256; "
                "docs/mirroring.md); nothing was stored"
            )
        return None
