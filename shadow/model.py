"""Immutable values that flow through the pipeline, and their JSON contracts.

Parsing is strict and total: ``WorkEvent.from_json`` and friends either return a value or
raise :class:`~shadow.errors.ValidationError` listing *every* problem with its field path
and what was expected. Values never hold anything that is not JSON-serialisable, so the
store can persist them and the API can print them unchanged.

Limits (``MAX_DEPTH``, ``MAX_ID_LENGTH``) protect the pipeline from hostile input; the
service passes its configured limits down, these are the defaults. The field checks live
in :mod:`shadow.checks`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Self

import orjson

from shadow.checks import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    TASK_TYPE_PATTERN,
    TASK_TYPE_RE,
    Check,
    JSONObject,
    brief,
    json_problem,
    kind_of,
    text_problem,
)
from shadow.errors import FieldError, Reason

# How a decision's cost is known (shadow.budgets): reported by the agent, priced from the
# policy's price table, or unknown.
CostSource = Literal["reported", "priced", "unknown"]
# The largest token count and cost an agent's usage may state (beyond: an invalid answer).
MAX_TOKENS = 1e15
MAX_COST_USD = 1e9

__all__ = [
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "ORJSON_STRICT",
    "TASK_TYPE_PATTERN",
    "Action",
    "AuditEntry",
    "Comparison",
    "CostSource",
    "Evidence",
    "FieldResult",
    "JSONObject",
    "Level",
    "Outcome",
    "SecondOpinion",
    "ShadowDecision",
    "Usage",
    "Verdict",
    "WorkEvent",
    "canonical_bytes",
    "canonical_json",
    "content_hash",
]


class Level(enum.IntEnum):
    """The autonomy ladder. Ordered: ``Level.L1 < Level.L2``."""

    L0 = 0  # shadow / assist
    L1 = 1  # suggest
    L2 = 2  # execute with approval
    L3 = 3  # supervised autonomy
    L4 = 4  # full autonomy

    @classmethod
    def parse(cls, value: object) -> Level:
        """``"L2"`` -> ``Level.L2``; anything else raises ``ValueError`` naming the choices."""
        if isinstance(value, str) and value in cls.__members__:
            return cls[value]
        raise ValueError(f"unknown level {value!r}; use one of L0, L1, L2, L3, L4")

    def __str__(self) -> str:
        return self.name


class Handling(enum.StrEnum):
    """How an item was handled, which decides whether its outcome is evidence.

    ``blind``: a human decided without seeing the agent's answer (every item at L0, the
    audit sample at L1 and above, and every item the host never routed): the only outcomes
    that are evidence for the gates. ``assisted``: a human decided with the agent's proposal
    shown (L1 suggestions, L2 approvals): anchored, so only "acceptance". ``agent``: the
    agent acted (L3, L4); the outcome echoes the agent's own decision."""

    BLIND = "blind"
    ASSISTED = "assisted"
    AGENT = "agent"

    @property
    def rank(self) -> int:
        """How far the outcome depends on the agent: an item routed twice keeps the
        highest (the human may have seen the agent's answer once)."""
        return _HANDLING_RANK[self]


_HANDLING_RANK = {Handling.BLIND: 0, Handling.ASSISTED: 1, Handling.AGENT: 2}


class Verdict(enum.StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    AGENT_ERROR = "agent_error"
    EXPIRED = "expired"


def canonical_json(value: object) -> str:
    """Deterministic JSON (sorted keys, no spaces): the basis of hashes and equality."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(value: object) -> bytes:
    """``canonical_json(value).encode()``, byte for byte, mostly written by orjson.

    orjson's output is kept only where it cannot differ from the stdlib's: anything orjson
    refuses (integers beyond 64 bits, non-string keys, lone surrogates, str/int/dict
    subclasses, very deep nesting) or may spell differently (floats below 1e-4, which the
    stdlib writes as ``1e-05`` and orjson as ``0.00001`` or ``1e-5``; ``NaN``/``Infinity``,
    which orjson writes as ``null``) is written by the stdlib."""
    try:
        out = orjson.dumps(value, option=_CANONICAL)
    except orjson.JSONEncodeError:
        return canonical_json(value).encode()
    if _SMALL_FLOAT.search(out) or (b"null" in out and orjson.loads(out) != value):
        return canonical_json(value).encode()
    return out


# A digit then "e-" (a negative exponent) or "0.0000" (a positional float below 1e-4): the
# spellings where orjson and the stdlib part ways. Matches inside strings only cost time.
_SMALL_FLOAT = re.compile(rb"[0-9]e-|0\.0000")
# Objects orjson would write but the stdlib refuses or writes differently go to the stdlib.
ORJSON_STRICT = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_CANONICAL = orjson.OPT_SORT_KEYS | ORJSON_STRICT


def content_hash(value: object) -> str:
    """Short, stable hash of a JSON value (hex SHA-256, first 32 chars) of its
    :func:`canonical_json` text."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()[:32]


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkEvent:
    """A unit of human-handled work, mirrored to the agent. ``payload`` is already redacted
    when the event reaches the store or the agent."""

    event_id: str
    task_type: str
    payload: JSONObject
    occurred_at: str | None = None
    segment: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        c = Check(obj, "a work event")
        c.done()  # not an object: that is the one problem worth reporting
        c.unknown_keys({"event_id", "task_type", "payload", "occurred_at", "segment", "kind"})
        if "kind" in c.obj and c.obj["kind"] != "event":
            c.fail("kind", f'expected "event", got {brief(c.obj["kind"])}', Reason.BAD_KIND)
        event_id = c.ident("event_id")
        task_type = c.ident("task_type")
        if task_type and not TASK_TYPE_RE.match(task_type):
            c.fail("task_type", "expected a letter then letters, digits, _ . - (at most 64)")
        payload = c.json_object("payload")
        occurred_at = c.timestamp("occurred_at")
        segment = c.optional_str("segment")
        c.done()
        return cls(event_id, task_type, payload, occurred_at, segment)

    def to_json(self) -> JSONObject:
        out: JSONObject = {"event_id": self.event_id, "task_type": self.task_type}
        out["payload"] = self.payload
        if self.occurred_at is not None:
            out["occurred_at"] = self.occurred_at
        if self.segment is not None:
            out["segment"] = self.segment
        return out

    @property
    def content_hash(self) -> str:
        return content_hash(self.to_json())


@dataclass(frozen=True, slots=True)
class Action:
    """One tool call an agent proposes or a human performed."""

    tool: str
    args: JSONObject = field(default_factory=dict)

    def to_json(self) -> JSONObject:
        return {"tool": self.tool, "args": self.args}


def _handling(c: Check, key: str) -> Handling | None:
    raw = c.obj.get(key)
    if raw is None:
        return None
    for handling in Handling:
        if raw == handling.value:
            return handling
    c.fail(key, f'expected "agent", "assisted" or "blind", got {brief(raw)}')
    return None


def _parse_actions(c: Check, key: str) -> tuple[Action, ...]:
    raw = c.obj.get(key)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.fail(key, f"expected an array of {{tool, args}} objects, got {kind_of(raw)}")
        return ()
    actions: list[Action] = []
    for i, item in enumerate(raw):
        path = f"{key}[{i}]"
        if not isinstance(item, dict):
            c.fail(path, f"expected an object with tool and args, got {kind_of(item)}")
            continue
        tool = item.get("tool")
        args = item.get("args", {})
        if not isinstance(tool, str) or not tool:
            c.fail(f"{path}.tool", f"required; expected a non-empty string, got {kind_of(tool)}")
            continue
        named = text_problem(tool, f"{path}.tool", ident=True)
        if named:
            c.fail(*named)
            continue
        if not isinstance(args, dict):
            c.fail(f"{path}.args", f"expected a JSON object, got {kind_of(args)}")
            continue
        extra = set(item) - {"tool", "args"}
        if extra:
            c.fail(f"{path}.{sorted(extra)[0]}", "unknown field; allowed: args, tool")
            continue
        problem = json_problem(args, f"{path}.args", 3)
        if problem:
            c.fail(*problem)
            continue
        actions.append(Action(tool, args))
    return tuple(actions)


@dataclass(frozen=True, slots=True)
class SecondOpinion:
    """An independent second human decision for an event (the human ceiling,
    :mod:`shadow.noise`): never evidence about the agent, never a revision of the outcome."""

    decision: JSONObject
    actions: tuple[Action, ...] = ()
    decided_by: str | None = None

    def to_json(self) -> JSONObject:
        out: JSONObject = {"decision": self.decision}
        if self.actions:
            out["actions"] = [a.to_json() for a in self.actions]
        if self.decided_by is not None:
            out["decided_by"] = self.decided_by
        return out

    @property
    def content_hash(self) -> str:
        """Hash of what was decided (decision and actions), not who."""
        return content_hash({"decision": self.decision, "actions": self.to_json().get("actions")})


def _second_opinion(c: Check, key: str) -> SecondOpinion | bool:
    """``second_opinion``: an object ``{decision, actions?, decided_by?}`` (checked like an
    outcome's own fields, paths under ``second_opinion.``), ``true`` (the record itself is a
    second opinion), or absent/``false``."""
    raw = c.obj.get(key)
    if raw is None or raw is False:
        return False
    if raw is True:
        return True
    if not isinstance(raw, dict):
        c.fail(
            key,
            "expected an object {decision, actions?, decided_by?} or true (this record is "
            f"the second opinion), got {kind_of(raw)}",
        )
        return False
    inner = Check(raw, "a second opinion")
    inner.unknown_keys({"decision", "actions", "decided_by"})
    decision = inner.json_object("decision")
    actions = _parse_actions(inner, "actions")
    decided_by = inner.optional_str("decided_by")
    c.errors.extend(FieldError(f"{key}.{e.path}".rstrip("."), e.message) for e in inner.errors)
    return SecondOpinion(decision, actions, decided_by)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the human actually decided for an event.

    ``second_opinion``: an independent second human decision carried with it (stored apart,
    :mod:`shadow.noise`). ``is_second_opinion``: the record *is* a second opinion
    (``"second_opinion": true``): its decision, actions and decided_by are stored as the
    event's second opinion, never as an outcome or a revision of one."""

    event_id: str
    decision: JSONObject
    actions: tuple[Action, ...] = ()
    decided_by: str | None = None
    decided_at: str | None = None
    handled_by: Handling | None = None  # as the host states it (the sidecar's record wins)
    second_opinion: SecondOpinion | None = None
    is_second_opinion: bool = False

    @classmethod
    def from_json(cls, obj: object) -> Self:
        c = Check(obj, "a human outcome")
        c.done()
        c.unknown_keys(
            {
                "event_id",
                "decision",
                "actions",
                "decided_by",
                "decided_at",
                "handled_by",
                "kind",
                "second_opinion",
            }
        )
        if "kind" in c.obj and c.obj["kind"] != "outcome":
            c.fail("kind", f'expected "outcome", got {brief(c.obj["kind"])}', Reason.BAD_KIND)
        event_id = c.ident("event_id")
        decision = c.json_object("decision")
        actions = _parse_actions(c, "actions")
        decided_by = c.optional_str("decided_by")
        decided_at = c.timestamp("decided_at")
        handled_by = _handling(c, "handled_by")
        second = _second_opinion(c, "second_opinion")
        c.done()
        return cls(
            event_id,
            decision,
            actions,
            decided_by,
            decided_at,
            handled_by,
            second if isinstance(second, SecondOpinion) else None,
            second is True,
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {"event_id": self.event_id, "decision": self.decision}
        if self.actions:
            out["actions"] = [a.to_json() for a in self.actions]
        if self.decided_by is not None:
            out["decided_by"] = self.decided_by
        if self.decided_at is not None:
            out["decided_at"] = self.decided_at
        if self.handled_by is not None:
            out["handled_by"] = self.handled_by.value
        if self.second_opinion is not None:
            out["second_opinion"] = self.second_opinion.to_json()
        elif self.is_second_opinion:
            out["second_opinion"] = True
        return out

    def as_second_opinion(self) -> SecondOpinion | None:
        """The second opinion this record carries or is."""
        if self.is_second_opinion:
            return SecondOpinion(self.decision, self.actions, self.decided_by)
        return self.second_opinion

    @property
    def content_hash(self) -> str:
        """Hash of what was decided (decision and actions), not who or when."""
        return content_hash({"decision": self.decision, "actions": self.to_json().get("actions")})

    @property
    def decided_at_ts(self) -> datetime | None:
        return None if self.decided_at is None else datetime.fromisoformat(self.decided_at)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    # The model that answered (``usage.model``, optional): its price (the policy's
    # ``prices``) costs the tokens when the agent reports no ``cost_usd``.
    model: str | None = None
    # How ``cost_usd`` is known (shadow.budgets): ``reported`` by the agent, ``priced`` from
    # the policy's price table, or ``unknown`` (no cost reported and none could be priced:
    # ``cost_usd`` is then 0 and means nothing; a cost budget cannot be met on it).
    cost_source: CostSource = "reported"

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }
        if self.model is not None:
            out["model"] = self.model
        return out


@dataclass(frozen=True, slots=True)
class ShadowDecision:
    """The agent's answer for one event, recorded and never executed.

    ``error`` is set (and ``decision`` is ``None``) when the agent failed: non-2xx, timeout,
    invalid JSON, no ``decision``. Such a decision compares as ``agent_error``.
    """

    event_id: str
    agent_version: str
    decision: JSONObject | None
    actions: tuple[Action, ...] = ()
    confidence: float | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: float | None = None
    error: str | None = None
    # Set by the tool gateway (shadow.gateway) when the agent called tools through it:
    # ``actions`` are then the writes it captured, and ``declared_actions`` what the
    # agent's answer listed, when that differs.
    tool_calls: bool = False
    declared_actions: tuple[Action, ...] | None = None
    # Whether the agent's answer had an ``actions`` key (absent: it declared none, which
    # is not a claim that it would take none). Not stored: only the gateway reads it.
    actions_declared: bool = field(default=True, compare=False)

    @classmethod
    def from_agent_response(
        cls, event_id: str, obj: object, *, default_version: str, latency_ms: float | None = None
    ) -> Self:
        """Parse an agent's 200 response body (the agent contract in DESIGN.md)."""
        c = Check(obj, "an agent response")
        decision = c.json_object("decision")
        actions = _parse_actions(c, "actions")
        confidence = c.number("confidence", low=0.0, high=1.0)
        version = c.optional_str("agent_version") or default_version
        usage = Usage()
        raw_usage = c.obj.get("usage")
        if raw_usage is not None:
            u = Check(raw_usage, "usage")
            tokens_in = u.number("input_tokens", low=0, high=MAX_TOKENS)
            tokens_out = u.number("output_tokens", low=0, high=MAX_TOKENS)
            cost = u.number("cost_usd", low=0, high=MAX_COST_USD)
            model = u.optional_str("model")
            # No cost_usd: unknown until the policy's price table prices the tokens
            # (shadow.budgets.price), never silently 0.
            usage = Usage(
                int(tokens_in or 0),
                int(tokens_out or 0),
                cost or 0.0,
                model,
                "reported" if cost is not None else "unknown",
            )
            c.errors.extend(FieldError(f"usage.{e.path}".rstrip("."), e.message) for e in u.errors)
        else:
            usage = Usage(cost_source="unknown")
        c.done()
        return cls(
            event_id,
            version,
            decision,
            actions,
            confidence,
            usage,
            latency_ms,
            actions_declared="actions" in c.obj,
        )

    @classmethod
    def failed(
        cls, event_id: str, agent_version: str, error: str, *, latency_ms: float | None = None
    ) -> Self:
        return cls(event_id, agent_version, None, error=error, latency_ms=latency_ms)

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "event_id": self.event_id,
            "agent_version": self.agent_version,
            "decision": self.decision,
            "actions": [a.to_json() for a in self.actions],
            "confidence": self.confidence,
            "usage": self.usage.to_json(),
            "latency_ms": self.latency_ms,
            "error": self.error,
        }
        if self.tool_calls:
            out["tool_calls"] = True
        if self.declared_actions is not None:
            out["declared_actions"] = [a.to_json() for a in self.declared_actions]
        return out

    @classmethod
    def from_stored(cls, obj: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_json` for rows the store wrote itself (already validated)."""
        usage = obj.get("usage") or {}
        return cls(
            event_id=obj["event_id"],
            agent_version=obj["agent_version"],
            decision=obj.get("decision"),
            actions=tuple(Action(a["tool"], a.get("args", {})) for a in obj.get("actions") or ()),
            confidence=obj.get("confidence"),
            usage=Usage(
                int(usage.get("input_tokens", 0)),
                int(usage.get("output_tokens", 0)),
                float(usage.get("cost_usd", 0.0)),
                usage.get("model"),
            ),
            latency_ms=obj.get("latency_ms"),
            error=obj.get("error"),
            tool_calls=bool(obj.get("tool_calls", False)),
            declared_actions=(
                None
                if obj.get("declared_actions") is None
                else tuple(Action(a["tool"], a.get("args", {})) for a in obj["declared_actions"])
            ),
        )

    @property
    def content_hash(self) -> str:
        """Hash of the answer (decision, actions, error), not of timing or usage."""
        return content_hash(
            {
                "decision": self.decision,
                "actions": [a.to_json() for a in self.actions],
                "error": self.error,
            }
        )


@dataclass(frozen=True, slots=True)
class FieldResult:
    """The comparison of one field (or the ``actions`` list) between agent and human.

    ``distance`` is set only for actions compared in order (match ``sequence``): the edit
    distance between the two lists, 0 when they match. Its JSON key is written only then,
    so every other result keeps the five keys it always had."""

    path: str
    match: str
    matched: bool
    critical: bool = False
    reason: str = ""
    distance: int | None = None

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "path": self.path,
            "match": self.match,
            "matched": self.matched,
            "critical": self.critical,
            "reason": self.reason,
        }
        if self.distance is not None:
            out["distance"] = self.distance
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        distance = obj.get("distance")
        return cls(
            obj["path"],
            obj["match"],
            bool(obj["matched"]),
            bool(obj["critical"]),
            obj["reason"],
            None if distance is None else int(distance),
        )


@dataclass(frozen=True, slots=True)
class Comparison:
    """One verdict per (event_id, agent_version), against one outcome revision."""

    event_id: str
    task_type: str
    agent_version: str
    verdict: Verdict
    fields: tuple[FieldResult, ...] = ()
    critical_miss: bool = False
    outcome_hash: str | None = None
    handled_by: Handling = Handling.BLIND  # only blind comparisons are evidence
    # The case's trace (shadow.tracing; 32 hex digits) when tracing was on as it was made.
    trace_id: str | None = None
    # The segment of the case's event as the store keeps it with the comparison (schema v14):
    # set on comparisons read back from the store (the comparisons topic carries it, so a
    # promoter that never saw the events keeps per-segment evidence); the joiner leaves it
    # None and the store takes it from the event.
    segment: str | None = None

    @property
    def evidence(self) -> bool:
        """Whether this comparison counts for the gates and drift (blind, and a verdict that
        is evidence: not expired)."""
        return self.handled_by is Handling.BLIND and self.verdict is not Verdict.EXPIRED

    @property
    def mismatches(self) -> tuple[FieldResult, ...]:
        return tuple(f for f in self.fields if not f.matched)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Counts behind a gate for one (task_type, agent_version).

    ``n`` counts agree, disagree and agent_error (errors count against the agent); expired
    comparisons are not evidence.
    """

    task_type: str
    agent_version: str
    n: int = 0
    agree: int = 0
    critical: int = 0
    errors: int = 0
    # The reviewed sample (blind review queue, shadow.review): cases drawn from the
    # agreements and from the disagreements, and how many of each the reviewers found
    # acceptable for the agent (shadow.adjudicated turns them into the adjudicated bound).
    reviewed_agree: int = 0
    acceptable_agree: int = 0
    reviewed_disagree: int = 0
    acceptable_disagree: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agree / self.n if self.n else None

    @property
    def disagree(self) -> int:
        """Comparisons the agent answered and a human decided otherwise (not its errors)."""
        return self.n - self.agree - self.errors


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the append-only autonomy audit log."""

    at: datetime
    task_type: str
    actor: str
    action: str
    from_level: Level | None
    to_level: Level | None
    reason: str
    evidence: JSONObject = field(default_factory=dict)
    policy_hash: str | None = None

    def to_json(self) -> JSONObject:
        return {
            "at": self.at.isoformat(),
            "task_type": self.task_type,
            "actor": self.actor,
            "action": self.action,
            "from_level": None if self.from_level is None else str(self.from_level),
            "to_level": None if self.to_level is None else str(self.to_level),
            "reason": self.reason,
            "evidence": self.evidence,
            "policy_hash": self.policy_hash,
        }


def as_actions(raw: Sequence[Mapping[str, Any]] | None) -> tuple[Action, ...]:
    """Actions from stored JSON (already validated on the way in)."""
    return tuple(Action(a["tool"], dict(a.get("args") or {})) for a in raw or ())
