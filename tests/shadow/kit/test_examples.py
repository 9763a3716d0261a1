"""The worked examples of docs/integrations/, run as written against a real sidecar.

Each example is a refund agent on one framework, served by the kit. The test loads the file,
puts the framework's offline model of tests/clients/models.py where the example names its
model (the only fake: no LLM, no network), serves what the file's ``__main__`` block serves
(its handler, version and price) on a loopback port, and sends one case through a real
sidecar whose tool gateway fronts a real MCP server with a typed write
(tests/clients/backoffice.py). The case must score exactly (agree, the one write captured as
its action, nothing written upstream), the run's usage must be the decision's tokens and
cost as the sidecar stores and shows them, and the kit's part of the file, its glue, must be
at most five lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from types import ModuleType

import pytest

from shadow.kit import Price
from tests.clients.backoffice import ORDER, typed_backoffice, typed_policy
from tests.clients.models import (
    TURN_COST_USD,
    TURN_INPUT_TOKENS,
    TURN_OUTPUT_TOKENS,
    TURNS,
    RefundScript,
)
from tests.shadow.conftest import SidecarFactory, metric
from tests.shadow.gateway.conftest import UpstreamFactory
from tests.shadow.kit.conftest import (
    DEADLINE,
    INTEGRATIONS,
    SLOW_OK,
    VERSION,
    KitAgent,
    assert_scores_exactly,
    case_usage,
    glue,
    load_example,
    refund_case,
    scored,
    served,
)

TOKENS_IN = TURNS * TURN_INPUT_TOKENS
TOKENS_OUT = TURNS * TURN_OUTPUT_TOKENS


@pytest.fixture
def no_tracing() -> Iterator[None]:
    """The Agents SDK's trace export off (there is no model provider to export to), as it
    was after the test."""
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
    yield
    env = os.environ.get("OPENAI_AGENTS_DISABLE_TRACING", "").lower() in ("1", "true")
    set_tracing_disabled(env)


def offline_pydantic_ai(module: ModuleType, script: RefundScript, mp: pytest.MonkeyPatch) -> None:
    from tests.clients.models import scripted_function_model

    mp.setattr(module.agent, "model", scripted_function_model(script))


def offline_openai_agents(module: ModuleType, script: RefundScript, mp: pytest.MonkeyPatch) -> None:
    from tests.clients.models import ScriptedAgentsModel

    mp.setattr(module.agent, "model", ScriptedAgentsModel(script))


def offline_langgraph(module: ModuleType, script: RefundScript, mp: pytest.MonkeyPatch) -> None:
    from tests.clients.models import ScriptedChatModel

    mp.setattr(module, "chat_model", lambda: ScriptedChatModel(script=script))


EXAMPLES = {
    "refund_pydantic_ai": offline_pydantic_ai,
    "refund_openai_agents": offline_openai_agents,
    "refund_langgraph": offline_langgraph,
}


@pytest.mark.slow  # importing the frameworks takes seconds
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_the_glue_is_at_most_five_lines(name: str) -> None:
    lines, leaked = glue(INTEGRATIONS / f"{name}.py")
    assert lines <= 5, f"{name}.py: {lines} lines of glue"
    assert not leaked, f"{name}.py uses {sorted(leaked)} outside its glue"


@pytest.mark.slow  # importing the frameworks takes seconds
@pytest.mark.usefixtures("no_tracing")
@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_the_example_scores_exactly_and_reports_its_usage(
    name: str,
    sidecar: SidecarFactory,
    kit_agent: KitAgent,
    upstream: UpstreamFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = load_example(name)
    script = RefundScript("o-1")
    EXAMPLES[name](module, script, monkeypatch)
    handler, options = served(module)
    assert options["version"] == VERSION
    price: Price | None = options.get("price")
    up = await upstream(typed_backoffice())
    agent = await kit_agent(handler, **{"deadline": DEADLINE, **options})
    sc = await sidecar(policy=typed_policy(up.url), agent=agent, **SLOW_OK)

    await refund_case(sc)

    await assert_scores_exactly(sc, up)
    assert script.offered[0] == ["get_order", "issue_refund"]
    assert script.returns["get_order"] == ORDER.model_dump()
    _, decision = await scored(sc)
    if price is None:  # the framework priced its runs (pydantic-ai: each response's cost)
        cost = float(TURNS * TURN_COST_USD)
    else:
        cost = price.cost(TOKENS_IN, TOKENS_OUT)
    usage = decision.usage
    assert (usage.input_tokens, usage.output_tokens) == (TOKENS_IN, TOKENS_OUT)
    assert usage.cost_usd == pytest.approx(cost, rel=1e-12)
    shown = await case_usage(sc)
    assert shown == {
        "input_tokens": TOKENS_IN,
        "output_tokens": TOKENS_OUT,
        "cost_usd": pytest.approx(cost, rel=1e-12),
    }
    samples = await sc.metrics()
    tokens = {
        d: metric(samples, "shadow_agent_tokens_total", task_type="refund", direction=d)
        for d in ("input", "output")
    }
    assert tokens == {"input": TOKENS_IN, "output": TOKENS_OUT}
    labels = {"task_type": "refund", "agent_version": VERSION}
    spent = metric(samples, "shadow_agent_cost_usd_total", **labels)
    assert spent == pytest.approx(cost, rel=1e-12)


DOCS = {
    "pydantic-ai.md": "refund_pydantic_ai.py",
    "openai-agents.md": "refund_openai_agents.py",
    "langgraph.md": "refund_langgraph.py",
    "typescript.md": "refund_agent.mjs",
}
CODE = re.compile(r"^```(python|javascript)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("doc", list(DOCS))
def test_the_docs_quote_their_example_as_it_is(doc: str) -> None:
    """Every Python or JavaScript block of an integration page is a verbatim excerpt of the
    example file the suite runs, so the page cannot drift from what is tested."""
    example = (INTEGRATIONS / DOCS[doc]).read_text(encoding="utf-8")
    blocks = [body for _, body in CODE.findall((INTEGRATIONS / doc).read_text(encoding="utf-8"))]
    assert blocks, f"{doc} quotes nothing of {DOCS[doc]}"
    for block in blocks:
        assert block in example, f"{doc}: this block is not in {DOCS[doc]}:\n{block}"
