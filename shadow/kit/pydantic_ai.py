"""pydantic-ai agents under the kit (docs/integrations/pydantic-ai.md)::

    from shadow.kit.pydantic_ai import Case, run, serve

    async def decide(case: Case) -> Decision:
        return (await run(agent, case)).output

:func:`run` runs the agent on the case's prompt with :func:`toolset` added for the run
(pydantic-ai enters it when the run starts and closes it when the run ends, so the MCP
session is closed before the case is answered) and adds the run's tokens and cost (what
pydantic-ai priced with ``genai-prices``; unknown for a model it cannot price) to the case's
usage. ``Case``, ``Price`` and ``serve`` are re-exported, so one import is the whole kit.

Imports pydantic-ai: install ``pydantic-ai-slim[mcp]`` (or ``pydantic-ai``) with the kit.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic_ai.agent import AbstractAgent, AgentRunResult
from pydantic_ai.mcp import MCPToolset

from shadow.kit.case import Case
from shadow.kit.mcp import CONNECT_TIMEOUT
from shadow.kit.service import serve
from shadow.kit.usage import Price

__all__ = ["Case", "Price", "run", "serve", "toolset"]

DepsT = TypeVar("DepsT")
OutputT = TypeVar("OutputT")

TOOLSET_ID = "shadow-tools"  # the toolset's id (pydantic-ai would derive one from the URL)


def toolset(case: Case) -> MCPToolset[Any]:
    """pydantic-ai's ``MCPToolset`` on the case's tools URL, for one run: answers are
    waited for until the case's deadline, the connection for at most 5 s; a failed tool
    call goes back to the model as pydantic-ai's retry prompt (nothing re-sends it by
    itself). Raises :class:`~shadow.kit.ToolsError` when the case has no tools URL."""
    return MCPToolset(
        case.require_tools_url(),
        id=TOOLSET_ID,
        init_timeout=min(CONNECT_TIMEOUT, case.remaining()),
        read_timeout=case.remaining(),
    )


async def run(
    agent: AbstractAgent[DepsT, OutputT],
    case: Case,
    prompt: str | None = None,
    **kwargs: Any,
) -> AgentRunResult[OutputT]:
    """``agent.run(prompt or case.prompt(), **kwargs)`` with the case's :func:`toolset`
    (when it has a tools URL) added to ``toolsets``; the run's usage is added to the
    case's."""
    toolsets = list(kwargs.pop("toolsets", None) or ())
    if case.tools_url:
        toolsets.append(toolset(case))
    result: AgentRunResult[OutputT] = await agent.run(
        prompt if prompt is not None else case.prompt(), toolsets=toolsets, **kwargs
    )
    usage = result.usage
    cost = float(usage.cost) if usage.cost is not None else None
    case.add_usage(usage.input_tokens, usage.output_tokens, cost)
    return result
