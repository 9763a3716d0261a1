"""Writes held for a human (L2, and L3 items in the audit sample): hold, wait, approve,
reject, expire, freeze.

Every held write is a row of ``tool_approvals`` before the agent hears anything
(:mod:`shadow.store.gateway` has the states and why forwarding is at most once). The
agent's call then waits up to ``wait`` seconds for a decision:

- approved in time: the write is forwarded (once) and the call answers the upstream's result;
- rejected, expired or refused in time: the call answers a JSON-RPC error saying so;
- still pending after ``wait``: the call answers a result whose structured content is
  ``{"status": "pending", "approval_id", "expires_at"}``; the approval stays open until
  ``timeout`` after it was held. Approving it later forwards it then (the outcome is on the
  approval: ``GET /v1/approvals/{id}``); nobody deciding by then expires it (fails closed).

A freeze refuses every pending approval at once; approving is refused while frozen or when
the task type's level no longer allows writes that wait for approval (below L2), and that is
checked again right before the write is sent (after the approval is claimed): a freeze or a
demotion meanwhile ends it ``refused``, with nothing sent.

A held write is exactly one tool and its arguments, named by their digest (sha256 over the
canonical JSON, before redaction): the approval shows the digest, forwarding checks it, and an
identical call of the same case (same digest and repeat key) attaches to the pending approval
instead of holding a second one (:meth:`Approvals.find`, :meth:`Approvals.attach`). Arguments
the policy redacts are stored without those fields; the full ones are kept in memory only, so
an approval whose arguments were redacted cannot be forwarded after a restart (it fails
closed, and the agent asks again).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from shadow.errors import AutonomyError, NotForwarded, UpstreamError
from shadow.model import AuditEntry, Level
from shadow.store import ApprovalRow, Store
from shadow.supervisor import TaskGroup

__all__ = ["Approvals", "Forwarder", "LadderView", "Settled"]

log = logging.getLogger("shadow.gateway")


class LadderView(Protocol):
    """What the gateway reads from the :class:`shadow.ladder.Ladder` (never writes)."""

    @property
    def frozen(self) -> bool: ...

    def level(self, task_type: str) -> Level: ...

    def route(self, task_type: str, event_id: str) -> dict[str, Any]: ...


Forwarder = Callable[[ApprovalRow, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends an approved write (its row and its full arguments) to its upstream and returns the
result; raises UpstreamError, or NotForwarded when the last check refuses it."""

Observer = Callable[[ApprovalRow, str, float], None]
"""Told each settled approval: (row, outcome, seconds it waited) — call rows and metrics."""


@dataclass(frozen=True, slots=True)
class Settled:
    """How a held call ended: ``outcome`` approved (``result`` set, or ``error`` when the
    upstream failed), rejected, expired or refused (``error`` says why), or pending."""

    outcome: str
    row: ApprovalRow
    result: dict[str, Any] | None = None
    error: str | None = None


class Approvals:
    """Held writes of one sidecar. ``clock`` returns aware datetimes."""

    def __init__(
        self,
        store: Store,
        ladder: LadderView,
        forward: Forwarder,
        *,
        clock: Callable[[], datetime],
        wait: float,
        timeout: float,
        policy_hash: Callable[[str], str | None],
        observe: Observer,
        group: TaskGroup,
    ) -> None:
        self._store = store
        self._ladder = ladder
        self._forward = forward
        self._clock = clock
        self.wait = wait
        self.timeout = timeout
        self._policy_hash = policy_hash
        self._observe = observe
        # One future per open approval, shared by every call waiting on it (the first and
        # its identical retries); set when it settles.
        self._waiters: dict[str, asyncio.Future[Settled]] = {}
        self._pending: dict[str, ApprovalRow] = {}  # the open approvals, by id
        self._args: dict[str, dict[str, Any]] = {}  # full arguments of redacted holds, by id
        self._group = group

    @property
    def pending(self) -> list[ApprovalRow]:
        return sorted(self._pending.values(), key=lambda r: (r.created_at, r.id))

    async def start(self) -> None:
        """Fail what a dead process was forwarding, load what is pending, start expiring."""
        failed = await self._store.fail_interrupted()
        if failed:
            log.warning(
                "gateway: %d approvals were being forwarded at a crash: failed", len(failed)
            )
        for row in await self._store.approvals(status="pending", limit=1_000_000):
            self._pending[row.id] = row
        await self.sweep()
        self._group.spawn("approvals-sweep", self._sweep_loop)

    async def close(self) -> None:
        """Stops the expiry (with the group's other tasks) and every waiting call."""
        await self._group.stop()
        for fut in self._waiters.values():
            fut.cancel()
        self._waiters.clear()
        self._args.clear()

    async def _sweep_loop(self) -> None:
        every = min(1.0, max(self.timeout / 4, 0.05))
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
                self._group.recovered("approvals-sweep")
            except Exception as exc:  # what is due stays pending for the next round
                self._group.retrying("approvals-sweep", exc, retry_in=every)

    async def sweep(self) -> None:
        """Expire the approvals whose time is up (fail closed)."""
        now = self._clock()
        for row in [r for r in self._pending.values() if r.expires_at <= now]:
            await self._close(
                row, "expired", "gateway", f"not approved within {self.timeout:g} s", "expired"
            )

    async def hold(
        self,
        *,
        task_type: str,
        event_id: str,
        level: Level,
        tool: str,
        upstream: str,
        upstream_tool: str,
        args: dict[str, Any],
        stored_args: dict[str, Any],
        digest: str,
        repeat: str | None,
    ) -> str:
        """Store the held write (``stored_args``: redacted); its approval id."""
        now = self._clock()
        row = ApprovalRow(
            id="a-" + secrets.token_hex(8),
            created_at=now,
            expires_at=now + timedelta(seconds=self.timeout),
            task_type=task_type,
            event_id=event_id,
            level=str(level),
            tool=tool,
            upstream=upstream,
            upstream_tool=upstream_tool,
            args=stored_args,
            digest=digest,
            repeat_key=repeat,
        )
        await self._store.put_approval(row)
        self._pending[row.id] = row
        if stored_args != args:
            self._args[row.id] = args
        return row.id

    def find(self, event_id: str, digest: str, repeat: str | None) -> str | None:
        """The pending approval of this exact write of this case, if there is one."""
        for row in self._pending.values():
            if row.event_id == event_id and row.digest == digest and row.repeat_key == repeat:
                return row.id
        return None

    async def attach(self, approval_id: str) -> Settled:
        """Wait (up to ``wait`` seconds) for the approval's decision; how it ended, or
        ``pending``. One being forwarded now is waited for too; a settled approval answers
        at once from the store."""
        fut = self._waiters.get(approval_id)
        if fut is None:
            if approval_id not in self._pending:
                stored = await self._store.approval(approval_id)
                if stored is None:
                    return Settled("refused", _gone(approval_id), error="the approval is gone")
                return _settled_from(stored)
            fut = self._waiters[approval_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=self.wait)
        except TimeoutError:
            row = self._pending.get(approval_id) or await self._store.approval(approval_id)
            return Settled("pending", row if row is not None else _gone(approval_id))

    def _audit(self, row: ApprovalRow, action: str, actor: str, reason: str) -> AuditEntry:
        return AuditEntry(
            at=self._clock(),
            task_type=row.task_type,
            actor=actor,
            action=action,
            from_level=None,
            to_level=None,
            reason=reason,
            evidence={
                "approval_id": row.id,
                "event_id": row.event_id,
                "tool": row.tool,
                "upstream": row.upstream,
                "held_at": row.level,
                "args_digest": row.digest,
            },
            policy_hash=self._policy_hash(row.task_type),
        )

    def _settle(self, settled: Settled) -> None:
        self._pending.pop(settled.row.id, None)
        self._args.pop(settled.row.id, None)
        waited = (self._clock() - settled.row.created_at).total_seconds()
        self._observe(settled.row, settled.outcome, waited)
        fut = self._waiters.pop(settled.row.id, None)
        if fut is not None and not fut.done():
            fut.set_result(settled)

    async def _close(
        self, row: ApprovalRow, status: str, actor: str, reason: str, outcome: str
    ) -> Settled | None:
        audit = self._audit(row, f"tool_{outcome}", actor, reason)
        done = await self._store.decide_approval(
            row.id, status, actor=actor, reason=reason, now=self._clock(), audit=audit
        )
        if done is None:
            self._pending.pop(row.id, None)
            self._args.pop(row.id, None)
            return None
        settled = Settled(outcome, done, error=f"{outcome} by {actor}: {reason}")
        self._settle(settled)
        return settled

    async def _open(self, approval_id: str) -> ApprovalRow:
        row = self._pending.get(approval_id)
        if row is not None:
            return row
        stored = await self._store.approval(approval_id)
        if stored is None:
            raise KeyError(approval_id)
        raise AutonomyError(f"approval {approval_id} is {stored.status}, not pending")

    async def approve(self, approval_id: str, *, actor: str, reason: str) -> Settled:
        """Forward the held write once. KeyError: unknown id; AutonomyError: not pending,
        frozen, or the level no longer allows it (then it is refused: fails closed)."""
        row = await self._open(approval_id)
        if self._ladder.frozen:
            raise AutonomyError("the sidecar is frozen: held writes cannot be approved")
        level = self._ladder.level(row.task_type)
        if level < Level.L2:
            await self._close(
                row,
                "refused",
                actor,
                f"{row.task_type} is now at {level}: writes are refused",
                "refused",
            )
            raise AutonomyError(
                f"{row.task_type} is now at {level}, below L2: the held write was refused"
            )
        audit = self._audit(row, "tool_approve", actor, reason)
        claimed = await self._store.decide_approval(
            row.id, "forwarding", actor=actor, reason=reason, now=self._clock(), audit=audit
        )
        if claimed is None:
            self._pending.pop(row.id, None)
            raise AutonomyError(f"approval {approval_id} was decided meanwhile")
        if row.id not in self._waiters:  # an identical retry now waits for the forward
            self._waiters[row.id] = asyncio.get_running_loop().create_future()
        self._pending.pop(row.id, None)
        args = self._args.pop(row.id, None)
        try:
            result = await self._forward(claimed, args if args is not None else dict(row.args))
        except NotForwarded as exc:
            await self._store.finish_approval(row.id, status="refused", error=str(exc))
            settled = Settled("refused", replace(claimed, status="refused", error=str(exc)))
            settled = replace(settled, error=str(exc))
            self._settle(settled)
            raise AutonomyError(str(exc)) from None
        except UpstreamError as exc:
            await self._store.finish_approval(row.id, status="failed", error=str(exc))
            settled = Settled(
                "approved", replace(claimed, status="failed", error=str(exc)), error=str(exc)
            )
        else:
            await self._store.finish_approval(row.id, status="forwarded", result=result)
            settled = Settled(
                "approved", replace(claimed, status="forwarded", result=result), result=result
            )
        self._settle(settled)
        return settled

    async def reject(self, approval_id: str, *, actor: str, reason: str) -> Settled:
        row = await self._open(approval_id)
        settled = await self._close(row, "rejected", actor, reason, "rejected")
        if settled is None:
            raise AutonomyError(f"approval {approval_id} was decided meanwhile")
        return settled

    async def refuse_all(self, *, actor: str, reason: str) -> int:
        """A freeze: every pending approval refused at once; how many."""
        n = 0
        for row in self.pending:
            if await self._close(row, "refused", actor, reason, "refused") is not None:
                n += 1
        return n


def _gone(approval_id: str) -> ApprovalRow:
    epoch = datetime.fromtimestamp(0).astimezone()
    return ApprovalRow(approval_id, epoch, epoch, "", "", "", "", "", "", {}, status="refused")


def _settled_from(row: ApprovalRow) -> Settled:
    """How a stored, settled approval ended, as a held call's answer."""
    if row.status == "forwarded":
        return Settled("approved", row, result=row.result)
    if row.status in ("failed", "forwarding"):
        return Settled("approved", row, error=row.error or "the write's outcome is unknown")
    return Settled(row.status, row, error=f"{row.status} by {row.decided_by}: {row.reason}")
