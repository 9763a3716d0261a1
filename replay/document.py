"""The JSON report document: building one from a run, reading one back as a baseline.

The schema (``shadow-replay-report/1``) is documented field by field in docs/replay.md;
additions are allowed, renames are not. Reading a baseline accepts any document with that
schema name whose task type entries carry integer ``n`` and ``agree`` (and, when present,
well-formed per-case results: ``cases``, ``case_segments``, ``segments``, ``case_costs``);
anything else is a :class:`~replay.errors.ReplayError` naming the file and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from replay.budgets import judge_budgets
from replay.cases import CODES
from replay.errors import ReplayError
from replay.model import Selection, most_common_version
from replay.report import SCHEMA, totals_entry
from replay.runner import ReplayResult, summary
from shadow.policy import Policy

__all__ = ["DETERMINISTIC_SKIP", "build_document", "deterministic_view", "load_report"]

# Keys that depend on timing or on the process, left out when two runs are compared.
DETERMINISTIC_SKIP = frozenset({"run", "latency_ms", "latency_p95_ms", "latency_ms_p95"})


def build_document(
    result: ReplayResult,
    *,
    policy: Policy,
    agent: Mapping[str, Any],
    history: str,
    selection: Selection,
    alpha: float,
    run: Mapping[str, Any],
) -> dict[str, Any]:
    tasks = {name: stats.entry() for name, stats in result.tasks.items()}
    budgets = judge_budgets(result.tasks, tasks, alpha=alpha)
    versions: dict[str, int] = {}
    for stats in result.tasks.values():
        for v, k in stats.versions.items():
            versions[v] = versions.get(v, 0) + k
    return {
        "schema": SCHEMA,
        "complete": result.complete,
        "agent": {
            **agent,
            "agent_version": most_common_version(versions),
            "versions": dict(sorted(versions.items())),
        },
        "policy": {"source": policy.source, "hash": policy.hash},
        "history": {"path": history, **summary(result), "selection": selection.to_json()},
        "alpha": alpha,
        "totals": totals_entry(result.tasks, alpha),
        "task_types": tasks,
        "budgets": budgets,
        "baseline": None,
        "regression": None,
        "run": dict(run),
    }


def deterministic_view(doc: Any) -> Any:
    """``doc`` without its timing-dependent keys (for comparing two runs)."""
    if isinstance(doc, Mapping):
        return {k: deterministic_view(v) for k, v in doc.items() if k not in DETERMINISTIC_SKIP}
    if isinstance(doc, list):
        return [deterministic_view(v) for v in doc]
    return doc


def load_report(path: str | Path) -> dict[str, Any]:
    """A previous report as a baseline, checked enough to compare against."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReplayError(f"cannot read baseline {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ReplayError(f"baseline {where} is not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ReplayError(f"baseline {where} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ReplayError(f"baseline {where}: schema: expected {SCHEMA!r}, got {got!r}")
    tasks = doc.get("task_types")
    if not isinstance(tasks, dict):
        raise ReplayError(f"baseline {where}: task_types: expected an object")
    for name, entry in tasks.items():
        for key in ("n", "agree"):
            value = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ReplayError(
                    f"baseline {where}: task_types.{name}.{key}: expected a whole number >= 0"
                )
        if entry["agree"] > entry["n"]:
            raise ReplayError(f"baseline {where}: task_types.{name}: agree exceeds n")
        problem = _per_case_problem(entry)
        if problem is not None:
            raise ReplayError(f"baseline {where}: task_types.{name}.{problem}")
    if doc.get("complete") is False:
        raise ReplayError(f"baseline {where} is a partial report (complete: false); re-run it")
    return doc


def _per_case_problem(entry: Mapping[str, Any]) -> str | None:
    """What is wrong with a baseline entry's per-case results (optional: reports written
    before them have none, and are compared unpaired), as ``field: problem``."""
    cases = entry.get("cases")
    if cases is not None:
        if not isinstance(cases, dict):
            return "cases: expected an object of event_id -> result code"
        for event_id, code in cases.items():
            if code not in CODES:
                return f"cases.{event_id}: expected one of {''.join(sorted(CODES))}, got {code!r}"
        if len(cases) != entry["n"]:
            return f"cases: {len(cases)} results for n = {entry['n']}"
    members = entry.get("case_segments")
    if members is not None and not (
        isinstance(members, dict)
        and all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            for ids in members.values()
        )
    ):
        return "case_segments: expected an object of segment -> [event_id, ...]"
    costs = entry.get("case_costs")
    if costs is not None:
        if not isinstance(costs, dict):
            return "case_costs: expected an object of event_id -> cost_usd"
        for event_id, cost in costs.items():
            if cost is not None and (
                isinstance(cost, bool)
                or not isinstance(cost, int | float)
                or not 0 <= cost < float("inf")
            ):
                return f"case_costs.{event_id}: expected a cost in USD >= 0 or null, got {cost!r}"
    segments = entry.get("segments")
    if segments is not None:
        if not isinstance(segments, dict):
            return "segments: expected an object of segment -> figures"
        for seg, figures in segments.items():
            for key in ("n", "agree"):
                value = figures.get(key) if isinstance(figures, dict) else None
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    return f"segments.{seg}.{key}: expected a whole number >= 0"
    return None
