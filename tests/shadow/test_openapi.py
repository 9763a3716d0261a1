"""The OpenAPI document matches the routes, and the live server honours it under fuzzing.

The fuzz test serves the real sidecar on the test's event loop and drives schemathesis
(synchronous: ``requests`` + Hypothesis) from a worker thread via ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shadow.openapi import openapi_spec
from shadow.routes import console_routes, routes
from tests.shadow.conftest import (
    ADMIN_TOKEN,
    AgentServerFactory,
    Sidecar,
    SidecarFactory,
    agree_reply,
)

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """The API's routes as served: every route but the console's HTML pages and forms
    (``/ui/...``, shadow.routes.console_routes; docs/console.md), which are not the API."""
    pages = web.Application()
    pages.add_routes(console_routes())
    console = {r.resource.canonical for r in pages.router.routes() if r.resource is not None}
    out: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        if route.resource.canonical in console:
            continue
        out.add((route.method.lower(), route.resource.canonical))
    return out


def documented_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


def test_every_route_is_documented_and_nothing_else() -> None:
    app = web.Application()
    app.add_routes(routes())
    registered = registered_routes(app)
    documented = documented_routes(openapi_spec())
    assert registered == documented
    assert len(registered) == len(routes())


def test_every_documented_operation_lists_its_responses() -> None:
    spec = openapi_spec()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                assert status.isdigit(), (method, path, status)
                assert response["description"], (method, path, status)


async def test_built_app_serves_exactly_the_documented_routes(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(lambda _: agree_reply({"action": "approve"}))
    sc = await sidecar(agent=agent.url)
    assert registered_routes(sc.app) == documented_routes(openapi_spec())
    served = await sc.get("/openapi.json")
    assert served.body == openapi_spec()


# -- fuzzing ------------------------------------------------------------------------------------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TASK_TYPES = ("refund", "appeal")  # configured in the fixture's policy
Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
CaseCheck = Callable[[Case, Response], None]


def cases(operation: Operation, mode: GenerationMode) -> SearchStrategy[Case]:
    """Generated cases; a ``{task_type}`` path also gets the configured task types, so the
    fuzzer reaches the handlers behind the 404 as well."""
    strategy = operation.as_strategy(mode)
    if "{task_type}" in operation.path:
        for name in TASK_TYPES:
            strategy |= operation.as_strategy(mode, path_parameters={"task_type": name})
    return strategy


def drive(
    strategy: SearchStrategy[Case],
    check: CaseCheck,
    *,
    session: requests.Session,
    base_url: str,
    max_examples: int,
) -> int:
    """Run ``check`` on up to ``max_examples`` cases (deterministic; no example database)."""
    calls = 0

    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,  # nothing written under the repo
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, session=session, headers=ADMIN)
        check(case, response)

    run()
    return calls


def fuzz(base_url: str, *, max_examples: int) -> dict[str, int]:
    """Every operation in positive and negative mode against the live server; the
    schemathesis checks must pass for each case. Returns calls per mode."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")

    def check(case: Case, response: Response) -> None:
        case.validate_response(response, checks=CHECKS, headers=ADMIN)

    calls = {"positive": 0, "negative": 0}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert not isinstance(result, Err), result.err()
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    calls[mode.value] += drive(
                        cases(operation, mode),
                        check,
                        session=session,
                        base_url=base_url,
                        max_examples=max_examples,
                    )
                except hypothesis.errors.Unsatisfiable:
                    # Nothing to negate (no parameters, no body): positive mode covered it.
                    assert mode is GenerationMode.NEGATIVE, operation.label
    return calls


async def start_sidecar(sidecar: SidecarFactory, agent_server: AgentServerFactory) -> Sidecar:
    agent = await agent_server(lambda _: agree_reply({"action": "approve"}))
    return await sidecar(agent=agent.url)


@pytest.mark.slow  # schemathesis fuzzing
async def test_fuzz_the_live_server_against_its_openapi_document(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await start_sidecar(sidecar, agent_server)
    calls = await asyncio.to_thread(fuzz, sc.url, max_examples=30)
    assert calls["positive"] >= len(routes())
    assert calls["negative"] > 0
    # Whatever the fuzzer sent, the sidecar is still healthy and consistent.
    await sc.pipeline.drain()
    assert (await sc.get("/readyz")).status == 200
    assert (await sc.get("/v1/agreement")).status == 200


def schema_valid_records_are_accepted(base_url: str) -> int:
    """Ingest bodies generated as *valid* by the document: the server may refuse the task
    type (422) or a conflicting re-delivery (409), never the body's shape (400)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    refused: list[str] = []

    def check(case: Case, response: Response) -> None:
        if response.status_code == 400:
            refused.append(
                f"{case.body!r:.300} -> {response.content.decode(errors='replace'):.300}"
            )

    calls = 0
    with requests.Session() as session:
        for path in ("/v1/events", "/v1/outcomes"):
            operation = schema[path]["POST"]
            strategy = operation.as_strategy(media_type="application/json")
            calls += drive(strategy, check, session=session, base_url=base_url, max_examples=50)
    assert not refused, f"{len(refused)} of {calls} schema-valid bodies got 400:\n" + "\n".join(
        refused[:5]
    )
    return calls


@pytest.mark.slow  # schemathesis-generated bodies against the live server
async def test_schema_valid_ingest_bodies_are_accepted(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await start_sidecar(sidecar, agent_server)
    await asyncio.to_thread(schema_valid_records_are_accepted, sc.url)


def test_set_level_documents_its_body_as_required() -> None:
    put = openapi_spec()["paths"]["/v1/autonomy/{task_type}"]["put"]
    assert put["requestBody"]["required"] is True
