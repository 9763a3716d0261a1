"""The audit log's hash chain: its canonical encoding and its verification. Pure: no I/O,
no clock; the store (:mod:`shadow.store.audit`) writes the chain, and ``GET /v1/audit/verify``
and ``shadow audit verify`` walk it with :class:`ChainWalk`.

Every audit entry carries ``prev_hash`` (the ``entry_hash`` of the entry before it, in id
order; :data:`GENESIS` for the first) and its own ``entry_hash``::

    entry_hash = sha256(canonical_bytes(entry, prev_hash)).hexdigest()

:func:`canonical_bytes` is the one definition of what is hashed: a JSON object of every
stored field of the row and ``prev_hash``, written with sorted keys, no whitespace and
``ensure_ascii`` (so the bytes are ASCII)::

    {"action": str, "actor": str, "evidence": <the stored JSON, parsed>,
     "from_level": str | null, "id": int, "policy_hash": str | null,
     "prev_hash": "<64 hex>", "reason": str,
     "recorded_at": "YYYY-MM-DDTHH:MM:SS.ffffff+00:00", "task_type": str,
     "to_level": str | null}

``recorded_at`` is the stored instant in UTC with microseconds (a naive value is UTC, as
the store's session time zone makes it); numbers in ``evidence`` are written as Python's
``json`` module writes them (floats in their shortest round-trip form). The text fields
are the text as stored (:func:`shadow.store.base.storable` already applied), so a verifier
that reads the rows back recomputes the same bytes.

What a walk proves, and what it does not: an entry edited in place (its contents no longer
match its hash), removed, inserted or reordered (the next entry's ``prev_hash`` no longer
matches), or with a hash set to NULL, is found and named. Rewriting an entry *and* its own
hash is found at the next entry's link; rewriting every hash from some entry to the end is
not, and neither is cutting off the newest entries: the log alone cannot show what is
missing after its head. Publish the head hash somewhere else (``GET /v1/audit/verify``
returns it) to anchor it: a log whose walk does not pass through a published head has lost
or rewritten entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "GENESIS",
    "Break",
    "ChainEntry",
    "ChainState",
    "ChainWalk",
    "canonical_bytes",
    "chain_hash",
    "utc_instant",
    "verify_chain",
]

GENESIS = "0" * 64  # the first entry's prev_hash


def utc_instant(at: datetime) -> datetime:
    """``at`` as the store reads a TIMESTAMPTZ back: in UTC (a naive value taken as UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One audit row as stored, with its two hashes (``None``: the column is NULL)."""

    id: int
    recorded_at: datetime
    task_type: str
    actor: str
    action: str
    from_level: str | None
    to_level: str | None
    reason: str
    evidence: Any  # the stored JSON, parsed
    policy_hash: str | None
    prev_hash: str | None
    entry_hash: str | None

    def to_json(self) -> dict[str, Any]:
        """The entry as ``GET /v1/audit`` gives it (:meth:`from_json` reads it back)."""
        return {
            "id": self.id,
            "recorded_at": utc_instant(self.recorded_at).isoformat(timespec="microseconds"),
            "task_type": self.task_type,
            "actor": self.actor,
            "action": self.action,
            "from_level": self.from_level,
            "to_level": self.to_level,
            "reason": self.reason,
            "evidence": self.evidence,
            "policy_hash": self.policy_hash,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ChainEntry:
        """An entry from :meth:`to_json`'s shape; ``ValueError`` (or ``KeyError``,
        ``TypeError``) when it is not one."""
        return cls(
            id=int(doc["id"]),
            recorded_at=datetime.fromisoformat(str(doc["recorded_at"])),
            task_type=_text(doc, "task_type"),
            actor=_text(doc, "actor"),
            action=_text(doc, "action"),
            from_level=_text_or_none(doc, "from_level"),
            to_level=_text_or_none(doc, "to_level"),
            reason=_text(doc, "reason"),
            evidence=doc["evidence"],
            policy_hash=_text_or_none(doc, "policy_hash"),
            prev_hash=_text_or_none(doc, "prev_hash"),
            entry_hash=_text_or_none(doc, "entry_hash"),
        )


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, not {type(value).__name__}")
    return value


def _text_or_none(doc: dict[str, Any], key: str) -> str | None:
    return None if doc.get(key) is None else _text(doc, key)


def canonical_bytes(entry: ChainEntry, prev_hash: str) -> bytes:
    """The bytes an entry's hash is taken over (the module docstring defines them)."""
    doc = {
        "id": entry.id,
        "recorded_at": utc_instant(entry.recorded_at).isoformat(timespec="microseconds"),
        "task_type": entry.task_type,
        "actor": entry.actor,
        "action": entry.action,
        "from_level": entry.from_level,
        "to_level": entry.to_level,
        "reason": entry.reason,
        "evidence": entry.evidence,
        "policy_hash": entry.policy_hash,
        "prev_hash": prev_hash,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def chain_hash(entry: ChainEntry, prev_hash: str) -> str:
    """``entry``'s hash when it follows an entry whose hash is ``prev_hash`` (lowercase hex);
    its own ``prev_hash`` and ``entry_hash`` fields are not read."""
    return hashlib.sha256(canonical_bytes(entry, prev_hash)).hexdigest()


@dataclass(frozen=True, slots=True)
class Break:
    """The first entry that does not match: its id, what is wrong (``kind``: ``missing`` a
    hash is NULL, ``edited`` its contents do not match its hash, ``unlinked`` its
    ``prev_hash`` is not the hash of the entry before it) and why, in words."""

    id: int
    kind: str
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "why": self.why}


@dataclass(frozen=True, slots=True)
class ChainState:
    """The result of a walk: ``entries`` walked (every one, also after a break), ``head``
    (the newest entry's stored hash, which the next entry will link to: :data:`GENESIS`
    for an empty log, ``None`` when the newest entry's hash is NULL) and the first break."""

    entries: int
    head: str | None
    first_bad: Break | None

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    def to_json(self) -> dict[str, Any]:
        """``GET /v1/audit/verify``'s document."""
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "first_bad": None if self.first_bad is None else self.first_bad.to_json(),
        }


class ChainWalk:
    """Verifies entries fed in id order, a page at a time (:meth:`feed`), so a long log is
    never held whole; :attr:`state` is the result so far.

    Each entry is checked against itself and against the entry fed before it: both hashes
    present, ``entry_hash`` equal to :func:`chain_hash` of its contents and its own
    ``prev_hash``, and ``prev_hash`` equal to the previous entry's stored ``entry_hash``
    (:data:`GENESIS` for the first). A gap in the ids is not a break by itself (a sequence
    may skip numbers); the link is what counts. Entries must come in increasing id order;
    one that does not is a break too."""

    def __init__(self) -> None:
        self._entries = 0
        self._last_id: int | None = None
        self._head: str | None = GENESIS
        self._first_bad: Break | None = None

    @property
    def state(self) -> ChainState:
        return ChainState(self._entries, self._head, self._first_bad)

    @property
    def last_id(self) -> int | None:
        """The id of the last entry fed (``None`` before the first)."""
        return self._last_id

    def feed(self, entries: Iterable[ChainEntry]) -> None:
        for entry in entries:
            problem = self._check(entry)
            if problem is not None and self._first_bad is None:
                self._first_bad = Break(entry.id, *problem)
            self._entries += 1
            self._last_id = entry.id
            self._head = entry.entry_hash

    def _check(self, entry: ChainEntry) -> tuple[str, str] | None:
        before = "the start of the log" if self._last_id is None else f"entry {self._last_id}"
        if self._last_id is not None and entry.id <= self._last_id:
            return "unlinked", f"it comes after {before} out of id order"
        if entry.entry_hash is None or entry.prev_hash is None:
            which = "entry_hash" if entry.entry_hash is None else "prev_hash"
            return "missing", f"its {which} is NULL: every stored entry has both hashes"
        if chain_hash(entry, entry.prev_hash) != entry.entry_hash:
            return "edited", "its contents do not match its entry_hash: the entry was edited"
        if entry.prev_hash != self._head:
            expected = "the genesis value" if self._last_id is None else f"{before}'s hash"
            return (
                "unlinked",
                f"its prev_hash is not {expected}: an entry before it was removed, "
                "inserted, reordered or rewritten",
            )
        return None


def verify_chain(entries: Iterable[ChainEntry]) -> ChainState:
    """Walk ``entries`` (id order) in one go: :class:`ChainWalk` fed once."""
    walk = ChainWalk()
    walk.feed(entries)
    return walk.state
