"""Fixtures of the kit's tests: a kit handler served on a loopback port (``kit_agent``), the
real upstream MCP server of the gateway's tests (``upstream``, with the typed back office of
tests/clients/backoffice.py), and one refund case scored through a real sidecar."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from shadow.gateway import GATEWAY
from shadow.kit import app
from shadow.model import Action, Comparison, ShadowDecision, Verdict
from tests.clients.models import DECISION
from tests.shadow.conftest import Sidecar
from tests.shadow.gateway.conftest import Upstream, upstream

__all__ = ["upstream"]  # the gateway tests' fixture, for these tests too

ROOT = Path(__file__).resolve().parents[3]
INTEGRATIONS = ROOT / "docs" / "integrations"
EVENT = "r-1"
VERSION = "refund-agent@7"
REFUND = Action("issue_refund", {"order_id": "o-1", "amount": 42.5})
# The agent's answer and its tools URL get long bounds, so a slow shared machine never turns
# into a retried agent call (a fresh case session) in the middle of a test.
SLOW_OK = {"agent_timeout": 60.0, "gateway_session_ttl": 600.0}
DEADLINE = 30.0  # the kit's deadline where a test does not test it (below SLOW_OK's timeout)

KitAgent = Callable[..., Awaitable[str]]


@pytest.fixture
async def kit_agent() -> AsyncIterator[KitAgent]:
    """``await kit_agent(handler, version=..., **app_options)`` serves
    :func:`shadow.kit.app` on 127.0.0.1 and returns the URL to give the sidecar;
    ``on_answer`` (a callable) is called as each answer is sent. All stop after the test."""
    runners: list[web.AppRunner] = []

    async def start(
        handler: Any,
        *,
        version: str = VERSION,
        on_answer: Callable[[int], None] | None = None,
        **options: Any,
    ) -> str:
        application = app(handler, version=version, **options)
        if on_answer is not None:
            call = on_answer

            async def answered(request: web.Request, response: web.StreamResponse) -> None:
                if request.method == "POST":
                    call(response.status)

            application.on_response_prepare.append(answered)
        runner = web.AppRunner(application, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}/decide"

    yield start
    for runner in runners:
        await runner.cleanup()


async def refund_case(sc: Sidecar, event_id: str = EVENT) -> None:
    """Case ``event_id`` (order o-1) and the humans' outcome: approve, one refund of the
    order's amount; drained until compared."""
    event = {"event_id": event_id, "task_type": "refund", "payload": {"order_id": "o-1"}}
    outcome = {
        "event_id": event_id,
        "decision": {"action": DECISION},
        "actions": [REFUND.to_json()],
        "decided_by": "ops/jane",
    }
    assert (await sc.post("/v1/events", json_body=event)).status == 202
    assert (await sc.post("/v1/outcomes", json_body=outcome)).status == 202
    await sc.pipeline.drain()


async def scored(sc: Sidecar, event_id: str = EVENT) -> tuple[Comparison, ShadowDecision]:
    """The case's comparison and the agent's decision, as stored."""
    comparisons = await sc.pipeline.store.unpublished_comparisons()
    (comparison,) = [c for c in comparisons if c.event_id == event_id]
    pairs = await sc.pipeline.store.pairs_of("refund")
    (decision,) = [row.decision for _, row in pairs if row.decision.event_id == event_id]
    return comparison, decision


async def assert_scores_exactly(sc: Sidecar, up: Upstream, event_id: str = EVENT) -> None:
    """The case agrees with the humans, its actions are the one write the agent's calls
    captured (the answer declared none), and no write reached the upstream."""
    comparison, decision = await scored(sc, event_id)
    assert decision.error is None, decision.error
    assert (comparison.verdict, comparison.mismatches) == (Verdict.AGREE, ()), comparison.fields
    assert decision.agent_version == VERSION
    assert decision.tool_calls
    assert decision.actions == (REFUND,)
    assert decision.declared_actions is None
    assert up.writes() == []
    assert up.calls == [("get_order", {"order_id": "o-1"})]
    await sc.app[GATEWAY].flush()
    rows = await sc.pipeline.store.tool_calls(event_id=event_id)
    captured = [r for r in rows if r["outcome"] == "captured"]
    assert [(r["tool"], r["args"]) for r in captured] == [(REFUND.tool, REFUND.args)]


async def case_usage(sc: Sidecar, event_id: str = EVENT) -> dict[str, Any]:
    """The usage ``GET /v1/cases/{event_id}`` shows for the case's one decision."""
    res = await sc.get(f"/v1/cases/{event_id}", headers=sc.admin)
    assert res.status == 200, res.body
    (decision,) = res.body["decisions"]
    return dict(decision["usage"])


# -- the worked examples (docs/integrations/) -------------------------------------------------


def load_example(name: str) -> ModuleType:
    """A fresh copy of ``docs/integrations/<name>.py`` (not as ``__main__``), registered in
    ``sys.modules`` as ``example_<name>`` as an import would (pydantic resolves a model's
    annotations there)."""
    path = INTEGRATIONS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def served(module: ModuleType) -> tuple[Any, dict[str, Any]]:
    """What the example's ``if __name__ == "__main__":`` block serves: the block runs, as
    written, with ``serve`` catching its handler and options instead of listening."""
    got: list[tuple[Any, dict[str, Any]]] = []

    def serve(handler: Any, **options: Any) -> None:
        got.append((handler, options))

    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    (block,) = [node for node in tree.body if _main_guard(node)]
    assert isinstance(block, ast.If)
    code = compile(ast.Module(body=block.body, type_ignores=[]), str(module.__file__), "exec")
    exec(code, {**vars(module), "serve": serve})
    (one,) = got
    return one


def glue(path: Path) -> tuple[int, set[str]]:
    """The lines that are there for the kit, and the names of the kit the rest uses.

    The glue is the file's imports from ``shadow.kit``, the handler (``decide``) and the
    ``if __name__ == "__main__":`` block; its size is their non-blank lines. Everything
    else is the agent as written without the kit: it must name nothing imported from the
    kit (else part of the glue would be hiding there)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kit_names: set[str] = set()
    glue_nodes: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shadow"):
            kit_names |= {a.asname or a.name for a in node.names}
            glue_nodes.append(node)
        elif _main_guard(node) or (
            isinstance(node, ast.AsyncFunctionDef) and node.name == "decide"
        ):
            glue_nodes.append(node)
    lines = path.read_text(encoding="utf-8").splitlines()
    count = sum(
        1
        for node in glue_nodes
        for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
        if lines[n - 1].strip() and not lines[n - 1].strip().startswith("#")
    )
    leaked = {
        name.id
        for node in tree.body
        if node not in glue_nodes
        for name in ast.walk(node)
        if isinstance(name, ast.Name) and name.id in kit_names | {"decide"}
    }
    return count, leaked


def _main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def json_line(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
