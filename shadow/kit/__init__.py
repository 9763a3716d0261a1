"""``shadow.kit``: write an agent for the shadow sidecar as one async function.

::

    from shadow.kit import Case, serve

    async def decide(case: Case) -> dict:
        tools = await case.tools()                       # the case's MCP session (official SDK)
        order = await tools.call_tool("get_order", {"order_id": case.payload["order_id"]})
        await tools.call_tool("issue_refund", {"order_id": ..., "amount": ...})
        return {"action": "approve"}

    serve(decide, version="refund-agent@7", port=9000)  # or: shadow agent serve mod:decide

:func:`serve` (or :func:`app`, the aiohttp application) follows the agent contract
(README "The agent contract"; :mod:`shadow.kit.service`): it parses the sidecar's request
into a :class:`Case`, runs the handler under a deadline below the sidecar's agent timeout,
closes the case's MCP session before answering, and answers the handler's dict or pydantic
model as the ``decision`` with ``agent_version`` and the case's ``usage`` (tokens, cost);
the writes the agent made through its tools are the case's actions. A handler that raises
or overruns gets a one-line error answer, which the sidecar records against the version.

One import per framework runs its agent with the case's tools and records its usage
(docs/integrations/):

- :mod:`shadow.kit.pydantic_ai`: ``(await run(agent, case)).output``;
- :mod:`shadow.kit.openai_agents`: ``(await run(agent, case)).final_output``;
- :mod:`shadow.kit.langchain`: LangChain tools over the case's MCP session, and
  ``await run(build_graph, case)`` for a LangGraph graph.

Importing ``shadow.kit`` loads neither DuckDB nor the Kafka client, nor any framework: an
agent's image needs the sidecar package and its framework, nothing of the sidecar's store.
"""

from shadow.kit.case import Case
from shadow.kit.errors import ToolsError
from shadow.kit.service import DEFAULT_DEADLINE, Handler, app, serve
from shadow.kit.usage import Price, Usage

__all__ = [
    "DEFAULT_DEADLINE",
    "Case",
    "Handler",
    "Price",
    "ToolsError",
    "Usage",
    "app",
    "serve",
]
