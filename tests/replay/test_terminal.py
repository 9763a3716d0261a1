"""The progress bar (rate, ETA, calls and cache hits) and the terminal report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from replay.cache import CallStats
from replay.terminal import Progress, print_report
from shadow.cli import main
from tests.replay import data


def test_progress_bar_shows_rate_eta_calls_and_hits() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    stats = CallStats(calls=7, hits=3)
    with Progress(console, 40, stats) as bar:
        bar.advance(10)
        bar.advance(10)
    text = out.getvalue()
    assert "20/20" in text  # the bar ends full at the cases actually read
    assert "cases/s" in text
    assert "ETA" in text
    assert "7 calls, 3 cached" in text


def test_disabled_progress_prints_nothing() -> None:
    out = io.StringIO()
    with Progress(Console(file=out, force_terminal=True), 5, CallStats(), enabled=False) as bar:
        bar.advance(5)
    assert out.getvalue() == ""


def test_terminal_report_from_a_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    history = data.write_jsonl(tmp_path / "h.jsonl")
    policy = tmp_path / "p.yaml"
    policy.write_text(data.POLICY)
    out = tmp_path / "r.json"
    argv = [
        "replay",
        "--history",
        str(history),
        "--agent",
        "tests.replay.data:candidate",
        "--config",
        str(policy),
        "--no-cache",
        "--no-progress",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "refund: most disagreed fields: action 10/60, amount 3/60" in text
    assert "100 cases selected of 100; 100 agent calls, 0 cached answers" in text
    doc = json.loads(out.read_text())
    console = Console(file=io.StringIO(), width=160)
    print_report(console, doc)
    rendered = console.file.getvalue()  # type: ignore[attr-defined]
    assert "0.8000" in rendered
    assert "0.9000" in rendered
