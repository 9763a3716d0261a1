"""A refund agent on the OpenAI Agents SDK, served to the shadow sidecar by shadow.kit
(docs/integrations/openai-agents.md).

    python docs/integrations/refund_openai_agents.py    # http://127.0.0.1:9000
    shadow run --config policy.yaml --agent http://127.0.0.1:9000/decide

Everything above the kit's import is the agent as you would write it anyway; the last five
lines serve it: each case's tools are an MCP server for the run (never retrying a call by
itself), the run's tokens are the answer's usage (priced with ``Price``: the SDK reports no
cost), and the writes the agent makes through its tools are the case's actions.
"""

from __future__ import annotations

from agents import Agent

from shadow.kit.openai_agents import Case, Price, run, serve

agent = Agent(
    name="refunds",
    model="gpt-5-mini",
    instructions=(
        "You handle refund requests. Look the order up with get_order. If it was delivered, "
        "refund its full amount with issue_refund and answer approve; otherwise answer deny. "
        "Answer with the one word."
    ),
)


async def decide(case: Case) -> dict[str, str]:
    return {"action": (await run(agent, case)).final_output}


if __name__ == "__main__":
    serve(decide, version="refund-agent@7", price=Price(input=0.25, output=2.0))
