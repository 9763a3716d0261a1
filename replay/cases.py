"""Per-case results of one task type: what a later run pairs its own results with.

:class:`CaseLog` keeps one entry per blind evidence case (the cases ``n`` counts): the
``event_id``, a one-letter result and the event's ``segment``. It is compact (the ids as
UTF-8 in one buffer, a byte per result, an index per segment: about 10-20 bytes a case, no
Python object per case) and merges across shards in any order, since what it writes out is
sorted by ``event_id``.

Result codes (the report's ``cases`` field, documented in docs/replay.md)::

    a   agree
    d   disagree, no critical field missed
    c   critical miss (a disagreement on a ``critical: true`` field)
    e   agent error (counts as not agreeing, as in GET /v1/agreement)

:class:`CostLog` keeps the agent's reported cost of *every* answered case (evidence and
acceptance: cost describes the answer, not the human), as compactly: the report's
``case_costs`` (``{event_id: cost_usd}``), which the cost regression pairs on, and the
figures the cost budget is judged on (:meth:`CostLog.figures`).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from typing import Any

__all__ = [
    "AGREE",
    "CODES",
    "CRITICAL",
    "DISAGREE",
    "ERROR",
    "CaseLog",
    "CostLog",
    "cost_figures",
    "segment_entry",
]

AGREE, DISAGREE, CRITICAL, ERROR = "a", "d", "c", "e"
CODES = frozenset((AGREE, DISAGREE, CRITICAL, ERROR))


def segment_entry(codes: list[str]) -> dict[str, Any]:
    """``{n, agree, agreement, critical, errors}`` of some cases' result codes, with the
    report's names and rounding."""
    n = len(codes)
    agree = codes.count(AGREE)
    return {
        "n": n,
        "agree": agree,
        "agreement": round(agree / n, 4) if n else None,
        "critical": codes.count(CRITICAL),
        "errors": codes.count(ERROR),
    }


class CaseLog:
    """The result of every blind case of one task type; see the module doc."""

    __slots__ = ("_codes", "_ids", "_lengths", "_names", "_segments")

    def __init__(self) -> None:
        self._ids = bytearray()  # every event_id, UTF-8, back to back
        self._lengths = array("I")  # bytes of each event_id in _ids
        self._codes = bytearray()  # one result code (ASCII) per case
        self._segments = array("I")  # 0: no segment; k: the k-th name of _names
        self._names: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def add(self, event_id: str, code: str, segment: str | None) -> None:
        raw = event_id.encode()
        self._ids += raw
        self._lengths.append(len(raw))
        self._codes.append(ord(code))
        self._segments.append(self._segment_index(segment))

    def _segment_index(self, segment: str | None) -> int:
        if segment is None:
            return 0
        found = self._names.get(segment)
        if found is None:
            found = self._names[segment] = len(self._names) + 1
        return found

    def merge(self, other: CaseLog) -> None:
        """Add another log's cases (a shard's: other cases of the same task type)."""
        remap = [0] + [self._segment_index(name) for name in other._names]
        self._ids += other._ids
        self._lengths.extend(other._lengths)
        self._codes += other._codes
        self._segments.extend(remap[k] for k in other._segments)

    def _event_ids(self) -> list[str]:
        out = []
        at = 0
        for length in self._lengths:
            out.append(self._ids[at : at + length].decode())
            at += length
        return out

    def __iter__(self) -> Iterator[tuple[str, str, str | None]]:
        """``(event_id, code, segment)`` in the order added."""
        names: list[str | None] = [None, *self._names]
        codes = self._codes.decode("ascii")
        for k, event_id in enumerate(self._event_ids()):
            yield event_id, codes[k], names[self._segments[k]]

    def to_json(self) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Any]]:
        """``(cases, case_segments, segments)``: ``{event_id: code}`` and ``{segment:
        [event_id, ...]}`` sorted by event_id, and each segment's figures
        (:func:`segment_entry`), sorted by segment."""
        ids = self._event_ids()
        codes = self._codes.decode("ascii")
        order = sorted(range(len(ids)), key=ids.__getitem__)
        cases = {ids[k]: codes[k] for k in order}
        names = list(self._names)
        members: list[list[str]] = [[] for _ in names]
        seg_codes: list[list[str]] = [[] for _ in names]
        for k in order:
            seg = self._segments[k]
            if seg:
                members[seg - 1].append(ids[k])
                seg_codes[seg - 1].append(codes[k])
        by_name = sorted(range(len(names)), key=names.__getitem__)
        return (
            cases,
            {names[j]: members[j] for j in by_name},
            {names[j]: segment_entry(seg_codes[j]) for j in by_name},
        )


class CostLog:
    """Each answered case's cost in USD (NaN: unknown); see the module doc."""

    __slots__ = ("_costs", "_ids", "_lengths")

    def __init__(self) -> None:
        self._ids = bytearray()
        self._lengths = array("I")
        self._costs = array("d")

    def __len__(self) -> int:
        return len(self._costs)

    def add(self, event_id: str, cost_usd: float) -> None:
        raw = event_id.encode()
        self._ids += raw
        self._lengths.append(len(raw))
        self._costs.append(cost_usd)

    def merge(self, other: CostLog) -> None:
        self._ids += other._ids
        self._lengths.extend(other._lengths)
        self._costs.extend(other._costs)

    @property
    def costs(self) -> array[float]:
        return self._costs

    def to_json(self) -> dict[str, float | None] | None:
        """``{event_id: cost_usd}`` sorted by event_id (``null``: unknown); ``None`` when no
        answer reported a cost (nothing to pair, and no need to write a zero per case)."""
        if not any(x > 0 for x in self._costs):  # NaN > 0 is False
            return None
        ids: list[str] = []
        at = 0
        for length in self._lengths:
            ids.append(self._ids[at : at + length].decode())
            at += length
        order = sorted(range(len(ids)), key=ids.__getitem__)
        costs = self._costs
        return {ids[k]: None if math.isnan(costs[k]) else costs[k] for k in order}


def cost_figures(costs: array[float] | list[float]) -> dict[str, float | int]:
    """``{n, mean, variance, max}`` of some costs: exact sums (:func:`math.fsum`), so the
    figures do not depend on the order the costs were added in; ``variance`` is the sample
    variance (denominator ``n - 1``; 0 below two costs)."""
    n = len(costs)
    if n == 0:
        return {"n": 0, "mean": 0.0, "variance": 0.0, "max": 0.0}
    mean = math.fsum(costs) / n
    variance = math.fsum((x - mean) ** 2 for x in costs) / (n - 1) if n > 1 else 0.0
    return {"n": n, "mean": mean, "variance": variance, "max": max(costs)}
