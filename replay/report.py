"""The replay report: per task type tallies, and the JSON document built from them.

:class:`TaskStats` takes one scored case at a time (:meth:`TaskStats.add`) and keeps only
bounded state besides one latency float per answer, one compact result per blind case
(:class:`~replay.cases.CaseLog`: event_id, result code, segment; what a later run pairs
with) and one cost per answer (:class:`~replay.cases.CostLog`): counts, per-field
tallies, a capped confusion matrix per categorical field and the first ``examples``
critical misses and agent errors *by event_id* (so the examples do not
depend on the order answers arrived).

The JSON document (schema ``shadow-replay-report/1``, documented in docs/replay.md) is a
plain dict; every per-task-type entry carries the ``GET /v1/agreement`` names ``n``,
``agree``, ``agreement``, ``lower``, ``upper``, ``critical``, ``errors`` with the same
meaning and rounding (``n`` counts agree, disagree and agent_error; the bounds are the
anytime-valid ones of :mod:`shadow.stats` at the task type's ``alpha``). Everything that
depends on timing (``latency_ms``, ``run``) is kept apart from the counts, so two runs over
the same history and answers differ only there.

Evidence and acceptance follow the live rule: only a comparison whose item was handled
``blind`` (:attr:`shadow.model.Comparison.evidence`) is evidence, and the evidence is what
``n``, ``agree``, the bounds, ``critical``, ``errors``, ``fields``, ``confusion``, the
examples and the gates count. The comparisons of items the agent handled or a human decided
with its proposal shown are ``acceptance``, with ``GET /v1/agreement``'s shape (``agent``
and ``assisted``, each ``{n, agree, agreement}``). ``agent_versions``, ``usage`` and
``latency_ms`` describe the agent's answers, so they cover every compared case, and so do
the budget gates (:mod:`replay.budgets`) and ``case_costs``.

The noise floor (:mod:`replay.noise`, the live rules and bounds): ``human_ceiling`` and
``noisy_fields`` from the cases' second opinions, ``self_consistency`` and ``stable`` from
the repeated tries (:meth:`TaskStats.add_repeat`), which are never tallied anywhere else:
not in ``n``, the latencies, the usage or the costs.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from replay.cases import AGREE, CRITICAL, DISAGREE, ERROR, CaseLog, CostLog
from replay.gate import gate_entry
from replay.model import Case, most_common_version
from replay.noise import NoiseTally
from shadow.budgets import price
from shadow.diff import Differ, normalize_text
from shadow.model import Comparison, Evidence, Handling, ShadowDecision, Verdict
from shadow.policy import MatchKind, Price, TaskPolicy
from shadow.promotion import agreement_fields, snapshot
from shadow.stats import lower_bound, upper_bound

__all__ = ["ACCEPTANCE", "SCHEMA", "TaskStats", "acceptance_entry", "percentiles", "totals_entry"]

SCHEMA = "shadow-replay-report/1"
CONFUSION_LABELS = 12  # shown per matrix; rarer labels are folded into "(other)"
_TRACK_LABELS = 50  # a field with more distinct values is not categorical: no matrix
_MISSING = object()
OTHER = "(other)"
# The handlings whose comparisons are acceptance, not evidence (``GET /v1/agreement``'s keys).
ACCEPTANCE = (Handling.AGENT, Handling.ASSISTED)


def acceptance_entry(
    n: Mapping[Handling, int], agree: Mapping[Handling, int]
) -> dict[str, dict[str, Any]]:
    """``{"agent": {n, agree, agreement}, "assisted": {...}}``, exactly as the agreement
    document (:func:`shadow.autonomy.agreement_document`) writes its ``acceptance``."""
    return {
        h.value: {
            "n": n.get(h, 0),
            "agree": agree.get(h, 0),
            "agreement": agree.get(h, 0) / n[h] if n.get(h) else None,
        }
        for h in ACCEPTANCE
    }


def _resolve(obj: Any, parts: tuple[str, ...]) -> Any:
    for p in parts:
        if not isinstance(obj, Mapping) or p not in obj:
            return _MISSING
        obj = obj[p]
    return obj


def _label(value: Any, text: bool) -> str | None:
    """A categorical label, or ``None`` when ``value`` is not categorical."""
    if value is _MISSING:
        return "(missing)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return normalize_text(value) if text else value
    return None


def _classes(classes: tuple[tuple[Any, ...], ...], text: bool) -> dict[str, str]:
    """Label -> the label of its equivalence class (its members' labels joined by " / ")."""
    out: dict[str, str] = {}
    for members in classes:
        labels = [lab for m in members if (lab := _label(m, text)) is not None]
        name = " / ".join(dict.fromkeys(labels))
        for lab in labels:
            out.setdefault(lab, name)
    return out


def percentiles(values: array[float] | list[float]) -> dict[str, Any]:
    """Nearest-rank p50/p90/p95/p99 and max, in ms rounded to 0.001."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return round(ordered[max(math.ceil(p / 100.0 * n) - 1, 0)], 3)

    return {
        "count": n,
        "p50": rank(50),
        "p90": rank(90),
        "p95": rank(95),
        "p99": rank(99),
        "max": round(ordered[-1], 3),
    }


class TaskStats:
    """Tallies for one task type; ``entry()`` is its JSON report entry."""

    def __init__(
        self,
        name: str,
        task: TaskPolicy,
        *,
        examples: int = 5,
        prices: Mapping[str, Price] | None = None,
        repeats: bool = True,
    ) -> None:
        self.name = name
        self.task = task
        # The policy's price table: an answer with tokens but no cost is priced as the live
        # sidecar prices it (shadow.budgets.price), so replay and live agree on its cost.
        self.prices: Mapping[str, Price] = prices if prices is not None else {}
        self.examples = examples
        self.n = self.agree = self.disagree = self.critical = self.errors = 0
        # Comparisons that are not evidence (agent-handled, assisted), by handling.
        self.accepted_n: Counter[Handling] = Counter()
        self.accepted_agree: Counter[Handling] = Counter()
        self.compared: Counter[str] = Counter()
        self.mismatched: Counter[str] = Counter()
        self.critical_fields: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.latencies: array[float] = array("d")
        self.input_tokens = self.output_tokens = 0
        # Costs summed exactly (math.fsum) at the end: the total does not depend on the
        # order answers were tallied in, so merged shards give the very same figure.
        self.costs: array[float] = array("d")
        self._categorical = [
            (path, tuple(path.split(".")), rule.match is MatchKind.TEXT)
            for path, rule in task.compare.fields.items()
            if rule.match in (MatchKind.EXACT, MatchKind.TEXT)
        ]
        # Values the policy treats as equivalent (``equivalent: [[billing, payments]]``)
        # are one label, "billing / payments", so agreeing answers sit on the diagonal.
        self._canonical: dict[str, dict[str, str]] = {
            path: _classes(task.compare.fields[path].equivalent, text)
            for path, _, text in self._categorical
        }
        self.confusion: dict[str, Counter[tuple[str, str]]] = {
            p: Counter() for p, *_ in self._categorical
        }
        self._labels: dict[str, set[str]] = {p: set() for p, *_ in self._categorical}
        self.not_categorical: set[str] = set()
        self.critical_examples: list[tuple[str, dict[str, Any]]] = []
        self.error_examples: list[tuple[str, dict[str, Any]]] = []
        # Each blind case's result and segment: what a later run pairs with (replay.gate).
        self.cases = CaseLog()
        # Every answer's cost and whether it failed (evidence and acceptance alike): what the
        # budget gates judge (replay.budgets) and the cost regression pairs on.
        self.case_costs = CostLog()
        self.answer_errors = 0
        # The noise floor (replay.noise): second opinions and repeated tries, never evidence.
        self.noise = NoiseTally()
        self.repeats = repeats  # whether this run repeats the policy's repeat_rate cases
        self._differ: Differ | None = None

    @property
    def compared_cases(self) -> int:
        """Every case compared: the evidence and the acceptance."""
        return self.n + sum(self.accepted_n.values())

    def add(self, case: Case, payload: Mapping[str, Any], d: ShadowDecision, c: Comparison) -> None:
        self.versions[d.agent_version] += 1
        if d.latency_ms is not None:
            self.latencies.append(d.latency_ms)
        usage = price(d.usage, self.task.model, self.prices)
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        if usage.cost_usd:
            self.costs.append(usage.cost_usd)
        # A cost the agent did not report and nothing priced is unknown (NaN), never 0.
        unknown = usage.cost_source == "unknown"
        self.case_costs.add(case.event_id, math.nan if unknown else usage.cost_usd)
        if c.verdict is Verdict.AGENT_ERROR:
            self.answer_errors += 1
        if case.second is not None:
            self.noise.add_pair(self.task, self.differ, case.event_id, c, case.outcome, case.second)
        if not c.evidence:
            # The outcome echoes the agent (or a human anchored by its proposal): counted
            # beside the evidence, as the live acceptance view does, never in it.
            self.accepted_n[c.handled_by] += 1
            if c.verdict is Verdict.AGREE:
                self.accepted_agree[c.handled_by] += 1
            return
        self.n += 1
        segment = case.event.segment
        if c.verdict is Verdict.AGENT_ERROR:
            self.errors += 1
            self.cases.add(case.event_id, ERROR, segment)
            self._example(self.error_examples, case, {"error": d.error})
            return
        if c.verdict is Verdict.AGREE:
            self.agree += 1
            code = AGREE
        else:
            self.disagree += 1
            code = CRITICAL if c.critical_miss else DISAGREE
        self.cases.add(case.event_id, code, segment)
        for f in c.fields:
            self.compared[f.path] += 1
            if not f.matched:
                self.mismatched[f.path] += 1
                if f.critical:
                    self.critical_fields[f.path] += 1
        if c.critical_miss:
            self.critical += 1
            self._example(
                self.critical_examples,
                case,
                {
                    "mismatches": [
                        {"path": f.path, "critical": f.critical, "reason": f.reason}
                        for f in c.mismatches
                    ],
                    "agent": d.decision,
                    "human": case.outcome.decision,
                    "payload": dict(payload),
                },
            )
        self._confuse(case.outcome.decision, d.decision or {})

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a shard's tallies) without the compiled compare rules (made again)."""
        return {**self.__dict__, "_differ": None}

    @property
    def differ(self) -> Differ:
        """The task type's compare rules (the live sidecar's :class:`shadow.diff.Differ`)."""
        if self._differ is None:
            self._differ = Differ(self.task.compare)
        return self._differ

    def add_repeat(self, first: ShadowDecision, tries: Sequence[ShadowDecision]) -> None:
        """A repeated case's tries (1, 2, ...), judged against its first answer ``first``
        (:mod:`replay.noise`); never counted in the evidence."""
        self.noise.add_repeat(self.task, self.differ, self.name, first, tries)

    def _confuse(self, human: Mapping[str, Any], agent: Mapping[str, Any]) -> None:
        for path, parts, text in self._categorical:
            if path in self.not_categorical:
                continue
            h = _label(_resolve(human, parts), text)
            a = _label(_resolve(agent, parts), text)
            if h is None or a is None:
                continue
            canonical = self._canonical[path]
            if canonical:
                h, a = canonical.get(h, h), canonical.get(a, a)
            labels = self._labels[path]
            labels.add(h)
            labels.add(a)
            if len(labels) > _TRACK_LABELS:
                self.not_categorical.add(path)
                del self.confusion[path]
                continue
            self.confusion[path][(h, a)] += 1

    def _example(
        self, into: list[tuple[str, dict[str, Any]]], case: Case, body: dict[str, Any]
    ) -> None:
        key = case.event_id
        if len(into) >= self.examples and key >= into[-1][0]:
            return
        traced = {"trace_id": case.trace_id} if case.trace_id is not None else {}
        bisect.insort(into, (key, {"event_id": key, **traced, **body}), key=lambda kv: kv[0])
        del into[self.examples :]

    @property
    def cost_usd(self) -> float:
        return math.fsum(self.costs)

    def merge(self, other: TaskStats) -> None:
        """Add another tally of the same task type over *other* cases (a shard): the result
        is what one tally over all the cases would hold."""
        if other.name != self.name:
            raise ValueError(f"cannot merge {other.name} into {self.name}")
        self.n += other.n
        self.agree += other.agree
        self.disagree += other.disagree
        self.critical += other.critical
        self.errors += other.errors
        self.accepted_n.update(other.accepted_n)
        self.accepted_agree.update(other.accepted_agree)
        for mine, theirs in (
            (self.compared, other.compared),
            (self.mismatched, other.mismatched),
            (self.critical_fields, other.critical_fields),
            (self.versions, other.versions),
        ):
            mine.update(theirs)
        self.latencies.extend(other.latencies)
        self.costs.extend(other.costs)
        self.cases.merge(other.cases)
        self.case_costs.merge(other.case_costs)
        self.answer_errors += other.answer_errors
        self.noise.merge(other.noise)
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        for path, _, _ in self._categorical:
            labels = self._labels[path] | other._labels[path]
            self._labels[path] = labels
            if (
                path in self.not_categorical
                or path in other.not_categorical
                or len(labels) > _TRACK_LABELS
            ):
                self.not_categorical.add(path)
                self.confusion.pop(path, None)
            else:
                self.confusion[path].update(other.confusion[path])
        for into, extra in (
            (self.critical_examples, other.critical_examples),
            (self.error_examples, other.error_examples),
        ):
            into.extend(extra)
            into.sort(key=lambda kv: kv[0])
            del into[self.examples :]

    @property
    def agent_version(self) -> str | None:
        return most_common_version(self.versions)

    def entry(self) -> dict[str, Any]:
        version = self.agent_version
        ev = Evidence(self.name, version or "", self.n, self.agree, self.critical, self.errors)
        snap = snapshot(ev, self.task, version)
        fields = {
            path: {
                "compared": count,
                "mismatches": self.mismatched[path],
                "rate": round(self.mismatched[path] / count, 4),
                "critical": self.critical_fields[path],
            }
            for path, count in sorted(
                self.compared.items(), key=lambda kv: (-self.mismatched[kv[0]], kv[0])
            )
        }
        cases, case_segments, segments = self.cases.to_json()
        return {
            "agent_version": version,
            **agreement_fields(
                self.n, self.agree, snap.lower, snap.upper, self.critical, self.errors
            ),
            "disagree": self.disagree,
            "acceptance": acceptance_entry(self.accepted_n, self.accepted_agree),
            "agent_versions": dict(sorted(self.versions.items())),
            "fields": fields,
            "confusion": {p: self._matrix(p) for p in sorted(self.confusion) if self.confusion[p]},
            "critical_examples": [body for _, body in self.critical_examples],
            "error_examples": [body for _, body in self.error_examples],
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 6),
            },
            "gates": gate_entry(self.task, snap),
            "segments": {
                label: {
                    **figures,
                    "lower": round(lower_bound(figures["agree"], figures["n"], snap.alpha), 4),
                    "upper": round(upper_bound(figures["agree"], figures["n"], snap.alpha), 4),
                }
                for label, figures in segments.items()
            },
            **self.noise.entry(self.task, repeats=self.repeats),
            "latency_ms": percentiles(self.latencies),
            "cases": cases,
            "case_segments": case_segments,
            "case_costs": self.case_costs.to_json(),
        }

    def _matrix(self, path: str) -> dict[str, Any]:
        counts = self.confusion[path]
        freq: Counter[str] = Counter()
        for (h, a), k in counts.items():
            freq[h] += k
            freq[a] += k
        ranked = sorted(freq, key=lambda lab: (-freq[lab], lab))
        shown = ranked[:CONFUSION_LABELS]
        folded = len(ranked) > CONFUSION_LABELS
        labels = shown + ([OTHER] if folded else [])
        index = {lab: i for i, lab in enumerate(shown)}
        size = len(labels)
        matrix = [[0] * size for _ in range(size)]
        for (h, a), k in counts.items():
            matrix[index.get(h, size - 1)][index.get(a, size - 1)] += k
        return {"labels": labels, "rows": "human", "columns": "agent", "matrix": matrix}


def totals_entry(stats: Mapping[str, TaskStats], alpha: float) -> dict[str, Any]:
    n = sum(s.n for s in stats.values())
    agree = sum(s.agree for s in stats.values())
    accepted_n: Counter[Handling] = Counter()
    accepted_agree: Counter[Handling] = Counter()
    for s in stats.values():
        accepted_n.update(s.accepted_n)
        accepted_agree.update(s.accepted_agree)
    return {
        **agreement_fields(
            n,
            agree,
            lower_bound(agree, n, alpha),
            upper_bound(agree, n, alpha),
            sum(s.critical for s in stats.values()),
            sum(s.errors for s in stats.values()),
        ),
        "acceptance": acceptance_entry(accepted_n, accepted_agree),
    }
