"""A synthetic back office for ``shadow demo``: three task types, human reviewers who are
realistically inconsistent, and a rule-based reference agent of different quality per task.

Everything here is pure and deterministic given a seed (``random.Random(seed)``; no global
random state, no clock), so a demo run is reproducible and its outcome can be tested. The
one exception is :mod:`shadow.demo.backoffice`: the back office's tools as a real MCP server
and the agent of ``shadow demo`` that calls them through the sidecar's tool gateway (the
policy below names the server under ``tools:``; its writes are captured, never executed).

The three task types
--------------------
``refund_request`` (about half the traffic)
    An e-commerce refund: order amount, currency, days since purchase, item category, the
    customer's tier, tenure and recent refunds, a reason code and the customer's own words.
    The customer's e-mail is in the payload and is redacted by the policy before the agent.
    Decision ``{action: approve|partial|deny|escalate, amount, currency, reason, tags, queue,
    note}`` plus actions (``issue_refund(amount)``, ``send_email(template)``,
    ``open_case(queue)``). The agent is **good**: it follows the refund handbook and agrees
    with the reviewers about 98.7% of the time; what it misses is an unwritten platinum-tier
    goodwill habit, one lenient reviewer's longer return window, and the humans' own slips.
    Policy ``mode: auto``; the default run promotes it to L2 (its L3 gate, 0.98 with no
    critical miss, stays out of reach).
``invoice_match`` (about a third)
    Accounts payable: an invoice, its purchase order and the candidate payment lines (bank
    feed) with a match tolerance ``max(abs, rel * amount)``; the remittance IBAN is redacted.
    Decision ``{status: match|partial|no_match, payment_ids, variance, exception, note}``
    plus actions (``approve_payment(payment_ids)`` for a match or a partial payment,
    ``flag_exception(exception)`` for any exception). The
    agent **hovers just under its L2 gate**: it reads only the absolute tolerance, does not
    add up split payments and takes the earliest of two same-amount payments instead of the
    one whose reference names the invoice, so with the reviewers' slips it agrees about 91%
    of the time against an L2 gate of 0.92. Policy ``mode: auto``; the default run promotes
    it to L1 early and ends there with the L2 gate *not met* but close: for seed 7 agreement
    0.924 and lower bound 0.899 (over seeds 1-100: agreement 0.88-0.93, median 0.91; lower
    bound 0.85-0.90). An agent at or under its gate must not be promoted, and the
    anytime-valid bound keeps that so (false promotion at most alpha) however long it runs.
``claim_appeal`` (the rest, about a sixth)
    A health-insurance appeal against a denial: claim amount, denial code (CARC), the member's
    coverage (covered, deductible left, coinsurance), documentation flags and how late the
    appeal was filed; the member's name and date of birth are redacted. Decision ``{outcome:
    overturn|uphold|escalate, payable_amount, denial_code, rationale}`` plus one action
    (``overturn_denial(payable_amount)``, ``uphold_denial`` or
    ``refer_to_medical_director``). Appeals come from two regions (the segments ``east``, 60%,
    and ``west``; ``claim.region`` in the payload), and the agent was tuned on the east's: there
    it reads the handbook as the reviewers do and agrees about 92% of the time. On the west's it
    is **poor**: too lenient on medical necessity, blind to the filing deadline and to the
    medical-director threshold, and it forgets the deductible, so it agrees only about 70% of
    the time, mostly with *critical* misses (overturn vs uphold). Overall (about 0.83, lower
    bound 0.77 for seed 7) it clears its L1 gate of 0.75, but the gate is ``per_segment:
    each``: west's lower bound (0.60) holds the promotion, and the table says so. Policy
    ``mode: propose``; it stays at L0.

Segments, cost and budgets
--------------------------
Each task type declares two segments (``refund_request`` and ``invoice_match``: ``eu`` and
``us``, the refunds' ``uk`` reported as ``other``; ``claim_appeal``: ``east`` and ``west``) and
what a human decision costs (``human_cost_usd_per_decision``: $0.60, $1.20, $4.50), so the
table projects the daily cost of the agent and of humans. The agent reports its usage with
tokens and ``cost_usd`` (``_PRICING``: about $0.0003, $0.0011 and $0.0059 a decision); the
refund gates L2 and L3 and the claims gate L1 state a cost budget the agents stay within.
About 15% of the outcomes carry a second reviewer's independent decision
(``second_opinion``, :func:`_second_opinions`), which gives each task type its human
ceiling.

Self-consistency
----------------
A tenth of the refunds (``repeat_rate: 0.1``) and a fifth of the appeals (``0.2``) go to the
agent again once their first answer is stored, the appeals twice more (``repeats: 2``): the
request carries
``"repeat": n``, and the agent's draw for that try is a hash of the event id and ``n``
(:func:`_waver`), so a run stays reproducible and the first answers are the same as without
repeats. The appeals agent is unsure on borderline medical necessity (a CO-50 appeal with
the records or the physician's letter, not both) and reads it the other way on about 30% of
its tries there: self-consistency about 0.91 (0.92 for seed 7, 147 cases), the same on all
three tries. The refund agent wavers only on a borderline refund's window or limit, on 20%
of its tries there, and most of those come out the same: about 0.99 (0.995, 196 cases).
Invoices are not repeated. The repeats are a measurement, never evidence: every case counts
once in ``n``.

Human inconsistency
-------------------
Reviewers (``decided_by``) have their habits: one is lenient with return windows, some route
refunds to ``billing`` and others to ``payments`` (an ``equivalent`` class in the policy), one
appeals reviewer overturns medical-necessity denials on records alone. Borderline cases are
decided both ways, and a few per cent of decisions are plain slips. Reasons are typed with
varying case and spacing (absorbed by ``match: text``), tags and payment ids come in any
order (``match: set``), notes are free text (``match: ignore``). The humans' actions follow
from their decisions, and the invoice and appeal actions take only compared decision fields,
so comparing them changes no verdict; the refund desk's forgotten e-mails are the only
disagreements in actions alone.
"""

from __future__ import annotations

import json
import random
import string
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from shadow.demo.cases import JSON, DemoCase
from shadow.demo.claims import _APPEAL_REVIEWERS, _build_claim, _claim_agent
from shadow.demo.invoices import _AP_REVIEWERS, _build_invoice, _invoice_agent
from shadow.demo.refunds import _REFUND_REVIEWERS, _build_refund, _refund_agent

__all__ = [
    "AGENT_VERSIONS",
    "DEFAULT_EVENTS",
    "DEFAULT_LATE_SHARE",
    "DEMO_BACKOFFICE_URL",
    "DEMO_POLICY",
    "SECOND_OPINION_SHARE",
    "TASK_TYPES",
    "DemoCase",
    "demo_policy",
    "generate",
    "reference_agent",
    "timeline",
]


#: Events in a default ``shadow demo`` run: about 2,000 refunds, 1,330 invoices and 670
#: appeals. Enough for refunds to clear the L2 gate (around comparison 250) with a wide
#: margin and for the invoice bound to settle near its gate; small enough for the whole
#: pipeline to finish in seconds.
DEFAULT_EVENTS: Final = 4000
# The share of a demo run that is its late phase (see ``generate``).
DEFAULT_LATE_SHARE: Final = 0.3
#: The share of cases a second reviewer decides again, independently (``second_opinion``).
SECOND_OPINION_SHARE: Final = 0.15

TASK_TYPES: Final = ("refund_request", "invoice_match", "claim_appeal")

#: The reference agent's version per task type (each task type is its own agent).
AGENT_VERSIONS: Final[Mapping[str, str]] = {
    "refund_request": "refund-agent@7",
    "invoice_match": "invoice-matcher@3",
    "claim_appeal": "appeals-agent@2",
}

#: Where :data:`DEMO_POLICY` says the demo back office is; ``shadow demo`` serves it at a
#: free port and uses :func:`demo_policy` with that address.
DEMO_BACKOFFICE_URL: Final = "http://127.0.0.1:9100/mcp"

_DEMO_POLICY: Final = string.Template("""\
# Policy of `shadow demo` (shadow/demo/__init__.py): three back-office task types, whose
# tools are one MCP server (shadow/demo/backoffice.py) reached through the tool gateway.
defaults:
  unknown_task_types: reject
tools:
  backoffice: {url: "$backoffice_url"}
task_types:
  refund_request:
    sample_rate: 1.0
    segments: [eu, us]               # uk is reported as other
    human_cost_usd_per_decision: 0.60
    cost_ceiling_usd: 0.004
    repeat_rate: 0.1                 # a tenth of the cases asked again: self-consistency
    redact: [payload.customer.email]
    compare:
      fields:
        action:   {match: exact, critical: true}
        amount:   {match: number, abs: 0.01}
        currency: {match: exact}
        reason:   {match: text}
        tags:     {match: set}
        queue:    {match: exact, equivalent: [[billing, payments]]}
        note:     {match: ignore}
      unlisted: exact
      actions:
        critical: false
        args:
          amount:   {match: number, abs: 0.01}
          template: {match: exact}
    autonomy:
      start: L0
      ceiling: L3
      mode: auto
      alpha: 0.05
      gates:
        L1: {agreement: 0.90, min_samples: 50}
        L2: {agreement: 0.95, min_samples: 150, max_cost_usd_per_decision: 0.002}
        L3: {agreement: 0.98, min_samples: 400, max_critical: 0, max_cost_usd_per_decision: 0.002}
      audit_rate: 0.05
    tools:
      allow: [get_order, issue_refund, send_email, open_case]
      read: [get_order]
      write: [issue_refund, send_email, open_case]
  invoice_match:
    sample_rate: 1.0
    segments: [eu, us]
    human_cost_usd_per_decision: 1.20
    redact: [payload.remit_to.iban]
    compare:
      fields:
        status:      {match: exact, critical: true}
        payment_ids: {match: set}
        variance:    {match: number, abs: 0.01}
        exception:   {match: exact}
        note:        {match: ignore}
      unlisted: ignore
      actions:
        critical: false
        args:
          payment_ids: {match: set}
          exception:   {match: exact}
    autonomy:
      start: L0
      ceiling: L2
      mode: auto
      alpha: 0.05
      gates:
        L1: {agreement: 0.85, min_samples: 50}
        L2: {agreement: 0.92, min_samples: 150}
      audit_rate: 0.05
    tools:
      allow: [get_invoice, approve_payment, flag_exception]
      read: [get_invoice]
      write: [approve_payment, flag_exception]
  claim_appeal:
    sample_rate: 1.0
    segments: [east, west]           # the appeals unit's region; the agent is poor on west
    human_cost_usd_per_decision: 4.50
    cost_ceiling_usd: 0.02
    repeat_rate: 0.2                 # asked twice more: the agent wavers on medical necessity
    repeats: 2
    redact: [payload.member.name, payload.member.date_of_birth]
    compare:
      fields:
        outcome:        {match: exact, critical: true}
        payable_amount: {match: number, abs: 1.0, rel: 0.01}
        denial_code:    {match: exact}
        rationale:      {match: ignore}
      unlisted: ignore
      actions:
        critical: false
        args:
          payable_amount: {match: number, abs: 1.0, rel: 0.01}
    autonomy:
      start: L0
      ceiling: L2
      mode: propose
      alpha: 0.05
      gates:
        # Good enough overall for L1 (its proposals shown to the reviewers), but every region
        # must be on its own: west holds it.
        L1: {agreement: 0.75, min_samples: 50, per_segment: each, max_cost_usd_per_decision: 0.008}
        L2: {agreement: 0.95, min_samples: 150, max_critical: 0}
      audit_rate: 0.10
    tools:
      allow: [get_claim, overturn_denial, uphold_denial, refer_to_medical_director]
      read: [get_claim]
      write: [overturn_denial, uphold_denial, refer_to_medical_director]
""")


def demo_policy(backoffice_url: str = DEMO_BACKOFFICE_URL) -> str:
    """The demo policy (YAML) with its ``tools.backoffice`` upstream at ``backoffice_url``."""
    return _DEMO_POLICY.substitute(backoffice_url=backoffice_url)


#: The demo policy, its back office at :data:`DEMO_BACKOFFICE_URL`.
DEMO_POLICY: Final = demo_policy()

_START: Final = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)  # a Monday morning
_MIX: Final = (("refund_request", 0.50), ("invoice_match", 0.33), ("claim_appeal", 0.17))
_ID_PREFIX: Final = {"refund_request": "rf", "invoice_match": "inv", "claim_appeal": "clm"}


def generate(n_events: int, seed: int = 7, *, late_share: float = 0.0) -> list[DemoCase]:
    """``n_events`` cases in ``occurred_at`` order, task types interleaved at different
    volumes, arrivals denser in office hours, outcomes minutes to days after their event.

    ``late_share``: the last share of the cases is the **late phase**, in which the refund
    reviewers follow a revised handbook the reference agent was never taught (late
    deliveries refunded in full, 45 days to change one's mind): the refund agent, promoted on
    the earlier evidence, starts disagreeing on about one case in five. The earlier cases
    are the same as without it."""
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    if not 0.0 <= late_share < 1.0:
        raise ValueError(f"late_share must be in [0, 1), got {late_share}")
    late_from = n_events - round(n_events * late_share)
    rng = random.Random(seed)
    names = [name for name, _ in _MIX]
    weights = [w for _, w in _MIX]
    counters = dict.fromkeys(names, 0)
    t = _START
    cases: list[DemoCase] = []
    for index in range(n_events):
        office = t.weekday() < 5 and 8 <= t.hour < 18
        t += timedelta(seconds=round(rng.expovariate(1.0 / (150.0 if office else 900.0))) + 1)
        task_type = rng.choices(names, weights)[0]
        counters[task_type] += 1
        event_id = f"{_ID_PREFIX[task_type]}-s{seed}-{counters[task_type]:06d}"
        if task_type == "refund_request" and index >= late_from:
            cases.append(_build_refund(rng, event_id, t, handbook=2))
        else:
            cases.append(_BUILDERS[task_type](rng, event_id, t))
    return _second_opinions(cases, seed)


# Per task type: the decision field a second reviewer may decide otherwise, its values, how
# often they do, and who the second reviewers are.
_SECOND: Final[Mapping[str, tuple[str, tuple[str, ...], float, tuple[str, ...]]]] = {
    "refund_request": (
        "action",
        ("approve", "partial", "deny", "escalate"),
        0.04,
        _REFUND_REVIEWERS,
    ),
    "invoice_match": ("status", ("match", "partial", "no_match"), 0.06, _AP_REVIEWERS),
    "claim_appeal": ("outcome", ("overturn", "uphold", "escalate"), 0.10, _APPEAL_REVIEWERS),
}


def _second_opinions(cases: list[DemoCase], seed: int) -> list[DemoCase]:
    """:data:`SECOND_OPINION_SHARE` of the cases get ``"second_opinion": {"decision",
    "actions", "decided_by"}`` on their outcome: another reviewer of the same desk, deciding
    alone. Most decide as the first did; a few (4% of refunds, 6% of invoices, 10% of
    appeals) decide the main field otherwise, which is what the human ceiling measures. Drawn
    from a stream of its own, so the cases themselves are those of a run without them."""
    rng = random.Random(f"second-opinion/{seed}")
    out = []
    for case in cases:
        field, values, differ, reviewers = _SECOND[case.task_type]
        if rng.random() >= SECOND_OPINION_SHARE:
            out.append(case)
            continue
        first = case.outcome
        decision = dict(first["decision"])
        if rng.random() < differ:
            decision[field] = rng.choice([v for v in values if v != decision[field]])
        second: JSON = {
            "decision": decision,
            "actions": list(first.get("actions") or []),
            "decided_by": rng.choice([r for r in reviewers if r != first["decided_by"]]),
        }
        out.append(DemoCase(case.event, {**first, "second_opinion": second}))
    return out


def timeline(cases: list[DemoCase]) -> list[dict[str, Any]]:
    """Events and outcomes as one mixed stream in arrival order (each record carries
    ``kind``): an event at its ``occurred_at``, its outcome at its ``decided_at``."""
    keyed: list[tuple[str, int, int, dict[str, Any]]] = []
    for i, case in enumerate(cases):
        keyed.append((case.event["occurred_at"], 0, i, {"kind": "event", **case.event}))
        keyed.append((case.outcome["decided_at"], 1, i, {"kind": "outcome", **case.outcome}))
    keyed.sort(key=lambda k: k[:3])
    return [record for *_, record in keyed]


# -- the reference agent -----------------------------------------------------------------------

_BUILDERS: Final[Mapping[str, Callable[[random.Random, str, datetime], DemoCase]]] = {
    "refund_request": _build_refund,
    "invoice_match": _build_invoice,
    "claim_appeal": _build_claim,
}
_Agent = Callable[[Mapping[str, Any], float | None], tuple[JSON, list[JSON], float]]
_AGENTS: Final[Mapping[str, _Agent]] = {
    "refund_request": _refund_agent,
    "invoice_match": _invoice_agent,
    "claim_appeal": _claim_agent,
}
# (system prompt tokens, USD per 1M input tokens, USD per 1M output tokens) per task type.
_PRICING: Final[Mapping[str, tuple[int, float, float]]] = {
    "refund_request": (620, 0.25, 1.25),
    "invoice_match": (840, 0.80, 4.00),
    "claim_appeal": (1450, 3.00, 15.00),
}


def _waver(request: Mapping[str, Any]) -> float | None:
    """A repeated try's draw in [0, 1): a hash of the event id and the request's ``repeat``
    (the try number), so a run is reproducible; ``None`` for a first answer."""
    attempt = request.get("repeat")
    if attempt is None:
        return None
    key = f"{request.get('event_id')}/repeat/{attempt}".encode()
    return zlib.crc32(key) / 2**32


def reference_agent(request: Mapping[str, Any]) -> dict[str, Any]:
    """The built-in agent (``shadow.demo:reference_agent``): the agent contract's request
    ``{"event_id", "task_type", "payload", "shadow": true}`` in, its response out.

    Deterministic and free of side effects: it only *proposes*. A task type it does not
    know, or a payload it cannot read, raises ``ValueError`` (an ``agent_error``). A
    repeated try (the request's ``"repeat": n``) is answered the same as the first, except
    on the borderline cases where the refund and appeals agents waver (:func:`_waver`: the
    same try of the same case always wavers the same way)."""
    task_type = request.get("task_type")
    payload = request.get("payload")
    agent = _AGENTS.get(task_type) if isinstance(task_type, str) else None
    if agent is None:
        raise ValueError(f"reference agent does not handle task type {task_type!r}")
    if not isinstance(payload, Mapping):
        raise ValueError("reference agent needs a payload object")
    try:
        decision, actions, confidence = agent(payload, _waver(request))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"reference agent cannot read this {task_type} payload: {exc!r}") from exc
    prompt, usd_in, usd_out = _PRICING[str(task_type)]
    tokens_in = prompt + len(json.dumps(payload, sort_keys=True)) // 4
    tokens_out = 24 + len(json.dumps([decision, actions], sort_keys=True)) // 4
    return {
        "decision": decision,
        "actions": actions,
        "confidence": confidence,
        "agent_version": AGENT_VERSIONS[str(task_type)],
        "usage": {
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": round((tokens_in * usd_in + tokens_out * usd_out) / 1e6, 6),
        },
    }
