"""Each task type's per-segment figures in the replay report: the JSON entry (with bounds at
the task type's alpha), the terminal lines and the HTML table, on the paired history
(tests/replay/paired.py: segments ``eu`` and ``us``, 80 of 100 agreeing in each); and each
budget's statement in the terminal and the HTML page (tests/replay/budgeted.py's agents)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pytest

from shadow.cli import main
from shadow.stats import lower_bound, upper_bound
from tests.replay import paired


def test_segments_in_the_json_terminal_and_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history, policy = paired.write(tmp_path)
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    code = main(
        [
            "replay", "--history", str(history), "--agent", "tests.replay.paired:segment_shift",
            "--config", str(policy), "--no-progress", "--no-cache",
            "--json", str(out), "--html", str(html),
        ]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    segments = json.loads(out.read_text())["task_types"]["claim"]["segments"]
    # shift@2: right on 10 of eu's 20 wrong cases, wrong on 10 of us's right ones.
    expected = {"eu": (100, 90), "us": (100, 70)}
    for label, (n, agree) in expected.items():
        low, up = round(lower_bound(agree, n, 0.05), 4), round(upper_bound(agree, n, 0.05), 4)
        assert segments[label] == {
            "n": n,
            "agree": agree,
            "agreement": agree / n,
            "critical": 0,
            "errors": 0,
            "lower": low,
            "upper": up,
        }
    eu, us = segments["eu"], segments["us"]
    assert (
        f"claim: segments: eu 0.9000 [{eu['lower']:.4f}, {eu['upper']:.4f}] of 100, "
        f"us 0.7000 [{us['lower']:.4f}, {us['upper']:.4f}] of 100"
    ) in " ".join(text.split())
    page = html.read_text()
    assert "<h3>Segments</h3>" in page
    assert (
        "<tr><td>us</td><td class=num>100</td><td class=num>70</td>"
        f"<td class=num>70.00%</td><td class=num>{us['lower'] * 100:.2f}%</td>"
        f"<td class=num>{us['upper'] * 100:.2f}%</td><td class=num>0</td>"
        "<td class=num>0</td></tr>"
    ) in page


def test_a_history_without_segments_shows_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.replay import data

    history = data.write_jsonl(tmp_path / "h.jsonl")
    policy = tmp_path / "p.yaml"
    policy.write_text(data.POLICY)
    html = tmp_path / "r.html"
    argv = [
        "replay", "--history", str(history), "--agent", "tests.replay.data:candidate",
        "--config", str(policy), "--no-cache", "--no-progress", "--html", str(html),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "segments:" not in capsys.readouterr().out
    assert "<h3>Segments</h3>" not in html.read_text()


BUDGET_POLICY = """
task_types:
  claim:
    compare:
      fields:
        action: {match: exact, critical: true}
        code: {match: exact}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L1
      gates:
        L1: {agreement: 0.5, min_samples: 20, max_cost_usd_per_decision: 0.01, max_error_rate: 0.5}
"""


@pytest.mark.parametrize(("agent", "exceeded"), [("cheap", False), ("dear", True)])
def test_each_budget_statement_in_the_terminal_and_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], agent: str, exceeded: bool
) -> None:
    history, _ = paired.write(tmp_path)
    policy = tmp_path / "budgets.yaml"
    policy.write_text(BUDGET_POLICY)
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    code = main(
        [
            "replay", "--history", str(history), "--agent", f"tests.replay.budgeted:{agent}",
            "--config", str(policy), "--no-progress", "--no-cache",
            "--json", str(out), "--html", str(html),
        ]
    )  # fmt: skip
    assert code == 0  # no baseline: reported, not gated
    text = " ".join(capsys.readouterr().out.split())
    budgets = json.loads(out.read_text())["task_types"]["claim"]["budgets"]
    cost, errors = budgets["cost_usd_per_decision"], budgets["error_rate"]
    assert cost["exceeded"] is exceeded
    assert errors["exceeded"] is False
    page = html.read_text()
    for judged in (cost, errors):
        assert f"claim: {judged['statement']}" in text
        badge = "bad" if judged["exceeded"] else "ok"
        word = "exceeded" if judged["exceeded"] else "within"
        assert (
            f'<li><span class="badge {badge}">{word}</span> {escape(judged["statement"])} '
            "(the L1 gate's budget)</li>"
        ) in page
