"""A refund agent on LangGraph, served to the shadow sidecar by shadow.kit
(docs/integrations/langgraph.md).

    python docs/integrations/refund_langgraph.py        # http://127.0.0.1:9000
    shadow run --config policy.yaml --agent http://127.0.0.1:9000/decide

Everything above the kit's import is the agent as you would write it anyway: a graph built
around the tools it is given. The last five lines serve it: each case's MCP tools become
LangChain tools on one MCP session, the graph is built with them and run on the case, its
model calls' tokens are the answer's usage (priced with ``Price``: LangChain reports no
cost), and the writes the agent makes through its tools are the case's actions.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.tools import BaseTool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from shadow.kit.langchain import Case, Price, run, serve

INSTRUCTIONS = SystemMessage(
    "You handle refund requests. Look the order up with get_order. If it was delivered, "
    "refund its full amount with issue_refund and answer approve; otherwise answer deny. "
    "Answer with the one word."
)


def chat_model() -> BaseChatModel:
    """Your chat model: any LangChain chat model that calls tools."""
    from langchain_openai import ChatOpenAI  # pip install langchain-openai

    return ChatOpenAI(model="gpt-5-mini")


def build(tools: list[BaseTool]) -> Any:
    """The agent's graph: the model, and a tool node for the calls it makes."""
    model = chat_model().bind_tools(tools)

    async def think(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke([INSTRUCTIONS, *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("think", think)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", tools_condition)
    graph.add_edge("tools", "think")
    return graph.compile()


async def decide(case: Case) -> dict[str, str]:
    return {"action": (await run(build, case))["messages"][-1].text}


if __name__ == "__main__":
    serve(decide, version="refund-agent@7", price=Price(input=0.25, output=2.0))
