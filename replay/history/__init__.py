"""Recorded history in (a sidecar's DuckDB file, Parquet, JSONL) and the response cache.

This is the only package of ``replay`` that imports ``duckdb`` (as :mod:`shadow.store` is the
only one inside ``shadow``): replay reads history files the sidecar never opens and keeps
its own cache file, so it cannot go through the sidecar's store. Every DuckDB call runs on
one dedicated thread per object (:class:`History`, :class:`ResponseCache`), never on the
event loop, so agent calls keep flowing while a batch is read or written.

History formats (detected from the file's first bytes, then its extension)
    *sidecar DuckDB file* -- the ``events`` and ``outcomes`` tables of ``shadow run``; each
    event joins its current outcome revision (with what it states in ``handled_by``) and
    the sidecar's routing record (``handling``), as the live joiner does, so each case is
    labelled blind, assisted or agent by the live rule. Opened **read-only**, so the file
    is never changed; DuckDB refuses a second process while a sidecar has it open (the
    error says so: copy the file, with its ``.wal``, or stop the sidecar).
    *Parquet* -- either one record per row with a ``kind`` column (``event``/``outcome``,
    like the JSONL below), or one case per row (event and outcome columns side by side).
    Columns: ``event_id``, ``task_type``, ``payload``, ``decision`` (required);
    ``occurred_at``, ``segment``, ``actions``, ``decided_by``, ``decided_at``, ``handled_by``
    (optional; ``agent``, ``assisted`` or ``blind``, null: blind), ``second_opinion`` (optional:
    the outcome's second opinion object, :mod:`replay.noise`).
    ``payload``/``decision``/``actions`` are JSON text or nested Parquet types.
    *JSONL* -- one object per line with ``"kind": "event"`` or ``"kind": "outcome"`` (the
    data contracts of DESIGN.md), validated line by line.
Joining
    An event without an outcome (or an outcome without its event) is not a case; both are
    counted in :class:`HistoryStats`. Of several outcomes for one event the latest
    ``decided_at`` wins (ties: the later record), as in the sidecar; of duplicate events
    the first is kept. An event's second opinion (the sidecar file's ``second_opinions``
    table; in JSONL an outcome's ``second_opinion`` object or a record with
    ``"second_opinion": true``, never an outcome) is kept one per event by the live rule.
    Cases come in ``event_id`` order.
Errors
    :class:`~replay.errors.HistoryError` names the file and the line (JSONL), the row
    (Parquet, 1-based) or the table/column that is wrong. JSONL is validated whole before
    the first case is returned; Parquet and DuckDB rows are checked as they are read.

The cache (:class:`ResponseCache`) keeps each successful agent answer under
``(agent_key, request_hash)``; see :mod:`replay.cache` for what the key means.

Every DuckDB call of replay stays in this package (like :mod:`shadow.store` inside
``shadow``), split by what it owns: :mod:`~replay.history.reader` (history files),
:mod:`~replay.history.answers` (the cache) and :mod:`~replay.history.worker` (their threads).
JSONL, which needs no DuckDB, is read by :mod:`replay.jsonl`.
"""

from __future__ import annotations

from replay.history.answers import ResponseCache, decode_answers, encode_answers
from replay.history.reader import Format, History, detect_format
from replay.model import HistoryStats

__all__ = [
    "Format",
    "History",
    "HistoryStats",
    "ResponseCache",
    "decode_answers",
    "detect_format",
    "encode_answers",
]
