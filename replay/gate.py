"""Gates and the regression gate. Pure: no I/O, no clock.

Gates
    :func:`gate_entry` says which rung of the policy's autonomy ladder a task type's replay
    evidence would clear, with the live promoter's own rule
    (:func:`shadow.promotion.gate_status`: ``n >= min_samples``, anytime-valid lower bound
    ``>= agreement``, critical misses within ``max_critical``), level by level from the
    policy's ``start`` up to its ``ceiling``. ``cleared`` is the highest level whose gate
    and every gate below it are met.
Regression gate (``--baseline``; ``--fail-if-worse`` exits 1 on it)
    :func:`compare_reports` runs three one-sided tests of "the candidate is worse" per task
    type in both reports (the statistics are :mod:`replay.significance`):

    agreement
        *Paired* when both reports carry per-case results (``cases``, event_id -> result
        code, :mod:`replay.cases`) and share cases: the mid-p McNemar test on the cases both
        scored (right = agree). Otherwise the *unpaired* pooled two-proportion z-test. The
        unpaired figures (``z``, ``p_worse``) are reported either way, and so are the cases
        only one side scored. Level ``alpha / m``, ``m`` = task types compared (Bonferroni).
    critical-miss rate
        The same test with right = no critical miss (an agent error is not one), at the
        same level ``alpha / m``.
    error rate
        The same test with right = no agent error (``errors / n``, the blind cases), at the
        same level ``alpha / m``.
    mean cost
        When both reports carry per-case costs (``case_costs``) and the task type has a
        cost range ``[0, M]`` (``cost_ceiling_usd``, or 10 x its largest cost budget; none:
        not compared): empirical-Bernstein (Maurer and Pontil) lower bound of the mean
        increase, paired on the cases both costed (differences in ``[-M, M]``), else the
        candidate's lower bound less the baseline's upper bound (each at half the level);
        worse when it is above 0, at level ``alpha / m``. Valid for every cost distribution
        in the range, not only asymptotically; a cost above ``M`` on either side: not
        compared (the candidate's fails its cost budget).
    segments
        Agreement within each segment of the events (their ``segment``) that has at least
        ``segment_min`` cases (paired: paired cases; unpaired: on each side), paired when
        the task type is, at level ``alpha / s``, ``s`` = (task type, segment) pairs tested
        (Bonferroni across segments).

    budgets
        The candidate's own budgets (:mod:`replay.budgets`, no baseline needed; the
        report's ``budgets`` block): each failure is added to ``regression.failures``.

    Each family keeps its chance of failing a run in which nothing got worse under
    ``alpha``. The replay is a fixed sample analysed once, so fixed-sample tests are valid
    here (the anytime-valid bounds are for the live promoter, which looks after every
    comparison). A side with no case, or rates of 0 or 1 on both sides, is not testable and
    never fails. Every failure is one ``regression.failures`` entry with its reason line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from replay.bounds import bernstein_width
from replay.cases import AGREE, CRITICAL, ERROR, cost_figures
from replay.significance import mcnemar_midp, two_proportion_z
from shadow.model import Level
from shadow.policy import TaskPolicy
from shadow.promotion import Snapshot, gate_status

__all__ = [
    "SEGMENT_MIN_CASES",
    "Paired",
    "compare_reports",
    "compare_task",
    "gate_entry",
    "pair",
    "two_proportion_z",
]

TEST_NAME = (
    "one-sided mid-p McNemar test on the cases both reports scored (paired), else pooled "
    "two-proportion z-test; agreement, critical-miss rate and error rate Bonferroni over task "
    "types, segments Bonferroni over segments; mean cost empirical Bernstein on costs in "
    "[0, M], Bonferroni over task types"
)
SEGMENT_MIN_CASES = 30  # a segment with fewer cases (on a side, or paired) is not tested
_FIRST = 5  # event ids shown of the cases only one side scored


def gate_entry(task: TaskPolicy, snap: Snapshot) -> dict[str, Any]:
    auto = task.autonomy
    levels: dict[str, Any] = {}
    cleared = auto.start
    blocked = False
    for level in Level:
        if level <= auto.start or level > auto.ceiling:
            continue
        gate = auto.gate_for(level)
        if gate is None:
            blocked = True
            continue
        status = gate_status(gate, snap)
        levels[str(level)] = {
            "agreement": gate.agreement,
            "min_samples": gate.min_samples,
            "max_critical": gate.max_critical,
            "met": status.met,
            "missing": status.missing,
        }
        if status.met and not blocked:
            cleared = level
        else:
            blocked = True
    return {
        "start": str(auto.start),
        "ceiling": str(auto.ceiling),
        "cleared": str(cleared),
        "alpha": auto.alpha,
        "levels": levels,
    }


def _agrees(code: str) -> bool:
    return code == AGREE


def _no_critical(code: str) -> bool:
    return code != CRITICAL


def _no_error(code: str) -> bool:
    return code != ERROR


@dataclass(frozen=True, slots=True)
class Paired:
    """The cases both reports scored: ``worse`` right in the baseline and wrong in the
    candidate (McNemar's ``b``), ``better`` the reverse (``c``)."""

    pairs: int
    worse: int
    better: int

    @property
    def p_worse(self) -> float:
        return mcnemar_midp(self.worse, self.better)

    @property
    def p_better(self) -> float:
        return mcnemar_midp(self.better, self.worse)

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "worse": self.worse,
            "better": self.better,
            "p_worse": self.p_worse,
            "p_better": self.p_better,
        }


def pair(
    cand: Mapping[str, str],
    base: Mapping[str, str],
    ids: Iterable[str],
    right: Callable[[str], bool] = _agrees,
) -> Paired:
    """Count the discordant pairs among ``ids`` (event ids both ``cases`` hold)."""
    pairs = worse = better = 0
    for event_id in ids:
        c, b = right(cand[event_id]), right(base[event_id])
        pairs += 1
        if b and not c:
            worse += 1
        elif c and not b:
            better += 1
    return Paired(pairs, worse, better)


def _cases(entry: Mapping[str, Any]) -> Mapping[str, str] | None:
    found = entry.get("cases")
    return found if isinstance(found, Mapping) else None


def _only(mine: Mapping[str, str], theirs: Mapping[str, str]) -> dict[str, Any]:
    ids = sorted(k for k in mine if k not in theirs)
    return {"n": len(ids), "first": ids[:_FIRST]}


def _level_text(alpha: float, m: int, level: float) -> str:
    return f"level {alpha:g}/{m} = {level:.4g}"


def _rate(entry: Mapping[str, Any], key: str) -> float | None:
    n = int(entry.get("n") or 0)
    value = entry.get(key)
    return int(value) / n if n and value is not None else None


def compare_task(
    cand: Mapping[str, Any], base: Mapping[str, Any], *, alpha: float, m: int
) -> dict[str, Any]:
    """Deltas, the agreement and critical-miss tests and their statements for one task type
    (see the module doc); the segments are :func:`compare_reports`' (they share a level)."""
    n_c, a_c = int(cand["n"]), int(cand["agree"])
    n_b, a_b = int(base["n"]), int(base["agree"])
    z, p_unpaired = two_proportion_z(a_c, n_c, a_b, n_b)
    level = alpha / max(m, 1)
    testable = n_c > 0 and n_b > 0
    cc, bc = _cases(cand), _cases(base)
    shared = [k for k in cc if k in bc] if cc is not None and bc is not None else []
    paired = pair(cc, bc, shared) if cc is not None and bc is not None and shared else None
    if paired is not None:
        p_worse, p_better = paired.p_worse, paired.p_better
    else:
        p_worse, p_better = p_unpaired, (1.0 - p_unpaired if testable else 0.5)
    worse = testable and p_worse < level
    better = testable and p_better < level
    ag_c = a_c / n_c if n_c else None
    ag_b = a_b / n_b if n_b else None
    delta = None if ag_c is None or ag_b is None else ag_c - ag_b
    only = (
        {"only_in_candidate": _only(cc, bc), "only_in_baseline": _only(bc, cc)}
        if cc is not None and bc is not None
        else None
    )
    if not testable:
        statement = "not compared: no comparisons on one side"
    else:
        assert delta is not None
        assert ag_c is not None
        assert ag_b is not None
        verdict = (
            "significantly worse"
            if worse
            else "significantly better"
            if better
            else "no significant difference"
        )
        head = f"agreement {ag_c:.4f} vs {ag_b:.4f} ({delta * 100:+.2f} pp): {verdict}"
        if paired is None:
            p_shown = p_worse if delta <= 0 else p_better
            statement = (
                f"{head} (z = {z:.2f}, one-sided p = {p_shown:.4g}, {_level_text(alpha, m, level)})"
            )
        else:
            p_shown = p_worse if paired.worse >= paired.better else p_better
            statement = (
                f"{head} (paired on {paired.pairs} cases: {paired.worse} right -> wrong, "
                f"{paired.better} wrong -> right, one-sided mid-p = {p_shown:.4g}, "
                f"{_level_text(alpha, m, level)}; unpaired z = {z:.2f}, "
                f"p = {p_unpaired:.4g}{_only_text(only)})"
            )

    def diff(key: str) -> float | None:
        c, b = _rate(cand, key), _rate(base, key)
        return None if c is None or b is None else round(c - b, 6)

    lat_c = (cand.get("latency_ms") or {}).get("p95")
    lat_b = (base.get("latency_ms") or {}).get("p95")
    cost_c = (cand.get("usage") or {}).get("cost_usd")
    cost_b = (base.get("usage") or {}).get("cost_usd")
    return {
        "n": n_b,
        "agree": a_b,
        "agreement": None if ag_b is None else round(ag_b, 4),
        "lower": base.get("lower"),
        "upper": base.get("upper"),
        "critical": base.get("critical"),
        "errors": base.get("errors"),
        "agent_version": base.get("agent_version"),
        "delta": {
            "agreement": None if delta is None else round(delta, 6),
            "critical_rate": diff("critical"),
            "error_rate": diff("errors"),
            "latency_p95_ms": None if lat_c is None or lat_b is None else round(lat_c - lat_b, 3),
            "cost_usd": None if cost_c is None or cost_b is None else round(cost_c - cost_b, 6),
        },
        "z": round(z, 4),
        "p_worse": p_unpaired,
        "test": "paired" if paired is not None else "unpaired",
        "paired": None if only is None else {**(paired or Paired(0, 0, 0)).to_json(), **only},
        "significantly_worse": worse,
        "significantly_better": better,
        "statement": statement,
        "critical_miss": _critical_test(cand, base, cc, bc, shared, alpha=alpha, m=m),
        "error_rate": _critical_test(cand, base, cc, bc, shared, alpha=alpha, m=m, what=_ERRORS),
        "cost": _cost_test(cand, base, alpha=alpha, m=m),
    }


def _only_text(only: Mapping[str, Any] | None) -> str:
    if not only or not (only["only_in_candidate"]["n"] or only["only_in_baseline"]["n"]):
        return ""
    return (
        f"; {only['only_in_candidate']['n']} cases scored by the candidate only, "
        f"{only['only_in_baseline']['n']} by the baseline only"
    )


@dataclass(frozen=True, slots=True)
class _Rate:
    """A bad outcome whose rate (``key`` / n) the regression gate tests: its report count,
    its name in the statements and the result codes that are *not* it."""

    key: str
    label: str  # "critical-miss"
    plural: str  # "critical misses"
    right: Callable[[str], bool]


_CRITICAL = _Rate("critical", "critical-miss", "critical misses", _no_critical)
_ERRORS = _Rate("errors", "error", "agent errors", _no_error)


def _critical_test(
    cand: Mapping[str, Any],
    base: Mapping[str, Any],
    cc: Mapping[str, str] | None,
    bc: Mapping[str, str] | None,
    shared: list[str],
    *,
    alpha: float,
    m: int,
    what: _Rate = _CRITICAL,
) -> dict[str, Any]:
    """One-sided: is the candidate's rate of ``what`` (critical misses, or agent errors:
    ``what.key`` / n) higher?"""
    level = alpha / max(m, 1)
    r_c, r_b = _rate(cand, what.key), _rate(base, what.key)
    out: dict[str, Any] = {
        "candidate_rate": None if r_c is None else round(r_c, 6),
        "baseline_rate": None if r_b is None else round(r_b, 6),
    }
    if r_c is None or r_b is None:
        return {
            **out,
            "test": None,
            "p_worse": 0.5,
            "significantly_worse": False,
            "statement": f"not compared: no comparisons (or no {what.key} count) on one side",
        }
    head = f"{what.label} rate {r_c:.4f} vs {r_b:.4f} ({(r_c - r_b) * 100:+.2f} pp)"
    if cc is not None and bc is not None and shared:
        p = pair(cc, bc, shared, what.right)
        worse = p.p_worse < level
        verdict = "significantly worse" if worse else "no significant increase"
        return {
            **out,
            "test": "paired",
            **p.to_json(),
            "significantly_worse": worse,
            "statement": (
                f"{head}: {verdict} (paired on {p.pairs} cases: {p.worse} {what.plural} "
                f"only in the candidate, {p.better} only in the baseline, one-sided mid-p = "
                f"{p.p_worse:.4g}, {_level_text(alpha, m, level)})"
            ),
        }
    n_c, n_b = int(cand["n"]), int(base["n"])
    k_c, k_b = int(cand[what.key]), int(base[what.key])
    # The z-test of the rates of cases *without* one: lower is worse.
    z_ok, p_worse = two_proportion_z(n_c - k_c, n_c, n_b - k_b, n_b)
    z = -z_ok  # as a z of the rates: positive when the candidate's is higher
    worse = p_worse < level
    verdict = "significantly worse" if worse else "no significant increase"
    return {
        **out,
        "test": "unpaired",
        "z": round(z, 4),
        "p_worse": p_worse,
        "significantly_worse": worse,
        "statement": (
            f"{head}: {verdict} (z = {z:.2f}, one-sided p = {p_worse:.4g}, "
            f"{_level_text(alpha, m, level)})"
        ),
    }


def _costs(entry: Mapping[str, Any]) -> Mapping[str, float | None] | None:
    found = entry.get("case_costs")
    return found if isinstance(found, Mapping) else None


def _cost_range(entry: Mapping[str, Any]) -> float | None:
    budgets = entry.get("budgets")
    value = budgets.get("cost_range_usd") if isinstance(budgets, Mapping) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _cost_test(
    cand: Mapping[str, Any], base: Mapping[str, Any], *, alpha: float, m: int
) -> dict[str, Any]:
    """One-sided: is the candidate's mean cost per answer higher? Empirical-Bernstein bounds
    (:mod:`replay.bounds`) on costs in ``[0, M]`` (``M`` the task type's cost range,
    :mod:`replay.budgets`): paired on the cases both reports costed (differences in
    ``[-M, M]``), else the candidate's lower bound against the baseline's upper bound, each
    at half the level. Worse when the lower bound of the increase is above 0."""
    level = alpha / max(m, 1)
    ceiling = _cost_range(cand)
    cc, bc = _costs(cand), _costs(base)
    out: dict[str, Any] = {"test": None, "range_usd": ceiling, "significantly_worse": False}
    if ceiling is None:
        return {
            **out,
            "statement": "not compared: no cost range (the policy states no cost budget "
            "and no cost_ceiling_usd)",
        }
    if cc is None or bc is None:
        return {**out, "statement": "not compared: no per-case costs on one side"}
    known_c = {k: v for k, v in cc.items() if v is not None}
    known_b = {k: v for k, v in bc.items() if v is not None}
    above = sum(v > ceiling for v in known_c.values()) + sum(v > ceiling for v in known_b.values())
    if above:
        return {
            **out,
            "statement": f"not compared: {above} costs above the range ${ceiling:.4f}",
        }
    shared = [k for k in known_c if k in known_b]
    if shared:
        diffs = [known_c[k] - known_b[k] for k in shared]
        fig = cost_figures(diffs)
        n = len(shared)
        mean_c = cost_figures([known_c[k] for k in shared])["mean"]
        mean_b = cost_figures([known_b[k] for k in shared])["mean"]
        increase = float(fig["mean"])
        lower = increase - bernstein_width(n, float(fig["variance"]), 2.0 * ceiling, level)
        how = f"paired on {n} cases"
        test = "paired"
    else:
        fc, fb = cost_figures(list(known_c.values())), cost_figures(list(known_b.values()))
        n_c, n_b = int(fc["n"]), int(fb["n"])
        if n_c < 2 or n_b < 2:
            return {**out, "statement": "not compared: fewer than 2 costed answers on one side"}
        mean_c, mean_b = fc["mean"], fb["mean"]
        increase = float(mean_c) - float(mean_b)
        lower = (
            increase
            - bernstein_width(n_c, float(fc["variance"]), ceiling, level / 2.0)
            - bernstein_width(n_b, float(fb["variance"]), ceiling, level / 2.0)
        )
        how = f"unpaired on {n_c} and {n_b} answers"
        test = "unpaired"
    worse = lower > 0.0
    verdict = "significantly higher" if worse else "no significant increase"
    rel = f" ({increase / float(mean_b) * 100:+.0f}%)" if mean_b else ""
    return {
        **out,
        "test": test,
        "candidate_mean": round(float(mean_c), 6),
        "baseline_mean": round(float(mean_b), 6),
        "increase": round(increase, 6),
        "lower": round(lower, 6),
        "significantly_worse": worse,
        "statement": (
            f"mean cost ${float(mean_c):.4f} vs ${float(mean_b):.4f} per answer{rel}: {verdict} "
            f"({how}: empirical-Bernstein lower bound of the increase ${lower:.4f}"
            f"{' > 0' if worse else ''}, costs in [0, ${ceiling:.4f}], "
            f"{_level_text(alpha, m, level)})"
        ),
    }


def _segment_tests(
    cand: Mapping[str, Any], base: Mapping[str, Any], *, min_cases: int
) -> dict[str, dict[str, Any]]:
    """Each segment's agreement test, without the verdict (the level depends on how many
    segments are tested over every task type)."""
    cc, bc = _cases(cand), _cases(base)
    members = cand.get("case_segments")
    out: dict[str, dict[str, Any]] = {}
    if cc is not None and bc is not None and any(k in bc for k in cc):
        if not isinstance(members, Mapping):
            return out
        for seg in sorted(members):
            ids = [k for k in members[seg] if k in bc and k in cc]
            p = pair(cc, bc, ids)
            ag_c = sum(cc[k] == AGREE for k in ids) / len(ids) if ids else None
            ag_b = sum(bc[k] == AGREE for k in ids) / len(ids) if ids else None
            out[seg] = {
                "test": "paired",
                "agreement": None if ag_c is None else round(ag_c, 4),
                "baseline_agreement": None if ag_b is None else round(ag_b, 4),
                **p.to_json(),
                "tested": p.pairs >= min_cases,
                "why_not": None if p.pairs >= min_cases else f"{p.pairs} paired cases",
            }
        return out
    cs, bs = cand.get("segments"), base.get("segments")
    if not isinstance(cs, Mapping) or not isinstance(bs, Mapping):
        return out
    for seg in sorted(cs.keys() | bs.keys()):
        c, b = cs.get(seg) or {}, bs.get(seg) or {}
        n_c, a_c = int(c.get("n") or 0), int(c.get("agree") or 0)
        n_b, a_b = int(b.get("n") or 0), int(b.get("agree") or 0)
        z, p_worse = two_proportion_z(a_c, n_c, a_b, n_b)
        tested = min(n_c, n_b) >= min_cases
        out[seg] = {
            "test": "unpaired",
            "agreement": round(a_c / n_c, 4) if n_c else None,
            "baseline_agreement": round(a_b / n_b, 4) if n_b else None,
            "n": n_c,
            "baseline_n": n_b,
            "z": round(z, 4),
            "p_worse": p_worse,
            "tested": tested,
            "why_not": None if tested else f"{n_c} and {n_b} cases",
        }
    return out


def _segment_verdict(entry: dict[str, Any], *, alpha: float, s: int, min_cases: int) -> None:
    ag_c, ag_b = entry["agreement"], entry["baseline_agreement"]
    if not entry["tested"]:
        entry["significantly_worse"] = False
        entry["statement"] = f"not tested: {entry.pop('why_not')}, fewer than {min_cases}"
        return
    entry.pop("why_not")
    level = alpha / s
    worse = entry["p_worse"] < level
    entry["significantly_worse"] = worse
    verdict = "significantly worse" if worse else "no significant drop"
    head = (
        f"agreement {ag_c:.4f} vs {ag_b:.4f} ({(ag_c - ag_b) * 100:+.2f} pp): {verdict}"
        if ag_c is not None and ag_b is not None
        else verdict
    )
    level_text = f"level {alpha:g}/{s} segments = {level:.4g}"
    if entry["test"] == "paired":
        entry["statement"] = (
            f"{head} (paired on {entry['pairs']} cases: {entry['worse']} right -> wrong, "
            f"{entry['better']} wrong -> right, one-sided mid-p = {entry['p_worse']:.4g}, "
            f"{level_text})"
        )
    else:
        entry["statement"] = (
            f"{head} (unpaired on {entry['n']} and {entry['baseline_n']} cases: z = "
            f"{entry['z']:.2f}, one-sided p = {entry['p_worse']:.4g}, {level_text})"
        )


def compare_reports(
    candidate: Mapping[str, Any],
    baseline: Mapping[str, Any],
    *,
    alpha: float,
    segment_min: int = SEGMENT_MIN_CASES,
) -> dict[str, Any]:
    """Fill each candidate task type's ``baseline`` entry; return the ``regression`` block
    with every failure and its reason (see the module doc)."""
    cand_tasks: Mapping[str, Any] = candidate["task_types"]
    base_tasks: Mapping[str, Any] = baseline["task_types"]
    shared = [t for t in cand_tasks if t in base_tasks]
    m = max(len(shared), 1)
    failures: list[dict[str, Any]] = []
    segments: dict[str, dict[str, dict[str, Any]]] = {}
    for name in shared:
        entry = compare_task(cand_tasks[name], base_tasks[name], alpha=alpha, m=m)
        cand_tasks[name]["baseline"] = entry
        if entry["significantly_worse"]:
            failures.append(_failure(name, "agreement", None, entry["statement"]))
        for gate in ("critical_miss", "error_rate", "cost"):
            if entry[gate]["significantly_worse"]:
                failures.append(_failure(name, gate, None, entry[gate]["statement"]))
        segments[name] = _segment_tests(cand_tasks[name], base_tasks[name], min_cases=segment_min)
    s = sum(e["tested"] for per in segments.values() for e in per.values())
    for name, per in segments.items():
        for seg, e in per.items():
            _segment_verdict(e, alpha=alpha, s=max(s, 1), min_cases=segment_min)
            if e["significantly_worse"]:
                failures.append(_failure(name, "segment", seg, e["statement"]))
        cand_tasks[name]["baseline"]["segments"] = per
    # The candidate's own budgets (replay.budgets): no baseline needed, judged on every task
    # type it replayed.
    budgets = candidate.get("budgets")
    if isinstance(budgets, Mapping):
        failures.extend(budgets.get("failures") or ())
    worse = [t for t in cand_tasks if any(f["task_type"] == t for f in failures)]
    return {
        "test": TEST_NAME,
        "alpha": alpha,
        "compared": shared,
        "paired": [t for t in shared if cand_tasks[t]["baseline"]["test"] == "paired"],
        "only_in_baseline": sorted(t for t in base_tasks if t not in cand_tasks),
        "only_in_candidate": sorted(t for t in cand_tasks if t not in base_tasks),
        "segments": {
            "min_cases": segment_min,
            "tested": s,
            "level": alpha / s if s else None,
        },
        "worse": worse,
        "failures": failures,
        "regression": bool(failures),
    }


def _failure(task_type: str, gate: str, segment: str | None, statement: str) -> dict[str, Any]:
    where = task_type if segment is None else f"{task_type} segment {segment}"
    return {
        "task_type": task_type,
        "gate": gate,
        "segment": segment,
        "reason": f"{where}: {statement}",
    }
