"""One case as a kit handler sees it: the agent contract's request, its tools, its usage."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shadow.kit.errors import ToolsError
from shadow.kit.mcp import ToolSession
from shadow.kit.usage import Usage

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["MIN_TIMEOUT", "Case"]

MIN_TIMEOUT = 0.1  # seconds: the least a client timeout derived from the deadline is set to


@dataclass(eq=False)
class Case:
    """A work item the sidecar asks the agent to decide, in shadow.

    ``payload`` is the work event's payload after the policy's redaction; ``tools_url`` is
    the case's MCP endpoint on the sidecar's tool gateway, or ``None`` when its task type has
    no ``tools:`` policy; ``shadow`` is ``True`` for every case the sidecar sends (writes
    made through the tools URL are captured, never executed).

    ``deadline`` is the event-loop time (``loop.time()``) by which the service answers,
    with or without the handler's decision; :meth:`remaining` is what is left of it, which
    the adapters use as their clients' timeouts. ``usage`` collects what the handler's
    model runs used (:meth:`add_usage`; the adapters call it).
    """

    event_id: str
    task_type: str
    payload: dict[str, Any]
    tools_url: str | None = None
    shadow: bool = True
    deadline: float | None = None
    usage: Usage = field(default_factory=Usage)
    _session: ToolSession | None = field(default=None, init=False, repr=False)

    def prompt(self, instructions: str | None = None) -> str:
        """The case as a user message: ``instructions`` (if any), then the case's id, task
        type and payload as indented JSON."""
        body = json.dumps(self.payload, indent=2, sort_keys=True, ensure_ascii=False)
        text = f"Case {self.event_id} (task type {self.task_type}). Its payload, as JSON:\n{body}"
        return f"{instructions.strip()}\n\n{text}" if instructions else text

    def remaining(self) -> float:
        """Seconds left before the deadline (at least :data:`MIN_TIMEOUT`); without a
        deadline, 300."""
        if self.deadline is None:
            return 300.0
        return max(MIN_TIMEOUT, self.deadline - asyncio.get_running_loop().time())

    def require_tools_url(self) -> str:
        """The tools URL; :class:`ToolsError` when the case has none."""
        if not self.tools_url:
            raise ToolsError(
                f"case {self.event_id} has no tools URL: task type {self.task_type!r} has no "
                "tools: policy in the sidecar"
            )
        return self.tools_url

    async def tools(self) -> Client:
        """The case's MCP session: an official-SDK ``mcp.Client`` on the tools URL, opened on
        first use, closed by the service before the case is answered (:mod:`shadow.kit.mcp`).
        Raises :class:`ToolsError` when the case has no tools URL or the session does not
        open."""
        if self._session is None:
            self._session = ToolSession(self.require_tools_url(), read_timeout=self.remaining())
        return await self._session.client()

    def add_usage(
        self, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float | None = None
    ) -> None:
        """Count a model run's tokens, and its cost in USD when known."""
        self.usage.add(input_tokens, output_tokens, cost_usd)

    async def close(self) -> None:
        """Close the case's MCP session if one was opened (the service calls this before
        answering); idempotent, never raises."""
        session = self._session
        if session is not None:
            await session.close()
