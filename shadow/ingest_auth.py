"""Who may write work into the sidecar: optional ingest tokens and webhook-style signatures,
separate from the admin token (which only guards autonomy writes).

- **Tokens** (``ingest_tokens``): a request carries one in ``X-Shadow-Ingest-Token``, or, on
  ``/v1/events`` and ``/v1/outcomes``, as ``Authorization: Bearer <token>`` (a mirrored
  request's ``Authorization`` header is the host's own, so the mirror target reads only
  ``X-Shadow-Ingest-Token``, which the proxy in front sets on the mirror location).
- **Signatures** (``ingest_signature_secret`` or ``ingest_signature_secret_file``): the
  ``ingest_signature_header`` (default ``X-Shadow-Signature``) must be ``sha256=<hex>``, the
  HMAC-SHA256 of the raw body as sent (before any decompression) under the shared secret.

Both are compared in constant time. With neither configured, ingest is open (as before).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from shadow.config import Settings
from shadow.errors import ConfigError, Reason

__all__ = ["TOKEN_HEADER", "IngestAuth", "sign"]

TOKEN_HEADER = "X-Shadow-Ingest-Token"


def sign(key: bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class IngestAuth:
    """The ingest credentials of one sidecar; :meth:`from_settings` builds it once."""

    tokens: tuple[bytes, ...] = ()
    key: bytes | None = None
    header: str = "X-Shadow-Signature"

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestAuth:
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
        return cls(tokens, key, settings.ingest_signature_header)

    @property
    def summary(self) -> str:
        """How ingest is guarded, for ``shadow run``'s start-up line: ``open (...)``,
        ``tokens (N)``, ``signatures (HEADER)`` or ``tokens (N) + signatures (HEADER)``."""
        parts = []
        if self.tokens:
            parts.append(f"tokens ({len(self.tokens)})")
        if self.key is not None:
            parts.append(f"signatures ({self.header})")
        return " + ".join(parts) or "open (no SHADOW_INGEST_TOKENS, no signature secret)"

    def token_refusal(
        self, headers: Mapping[str, str], *, bearer: bool
    ) -> tuple[Reason, str] | None:
        """Why the headers alone refuse the request (no or a wrong token), else ``None``."""
        if not self.tokens:
            return None
        given = headers.get(TOKEN_HEADER)
        if given is None and bearer:
            scheme, _, value = headers.get("Authorization", "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else None
        if given is None:
            where = f"{TOKEN_HEADER}" + (" or 'Authorization: Bearer <token>'" if bearer else "")
            return Reason.UNAUTHORIZED, f"an ingest token is required: send {where}"
        raw = given.encode("utf-8", "surrogateescape")
        # Every token is compared, so the time taken does not say which one came close.
        matched = [hmac.compare_digest(raw, token) for token in self.tokens]
        if not any(matched):
            return Reason.UNAUTHORIZED, "wrong ingest token; nothing was stored"
        return None

    def signature_refusal(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[Reason, str] | None:
        """Why ``body``'s signature refuses it (missing, malformed, not matching), else
        ``None``."""
        if self.key is None:
            return None
        given = headers.get(self.header)
        if given is None:
            return (
                Reason.BAD_SIGNATURE,
                f"a signature is required: send {self.header}: sha256=<hex>",
            )
        expected = sign(self.key, body)
        if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
            return Reason.BAD_SIGNATURE, (
                f"{self.header} does not match the body (HMAC-SHA256 of the raw body, as "
                "sha256=<hex>); nothing was stored"
            )
        return None
