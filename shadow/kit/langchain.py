"""LangChain and LangGraph agents under the kit (docs/integrations/langgraph.md)::

    from shadow.kit.langchain import Case, run, serve

    async def decide(case: Case) -> dict[str, str]:
        state = await run(build_graph, case)          # build_graph(tools) -> compiled graph
        return {"action": state["messages"][-1].text}

:func:`tools` lists the case's MCP tools over its one MCP session (:meth:`Case.tools
<shadow.kit.Case.tools>`, the official SDK's client) and wraps each as a LangChain
``StructuredTool`` whose input schema is the tool's own JSON schema. The kit converts them
itself: the LangChain MCP adapters package pins an older MCP SDK than the sidecar's.

A tool's answer is its text content (else its structured content as JSON), with the whole
MCP result as the ``ToolMessage`` artifact. A tool error (``isError``, or a JSON-RPC error
such as a tool the policy does not allow) is a ``ToolException`` the tool hands back to the
model as an error message (``handle_tool_error``); a broken session fails the run.

:func:`run` builds the graph with those tools, invokes it with the case's prompt as one
user message (a ``MessagesState``-style input: ``{"messages": [...]}``) and adds every chat
model call's tokens (``usage_metadata``, seen by :class:`UsageCallback`, nested graphs
included) to the case's usage. LangChain reports no cost: give :func:`serve` a
:class:`~shadow.kit.Price`. ``Case``, ``Price`` and ``serve`` are re-exported, so one
import is the whole kit.

Imports ``langchain-core`` (and, through the graph you build, LangGraph).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langchain_core.tools import BaseTool, StructuredTool, ToolException

from shadow.kit.case import Case
from shadow.kit.service import serve
from shadow.kit.usage import Price

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult, Tool

__all__ = ["Case", "Price", "UsageCallback", "run", "serve", "tools"]

MAX_PAGES = 100  # of a tools/list walk (a listing that never ends cannot hang a case)


async def tools(case: Case) -> list[BaseTool]:
    """The case's MCP tools as LangChain tools, all on the case's one MCP session. Raises
    :class:`~shadow.kit.ToolsError` when the case has no tools URL."""
    client = await case.tools()
    listed: list[Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        listed.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return [_tool(client, t) for t in listed]


def _tool(client: Client, tool: Tool) -> BaseTool:
    from mcp import MCPError

    name = tool.name

    async def call(**arguments: Any) -> tuple[str, dict[str, Any]]:
        try:
            result = await client.call_tool(name, arguments)
        except MCPError as exc:
            raise ToolException(f"{name} failed: {exc.error.message}") from exc
        text = _text(result)
        if result.is_error:
            raise ToolException(f"{name} failed: {text}" if text else f"{name} failed")
        return text, result.model_dump(mode="json", by_alias=True, exclude_none=True)

    return StructuredTool(
        name=name,
        description=tool.description or tool.title or name,
        args_schema=tool.input_schema,
        coroutine=call,
        response_format="content_and_artifact",
        handle_tool_error=True,
    )


def _text(result: CallToolResult) -> str:
    texts = [block.text for block in result.content if block.type == "text"]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return ""


class UsageCallback(BaseCallbackHandler):
    """A LangChain callback that adds each chat model call's ``usage_metadata`` (input and
    output tokens) to ``case``'s usage. :func:`run` passes one; pass one yourself in a
    chain's ``config={"callbacks": [...]}`` to count another run."""

    run_inline = True  # on the event loop, with the case

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.case = case

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                if not isinstance(generation, ChatGeneration):
                    continue
                message = generation.message
                usage = message.usage_metadata if isinstance(message, AIMessage) else None
                if usage:
                    self.case.add_usage(usage["input_tokens"], usage["output_tokens"])


async def run(
    build: Callable[[list[BaseTool]], Runnable[Any, Any]],
    case: Case,
    prompt: str | None = None,
    *,
    config: RunnableConfig | None = None,
) -> Any:
    """``build(tools)`` (the case's :func:`tools`, or none when it has no tools URL),
    invoked with ``{"messages": [HumanMessage(prompt or case.prompt())]}``; returns the
    graph's final state, its model calls' tokens added to the case's usage."""
    listed = await tools(case) if case.tools_url else []
    graph = build(listed)
    message = HumanMessage(prompt if prompt is not None else case.prompt())
    merged = merge_configs(config, {"callbacks": [UsageCallback(case)]})
    return await graph.ainvoke({"messages": [message]}, merged)
