"""Architecture rules that a refactor could silently break: ``shadow`` never imports
``replay`` (it finds ``shadow replay`` through an entry point), and ``replay.history`` is the
only package of ``replay`` that imports duckdb."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_shadow_never_imports_replay() -> None:
    offenders = [p for p in (ROOT / "shadow").rglob("*.py") if "replay" in imported(p)]
    assert offenders == []


def test_only_history_imports_duckdb() -> None:
    replay = ROOT / "replay"
    users = sorted(
        str(p.relative_to(replay)) for p in replay.rglob("*.py") if "duckdb" in imported(p)
    )
    assert users, "replay reads DuckDB history somewhere"
    assert all(u.startswith("history/") for u in users), users


def test_replay_is_registered_as_a_shadow_command() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="shadow.commands")}
    assert found.get("replay") == "replay.cli:register"
