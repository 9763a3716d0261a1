"""What the commands share (:mod:`shadow.cli` and :mod:`shadow.demo_run`, which the CLI
runs for ``shadow demo``): the usage error (one line, exit 2), the listening socket bound
before anything claims to serve, and the agreement table of ``shadow status`` and
``shadow demo``. In its own module so that neither command module imports the other."""

from __future__ import annotations

import socket
from typing import Any

from rich.table import Table

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


def agreement_table(doc: dict[str, Any], title: str = "Agreement and autonomy") -> Table:
    """The per-task-type table of ``shadow status`` and ``shadow demo``. A task type whose
    evidence is invalid (join health, :mod:`shadow.join_health`) needs ``valid evidence``,
    and the table's caption says why."""
    frozen = " (FROZEN: every task type held at L0)" if doc.get("frozen") else ""
    table = Table(title=title + frozen)
    for col in ("task type", "level", "n", "agree", "lower", "upper", "crit", "err"):
        table.add_column(col, justify="left" if col == "task type" else "right", no_wrap=True)
    table.add_column("next gate", no_wrap=True)
    table.add_column("needs", justify="right")
    invalid: list[str] = []
    for name, t in doc["task_types"].items():
        gate = t.get("next_gate")
        if gate is None:
            gate_text, needs = "at ceiling", "-"
        else:
            gate_text = f"{gate['level']}: ≥{gate['agreement']} n≥{gate['min_samples']}"
            if gate.get("max_critical") is not None:
                gate_text += f" crit≤{gate['max_critical']}"
            gate_text += " ✓" if gate["met"] else ""
            k = gate.get("agreements_needed")
            needs = "-" if gate["met"] else (f"+{k} agreeing" if k is not None else "out of reach")
            if gate.get("max_critical") is not None and t["critical"] > gate["max_critical"]:
                needs = "critical misses"
        if t.get("evidence_state") == "invalid":  # join health (shadow.join_health)
            needs = "valid evidence"
            invalid.append(f"{name}: evidence invalid, no promotion: {t.get('evidence_reason')}")
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
    if invalid:
        table.caption = "\n".join(invalid)
    return table
