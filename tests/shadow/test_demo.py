"""The synthetic back office of ``shadow demo``: valid records, determinism, and the outcome
targets of a default run, checked offline with the engine's pure pieces (policy, diff,
bounds, ladder): no store, no HTTP. Last, ``shadow demo --serve`` for real: its printed
tokens against its own API on a free loopback port."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
import yaml
from rich.console import Console

from shadow import demo, promotion
from shadow.budgets import BudgetEvidence, judge
from shadow.cli import _parser, _status_from_db
from shadow.console import agreement_table
from shadow.demo.backoffice import tool_agent
from shadow.demo_run import run_demo
from shadow.diff import Differ
from shadow.errors import ValidationError
from shadow.model import Evidence, Level, Outcome, ShadowDecision, WorkEvent
from shadow.policy import AutonomyMode, Policy, parse_policy
from shadow.promotion import LadderState, Move
from shadow.roles import digest, parse_tokens
from shadow.segments import promotion_check

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
EVALUATE_EVERY = 25
REFUND, INVOICE, CLAIMS = demo.TASK_TYPES


@cache
def policy() -> Policy:
    return parse_policy(demo.DEMO_POLICY, source="DEMO_POLICY")


def request_for(case: demo.DemoCase) -> dict[str, Any]:
    """The agent request the pipeline builds: payload after redaction, shadow flag set."""
    task = policy().task_types[case.task_type]
    return {
        "event_id": case.event["event_id"],
        "task_type": case.task_type,
        "payload": task.redact_payload(case.event["payload"]),
        "shadow": True,
    }


@dataclass
class Run:
    """The end of an offline run: ladder state and evidence per task type, plus a few
    counters about how human inconsistency met the diff rules."""

    states: dict[str, LadderState]
    evidence: dict[str, Evidence]
    moves: list[tuple[int, str, Move, Level]] = field(default_factory=list)
    # Per task type, the evidence per segment label (declared, else other) and the cost.
    segments: dict[str, dict[str, Evidence]] = field(default_factory=dict)
    spent: dict[str, BudgetEvidence] = field(default_factory=dict)
    absorbed: Counter[str] = field(default_factory=Counter)

    def snapshot(self, task_type: str) -> promotion.Snapshot:
        ev = self.evidence[task_type]
        return promotion.snapshot(ev, policy().task_types[task_type], ev.agent_version)

    def agreement(self, task_type: str) -> float:
        value = self.evidence[task_type].agreement
        assert value is not None
        return value


@cache
def offline_run(n_events: int, seed: int) -> Run:
    """What the pipeline does, minus I/O: comparisons in arrival order (an outcome arrives
    at ``decided_at``; the agent answered within seconds of the event), the ladder decided
    for every task type after every 25 comparisons and once at the end, on the evidence per
    segment and the agent's cost too."""
    pol = policy()
    differs = {name: Differ(task.compare) for name, task in pol.task_types.items()}
    evidence: dict[str, Evidence] = {}
    states = {name: LadderState(name, Level.L0) for name in pol.task_types}
    run = Run(states, evidence)
    cases = sorted(demo.generate(n_events, seed), key=lambda c: c.outcome["decided_at"])
    for i, case in enumerate(cases, 1):
        tt = case.task_type
        response = demo.reference_agent(request_for(case))
        answer = ShadowDecision.from_agent_response(
            case.event["event_id"], response, default_version="?"
        )
        human = Outcome.from_json(case.outcome)
        assert answer.decision is not None
        result = differs[tt](answer.decision, human.decision, answer.actions, human.actions)
        ev = evidence.get(tt) or Evidence(tt, answer.agent_version)
        assert ev.agent_version == answer.agent_version
        evidence[tt] = Evidence(
            tt,
            ev.agent_version,
            ev.n + 1,
            ev.agree + result.agree,
            ev.critical + result.critical_miss,
            ev.errors,
        )
        label = pol.task_types[tt].segment_of(case.event.get("segment"))
        by_label = run.segments.setdefault(tt, {})
        seg = by_label.get(label) or Evidence(tt, answer.agent_version)
        by_label[label] = Evidence(
            tt,
            seg.agent_version,
            seg.n + 1,
            seg.agree + result.agree,
            seg.critical + result.critical_miss,
            seg.errors,
        )
        cost = float(response["usage"]["cost_usd"])
        spent = run.spent.get(tt) or BudgetEvidence()
        ceiling = pol.task_types[tt].cost_ceiling() or cost
        run.spent[tt] = replace(
            spent,
            n=spent.n + 1,
            cost_n=spent.cost_n + 1,
            cost_sum=spent.cost_sum + cost,
            cost_clipped=spent.cost_clipped + min(cost, ceiling),
            cost_max=max(spent.cost_max or 0.0, cost),
        )
        if result.agree:
            for name in ("reason", "tags", "queue", "payment_ids"):
                if name in human.decision and human.decision[name] != answer.decision.get(name):
                    run.absorbed[f"{tt}.{name}"] += 1
        if i % EVALUATE_EVERY == 0 or i == len(cases):
            for name, state in states.items():
                found = evidence.get(name)
                step = promotion.decide(
                    state,
                    {} if found is None else {found.agent_version: found},
                    None if found is None else found.agent_version,
                    pol.task_types[name],
                    frozen=False,
                    now=NOW,
                    segments=run.segments.get(name, {}),
                    budgets=run.spent.get(name),
                )
                # Promotions apply (mode auto), proposals stay pending, demotions apply.
                states[name] = step.after
                if step.move in (Move.PROMOTE, Move.PROPOSE, Move.DEMOTE):
                    run.moves.append((i, name, step.move, step.after.level))
    return run


def l1_alpha(task_type: str) -> float:
    return policy().task_types[task_type].autonomy.alpha


def report(run: Run, seed: int) -> str:
    lines = [f"seed {seed}:"]
    for tt in demo.TASK_TYPES:
        snap = run.snapshot(tt)
        lines.append(
            f"  {tt:15} {run.states[tt].level} n={snap.n} agreement={run.agreement(tt):.4f} "
            f"lower={snap.lower:.4f} upper={snap.upper:.4f} critical={snap.critical}"
        )
    return "\n".join(lines)


# -- the policy --------------------------------------------------------------------------------


def test_policy_parses_with_the_three_task_types() -> None:
    pol = policy()
    assert set(pol.task_types) == set(demo.TASK_TYPES)
    assert pol.unknown_task_types == "reject"
    modes = {tt: pol.task_types[tt].autonomy.mode for tt in demo.TASK_TYPES}
    assert modes == {
        REFUND: AutonomyMode.AUTO,
        INVOICE: AutonomyMode.AUTO,
        CLAIMS: AutonomyMode.PROPOSE,
    }
    refund = pol.task_types[REFUND]
    assert "payload.customer.email" in refund.redact
    assert refund.compare.actions is not None
    assert refund.compare.fields["action"].critical
    assert pol.task_types[INVOICE].compare.fields["status"].critical
    assert pol.task_types[CLAIMS].compare.fields["outcome"].critical
    gates = refund.autonomy.gates
    assert [gates[lv].min_samples for lv in (Level.L1, Level.L2, Level.L3)] == [50, 150, 400]


# -- generation --------------------------------------------------------------------------------


def test_generate_is_deterministic_per_seed() -> None:
    a, b = demo.generate(400, seed=7), demo.generate(400, seed=7)
    assert a == b
    assert demo.generate(400) == a  # seed 7 is the default
    other = demo.generate(400, seed=8)
    assert [c.event for c in other] != [c.event for c in a]
    assert [c.outcome["decision"] for c in other] != [c.outcome["decision"] for c in a]


def test_generate_edge_sizes() -> None:
    assert demo.generate(0) == []
    assert len(demo.generate(1, seed=3)) == 1
    with pytest.raises(ValueError, match="n_events"):
        demo.generate(-1)


def test_generate_does_not_share_state_between_calls() -> None:
    first = demo.generate(50, seed=11)
    first[0].event["payload"]["mutated"] = True
    assert "mutated" not in demo.generate(50, seed=11)[0].event["payload"]


@pytest.mark.parametrize("seed", [7, 1, 2])
def test_every_record_passes_the_contracts(seed: int) -> None:
    cases = demo.generate(1500, seed=seed)
    ids = [c.event["event_id"] for c in cases]
    assert len(set(ids)) == len(ids)
    previous = None
    for case in cases:
        event = WorkEvent.from_json(case.event)
        outcome = Outcome.from_json(case.outcome)
        assert outcome.event_id == event.event_id
        assert event.task_type in demo.TASK_TYPES
        assert event.segment
        assert outcome.decided_by
        assert event.occurred_at is not None
        assert outcome.decided_at is not None
        occurred = datetime.fromisoformat(event.occurred_at)
        decided = datetime.fromisoformat(outcome.decided_at)
        assert previous is None or occurred > previous  # strictly increasing
        previous = occurred
        assert timedelta(minutes=2) <= decided - occurred <= timedelta(days=10)
        json.dumps(case.event, allow_nan=False)  # plain JSON all the way down
        json.dumps(case.outcome, allow_nan=False)
    # Realistic, different volumes, interleaved from the start.
    volumes = Counter(c.task_type for c in cases)
    assert volumes[REFUND] > volumes[INVOICE] > volumes[CLAIMS] > 150
    assert {c.task_type for c in cases[:40]} == set(demo.TASK_TYPES)
    assert datetime.fromisoformat(cases[0].event["occurred_at"]) >= datetime(
        2026, 11, 2, 8, 0, tzinfo=UTC
    )


def test_reviewers_and_delays_differ_by_task_type() -> None:
    cases = demo.generate(1500, seed=7)
    reviewers: dict[str, set[str]] = {}
    delays: dict[str, list[timedelta]] = {}
    for case in cases:
        reviewers.setdefault(case.task_type, set()).add(case.outcome["decided_by"])
        delay = datetime.fromisoformat(case.outcome["decided_at"]) - datetime.fromisoformat(
            case.event["occurred_at"]
        )
        delays.setdefault(case.task_type, []).append(delay)
    assert all(len(r) >= 3 for r in reviewers.values())
    median = {tt: sorted(d)[len(d) // 2] for tt, d in delays.items()}
    assert median[REFUND] < timedelta(hours=2)  # minutes to hours
    assert timedelta(hours=2) < median[INVOICE] < timedelta(days=1)  # hours
    assert median[CLAIMS] > timedelta(days=1)  # days


def test_timeline_interleaves_events_and_outcomes_in_arrival_order() -> None:
    cases = demo.generate(300, seed=5)
    records = demo.timeline(cases)
    assert len(records) == 2 * len(cases)
    stamps = [r["occurred_at"] if r["kind"] == "event" else r["decided_at"] for r in records]
    assert stamps == sorted(stamps)
    seen: set[str] = set()
    for record in records:
        if record["kind"] == "event":
            WorkEvent.from_json(record)
            seen.add(record["event_id"])
        else:
            Outcome.from_json(record)
            assert record["event_id"] in seen  # never an outcome before its event
    assert "kind" not in cases[0].event  # the cases themselves are untouched


# -- the reference agent -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [7, 4])
def test_agent_answers_pass_the_contract(seed: int) -> None:
    for case in demo.generate(600, seed=seed):
        request = request_for(case)
        raw = demo.reference_agent(request)
        assert set(raw) == {"decision", "actions", "confidence", "agent_version", "usage"}
        answer = ShadowDecision.from_agent_response(
            case.event["event_id"], raw, default_version="unused"
        )
        assert answer.agent_version == demo.AGENT_VERSIONS[case.task_type]
        assert answer.decision
        assert answer.confidence is not None
        assert 0.5 <= answer.confidence <= 1.0
        assert answer.usage.input_tokens > answer.usage.output_tokens > 0
        assert 0 < answer.usage.cost_usd < 0.05
        json.dumps(raw, allow_nan=False)


def test_agent_is_a_pure_function_of_the_request() -> None:
    for case in demo.generate(200, seed=9):
        request = request_for(case)
        frozen = copy.deepcopy(request)
        assert demo.reference_agent(request) == demo.reference_agent(copy.deepcopy(request))
        assert request == frozen  # the request is not modified


def test_agent_never_needs_what_is_redacted() -> None:
    for case in demo.generate(200, seed=9):
        request = request_for(case)
        if case.task_type == REFUND:
            assert "email" in case.event["payload"]["customer"]
            assert "email" not in request["payload"]["customer"]
        raw_request = {**request, "payload": case.event["payload"]}
        assert (
            demo.reference_agent(raw_request)["decision"]
            == (demo.reference_agent(request)["decision"])
        )


def test_agent_refuses_what_it_cannot_handle() -> None:
    with pytest.raises(ValueError, match="task type"):
        demo.reference_agent({"event_id": "x", "task_type": "ticket_routing", "payload": {}})
    with pytest.raises(ValueError, match="payload object"):
        demo.reference_agent({"event_id": "x", "task_type": REFUND, "payload": [1]})
    with pytest.raises(ValueError, match="cannot read"):
        demo.reference_agent({"event_id": "x", "task_type": REFUND, "payload": {"amount": 1}})


def test_agent_versions_and_decision_shapes_per_task_type() -> None:
    shapes: dict[str, set[str]] = {}
    for case in demo.generate(300, seed=7):
        decision = demo.reference_agent(request_for(case))["decision"]
        shapes.setdefault(case.task_type, set()).update(decision)
    assert shapes[REFUND] == {"action", "amount", "currency", "reason", "tags", "queue", "note"}
    assert shapes[INVOICE] == {"status", "payment_ids", "variance", "exception", "note"}
    assert shapes[CLAIMS] == {"outcome", "payable_amount", "denial_code", "rationale"}
    assert demo.AGENT_VERSIONS[REFUND] == "refund-agent@7"
    with pytest.raises(ValidationError):  # the demo data is what the contract checks
        WorkEvent.from_json({"event_id": "x", "task_type": REFUND})


# -- the outcome targets, offline --------------------------------------------------------------


# The default seed is the demo users see; the others (slow) show it is not one lucky seed.
OTHER_SEEDS = [pytest.param(s, marks=pytest.mark.slow) for s in (1, 2)]


@pytest.mark.parametrize("seed", [7, *OTHER_SEEDS])
def test_default_run_reaches_the_targets(seed: int) -> None:
    run = offline_run(demo.DEFAULT_EVENTS, seed)
    print(report(run, seed))
    pol = policy()

    # refund_request: good agent, promoted automatically to L2 (L3 needs 0 critical misses).
    refund = run.snapshot(REFUND)
    assert run.agreement(REFUND) >= 0.975
    assert run.states[REFUND].level >= Level.L2
    assert run.states[REFUND].level <= pol.task_types[REFUND].autonomy.ceiling
    assert refund.n >= 1800
    assert [(m, lv) for _, tt, m, lv in run.moves if tt == REFUND][:2] == [
        (Move.PROMOTE, Level.L1),
        (Move.PROMOTE, Level.L2),
    ]

    # invoice_match: hovers at its L2 gate (0.92). Ends at L1, the L2 gate not met but close.
    invoice = run.snapshot(INVOICE)
    l2 = pol.task_types[INVOICE].autonomy.gates[Level.L2]
    assert run.states[INVOICE].level == Level.L1
    assert run.states[INVOICE].proposal is None
    assert 0.88 <= run.agreement(INVOICE) <= 0.94
    assert l2.agreement - 0.05 <= invoice.lower < l2.agreement
    assert invoice.upper > l2.agreement  # the gate is still plausible: near, not failed
    status = promotion.gate_status(l2, invoice)
    assert not status.met
    assert "lower bound" in status.missing
    assert "min_samples" not in status.missing
    assert not any(tt == INVOICE and m is Move.DEMOTE for _, tt, m, _ in run.moves)

    # claim_appeal: good on east, poor on west with critical misses. Overall it clears its
    # L1 gate (0.75), but per segment west does not: it never leaves L0, nothing proposed.
    claims = run.snapshot(CLAIMS)
    l1 = pol.task_types[CLAIMS].autonomy.gates[Level.L1]
    assert run.states[CLAIMS].level == Level.L0
    assert run.states[CLAIMS].proposal is None
    assert promotion.gate_status(l1, claims).met  # overall
    east, west = (run.segments[CLAIMS][s] for s in ("east", "west"))
    assert east.agreement is not None
    assert west.agreement is not None
    assert east.agreement >= 0.90
    assert west.agreement <= 0.78
    assert east.agreement - west.agreement >= 0.15
    check = promotion_check(l1, pol.task_types[CLAIMS], run.segments[CLAIMS], l1_alpha(CLAIMS))
    assert not check.met
    assert [m.split(":")[0] for m in check.missing] == ["segment west"]
    assert claims.critical >= 0.08 * claims.n
    assert west.critical >= 2 * east.critical  # the west misses are mostly critical
    assert not any(tt == CLAIMS for _, tt, _, _ in run.moves)
    # The agents' cost is within every budget a gate states: the segment alone holds claims.
    for tt in (REFUND, CLAIMS):
        task = pol.task_types[tt]
        for level, gate in task.autonomy.gates.items():
            if gate.max_cost_usd_per_decision is not None:
                assert judge(gate, task, run.spent[tt]).met, (tt, level)


def test_default_run_shows_what_the_diff_rules_absorb() -> None:
    """Human inconsistency that is not disagreement: reason typed differently (text),
    tags and payment ids in another order (set), billing vs payments (equivalent)."""
    run = offline_run(demo.DEFAULT_EVENTS, 7)
    for key in ("refund_request.reason", "refund_request.tags", "refund_request.queue"):
        assert run.absorbed[key] >= 20, key
    assert run.absorbed["invoice_match.payment_ids"] >= 5


def test_refund_misses_are_human_habits_and_slips() -> None:
    """The good agent's disagreements are few, and some are critical, which keeps L3 (at most
    0 critical misses) out of reach."""
    run = offline_run(demo.DEFAULT_EVENTS, 7)
    refund = run.snapshot(REFUND)
    assert 0 < refund.n - refund.agree <= 0.025 * refund.n
    assert refund.critical > 0
    assert run.states[REFUND].level == Level.L2


def test_a_share_of_outcomes_carry_a_second_opinion_mostly_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """About 15% of the cases get a second reviewer's decision, from another reviewer of the
    desk; it differs from the first on the main field now and then, more for appeals."""
    cases = demo.generate(demo.DEFAULT_EVENTS, seed=7)
    plain = [c.outcome for c in cases]
    seconds = [(c.task_type, c.outcome) for c in cases if "second_opinion" in c.outcome]
    assert 0.12 <= len(seconds) / len(cases) <= 0.18
    main = {"refund_request": "action", "invoice_match": "status", "claim_appeal": "outcome"}
    differ: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for task_type, outcome in seconds:
        second = outcome["second_opinion"]
        Outcome.from_json(outcome)  # the outcome contract takes it
        assert second["decided_by"] != outcome["decided_by"]
        assert second["decided_by"].split("/")[0] == outcome["decided_by"].split("/")[0]
        field = main[task_type]
        count[task_type] += 1
        differ[task_type] += second["decision"][field] != outcome["decision"][field]
        rest = {k: v for k, v in second["decision"].items() if k != field}
        assert rest == {k: v for k, v in outcome["decision"].items() if k != field}
    rates = {t: differ[t] / count[t] for t in count}
    assert 0 < rates["refund_request"] < rates["claim_appeal"] <= 0.2
    assert all(rate <= 0.2 for rate in rates.values())
    # Drawn from a stream of their own: without them the cases are the same.
    monkeypatch.setattr(demo, "SECOND_OPINION_SHARE", 0.0)
    without = demo.generate(demo.DEFAULT_EVENTS, seed=7)
    assert not any("second_opinion" in c.outcome for c in without)
    assert [{k: v for k, v in o.items() if k != "second_opinion"} for o in plain] == [
        c.outcome for c in without
    ]


def test_the_late_phase_changes_only_late_refund_decisions() -> None:
    """``late_share`` keeps every case before the late phase, and in it the reviewers'
    revised handbook turns about one refund in five against the agent."""
    plain = demo.generate(2000, seed=7)
    late = demo.generate(2000, seed=7, late_share=0.3)
    start = 2000 - 600
    assert late[:start] == plain[:start]
    assert late[start:] != plain[start:]
    refunds = [c for c in late[start:] if c.task_type == REFUND]

    def action(c: demo.DemoCase) -> object:
        return demo.reference_agent(request_for(c))["decision"]["action"]

    disagree = sum(action(c) != c.outcome["decision"]["action"] for c in refunds)
    assert 0.12 <= disagree / len(refunds) <= 0.35
    with pytest.raises(ValueError, match="late_share"):
        demo.generate(10, late_share=1.0)


# -- shadow demo --serve: the console URL and the tokens it prints -----------------------------


async def served_demo(
    console: Console, out: io.StringIO, db: Path
) -> tuple[asyncio.Task[int], str]:
    """``shadow demo --serve --port 0`` in this loop; its output once it says it serves."""
    args = _parser().parse_args(
        ["demo", "--events", "40", "--serve", "--port", "0", "--no-progress", "--db", str(db)]
    )
    task = asyncio.create_task(run_demo(args, console))
    for _ in range(600):
        if "admin token" in out.getvalue() or task.done():
            break
        await asyncio.sleep(0.1)
    assert not task.done(), out.getvalue()
    return task, out.getvalue()


async def test_serve_prints_the_console_and_a_viewer_and_an_admin_token(tmp_path: Path) -> None:
    out = io.StringIO()
    task, text = await served_demo(Console(file=out, width=120), out, tmp_path / "demo.duckdb")
    made: list[Path] = []
    try:
        (url,) = re.findall(r"^Serving the API and /metrics on (http://\S+) \(Ctrl-C", text, re.M)
        assert f"Console: {url}/ui/ " in text
        (viewer,) = re.findall(r"^  viewer token \(demo-viewer: .*\): (\S+)$", text, re.M)
        (admin,) = re.findall(r"^  admin token \(demo-admin: .*\): (\S+)$", text, re.M)
        (file,) = re.findall(r"^Tokens, shown only now \((\S+) keeps their sha256", text, re.M)
        # The secrets are printed, never stored: the file has their digests only.
        made.append(Path(file).parent)  # the demo's own temporary directory
        stored = await asyncio.to_thread(Path(file).read_text)
        assert viewer not in stored
        assert admin not in stored
        book = parse_tokens(yaml.safe_load(stored), file)
        assert {c.name: c.roles for c in book.values()} == {
            "demo-viewer": frozenset({"viewer"}),
            "demo-admin": frozenset({"admin"}),
        }
        assert set(book) == {digest(viewer), digest(admin)}

        async with aiohttp.ClientSession() as http:

            async def status(method: str, path: str, token: str | None) -> int:
                headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                body = {"reason": "demo test"} if method == "POST" else None
                async with http.request(method, url + path, json=body, headers=headers) as r:
                    return r.status

            # The viewer reads, and is refused every write.
            assert await status("GET", "/v1/agreement", viewer) == 200
            assert await status("POST", "/v1/freeze", viewer) == 403
            assert await status("PUT", "/v1/autonomy/refund_request", viewer) == 403
            # Nobody else reads: an unknown token, or none, is 401.
            assert await status("GET", "/v1/agreement", "not-a-demo-token") == 401
            assert await status("GET", "/v1/agreement", None) == 401
            assert await status("POST", "/v1/freeze", "not-a-demo-token") == 401
            # The admin writes, as demo-admin; /metrics stays open as it always was.
            assert await status("POST", "/v1/freeze", admin) == 200
            assert await status("POST", "/v1/unfreeze", admin) == 200
            assert await status("GET", "/metrics", None) == 200
            headers = {"Authorization": f"Bearer {viewer}"}
            async with http.get(f"{url}/v1/audit?limit=1000", headers=headers) as resp:
                entries = (await resp.json())["entries"]
            assert {(e["action"], e["actor"]) for e in entries} >= {
                ("freeze", "demo-admin"),
                ("unfreeze", "demo-admin"),
            }
        # The demo's own traffic went in with the admin token: all 40 cases compared.
        assert "Demo back office:" in text
        assert sum(int(n) for n in re.findall(r"│\s+L\d \│\s+(\d+) │", text)) == 40
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for directory in made:
            shutil.rmtree(directory)


# -- shadow demo through the real pipeline: segments and cost in its table -------------------


def segment_row(text: str, task_type: str, label: str) -> list[str]:
    """The cells of ``segment LABEL``'s row under ``task_type`` in the demo's table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if f"│ {task_type} " in line)
    line = next(line for line in lines[start:] if f" segment {label} " in line)
    return [c.strip() for c in line.split("│")[1:-1]]


@dataclass(frozen=True)
class RealDemo:
    """A ``shadow demo`` run through the real pipeline: what it printed, its database and
    ``/v1/agreement`` as ``shadow status --db`` reads it back."""

    text: str
    db: Path
    doc: dict[str, Any]


REAL_EVENTS = 1500


@pytest.fixture(scope="module")
def real_demo(tmp_path_factory: pytest.TempPathFactory) -> RealDemo:
    """One real run for the tests below (its own event loop: a module-scoped fixture)."""
    db = tmp_path_factory.mktemp("real-demo") / "d.duckdb"
    out = io.StringIO()
    args = _parser().parse_args(
        ["demo", "--events", str(REAL_EVENTS), "--no-progress", "--db", str(db)]
    )

    async def run() -> dict[str, Any]:
        assert await run_demo(args, Console(file=out, width=200)) == 0
        return await _status_from_db(str(db))

    doc = asyncio.run(run())
    return RealDemo(out.getvalue(), db, doc)


def test_the_demo_table_shows_the_bad_segment_and_the_cost(real_demo: RealDemo) -> None:
    text = real_demo.text
    east, west = (segment_row(text, CLAIMS, s) for s in ("east", "west"))
    # cells: label, level, n, agree, lower, upper, crit, err, gate column, needs
    assert float(east[3]) - float(west[3]) >= 0.12
    assert float(east[3]) >= 0.88
    assert int(west[6]) > int(east[6])  # the west misses are critical ones
    assert east[8] == "passes"
    assert west[8] == "holds the promotion"
    assert re.search(
        rf"^{CLAIMS}: segment west holds the promotion to L1: lower bound {west[4]} < 0\.75 *$",
        text,
        re.M,
    )
    assert segment_row(text, REFUND, "other")[8] == "not gated"  # uk: undeclared
    flat = " ".join(text.replace("│", " ").split())
    for name, human in ((REFUND, 0.60), (INVOICE, 1.20), (CLAIMS, 4.50)):
        found = re.search(
            rf"{name} valid \$(\d\.\d{{4}}) .*?projected daily cost at (\d+) decisions a day: "
            r"agent \$([\d,]+\.\d+), humans \$([\d,]+\.\d{2})",
            flat,
        )
        assert found is not None, (name, flat[-3000:])
        cost, volume = float(found.group(1)), int(found.group(2))
        assert cost > 0
        assert float(found.group(4).replace(",", "")) == pytest.approx(human * volume, abs=0.005)
        # The cost column is rounded to 4 places: within half a unit of it per decision.
        agent = float(found.group(3).replace(",", ""))
        assert agent == pytest.approx(cost * volume, abs=0.00005 * volume + 0.005)
    # The second opinions make a human ceiling: exactly the first outcome against the second
    # under the task type's compare rules, on the very cases the demo sent.
    cases = demo.generate(REAL_EVENTS, seed=7, late_share=demo.DEFAULT_LATE_SHARE)
    for name in demo.TASK_TYPES:
        differ = Differ(policy().task_types[name].compare)
        pairs = [
            (
                Outcome.from_json(c.outcome),
                Outcome.from_json({"event_id": "x", **c.outcome["second_opinion"]}),
            )
            for c in cases
            if c.task_type == name and "second_opinion" in c.outcome
        ]
        alike = sum(differ(a.decision, b.decision, a.actions, b.actions).agree for a, b in pairs)
        assert 0 < alike < len(pairs)
        assert f"{name} valid " in flat
        shown = re.search(
            rf"{name} valid .*?human ceiling (\d\.\d{{4}}) \[[\d.]+, [\d.]+\] of (\d+)", flat
        )
        assert shown is not None, name
        assert (shown.group(1), int(shown.group(2))) == (f"{alike / len(pairs):.4f}", len(pairs))
    assert re.search(
        r"cost per decision \(L1 budget \$0\.0080\): mean \$0\.0059 over \d+, bound "
        r"\[\$\d\.\d{4}, \$\d\.\d{4}\]: (not )?met",
        flat,
    )


def test_the_demo_reports_self_consistency_and_never_counts_a_repeat_as_evidence(
    real_demo: RealDemo,
) -> None:
    """The refund and appeals agents are asked again on a tenth and a fifth of their cases
    (the appeals twice more): self-consistency over exactly the repeated cases, the appeals agent
    wavering on borderline medical necessity, the refund agent nearly stable; the evidence
    counts each case once, as a run without repeats does."""
    cases = demo.generate(REAL_EVENTS, seed=7, late_share=demo.DEFAULT_LATE_SHARE)
    counted = Counter(c.task_type for c in cases)
    pol = policy()
    repeated = Counter(
        c.task_type for c in cases if pol.task_types[c.task_type].repeated(c.event["event_id"])
    )
    assert pol.task_types[INVOICE].repeat_rate == 0
    assert (pol.task_types[REFUND].repeats, pol.task_types[CLAIMS].repeats) == (1, 2)
    doc = real_demo.doc["task_types"]
    flat = " ".join(real_demo.text.replace("│", " ").split())
    for name in demo.TASK_TYPES:
        t = doc[name]
        # Every case compared once, repeated or not: n is the cases, as without repeats.
        assert t["n"] == counted[name], name
        assert sum(s["n"] for s in t["segments"].values()) == counted[name]
        consistency, stable = t["self_consistency"], t["stable"]
        if name == INVOICE:
            assert consistency["n"] == stable["n"] == 0
            row = flat[flat.index(f"{name} valid ") : flat.index(f"{CLAIMS} valid ")]
            assert "human ceiling" in row
            assert "self-consistency" not in row
            continue
        rate = pol.task_types[name].repeat_rate
        assert rate - 0.05 <= repeated[name] / counted[name] <= rate + 0.05
        # Every try of every repeated case answered: n is exactly the repeated cases.
        assert consistency["n"] == stable["n"] == repeated[name], name
        assert consistency["lower"] <= consistency["agreement"] <= consistency["upper"]
        shown = re.search(
            rf"{name} valid .*?self-consistency (?:and stable )?(\d\.\d{{4}}) "
            rf"\[(\d\.\d{{4}}), (\d\.\d{{4}})\] of (\d+)",
            flat,
        )
        assert shown is not None, (name, flat[-3000:])
        assert shown.groups() == (
            f"{consistency['agreement']:.4f}",
            f"{consistency['lower']:.4f}",
            f"{consistency['upper']:.4f}",
            str(repeated[name]),
        )
    refunds, appeals = doc[REFUND]["self_consistency"], doc[CLAIMS]["self_consistency"]
    assert appeals["agree"] < appeals["n"]  # the appeals agent answers some cases otherwise
    assert 0.8 <= appeals["agreement"] <= 0.97
    assert refunds["agreement"] >= 0.97
    # No errors: stable (the same on all three tries) counts what self-consistency does.
    assert doc[CLAIMS]["stable"]["stable"] == appeals["agree"]
    # The store: one decision per case, the tries apart (one row per try).
    with duckdb.connect(str(real_demo.db), read_only=True) as con:
        decisions = dict(
            con.execute("SELECT task_type, count(*) FROM decisions GROUP BY 1").fetchall()
        )
        tries = dict(con.execute("SELECT task_type, count(*) FROM repeats GROUP BY 1").fetchall())
    assert decisions == dict(counted)
    assert tries == {REFUND: repeated[REFUND], CLAIMS: 2 * repeated[CLAIMS]}


def test_a_repeated_try_wavers_only_on_borderline_cases_and_reproducibly() -> None:
    """The first answer is the agent's answer without ``repeat`` (unchanged); a try differs
    from it only where the agent is unsure (a borderline refund, a medical-necessity appeal
    with one of the two documents), never on invoices, and the same try of the same case is
    answered the same every time."""
    pol = policy()
    changed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for case in demo.generate(1200, seed=7):
        request = request_for(case)
        first = demo.reference_agent(request)
        assert demo.reference_agent({**request, "repeat": None}) == first
        p = case.event["payload"]
        for attempt in (1, 2):
            again = demo.reference_agent({**request, "repeat": attempt})
            assert again == demo.reference_agent({**request, "repeat": attempt})
            differ = Differ(pol.task_types[case.task_type].compare)
            a = ShadowDecision.from_agent_response("x", first, default_version="?")
            b = ShadowDecision.from_agent_response("x", again, default_version="?")
            assert a.decision is not None
            assert b.decision is not None
            same = differ(b.decision, a.decision, b.actions, a.actions).agree
            total[case.task_type] += 1
            if same:
                continue
            changed[case.task_type] += 1
            if case.task_type == REFUND:
                days, amount = int(p["days_since_purchase"]), float(p["amount"])
                assert abs(days - 30) <= 5 or 900 <= amount <= 1150, p
            else:
                assert case.task_type == CLAIMS, case.task_type
                docs = p["documentation"]
                assert p["claim"]["denial_code"] == "CO-50"
                assert docs["medical_records"] != docs["physician_letter"]
    assert changed[INVOICE] == 0
    assert 0 < changed[REFUND] <= 0.02 * total[REFUND]
    assert 0.02 * total[CLAIMS] <= changed[CLAIMS] <= 0.1 * total[CLAIMS]


async def test_a_repeated_try_is_answered_without_tools() -> None:
    """The demo agent works a sampled case through its tools on the first answer only: a
    repeated try answers from the request, so the demo's tool counts are the first answers'.
    The tools URL here refuses connections: a try that opened it would fail."""
    cases = demo.generate(400, seed=7)
    case = next(c for c in cases if tool_agent.uses_tools(c.event["event_id"]))
    request = {**request_for(case), "tools_url": "http://127.0.0.1:9/mcp"}
    for attempt in (1, 2):
        answer = await tool_agent({**request, "repeat": attempt})
        assert answer == demo.reference_agent({**request, "repeat": attempt})
    with pytest.raises(ExceptionGroup) as raised:
        await tool_agent(request)  # the first answer does use the tools

    def leaves(exc: BaseException) -> list[BaseException]:
        if isinstance(exc, BaseExceptionGroup):
            return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
        return [exc]

    assert [type(e).__name__ for e in leaves(raised.value)] == ["ConnectError"]


def test_the_status_table_fits_120_columns(real_demo: RealDemo) -> None:
    """The demo's agreement table (``shadow status``'s) at 120 columns: one line per row, no
    cell wrapped (``+598 agreeing`` over two lines), nothing dropped: every task type's
    needs, every segment's state and why a segment holds its promotion."""
    out = io.StringIO()
    Console(file=out, width=120).print(agreement_table(real_demo.doc))
    lines = out.getvalue().splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    bottom = next(i for i, line in enumerate(lines) if line.startswith("└"))
    body = lines[top + 1 : bottom]
    doc = real_demo.doc["task_types"]
    assert len(body) == sum(1 + len(t["segments"]) for t in doc.values())
    assert all(len(line) <= 120 for line in lines)
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in body]
    assert [c[0] for c in cells if not c[0].startswith("segment")] == list(doc)
    needs = {c[0]: c[9] for c in cells if c[0] in doc}
    for name, t in doc.items():
        k = t["next_gate"]["agreements_needed"]
        assert needs[name] == (f"+{k} agreeing" if name != CLAIMS else "segments"), needs
    west = next(c for c in cells if c[0] == "segment west")
    assert west[8] == "holds the promotion"
    (why,) = doc[CLAIMS]["next_gate"]["segments_missing"]
    assert why.startswith("segment west: lower bound ")
    assert f"{CLAIMS}: {why.replace(':', ' holds the promotion to L1:', 1)}" in lines[bottom + 1]
