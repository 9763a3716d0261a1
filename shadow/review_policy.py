"""The review queue's policy keys, per task type (docs/policy.md, "review"). The keys are a
contract::

    task_types:
      refund_request:
        review:
          reason_codes: [human_error, agent_error, policy_changed, ambiguous_case,
                         missing_information, other]   # the default set
          not_against_agent: [policy_changed]  # human_right for these does not count against
          claim_ttl: 15m                # how long a claimed case stays the reviewer's (900 s)
          agreement_share: 0.05         # share of queue draws from the agreements
          reviews_per_case: 1           # blind reviews each drawn case gets

Pure values and their parser, no I/O. A reason code is a short identifier (letters, digits,
``_`` and ``-``), so it can be a metric label, a form value and a key without escaping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_REASON_CODES",
    "MAX_REVIEWS_PER_CASE",
    "VERDICTS",
    "ReviewPolicy",
    "parse_review",
]

DEFAULT_REASON_CODES = (
    "human_error",
    "agent_error",
    "policy_changed",
    "ambiguous_case",
    "missing_information",
    "other",
)
DEFAULT_CLAIM_TTL = 900.0  # seconds
MAX_CLAIM_TTL = 7 * 24 * 3600.0
MAX_REVIEWS_PER_CASE = 5
_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)?$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

VERDICTS = ("agent_right", "human_right", "both_acceptable", "unclear")

Fail = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """How a task type's cases are reviewed (see the module docstring)."""

    reason_codes: tuple[str, ...] = DEFAULT_REASON_CODES
    not_against_agent: frozenset[str] = frozenset()
    claim_ttl: float = DEFAULT_CLAIM_TTL
    agreement_share: float = 0.05
    reviews_per_case: int = 1

    def acceptable(self, verdict: str, reason: str) -> bool:
        """Whether a verdict says the agent's decision was acceptable: ``agent_right`` and
        ``both_acceptable``, and ``human_right`` under a ``not_against_agent`` reason.
        ``unclear`` is not: a review that cannot tell counts against the agent, so the
        adjudicated bound stays conservative (docs/statistics.md)."""
        if verdict in ("agent_right", "both_acceptable"):
            return True
        return verdict == "human_right" and reason in self.not_against_agent


def _duration(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        found = _DURATION.match(raw.strip())
        if found is not None:
            return float(found.group(1)) * _UNIT[found.group(2)]
    return None


def _codes(raw: object, path: str, fail: Fail) -> tuple[str, ...] | None:
    if not isinstance(raw, list) or not raw:
        fail(path, "expected a non-empty list of reason codes, e.g. [human_error, other]")
        return None
    codes: list[str] = []
    for i, code in enumerate(raw):
        if not isinstance(code, str) or not _CODE.match(code):
            fail(f"{path}[{i}]", f"{code!r} is not a code: 1-64 letters, digits, _ or -")
        elif code in codes:
            fail(f"{path}[{i}]", f"{code!r} is listed twice")
        else:
            codes.append(code)
    return tuple(codes)


def parse_review(raw: object, path: str, fail: Fail) -> ReviewPolicy:
    """The ``review:`` block at ``path`` (absent: the defaults). Every problem is reported
    through ``fail(path, message)``; what could not be parsed keeps its default."""
    if raw is None:
        return ReviewPolicy()
    if not isinstance(raw, dict):
        fail(path, f"expected a mapping of keys, got {type(raw).__name__}")
        return ReviewPolicy()
    allowed = {
        "reason_codes",
        "not_against_agent",
        "claim_ttl",
        "agreement_share",
        "reviews_per_case",
    }
    m: Mapping[str, Any] = raw
    for key in m:
        if key not in allowed:
            fail(f"{path}.{key}", f"unknown key; allowed here: {', '.join(sorted(allowed))}")
    codes: tuple[str, ...] = DEFAULT_REASON_CODES
    if "reason_codes" in m:
        codes = _codes(m["reason_codes"], f"{path}.reason_codes", fail) or codes
    against: frozenset[str] = frozenset()
    if "not_against_agent" in m:
        where = f"{path}.not_against_agent"
        listed = m["not_against_agent"]
        if not isinstance(listed, list):
            fail(where, "expected a list of reason codes")
        else:
            for i, code in enumerate(listed):
                if code not in codes:
                    fail(f"{where}[{i}]", f"{code!r} is not one of reason_codes")
            against = frozenset(c for c in listed if c in codes)
    ttl = DEFAULT_CLAIM_TTL
    if "claim_ttl" in m:
        found = _duration(m["claim_ttl"])
        if found is None or not 1.0 <= found <= MAX_CLAIM_TTL:
            fail(
                f"{path}.claim_ttl",
                f"{m['claim_ttl']!r}: expected a duration from 1 s to 7 days, e.g. 15m, 900, 1h",
            )
        else:
            ttl = found
    share = 0.05
    if "agreement_share" in m:
        value = m["agreement_share"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            fail(f"{path}.agreement_share", f"expected a number in [0, 1], got {value!r}")
        else:
            share = float(value)
    per_case = 1
    if "reviews_per_case" in m:
        value = m["reviews_per_case"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 1 <= value <= MAX_REVIEWS_PER_CASE
        ):
            fail(
                f"{path}.reviews_per_case",
                f"expected a whole number from 1 to {MAX_REVIEWS_PER_CASE}, got {value!r}",
            )
        else:
            per_case = value
    return ReviewPolicy(codes, against, ttl, share, per_case)
