"""The agent behind the real-Prometheus test: the demo's reference agent, made imperfect in
the ways the dashboards and alerts must see (loaded as ``tests.dashboards.feed_agent:AGENT``).

- About one ``claim_appeal`` call in ten raises (an agent that sometimes fails: agent
  errors, and an error rate above the alert's 5%).
- After ``AGENT.degraded = True`` (a bad agent release, same version), every third refund
  decision flips approve/deny: critical misses at L3, a falling lower bound, a demotion.
- A share of the cases is worked through the request's ``tools_url`` (the demo's
  :class:`~shadow.demo.backoffice.ToolAgent`): reads forwarded to the demo back office,
  writes captured by the gateway, for the tool-gateway panels.

Deterministic: which calls fail, flip or use tools is a hash of the event id.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from shadow.demo.backoffice import ToolAgent

__all__ = ["AGENT", "TOOL_SHARE", "PhasedAgent"]

TOOL_SHARE = 0.1


class PhasedAgent:
    def __init__(self) -> None:
        self.degraded = False
        self.tools = ToolAgent(TOOL_SHARE)

    async def __call__(self, request: Mapping[str, Any]) -> dict[str, Any]:
        h = zlib.crc32(str(request.get("event_id")).encode())
        task_type = request.get("task_type")
        if task_type == "claim_appeal" and h % 10 == 0:
            raise RuntimeError("upstream model overloaded")
        answer = await self.tools(request)
        if self.degraded and task_type == "refund_request" and h % 3 == 0:
            decision = dict(answer["decision"])
            decision["action"] = "deny" if decision.get("action") == "approve" else "approve"
            answer["decision"] = decision
        return answer


AGENT = PhasedAgent()
