"""The per-case results a later run pairs with: compact, and the same however the cases
were split over shards or in which order they arrived."""

from __future__ import annotations

import pickle
import random

from replay.cases import AGREE, CRITICAL, DISAGREE, ERROR, CaseLog

CODES = (AGREE, DISAGREE, CRITICAL, ERROR)


def rows(n: int) -> list[tuple[str, str, str | None]]:
    segments = ("eu", "us", "apac", None)
    return [(f"ev-{i:05d}-é", CODES[i % 4], segments[(i * 7) % 4]) for i in range(n)]


def log_of(items: list[tuple[str, str, str | None]]) -> CaseLog:
    log = CaseLog()
    for event_id, code, segment in items:
        log.add(event_id, code, segment)
    return log


def test_to_json_is_sorted_and_counts_each_segment() -> None:
    log = log_of(
        [("b", AGREE, "us"), ("a", CRITICAL, "eu"), ("c", ERROR, None), ("d", AGREE, "eu")]
    )
    cases, members, segments = log.to_json()
    assert list(cases.items()) == [("a", "c"), ("b", "a"), ("c", "e"), ("d", "a")]
    assert members == {"eu": ["a", "d"], "us": ["b"]}
    assert segments == {
        "eu": {"n": 2, "agree": 1, "agreement": 0.5, "critical": 1, "errors": 0},
        "us": {"n": 1, "agree": 1, "agreement": 1.0, "critical": 0, "errors": 0},
    }
    assert len(log) == 4


def test_shards_merged_in_any_order_give_one_log() -> None:
    items = rows(1_000)
    whole = log_of(items).to_json()
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    parts = [log_of(shuffled[k::3]) for k in range(3)]  # each with its own segment table
    merged = CaseLog()
    for part in reversed(parts):
        merged.merge(pickle.loads(pickle.dumps(part)))  # as a worker sends it
    assert merged.to_json() == whole


def test_the_log_is_compact() -> None:
    """About 20 bytes a case (ids of 11 characters), no Python object per case: what a
    worker sends its parent is the buffers themselves."""
    log = log_of(rows(10_000))
    assert len(pickle.dumps(log)) < 10_000 * 25
