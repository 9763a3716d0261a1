"""Architecture rules of ``shadow`` that a refactor could silently break (STYLE.md): only
the store package imports duckdb, and the pure core (diff, promotion, statistics, model,
checks, policy, the live report's document and HTML, the agent check's judgement) imports
no I/O library, so it stays a set of plain functions over values."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SHADOW = Path(__file__).resolve().parents[2] / "shadow"
IO_LIBRARIES = {"aiohttp", "aiokafka", "duckdb", "prometheus_client", "asyncio", "socket"}
PURE = [
    "drift.py",
    "diff.py",
    "promotion.py",
    "join_health.py",
    "ladder_state.py",
    "adjudicated.py",
    "review_policy.py",
    "moves.py",
    "stats.py",
    "model.py",
    "checks.py",
    "policy.py",
    "joiner.py",
    "mirror.py",
    "report.py",
    "report_html.py",
    "agent_check.py",
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
# whose failures reach the caller that awaits them (not background work).
TASKS_ELSEWHERE = {
    "supervisor.py": "the supervisor itself",
    "server.py": "serve() waits on its stop signal and the supervisor's fatal failure",
    "gateway/upstream.py": "the SDK client's own task (its failures are the calls' answers)",
    "gateway/catalog.py": "one listing shared by the calls that await it",
    "handling.py": "the group commit's writer: every waiting route gets its failure",
    "agent/runner.py": "a batch's calls, awaited by the batch",
    "sources/kafka_client.py": "a shutdown's own client.stop(), awaited right there",
    "demo/backoffice.py": "the demo's own MCP server",
    "demo_run.py": "the demo's own loop",
    "kit/mcp.py": "an agent's case session, closed and awaited before the case is answered",
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


# -- import cycles ----------------------------------------------------------------------------
#
# The rule: module A depends on module B when any statement of A imports B, wherever it
# stands: at module level, inside a function (a local import that only dodges a cycle at
# import time is still a cycle in the design) or under ``if TYPE_CHECKING:`` (a type-only
# dependence is a dependence). ``from P import N`` depends on ``P.N`` when that is a module,
# else on ``P``. Importing ``P.M`` also runs ``P/__init__``, but that edge is not counted:
# every package's ``__init__`` re-exports its submodules, so counting it would make each
# package a cycle with its own children.

ROOT = SHADOW.parent
PACKAGES = ("shadow", "replay")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {module it imports: line of the first such import}}`` over shadow/ and
    replay/, by the rule above."""
    paths = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in paths.items():
        edges: dict[str, int] = {}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package[: len(package) - (node.level - 1)]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in paths else known(base)
                    for a in node.names
                ]
            for target in targets:
                if target is not None and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected group of modules (Tarjan), as
    ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in {w for v in frontier for w in graph[v]}:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in group and w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        cycles.append([*paths[last], start])
    return sorted(cycles)


def test_no_import_cycles() -> None:
    """shadow/ and replay/ import in one direction only (the rule above): a module that
    needs something from a module that imports it means that thing belongs in a third."""
    graph = import_graph()
    cycles = [
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(c)) + f" -> {c[0]}"
        for c in import_cycles(graph)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_sees_local_and_type_only_imports() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_graph()["shadow.keys"].keys() >= {"shadow.pipeline", "shadow.gateway.core"}


def attributes_set_from_outside(path: Path) -> list[str]:
    """``obj.attr = ...`` (or ``+=``) where ``obj`` is not ``self``/``cls``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for one in target.elts if isinstance(target, ast.Tuple) else [target]:
                owner = one.value if isinstance(one, ast.Attribute) else None
                if owner is not None and not (
                    isinstance(owner, ast.Name) and owner.id in ("self", "cls")
                ):
                    found.append(f"{path.name}:{one.lineno} {ast.unparse(one)}")
    return found


def test_the_composition_root_patches_nothing_it_built() -> None:
    """``build_app`` (shadow/app.py) builds the object graph in dependency order and hands
    each part what it uses: it never sets an attribute on an object it built (as it once
    closed a cycle with ``pipeline.tools = gateway`` and ``runner.tools_url = ...``), and
    neither does the pipeline on its siblings."""
    for name in ("app.py", "pipeline.py"):
        assert attributes_set_from_outside(SHADOW / name) == []


def test_no_handler_refreshes_after_a_move() -> None:
    """The Ladder announces its own changes (gauges, the Kafka publisher): nothing in
    ``shadow`` calls a ``refresh`` after a move (handlers once had to, and could forget)."""
    calls = []
    for path in SHADOW.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "refresh"
            ):
                calls.append(f"{path.relative_to(SHADOW)}:{node.lineno}")
    assert calls == []
