"""The policy file: per task type sampling, redaction, diff rules and the autonomy ladder.

The YAML keys are a public contract (DESIGN.md, docs/policy.md). Loading is strict: every
mistake is collected and raised together as one :class:`~shadow.errors.PolicyError` whose
lines name the file, the key path and the fix, e.g.::

    policy.yaml: task_types.refund.compare.fields.amount.match: unknown match kind 'fuzzy';
    use one of exact, number, text, set, ignore

The parsed policy is a tree of frozen values; ``TaskPolicy.hash`` identifies the rules that
produced a piece of evidence and is recorded in every audit entry.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from shadow.checks import text_problem
from shadow.compare_rules import (
    ActionsOrder,
    ActionsRule,
    CompareParser,
    CompareRules,
    FieldRule,
    MatchKind,
    ToolRule,
)
from shadow.drift import DEFAULT_MARGIN, DEFAULT_THRESHOLD, Drift
from shadow.errors import FieldError, PolicyError
from shadow.mirror import MirrorRule, parse_rules
from shadow.model import JSONObject, Level, content_hash
from shadow.review_policy import ReviewPolicy, parse_review
from shadow.tools_policy import (
    TaskTools,
    Upstream,
    deep_copy,
    parse_task_tools,
    parse_upstreams,
    redact_args,
    remove_paths,
)

__all__ = [
    "BUDGET_KEYS",
    "OTHER_SEGMENT",
    "REDACTED",
    "ActionsOrder",
    "ActionsRule",
    "AutonomyMode",
    "AutonomyPolicy",
    "CompareRules",
    "FieldRule",
    "Gate",
    "MatchKind",
    "Policy",
    "Price",
    "TaskPolicy",
    "ToolRule",
    "load_policy",
    "parse_policy",
    "stable_fraction",
]


MAX_SEGMENTS = 20
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def stable_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key`` (and ``salt``): the same event is always sampled
    (or routed to audit) the same way, on every replica and after every restart."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


GateEvidence = Literal["agreement", "adjudicated"]
PerSegment = Literal["each", "route"]

# The budget keys a gate may state, with the largest value each accepts.
BUDGET_KEYS: dict[str, float] = {
    "max_cost_usd_per_decision": 1e6,
    "max_latency_ms_p95": 86_400_000.0,
    "max_error_rate": 1.0,
}
# What a gate's budget clearly exceeded at the current level does (``autonomy.budgets``):
# demote to the highest level whose budgets are not clearly exceeded, or only alert.
BudgetMode = Literal["demote", "alert"]
# The largest price per million tokens, human cost and cost ceiling the policy accepts (USD).
MAX_PRICE_USD = 1e6


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price (the top-level ``prices``), USD per million tokens."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok
        ) / 1e6


class AutonomyMode(enum.StrEnum):
    AUTO = "auto"  # promotions are applied
    PROPOSE = "propose"  # promotions wait for an operator's approval


OTHER_SEGMENT = "other"
"""The segment label of every item whose segment a task type does not declare (or none)."""

MAX_REPEATS = 4
"""The most extra tries a repeated case gets (a task type's ``repeats``)."""

REDACTED = "[redacted]"
"""What a dead letter shows in place of a payload that is not an object (see
:meth:`Policy.redact_record`)."""


@dataclass(frozen=True, slots=True)
class Gate:
    """What a task type needs to be promoted *to* ``level``."""

    level: Level
    agreement: float
    min_samples: int
    max_critical: int | None = None  # None: critical misses do not block this gate
    # Demotion counts critical misses among this many recent blind comparisons at the level
    # (None: the gate's min_samples); max_critical keeps its lifetime meaning at promotion.
    critical_window: int | None = None
    # Which bound the gate judges: raw blind ``agreement``, or the ``adjudicated`` estimate
    # (agreement corrected by the reviewers' verdicts, shadow.adjudicated).
    evidence: GateEvidence = "agreement"
    # Per declared segment (TaskPolicy.segments): ``each`` segment must pass on its own and
    # one falling below demotes the task type; ``route`` sends a failing segment's items to
    # humans while the others keep the level; None: segments are reported, not gated.
    per_segment: PerSegment | None = None
    # Budgets (shadow.budgets): a promotion to this level needs an upper confidence bound
    # within each stated budget; None: not budgeted. Mean cost per decision in USD, the 95th
    # percentile of the agent's latency in ms, and the share of its decisions that failed.
    max_cost_usd_per_decision: float | None = None
    max_latency_ms_p95: float | None = None
    max_error_rate: float | None = None
    # ``agreement: {below_human: m}`` (shadow.noise): the bound is judged against the human
    # ceiling (promotion: the agent's lower bound >= the ceiling's upper bound - m; demotion:
    # its upper bound < the ceiling's lower bound - m); ``agreement`` is then 1 - m, the
    # threshold with no second opinions yet (the ceiling's upper bound is 1 then).
    below_human: float | None = None

    @property
    def window(self) -> int:
        return self.critical_window if self.critical_window is not None else self.min_samples


@dataclass(frozen=True, slots=True)
class AutonomyPolicy:
    start: Level = Level.L0
    ceiling: Level = Level.L0
    mode: AutonomyMode = AutonomyMode.PROPOSE
    alpha: float = 0.05
    gates: Mapping[Level, Gate] = field(default_factory=dict)
    audit_rate: float = 0.05  # from L1 up; ``audit_rates`` overrides it per level
    # Drift demotion (shadow.drift): the drop below the gate it is tuned to, and its threshold.
    drift_margin: float = DEFAULT_MARGIN
    drift_threshold: float = DEFAULT_THRESHOLD
    audit_rates: Mapping[Level, float] = field(default_factory=dict)
    # The levels an approval to, or a manual set to above what the evidence earned, needs two
    # different approvers for (shadow.ladder; needs a tokens file).
    two_person: frozenset[Level] = frozenset()
    # A budget of the current level's gate clearly exceeded (shadow.budgets): ``demote``
    # or only ``alert`` (the shadow_budget_exceeded gauge and its alert).
    budgets: BudgetMode = "demote"

    def audit_rate_at(self, level: Level) -> float:
        """The share of items at ``level`` sent to a human who does not see the agent's
        answer (the blind audit sample): 0 at L0, where every item is blind anyway."""
        if level == Level.L0:
            return 0.0
        return self.audit_rates.get(level, self.audit_rate)

    def drift(self, level: Level) -> Drift | None:
        """The change detector for ``level``'s gate (``None`` without a gate)."""
        gate = self.gates.get(level)
        if gate is None or not 0.0 < gate.agreement < 1.0 or gate.below_human is not None:
            return None  # a gate relative to the human ceiling moves with it: no detector
        return Drift.for_gate(gate.agreement, self.drift_margin, self.drift_threshold)

    def gate_for(self, level: Level) -> Gate | None:
        return self.gates.get(level)


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    name: str
    sample_rate: float = 1.0
    redact: tuple[str, ...] = ()
    compare: CompareRules = field(default_factory=CompareRules)
    autonomy: AutonomyPolicy = field(default_factory=AutonomyPolicy)
    hash: str = ""
    # Identifies the compare rules alone: a change starts a new evidence epoch (the stored
    # decisions and outcomes are re-scored, shadow.joiner.Joiner.new_epochs).
    compare_hash: str = ""
    tools: TaskTools | None = None  # the tool gateway's rules (shadow.tools_policy)
    review: ReviewPolicy = field(default_factory=ReviewPolicy)  # shadow.review_policy
    # The segments evidence is kept for by name (metric labels, per-segment gates); the
    # others are reported together as OTHER_SEGMENT.
    segments: tuple[str, ...] = ()
    # Join health (shadow.join_health): below this share of sampled events with an outcome
    # within the join TTL the evidence is invalid and nothing is promoted; None: off.
    min_outcome_coverage: float | None = None
    # The noise floor (shadow.noise): this share of the sampled events (a stable hash of the
    # event id, salt "repeat") goes to the agent ``repeats`` more times once its first
    # decision is stored, marked as a repeat and kept apart from the evidence.
    repeat_rate: float = 0.0
    repeats: int = 1
    # Costs (shadow.budgets): the model whose price (Policy.prices) costs a decision's tokens
    # when its usage names none and reports no cost; the largest cost one decision may have
    # for the cost bound (None: 10 x the largest max_cost_usd_per_decision of the gates);
    # what a human decision costs (projected daily cost; None: not stated).
    model: str | None = None
    cost_ceiling_usd: float | None = None
    human_cost_usd_per_decision: float | None = None

    def cost_ceiling(self) -> float | None:
        """The cost bound's range [0, M]: ``cost_ceiling_usd``, else 10 x the largest cost
        budget of the gates; ``None`` when no gate states one."""
        if self.cost_ceiling_usd is not None:
            return self.cost_ceiling_usd
        stated = [
            g.max_cost_usd_per_decision
            for g in self.autonomy.gates.values()
            if g.max_cost_usd_per_decision is not None
        ]
        return 10.0 * max(stated) if stated else None

    def segment_of(self, segment: str | None) -> str:
        """The label ``segment`` is reported under: itself when declared, else ``other``."""
        return segment if segment is not None and segment in self.segments else OTHER_SEGMENT

    def sampled(self, event_id: str) -> bool:
        """Whether ``event_id`` is mirrored to the agent (``sample_rate``, stable hash)."""
        return self.sample_rate >= 1.0 or stable_fraction(event_id, "sample") < self.sample_rate

    def repeated(self, event_id: str) -> bool:
        """Whether ``event_id``'s case is sent to the agent again (``repeat_rate``, stable
        hash of the event id, salt "repeat")."""
        rate = self.repeat_rate
        return rate >= 1.0 or (rate > 0.0 and stable_fraction(event_id, "repeat") < rate)

    def audited(self, event_id: str, level: Level = Level.L3) -> bool:
        """Whether an item at ``level`` (L1 and up) goes to a human who decides without the
        agent's answer: the blind audit sample (``audit_rate``, per level), a stable hash
        of the event id, so every replica and every restart samples the same items."""
        rate = self.autonomy.audit_rate_at(level)
        return rate >= 1.0 or (rate > 0.0 and stable_fraction(event_id, "audit") < rate)

    def redact_payload(self, payload: JSONObject) -> JSONObject:
        """A copy of ``payload`` without the ``redact`` paths (``payload.a.b`` removes b).

        A path applies to every element of each list it crosses, at any depth of nesting:
        ``payload.customer.email`` removes ``email`` from ``customer`` when that is an
        object, and from every object in it when it is a list (of objects, or of lists of
        them). ``payload`` itself is never changed."""
        if not self.redact:
            return payload
        out: JSONObject = deep_copy(payload)
        _remove_paths(out, self.redact)
        return out


def _redact_record(record: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    out = dict(record)
    if not paths or "payload" not in out:
        return out
    payload = out["payload"]
    if isinstance(payload, dict | list):
        payload = deep_copy(payload)
        _remove_paths(payload, paths)
        out["payload"] = payload
    else:
        out["payload"] = REDACTED
    return out


def _remove_paths(payload: Any, paths: Sequence[str]) -> None:
    """Remove each ``payload.``-rooted path from ``payload`` in place, through lists."""
    remove_paths(payload, [path.split(".")[1:] for path in paths])


@dataclass(frozen=True, slots=True)
class Policy:
    source: str
    task_types: Mapping[str, TaskPolicy]
    unknown_task_types: str = "reject"  # reject | default
    default: TaskPolicy | None = None
    hash: str = ""
    text: str = ""  # the YAML it was parsed from (stored with the evidence)
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)  # top-level ``tools``
    mirror: tuple[MirrorRule, ...] = ()  # the ``mirror:`` rules (shadow.mirror)
    # The top-level ``prices``: per model, what its tokens cost (shadow.budgets.price).
    prices: Mapping[str, Price] = field(default_factory=dict)

    def for_task(self, task_type: str) -> TaskPolicy | None:
        """The policy for ``task_type``; the default policy for unknown ones when
        ``defaults.unknown_task_types: default``; ``None`` when they are rejected."""
        found = self.task_types.get(task_type)
        if found is not None:
            return found
        if self.default is not None:
            return self.default
        return None

    # -- dead letters ------------------------------------------------------------------------
    #
    # A record that could not be taken is kept (dead letters, the dead-letter topic) only in a
    # form that holds none of the fields the policy redacts. Such a record was never
    # validated, so the rules below assume nothing about its shape.

    def tool_redact_paths(self, task_type: str | None, tool: object) -> tuple[str, ...]:
        """The ``tools.redact`` paths of ``tool`` in ``task_type``'s policy; every task
        type's (and the default's) for a task type the policy does not configure."""
        if not isinstance(tool, str):
            return ()
        found = self.task_types.get(task_type) if task_type is not None else None
        owners = [found] if found is not None else [*self.task_types.values(), self.default]
        paths: set[str] = set()
        for owner in owners:
            if owner is not None and owner.tools is not None:
                paths.update(owner.tools.redacted_paths(tool))
        return tuple(sorted(paths))

    def redact_actions(self, task_type: str | None, actions: Any) -> Any:
        """``actions`` (a list of ``{"tool", "args"}``) without each tool's ``tools.redact``
        paths (:meth:`tool_redact_paths`); anything that is not a list is returned as is."""
        if not isinstance(actions, list):
            return actions
        out: list[Any] = []
        for action in actions:
            if isinstance(action, dict) and isinstance(action.get("args"), dict):
                paths = self.tool_redact_paths(task_type, action.get("tool"))
                action = {**action, "args": redact_args(action["args"], paths)}
            out.append(action)
        return out

    def redact_paths(self, task_type: object) -> tuple[str, ...]:
        """The redact paths for a record naming ``task_type``: that task type's own when it
        is configured; otherwise (unknown, missing, not a string) the union of every task
        type's paths and the default policy's, since the record could be any of them."""
        if isinstance(task_type, str):
            found = self.task_types.get(task_type)
            if found is not None:
                return found.redact
        paths = {p for t in self.task_types.values() for p in t.redact}
        if self.default is not None:
            paths.update(self.default.redact)
        return tuple(sorted(paths))

    @property
    def redacts(self) -> bool:
        """Whether any task type (or the default policy) redacts a field."""
        return bool(self.redact_paths(None))

    def redact_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a record (valid or not) whose ``payload`` lost the paths
        :meth:`redact_paths` gives for its ``task_type``, through lists as
        :meth:`TaskPolicy.redact_payload` does. A payload that is neither an object nor a
        list cannot be searched for a path, so when any path applies it is replaced by
        :data:`REDACTED`. Every other field is kept: outcomes, comparisons and the like carry
        no ``payload`` and come back unchanged."""
        return _redact_record(record, self.redact_paths(record.get("task_type")))

    def redact_raw(self, text: str, *, unparsed: int) -> str | None:
        """What of a dead-lettered record's text may be kept.

        Text that decodes as one JSON object is a record: with nothing to redact in it (no
        path applies, or no ``payload``) the text comes back as it was; otherwise it is
        :meth:`redact_record` written as compact JSON. A record with a repeated key is
        ambiguous (JSON parsers keep different copies; which ``task_type`` is it?): when the
        policy redacts anything it gets every task type's paths and comes back rewritten,
        holding one copy of each key. Anything else (not JSON, several values, not an
        object, truncated, bytes shown as ``\\xNN``) cannot be searched for a redacted
        field: only its first ``unparsed`` characters are kept, marked when cut, and
        ``None`` comes back when ``unparsed`` is 0."""
        repeated = False

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            nonlocal repeated
            obj = dict(items)
            repeated = repeated or len(obj) != len(items)
            return obj

        try:
            value = json.loads(text, object_pairs_hook=pairs)
        except (ValueError, RecursionError):  # JSONDecodeError and too many digits
            value = None
        if isinstance(value, dict):
            paths = self.redact_paths(None if repeated else value.get("task_type"))
            if not paths or (not repeated and "payload" not in value):
                return text
            try:
                redacted = _redact_record(value, paths)
                out = json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
                try:
                    out.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate escape, decoded
                    out = json.dumps(redacted, separators=(",", ":"))
                return out
            except (ValueError, RecursionError):  # nested too deep to copy or write
                pass
        if unparsed <= 0:
            return None
        if len(text) <= unparsed:
            return text
        return f"{text[:unparsed]}…[{len(text) - unparsed} more characters]"

    def redact_reason(self, reason: str) -> str:
        """``reason`` cut where it names a spot inside a redacted field (keys of a redacted
        value would otherwise appear in it, as in ``payload.customer.email.<key>: nested
        too deeply``); unchanged otherwise. Every task type's paths apply: the reason does
        not say which task type it is about."""
        paths = self.redact_paths(None)
        if not paths:
            return reason
        index = r"(?:\[\d+\])*"
        inside = "|".join(
            f"{index}\\.".join(re.escape(part) for part in path.split(".")) for path in paths
        )
        found = re.search(f"(?:{inside}){index}(?=[.\\[])", reason)
        if found is None:
            return reason
        return f"{reason[: found.end()]}…: (withheld: inside a redacted field)"


# -- loading ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; keep only one", key_node.start_mark
            )
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises :class:`PolicyError` with every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(source, [FieldError("", f"cannot read file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(source, [FieldError("", "file is not UTF-8 text")]) from exc
    return parse_policy(text, source=source)


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [FieldError("", f"invalid YAML: {where}{problem}")]) from exc
    p = _Parser(source)
    policy = p.policy(raw)
    if p.problems:
        raise PolicyError(source, p.problems)
    return replace(policy, text=text)


class _Parser(CompareParser):
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[FieldError] = []
        self._prices: dict[str, Price] = {}  # the top-level prices, parsed first

    # -- sections --------------------------------------------------------------------------

    def policy(self, raw: object) -> Policy:
        top = self.mapping(raw, "", {"defaults", "task_types", "tools", "mirror", "prices"})
        prices = self.prices(top.get("prices"), "prices")
        if raw is None or not top.get("task_types"):
            self.fail("task_types", "required; add at least one task type under task_types")
        defaults = self.mapping(top.get("defaults"), "defaults", {"unknown_task_types", "policy"})
        unknown = defaults.get("unknown_task_types", "reject")
        if unknown not in ("reject", "default"):
            self.fail(
                "defaults.unknown_task_types",
                f"unknown value {unknown!r}; use reject or default",
            )
            unknown = "reject"
        default: TaskPolicy | None = None
        if unknown == "default":
            default = self.task("*", defaults.get("policy"), "defaults.policy")
        elif "policy" in defaults:
            self.fail("defaults.policy", "only used with unknown_task_types: default; remove it")
        tasks: dict[str, TaskPolicy] = {}
        raw_tasks = top.get("task_types")
        if raw_tasks is not None and not isinstance(raw_tasks, dict):
            self.fail("task_types", "expected a mapping of task type name to its policy")
        elif raw_tasks:
            for name, body in raw_tasks.items():
                if not isinstance(name, str):
                    self.fail(f"task_types.{name}", "task type names must be strings")
                    continue
                tasks[name] = self.task(name, body, f"task_types.{name}")
        mirror = parse_rules(
            top.get("mirror"), self.fail, task_types=set(tasks), any_task_type=default is not None
        )
        upstreams = parse_upstreams(top.get("tools"), self.fail)
        if not upstreams and "tools" not in top:
            # Tool rules list tools from upstream servers: with none defined, nothing the
            # rules allow could ever be listed or called.
            for tpath, t in [("defaults.policy", default), *tasks.items()]:
                if t is not None and t.tools is not None:
                    where = tpath if tpath == "defaults.policy" else f"task_types.{tpath}"
                    self.fail(
                        f"{where}.tools",
                        "no upstream MCP servers are defined; add them under the top-level tools",
                    )
        return Policy(
            source=self.source,
            task_types=tasks,
            unknown_task_types=unknown,
            default=default,
            hash=content_hash(raw if isinstance(raw, dict) else {}),
            upstreams=upstreams,
            mirror=mirror,
            prices=prices,
        )

    def prices(self, raw: object, path: str) -> dict[str, Price]:
        """``prices: {MODEL: {input_usd_per_mtok: X, output_usd_per_mtok: Y}}``."""
        out: dict[str, Price] = {}
        if raw is None:
            return out
        if not isinstance(raw, dict):
            self.fail(path, "expected a mapping of model name to its price per million tokens")
            return out
        for name, body in raw.items():
            where = f"{path}.{name}"
            if not isinstance(name, str) or text_problem(name, ident=True) is not None:
                self.fail(where, "model names must be text without control characters")
                continue
            keys = {"input_usd_per_mtok", "output_usd_per_mtok"}
            m = self.mapping(body, where, keys)
            if not isinstance(body, dict):
                continue
            for key in sorted(keys - set(m)):
                self.fail(f"{where}.{key}", "required; USD per million tokens, e.g. 3.0")
            out[name] = Price(
                self.number(m, "input_usd_per_mtok", where, 0.0, 0.0, MAX_PRICE_USD),
                self.number(m, "output_usd_per_mtok", where, 0.0, 0.0, MAX_PRICE_USD),
            )
        self._prices = out
        return out

    def task(self, name: str, body: object, path: str) -> TaskPolicy:
        m = self.mapping(
            body,
            path,
            {
                "sample_rate",
                "redact",
                "compare",
                "autonomy",
                "tools",
                "review",
                "segments",
                "min_outcome_coverage",
                "repeat_rate",
                "repeats",
                "model",
                "cost_ceiling_usd",
                "human_cost_usd_per_decision",
            },
        )
        sample_rate = self.number(m, "sample_rate", path, 1.0, 0.0, 1.0)
        redact_raw = m.get("redact", [])
        redact: list[str] = []
        if not isinstance(redact_raw, list):
            self.fail(
                f"{path}.redact", "expected a list of dotted paths like payload.customer.email"
            )
        else:
            for i, item in enumerate(redact_raw):
                if not isinstance(item, str) or not item.startswith("payload.") or ".." in item:
                    self.fail(
                        f"{path}.redact[{i}]",
                        f"{item!r} is not a dotted path under payload, e.g. payload.customer.email",
                    )
                else:
                    redact.append(item)
        compare = self.compare(m.get("compare"), f"{path}.compare")
        autonomy = self.autonomy(m.get("autonomy"), f"{path}.autonomy")
        digest = content_hash({"name": name, "body": body if isinstance(body, dict) else {}})
        rules = m.get("compare")
        compare_digest = content_hash(rules if isinstance(rules, dict) else {})
        tools = parse_task_tools(m.get("tools"), f"{path}.tools", self.fail)
        review = parse_review(m.get("review"), f"{path}.review", self.fail)
        coverage = (
            self.number(m, "min_outcome_coverage", path, 0.0, 0.0, 1.0)
            if "min_outcome_coverage" in m
            else None
        )
        segments = self.segments(m.get("segments", []), f"{path}.segments")
        repeat_rate = self.number(m, "repeat_rate", path, 0.0, 0.0, 1.0)
        repeats = self.count(m, "repeats", path, 1)
        if repeats is not None and not 1 <= repeats <= MAX_REPEATS:
            self.fail(f"{path}.repeats", f"expected 1 to {MAX_REPEATS} extra tries, got {repeats}")
            repeats = 1
        model, ceiling, human = self.costs(m, path, autonomy)
        if not segments:
            for level, gate in autonomy.gates.items():
                if gate.per_segment is not None:
                    self.fail(
                        f"{path}.autonomy.gates.{level}.per_segment",
                        "needs declared segments: add segments: [eu, us] to the task type",
                    )
        return TaskPolicy(
            name,
            sample_rate,
            tuple(redact),
            compare,
            autonomy,
            digest,
            compare_digest,
            tools,
            review,
            segments,
            min_outcome_coverage=coverage,
            repeat_rate=repeat_rate,
            repeats=repeats or 1,
            model=model,
            cost_ceiling_usd=ceiling,
            human_cost_usd_per_decision=human,
        )

    def costs(
        self, m: Mapping[str, Any], path: str, autonomy: AutonomyPolicy
    ) -> tuple[str | None, float | None, float | None]:
        """A task type's ``model`` (priced in the top-level ``prices``),
        ``cost_ceiling_usd`` (> 0, at least every gate's cost budget) and
        ``human_cost_usd_per_decision`` (>= 0)."""
        model = m.get("model")
        if model is not None and not isinstance(model, str):
            self.fail(f"{path}.model", f"expected a model name, got {model!r}")
            model = None
        elif model is not None and model not in self._prices:
            known = ", ".join(sorted(self._prices)) or "none"
            self.fail(
                f"{path}.model",
                f"{model!r} has no price; add it under the top-level prices (priced: {known})",
            )
        ceiling = (
            self.number(m, "cost_ceiling_usd", path, 0.0, 0.0, MAX_PRICE_USD, open_low=True)
            if "cost_ceiling_usd" in m
            else None
        )
        if ceiling is not None:
            for level, gate in sorted(autonomy.gates.items()):
                budget = gate.max_cost_usd_per_decision
                if budget is not None and budget > ceiling:
                    self.fail(
                        f"{path}.cost_ceiling_usd",
                        f"{ceiling} is below {level}'s max_cost_usd_per_decision {budget}; "
                        "the ceiling bounds what one decision may cost",
                    )
        human = (
            self.number(m, "human_cost_usd_per_decision", path, 0.0, 0.0, MAX_PRICE_USD)
            if "human_cost_usd_per_decision" in m
            else None
        )
        return model, ceiling, human

    def autonomy(self, raw: object, path: str) -> AutonomyPolicy:
        m = self.mapping(
            raw,
            path,
            {
                "start",
                "ceiling",
                "mode",
                "alpha",
                "gates",
                "audit_rate",
                "drift",
                "two_person",
                "budgets",
            },
        )
        start = self.level(m.get("start"), f"{path}.start", Level.L0)
        mode_raw = m.get("mode", "propose")
        try:
            mode = AutonomyMode(mode_raw)
        except ValueError:
            self.fail(f"{path}.mode", f"unknown mode {mode_raw!r}; use auto or propose")
            mode = AutonomyMode.PROPOSE
        alpha = self.number(m, "alpha", path, 0.05, 0.0, 1.0, open_low=True, open_high=True)
        audit_rate, audit_rates = self.audit_rates(m, path)
        gates = self.gates(m.get("gates"), f"{path}.gates")
        highest = max(gates, default=Level.L0)
        ceiling = self.level(m.get("ceiling"), f"{path}.ceiling", max(highest, start))
        if ceiling < start:
            self.fail(
                f"{path}.ceiling",
                f"ceiling {ceiling} is below start {start}; raise the ceiling or lower the start",
            )
        for level in Level:
            if start < level <= ceiling and level not in gates:
                self.fail(
                    f"{path}.gates",
                    f"no gate for {level}, which is under the ceiling {ceiling}; "
                    f"add gates.{level} or lower the ceiling",
                )
        drift = self.mapping(m.get("drift", {}), f"{path}.drift", {"margin", "threshold"})
        margin = self.number(
            drift,
            "margin",
            f"{path}.drift",
            DEFAULT_MARGIN,
            0.0,
            1.0,
            open_low=True,
            open_high=True,
        )
        threshold = self.number(
            drift, "threshold", f"{path}.drift", DEFAULT_THRESHOLD, 0.0, 100.0, open_low=True
        )
        two_person = self.levels_list(m.get("two_person", []), f"{path}.two_person")
        budget_mode = m.get("budgets", "demote")
        if budget_mode not in ("demote", "alert"):
            self.fail(f"{path}.budgets", f"unknown value {budget_mode!r}; use demote or alert")
            budget_mode = "demote"
        return AutonomyPolicy(
            start,
            ceiling,
            mode,
            alpha,
            gates,
            audit_rate,
            margin,
            threshold,
            audit_rates,
            two_person,
            budget_mode,
        )

    def segments(self, raw: object, path: str) -> tuple[str, ...]:
        """``segments: [eu, us]``: names (1-64 letters, digits, ``_``, ``-``, ``.``), no
        duplicates, at most :data:`MAX_SEGMENTS`, never ``other`` (the rest's label)."""
        if not isinstance(raw, list):
            self.fail(path, "expected a list of segment names, e.g. [eu, us]")
            return ()
        if len(raw) > MAX_SEGMENTS:
            self.fail(path, f"{len(raw)} segments; at most {MAX_SEGMENTS} (each is a label)")
            return ()
        found: list[str] = []
        for i, name in enumerate(raw):
            if not isinstance(name, str) or not _SEGMENT.match(name):
                self.fail(
                    f"{path}[{i}]", f"{name!r} is not a segment name: 1-64 of A-Z a-z 0-9 _ - ."
                )
            elif name == OTHER_SEGMENT:
                self.fail(f"{path}[{i}]", "other is the label of every undeclared segment")
            elif name in found:
                self.fail(f"{path}[{i}]", f"{name!r} is listed twice")
            else:
                found.append(name)
        return tuple(found)

    def levels_list(self, raw: object, path: str) -> frozenset[Level]:
        """A list of levels above L0 (``[L3, L4]``)."""
        if not isinstance(raw, list):
            self.fail(path, "expected a list of levels, e.g. [L3, L4]")
            return frozenset()
        found: set[Level] = set()
        for i, name in enumerate(raw):
            try:
                level = Level.parse(name)
            except (ValueError, TypeError) as exc:
                self.fail(f"{path}[{i}]", str(exc))
                continue
            if level is Level.L0:
                self.fail(f"{path}[{i}]", "L0 needs no approval; list levels from L1 up")
                continue
            found.add(level)
        return frozenset(found)

    def audit_rates(self, m: Mapping[str, Any], path: str) -> tuple[float, dict[Level, float]]:
        """``audit_rate``: one share for L1-L4, or a mapping of level (and ``default``) to
        share, e.g. ``{default: 0.05, L1: 0.2}``."""
        raw = m.get("audit_rate", 0.05)
        if not isinstance(raw, dict):
            return self.number(m, "audit_rate", path, 0.05, 0.0, 1.0), {}
        where = f"{path}.audit_rate"
        levels = {"L1", "L2", "L3", "L4"}
        body = self.mapping(raw, where, levels | {"default"})
        default = self.number(body, "default", where, 0.05, 0.0, 1.0)
        return default, {
            Level.parse(name): self.number(body, name, where, default, 0.0, 1.0)
            for name in sorted(levels & set(body))
        }

    def gates(self, raw: object, path: str) -> dict[Level, Gate]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(path, "expected a mapping of level (L1..L4) to gate")
            return {}
        gates: dict[Level, Gate] = {}
        for name, body in raw.items():
            gpath = f"{path}.{name}"
            try:
                level = Level.parse(name)
            except ValueError as exc:
                self.fail(gpath, str(exc))
                continue
            if level is Level.L0:
                self.fail(gpath, "L0 is where every task type starts; gates begin at L1")
                continue
            g = self.mapping(
                body,
                gpath,
                {
                    "agreement",
                    "min_samples",
                    "max_critical",
                    "critical_window",
                    "evidence",
                    "per_segment",
                    *BUDGET_KEYS,
                },
            )
            if "agreement" not in g:
                self.fail(f"{gpath}.agreement", "required; e.g. agreement: 0.95")
            below_human = self.below_human(g.get("agreement"), f"{gpath}.agreement")
            agreement = (
                1.0 - below_human
                if below_human is not None
                else self.number(g, "agreement", gpath, 1.0, 0.0, 1.0, open_low=True)
            )
            min_samples = self.count(g, "min_samples", gpath, 0)
            max_critical = self.count(g, "max_critical", gpath, None)
            window = self.count(g, "critical_window", gpath, None)
            evidence = g.get("evidence", "agreement")
            if evidence not in ("agreement", "adjudicated"):
                self.fail(
                    f"{gpath}.evidence",
                    f"unknown evidence {evidence!r}; use agreement or adjudicated",
                )
                evidence = "agreement"
            per_segment = g.get("per_segment")
            if per_segment is not None and per_segment not in ("each", "route"):
                self.fail(
                    f"{gpath}.per_segment",
                    f"unknown value {per_segment!r}; use each or route",
                )
                per_segment = None
            budgets = {
                key: self.number(g, key, gpath, 0.0, 0.0, high, open_low=True)
                for key, high in BUDGET_KEYS.items()
                if key in g
            }
            gates[level] = Gate(
                level,
                agreement,
                min_samples or 0,
                max_critical,
                window,
                evidence=evidence,
                per_segment=per_segment,
                below_human=below_human,
                **budgets,
            )
        ordered = sorted(gates.values(), key=lambda x: x.level)
        for lower, upper in itertools.pairwise(ordered):
            if upper.agreement < lower.agreement:
                self.fail(
                    f"{path}.{upper.level}.agreement",
                    f"{upper.agreement} is below {lower.level}'s {lower.agreement}; "
                    "gates must not get easier as the level rises",
                )
            if upper.min_samples < lower.min_samples:
                self.fail(
                    f"{path}.{upper.level}.min_samples",
                    f"{upper.min_samples} is below {lower.level}'s {lower.min_samples}; "
                    "gates must not get easier as the level rises",
                )
        return gates

    def below_human(self, raw: object, path: str) -> float | None:
        """``agreement: {below_human: 0.02}``: the margin below the human ceiling, in
        [0, 1); ``None`` when ``agreement`` is not a mapping (a number, checked elsewhere)."""
        if not isinstance(raw, dict):
            return None
        m = self.mapping(raw, path, {"below_human"})
        if "below_human" not in m:
            self.fail(f"{path}.below_human", "required in a mapping; e.g. below_human: 0.02")
        return self.number(m, "below_human", path, 0.0, 0.0, 1.0, open_high=True)

    def count(self, m: Mapping[str, Any], key: str, path: str, default: int | None) -> int | None:
        if key not in m:
            return default
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(f"{path}.{key}", f"expected a whole number >= 0, got {value!r}")
            return default
        return value
