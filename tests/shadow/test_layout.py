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


# Where a task may still be created outside the supervisor, and why: a call's own helpers
# whose failures reach the caller that awaits them (not background work), and the Kafka stack
# (its tasks are not supervised yet: docs/operating.md#background-tasks).
TASKS_ELSEWHERE = {
    "supervisor.py": "the supervisor itself",
    "server.py": "serve() waits on its stop signal and the supervisor's fatal failure",
    "gateway/upstream.py": "the SDK client's own task (its failures are the calls' answers)",
    "gateway/catalog.py": "one listing shared by the calls that await it",
    "handling.py": "the group commit's writer: every waiting route gets its failure",
    "agent/runner.py": "a batch's calls, awaited by the batch",
    "sources/publish.py": "Kafka: not supervised yet",
    "sources/kafka.py": "Kafka: not supervised yet",
    "sources/kafka_stack.py": "Kafka: not supervised yet",
    "demo/backoffice.py": "the demo's own MCP server",
    "demo_run.py": "the demo's own loop",
}


def test_background_tasks_are_started_through_the_supervisor() -> None:
    """Every long-running task is started by :mod:`shadow.supervisor` (which sees it die);
    anything else that creates a task is listed above with why."""
    starters = {"create_task", "ensure_future", "TaskGroup"}
    found = set()
    for path in SHADOW.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in starters and not (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "self"
                ):
                    found.add(str(path.relative_to(SHADOW)))
    assert found - set(TASKS_ELSEWHERE) == set(), "start background work via shadow.supervisor"
