"""What the gateway keeps of its calls: a ``tool_calls`` row per call (arguments already
redacted by the caller) counted in ``shadow_tool_calls_total``, and an audit entry per call
refused off the allowlist; both written in batches (:meth:`CallLog.flush`), put back for the
next flush when the store fails."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from shadow.gateway.catalog import ToolEntry
from shadow.metrics import Metrics
from shadow.model import AuditEntry
from shadow.store import Store, ToolCallRow

__all__ = ["OTHER", "CallLog"]

OTHER = "other"  # the metric label of a tool or class not known (a refusal before either)


class CallLog:
    """Call rows and the gateway's audit entries, held until :meth:`flush`."""

    def __init__(self, store: Store, metrics: Metrics, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._rows: list[ToolCallRow] = []
        self._audits: list[AuditEntry] = []

    def record(
        self,
        row: dict[str, Any],
        outcome: str,
        entry: ToolEntry | None,
        cls: str | None,
        error: str | None,
        seconds: float,
        approval_id: str | None,
    ) -> None:
        """One call: ``row`` holds its case, level, tool name and (redacted) arguments."""
        self._rows.append(
            ToolCallRow(
                at=self._clock(),
                upstream=entry.upstream if entry else None,
                tool_class=cls,
                outcome=outcome,
                latency_ms=seconds * 1000.0,
                error=error,
                approval_id=approval_id,
                **row,
            )
        )
        self._metrics.tool_call(
            row["task_type"], entry.exposed if entry else OTHER, cls or OTHER, outcome, seconds
        )

    def audit(self, entry: AuditEntry) -> None:
        self._audits.append(entry)

    async def flush(self) -> None:
        """Write the audit entries and call rows recorded so far."""
        audits, self._audits = self._audits, []
        try:
            await self._store.append_audit(audits)
        except BaseException:
            self._audits[:0] = audits
            raise
        rows, self._rows = self._rows, []
        try:
            await self._store.put_tool_calls(rows)
        except BaseException:
            self._rows[:0] = rows
            raise
