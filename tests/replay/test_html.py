"""The HTML report in a real headless Chromium (Debian ``chromium``, driven by Playwright):
it renders the numbers, logs no console error and asks the network for nothing."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from replay.html import render_html
from shadow.cli import main
from shadow.model import Comparison, Verdict
from shadow.store import Store
from shadow.tracing import case_ids
from tests.conftest import require_tool
from tests.replay import data
from tests.replay.conftest import NOW, write_sidecar_history

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def report(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[Path, Path]:
    history = data.write_jsonl(tmp_path / "history.jsonl")
    policy = tmp_path / "policy.yaml"
    policy.write_text(data.POLICY)
    base, out, html = tmp_path / "base.json", tmp_path / "r.json", tmp_path / "r.html"
    common = [
        "replay",
        "--history",
        str(history),
        "--config",
        str(policy),
        "--no-progress",
        "--cache",
        str(tmp_path / "c.duckdb"),
    ]
    assert main([*common, "--agent", "tests.replay.data:baseline", "--json", str(base)]) == 0
    assert (
        main(
            [
                *common,
                "--agent",
                "tests.replay.data:candidate",
                "--baseline",
                str(base),
                "--json",
                str(out),
                "--html",
                str(html),
                *extra,
            ]
        )
        == 0
    )
    capsys.readouterr()
    return out, html


def render(html: Path) -> tuple[str, list[str], list[str], int]:
    """(visible text, console errors and page errors, network requests, svg count)."""
    chromium = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            text = page.inner_text("body")
            svgs = page.locator("svg").count()
        finally:
            browser.close()
    return text, problems, [u for u in requests if not u.startswith("file:")], svgs


@pytest.mark.slow  # Chromium
def test_report_renders_in_chromium_without_errors_or_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, html = report(tmp_path, capsys)
    doc: dict[str, Any] = json.loads(out.read_text())
    text, problems, network, svgs = render(html)
    assert problems == []
    assert network == []
    assert "Replay report: cand@2" in text
    assert "Regression vs baseline on refund" in text
    # The summary row of refund: n 60, agree 48, 80.00%, bounds as in the JSON.
    refund = doc["task_types"]["refund"]
    row = re.search(r"refund\s+60\s+48\s+80\.00%\s+([\d.]+)%\s+([\d.]+)%\s+10\s+0\s+L1", text)
    assert row is not None, text[:2000]
    assert float(row.group(1)) == pytest.approx(refund["lower"] * 100, abs=0.005)
    assert "-20.00 pp (worse)" in text
    assert "Confusion matrix: queue (rows: human, columns: agent)" in text
    assert "Critical misses (first 5 by event id)" in text
    assert "rf-040" in text
    assert "significantly worse" in text
    # One agreement chart, then per task type: fields and latency.
    assert svgs == 1 + 2 * 2


@pytest.mark.slow  # Chromium
def test_html_escapes_history_text(tmp_path: Path) -> None:
    doc: dict[str, Any] = {
        "complete": True,
        "agent": {"agent_version": "<script>alert(1)</script>", "spec": "x"},
        "history": {"path": "<b>h</b>", "format": "jsonl", "selected": 0, "cases": 0},
        "policy": {"source": "p", "hash": "h"},
        "regression": None,
        "task_types": {},
    }
    page = render_html(doc)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    path = tmp_path / "x.html"
    path.write_text(page)
    text, problems, network, _ = render(path)
    assert problems == []
    assert network == []
    assert "<script>alert(1)</script>" in text


async def test_example_cases_carry_their_live_trace_and_link_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sidecar history whose comparisons kept their trace ids (tracing on live, schema
    v13): each example case of the report names its trace, and the page links it with
    SHADOW_TRACE_URL."""
    db = await write_sidecar_history(tmp_path / "sidecar.duckdb")
    traced = {
        f"rf-{i:03d}": case_ids("shadow-sidecar", f"rf-{i:03d}")[0].hex() for i in range(30, 60)
    }
    async with Store(db) as store:
        await store.put_comparisons(
            [
                Comparison(eid, "refund", "live@1", Verdict.AGREE, trace_id=trace)
                for eid, trace in traced.items()
            ],
            now=NOW,
        )
    policy = tmp_path / "policy.yaml"
    policy.write_text(data.POLICY)
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    monkeypatch.setenv("SHADOW_TRACE_URL", "http://phoenix.test/projects/p/traces/{trace_id}")
    args = ["replay", "--history", str(db), "--config", str(policy), "--no-progress"]
    args += ["--agent", "tests.replay.data:candidate", "--cache", str(tmp_path / "c.duckdb")]
    assert await asyncio.to_thread(main, [*args, "--json", str(out), "--html", str(html)]) == 0
    capsys.readouterr()
    examples = json.loads(out.read_text())["task_types"]["refund"]["critical_examples"]
    assert examples
    for example in examples:
        assert example["trace_id"] == traced[example["event_id"]]
        link = f"http://phoenix.test/projects/p/traces/{example['trace_id']}"
        assert f'<a href="{link}">' in html.read_text()
