"""A tiny HTTP agent for the README walkthrough (the agent contract: README.md, "The agent
contract").

Run: python docs/examples/refund_agent.py [PORT]  (listens on 127.0.0.1:9000 by default)
It approves refunds under 100 within 30 days and denies the rest; a real agent would call
an LLM here. It never executes anything: the sidecar calls it in shadow mode.
"""

import sys

from aiohttp import web


async def decide(request: web.Request) -> web.Response:
    assert request.headers.get("X-Shadow-Mode") == "true"
    body = await request.json()
    p = body["payload"]
    ok = p["amount"] < 100 and p["days_since_purchase"] <= 30
    decision = {"action": "approve" if ok else "deny", "amount": p["amount"] if ok else 0,
                "reason": "within policy" if ok else "outside refund policy"}
    return web.json_response({"decision": decision, "agent_version": "refund-agent@1",
                              "confidence": 0.9,
                              "usage": {"input_tokens": 300, "output_tokens": 20,
                                        "cost_usd": 0.0004}})


app = web.Application()
app.add_routes([web.post("/decide", decide)])

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 9000)
