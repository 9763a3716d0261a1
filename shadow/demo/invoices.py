"""``invoice_match``: accounts-payable matching, the agent that hovers under its L2 gate
(see :mod:`shadow.demo`).

The case builder (payload, the reviewers' decision with their habits and slips), the
handbook rules both sides start from, and the reference agent's reading of them."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from shadow.demo.cases import JSON, DemoCase, _case, _delay, _money, _person, _shuffled

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
    actions = _invoice_actions(payload, human)
    delay = _delay(rng, 6 * 60.0, 1.0, 5 * 24 * 60)
    return _case(
        event_id, "invoice_match", occurred, segment, payload, human, actions, reviewer, delay
    )


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


def _invoice_actions(p: Mapping[str, Any], d: Mapping[str, Any]) -> list[JSON]:
    """What the decision does in the AP system: the payment lines it books against the
    invoice (``match``, ``partial``), and the exception it puts the invoice on (any but
    ``none``). Everything it takes is a compared decision field, so actions agree whenever
    the decision does."""
    invoice_id = p["invoice"]["id"]
    actions: list[JSON] = []
    if d["status"] in ("match", "partial"):
        actions.append(
            {
                "tool": "approve_payment",
                "args": {"invoice_id": invoice_id, "payment_ids": list(d["payment_ids"])},
            }
        )
    if d["exception"] != "none":
        actions.append(
            {
                "tool": "flag_exception",
                "args": {"invoice_id": invoice_id, "exception": d["exception"]},
            }
        )
    return actions


def _invoice_agent(
    p: Mapping[str, Any], waver: float | None = None
) -> tuple[JSON, list[JSON], float]:
    """Rules with no judgement call in them: the same answer on every try (``waver``, the
    draw of a repeated try, changes nothing)."""
    d = _invoice_rules(p, relative_tolerance=False, add_splits=False, by_reference=False)
    d["note"] = f"{d['status']} on vendor and amount"
    same_vendor = sum(1 for x in p["payments"] if x["vendor_id"] == p["invoice"]["vendor_id"])
    return d, _invoice_actions(p, d), 0.93 if same_vendor <= 1 else 0.78
