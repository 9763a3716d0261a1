"""Credentials and the roles they carry: who is asking, and what they may do.

A **credential** is a named secret with roles and, optionally, the task types it may act on
(:class:`Credential`). The secrets themselves are never kept: the tokens file
(``SHADOW_TOKENS_FILE``) holds each one's sha256 digest, and a request's bearer token is
looked up by its digest::

    tokens:
      - name: refunds-approver
        roles: [approver]
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        task_types: [refund_request]     # optional: acts only on these

Roles (:data:`ROLES`): ``viewer`` (every read), ``reviewer`` (adjudicate), ``approver``
(approve or reject proposals and held tool writes), ``operator`` (set, freeze, unfreeze,
reconsider), ``host`` (route, tool sessions), ``ingest`` (events, outcomes, the mirror
target) and ``admin`` (all of them). Every role except ``ingest`` and ``host`` implies
``viewer``.

The simple mode stays: ``SHADOW_ADMIN_TOKEN`` is one ``admin`` credential named ``admin``,
each of ``SHADOW_INGEST_TOKENS`` an ``ingest`` credential named ``ingest-<n>``. Only a tokens
file makes the sidecar *strict* (:attr:`Keyring.strict`): reads then need ``viewer``, and the
audit actor of every write is the credential's name (a request naming another is refused).

:class:`Keyring` re-reads the tokens file when it changes (size, modification time or inode),
at most once per :data:`RECHECK_S`, so adding or revoking a token needs no restart. A file that
no longer parses keeps the last good set of tokens in force, is logged once per change as an
ERROR naming the key path, and makes :meth:`Keyring.not_ready` say so (``/readyz``).

This module does no network I/O; its only I/O is reading and writing the tokens file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shadow.checks import TASK_TYPE_RE
from shadow.errors import ConfigError

__all__ = [
    "ROLES",
    "Credential",
    "Keyring",
    "add_token",
    "digest",
    "parse_tokens",
]

log = logging.getLogger("shadow.roles")

ROLES = ("viewer", "reviewer", "approver", "operator", "host", "ingest", "admin")
_WITHOUT_VIEWER = frozenset({"ingest", "host"})
RECHECK_S = 1.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/-]{0,127}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def digest(secret: str) -> str:
    """The sha256 hex digest a tokens file keeps for ``secret``."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    """A named credential: its roles and, when limited, the task types it acts on."""

    name: str
    roles: frozenset[str]
    task_types: frozenset[str] | None = None

    def has(self, role: str) -> bool:
        """Whether this credential may do what ``role`` may (``admin`` may do everything;
        every role but ``ingest`` and ``host`` may read)."""
        if "admin" in self.roles or role in self.roles:
            return True
        return role == "viewer" and bool(self.roles - _WITHOUT_VIEWER)

    def acts_on(self, task_type: str | None) -> bool:
        """Whether it may act on ``task_type`` (``None``: an action on every task type, such
        as a freeze, which only an unlimited credential may take)."""
        if self.task_types is None:
            return True
        return task_type is not None and task_type in self.task_types


def parse_tokens(doc: Any, where: str) -> dict[str, Credential]:
    """The credentials of a parsed tokens file, by digest. Raises :class:`ConfigError`
    naming the key path (``tokens[2].roles[0]: unknown role 'approve'; ...``)."""
    if not isinstance(doc, Mapping) or set(doc) - {"tokens"}:
        raise ConfigError(f"{where}: expected a mapping with one key, tokens: [...]")
    entries = doc.get("tokens") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: tokens: expected a list")
    book: dict[str, Credential] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"{where}: tokens[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: expected a mapping with name, roles, sha256")
        unknown = sorted(set(map(str, entry)) - {"name", "roles", "sha256", "task_types"})
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(
                f"{at}.name: expected 1-128 letters, digits or ._@/- (starting with a letter "
                f"or digit), got {name!r}"
            )
        if name in names:
            raise ConfigError(f"{at}.name: {name!r} is used twice; names are audit actors")
        names.add(name)
        roles = entry.get("roles")
        if not isinstance(roles, list) or not roles:
            raise ConfigError(f"{at}.roles: expected a non-empty list of {', '.join(ROLES)}")
        for j, role in enumerate(roles):
            if role not in ROLES:
                raise ConfigError(
                    f"{at}.roles[{j}]: unknown role {role!r}; one of {', '.join(ROLES)}"
                )
        hexdigest = entry.get("sha256")
        if not isinstance(hexdigest, str) or not _DIGEST_RE.match(hexdigest):
            raise ConfigError(
                f"{at}.sha256: expected the 64 lowercase hex digits of the secret's sha256 "
                "(shadow token add writes it)"
            )
        if hexdigest in book:
            raise ConfigError(f"{at}.sha256: the same secret as {book[hexdigest].name!r}")
        limited: frozenset[str] | None = None
        if "task_types" in entry:
            types = entry["task_types"]
            if not isinstance(types, list) or not types:
                raise ConfigError(f"{at}.task_types: expected a non-empty list (or no key)")
            for j, t in enumerate(types):
                if not isinstance(t, str) or not TASK_TYPE_RE.match(t):
                    raise ConfigError(f"{at}.task_types[{j}]: {t!r} is not a task type name")
            limited = frozenset(types)
        book[hexdigest] = Credential(name, frozenset(roles), limited)
    return book


def _read(path: Path) -> dict[str, Credential]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such tokens file (shadow token add creates it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_tokens({"tokens": []} if doc is None else doc, str(path))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Keyring:
    """Every credential of one sidecar; see the module docstring. ``tokens_file`` is read at
    once (a problem is a :class:`ConfigError`: start-up refuses it)."""

    def __init__(
        self,
        *,
        tokens_file: Path | None = None,
        admin_token: str | None = None,
        ingest_tokens: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        on_refusal: Callable[[str, int], None] | None = None,
    ) -> None:
        self._path = tokens_file
        self._clock = clock
        self._on_refusal = on_refusal
        self._fixed: dict[str, Credential] = {}
        if admin_token:
            self._fixed[digest(admin_token)] = Credential("admin", frozenset({"admin"}))
        for i, token in enumerate(ingest_tokens, 1):
            # An ingest token has always been able to route too (the host of an ingest).
            self._fixed.setdefault(
                digest(token), Credential(f"ingest-{i}", frozenset({"ingest", "host"}))
            )
        self._file: dict[str, Credential] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._problem: str | None = None
        if tokens_file is not None:
            self._stamp = _stamp(tokens_file)
            self._file = _read(tokens_file)
            self._checked = clock()

    @property
    def strict(self) -> bool:
        """A tokens file is configured: reads need a credential and actors are names."""
        return self._path is not None

    @property
    def summary(self) -> str:
        """How requests are authenticated, for the start-up line."""
        if self._path is not None:
            return f"tokens file {self._path} ({len(self._file)} tokens)"
        if any("admin" in c.roles for c in self._fixed.values()):
            return "admin token (simple mode)"
        return "open"

    def configured(self, role: str) -> bool:
        """Whether any credential could do what ``role`` may (else the route decides what
        an unconfigured sidecar does: reads are open, writes refused, ingest open)."""
        self._refresh()
        return any(c.has(role) for c in (*self._fixed.values(), *self._file.values()))

    def identify(self, secret: str) -> Credential | None:
        """The credential whose secret this is, or ``None``."""
        if not secret:
            return None
        return self.by_digest(digest(secret))

    def by_digest(self, key: str) -> Credential | None:
        """The credential whose secret has the sha256 digest ``key`` (a console session
        keeps the digest, never the secret, and is re-resolved on every request: a token
        revoked from the tokens file ends its sessions), or ``None``."""
        self._refresh()
        return self._file.get(key) or self._fixed.get(key)

    def refused(self, role: str, status: int) -> None:
        """Count a request refused for its credential (``shadow_auth_refusals_total``)."""
        if self._on_refusal is not None:
            self._on_refusal(role, status)

    def not_ready(self) -> str | None:
        """Why ``/readyz`` must say something is wrong: the tokens file changed into one that
        does not parse (the last good tokens are still in force)."""
        self._refresh()
        return self._problem

    def _refresh(self) -> None:
        path = self._path
        if path is None:
            return
        now = self._clock()
        if now - self._checked < RECHECK_S:
            return
        self._checked = now
        stamp = _stamp(path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            book = _read(path)
        except ConfigError as exc:
            problem = f"tokens file not reloaded, the last good tokens stay in force: {exc}"
            if problem != self._problem:
                log.error("%s", problem)
            self._problem = problem
            return
        self._file, self._problem = book, None
        log.info("tokens file reloaded path=%s tokens=%d", path, len(book))


def add_token(path: Path, name: str, roles: Iterable[str], task_types: Iterable[str] = ()) -> str:
    """Append a new credential to the tokens file at ``path`` (created, mode 0600, if
    missing) and return its secret, which is kept nowhere else. The file is replaced
    atomically, so a running sidecar reads either the old or the new one. Raises
    :class:`ConfigError` for a name already there, an unknown role, or a file that does not
    parse."""
    doc: dict[str, Any] = {"tokens": []}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read it ({' '.join(str(exc).split())})") from None
        doc = {"tokens": []} if loaded is None else loaded
        parse_tokens(doc, str(path))  # refuse to append to a file that is already wrong
    secret = secrets.token_urlsafe(32)
    entry: dict[str, Any] = {
        "name": name,
        "roles": list(dict.fromkeys(roles)),
        "sha256": digest(secret),
    }
    limited = list(dict.fromkeys(task_types))
    if limited:
        entry["task_types"] = limited
    new = {"tokens": [*doc.get("tokens", []), entry]}
    parse_tokens(new, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(new, f, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return secret
