"""``shadow agent check --agent URL|MODULE:CALLABLE --config POLICY.yaml [--cases FILE.jsonl]``:
send cases to an agent through a real sidecar and say where it breaks the agent contract
(docs/integrations/check.md). Exit 0 when it follows the contract, 1 with one
``VIOLATION <task_type> <event_id>: <what>`` line per violation, 2 on a usage error.

:func:`check_agent` builds the same application as ``shadow run``
(:func:`shadow.app.build_app`) on a temporary DuckDB file, served on a loopback port so the
agent reaches the tool gateway at each case's ``tools_url``, with the policy's real upstream
MCP servers behind it (a shadow session: reads forwarded, writes captured, never
forwarded). Every case goes to the agent (the policy's ``sample_rate`` is not applied).
The agent's transport is wrapped (:class:`Recorder`) to see what the store does not keep:
whether the request carried a tools URL and the answer a ``usage`` object. After the run,
each case is read back from the store (:meth:`shadow.store.Store.case`: the decision or
``agent_error`` with its reason and latency, the gateway's call rows, the comparison) and
judged by :func:`shadow.agent_check.assess` (pure).

Without ``--cases``, one synthetic case per task type of the policy:
``{"event_id": "check-<task type>-1", "task_type": <task type>, "payload": {}}``. With it,
a JSONL file of work events (``"kind": "event"``) and, optionally, the humans' outcomes
(``"kind": "outcome"``), sent as they are; with outcomes the report shows the comparisons.

Usage errors (one line, exit 2; :class:`~shadow.console.UsageError` or a
:class:`~shadow.errors.ShadowError`): bad arguments, a policy that cannot be read or is
invalid, an agent spec that does not load, a cases file that cannot be read or holds a bad
record, an upstream whose tools cannot be listed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadow.agent_check import CaseRun, Report, ToolCall, ToolsSeen, assess
from shadow.console import UsageError, listen
from shadow.errors import UpstreamError

if TYPE_CHECKING:
    from shadow.agent import AgentTransport
    from shadow.config import Settings
    from shadow.model import Outcome, WorkEvent
    from shadow.policy import Policy

# The sidecar's modules are imported where the command runs, not with this module: the
# ``shadow`` command imports it to list ``agent check``, and every command would pay for
# them (the settings' pydantic models alone take about 0.2 s).

__all__ = [
    "Cases",
    "Recorder",
    "add_check_command",
    "check_agent",
    "read_cases",
    "synthetic_cases",
]

SOURCE = "agent-check"  # the source the cases are stored under


@dataclass(frozen=True, slots=True)
class Cases:
    """What is sent: events (in order), the outcomes among them, and how they were made."""

    events: tuple[WorkEvent, ...]
    outcomes: tuple[Outcome, ...] = ()
    origin: str = "synthetic"

    @property
    def task_types(self) -> list[str]:
        return list(dict.fromkeys(e.task_type for e in self.events))


def add_check_command(agent_sub: Any) -> None:
    """Add ``check`` to the ``shadow agent`` group's subparsers; it runs as the command's
    plugins do (``plugin(args, console)``)."""
    check = agent_sub.add_parser(
        "check",
        help="send cases through a real sidecar and name every violation of the agent contract",
    )
    check.add_argument("--agent", required=True, help="agent URL or module:callable")
    check.add_argument(
        "--config", required=True, help="policy YAML (its tools: upstreams are used)"
    )
    check.add_argument(
        "--cases",
        help='JSONL of work events ("kind": "event") and optional outcomes ("kind": "outcome"); '
        "default: one synthetic case per task type, payload {}",
    )
    check.add_argument(
        "--agent-timeout",
        "--timeout",
        dest="agent_timeout",
        type=float,
        help="seconds per agent call (env SHADOW_AGENT_TIMEOUT, default 10)",
    )
    check.add_argument("--agent-concurrency", type=int, help="agent calls in flight (default 8)")
    check.set_defaults(plugin=_run)


def synthetic_cases(policy: Policy) -> Cases:
    """One case per task type of ``policy``, with an empty payload."""
    from shadow.model import WorkEvent

    events = tuple(
        WorkEvent(event_id=f"check-{name}-1", task_type=name, payload={})
        for name in policy.task_types
    )
    if not events:
        raise UsageError(f"{policy.source} names no task type to send cases for")
    return Cases(events)


def read_cases(path: str, policy: Policy) -> Cases:
    """The events and outcomes of the JSONL file at ``path`` (blank lines skipped). A line
    that is not a valid record, an event of a task type the policy refuses, an event id
    given twice, or an outcome for an event the file does not hold is a usage error naming
    the line."""
    from shadow.ingest import RecordError, parse_mixed_line
    from shadow.model import WorkEvent

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --cases {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--cases {path} is not UTF-8 text") from None
    events: dict[str, WorkEvent] = {}
    outcomes: list[Outcome] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = parse_mixed_line(line, lineno)
        where = f"--cases {path} line {lineno}"
        if isinstance(record, RecordError):
            raise UsageError(f"{where}: {record}")
        if isinstance(record, WorkEvent):
            if policy.for_task(record.task_type) is None:
                raise UsageError(
                    f"{where}: task type {record.task_type!r} is not in {policy.source}"
                )
            if record.event_id in events:
                raise UsageError(f"{where}: event_id {record.event_id!r} was given before")
            events[record.event_id] = record
        else:
            if record.event_id not in events:
                raise UsageError(
                    f"{where}: an outcome for {record.event_id!r}, whose event is not above it"
                )
            outcomes.append(record)
    if not events:
        raise UsageError(f"--cases {path} holds no work event")
    return Cases(tuple(events.values()), tuple(outcomes), origin=path)


class Recorder:
    """The agent's transport, noting for each event id whether the request carried a
    ``tools_url`` and whether the answer carried a ``usage`` object (the stored decision
    keeps usage as numbers, so a missing one looks like zero). Errors pass through."""

    def __init__(self, inner: AgentTransport) -> None:
        self.inner = inner
        self.tools_url: dict[str, bool] = {}
        self.usage: dict[str, bool] = {}

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        event_id = str(request.get("event_id"))
        self.tools_url[event_id] = bool(request.get("tools_url"))
        self.usage.pop(event_id, None)
        answer = await self.inner.call(request)
        self.usage[event_id] = isinstance(answer.get("usage"), dict)
        return answer

    async def close(self) -> None:
        await self.inner.close()


def _every_case(policy: Policy) -> Policy:
    """``policy`` with every event sent to the agent (``sample_rate`` 1)."""
    default = policy.default
    return replace(
        policy,
        task_types={n: replace(t, sample_rate=1.0) for n, t in policy.task_types.items()},
        default=None if default is None else replace(default, sample_rate=1.0),
    )


async def check_agent(
    settings: Settings, policy: Policy, cases: Cases, sock: socket.socket
) -> Report:
    """Run ``cases`` through the sidecar ``settings`` describe (its ``agent``, its ``db``),
    served on ``sock`` (bound and listening; closed on return), and judge what they showed.
    ``settings.public_url`` must be the address of ``sock``: it is where the agent is told
    its tools are."""
    from shadow.agent import load_agent
    from shadow.app import build_app
    from shadow.keys import GATEWAY, INTAKE, PIPELINE
    from shadow.server import Listener

    try:
        if not settings.agent:
            raise UsageError("an agent is required: --agent URL|MODULE:CALLABLE")
        recorder = Recorder(load_agent(settings.agent, timeout=settings.agent_timeout))
    except BaseException:
        sock.close()
        raise
    try:
        app = build_app(settings, policy=_every_case(policy), transport=recorder)
    except BaseException:
        sock.close()
        await recorder.close()
        raise
    listener = Listener(app, sock, settings, access_log=None, shutdown_timeout=5.0)
    try:
        await listener.start()
        gateway = app[GATEWAY]
        tools = await _tools_seen(gateway, cases.task_types)
        intake = app[INTAKE]
        await intake.submit_events(list(cases.events), source=SOURCE)
        if cases.outcomes:
            await intake.submit_outcomes(list(cases.outcomes), source=SOURCE)
        pipeline = app[PIPELINE]
        await pipeline.drain()
        await gateway.flush()
        runs = [await _case_run(pipeline.store, recorder, e) for e in cases.events]
    finally:
        await listener.close()
    return assess(runs, tools, timeout=settings.agent_timeout)


async def _tools_seen(gateway: Any, task_types: Sequence[str]) -> dict[str, ToolsSeen | None]:
    """Per task type, the tools its sessions list and their class, and the policy's
    ``shadow_result``s that break a tool's ``outputSchema`` (as the gateway judges them
    when it lists the catalog); ``None`` for a task type without tools. An upstream that
    cannot list its tools is a usage error: the agent could not be judged against it."""
    from shadow.gateway.results import ShadowAnswers

    for name, client in gateway.upstreams.items():
        try:
            await client.list_tools()
        except UpstreamError as exc:
            raise UsageError(
                f"cannot list the tools of the policy's upstream {name} ({client.url}): {exc}"
            ) from None
    answers = ShadowAnswers()
    out: dict[str, ToolsSeen | None] = {}
    for task_type in task_types:
        rules = gateway.rules(task_type)
        if rules is None:
            out[task_type] = None
            continue
        listed: list[tuple[str, str]] = []
        problems: list[str] = []
        for entry in (await gateway.catalog.listed(task_type, rules)).values():
            listed.append((entry.exposed, str(await gateway.catalog.classify(rules, entry))))
            schema = entry.tool.get("outputSchema")
            problem = answers.problem(
                task_type,
                entry.exposed,
                rules.configured_result(entry.exposed),
                schema if isinstance(schema, dict) else None,
            )
            if problem is not None:
                problems.append(problem)
        out[task_type] = ToolsSeen(tuple(listed), tuple(problems))
    return out


async def _case_run(store: Any, recorder: Recorder, event: WorkEvent) -> CaseRun:
    """What the store and the recorder kept about ``event``'s case."""
    view = await store.case(event.event_id)
    decision: dict[str, Any] = (
        dict(view.decisions[-1])
        if view is not None and view.decisions
        else {"error": "no decision was recorded for the case", "latency_ms": None}
    )
    calls = tuple(
        ToolCall(str(c["tool"]), c.get("class"), str(c["outcome"]), c.get("error"))
        for c in (view.tool_calls if view is not None else ())
    )
    comparisons = view.comparisons if view is not None else ()
    return CaseRun(
        event_id=event.event_id,
        task_type=event.task_type,
        tools_url=recorder.tools_url.get(event.event_id, False),
        error=decision.get("error"),
        latency_ms=decision.get("latency_ms"),
        usage=recorder.usage.get(event.event_id, False),
        calls=calls,
        declared_differs=decision.get("declared_actions") is not None,
        verdict=str(comparisons[-1]["verdict"]) if comparisons else None,
    )


def _run(args: argparse.Namespace, console: Any) -> int:
    from shadow.config import load_settings
    from shadow.logs import logging_to_stderr
    from shadow.policy import load_policy
    from shadow.server import redact

    say = partial(console.print, markup=False, highlight=False, soft_wrap=True)
    policy = load_policy(args.config)
    cases = read_cases(args.cases, policy) if args.cases else synthetic_cases(policy)
    with tempfile.TemporaryDirectory(prefix="shadow-agent-check-") as tmp:
        sock = listen("127.0.0.1", 0)
        try:
            port = sock.getsockname()[1]
            settings = load_settings(
                config=args.config,
                agent=args.agent,
                db=str(Path(tmp) / "check.duckdb"),
                host="127.0.0.1",
                port=port,
                public_url=f"http://127.0.0.1:{port}",
                source=[],
                agent_timeout=args.agent_timeout,
                agent_concurrency=args.agent_concurrency,
                # Every case gets a real call: the breaker never opens on a broken agent.
                breaker_failures=len(cases.events) + 1,
                expire_interval=3600.0,
            )
        except BaseException:
            sock.close()
            raise
        for line in _header(args, settings, cases):
            say(line)
        # The sidecar's own log lines only from errors on, unless SHADOW_LOG_LEVEL says.
        level = settings.log_level if "log_level" in settings.model_fields_set else "error"
        with logging_to_stderr(level, settings.log_format, scrub=redact):
            report = asyncio.run(check_agent(settings, policy, cases, sock))
    for line in report.render():
        say(line)
    return report.exit_code


def _header(args: argparse.Namespace, settings: Settings, cases: Cases) -> list[str]:
    n, kinds = len(cases.events), len(cases.task_types)
    lines = [
        f"shadow agent check: {args.agent} with {args.config}: {n} case{'' if n == 1 else 's'} "
        f"over {kinds} task type{'' if kinds == 1 else 's'}, agent timeout "
        f"{settings.agent_timeout:g} s"
    ]
    if cases.origin == "synthetic":
        shape = json.dumps({"event_id": "check-<task type>-1", "payload": {}})
        lines.append(
            f"cases: synthetic, one per task type, each {shape} "
            "(send real ones with --cases FILE.jsonl)"
        )
    else:
        lines.append(f"cases: {n} events and {len(cases.outcomes)} outcomes from {cases.origin}")
    return lines
