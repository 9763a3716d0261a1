"""OpenAI Agents SDK agents under the kit (docs/integrations/openai-agents.md)::

    from shadow.kit.openai_agents import Case, run, serve

    async def decide(case: Case) -> dict[str, str]:
        return {"action": (await run(agent, case)).final_output}

:func:`run` opens :func:`server` (the SDK's ``MCPServerStreamableHttp`` on the case's tools
URL) for the run, runs a copy of the agent with it added to ``mcp_servers`` through
``Runner.run``, closes it before returning (so before the case is answered), and adds the
run's tokens to the case's usage (the SDK reports no cost: give :func:`serve` a
:class:`~shadow.kit.Price`). ``Case``, ``Price`` and ``serve`` are re-exported, so one
import is the whole kit.

The server never retries a call by itself (``max_retry_attempts=0``; the SDK's retry would
send a write again after its 5 s default timeout) and waits for an answer until the case's
deadline. What the model sees of a tool's answer is its structured result when it has one
(``use_structured_content``), else its content blocks. The server's ``name`` is fixed, so
the tools URL (a credential) is not its name in the SDK's errors and traces. Handoffs: the
case's tools are the starting agent's.

Imports the OpenAI Agents SDK: install ``openai-agents`` with the kit.
"""

from __future__ import annotations

from typing import Any

from agents import Agent, Runner
from agents.mcp import MCPServerStreamableHttp
from agents.result import RunResult

from shadow.kit.case import Case
from shadow.kit.mcp import CONNECT_TIMEOUT
from shadow.kit.service import serve
from shadow.kit.usage import Price

__all__ = ["SERVER_NAME", "Case", "Price", "run", "serve", "server"]

SERVER_NAME = "shadow-tools"


def server(case: Case) -> MCPServerStreamableHttp:
    """The SDK's MCP server on the case's tools URL, not yet connected (``async with`` it).
    Raises :class:`~shadow.kit.ToolsError` when the case has no tools URL."""
    remaining = case.remaining()
    return MCPServerStreamableHttp(
        params={
            "url": case.require_tools_url(),
            "timeout": min(CONNECT_TIMEOUT, remaining),
            "sse_read_timeout": remaining,
        },
        name=SERVER_NAME,
        client_session_timeout_seconds=remaining,
        max_retry_attempts=0,
        use_structured_content=True,
        cache_tools_list=True,
    )


async def run(agent: Agent[Any], case: Case, prompt: str | None = None, **kwargs: Any) -> RunResult:
    """``Runner.run(agent, prompt or case.prompt(), **kwargs)`` with the case's
    :func:`server` added to the agent's MCP servers (when the case has a tools URL); the
    run's tokens are added to the case's usage."""
    text = prompt if prompt is not None else case.prompt()
    if case.tools_url:
        async with server(case) as tools:
            with_tools = agent.clone(mcp_servers=[*agent.mcp_servers, tools])
            result = await Runner.run(with_tools, text, **kwargs)
    else:
        result = await Runner.run(agent, text, **kwargs)
    usage = result.context_wrapper.usage
    case.add_usage(usage.input_tokens, usage.output_tokens)
    return result
