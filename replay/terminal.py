"""The terminal side of ``shadow replay``: a rich progress bar (rate, ETA, cache hits and
agent calls) and the report as tables. Presentation only: everything shown comes from the
JSON document (:mod:`replay.document`) or the live :class:`~replay.cache.CallStats`."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from replay.cache import CallStats
from replay.noise import noise_line

__all__ = ["Progress", "print_report"]


class Progress:
    """``with Progress(console, total, stats) as bar: ... bar.advance(k)``. ``total`` is an
    upper bound (the time and sample rules are applied while reading); the bar ends full."""

    def __init__(
        self, console: Console, total: int, stats: CallStats, *, enabled: bool = True
    ) -> None:
        self.stats = stats
        self.total = total
        self._bar: RichProgress | None = None
        if enabled:
            self._bar = RichProgress(
                TextColumn("replay"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]} cases/s"),
                TextColumn("{task.fields[calls]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._bar.add_task("replay", total=total, rate="-", calls="")

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            task = self._bar.tasks[0]
            self._bar.update(self._task, total=task.completed)
            self._bar.stop()

    def advance(self, k: int) -> None:
        if self._bar is None:
            return
        task = self._bar.tasks[0]
        speed = task.speed
        self._bar.update(
            self._task,
            advance=k,
            rate=f"{speed:,.0f}" if speed else "-",
            calls=f"{self.stats.calls} calls, {self.stats.hits} cached",
        )


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _acceptance(acc: dict[str, Any] | None) -> str:
    """``agent 0.9800 of 50`` and ``assisted ...`` on lines of their own (``-``: none), from
    an ``acceptance`` entry."""
    if not acc:
        return "-"
    parts = [f"{h} {_f(a['agreement'])} of {a['n']}" for h, a in acc.items() if a and a.get("n")]
    return "\n".join(parts) or "-"


def _has_acceptance(tasks: dict[str, Any]) -> bool:
    return any(
        a.get("n") for t in tasks.values() for a in (t.get("acceptance") or {}).values() if a
    )


def print_report(console: Console, doc: dict[str, Any]) -> None:
    state = "" if doc["complete"] else " — PARTIAL (interrupted)"
    agent = doc["agent"]
    table = Table(
        title=f"Replay of {doc['history']['path']} by {_f(agent['agent_version'])}{state}"
    )
    cols = ("task type", "n", "agreement", "lower", "upper", "crit", "err", "gate", "p95 ms")
    for col in cols:
        table.add_column(col, justify="left" if col in ("task type", "gate") else "right")
    has_base = doc.get("regression") is not None
    if has_base:
        table.add_column("vs baseline")
    has_acc = _has_acceptance(doc["task_types"])
    if has_acc:
        table.add_column("acceptance (not evidence)")
    for name, t in doc["task_types"].items():
        row = [
            name,
            _f(t["n"]),
            _f(t["agreement"]),
            _f(t["lower"]),
            _f(t["upper"]),
            _f(t["critical"]),
            _f(t["errors"]),
            t["gates"]["cleared"],
            _f(t["latency_ms"]["p95"], 1),
        ]
        if has_base:
            b = t.get("baseline")
            if b is None:
                row.append("-")
            else:
                delta = b["delta"]["agreement"]
                mark = (
                    "[red]worse[/red]"
                    if b["significantly_worse"]
                    else "[green]better[/green]"
                    if b["significantly_better"]
                    else "same"
                )
                row.append(f"{_f(None if delta is None else delta * 100, 2)} pp {mark}")
        if has_acc:
            row.append(_acceptance(t.get("acceptance")))
        table.add_row(*row)
    console.print(table)
    if has_acc:
        console.print(
            "  n, agreement, bounds, gate and baseline test: blind outcomes only (evidence)"
        )
        console.print(
            "  acceptance: items the agent handled, or a human decided with its proposal shown"
        )
    for name, t in doc["task_types"].items():
        segments = t.get("segments") or {}
        if segments:
            parts = ", ".join(
                f"{seg} {_f(f.get('agreement'))} [{_f(f.get('lower'))}, {_f(f.get('upper'))}] "
                f"of {f['n']}"
                for seg, f in segments.items()
            )
            console.print(f"  {name}: segments: {parts}", markup=False)
        noise = noise_line(t)
        if noise:
            console.print(f"  {name}: noise floor: {noise}", markup=False)
        budgets = t.get("budgets") or {}
        for key in ("cost_usd_per_decision", "latency_ms_p95", "error_rate"):
            judged = budgets.get(key)
            if judged and judged.get("statement"):
                console.print(f"  {name}: {judged['statement']}", markup=False)
        worst = [(p, f) for p, f in t["fields"].items() if f["mismatches"]][:3]
        if worst:
            parts = ", ".join(f"{p} {f['mismatches']}/{f['compared']}" for p, f in worst)
            console.print(f"  {name}: most disagreed fields: {parts}")
    h = doc["history"]
    run = doc["run"]
    cases = f"{h['selected']} cases selected of {h['cases']}"
    if not doc.get("complete", True):
        cases = (
            f"partial: {h.get('scored', 0)} cases scored, {h['selected']} read "
            f"({h.get('unscored', 0)} read but not scored) of {h['cases']}"
        )
    console.print(
        f"{cases}; "
        f"{run.get('agent_calls', 0)} agent calls, {run.get('cache_hits', 0)} cached answers"
    )
    base = doc.get("baseline") or {}
    if base.get("blind_only") is False:
        console.print(
            "[yellow]the baseline report predates blind-only scoring (it has no acceptance): "
            "its agreement may count outcomes that echo the agent; re-run it[/yellow]"
        )
    reg = doc.get("regression")
    if reg is not None:
        for name, t in doc["task_types"].items():
            b = t.get("baseline")
            if b is not None:
                console.print(f"  {name} vs baseline: {b['statement']}", markup=False)
        if reg["regression"]:
            console.print(f"[red]REGRESSION[/red] vs baseline on: {', '.join(reg['worse'])}")
            for failure in reg.get("failures", ()):
                console.print(f"  - {failure['reason']}", markup=False)
        else:
            console.print("no significant regression vs the baseline")
