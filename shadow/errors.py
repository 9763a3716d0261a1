"""The sidecar's errors: one hierarchy rooted at :class:`ShadowError`.

::

    ShadowError
    ├── ValidationError    a record breaks a data contract; names each field path
    ├── PolicyError        the policy file is wrong; names the file, key path and the fix
    ├── ConflictError      same id, different content; never an overwrite
    ├── AutonomyError      an autonomy change that the ladder does not allow
    ├── StoreError         the store failed (any other DuckDB error: one line, what to do)
    │   ├── StoreInUseError     another process holds the DuckDB file (a running sidecar)
    │   ├── StoreDamagedError   the file is not a DuckDB database, or it is corrupt
    │   ├── StoreFullError      the disk holding the file is full (or the file too large)
    │   ├── StoreReadOnlyError  permission denied, or a read-only file system
    │   └── StoreTooNewError    a newer sidecar wrote it (schema version above this one's)
    ├── AgentError         an agent call failed (``retriable`` for transport errors)
    ├── UpstreamError      an upstream MCP server of the tool gateway failed or is away
    ├── NotForwarded       a tool write the level no longer allows when it was to be sent
    └── ConfigError        settings or a source spec are wrong (the CLI exits 2)

Third-party errors (DuckDB, YAML) are translated at the boundary of the module that meets
them, so callers only ever catch ``ShadowError`` subclasses (DuckDB's: where the store's
thread hands a result back, :meth:`shadow.store.base.StoreBase._run`). The CLI prints a
``ShadowError`` as one line; the API answers a ``StoreError`` with 503 and that line.

Refused input carries a :class:`Reason`, a code from a small fixed vocabulary, from where the
problem is found (a :class:`FieldError`, an ingest ``RecordError`` or ``BodyError``, a dead
letter) to the metrics that count it: messages are for people, codes are for labels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "AgentError",
    "AutonomyError",
    "ConfigError",
    "ConflictError",
    "FieldError",
    "NotForwarded",
    "PolicyError",
    "Reason",
    "ShadowError",
    "StoreDamagedError",
    "StoreError",
    "StoreFullError",
    "StoreInUseError",
    "StoreReadOnlyError",
    "StoreTooNewError",
    "UpstreamError",
    "ValidationError",
]


class ShadowError(Exception):
    """Root of every error the sidecar raises on purpose."""


class Reason(enum.StrEnum):
    """Why a record or a body was refused: the ``reason`` label of
    ``shadow_ingest_rejected_total`` and ``shadow_dead_letters_total`` (docs/metrics.md).

    ``malformed``: not (strict) JSON, not the shape of a body, or a compressed body that does
    not decompress to its end. ``encoding``: bytes that are not UTF-8. ``too_large``: over a
    size or count limit. ``unsupported_media_type``: a content type, charset or content
    encoding the sidecar does not read. ``timeout``: the body did not arrive in time.
    ``invalid``: JSON that breaks the record's contract (a field missing, of the wrong type,
    too long...). ``bad_kind``: a ``kind`` that is missing or wrong for where the record came.
    ``unknown_task_type``: a task type the policy does not configure. ``conflict``: an id
    already stored with different content. ``unmatched``: a mirrored request no mirror rule
    matches. ``unauthorized``: no ingest token, or a wrong one. ``bad_signature``: the
    body's HMAC signature is missing or does not match.
    """

    MALFORMED = "malformed"
    ENCODING = "encoding"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    BAD_KIND = "bad_kind"
    UNKNOWN_TASK_TYPE = "unknown_task_type"
    CONFLICT = "conflict"
    UNMATCHED = "unmatched"
    UNAUTHORIZED = "unauthorized"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem at one field path (``payload.customer.email``, ``decision``); ``code``
    says which kind of problem it is, for counting."""

    path: str
    message: str
    code: Reason = Reason.INVALID

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(ShadowError):
    """A record does not follow its data contract; ``errors`` names each field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


class PolicyError(ShadowError):
    """The policy file is invalid. Each problem names the key path and how to fix it."""

    def __init__(self, source: str, problems: list[FieldError]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [f"{source}: {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ConflictError(ShadowError):
    """A record reuses an id already stored with different content."""


class AutonomyError(ShadowError):
    """An autonomy change the ladder refuses (above the ceiling, nothing to approve...)."""


class SecondApproverRequired(AutonomyError):
    """A two-person move (``autonomy.two_person``) needs a credential that may approve, and
    a second one different from the first (the API answers 403)."""


class StoreError(ShadowError):
    """The store could not be opened, migrated, read or written. The message is one line
    naming the file and what to do; the subclasses below say which kind of failure."""


class StoreInUseError(StoreError):
    """Another process holds the store's file (DuckDB lets one process open a file for
    writing, and then no other may open it at all). ``pid``: that process, when known."""

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        self.pid = pid
        super().__init__(message)


class StoreDamagedError(StoreError):
    """The file is not a DuckDB database, or DuckDB found it corrupt (a checksum that does
    not match): restore it from a backup or move it aside."""


class StoreFullError(StoreError):
    """The disk holding the store is full (or the file reached the size the system allows):
    the write did not happen; free space and retry."""


class StoreReadOnlyError(StoreError):
    """The store's file or directory may not be written: permission denied, or a read-only
    file system."""


class StoreTooNewError(StoreError):
    """The store was written by a newer sidecar: its schema version (``found``) is above
    this sidecar's (``supported``); it is refused, never downgraded."""

    def __init__(self, message: str, *, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(message)


class AgentError(ShadowError):
    """An agent call failed. ``retriable``: a transport error worth retrying (connection
    refused or reset), as opposed to a bad answer, an HTTP error or a timeout."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        self.retriable = retriable
        super().__init__(message)


class UpstreamError(ShadowError):
    """An upstream MCP server of the tool gateway could not be reached, or answered a
    request with a protocol error (the SDK's and httpx2's errors are translated into it).
    ``sent``: ``False`` when the request never left (no connection), ``True`` when it may
    have reached the upstream."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class NotForwarded(ShadowError):
    """A tool write refused at the last check before it would have been sent (a demotion or
    a freeze while the gateway awaited something): nothing reached the upstream."""


class ConfigError(ShadowError):
    """Settings, a source spec or an agent spec are wrong; the message says how to fix it."""
