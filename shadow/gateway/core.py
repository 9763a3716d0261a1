"""The gateway's decisions: which tools a case sees, and what happens to each call.

- **Catalog and class.** Which tools a case sees and which of them are reads (fails closed)
  are decided by :mod:`shadow.gateway.catalog` (see its docstring), whose
  :class:`~shadow.gateway.catalog.Catalog` the gateway owns. A call naming no listed tool
  exactly is refused, recorded and audited here, never forwarded; what is forwarded is the
  upstream's own name from the catalog, never the agent's string.
- **Enforcement.** :func:`shadow.gateway.rules.decide` on the ladder's level, freeze flag and
  audit sample read *after* every await that precedes the decision, and read again right
  before a write is sent (after the upstream connection is ready, and after an approval is
  claimed): a demotion or a freeze while a call waits refuses it (:class:`NotForwarded`).
  The call's row records the level in force when it was decided.
- **One write per write.** Within one tools URL, a write identical to one already captured,
  held or forwarded (same tool, same canonical arguments, same ``_meta`` repeat key) attaches
  to it: it answers what the first answers and is never captured, held or sent twice.
- **Shadow capture.** A shadow session's writes are answered with a result valid against
  the tool's ``outputSchema`` (the policy's ``shadow_result``, checked against the schema, or
  one synthesised from it) and kept, in call order, as the case's actions (:meth:`settle`).
- **Records.** Every call is a ``tool_calls`` row with its arguments redacted per the
  policy (written in batches every ``flush_every`` seconds; held writes are durable
  approvals before the agent hears of them) and counted in ``shadow_tool_calls_total``.
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

from shadow import fastjson
from shadow.config import Settings
from shadow.errors import NotForwarded, UpstreamError
from shadow.gateway.approvals import Approvals, LadderView, Settled
from shadow.gateway.capability import Capabilities, Grant, McpSessions
from shadow.gateway.catalog import Catalog, ToolEntry
from shadow.gateway.records import CallLog
from shadow.gateway.results import ShadowAnswers, ShadowResultError
from shadow.gateway.rules import Decision, decide, write_digest
from shadow.gateway.upstream import UpstreamClient
from shadow.metrics import Metrics
from shadow.model import Action, AuditEntry, Level, ShadowDecision, WorkEvent
from shadow.policy import Policy
from shadow.store import ApprovalRow, Store
from shadow.supervisor import Supervisor
from shadow.tools_policy import TaskTools, ToolClass, redact_args
from shadow.tracing import NO_TRACING, McpRequest, Tracer

__all__ = ["CallRefused", "Gateway", "ToolEntry", "describe_gateway"]

log = logging.getLogger("shadow.gateway")

REFUSED = -32001  # the JSON-RPC error code of a call the gateway refuses
INTERNAL = -32603
# Off-allowlist refusals audited per session (a hostile agent cannot flood the audit log).
_AUDITS_PER_SESSION = 20


class CallRefused(Exception):
    """A tools/call answered with a JSON-RPC error (``code``, ``message``)."""

    def __init__(self, message: str, code: int = REFUSED, *, sent: bool = False) -> None:
        self.code = code
        self.sent = sent  # the request may have reached the upstream
        super().__init__(message)


Answer = tuple[str, Any]
"""What a write ended as, shared by its identical retries: ``("result", result)``,
``("error", (code, message))``, or ``("approval", approval_id)`` for a held write."""


@dataclass(eq=False)
class _Write:
    answer: asyncio.Future[Answer]
    approval_id: str | None = None


@dataclass(eq=False)
class _Session:
    """One tools URL's state: its distinct writes (by digest and repeat key) and, for a
    shadow session, the writes captured in call order."""

    grant: Grant
    writes: list[Action] = field(default_factory=list)
    seen: dict[tuple[str, str | None], _Write] = field(default_factory=dict)
    called: bool = False
    audited: int = 0


def describe_gateway(policy: Policy) -> list[str]:
    """Start-up lines: which tools each task type's gateway treats as reads, and why."""
    lines = []
    for name, upstream in policy.upstreams.items():
        trust = (
            "its readOnlyHint: true tools are reads (trust_read_only_hint: true)"
            if upstream.trust_read_only_hint
            else "its tools are reads only where a policy lists them under read:"
        )
        lines.append(f"gateway: upstream {name}: {trust}")
    for task_type, task in policy.task_types.items():
        if task.tools is not None:
            reads = ", ".join(task.tools.read) or "none"
            lines.append(f"gateway: {task_type}: reads by policy: {reads}; all other tools write")
    return lines


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
        max_result_bytes: int = 4 * 1024 * 1024,
        monotonic: Callable[[], float] = time.monotonic,
        supervisor: Supervisor | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self.policy = policy
        # Each tools/call answered is a span of its case's trace (shadow.tracing).
        self.tracer = tracer
        self.ladder = ladder
        self.store = store
        self.metrics = metrics
        self.upstreams = dict(upstreams)
        self.capabilities = capabilities
        self.mcp_sessions = McpSessions()
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self.session_ttl = session_ttl
        self.max_result_bytes = max_result_bytes
        self._flush_every = flush_every
        self.calls = CallLog(store, metrics, clock)
        # Its loops (and the approvals' expiry) run in a group of the sidecar's supervisor.
        self._group = (supervisor or Supervisor(metrics)).group("gateway")
        self._sessions: dict[str, _Session] = {}  # by capability nonce: sessions with calls
        self._cases: dict[str, _Session] = {}  # by event id: the open shadow sessions
        self.catalog = Catalog(
            policy=policy, upstreams=self.upstreams, class_ttl=class_ttl, monotonic=monotonic
        )
        self._answers = ShadowAnswers()  # what captured writes answer
        self.approvals = Approvals(
            store,
            ladder,
            self._forward_approved,
            clock=clock,
            wait=approval_wait,
            timeout=approval_timeout,
            policy_hash=lambda t: p.hash if (p := policy.for_task(t)) else None,
            observe=self._approval_settled,
            group=self._group,
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
        supervisor: Supervisor | None = None,
        tracer: Tracer = NO_TRACING,
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
            max_result_bytes=settings.gateway_max_result_bytes,
            supervisor=supervisor,
            tracer=tracer,
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
        for line in describe_gateway(self.policy):
            log.info("%s", line)
        for client in self.upstreams.values():
            client.start()
        await self.approvals.start()
        self._pending_gauge()
        self._group.spawn("gateway-flush", self._flush_loop)

    async def close(self) -> None:
        """Idempotent: stops waiting calls and expiry, writes the last call rows, closes
        the upstream clients."""
        await self._group.stop()
        await self.approvals.close()
        with contextlib.suppress(Exception):
            await self.flush()
        for client in self.upstreams.values():
            await client.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every)
            self._pending_gauge()  # the oldest approval's age grows while nothing happens
            self._drop_expired()
            try:
                await self.flush()
                self._group.recovered("gateway-flush")
            except Exception as exc:  # the rows stay queued for the next round
                self._group.retrying("gateway-flush", exc, retry_in=self._flush_every)

    async def flush(self) -> None:
        """Write the call rows (and audit entries) recorded so far."""
        await self.calls.flush()

    def _drop_expired(self) -> None:
        now = time.time()
        for nonce in [n for n, s in self._sessions.items() if s.grant.expires_at <= now]:
            self._sessions.pop(nonce, None)
        self.mcp_sessions.drop_expired(now)

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
                self._end(old)
            session = _Session(grant)
            self._cases[event_id] = session
            self._sessions[grant.nonce] = session
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

    def _end(self, session: _Session) -> None:
        self.capabilities.revoke(session.grant)
        self._sessions.pop(session.grant.nonce, None)
        self.mcp_sessions.drop(session.grant.nonce)

    def settle(self, event: WorkEvent, decision: ShadowDecision) -> ShadowDecision:
        """Close the case's shadow session (and its MCP sessions). When its agent called a
        tool through it, the writes captured are the decision's actions; the actions its
        answer listed, when it listed any, are kept as ``declared_actions`` when they
        differ (the comparison reports it)."""
        case = self._cases.pop(event.event_id, None)
        if case is None:
            return decision
        self._end(case)
        if not case.called or decision.error is not None:
            return decision
        captured = tuple(case.writes)
        declared = None
        if decision.actions_declared and decision.actions != captured:
            declared = decision.actions
        return replace(decision, actions=captured, declared_actions=declared, tool_calls=True)

    def check(self, token: str) -> tuple[Grant | None, str]:
        grant, why = self.capabilities.check(token)
        if grant is not None and grant.shadow:
            case = self._cases.get(grant.event_id)
            if case is None or case.grant.nonce != grant.nonce:
                return None, "the session is closed (its case was answered)"
        return grant, why

    def _session(self, grant: Grant) -> _Session | None:
        """The state of ``grant``'s tools URL; ``None`` for a shadow session that is no
        longer its case's open one (an earlier attempt's, or one that settled)."""
        if grant.shadow:
            case = self._cases.get(grant.event_id)
            return case if case is not None and case.grant.nonce == grant.nonce else None
        session = self._sessions.get(grant.nonce)
        if session is None:
            session = self._sessions[grant.nonce] = _Session(grant)
        return session

    # -- tools ----------------------------------------------------------------------------

    async def list_tools(self, grant: Grant) -> list[dict[str, Any]]:
        rules = self.rules(grant.task_type)
        if rules is None:
            return []
        entries = await self.catalog.listed(grant.task_type, rules)
        for entry in entries.values():
            schema = entry.tool.get("outputSchema")
            problem = self._answers.problem(
                grant.task_type,
                entry.exposed,
                rules.configured_result(entry.exposed),
                schema if isinstance(schema, dict) else None,
            )
            if problem is not None:
                log.error("gateway: %s", problem)
        return [dict(e.tool) for e in entries.values()]

    def _verdict(self, grant: Grant, cls: ToolClass) -> tuple[Level, Decision]:
        """The ladder's answer *now*: level, freeze flag and audit sample read at once."""
        task_type = grant.task_type
        level = self.ladder.level(task_type)
        audit = bool(
            not grant.shadow
            and cls == "write"
            and level >= Level.L3
            and self.ladder.route(task_type, grant.event_id)["audit"]
        )
        verdict = decide(
            task_type=task_type,
            tool_class=cls,
            shadow=grant.shadow,
            level=level,
            frozen=self.ladder.frozen,
            audit=audit,
        )
        return level, verdict

    def _captured_result(self, task_type: str, rules: TaskTools, entry: ToolEntry) -> Answer:
        schema = entry.tool.get("outputSchema")
        try:
            result = self._answers.answer(
                task_type,
                entry.exposed,
                rules.configured_result(entry.exposed),
                schema if isinstance(schema, dict) else None,
            )
        except ShadowResultError as exc:
            log.error("gateway: %s", exc)
            return "error", (INTERNAL, str(exc))
        return "result", result

    async def call_tool(
        self,
        grant: Grant,
        name: str,
        args: dict[str, Any],
        *,
        repeat: str | None = None,
        request: McpRequest | None = None,
    ) -> dict[str, Any]:
        """The result of one tools/call; CallRefused for an error answer. ``repeat`` is the
        client's repeat key (``_meta["io.shadow/repeat"]``): identical writes with distinct
        keys are distinct writes. With tracing on, the call is a ``tools/call {tool}`` span
        of its case (``request``: the MCP request's id, session and ``traceparent``), whose
        ``error.type`` is ``tool_error`` for a result with ``isError``, else the code of an
        error answer."""
        if not self.tracer.enabled:
            return await self._call_tool(grant, name, args, repeat, None)
        start = time.time_ns()
        seen: dict[str, Any] = {}
        error_type: str | None = None
        error: str | None = None
        try:
            result = await self._call_tool(grant, name, args, repeat, seen)
        except CallRefused as exc:
            error_type, error = str(exc.code), str(exc)
            raise
        except BaseException as exc:  # the client went away, or a bug: still the case's
            error_type, error = type(exc).__name__, str(exc) or type(exc).__name__
            raise
        else:
            if result.get("isError") is True:
                error_type, error = "tool_error", "the tool answered with isError: true"
            return result
        finally:
            self.tracer.tool_called(
                task_type=grant.task_type,
                event_id=grant.event_id,
                shadow=grant.shadow,
                tool=name[:200],
                start_ns=start,
                outcome=seen.get("outcome", "unanswered"),
                tool_class=seen.get("class"),
                upstream=seen.get("upstream"),
                level=seen.get("level", str(self.ladder.level(grant.task_type))),
                error_type=error_type,
                error=error,
                request=request,
            )

    async def _call_tool(
        self,
        grant: Grant,
        name: str,
        args: dict[str, Any],
        repeat: str | None,
        seen: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """:meth:`call_tool`'s work; ``seen`` (tracing on) gets what the call's row says."""
        start = time.perf_counter()
        task_type = grant.task_type
        rules = self.rules(task_type)
        session = self._session(grant)
        if session is not None:
            session.called = True
        row: dict[str, Any] = {
            "task_type": task_type,
            "event_id": grant.event_id,
            "shadow": grant.shadow,
            "level": str(self.ladder.level(task_type)),
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
            self.calls.record(
                row, outcome, entry, cls, error, time.perf_counter() - start, approval_id
            )
            if seen is not None:
                seen.update(
                    outcome=outcome,
                    upstream=None if entry is None else entry.upstream,
                    level=row["level"],
                )
                seen["class"] = cls

        entry = None if rules is None else await self.catalog.entry(task_type, rules, name)
        if rules is None or entry is None:
            why = f"tool {name!r} is not on {task_type}'s allowlist: refused"
            record("refused", None, None, why)
            self._audit_refusal(grant, session, name, why)
            raise CallRefused(why)
        row["args"] = redact_args(args, rules.redacted_paths(entry.exposed))
        cls = await self.catalog.classify(rules, entry)
        # Decided here, after every await above: the level in force now, not at the call.
        level, verdict = self._verdict(grant, cls)
        row["level"] = str(level)
        if verdict.action == "refuse":
            record("refused", entry, cls, verdict.reason)
            raise CallRefused(verdict.reason)
        if verdict.action == "forward" and cls == "read":
            try:
                result = await self._send(grant, entry, args, None)
            except CallRefused as exc:  # an unanswered read is recorded too
                record("forwarded" if exc.sent else "failed", entry, cls, str(exc))
                raise
            record("forwarded", entry, cls, None)
            return result
        if session is None:
            # The session closed or was replaced while this call was being classified.
            why = "the session is closed (its case was answered or retried)"
            record("refused", entry, cls, why)
            raise CallRefused(why)
        key = (write_digest(entry.exposed, args), repeat)
        prior = session.seen.get(key)
        if prior is not None:
            answer = await asyncio.shield(prior.answer)
            record("repeated", entry, cls, None, prior.approval_id)
            return await self._answer(answer)
        write = _Write(asyncio.get_running_loop().create_future())
        session.seen[key] = write
        try:
            answer = await self._first(grant, session, rules, entry, cls, level, verdict, args, key)
        except BaseException as exc:
            session.seen.pop(key, None)  # nothing happened: a retry decides afresh
            if not write.answer.done():
                write.answer.cancel()
            if isinstance(exc, CallRefused):  # refused at the last check, or not sent
                row["level"] = str(self.ladder.level(task_type))
                record("refused" if exc.code == REFUSED else "failed", entry, cls, str(exc))
            raise
        if answer[0] == "approval":
            write.approval_id = answer[1]
        write.answer.set_result(answer)
        outcome = {"capture": "captured", "hold": "held", "forward": "forwarded"}[verdict.action]
        error = answer[1][1] if answer[0] == "error" else None
        record(outcome, entry, cls, error, write.approval_id)
        if outcome == "held":
            self._pending_gauge()
        return await self._answer(answer)

    async def _first(
        self,
        grant: Grant,
        session: _Session,
        rules: TaskTools,
        entry: ToolEntry,
        cls: ToolClass,
        level: Level,
        verdict: Decision,
        args: dict[str, Any],
        key: tuple[str, str | None],
    ) -> Answer:
        """The first call of one write: captured, held or sent."""
        if verdict.action == "capture":
            answer = self._captured_result(grant.task_type, rules, entry)
            if answer[0] == "result":
                stored = redact_args(args, rules.redacted_paths(entry.exposed))
                session.writes.append(Action(entry.exposed, stored))
            return answer
        if verdict.action == "hold":
            held = self.approvals.find(grant.event_id, key[0], key[1])
            if held is None:
                held = await self.approvals.hold(
                    task_type=grant.task_type,
                    event_id=grant.event_id,
                    level=level,
                    tool=entry.exposed,
                    upstream=entry.upstream,
                    upstream_tool=entry.name,
                    args=args,
                    stored_args=redact_args(args, rules.redacted_paths(entry.exposed)),
                    digest=key[0],
                    repeat=key[1],
                )
            return "approval", held
        try:
            result = await self._send(grant, entry, args, cls)
        except CallRefused as exc:
            if not exc.sent:
                raise  # not sent: nothing to attach a retry to (it is decided afresh)
            return "error", (exc.code, str(exc))
        return "result", result

    async def _send(
        self, grant: Grant, entry: ToolEntry, args: dict[str, Any], cls: ToolClass | None
    ) -> dict[str, Any]:
        """Send one call upstream. A write is checked once more right before it is sent."""

        def still_allowed() -> None:
            if cls is None:
                return
            level, verdict = self._verdict(grant, cls)
            if verdict.action != "forward":
                raise NotForwarded(
                    f"{grant.task_type} changed while the call waited ({level}"
                    f"{', frozen' if self.ladder.frozen else ''}): {verdict.reason}; not sent"
                )

        try:
            result = await self.upstreams[entry.upstream].call_tool(
                entry.name, args, guard=still_allowed
            )
        except NotForwarded as exc:
            raise CallRefused(str(exc)) from None
        except UpstreamError as exc:
            if not exc.sent:
                raise CallRefused(f"{exc}; not sent", code=INTERNAL) from None
            raise CallRefused(str(exc), code=INTERNAL, sent=True) from None
        size = len(fastjson.dumps(result).encode())
        if size > self.max_result_bytes:
            raise CallRefused(
                f"upstream {entry.upstream}: {entry.name}'s result is {size} bytes, over "
                f"gateway_max_result_bytes ({self.max_result_bytes})",
                code=INTERNAL,
                sent=True,
            )
        return result

    async def _answer(self, answer: Answer) -> dict[str, Any]:
        kind, value = answer
        if kind == "result":
            return dict(value)
        if kind == "error":
            code, message = value
            raise CallRefused(message, code=code)
        return self._held(await self.approvals.attach(value))

    def _held(self, settled: Settled) -> dict[str, Any]:
        if settled.outcome == "pending":
            pending = {
                "status": "pending",
                "approval_id": settled.row.id,
                "args_digest": settled.row.digest,
                "expires_at": settled.row.expires_at.isoformat(),
            }
            return {
                "content": [{"type": "text", "text": json.dumps(pending)}],
                "structuredContent": pending,
                "isError": False,
            }
        if settled.result is not None:
            return dict(settled.result)
        raise CallRefused(settled.error or settled.outcome)

    async def _forward_approved(self, row: ApprovalRow, args: dict[str, Any]) -> dict[str, Any]:
        """Send an approved write: exactly the held tool and arguments (their digest is
        checked), and only while the level still allows a write that waited for approval."""
        client = self.upstreams.get(row.upstream)
        if client is None:
            raise UpstreamError(f"upstream {row.upstream} is not configured any more")
        if row.digest is not None and write_digest(row.tool, args) != row.digest:
            raise NotForwarded(
                "the held arguments are not the ones approved (redacted arguments do not "
                "survive a restart): not sent; the agent must ask again"
            )

        def still_allowed() -> None:
            if self.ladder.frozen:
                raise NotForwarded("the sidecar is frozen: the approved write was not sent")
            level = self.ladder.level(row.task_type)
            if level < Level.L2:
                raise NotForwarded(
                    f"{row.task_type} is now at {level}, below L2: the approved write was not sent"
                )

        result = await client.call_tool(row.upstream_tool, args, guard=still_allowed)
        size = len(fastjson.dumps(result).encode())
        if size > self.max_result_bytes:
            raise UpstreamError(
                f"upstream {row.upstream}: the result is {size} bytes, over "
                f"gateway_max_result_bytes ({self.max_result_bytes})"
            )
        return result

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
        self.calls.record(data, outcome, entry, "write", error, waited, row.id)
        self._pending_gauge()

    # -- records --------------------------------------------------------------------------

    def _audit_refusal(
        self, grant: Grant, session: _Session | None, name: str, reason: str
    ) -> None:
        if session is not None:
            if session.audited >= _AUDITS_PER_SESSION:
                return
            session.audited += 1
        task = self.policy.for_task(grant.task_type)
        self.calls.audit(
            AuditEntry(
                at=self.clock(),
                task_type=grant.task_type,
                actor="gateway",
                action="tool_refused",
                from_level=None,
                to_level=None,
                reason=reason,
                evidence={
                    "event_id": grant.event_id,
                    "tool": name[:200],
                    "shadow": grant.shadow,
                    "level": str(self.ladder.level(grant.task_type)),
                },
                policy_hash=task.hash if task is not None else None,
            )
        )

    def _pending_gauge(self) -> None:
        now = self.clock()
        by_task: dict[str, list[float]] = {}
        for r in self.approvals.pending:
            by_task.setdefault(r.task_type, []).append((now - r.created_at).total_seconds())
        self.metrics.tool_approvals(by_task)
