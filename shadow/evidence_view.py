"""The evidence beside agreement, in words and rows: each segment's figures and what holds it,
the join health and the evidence state, the budgets and the projected daily cost
(:mod:`shadow.budgets`), the human ceiling and the agent's self-consistency
(:mod:`shadow.noise`). ``shadow status`` and ``shadow demo``
(:mod:`shadow.console`), the console (:mod:`shadow.ui`) and the live report
(:mod:`shadow.report`) all show it this way, so they say the same thing.

Pure: each function reads one task type's entry of the agreement document
(``GET /v1/agreement``, :mod:`shadow.autonomy`) as served; a key an older sidecar does not
serve reads as absent (no segments, no join health).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shadow.policy import OTHER_SEGMENT

__all__ = [
    "agreement_met",
    "beside_lines",
    "budget_rows",
    "cost_per_decision",
    "daily_cost_text",
    "evidence_invalid",
    "gate_held",
    "gate_held_by_segments",
    "join_health_text",
    "noise_lines",
    "noise_text",
    "segment_rows",
]


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def gate_held_by_segments(entry: Mapping[str, Any]) -> list[str]:
    """What the next gate's ``per_segment`` still needs, one line per declared segment that
    falls short (``segment us: lower bound 0.8123 < 0.95``); empty when nothing holds it."""
    gate = entry.get("next_gate") or {}
    return [str(line) for line in gate.get("segments_missing") or ()]


def segment_rows(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each segment of ``entry`` (declared ones first, then ``other``), its figures as served
    and: ``declared`` (``other`` is not, and is never gated on its own), ``holds`` (why it
    holds the next gate's promotion: ``lower bound 0.8123 < 0.95``, or ``None``) and
    ``state`` (one word: ``routed to humans``, ``holds the promotion``, ``not gated`` or
    ``passes``/``-`` when the next gate judges segments or not)."""
    gate = entry.get("next_gate") or {}
    judged = gate.get("per_segment") is not None
    why: dict[str, str] = {}
    for line in gate_held_by_segments(entry):
        head, _, rest = line.partition(": ")
        if head.startswith("segment "):
            why[head.removeprefix("segment ")] = rest
    rows = []
    for label, figures in (entry.get("segments") or {}).items():
        declared = label != OTHER_SEGMENT
        holds = why.get(label) if declared else None
        if figures.get("routed_to_humans"):
            state = "routed to humans"
        elif not declared:
            state = "not gated"
        elif holds:
            state = "holds the promotion"
        else:
            state = "passes" if judged else "-"
        rows.append({"segment": label, **figures, "declared": declared, "holds": holds})
        rows[-1]["state"] = state
    return rows


def join_health_text(entry: Mapping[str, Any]) -> str | None:
    """``outcome coverage 0.9500 (95 covered, 5 missing, 12 pending)``, then what went wrong
    when anything did (``; 3 unknown outcomes, 1 conflict, 2 routed unanswered``); ``None``
    when the entry has no join health."""
    health = entry.get("join_health")
    if not health:
        return None
    coverage = health.get("coverage")
    head = (
        f"outcome coverage {_num(coverage)}"
        if coverage is not None
        else "outcome coverage not judged yet"
    )
    text = (
        f"{head} ({health.get('covered', 0)} covered, {health.get('missing', 0)} missing, "
        f"{health.get('pending', 0)} pending)"
    )
    wrong = [
        f"{health[key]} {name}"
        for key, name in (
            ("unknown_outcomes", "unknown outcomes"),
            ("conflicts", "conflicting duplicates"),
            ("routed_unanswered", "routed unanswered"),
        )
        if health.get(key)
    ]
    return "; ".join([text, *wrong])


def evidence_invalid(entry: Mapping[str, Any]) -> str | None:
    """``evidence invalid, no promotion: <reason>`` while the join health makes the evidence
    invalid (:mod:`shadow.join_health`), else ``None``."""
    if entry.get("evidence_state") != "invalid":
        return None
    return f"evidence invalid, no promotion: {entry.get('evidence_reason')}"


def agreement_met(gate: Mapping[str, Any]) -> bool:
    """Whether the next gate's bound, sample size and critical misses are met on the whole
    evidence (``agreement_met``; a document from before it has only ``met``)."""
    return bool(gate.get("agreement_met", gate.get("met")))


def gate_held(entry: Mapping[str, Any]) -> list[str]:
    """Everything that holds the next gate besides the agreement bound itself: each declared
    segment short of it (``per_segment``) and each budget not met
    (``cost budget: upper bound $0.0123 > $0.0100 per decision (+23%)``)."""
    gate = entry.get("next_gate") or {}
    return [*gate_held_by_segments(entry), *(str(x) for x in gate.get("budgets_missing") or ())]


def _state(result: Mapping[str, Any]) -> str:
    if result.get("exceeded"):
        return "exceeded"
    return "met" if result.get("met") else "not met"


def _usd(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, int | float) else "-"


def _money(value: float) -> str:
    """A daily amount: cents from a dollar up (``$1,231.80``), else four places."""
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def budget_rows(entry: Mapping[str, Any]) -> list[dict[str, str]]:
    """Each budget the judged gate states (``budgets.gate``): ``budget`` (its name),
    ``limit``, ``observed``, ``bound`` (what is judged against the limit) and ``state``
    (``met``, ``not met`` or ``exceeded``: its lower bound is over the limit)."""
    block = entry.get("budgets") or {}
    rows = []
    cost = block.get("cost_usd_per_decision")
    if cost:
        unknown = f", {cost['unknown']} unknown" if cost.get("unknown") else ""
        rows.append(
            {
                "budget": "cost per decision",
                "limit": _usd(cost.get("budget")),
                "observed": f"mean {_usd(cost.get('mean'))} over {cost.get('n')}{unknown}",
                "bound": f"[{_usd(cost.get('lower'))}, {_usd(cost.get('upper'))}]",
                "state": _state(cost),
            }
        )
    latency = block.get("latency_ms_p95")
    if latency:
        p95 = latency.get("p95")
        rows.append(
            {
                "budget": "p95 latency",
                "limit": f"{latency.get('budget'):g} ms",
                "observed": f"p95 {_num(p95, 1)} ms, {latency.get('over')} of "
                f"{latency.get('n')} over the limit",
                "bound": f"share over ≤ {_num(latency.get('upper_share_over'))} (needs ≤ 0.05)",
                "state": _state(latency),
            }
        )
    errors = block.get("error_rate")
    if errors:
        rows.append(
            {
                "budget": "error rate",
                "limit": f"{errors.get('budget'):g}",
                "observed": f"{errors.get('errors')} of {errors.get('n')} "
                f"({_num(errors.get('rate'))})",
                "bound": f"[{_num(errors.get('lower'))}, {_num(errors.get('upper'))}]",
                "state": _state(errors),
            }
        )
    return rows


def cost_per_decision(entry: Mapping[str, Any]) -> float | None:
    """The agent's mean known cost per decision: the cost budget's ``mean`` when the gate
    states one, else the projected daily cost over the volume; ``None`` when not known."""
    cost = (entry.get("budgets") or {}).get("cost_usd_per_decision") or {}
    if isinstance(cost.get("mean"), int | float):
        return float(cost["mean"])
    daily = entry.get("projected_daily_cost") or {}
    agent, volume = daily.get("agent_usd"), daily.get("volume_per_day")
    if isinstance(agent, int | float) and isinstance(volume, int) and volume > 0:
        return float(agent) / volume
    return None


def daily_cost_text(entry: Mapping[str, Any]) -> str | None:
    """``projected daily cost at 412 decisions a day: agent $0.8611, humans $329.60``
    (humans only when the policy states ``human_cost_usd_per_decision``); ``None`` when the
    entry has no projection."""
    daily = entry.get("projected_daily_cost")
    if not daily:
        return None
    agent = daily.get("agent_usd")
    text = f"projected daily cost at {daily.get('volume_per_day')} decisions a day: agent " + (
        _money(agent) if agent is not None else "unknown (no cost reported)"
    )
    if daily.get("human_usd") is not None:
        text += f", humans {_money(daily['human_usd'])}"
    return text


def _share(name: str, block: Mapping[str, Any] | None, key: str = "agreement") -> str | None:
    if not block or not block.get("n"):
        return None
    return (
        f"{name} {_num(block.get(key))} [{_num(block.get('lower'))}, "
        f"{_num(block.get('upper'))}] of {block['n']}"
    )


def noise_lines(entry: Mapping[str, Any]) -> list[str]:
    """The noise floor, the humans' part then the agent's, each once there is any:
    ``human ceiling 0.9300 [0.8800, 0.9600] of 120; noisy fields: reason`` and
    ``self-consistency 0.9184 [0.8391, 0.9742] of 147; stable 0.9000 [...] of 150``. When
    stable counts the very cases self-consistency counts alike (``repeats: 1``, or no try
    failed), they are one figure: ``self-consistency and stable 0.9184 [...] of 147``."""
    human = [_share("human ceiling", entry.get("human_ceiling"))]
    noisy = [str(f.get("field")) for f in entry.get("noisy_fields") or () if f.get("field")]
    if noisy:
        human.append("noisy fields: " + ", ".join(noisy))
    consistency, stable = entry.get("self_consistency") or {}, entry.get("stable") or {}
    same = bool(consistency.get("n")) and (consistency.get("n"), consistency.get("agree")) == (
        stable.get("n"),
        stable.get("stable"),
    )
    agent = (
        [_share("self-consistency and stable", consistency)]
        if same
        else [_share("self-consistency", consistency), _share("stable", stable, "rate")]
    )
    lines = ["; ".join(p for p in parts if p) for parts in (human, agent)]
    return [line for line in lines if line]


def noise_text(entry: Mapping[str, Any]) -> str | None:
    """The noise floor in one line (:func:`noise_lines`, joined with ``; ``); ``None`` while
    it has nothing (no second opinion, no repeat)."""
    return "; ".join(noise_lines(entry)) or None


def beside_lines(entry: Mapping[str, Any]) -> list[str]:
    """Every line of evidence beside the agreement, in the order the views show them: join
    health, the noise floor, each budget, the projected daily cost."""
    lines = []
    health = join_health_text(entry)
    if health:
        lines.append(health)
    lines.extend(noise_lines(entry))
    block = entry.get("budgets") or {}
    for row in budget_rows(entry):
        lines.append(
            f"{row['budget']} ({block.get('gate')} budget {row['limit']}): {row['observed']}, "
            f"bound {row['bound']}: {row['state']}"
        )
    daily = daily_cost_text(entry)
    if daily:
        lines.append(daily)
    return lines
