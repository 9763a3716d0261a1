"""The evidence beside agreement where people read it: ``shadow status`` (text and
``--json``), the console's overview and task type page, and the live report (JSON and HTML),
all read from one real sidecar (real store, API, pipeline; the clock injected).

Its two task types have the same per-segment evidence: ``eu`` agrees on all 40 cases, ``us``
on 10 of 20, and 4 cases of an undeclared segment count as ``other``; the L1 gate
(``per_segment: each``) is met overall (lower bound 0.69 >= 0.6) but held by ``us`` (lower
bound 0.21), and appeal's also by its cost budget ($0.001 a decision; the agent reports
$0.002); twenty of appeal's outcomes carry a second opinion, ten of them the other way (a
human ceiling of 0.5). ``refund`` also lost the outcomes of its first four events, so its outcome
coverage is 0 against ``min_outcome_coverage: 0.8``: its evidence is invalid, and every
view says so and why. ``appeal`` (valid evidence) shows the segment holding the promotion.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console as RichConsole

from shadow.cli import main
from shadow.console import agreement_table
from shadow.evidence_view import join_health_text, noise_lines, noise_text, segment_rows
from tests.conftest import FakeClock
from tests.shadow.conftest import AgentServerFactory, Reply, Sidecar, SidecarFactory, agree_reply
from tests.shadow.ui.conftest import (  # noqa: F401 (fixtures used by the tests here)
    Browserless,
    auth,
    browserless,
    secret,
    tokens_file,
)

TTL = timedelta(hours=1)

POLICY = """
task_types:
  refund:
    segments: [eu, us]
    min_outcome_coverage: 0.8
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      mode: auto
      ceiling: L2
      gates:
        L1: {agreement: 0.6, min_samples: 10, per_segment: each}
        L2: {agreement: 0.99, min_samples: 100000}
  appeal:
    segments: [eu, us]
    human_cost_usd_per_decision: 0.8
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      mode: propose
      ceiling: L2
      gates:
        L1:
          agreement: 0.6
          min_samples: 10
          per_segment: each
          max_cost_usd_per_decision: 0.001
          max_error_rate: 0.5
        L2: {agreement: 0.99, min_samples: 100000}
"""


def approve(request: dict[str, Any]) -> Reply:
    """Approves everything, at $0.002 a decision (twice appeal's cost budget)."""
    reply = agree_reply({"action": "approve"})
    assert isinstance(reply.body, dict)
    reply.body["usage"] = {"input_tokens": 800, "output_tokens": 40, "cost_usd": 0.002}
    return reply


async def send(sc: Sidecar, path: str, records: list[dict[str, Any]]) -> None:
    res = await sc.post(path, json_body=records, headers=auth("ingest"))
    assert res.status == 202, res.body


async def feed(sc: Sidecar, task: str) -> None:
    """eu: 40 agreeing; us: 10 agreeing, 10 not; apac (undeclared): 4 agreeing."""
    rows = (
        [("eu", "approve")] * 40
        + [("us", "approve")] * 10
        + [("us", "deny")] * 10
        + [("apac", "approve")] * 4
    )
    ids = [f"{task}-{i}" for i in range(len(rows))]
    await send(
        sc,
        "/v1/events",
        [
            {"event_id": e, "task_type": task, "segment": seg, "payload": {"i": i}}
            for i, (e, (seg, _)) in enumerate(zip(ids, rows, strict=True))
        ],
    )
    await sc.pipeline.drain()
    outcomes: list[dict[str, Any]] = [
        {"event_id": e, "decision": {"action": action}}
        for e, (_, action) in zip(ids, rows, strict=True)
    ]
    if task == "appeal":
        # Second opinions: the same on ten eu cases, the other way on the ten us denials
        # (a human ceiling of 10 of 20).
        for k in [*range(10), *range(50, 60)]:
            outcomes[k]["second_opinion"] = {
                "decision": {"action": "approve"},
                "decided_by": "second/reviewer",
            }
    await send(sc, "/v1/outcomes", outcomes)


@pytest.fixture
async def shown(
    sidecar: SidecarFactory,
    agent_server: AgentServerFactory,
    tokens_file: Path,  # noqa: F811
) -> Sidecar:
    agent = await agent_server(approve)
    clock = FakeClock()
    sc = await sidecar(
        policy=POLICY,
        agent=agent.url,
        clock=clock,
        join_ttl=TTL.total_seconds(),
        tokens_file=tokens_file,
        admin_token=None,
    )
    lost = [
        {"event_id": f"lost-{i}", "task_type": "refund", "segment": "eu", "payload": {}}
        for i in range(4)
    ]
    await send(sc, "/v1/events", lost)
    await sc.pipeline.drain()
    clock.advance(hours=2)  # their TTL passes with no outcome: coverage 0
    for task in ("refund", "appeal"):
        await feed(sc, task)
    await sc.pipeline.drain()
    await sc.pipeline.ladder.evaluate(health=True)
    return sc


async def agreement(sc: Sidecar) -> dict[str, Any]:
    res = await sc.get("/v1/agreement", headers=auth("viewer"))
    assert res.status == 200, res.body
    return dict(res.body)


def figures(n: int, agree: int) -> tuple[int, int, float | None]:
    return n, agree, round(agree / n, 4) if n else None


async def test_the_document_has_what_the_views_show(shown: Sidecar) -> None:
    doc = (await agreement(shown))["task_types"]
    for name in ("refund", "appeal"):
        t = doc[name]
        seg = t["segments"]
        assert list(seg) == ["eu", "us", "other"]
        assert (seg["eu"]["n"], seg["eu"]["agree"], seg["eu"]["agreement"]) == figures(40, 40)
        assert (seg["us"]["n"], seg["us"]["agree"], seg["us"]["agreement"]) == figures(20, 10)
        assert (seg["other"]["n"], seg["other"]["agree"]) == (4, 4)
        gate = t["next_gate"]
        assert (gate["met"], gate["agreement_met"], gate["per_segment"]) == (False, True, "each")
        assert gate["segments_missing"] == ["segment us: lower bound 0.2109 < 0.6"]
        assert t["level"] == "L0"
        assert t["proposal"] is None
    assert doc["refund"]["evidence_state"] == "invalid"
    assert doc["refund"]["join_health"]["missing"] == 4
    assert doc["appeal"]["evidence_state"] == "valid"
    ceiling = doc["appeal"]["human_ceiling"]
    assert (ceiling["n"], ceiling["agree"], ceiling["agreement"]) == (20, 10, 0.5)
    assert noise_text(doc["appeal"]) == (
        f"human ceiling 0.5000 [{ceiling['lower']:.4f}, {ceiling['upper']:.4f}] of 20; "
        "noisy fields: action"
    )
    assert noise_text(doc["refund"]) is None  # no second opinion, no repeat

    rows = {r["segment"]: r for r in segment_rows(doc["appeal"])}
    assert rows["us"]["state"] == "holds the promotion"
    assert rows["us"]["holds"] == "lower bound 0.2109 < 0.6"
    assert rows["eu"]["state"] == "passes"
    assert (rows["other"]["state"], rows["other"]["declared"]) == ("not gated", False)
    assert join_health_text(doc["refund"]) == (
        "outcome coverage 0.0000 (0 covered, 4 missing, 64 pending)"
    )
    troubled = {
        "join_health": {
            **doc["refund"]["join_health"],
            "unknown_outcomes": 3,
            "conflicts": 1,
            "routed_unanswered": 2,
        }
    }
    assert join_health_text(troubled) == (
        "outcome coverage 0.0000 (0 covered, 4 missing, 64 pending); 3 unknown outcomes; "
        "1 conflicting duplicates; 2 routed unanswered"
    )


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["status", *argv])
    return code, capsys.readouterr().out


async def test_shadow_status_shows_segments_and_the_join_health(
    shown: Sidecar, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHADOW_TOKEN", secret("viewer"))
    code, text = await asyncio.to_thread(status, capsys, "--url", shown.url)
    assert code == 0
    lines = text.splitlines()

    def row(label: str, after: str) -> str:
        start = next(i for i, line in enumerate(lines) if f"│ {after} " in line)
        return next(line for line in lines[start:] if f" {label} " in line)

    for name in ("refund", "appeal"):
        assert "L1: ≥0.6 n≥10 per segment" in row(name, name)
        us = row("segment us", name)
        assert "20 │ 0.5000 │ 0.2109" in us
        assert "│ holds the promotion " in us
        # Why, under the table, so the row stays narrow.
        assert f"{name}: segment us holds the promotion to L1: lower bound 0.2109 < 0.6" in text
        assert "passes" in row("segment eu", name)
        assert "not gated" in row("segment other", name)
    assert row("appeal", "appeal").endswith(" segments, budgets │")  # met overall: what else
    assert row("refund", "refund").endswith(" valid evidence │")  # needs valid evidence
    assert "refund: evidence invalid, no promotion: outcome coverage 0 < " in text
    assert "Evidence beside agreement" in text
    flat = " ".join(text.split())
    assert (
        "│ invalid │ $0.0020 │ outcome coverage 0.0000 (0 covered, 4 missing, 64 pending)" in flat
    )
    flat = " ".join(text.replace("│", " ").split())  # a cell's wrapped lines, joined
    appeal = (await agreement(shown))["task_types"]["appeal"]
    cost = appeal["budgets"]["cost_usd_per_decision"]
    assert (cost["n"], cost["mean"], cost["met"]) == (64, 0.002, False)
    assert (
        f"cost per decision (L1 budget $0.0010): mean $0.0020 over 64, bound "
        f"[${cost['lower']:.4f}, ${cost['upper']:.4f}]: not met"
    ) in flat
    assert appeal["projected_daily_cost"] == {
        "volume_per_day": 64,
        "agent_usd": 0.128,
        "human_usd": 51.2,
    }
    assert "projected daily cost at 64 decisions a day: agent $0.1280, humans $51.20" in flat
    noise = noise_text(appeal)
    assert noise is not None
    assert noise in flat
    errors = appeal["budgets"]["error_rate"]
    assert (
        f"error rate (L1 budget 0.5): 0 of 64 (0.0000), bound [0.0000, {errors['upper']:.4f}]"
        in flat
    )

    code, out = await asyncio.to_thread(status, capsys, "--url", shown.url, "--json")
    assert code == 0
    doc = json.loads(out)
    assert (
        doc["task_types"]["appeal"]["segments"]
        == (await agreement(shown))["task_types"]["appeal"]["segments"]
    )
    assert doc["task_types"]["refund"]["evidence_state"] == "invalid"


async def test_the_console_shows_segments_and_why_the_evidence_is_invalid(
    shown: Sidecar,
    browserless: Any,  # noqa: F811
) -> None:
    client: Browserless = browserless(shown.url)
    await client.sign_in("viewer")
    status_code, page, _ = await client.get("/ui/")
    assert status_code == 200
    text = " ".join(page.split())
    assert "evidence invalid, no promotion: outcome coverage 0 &lt; min_outcome_coverage" in text
    assert (
        "to reach L1: the gate is met overall, but segment us: lower bound 0.2109 &lt; 0.6" in text
    )
    assert 'us 50.00% <span class="sub">(n 20)</span>: holds the promotion' in text
    assert '<span class="tag critical">invalid</span>' in text
    assert "but segment us: lower bound 0.2109 &lt; 0.6; cost budget: upper bound $" in text
    assert "<dt>Noise floor</dt><dd>human ceiling 0.5000 [" in text
    assert "<dt>Budgets (L1)</dt><dd>cost per decision not met; error rate met</dd>" in text
    assert (
        '<dt>Cost per decision</dt><dd>$0.0020 <span class="sub">(projected daily cost at '
        "64 decisions a day: agent $0.1280, humans $51.20)</span>"
    ) in text

    status_code, page, _ = await client.get("/ui/task/appeal")
    assert status_code == 200
    text = " ".join(page.split())
    assert "The L1 gate is judged per segment (each)" in text
    assert (
        '<th scope="row">us</th> <td>20</td> <td>50.00%</td> <td>21.09% \u2013 78.91%</td> '
        "<td>10, 0</td> <td>holds the promotion: lower bound 0.2109 &lt; 0.6</td>"
    ) in text
    assert '<th scope="row">other</th> <td>4</td>' in text
    assert "not gated" in text
    assert "<caption>Budgets of the L1 gate (demote when exceeded at the current level)" in text
    assert (
        '<th scope="row">cost per decision</th><td>$0.0010</td><td>mean $0.0020 over 64</td>'
    ) in text
    assert "Noise floor: human ceiling 0.5000 [" in text
    status_code, page, _ = await client.get("/ui/task/refund")
    text = " ".join(page.split())
    assert "Noise floor: no second opinion and no repeated case yet." in text
    assert "outcome coverage 0.0000 (0 covered, 4 missing, 64 pending)" in text
    assert "evidence invalid, no promotion: outcome coverage 0 &lt;" in text


async def test_the_live_report_carries_and_shows_them(
    shown: Sidecar,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SHADOW_TOKEN", secret("viewer"))
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"

    def run() -> int:
        return main(
            ["report", "--url", shown.url, "--json", str(out_json), "--html", str(out_html)]
        )

    assert await asyncio.to_thread(run) == 0
    doc = json.loads(out_json.read_text())
    live = (await agreement(shown))["task_types"]
    for name in ("refund", "appeal"):
        t = doc["task_types"][name]
        for key in ("segments", "evidence_state", "evidence_reason", "join_health"):
            assert t[key] == live[name][key], key
        assert t["next_gate"]["segments_missing"] == ["segment us: lower bound 0.2109 < 0.6"]
    page = " ".join(out_html.read_text().split())
    assert '<span class="badge bad">Evidence invalid</span> evidence invalid, no promotion' in page
    assert "<li>outcome coverage 0.0000 (0 covered, 4 missing, 64 pending)</li>" in page
    assert "<h3>Budgets of the L1 gate</h3>" in page
    assert "<li>human ceiling 0.5000 [" in page
    assert ("<td>cost per decision</td><td>$0.0010</td><td>mean $0.0020 over 64</td>") in page
    assert (
        "<li>projected daily cost at 64 decisions a day: agent $0.1280, humans $51.20</li>" in page
    )
    assert "<td class=num>$0.0020</td>" in page  # the summary's cost per decision
    assert "<h3>Segments</h3>" in page
    assert (
        "<tr><td>us</td><td class=num>20</td><td class=num>10</td><td class=num>50.00%</td>"
        "<td class=num>21.09%</td><td class=num>78.91%</td><td class=num>10</td>"
        "<td class=num>0</td><td>holds the promotion: lower bound 0.2109 &lt; 0.6</td></tr>"
    ) in page
    assert "per segment (each) (met overall, held by segment us: lower bound 0.2109" in page


def test_a_document_without_the_new_blocks_still_renders() -> None:
    """An older sidecar's document (no segments, join health or evidence state) renders as
    before: nothing invented."""
    entry = {
        "level": "L0",
        "n": 3,
        "agree": 3,
        "agreement": 1.0,
        "lower": 0.3,
        "upper": 1.0,
        "critical": 0,
        "errors": 0,
        "next_gate": None,
        "proposal": None,
    }
    out = io.StringIO()
    RichConsole(file=out, width=200).print(
        agreement_table({"frozen": False, "task_types": {"old": entry}})
    )
    text = out.getvalue()
    assert "segment" not in text
    assert "Evidence beside agreement" not in text
    assert segment_rows(entry) == []
    assert join_health_text(entry) is None


def test_a_gate_relative_to_the_human_ceiling_says_where_its_threshold_came_from() -> None:
    """``next_gate.below_human`` (shadow.noise): the status table and the report name the
    margin and the ceiling the threshold of the moment came from."""
    from datetime import UTC, datetime

    from shadow.report import build_report, render_html

    entry = {
        "level": "L0",
        "n": 300,
        "agree": 290,
        "agreement": 0.9667,
        "lower": 0.93,
        "upper": 0.99,
        "critical": 0,
        "errors": 0,
        "next_gate": {
            "level": "L1",
            "agreement": 0.93,
            "min_samples": 100,
            "max_critical": None,
            "met": True,
            "agreements_needed": 0,
            "below_human": {
                "margin": 0.02,
                "ceiling_upper": 0.95,
                "ceiling_n": 80,
                "threshold": 0.93,
            },
        },
        "proposal": None,
    }
    out = io.StringIO()
    doc = {"frozen": False, "task_types": {"t": entry}}
    RichConsole(file=out, width=200).print(agreement_table(doc))
    assert "L1: ≥0.93 n≥100 (ceiling-0.02) ✓" in out.getvalue()
    page = render_html(build_report(doc, {}, source={"db": "x"}, generated_at=datetime.now(UTC)))
    assert (
        "L1: ≥ 0.93, n ≥ 100 (the human ceiling&#x27;s upper bound 0.95 less 0.02, over 80 "
        "second opinions) (met)"
    ) in page


def test_the_noise_floor_lines_say_self_consistency_and_stable_once_when_they_agree() -> None:
    """The humans' line, then the agent's; self-consistency and stable are one figure when
    they count the same cases alike (``repeats: 1``, no failed try), two when a try failed."""
    ceiling = {"n": 88, "agree": 80, "agreement": 0.9091, "lower": 0.7993, "upper": 0.9781}
    consistency = {"n": 147, "agree": 135, "agreement": 0.9184, "lower": 0.8391, "upper": 0.9742}
    alike = {"n": 147, "stable": 135, "rate": 0.9184, "lower": 0.8391, "upper": 0.9742}
    entry: dict[str, Any] = {
        "human_ceiling": ceiling,
        "self_consistency": consistency,
        "stable": alike,
        "noisy_fields": [{"field": "outcome"}],
    }
    assert noise_lines(entry) == [
        "human ceiling 0.9091 [0.7993, 0.9781] of 88; noisy fields: outcome",
        "self-consistency and stable 0.9184 [0.8391, 0.9742] of 147",
    ]
    assert noise_text(entry) == "; ".join(noise_lines(entry))
    failed = {"n": 150, "stable": 135, "rate": 0.9, "lower": 0.8, "upper": 0.95}
    assert noise_lines({"self_consistency": consistency, "stable": failed}) == [
        "self-consistency 0.9184 [0.8391, 0.9742] of 147; stable 0.9000 [0.8000, 0.9500] of 150"
    ]
    assert noise_lines({"self_consistency": {"n": 0}, "stable": {"n": 0, "stable": 0}}) == []
    assert noise_text({"human_ceiling": {"n": 0}}) is None
