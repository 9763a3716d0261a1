"""``shadow agent check``'s verdict: what a run of cases showed, judged against the agent
contract (README "The agent contract", docs/gateway.md), as plain values (no I/O).

:mod:`shadow.agent_check_cli` runs the cases through a real sidecar and collects one
:class:`CaseRun` per case and one :class:`ToolsSeen` per task type with tools;
:func:`assess` turns them into a :class:`Report`: one :class:`Line` per check per task type
and one :class:`Finding` per problem, each a violation (exit 1) or a warning (exit 0).

Checks, in order (:data:`CHECKS`):

``answer``
    Every case answered ``200`` with a JSON object holding a ``decision`` object. Violations
    name what came back instead: no decision, not JSON, an HTTP error, no answer.
``timing``
    Every answer within the agent timeout (a violation: ``too slow``); an answer that took
    more than :data:`NEAR_TIMEOUT` of it is a warning.
``usage``
    The answer carries ``usage``. The contract makes it optional, so a missing one is a
    warning (cost and tokens then read 0), never a violation.
``tools``
    The tools the task type's session lists (the upstreams' tools on the allowlist) and
    their class. Informational.
``tools_url``
    The agent called tools through the case's tools URL. A task type none of whose answered
    cases called a tool is a violation on each (the agent ignores ``tools_url``); a case
    without calls when others of its task type made some is a warning (a case may need no
    tool).
``reads``
    Reads forwarded to the upstream; one answered with an error, or whose upstream could
    not be reached, is a warning (the upstream's problem, not the agent's).
``writes``
    Writes captured (in shadow never forwarded). A captured write answered with an error
    (its ``shadow_result`` breaks the tool's ``outputSchema``) is a violation.
``allowlist``
    Calls refused: a tool outside the task type's allowlist (or any other refusal) is a
    violation.
``retries``
    A write repeated with the same arguments and no ``_meta["io.shadow/repeat"]``: the
    gateway attached it to the first (one write), and it is a violation.
``shadow_result``
    The policy's ``shadow_result`` of each listed tool satisfies its ``outputSchema``
    (checked on the catalog, not per case: violations name the event id ``-``).
A task type the policy gives no tools gets one ``tools`` line (``n/a``) in place of the
checks from ``tools`` to ``shadow_result``.

``actions``
    Informational unless the answer lists ``actions`` that differ from the writes it made
    through its tools URL (a warning: the captured writes are what is compared).
``compare``
    With outcomes among the cases: the comparisons' verdicts (informational).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CHECKS",
    "NEAR_TIMEOUT",
    "CaseRun",
    "Finding",
    "Line",
    "Report",
    "ToolCall",
    "ToolsSeen",
    "assess",
    "describe_error",
]

CHECKS = (
    "answer",
    "timing",
    "usage",
    "tools",
    "tools_url",
    "reads",
    "writes",
    "allowlist",
    "retries",
    "shadow_result",
    "actions",
    "compare",
)
NEAR_TIMEOUT = 0.8  # share of the agent timeout beyond which an answer is a warning
NO_CASE = "-"  # the event id of a finding about a task type's catalog, not one case

Status = Literal["ok", "FAIL", "warn", "info", "n/a"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One row the gateway recorded for a case (``GET /v1/cases/{id}``'s ``tool_calls``)."""

    tool: str
    tool_class: str | None  # read | write; None when refused before it was classified
    outcome: str  # forwarded, captured, refused, failed, repeated, ...
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CaseRun:
    """What one case showed: the request sent, the answer, the calls made through its
    tools URL and, with an outcome, the comparison's verdict."""

    event_id: str
    task_type: str
    tools_url: bool  # the request carried a tools URL
    error: str | None  # the agent_error reason; None when it answered with a decision
    latency_ms: float | None
    usage: bool  # the answer carried a ``usage`` object
    calls: tuple[ToolCall, ...] = ()
    declared_differs: bool = False  # its answer's actions differ from its captured writes
    verdict: str | None = None  # agree, disagree, agent_error; None without an outcome


@dataclass(frozen=True, slots=True)
class ToolsSeen:
    """A task type's tools as its sessions list them: ``(name, class)`` in listing order,
    and why a ``shadow_result`` of the policy breaks its tool's ``outputSchema``."""

    listed: tuple[tuple[str, str], ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Literal["violation", "warning"]
    task_type: str
    event_id: str
    what: str

    def render(self) -> str:
        return f"{self.severity.upper()} {self.task_type} {self.event_id}: {self.what}"


@dataclass(frozen=True, slots=True)
class Line:
    """One check of one task type: ``ok``, ``FAIL`` (a violation), ``warn``, ``info`` (what
    was seen, nothing to judge) or ``n/a``."""

    task_type: str
    check: str
    status: Status
    text: str


@dataclass(frozen=True, slots=True)
class Report:
    lines: tuple[Line, ...]
    findings: tuple[Finding, ...]

    @property
    def violations(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "violation")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def exit_code(self) -> int:
        """0 when the agent follows the contract, 1 when anything violates it."""
        return 1 if self.violations else 0

    def render(self) -> list[str]:
        """The check lines (aligned), then one line per violation and per warning, then
        the summary line."""
        width = max((len(x.task_type) for x in self.lines), default=0)
        out = [f"{x.task_type:<{width}}  {x.check:<13} {x.status:<4}  {x.text}" for x in self.lines]
        out += [f.render() for f in self.violations]
        out += [f.render() for f in self.warnings]
        n, w = len(self.violations), len(self.warnings)
        warned = f"{w} warning{'' if w == 1 else 's'}"
        if n:
            out.append(
                f"shadow agent check: {n} violation{'' if n == 1 else 's'} of the agent "
                f"contract, {warned}"
            )
        else:
            out.append(f"shadow agent check: the agent follows the contract ({warned})")
        return out


def describe_error(reason: str, timeout: float) -> str:
    """What an ``agent_error`` reason (:mod:`shadow.agent`'s wording) means for the
    contract, in words a person acts on, the reason kept."""
    if reason.startswith("timeout after"):
        return f"too slow: no answer within the agent timeout ({_seconds(timeout)})"
    if reason.startswith("invalid JSON"):
        return f"answer is not JSON ({reason})"
    if reason.startswith("answer is ") and "expected a JSON object" in reason:
        return f"answer is not a JSON object ({reason})"
    detail = reason.removeprefix("invalid agent answer: ")
    if detail != reason:
        if detail.startswith("decision: required"):
            return f'no decision: the answer has no "decision" object ({detail})'
        if detail.startswith("decision:"):
            return f'no decision: "decision" is not a JSON object ({detail})'
        return f"invalid answer ({detail})"
    if reason.startswith("HTTP "):
        return f"answered an HTTP error, not 200 ({reason})"
    if reason.startswith("connection failed"):
        return f"no answer: {reason}"
    return f"agent error: {reason}"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


class _Judge:
    """Lines and findings for one task type's cases."""

    def __init__(
        self, task_type: str, cases: Sequence[CaseRun], tools: ToolsSeen | None, timeout: float
    ) -> None:
        self.task_type = task_type
        self.cases = cases
        self.tools = tools
        self.timeout = timeout
        self.lines: list[Line] = []
        self.findings: list[Finding] = []

    def line(self, check: str, status: Status, text: str) -> None:
        self.lines.append(Line(self.task_type, check, status, text))

    def flag(self, event_id: str, what: str, *, warning: bool = False) -> None:
        severity: Literal["violation", "warning"] = "warning" if warning else "violation"
        self.findings.append(Finding(severity, self.task_type, event_id, what))

    def run(self) -> None:
        self.answer()
        self.timing()
        self.usage()
        if self.tools is None:  # the tool checks do not apply: one line says so
            self.line("tools", "n/a", "the policy gives this task type no tools: no tools_url")
        else:
            self.tool_checks(self.tools)
        self.actions()
        self.compare()

    @property
    def answered(self) -> list[CaseRun]:
        return [c for c in self.cases if c.error is None]

    def answer(self) -> None:
        n = len(self.cases)
        for c in self.cases:
            if c.error is not None and not c.error.startswith("timeout after"):
                self.flag(c.event_id, describe_error(c.error, self.timeout))
        bad = sum(1 for c in self.cases if c.error is not None)
        ok = len(self.answered)
        text = f"{ok}/{n} answered with a decision"
        timed_out = sum(1 for c in self.cases if (c.error or "").startswith("timeout after"))
        if timed_out:
            text += f" ({timed_out} timed out: see timing)"
        self.line("answer", "FAIL" if bad else "ok", text)

    def timing(self) -> None:
        slow = [c for c in self.cases if (c.error or "").startswith("timeout after")]
        for c in slow:
            self.flag(c.event_id, describe_error(c.error or "", self.timeout))
        near = self.timeout * 1000 * NEAR_TIMEOUT
        for c in self.answered:
            if c.latency_ms is not None and c.latency_ms > near:
                self.flag(
                    c.event_id,
                    f"slow: answered in {_ms(c.latency_ms)}, over {NEAR_TIMEOUT:.0%} of the "
                    f"agent timeout ({_seconds(self.timeout)})",
                    warning=True,
                )
        times = [c.latency_ms for c in self.cases if c not in slow and c.latency_ms is not None]
        slowest = f"slowest answer {_ms(max(times))}" if times else "no answer"
        text = f"{slowest}, agent timeout {_seconds(self.timeout)}"
        if slow:
            self.line("timing", "FAIL", f"{len(slow)}/{len(self.cases)} timed out; {text}")
        else:
            status: Status = "warn" if any(t > near for t in times) else "ok"
            self.line("timing", status, text)

    def usage(self) -> None:
        answered = self.answered
        missing = [c for c in answered if not c.usage]
        for c in missing:
            self.flag(
                c.event_id,
                "no usage in the answer (optional in the contract; its tokens and cost read 0)",
                warning=True,
            )
        if not answered:
            self.line("usage", "n/a", "no answer with a decision")
            return
        text = f"{len(answered) - len(missing)}/{len(answered)} answers carry usage"
        self.line("usage", "warn" if missing else "ok", text)

    def tool_checks(self, tools: ToolsSeen) -> None:
        shown = ", ".join(f"{name} ({cls})" for name, cls in tools.listed)
        if not shown:
            self.flag(
                NO_CASE,
                "no tool listed: the upstreams list none that the allowlist admits",
                warning=True,
            )
        self.line("tools", "info" if shown else "warn", f"listed: {shown or 'none'}")
        self.tools_url()
        calls = [(c, t) for c in self.cases for t in c.calls]
        reads = [(c, t) for c, t in calls if t.tool_class == "read" and t.outcome != "refused"]
        for c, t in reads:
            if t.outcome == "failed":
                self.flag(c.event_id, f"read {t.tool} not sent: {t.error}", warning=True)
            elif t.error:
                self.flag(c.event_id, f"read {t.tool} answered an error: {t.error}", warning=True)
        forwarded = sum(1 for _, t in reads if t.outcome == "forwarded")
        odd = sum(1 for _, t in reads if t.outcome != "forwarded" or t.error)
        self.line(
            "reads",
            "warn" if odd else "info",
            f"{forwarded} forwarded to the upstream" + (f", {odd} with errors" if odd else ""),
        )
        captured = [(c, t) for c, t in calls if t.outcome == "captured"]
        broken = [(c, t) for c, t in captured if t.error]
        for c, t in broken:
            self.flag(c.event_id, f"write {t.tool} could not be answered: {t.error}")
        text = f"{len(captured)} captured (never forwarded in shadow)"
        self.line(
            "writes",
            "FAIL" if broken else "info",
            text + (f", {len(broken)} answered an error" if broken else ""),
        )
        refused = [(c, t) for c, t in calls if t.outcome == "refused"]
        for c, t in refused:
            if "allowlist" in (t.error or ""):
                what = f"called {t.tool}, which is not on {self.task_type}'s allowlist (refused)"
            else:
                what = f"call to {t.tool} refused: {t.error}"
            self.flag(c.event_id, what)
        text = f"{_count(len(refused), 'call')} refused"
        self.line("allowlist", "FAIL" if refused else "ok", text)
        repeated = [(c, t) for c, t in calls if t.outcome == "repeated"]
        for c, t in repeated:
            self.flag(
                c.event_id,
                f"retried write {t.tool}: the same call again without "
                '_meta["io.shadow/repeat"] (attached to the first: one write)',
            )
        self.line(
            "retries",
            "FAIL" if repeated else "ok",
            f"{_count(len(repeated), 'write')} retried",
        )
        for problem in tools.problems:
            self.flag(NO_CASE, f"shadow_result: {problem}")
        self.line(
            "shadow_result",
            "FAIL" if tools.problems else "ok",
            f"{_count(len(tools.problems), 'result')} breaking an outputSchema",
        )

    def tools_url(self) -> None:
        answered = [c for c in self.answered if c.tools_url]
        idle = [c for c in answered if not c.calls]
        used = len(answered) - len(idle)
        for c in idle:
            if used:
                self.flag(
                    c.event_id,
                    "no tool called through its tools_url (other cases of "
                    f"{self.task_type} called tools)",
                    warning=True,
                )
            else:
                self.flag(
                    c.event_id,
                    f"tools_url ignored: no tool called through it, while {self.task_type} "
                    "has tools",
                )
        status: Status = "FAIL" if idle and not used else ("warn" if idle else "ok")
        if not answered:
            status = "n/a"
        self.line("tools_url", status, f"used in {used}/{len(answered)} answered cases")

    def actions(self) -> None:
        differ = [c for c in self.answered if c.declared_differs]
        for c in differ:
            self.flag(
                c.event_id,
                "the answer's actions differ from the writes made through its tools_url "
                "(the captured writes are what is compared)",
                warning=True,
            )
        self.line(
            "actions",
            "warn" if differ else "ok",
            f"{len(differ)} answers list actions other than their tool calls",
        )

    def compare(self) -> None:
        verdicts = [c.verdict for c in self.cases if c.verdict is not None]
        if not verdicts:
            self.line("compare", "n/a", "no outcomes among the cases")
            return
        counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        self.line("compare", "info", ", ".join(f"{n} {v}" for v, n in counts.items()))


def assess(
    cases: Sequence[CaseRun],
    tools: Mapping[str, ToolsSeen | None],
    *,
    timeout: float,
) -> Report:
    """The report of ``cases`` (in the order sent) for the task types of ``tools`` (each
    ``None`` when the policy gives it no tools), in that order; ``timeout`` is the agent
    timeout the cases ran under, in seconds."""
    lines: list[Line] = []
    findings: list[Finding] = []
    for task_type, seen in tools.items():
        judge = _Judge(task_type, [c for c in cases if c.task_type == task_type], seen, timeout)
        judge.run()
        lines += judge.lines
        findings += judge.findings
    return Report(tuple(lines), tuple(findings))
