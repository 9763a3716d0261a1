"""``refund_request``: e-commerce refunds, the good agent (see :mod:`shadow.demo`).

The case builder (payload, the reviewers' decision with their habits and slips), the
handbook rules both sides start from, and the reference agent's reading of them."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from shadow.demo.cases import JSON, DemoCase, _case, _delay, _messy, _money, _person, _shuffled

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


def _build_refund(
    rng: random.Random, event_id: str, occurred: datetime, *, handbook: int = 1
) -> DemoCase:
    """One case. ``handbook=2`` is the revised refund handbook of the demo's late phase
    (late deliveries refunded in full, a 45-day window for changes of mind), which the
    reviewers follow and the reference agent was never taught."""
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
    revised = handbook >= 2
    if revised:
        window += 15
    decision = _refund_rules(payload, window=window, platinum_goodwill=True, late_full=revised)
    # Borderline: high-value refunds just over the limit for silver customers go both ways.
    if (
        decision["reason"] == _HIGH_VALUE
        and amount < 1150
        and tier == "silver"
        and rng.random() < 0.5
    ):
        decision = _refund_rules(
            payload, window=window, platinum_goodwill=True, limit=math.inf, late_full=revised
        )
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
    p: Mapping[str, Any],
    *,
    window: int,
    platinum_goodwill: bool,
    limit: float = 1000.0,
    late_full: bool = False,
) -> JSON:
    """The refund handbook (with the reader's own window and habits); ``late_full``: the
    revised handbook refunds late deliveries in full."""
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
    if code == "late_delivery" and late_full:
        return out("approve", amount, "Late delivery: full refund", "payments")
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


#: On a repeated try, the share of borderline refunds the agent reads the other way
#: (:func:`_refund_agent`).
WAVER: Final = 0.2


def _refund_agent(
    p: Mapping[str, Any], waver: float | None = None
) -> tuple[JSON, list[JSON], float]:
    """The refund handbook as written (no platinum goodwill, the 30-day window).

    Nearly stable: on a repeated try (``waver``, a draw in [0, 1) the caller makes from the
    event id and the try number; ``None`` for the first answer) it reads a borderline case
    (five days either side of the window, an amount near the high-value limit) the other way
    :data:`WAVER` of the time: a window of 35 days, a limit of 1,150. Most borderline cases
    come out the same either way, so it agrees with itself on about 99 refunds in 100."""
    days = int(p["days_since_purchase"])
    borderline = abs(days - 30) <= 5 or 900 <= float(p["amount"]) <= 1150
    if waver is not None and waver < WAVER and borderline:
        d = _refund_rules(p, window=35, platinum_goodwill=False, limit=1150.0)
    else:
        d = _refund_rules(p, window=30, platinum_goodwill=False)
    d["note"] = f"rule: {d['reason'].lower()}"
    return d, _refund_actions(p, d), 0.71 if borderline else 0.96
