"""What the commands share (:mod:`shadow.cli` and :mod:`shadow.demo_run`, which the CLI
runs for ``shadow demo``): the usage error (one line, exit 2), the listening socket bound
before anything claims to serve, and the agreement table of ``shadow status`` and
``shadow demo``. In its own module so that neither command module imports the other."""

from __future__ import annotations

import socket
from typing import Any

from rich.console import Group
from rich.table import Table

from shadow.evidence_view import (
    agreement_met,
    beside_lines,
    cost_per_decision,
    evidence_invalid,
    gate_held,
    gate_held_by_segments,
    segment_rows,
)

__all__ = ["UsageError", "agreement_table", "fmt", "listen"]


class UsageError(Exception):
    """A mistake on the command line or in its inputs: one line, exit 2."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before anything claims to serve (a busy port is a usage
    error, not a traceback)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def agreement_table(doc: dict[str, Any], title: str = "Agreement and autonomy") -> Group:
    """The per-task-type table of ``shadow status``, ``shadow demo`` and ``shadow report``,
    then the evidence beside agreement (:func:`evidence_table`). Under each task type, its
    segments (:mod:`shadow.segments`): each one's figures, and in the gate column whether it
    holds the promotion or is routed to humans. A task type whose evidence is invalid (join
    health, :mod:`shadow.join_health`) needs ``valid evidence``, and the table's caption
    says why."""
    tables = [_agreement_table(doc, title)]
    beside = evidence_table(doc)
    if beside is not None:
        tables.append(beside)
    return Group(*tables)


def evidence_table(doc: dict[str, Any]) -> Table | None:
    """Per task type, the evidence beside agreement (:func:`shadow.evidence_view.beside_lines`):
    its state, the agent's mean cost per decision, then a line each for the join health
    (outcome coverage, unknown outcomes, conflicts, routed items never answered), the noise
    floor (human ceiling, self-consistency), each budget of the judged gate and the projected
    daily cost; ``None`` when no task type reports any."""
    rows = []
    for name, t in doc["task_types"].items():
        lines = beside_lines(t)
        if not lines and t.get("evidence_state") is None:
            continue
        cost = cost_per_decision(t)
        rows.append(
            (
                name,
                str(t.get("evidence_state") or "-"),
                "-" if cost is None else f"${cost:.4f}",
                "\n".join(lines) or "-",
            )
        )
    if not rows:
        return None
    table = Table(title="Evidence beside agreement")
    table.add_column("task type", no_wrap=True)
    table.add_column("evidence", no_wrap=True)
    table.add_column("cost/decision", justify="right", no_wrap=True)
    table.add_column("join health, noise floor, budgets, daily cost")
    for row in rows:
        table.add_row(*row)
    return table


def _agreement_table(doc: dict[str, Any], title: str) -> Table:
    frozen = " (FROZEN: every task type held at L0)" if doc.get("frozen") else ""
    table = Table(title=title + frozen)
    for col in ("task type", "level", "n", "agree", "lower", "upper", "crit", "err"):
        table.add_column(col, justify="left" if col == "task type" else "right", no_wrap=True)
    table.add_column("next gate", no_wrap=True)
    table.add_column("needs", justify="right")
    invalid: list[str] = []
    holding: list[str] = []  # the segments holding a promotion, and why
    for name, t in doc["task_types"].items():
        gate = t.get("next_gate")
        if gate is None:
            gate_text, needs = "at ceiling", "-"
        else:
            gate_text = f"{gate['level']}: ≥{gate['agreement']} n≥{gate['min_samples']}"
            if gate.get("max_critical") is not None:
                gate_text += f" crit≤{gate['max_critical']}"
            if gate.get("below_human"):  # the threshold of the moment (shadow.noise)
                gate_text += f" (ceiling-{gate['below_human']['margin']:g})"
            if gate.get("per_segment") is not None:
                gate_text += " per segment"
            held = gate_held(t)
            gate_text += " ✓" if gate["met"] else ""
            k = gate.get("agreements_needed")
            needs = (
                "-"
                if agreement_met(gate)
                else (f"+{k} agreeing" if k is not None else "out of reach")
            )
            if agreement_met(gate) and held:
                by_segment = bool(gate_held_by_segments(t))
                by_budget = len(held) > len(gate_held_by_segments(t))
                needs = ", ".join(
                    w for w, on in (("segments", by_segment), ("budgets", by_budget)) if on
                )
            if gate.get("max_critical") is not None and t["critical"] > gate["max_critical"]:
                needs = f"crit {t['critical']} > {gate['max_critical']}"  # more cases won't do
        why = evidence_invalid(t)
        if why is not None:  # join health (shadow.join_health)
            needs = "valid evidence"
            invalid.append(f"{name}: {why}")
        level = t["level"] + (f" → {t['proposal']['to_level']}?" if t.get("proposal") else "")
        table.add_row(
            name,
            level,
            fmt(t["n"]),
            fmt(t["agreement"]),
            fmt(t["lower"]),
            fmt(t["upper"]),
            fmt(t["critical"]),
            fmt(t["errors"]),
            gate_text,
            needs,
        )
        for seg in segment_rows(t):
            table.add_row(
                f"  segment {seg['segment']}",
                "",
                fmt(seg["n"]),
                fmt(seg["agreement"]),
                fmt(seg["lower"]),
                fmt(seg["upper"]),
                fmt(seg["critical"]),
                fmt(seg["errors"]),
                seg["state"],
                "",
            )
            if seg["holds"]:  # why, under the table: the row stays narrow
                holding.append(
                    f"{name}: segment {seg['segment']} holds the promotion to "
                    f"{(gate or {}).get('level')}: {seg['holds']}"
                )
    if invalid or holding:
        table.caption = "\n".join([*holding, *invalid])
        table.caption_justify = "left"
    return table
