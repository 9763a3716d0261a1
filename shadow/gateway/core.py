"""The gateway's decisions: which tools a case sees, and what happens to each call.

- **Catalog.** ``tools/list`` asks every upstream for its tools now and keeps those the
  task type's allowlist admits, under their own names, prefixed ``<server>.`` only where two
  upstreams share a name. A call must name a listed tool *exactly* (no case folding, no
  Unicode normalisation): anything else is refused and audited, never forwarded; what is
  forwarded is the upstream's own name from the catalog, never the agent's string.
- **Class.** The policy's ``write``/``read`` lists decide; a tool they do not list is a read
  only if the upstream's tool list marks it ``readOnlyHint: true``, in a listing taken at
  most ``class_ttl`` seconds before the call (one listing per upstream at a time, shared by
  the calls waiting for it; ``0`` lists at every call). A tool once seen as a write, at a
  call or in any listing, stays one for the life of the process, whatever the upstream says
  later (an upstream cannot turn a write into a read by re-labelling it).
- **Enforcement.** :func:`shadow.gateway.rules.decide` on the ladder's level, freeze flag
  and audit sample *at the call* (so a level change applies to the next call).
- **Shadow capture.** A shadow session's writes are answered with the policy's shadow
  result and kept, in call order, as the case's actions (:meth:`Gateway.settle`).
- **Records.** Every call is a ``tool_calls`` row (written in batches every
  ``flush_every`` seconds; held writes are durable approvals before the agent hears of
  them) and counted in ``shadow_tool_calls_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from shadow.config import Settings
from shadow.errors import UpstreamError
from shadow.gateway.approvals import Approvals, LadderView
from shadow.gateway.capability import Capabilities, Grant
from shadow.gateway.rules import decide
from shadow.gateway.upstream import UpstreamClient
from shadow.metrics import Metrics
from shadow.model import Action, Level, ShadowDecision, WorkEvent
from shadow.policy import Policy
from shadow.store import ApprovalRow, Store, ToolCallRow
from shadow.tools_policy import TaskTools, ToolClass

__all__ = ["CallRefused", "Gateway", "ToolEntry"]

log = logging.getLogger("shadow.gateway")

REFUSED = -32001  # the JSON-RPC error code of a call the gateway refuses
OTHER = "other"


class CallRefused(Exception):
    """A tools/call answered with a JSON-RPC error (``code``, ``message``)."""

    def __init__(self, message: str, code: int = REFUSED) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ToolEntry:
    exposed: str  # the name the agent sees and calls
    upstream: str
    name: str  # the upstream's own name
    tool: Mapping[str, Any]  # the upstream's Tool object, with ``name`` = exposed

    @property
    def read_only_hint(self) -> bool | None:
        hint = (self.tool.get("annotations") or {}).get("readOnlyHint")
        return hint if isinstance(hint, bool) else None


@dataclass
class _ShadowCase:
    grant: Grant
    writes: list[Action] = field(default_factory=list)
    called: bool = False


def _catalog(lists: Mapping[str, list[dict[str, Any]]], rules: TaskTools) -> dict[str, ToolEntry]:
    owners: dict[str, int] = {}
    for tools in lists.values():
        for named in {str(t["name"]) for t in tools if isinstance(t.get("name"), str)}:
            owners[named] = owners.get(named, 0) + 1
    out: dict[str, ToolEntry] = {}
    for server, tools in lists.items():
        for tool in tools:
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                continue
            exposed = name if owners[name] == 1 else f"{server}.{name}"
            if exposed in out or not (rules.allowed(exposed) or rules.allowed(name)):
                continue
            out[exposed] = ToolEntry(exposed, server, name, {**tool, "name": exposed})
    return out


class Gateway:
    """See the module docstring. ``clock`` returns aware datetimes."""

    def __init__(
        self,
        *,
        policy: Policy,
        ladder: LadderView,
        store: Store,
        metrics: Metrics,
        upstreams: Mapping[str, UpstreamClient],
        capabilities: Capabilities,
        clock: Callable[[], datetime],
        base_url: str,
        session_ttl: float,
        approval_wait: float,
        approval_timeout: float,
        flush_every: float = 0.2,
        class_ttl: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.ladder = ladder
        self.store = store
        self.metrics = metrics
        self.upstreams = dict(upstreams)
        self.capabilities = capabilities
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self.session_ttl = session_ttl
        self._flush_every = flush_every
        self._rows: list[ToolCallRow] = []
        self._flusher: asyncio.Task[None] | None = None
        self._cases: dict[str, _ShadowCase] = {}  # by event id: the open shadow sessions
        self._writes_seen: set[tuple[str, str]] = set()  # (upstream, name) ever seen as write
        self._class_ttl = class_ttl
        self._monotonic = monotonic
        # Per upstream: (when listed, monotonic; the tools it marked readOnlyHint: true).
        self._read_hints: dict[str, tuple[float, frozenset[str]]] = {}
        # Per upstream: the listing in flight for classes, and when it started.
        self._listing: dict[str, tuple[float, asyncio.Future[Any]]] = {}
        self._listing_all: asyncio.Future[dict[str, list[dict[str, Any]]]] | None = None
        # Per task type, the catalog of the last listing (routing only; classes are not
        # cached): refreshed by tools/list and by a call naming a tool it does not hold.
        self._catalogs: dict[str, dict[str, ToolEntry]] = {}
        self.approvals = Approvals(
            store,
            ladder,
            self._forward_approved,
            clock=clock,
            wait=approval_wait,
            timeout=approval_timeout,
            policy_hash=lambda t: p.hash if (p := policy.for_task(t)) else None,
            observe=self._approval_settled,
        )

    @classmethod
    def create(
        cls,
        settings: Settings,
        policy: Policy,
        ladder: LadderView,
        store: Store,
        metrics: Metrics,
        upstreams: Mapping[str, UpstreamClient],
        clock: Callable[[], datetime],
        base_url: str,
    ) -> Gateway:
        """The gateway ``shadow run`` wires (knobs from ``settings.gateway_*``)."""
        secret = settings.gateway_secret
        return cls(
            policy=policy,
            ladder=ladder,
            store=store,
            metrics=metrics,
            upstreams=upstreams,
            capabilities=Capabilities(secret.get_secret_value().encode() if secret else None),
            clock=clock,
            base_url=base_url,
            session_ttl=settings.gateway_session_ttl,
            approval_wait=settings.gateway_approval_wait,
            approval_timeout=settings.gateway_approval_timeout,
            class_ttl=settings.gateway_class_ttl,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def frozen(self, actor: str, reason: str) -> None:
        """After a freeze: every held write is refused at once."""
        refused = await self.approvals.refuse_all(actor=actor, reason=f"frozen: {reason}")
        if refused:
            log.warning("gateway: freeze refused %d held writes", refused)

    async def start(self) -> None:
        for client in self.upstreams.values():
            client.start()
        await self.approvals.start()
        self._pending_gauge()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def close(self) -> None:
        """Idempotent: stops waiting calls and expiry, writes the last call rows, closes
        the upstream clients."""
        task, self._flusher = self._flusher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.approvals.close()
        with contextlib.suppress(Exception):
            await self.flush()
        for client in self.upstreams.values():
            await client.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every)
            self._pending_gauge()  # the oldest approval's age grows while nothing happens
            try:
                await self.flush()
            except Exception:
                log.exception("gateway: writing tool call rows failed; retrying")

    async def flush(self) -> None:
        """Write the call rows recorded so far."""
        rows, self._rows = self._rows, []
        try:
            await self.store.put_tool_calls(rows)
        except BaseException:
            self._rows[:0] = rows
            raise

    # -- sessions -------------------------------------------------------------------------

    def rules(self, task_type: str) -> TaskTools | None:
        task = self.policy.for_task(task_type)
        return task.tools if task is not None else None

    def open_session(self, task_type: str, event_id: str, *, shadow: bool) -> dict[str, Any]:
        """A tools URL bound to (task type, event id, shadow), its level and expiry. A new
        shadow session replaces the case's previous one (whose calls are then refused)."""
        token, grant = self.capabilities.issue(
            task_type, event_id, shadow=shadow, ttl=self.session_ttl
        )
        if shadow:
            old = self._cases.pop(event_id, None)
            if old is not None:
                self.capabilities.revoke(old.grant)
            self._cases[event_id] = _ShadowCase(grant)
        return {
            "tools_url": f"{self.base_url}/mcp/{token}",
            "level": str(self.ladder.level(task_type)),
            "expires_at": datetime.fromtimestamp(grant.expires_at, self.clock().tzinfo).isoformat(),
        }

    def shadow_tools_url(self, event: WorkEvent) -> str | None:
        """The agent contract's ``tools_url`` for a shadow request (``None`` when the task
        type has no tool rules)."""
        if self.rules(event.task_type) is None:
            return None
        return str(self.open_session(event.task_type, event.event_id, shadow=True)["tools_url"])

    def settle(self, event: WorkEvent, decision: ShadowDecision) -> ShadowDecision:
        """Close the case's shadow session. When its agent called a tool through it, the
        writes captured are the decision's actions; the actions its answer listed are kept
        as ``declared_actions`` when they differ (the comparison reports it)."""
        case = self._cases.pop(event.event_id, None)
        if case is None:
            return decision
        self.capabilities.revoke(case.grant)
        if not case.called or decision.error is not None:
            return decision
        captured = tuple(case.writes)
        declared = decision.actions if decision.actions != captured else None
        return replace(decision, actions=captured, declared_actions=declared, tool_calls=True)

    def check(self, token: str) -> tuple[Grant | None, str]:
        grant, why = self.capabilities.check(token)
        if grant is not None and grant.shadow:
            case = self._cases.get(grant.event_id)
            if case is None or case.grant.nonce != grant.nonce:
                return None, "the session is closed (its case was answered)"
        return grant, why

    # -- tools ----------------------------------------------------------------------------

    async def _lists(self, only: str | None = None) -> dict[str, list[dict[str, Any]]]:
        names = [only] if only is not None else list(self.upstreams)

        async def one(name: str) -> list[dict[str, Any]]:
            listed_at = self._monotonic()
            try:
                tools = await self.upstreams[name].list_tools()
            except UpstreamError as exc:
                log.warning("gateway: %s", exc)
                return []
            self._learn(name, tools, listed_at)
            return tools

        got = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, got, strict=True))

    async def list_tools(self, grant: Grant) -> list[dict[str, Any]]:
        rules = self.rules(grant.task_type)
        if rules is None:
            return []
        entries = _catalog(await self._lists(), rules)
        self._catalogs[grant.task_type] = entries
        return [dict(e.tool) for e in entries.values()]

    async def _entry(self, task_type: str, rules: TaskTools, name: str) -> ToolEntry | None:
        entries = self._catalogs.get(task_type)
        if entries is None or name not in entries:
            if self._listing_all is None:  # one listing at a time, shared by waiting calls
                self._listing_all = asyncio.ensure_future(self._lists())
                self._listing_all.add_done_callback(self._listed_all)
            entries = _catalog(await asyncio.shield(self._listing_all), rules)
            self._catalogs[task_type] = entries
        return entries.get(name)

    def _listed_all(self, listing: asyncio.Future[Any]) -> None:
        if self._listing_all is listing:
            self._listing_all = None

    def _learn(self, upstream: str, tools: list[dict[str, Any]], listed_at: float) -> None:
        """Keep a listing's read hints; every tool it does not mark read-only is a write
        from now on."""
        reads = set()
        for tool in tools:
            name = tool.get("name")
            if not isinstance(name, str):
                continue
            if (tool.get("annotations") or {}).get("readOnlyHint") is True:
                reads.add(name)
            else:
                self._writes_seen.add((upstream, name))
        held = self._read_hints.get(upstream)
        if held is None or held[0] <= listed_at:  # a slower, older listing does not win
            self._read_hints[upstream] = (listed_at, frozenset(reads))

    async def _reads_of(self, upstream: str) -> frozenset[str]:
        """The tools ``upstream`` marks read-only, listed at most ``class_ttl`` s ago."""
        held = self._read_hints.get(upstream)
        if held is not None and self._monotonic() - held[0] <= self._class_ttl:
            return held[1]
        running = self._listing.get(upstream)
        if running is None:
            running = (self._monotonic(), asyncio.ensure_future(self._lists(upstream)))
            self._listing[upstream] = running
            running[1].add_done_callback(lambda _: self._listing.pop(upstream, None))
        started, listing = running
        await asyncio.shield(listing)  # a caller that gives up leaves the listing to the rest
        held = self._read_hints.get(upstream)
        if held is None or held[0] < started:  # the listing failed: nothing is a read
            return frozenset()
        return held[1]

    async def _classify(self, rules: TaskTools, entry: ToolEntry) -> ToolClass:
        listed = rules.listed_class(entry.exposed)
        if listed is None and entry.exposed != entry.name:
            listed = rules.listed_class(entry.name)
        if listed is not None:
            return listed
        if (entry.upstream, entry.name) in self._writes_seen:
            return "write"
        reads = await self._reads_of(entry.upstream)
        if entry.name in reads and (entry.upstream, entry.name) not in self._writes_seen:
            return "read"
        self._writes_seen.add((entry.upstream, entry.name))
        return "write"

    async def call_tool(self, grant: Grant, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """The result of one tools/call; CallRefused for an error answer."""
        start = time.perf_counter()
        task_type = grant.task_type
        rules = self.rules(task_type)
        level = self.ladder.level(task_type)
        case = self._cases.get(grant.event_id) if grant.shadow else None
        if case is not None and case.grant.nonce != grant.nonce:
            case = None  # a replaced session (an earlier attempt's): it adds nothing to the case
        if case is not None:
            case.called = True
        row = {
            "task_type": task_type,
            "event_id": grant.event_id,
            "shadow": grant.shadow,
            "level": str(level),
            "tool": name[:200],
            "args": args,
        }

        def record(
            outcome: str,
            entry: ToolEntry | None,
            cls: str | None,
            error: str | None,
            approval_id: str | None = None,
        ) -> None:
            self._record(row, outcome, entry, cls, error, time.perf_counter() - start, approval_id)

        entry = None if rules is None else await self._entry(task_type, rules, name)
        if rules is None or entry is None:
            why = f"tool {name!r} is not on {task_type}'s allowlist: refused"
            record("refused", None, None, why)
            raise CallRefused(why)
        cls = await self._classify(rules, entry)
        verdict = decide(
            task_type=task_type,
            tool_class=cls,
            shadow=grant.shadow,
            level=level,
            frozen=self.ladder.frozen,
            audit=bool(level >= Level.L3 and self.ladder.route(task_type, grant.event_id)["audit"]),
        )
        if verdict.action == "refuse":
            record("refused", entry, cls, verdict.reason)
            raise CallRefused(verdict.reason)
        if verdict.action == "capture":
            if case is None or self._cases.get(grant.event_id) is not case:
                # The session closed or was replaced while this call was being classified.
                why = "the session is closed (its case was answered or retried)"
                record("refused", entry, cls, why)
                raise CallRefused(why)
            case.writes.append(Action(entry.exposed, args))
            record("captured", entry, cls, None)
            structured = rules.shadow_result_for(entry.exposed)
            return {
                "content": [{"type": "text", "text": json.dumps(structured)}],
                "structuredContent": structured,
                "isError": False,
            }
        if verdict.action == "hold":
            return await self._hold(grant, entry, cls, args, level, record)
        try:
            result = await self.upstreams[entry.upstream].call_tool(entry.name, args)
        except UpstreamError as exc:
            record("forwarded", entry, cls, str(exc))
            raise CallRefused(str(exc), code=-32603) from None
        record("forwarded", entry, cls, None)
        return result

    async def _hold(
        self,
        grant: Grant,
        entry: ToolEntry,
        cls: str,
        args: dict[str, Any],
        level: Level,
        record: Callable[..., None],
    ) -> dict[str, Any]:
        settled = await self.approvals.hold(
            task_type=grant.task_type,
            event_id=grant.event_id,
            level=level,
            tool=entry.exposed,
            upstream=entry.upstream,
            upstream_tool=entry.name,
            args=args,
        )
        record("held", entry, cls, None, settled.row.id)
        self._pending_gauge()
        if settled.outcome == "pending":
            pending = {
                "status": "pending",
                "approval_id": settled.row.id,
                "expires_at": settled.row.expires_at.isoformat(),
            }
            return {
                "content": [{"type": "text", "text": json.dumps(pending)}],
                "structuredContent": pending,
                "isError": False,
            }
        if settled.result is not None:
            return settled.result
        raise CallRefused(settled.error or settled.outcome)

    async def _forward_approved(self, row: ApprovalRow) -> dict[str, Any]:
        client = self.upstreams.get(row.upstream)
        if client is None:
            raise UpstreamError(f"upstream {row.upstream} is not configured any more")
        args = row.args if isinstance(row.args, dict) else {}
        return await client.call_tool(row.upstream_tool, args)

    def _approval_settled(self, row: ApprovalRow, outcome: str, waited: float) -> None:
        data = {
            "task_type": row.task_type,
            "event_id": row.event_id,
            "shadow": False,
            "level": row.level,
            "tool": row.tool,
            "args": row.args,
        }
        entry = ToolEntry(row.tool, row.upstream, row.upstream_tool, {})
        error = row.error if outcome == "approved" else row.reason
        self._record(data, outcome, entry, "write", error, waited, row.id)
        self._pending_gauge()

    # -- records --------------------------------------------------------------------------

    def _record(
        self,
        row: dict[str, Any],
        outcome: str,
        entry: ToolEntry | None,
        cls: str | None,
        error: str | None,
        seconds: float,
        approval_id: str | None,
    ) -> None:
        self._rows.append(
            ToolCallRow(
                at=self.clock(),
                upstream=entry.upstream if entry else None,
                tool_class=cls,
                outcome=outcome,
                latency_ms=seconds * 1000.0,
                error=error,
                approval_id=approval_id,
                **row,
            )
        )
        self.metrics.tool_call(
            row["task_type"], entry.exposed if entry else OTHER, cls or OTHER, outcome, seconds
        )

    def _pending_gauge(self) -> None:
        now = self.clock()
        by_task: dict[str, list[float]] = {}
        for r in self.approvals.pending:
            by_task.setdefault(r.task_type, []).append((now - r.created_at).total_seconds())
        self.metrics.tool_approvals(by_task)
