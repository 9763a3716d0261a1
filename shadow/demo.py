"""A synthetic back office for ``shadow demo``: three task types, human reviewers who are
realistically inconsistent, and a rule-based reference agent of different quality per task.

Everything here is pure and deterministic given a seed (``random.Random(seed)``; no global
random state, no clock), so a demo run is reproducible and its outcome can be tested.

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
    Decision ``{status: match|partial|no_match, payment_ids, variance, exception, note}``. The
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
    overturn|uphold|escalate, payable_amount, denial_code, rationale}``. The agent is
    **poor**: too lenient on medical necessity, blind to the filing deadline and to the
    medical-director threshold, and it forgets the deductible, so it agrees only about 72% of
    the time, mostly with *critical* misses (overturn vs uphold). Policy ``mode: propose``; it
    stays at L0.

Human inconsistency
-------------------
Reviewers (``decided_by``) have their habits: one is lenient with return windows, some route
refunds to ``billing`` and others to ``payments`` (an ``equivalent`` class in the policy), one
appeals reviewer overturns medical-necessity denials on records alone. Borderline cases are
decided both ways, and a few per cent of decisions are plain slips. Reasons are typed with
varying case and spacing (absorbed by ``match: text``), tags and payment ids come in any
order (``match: set``), notes are free text (``match: ignore``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "AGENT_VERSIONS",
    "DEFAULT_EVENTS",
    "DEMO_POLICY",
    "TASK_TYPES",
    "DemoCase",
    "generate",
    "reference_agent",
    "timeline",
]

JSON = dict[str, Any]

#: Events in a default ``shadow demo`` run: about 2,000 refunds, 1,330 invoices and 670
#: appeals. Enough for refunds to clear the L2 gate (around comparison 250) with a wide
#: margin and for the invoice bound to settle near its gate; small enough for the whole
#: pipeline to finish in seconds.
DEFAULT_EVENTS: Final = 4000

TASK_TYPES: Final = ("refund_request", "invoice_match", "claim_appeal")

#: The reference agent's version per task type (each task type is its own agent).
AGENT_VERSIONS: Final[Mapping[str, str]] = {
    "refund_request": "refund-agent@7",
    "invoice_match": "invoice-matcher@3",
    "claim_appeal": "appeals-agent@2",
}

DEMO_POLICY: Final = """\
# Policy of `shadow demo` (shadow/demo.py): three back-office task types.
defaults:
  unknown_task_types: reject
task_types:
  refund_request:
    sample_rate: 1.0
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
        L2: {agreement: 0.95, min_samples: 150}
        L3: {agreement: 0.98, min_samples: 400, max_critical: 0}
      audit_rate: 0.05
  invoice_match:
    sample_rate: 1.0
    redact: [payload.remit_to.iban]
    compare:
      fields:
        status:      {match: exact, critical: true}
        payment_ids: {match: set}
        variance:    {match: number, abs: 0.01}
        exception:   {match: exact}
        note:        {match: ignore}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L2
      mode: auto
      alpha: 0.05
      gates:
        L1: {agreement: 0.85, min_samples: 50}
        L2: {agreement: 0.92, min_samples: 150}
      audit_rate: 0.05
  claim_appeal:
    sample_rate: 1.0
    redact: [payload.member.name, payload.member.date_of_birth]
    compare:
      fields:
        outcome:        {match: exact, critical: true}
        payable_amount: {match: number, abs: 1.0, rel: 0.01}
        denial_code:    {match: exact}
        rationale:      {match: ignore}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L2
      mode: propose
      alpha: 0.05
      gates:
        L1: {agreement: 0.90, min_samples: 50}
        L2: {agreement: 0.95, min_samples: 150, max_critical: 0}
      audit_rate: 0.10
"""

_START: Final = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)  # a Monday morning
_MIX: Final = (("refund_request", 0.50), ("invoice_match", 0.33), ("claim_appeal", 0.17))
_ID_PREFIX: Final = {"refund_request": "rf", "invoice_match": "inv", "claim_appeal": "clm"}


@dataclass(frozen=True)
class DemoCase:
    """One unit of work: the event (JSON per the work-event contract) and the human outcome
    for it (JSON per the outcome contract)."""

    event: dict[str, Any]
    outcome: dict[str, Any]

    @property
    def task_type(self) -> str:
        return str(self.event["task_type"])


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(x: float) -> float:
    return round(x, 2) + 0.0  # + 0.0: never -0.0


def generate(n_events: int, seed: int = 7) -> list[DemoCase]:
    """``n_events`` cases in ``occurred_at`` order, task types interleaved at different
    volumes, arrivals denser in office hours, outcomes minutes to days after their event."""
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    rng = random.Random(seed)
    names = [name for name, _ in _MIX]
    weights = [w for _, w in _MIX]
    counters = dict.fromkeys(names, 0)
    t = _START
    cases: list[DemoCase] = []
    for _ in range(n_events):
        office = t.weekday() < 5 and 8 <= t.hour < 18
        t += timedelta(seconds=round(rng.expovariate(1.0 / (150.0 if office else 900.0))) + 1)
        task_type = rng.choices(names, weights)[0]
        counters[task_type] += 1
        event_id = f"{_ID_PREFIX[task_type]}-s{seed}-{counters[task_type]:06d}"
        cases.append(_BUILDERS[task_type](rng, event_id, t))
    return cases


def timeline(cases: list[DemoCase]) -> list[dict[str, Any]]:
    """Events and outcomes as one mixed stream in arrival order (each record carries
    ``kind``): an event at its ``occurred_at``, its outcome at its ``decided_at``."""
    keyed: list[tuple[str, int, int, dict[str, Any]]] = []
    for i, case in enumerate(cases):
        keyed.append((case.event["occurred_at"], 0, i, {"kind": "event", **case.event}))
        keyed.append((case.outcome["decided_at"], 1, i, {"kind": "outcome", **case.outcome}))
    keyed.sort(key=lambda k: k[:3])
    return [record for *_, record in keyed]


def _case(
    event_id: str,
    task_type: str,
    occurred: datetime,
    segment: str,
    payload: JSON,
    decision: JSON,
    actions: list[JSON],
    reviewer: str,
    delay: timedelta,
) -> DemoCase:
    event = {
        "event_id": event_id,
        "task_type": task_type,
        "payload": payload,
        "occurred_at": _ts(occurred),
        "segment": segment,
    }
    outcome: JSON = {"event_id": event_id, "decision": decision}
    if actions:
        outcome["actions"] = actions
    outcome["decided_by"] = reviewer
    outcome["decided_at"] = _ts(occurred + max(delay, timedelta(minutes=2)))
    return DemoCase(event, outcome)


def _delay(
    rng: random.Random, median_minutes: float, sigma: float, cap_minutes: float
) -> timedelta:
    minutes = min(cap_minutes, median_minutes * math.exp(rng.gauss(0.0, sigma)))
    return timedelta(seconds=round(minutes * 60))


# fmt: off
_FIRST: Final = (
    "anna", "ben", "chloe", "david", "elena", "farid", "grace", "hugo", "ines", "jonas",
    "kira", "liam", "mei", "noah", "olga", "pedro", "quinn", "rosa", "sami", "tara",
)
_LAST: Final = (
    "meyer", "okafor", "novak", "garcia", "smith", "rossi", "kowalski", "tanaka",
    "dubois", "larsen", "silva", "murphy", "schmidt", "haddad", "nguyen", "berg",
)
# fmt: on


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_FIRST), rng.choice(_LAST)


def _messy(rng: random.Random, text: str) -> str:
    """How a person types a canned reason: case and spacing vary, the words do not."""
    roll = rng.random()
    if roll < 0.08:
        return text.lower()
    if roll < 0.12:
        return text.upper()
    if roll < 0.18:
        return "  " + text.replace(" ", "  ", 1) + " "
    return text


def _shuffled(rng: random.Random, items: list[str]) -> list[str]:
    out = list(items)
    rng.shuffle(out)
    if out and rng.random() < 0.03:
        out.append(out[0])  # a tag entered twice: a set ignores duplicates
    return out


# -- refund_request ----------------------------------------------------------------------------

_CURRENCY: Final = {"eu": "EUR", "us": "USD", "uk": "GBP"}
_CATEGORIES: Final = (
    ("electronics", 0.22, 3.2),
    ("apparel", 0.26, 1.0),
    ("home", 0.18, 1.6),
    ("beauty", 0.10, 0.6),
    ("toys", 0.08, 0.8),
    ("grocery", 0.08, 0.5),
    ("digital", 0.08, 0.4),
)
_NON_RETURNABLE: Final = frozenset({"grocery", "digital"})
_REASON_CODES: Final = (
    ("damaged", 0.20, (1, 21)),
    ("wrong_item", 0.10, (1, 25)),
    ("never_arrived", 0.10, (8, 45)),
    ("not_as_described", 0.18, (2, 50)),
    ("late_delivery", 0.12, (3, 30)),
    ("changed_mind", 0.30, (1, 55)),
)
_CUSTOMER_WORDS: Final = {
    "damaged": (
        "Arrived broken",
        "The box was crushed and the item is cracked",
        "Screen has a crack out of the box",
        "Leaking when it arrived",
    ),
    "wrong_item": (
        "You sent me the wrong size",
        "This is not what I ordered",
        "Received a different colour",
    ),
    "never_arrived": (
        "Package never came",
        "Tracking says delivered but nothing here",
        "Still waiting after weeks",
    ),
    "not_as_described": (
        "Looks nothing like the photos",
        "Material feels cheap, not as listed",
        "Missing features from the description",
    ),
    "late_delivery": (
        "Arrived a week late, needed it for a birthday",
        "Took forever to ship",
        "Delivered after the promised date",
    ),
    "changed_mind": (
        "Don't need it anymore",
        "Found it cheaper elsewhere",
        "Changed my mind, unopened",
        "Doesn't fit my space",
    ),
}
_REFUND_REVIEWERS: Final = ("ops/jane", "ops/maria", "ops/tom", "ops/amir", "ops/lena", "ops/kofi")
_BILLING_ROUTERS: Final = frozenset({"ops/jane", "ops/kofi"})  # say "billing", not "payments"
_REFUND_NOTES: Final = (
    "ok per policy",
    "checked order history",
    "customer called twice",
    "photos attached",
    "",
    "standard case",
    "see ticket thread",
)


def _build_refund(rng: random.Random, event_id: str, occurred: datetime) -> DemoCase:
    segment = rng.choices(("eu", "us", "uk"), (0.45, 0.40, 0.15))[0]
    cat_names = [c[0] for c in _CATEGORIES]
    category = rng.choices(cat_names, [c[1] for c in _CATEGORIES])[0]
    scale = {c[0]: c[2] for c in _CATEGORIES}[category]
    amount = _money(max(2.5, 45.0 * scale * math.exp(rng.gauss(0.0, 0.85))))
    code_names = [c[0] for c in _REASON_CODES]
    code = rng.choices(code_names, [c[1] for c in _REASON_CODES])[0]
    low, high = {c[0]: c[2] for c in _REASON_CODES}[code]
    days = rng.randint(low, high) if rng.random() < 0.95 else rng.randint(60, 140)
    first, last = _person(rng)
    tier = rng.choices(("standard", "silver", "gold", "platinum"), (0.61, 0.20, 0.13, 0.06))[0]
    prior = rng.choices((0, 1, 2, 3, 4, 5), (0.68, 0.18, 0.08, 0.03, 0.02, 0.01))[0]
    payload: JSON = {
        "order_id": f"ORD-{rng.randint(100000, 999999)}",
        "amount": amount,
        "currency": _CURRENCY[segment],
        "days_since_purchase": days,
        "item_category": category,
        "customer": {
            "id": f"C-{rng.randint(10000, 99999)}",
            "email": f"{first}.{last}{rng.randint(1, 99)}@example.com",
            "tier": tier,
            "tenure_months": rng.randint(0, 120),
            "prior_refunds_90d": prior,
        },
        "reason_code": code,
        "reason_text": rng.choice(_CUSTOMER_WORDS[code]),
    }
    reviewer = rng.choice(_REFUND_REVIEWERS)
    window = 33 if reviewer == "ops/maria" else 30  # maria is lenient with the return window
    decision = _refund_rules(payload, window=window, platinum_goodwill=True)
    # Borderline: high-value refunds just over the limit for silver customers go both ways.
    if (
        decision["reason"] == _HIGH_VALUE
        and amount < 1150
        and tier == "silver"
        and rng.random() < 0.5
    ):
        decision = _refund_rules(payload, window=window, platinum_goodwill=True, limit=math.inf)
    actions = _refund_actions(payload, decision)
    roll = rng.random()
    if roll < 0.003 and decision["action"] in ("approve", "deny"):  # a slip: wrong button
        flipped = "deny" if decision["action"] == "approve" else "approve"
        decision = {
            **decision,
            "action": flipped,
            "amount": amount if flipped == "approve" else 0.0,
        }
        actions = _refund_actions(payload, decision)
    elif roll < 0.006 and decision["action"] in ("approve", "partial"):  # typed amount
        typo = _money(round(decision["amount"]) or 1.0)
        if typo == decision["amount"]:
            typo = _money(decision["amount"] + 1.0)
        decision = {**decision, "amount": typo}
        actions = _refund_actions(payload, decision)
    elif roll < 0.008 and actions:  # forgot to send the e-mail
        actions = [a for a in actions if a["tool"] != "send_email"] or actions
    human: JSON = {
        "action": decision["action"],
        "amount": decision["amount"],
        "currency": decision["currency"],
        "reason": _messy(rng, decision["reason"]),
        "tags": _shuffled(rng, decision["tags"]),
        "queue": (
            "billing"
            if reviewer in _BILLING_ROUTERS and decision["queue"] == "payments"
            else decision["queue"]
        ),
        "note": rng.choice(_REFUND_NOTES),
    }
    rng.shuffle(actions)
    delay = _delay(rng, 45.0, 1.3, 2 * 24 * 60)
    return _case(
        event_id, "refund_request", occurred, segment, payload, human, actions, reviewer, delay
    )


_HIGH_VALUE: Final = "High-value refund needs approval"
_REFUND_REASONS: Final = {
    "damaged": "Item arrived damaged",
    "wrong_item": "Wrong item shipped",
    "never_arrived": "Parcel not delivered",
    "not_as_described": "Item not as described",
    "late_delivery": "Late delivery compensation",
    "changed_mind": "Return within window",
}


def _refund_rules(
    p: Mapping[str, Any], *, window: int, platinum_goodwill: bool, limit: float = 1000.0
) -> JSON:
    """The refund handbook (with the reader's own window and habits)."""
    amount = float(p["amount"])
    days = int(p["days_since_purchase"])
    code = str(p["reason_code"])
    customer = p["customer"]
    tier = str(customer["tier"])
    prior = int(customer["prior_refunds_90d"])
    tenure = int(customer["tenure_months"])
    tags: list[str] = [code]
    if amount >= 500:
        tags.append("high_value")
    if prior >= 2:
        tags.append("repeat_refunder")

    def out(action: str, refund: float, reason: str, queue: str, *extra: str) -> JSON:
        return {
            "action": action,
            "amount": _money(refund),
            "currency": str(p["currency"]),
            "reason": reason,
            "tags": tags + list(extra),
            "queue": queue,
        }

    if prior >= 4 or (prior >= 3 and tenure < 12):
        return out("escalate", 0.0, "Refund history needs fraud review", "risk")
    if amount > limit and tier not in ("gold", "platinum"):
        return out("escalate", 0.0, _HIGH_VALUE, "risk")
    reason = _REFUND_REASONS[code]
    if code in ("damaged", "wrong_item", "never_arrived"):
        if days <= 90:
            return out("approve", amount, reason, "payments")
        return out("deny", 0.0, "Outside claim window", "customer_care")
    if code == "not_as_described":
        if days <= window:
            return out("approve", amount, reason, "payments")
        if days <= 60:
            return out("partial", amount * 0.5, "Partial refund outside return window", "payments")
        return out("deny", 0.0, "Outside claim window", "customer_care")
    if code == "late_delivery":
        return out(
            "partial", max(5.0, amount * 0.15) if amount > 5.0 else amount, reason, "payments"
        )
    # changed_mind
    if str(p["item_category"]) in _NON_RETURNABLE:
        return out("deny", 0.0, "Category not returnable", "customer_care")
    if days <= window:
        return out("approve", amount, reason, "payments")
    if platinum_goodwill and tier == "platinum" and days <= 40:
        return out("approve", amount, "Goodwill for platinum customer", "payments", "goodwill")
    return out("deny", 0.0, "Outside return window", "customer_care")


def _refund_actions(p: Mapping[str, Any], d: Mapping[str, Any]) -> list[JSON]:
    action = d["action"]
    if action in ("approve", "partial"):
        return [
            {
                "tool": "issue_refund",
                "args": {
                    "order_id": p["order_id"],
                    "amount": d["amount"],
                    "currency": d["currency"],
                },
            },
            {"tool": "send_email", "args": {"template": "refund_approved"}},
        ]
    if action == "deny":
        return [{"tool": "send_email", "args": {"template": "refund_denied"}}]
    return [{"tool": "open_case", "args": {"queue": d["queue"], "order_id": p["order_id"]}}]


def _refund_agent(p: Mapping[str, Any]) -> tuple[JSON, list[JSON], float]:
    d = _refund_rules(p, window=30, platinum_goodwill=False)
    d["note"] = f"rule: {d['reason'].lower()}"
    days = int(p["days_since_purchase"])
    borderline = abs(days - 30) <= 5 or 900 <= float(p["amount"]) <= 1150
    return d, _refund_actions(p, d), 0.71 if borderline else 0.96


# -- invoice_match -----------------------------------------------------------------------------

_VENDORS: Final = tuple(
    (f"V-{1000 + i}", name)
    for i, name in enumerate(
        (
            "Acme Industrial Supply",
            "Northwind Traders",
            "Globex Logistics",
            "Initech Software",
            "Umbrella Facilities",
            "Stark Components",
            "Wayne Office Goods",
            "Hooli Cloud",
            "Vandelay Imports",
            "Soylent Catering",
            "Cyberdyne Robotics",
            "Tyrell Packaging",
            "Wonka Confectionery",
            "Gringotts Leasing",
            "Oceanic Freight",
            "Dunder Paper",
        )
    )
)
_AP_REVIEWERS: Final = ("ap/li", "ap/samir", "ap/petra", "ap/jose")
_AP_NOTES: Final = (
    "matched via bank feed",
    "vendor confirmed by phone",
    "",
    "see remittance",
    "short pay, chased vendor",
    "ok",
)


def _build_invoice(rng: random.Random, event_id: str, occurred: datetime) -> DemoCase:
    segment = rng.choices(("us", "eu"), (0.6, 0.4))[0]
    currency = "USD" if segment == "us" else "EUR"
    vendor_id, vendor_name = rng.choice(_VENDORS)
    amount = _money(max(80.0, 2400.0 * math.exp(rng.gauss(0.0, 1.0))))
    inv_id = f"INV-{occurred.year}-{rng.randint(1, 999999):06d}"
    issued = occurred - timedelta(days=rng.randint(5, 40))
    tol_abs, tol_rel = 5.0, 0.005
    po_amount = amount if rng.random() < 0.93 else _money(amount * rng.uniform(0.85, 0.97))

    def pay(amt: float, ref: str, vendor: str = vendor_id, back: int | None = None) -> JSON:
        days_back = back if back is not None else rng.randint(0, 20)
        return {
            "id": f"PAY-{rng.randint(100000, 999999)}",
            "vendor_id": vendor,
            "amount": _money(amt),
            "date": (occurred - timedelta(days=days_back)).date().isoformat(),
            "reference": ref,
        }

    scenario = rng.choices(
        ("exact", "fee", "fx", "short", "unpaid", "twin", "split"),
        (0.57, 0.10, 0.025, 0.11, 0.11, 0.03, 0.025),
    )[0]
    payments: list[JSON] = []
    if scenario == "exact":
        payments.append(pay(amount, inv_id))
    elif scenario == "fee":  # a bank fee within the absolute tolerance
        payments.append(pay(amount - rng.choice((1.5, 2.0, 3.75, 4.5)), inv_id))
    elif scenario == "fx":  # an FX difference over the absolute, within the relative tolerance
        amount = _money(max(amount, 2500.0 + rng.uniform(0, 9000)))
        rel = max(tol_abs, tol_rel * amount)
        payments.append(pay(amount - rng.uniform(tol_abs + 0.5, rel * 0.95), inv_id))
    elif scenario == "short":
        payments.append(pay(amount * rng.uniform(0.4, 0.9), inv_id))
    elif scenario == "twin":  # a recurring invoice: same vendor, same amount, earlier payment
        other = f"INV-{occurred.year}-{rng.randint(1, 999999):06d}"
        payments.append(pay(amount, other, back=rng.randint(25, 35)))
        payments.append(pay(amount, inv_id, back=rng.randint(0, 10)))
    elif scenario == "split":
        part = _money(amount * rng.uniform(0.3, 0.7))
        payments.append(pay(part, inv_id))
        payments.append(pay(amount - part, inv_id))
    for _ in range(rng.choices((0, 1, 2, 3), (0.3, 0.35, 0.25, 0.1))[0]):  # unrelated lines
        other_vendor = rng.choice(_VENDORS)[0]
        other_ref = f"INV-{occurred.year}-{rng.randint(1, 999999):06d}"
        payments.append(pay(2400.0 * math.exp(rng.gauss(0.0, 1.0)), other_ref, other_vendor))
    rng.shuffle(payments)
    first, last = _person(rng)
    payload: JSON = {
        "invoice": {
            "id": inv_id,
            "vendor_id": vendor_id,
            "vendor_name": vendor_name,
            "amount": amount,
            "currency": currency,
            "date": issued.date().isoformat(),
            "po_number": f"PO-{rng.randint(10000, 99999)}",
        },
        "purchase_order": {"amount": po_amount, "approver": f"{first} {last}".title()},
        "payments": payments,
        "tolerance": {"abs": tol_abs, "rel": tol_rel},
        "remit_to": {
            "iban": f"DE{rng.randint(10, 99)}{rng.randint(10**17, 10**18 - 1)}",
            "bank": "Demo Bank",
        },
    }
    reviewer = rng.choice(_AP_REVIEWERS)
    decision = _invoice_rules(payload, relative_tolerance=True, add_splits=True, by_reference=True)
    roll = rng.random()
    if roll < 0.008 and decision["status"] == "partial":  # short pay booked as unmatched
        decision = {
            **decision,
            "status": "no_match",
            "payment_ids": [],
            "variance": _money(-amount),
            "exception": "unpaid",
        }
    elif roll < 0.016 and decision["variance"] != 0:  # variance entered with the wrong sign
        decision = {**decision, "variance": _money(-decision["variance"])}
    elif roll < 0.020 and decision["exception"] == "over_po":  # forgot the PO mismatch
        decision = {**decision, "exception": "none"}
    human = {
        **decision,
        "payment_ids": _shuffled(rng, decision["payment_ids"]),
        "note": rng.choice(_AP_NOTES),
    }
    delay = _delay(rng, 6 * 60.0, 1.0, 5 * 24 * 60)
    return _case(event_id, "invoice_match", occurred, segment, payload, human, [], reviewer, delay)


def _invoice_rules(
    p: Mapping[str, Any], *, relative_tolerance: bool, add_splits: bool, by_reference: bool
) -> JSON:
    """Match an invoice to its payment lines (the AP handbook, or the agent's reading)."""
    invoice = p["invoice"]
    amount = float(invoice["amount"])
    vendor = invoice["vendor_id"]
    tol = p["tolerance"]
    limit = float(tol["abs"])
    if relative_tolerance:
        limit = max(limit, float(tol["rel"]) * amount)
    po_over = amount - float(p["purchase_order"]["amount"]) > limit
    mine = [x for x in p["payments"] if x["vendor_id"] == vendor]
    referenced = [x for x in mine if x["reference"] == invoice["id"]]

    def out(status: str, ids: list[str], variance: float, exception: str) -> JSON:
        if po_over and exception in ("none", "short_paid"):
            exception = "over_po"
        return {
            "status": status,
            "payment_ids": ids,
            "variance": _money(variance),
            "exception": exception,
        }

    candidates = referenced if by_reference and referenced else mine
    within = [x for x in candidates if abs(float(x["amount"]) - amount) <= limit]
    if within:
        best = min(within, key=lambda x: (x["date"], x["id"]))
        return out("match", [best["id"]], float(best["amount"]) - amount, "none")
    if add_splits and len(referenced) > 1:
        total = sum(float(x["amount"]) for x in referenced)
        if abs(total - amount) <= limit:
            return out("match", sorted(x["id"] for x in referenced), total - amount, "none")
    if referenced:
        best = max(referenced, key=lambda x: (float(x["amount"]), x["id"]))
        return out("partial", [best["id"]], float(best["amount"]) - amount, "short_paid")
    return out("no_match", [], -amount, "unpaid")


def _invoice_agent(p: Mapping[str, Any]) -> tuple[JSON, list[JSON], float]:
    d = _invoice_rules(p, relative_tolerance=False, add_splits=False, by_reference=False)
    d["note"] = f"{d['status']} on vendor and amount"
    same_vendor = sum(1 for x in p["payments"] if x["vendor_id"] == p["invoice"]["vendor_id"])
    return d, [], 0.93 if same_vendor <= 1 else 0.78


# -- claim_appeal ------------------------------------------------------------------------------

_DENIALS: Final = (
    ("CO-50", 0.34),  # not medically necessary
    ("CO-197", 0.22),  # prior authorisation absent
    ("CO-16", 0.20),  # missing information
    ("CO-29", 0.10),  # timely filing limit expired
    ("PR-204", 0.14),  # service not covered by the plan
)
_APPEAL_REVIEWERS: Final = ("appeals/dr-okafor", "appeals/nurse-berg", "appeals/dr-haddad")
_LENIENT_APPEALS: Final = "appeals/dr-okafor"  # overturns necessity denials on records alone
_DIRECTOR_THRESHOLD: Final = 25000.0
_FILING_DEADLINE_DAYS: Final = 180
_PROCEDURES: Final = (
    "CPT-99213",
    "CPT-72148",
    "CPT-27447",
    "CPT-43239",
    "CPT-93306",
    "CPT-97110",
    "CPT-70553",
    "CPT-29881",
)
_RATIONALES: Final = (
    "records support necessity",
    "criteria not met",
    "per plan document",
    "see medical director note",
    "documentation incomplete",
    "",
)


def _build_claim(rng: random.Random, event_id: str, occurred: datetime) -> DemoCase:
    segment = rng.choices(("us-east", "us-west", "us-central"), (0.4, 0.35, 0.25))[0]
    code = rng.choices([d[0] for d in _DENIALS], [d[1] for d in _DENIALS])[0]
    amount = _money(max(120.0, 3200.0 * math.exp(rng.gauss(0.0, 1.1))))
    plan = rng.choice(("bronze", "silver", "gold"))
    coinsurance = {"bronze": 0.4, "silver": 0.3, "gold": 0.2}[plan]
    deductible = 0.0 if rng.random() < 0.85 else rng.choice((250.0, 500.0, 1500.0))
    first, last = _person(rng)
    payload: JSON = {
        "claim": {
            "id": f"CLM-{rng.randint(1000000, 9999999)}",
            "amount": amount,
            "currency": "USD",
            "procedure_code": rng.choice(_PROCEDURES),
            "service_date": (occurred - timedelta(days=rng.randint(60, 400))).date().isoformat(),
            "denial_code": code,
        },
        "member": {
            "id": f"M-{rng.randint(100000, 999999)}",
            "name": f"{first} {last}".title(),
            "date_of_birth": f"{rng.randint(1940, 2005)}-{rng.randint(1, 12):02d}-"
            f"{rng.randint(1, 28):02d}",
        },
        "coverage": {
            "plan": plan,
            "covered": code != "PR-204" or rng.random() < 0.3,
            "coinsurance": coinsurance,
            "deductible_remaining": deductible,
        },
        "documentation": {
            "medical_records": rng.random() < 0.65,
            "physician_letter": rng.random() < 0.45,
            "prior_authorization": code == "CO-197" and rng.random() < 0.45,
            "itemized_bill": rng.random() < 0.75,
            "proof_of_timely_filing": code == "CO-29" and rng.random() < 0.3,
        },
        "appeal": {
            "level": 1 if rng.random() < 0.95 else 2,
            "filed_days_after_denial": rng.randint(5, 150)
            if rng.random() < 0.9
            else rng.randint(181, 320),
            "argument": rng.choice(
                (
                    "Treatment was medically necessary per attached records",
                    "Authorization was requested by phone",
                    "Claim was submitted on time, see clearinghouse report",
                    "Service is covered under my plan",
                    "Missing documents are now attached",
                )
            ),
        },
    }
    reviewer = rng.choice(_APPEAL_REVIEWERS)
    decision = _claim_rules(
        payload,
        lenient_necessity=reviewer == _LENIENT_APPEALS,
        deadline=True,
        director=True,
        deductible=True,
    )
    docs = payload["documentation"]
    if (
        code == "CO-50"
        and docs["physician_letter"]
        and not docs["medical_records"]
        and decision["outcome"] == "uphold"
        and rng.random() < 0.5
    ):
        decision = _claim_rules(
            payload,
            lenient_necessity=True,
            deadline=True,
            director=True,
            deductible=True,
            letter_is_enough=True,
        )
    if rng.random() < 0.02 and decision["outcome"] in ("overturn", "uphold"):  # a slip
        decision = {**decision, "payable_amount": _money(decision["payable_amount"] * 1.1 + 5)}
    human = {**decision, "rationale": rng.choice(_RATIONALES)}
    delay = _delay(rng, 3 * 24 * 60.0, 0.6, 10 * 24 * 60)
    return _case(event_id, "claim_appeal", occurred, segment, payload, human, [], reviewer, delay)


def _claim_rules(
    p: Mapping[str, Any],
    *,
    lenient_necessity: bool,
    deadline: bool,
    director: bool,
    deductible: bool,
    letter_is_enough: bool = False,
) -> JSON:
    """The appeals handbook (or the agent's reading of it)."""
    claim = p["claim"]
    code = str(claim["denial_code"])
    amount = float(claim["amount"])
    cov = p["coverage"]
    docs = p["documentation"]
    appeal = p["appeal"]

    def out(outcome: str, rationale: str) -> JSON:
        payable = 0.0
        if outcome == "overturn":
            base = amount - (float(cov["deductible_remaining"]) if deductible else 0.0)
            payable = max(0.0, base) * (1.0 - float(cov["coinsurance"]))
        return {
            "outcome": outcome,
            "payable_amount": _money(payable),
            "denial_code": code,
            "rationale": rationale,
        }

    if deadline and int(appeal["filed_days_after_denial"]) > _FILING_DEADLINE_DAYS:
        return out("uphold", "appeal filed after the deadline")
    if director and (amount > _DIRECTOR_THRESHOLD or int(appeal["level"]) == 2):
        return out("escalate", "medical director review")
    if code == "CO-50":
        records, letter = bool(docs["medical_records"]), bool(docs["physician_letter"])
        if (records and letter) or (
            lenient_necessity and (records or (letter_is_enough and letter))
        ):
            return out("overturn", "medical necessity documented")
        return out("uphold", "medical necessity not shown")
    if code == "CO-197":
        return out("overturn" if docs["prior_authorization"] else "uphold", "prior authorization")
    if code == "CO-16":
        complete = bool(docs["itemized_bill"]) and bool(docs["medical_records"])
        return out("overturn" if complete else "uphold", "missing information")
    if code == "CO-29":
        return out("overturn" if docs["proof_of_timely_filing"] else "uphold", "timely filing")
    return out("overturn" if cov["covered"] else "uphold", "plan coverage")


def _claim_agent(p: Mapping[str, Any]) -> tuple[JSON, list[JSON], float]:
    docs = p["documentation"]
    d = _claim_rules(
        p,
        lenient_necessity=True,
        deadline=False,
        director=False,
        deductible=False,
        letter_is_enough=True,
    )
    d["rationale"] = f"agent: {d['rationale']}"
    if p["claim"]["denial_code"] == "CO-50":  # the agent reads either document as enough
        enough = bool(docs["medical_records"]) or bool(docs["physician_letter"])
        confidence = 0.74 if enough else 0.88
    else:
        confidence = 0.9
    return d, [], confidence


# -- the reference agent -----------------------------------------------------------------------

_BUILDERS: Final[Mapping[str, Callable[[random.Random, str, datetime], DemoCase]]] = {
    "refund_request": _build_refund,
    "invoice_match": _build_invoice,
    "claim_appeal": _build_claim,
}
_AGENTS: Final[Mapping[str, Callable[[Mapping[str, Any]], tuple[JSON, list[JSON], float]]]] = {
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


def reference_agent(request: Mapping[str, Any]) -> dict[str, Any]:
    """The built-in agent (``shadow.demo:reference_agent``): the agent contract's request
    ``{"event_id", "task_type", "payload", "shadow": true}`` in, its response out.

    Deterministic and free of side effects: it only *proposes*. A task type it does not
    know, or a payload it cannot read, raises ``ValueError`` (an ``agent_error``)."""
    task_type = request.get("task_type")
    payload = request.get("payload")
    agent = _AGENTS.get(task_type) if isinstance(task_type, str) else None
    if agent is None:
        raise ValueError(f"reference agent does not handle task type {task_type!r}")
    if not isinstance(payload, Mapping):
        raise ValueError("reference agent needs a payload object")
    try:
        decision, actions, confidence = agent(payload)
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
