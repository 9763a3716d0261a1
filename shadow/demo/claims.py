"""``claim_appeal``: insurance appeals, the poor agent with critical misses (see
:mod:`shadow.demo`).

The case builder (payload, the reviewers' decision with their habits and slips), the
handbook rules both sides start from, and the reference agent's reading of them."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from shadow.demo.cases import JSON, DemoCase, _case, _delay, _money, _person

# -- claim_appeal ------------------------------------------------------------------------------

_DENIALS: Final = (
    ("CO-50", 0.34),  # not medically necessary
    ("CO-197", 0.22),  # prior authorisation absent
    ("CO-16", 0.20),  # missing information
    ("CO-29", 0.10),  # timely filing limit expired
    ("PR-204", 0.14),  # service not covered by the plan
)
#: The claims' segments (the appeals unit's region): the agent handles ``west`` badly.
EAST, WEST = "east", "west"
SEGMENTS: Final = (EAST, WEST)
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
    # One draw, as ever: the region decides which appeals unit reviews it (_claim_agent).
    segment = rng.choices(SEGMENTS, (0.6, 0.4))[0]
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
            "region": segment,
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
    actions = _claim_actions(payload, human)
    delay = _delay(rng, 3 * 24 * 60.0, 0.6, 10 * 24 * 60)
    return _case(
        event_id, "claim_appeal", occurred, segment, payload, human, actions, reviewer, delay
    )


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


_OUTCOME_TOOLS: Final = {
    "overturn": "overturn_denial",
    "uphold": "uphold_denial",
    "escalate": "refer_to_medical_director",
}


def _claim_actions(p: Mapping[str, Any], d: Mapping[str, Any]) -> list[JSON]:
    """What the decision does in the claims system: one call per outcome, an overturn with
    the amount it pays (a compared decision field, so actions agree whenever the decision
    does)."""
    args: JSON = {"claim_id": p["claim"]["id"]}
    if d["outcome"] == "overturn":
        args["payable_amount"] = d["payable_amount"]
    return [{"tool": _OUTCOME_TOOLS[str(d["outcome"])], "args": args}]


#: On a repeated try, the share of borderline medical-necessity appeals the agent reads the
#: other way (:func:`_claim_agent`).
WAVER: Final = 0.3


def _claim_agent(
    p: Mapping[str, Any], waver: float | None = None
) -> tuple[JSON, list[JSON], float]:
    """The appeals agent was tuned on the east region's appeals and reads the handbook as
    its reviewers do; on the west's it is the poor reader it always was: too lenient on
    medical necessity, blind to the filing deadline and to the medical-director threshold,
    and it forgets the deductible.

    It is **unstable** on borderline medical necessity (a CO-50 denial appealed with the
    medical records or the physician's letter, not both): on a repeated try (``waver``, a
    draw in [0, 1) the caller makes from the event id and the try number; ``None`` for the
    first answer) it reads the one document the other way :data:`WAVER` of the time, so over
    its three tries (the demo policy's ``repeats: 2``) it answers about nine appeals in ten
    the same."""
    docs = p["documentation"]
    east = p["claim"].get("region") == EAST
    lenient = not east  # in the west, either document is enough
    borderline = p["claim"]["denial_code"] == "CO-50" and (
        bool(docs["medical_records"]) != bool(docs["physician_letter"])
    )
    if waver is not None and waver < WAVER and borderline:
        lenient = not lenient  # this try reads the one document the other way
    d = _claim_rules(
        p,
        lenient_necessity=lenient,
        letter_is_enough=lenient,
        deadline=east,
        director=east,
        deductible=east,
    )
    d["rationale"] = f"agent: {d['rationale']}"
    if p["claim"]["denial_code"] == "CO-50":  # the agent reads either document as enough
        enough = bool(docs["medical_records"]) or bool(docs["physician_letter"])
        confidence = 0.74 if enough else 0.88
    else:
        confidence = 0.9
    return d, _claim_actions(p, d), confidence
