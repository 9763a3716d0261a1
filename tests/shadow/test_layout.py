"""Architecture rules of ``shadow`` that a refactor could silently break (STYLE.md): only
the store package imports duckdb, and the pure core (diff, promotion, statistics, model,
checks, policy) imports no I/O library, so it stays a set of plain functions over values."""

from __future__ import annotations

import ast
from pathlib import Path

SHADOW = Path(__file__).resolve().parents[2] / "shadow"
IO_LIBRARIES = {"aiohttp", "aiokafka", "duckdb", "prometheus_client", "asyncio", "socket"}
PURE = [
    "drift.py",
    "diff.py",
    "promotion.py",
    "moves.py",
    "stats.py",
    "model.py",
    "checks.py",
    "policy.py",
    "joiner.py",
    "mirror.py",
]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_store_package_imports_duckdb() -> None:
    users = sorted(
        str(p.relative_to(SHADOW)) for p in SHADOW.rglob("*.py") if "duckdb" in imported(p)
    )
    assert users, "the store must import duckdb somewhere"
    assert all(u.startswith("store/") for u in users), users


def test_the_pure_core_imports_no_io_library() -> None:
    for name in PURE:
        assert not imported(SHADOW / name) & IO_LIBRARIES, name
