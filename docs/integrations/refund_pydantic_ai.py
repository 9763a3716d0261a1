"""A refund agent on pydantic-ai, served to the shadow sidecar by shadow.kit
(docs/integrations/pydantic-ai.md).

    python docs/integrations/refund_pydantic_ai.py      # http://127.0.0.1:9000
    shadow run --config policy.yaml --agent http://127.0.0.1:9000/decide

Everything above the kit's import is the agent as you would write it anyway; the last five
lines are all it takes to serve it: each case's tools (its MCP tools URL on the sidecar's
gateway) are given to the run, the run's tokens and cost are the answer's usage, and the
writes the agent makes through its tools are the case's actions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic_ai import Agent

from shadow.kit.pydantic_ai import Case, run, serve


class Decision(BaseModel):
    action: Literal["approve", "deny"]


# The model is resolved at the first run (defer_model_check), so the file imports without
# an API key; OPENAI_API_KEY is read then.
agent = Agent(
    "openai:gpt-5-mini",
    output_type=Decision,
    instructions=(
        "You handle refund requests. Look the order up with get_order. If it was delivered, "
        "refund its full amount with issue_refund and approve; otherwise deny."
    ),
    defer_model_check=True,
)


async def decide(case: Case) -> Decision:
    return (await run(agent, case)).output


if __name__ == "__main__":
    serve(decide, version="refund-agent@7")
