"""``shadow report``: the live evidence report, from a real running sidecar (build_app,
aiohttp, a DuckDB file, a fake agent on loopback) through ``--url``, and from the same file
through ``--db`` once the sidecar has stopped; its JSON against ``GET /v1/agreement`` and
against a replay report's field names; its HTML in real headless Chromium; and the user's
mistakes (one line, exit 2). The command runs in process (:func:`shadow.cli.main`) on a
thread, since it runs its own event loop while the test's serves the sidecar."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from replay.report import TaskStats, totals_entry
from shadow.app import build_app
from shadow.cli import main
from shadow.policy import parse_policy
from shadow.report import SCHEMA, build_report, render_html
from shadow.roles import add_token
from shadow.server import Listener
from tests.shadow.conftest import (
    AgentServerFactory,
    Reply,
    Sidecar,
    agree_reply,
    clean_settings,
)

# ``refund`` promotes itself to L1 at 10 comparisons; ``appeal`` proposes L1 at 5.
POLICY = """
task_types:
  refund:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      ceiling: L2
      mode: auto
      gates:
        L1: {agreement: 0.5, min_samples: 10}
        L2: {agreement: 0.6, min_samples: 40}
  appeal:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      ceiling: L2
      mode: propose
      gates:
        L1: {agreement: 0.5, min_samples: 5}
        L2: {agreement: 0.55, min_samples: 10}
"""
# A /v1/agreement entry's fields that a replay report's task type entry has too, with the
# same meaning (and ``disagree``, which the live report adds from them).
SHARED = {
    "agent_version",
    "n",
    "agree",
    "agreement",
    "lower",
    "upper",
    "critical",
    "errors",
    "disagree",
    "acceptance",
}
LIVE_ONLY = {
    "level",
    "ceiling",
    "mode",
    "next_gate",
    "proposal",
    "partial_approval",
    "last_decision",
    "hold",
    "adjudicated",
    "level_history",
}


def answer(request: dict[str, Any]) -> Reply:
    return agree_reply({"action": "approve"})


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """``shadow report ARGV...`` in process."""
    capsys.readouterr()
    code = main(["report", *argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


async def report(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """:func:`run` on a thread, beside a sidecar served by the test's event loop."""
    return await asyncio.to_thread(run, capsys, *argv)


def assert_usage_error(res: Result, *needles: str) -> str:
    """Exit 2, exactly one stderr line ``shadow: error: ...`` containing every needle."""
    assert res.code == 2, res
    lines = res.err.splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("shadow: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@dataclass(eq=False)
class Running:
    """A sidecar the test can stop (to read its file with ``--db``)."""

    sc: Sidecar
    listener: Listener

    async def stop(self) -> None:
        await self.sc.session.close()
        await self.listener.close()  # closes the store: the file is free


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def running(tmp_path: Path, no_shadow_env: None) -> AsyncIterator[Start]:
    """``await running(agent=URL, **settings)``: the real app on 127.0.0.1:0 with a tmp
    DuckDB file, as tests/shadow/conftest.py's ``sidecar`` serves it; stopped after."""
    started: list[Running] = []

    async def start(**overrides: Any) -> Running:
        settings = clean_settings(tmp_path, f"report{len(started)}", **overrides)
        policy = parse_policy(POLICY)
        app = build_app(settings, policy=policy, registry=CollectorRegistry())
        listener = Listener(
            app,
            socket.create_server(("127.0.0.1", 0)),
            settings,
            access_log=None,
            shutdown_timeout=1.0,
        )
        await listener.start()
        url = f"http://127.0.0.1:{listener.port}"
        one = Running(Sidecar(url, app, settings, aiohttp.ClientSession(), policy), listener)
        started.append(one)
        return one

    yield start
    for one in reversed(started):
        await one.stop()


async def evidence(sc: Sidecar, task_type: str, count: int, wrong: int) -> None:
    """``count`` compared cases of ``task_type``; the agent gets the first ``wrong`` wrong."""
    ids = [f"{task_type}-{i}" for i in range(count)]
    events = [
        {"event_id": e, "task_type": task_type, "payload": {"k": i}} for i, e in enumerate(ids)
    ]
    outcomes = [
        {"event_id": e, "decision": {"action": "deny" if i < wrong else "approve"}}
        for i, e in enumerate(ids)
    ]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()


async def fed(running: Start, agent_server: AgentServerFactory, **settings: Any) -> Running:
    agent = await agent_server(answer)
    one = await running(agent=agent.url, **settings)
    await evidence(one.sc, "refund", 20, wrong=3)
    await evidence(one.sc, "appeal", 12, wrong=1)
    return one


# -- the report of a running sidecar, then of its file ---------------------------------------


async def test_the_report_has_the_agreement_documents_numbers_online_and_offline(
    running: Start,
    agent_server: AgentServerFactory,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    one = await fed(running, agent_server)
    sc = one.sc
    agreement = await sc.agreement()
    histories = {}
    for name in agreement["task_types"]:
        got = await sc.get(f"/v1/autonomy/{name}/history?limit=20")
        assert got.status == 200, got.body
        histories[name] = got.body["entries"]
    assert agreement["task_types"]["appeal"]["proposal"] is not None
    assert agreement["task_types"]["refund"]["level"] == "L1"

    out_json, out_html = tmp_path / "out" / "live.json", tmp_path / "out" / "live.html"
    res = await report(capsys, "--url", sc.url, "--json", str(out_json), "--html", str(out_html))
    assert res.code == 0, res.err
    assert f"wrote {out_json}" in res.out
    assert f"wrote {out_html}" in res.out
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == SCHEMA
    assert doc["source"] == {"url": sc.url}
    assert doc["frozen"] is False
    assert doc["task_types"].keys() == agreement["task_types"].keys()
    for name, served in agreement["task_types"].items():
        entry = doc["task_types"][name]
        # Every field of /v1/agreement, as served; the live additions beside them.
        assert {k: entry[k] for k in served} == served, name
        added = {"disagree", "level_history", "partial_approval", "adjudicated"}
        assert set(entry) - set(served) <= added  # the last two: null when not served
        assert entry["disagree"] == served["n"] - served["agree"] - served["errors"]
        assert entry["level_history"] == histories[name]
        assert entry["adjudicated"] == served.get("adjudicated")
    refund = doc["task_types"]["refund"]
    assert (refund["n"], refund["agree"], refund["disagree"]) == (20, 17, 3)
    assert refund["level_history"][0]["action"] == "promote"  # newest first
    totals = doc["totals"]
    assert (totals["n"], totals["agree"]) == (32, 28)
    assert totals["lower"] <= totals["agreement"] <= totals["upper"]

    page = out_html.read_text()
    assert "Live evidence report" in page
    assert "no reviews yet" in page
    assert "Proposal " in page
    assert "L0 → L1" in page

    # The same document offline, from the file, once the sidecar has stopped.
    await one.stop()
    offline = tmp_path / "offline.json"
    res = await report(capsys, "--db", sc.settings.db, "--json", str(offline))
    assert res.code == 0, res.err
    doc2 = json.loads(offline.read_text())
    assert doc2["source"] == {"db": sc.settings.db}
    assert doc2["task_types"] == doc["task_types"]
    assert doc2["totals"] == doc["totals"]
    # ... and the file was not written to (read-only): the same bytes report the same.
    again = tmp_path / "again.json"
    assert (await report(capsys, "--db", sc.settings.db, "--json", str(again))).code == 0
    assert json.loads(again.read_text())["task_types"] == doc["task_types"]

    # --history 0: no level history, nothing else changes.
    bare = tmp_path / "bare.json"
    assert (
        await report(capsys, "--db", sc.settings.db, "--history", "0", "--json", str(bare))
    ).code == 0
    doc3 = json.loads(bare.read_text())
    for name, entry in doc3["task_types"].items():
        assert entry.pop("level_history") == []
        assert entry == {k: v for k, v in doc["task_types"][name].items() if k != "level_history"}


def test_the_report_uses_the_replay_reports_field_names_for_what_they_share() -> None:
    """Same names where the meaning is the same: the evidence fields, ``disagree`` and
    ``acceptance`` of a task type, and the totals; the rest is live only or replay only."""
    policy = parse_policy(POLICY)
    replay_entry = TaskStats("refund", policy.task_types["refund"]).entry()
    agreement = {
        "frozen": False,
        "task_types": {
            "refund": {
                "level": "L1",
                "agent_version": "a@1",
                "n": 10,
                "agree": 8,
                "agreement": 0.8,
                "lower": 0.4,
                "upper": 0.97,
                "critical": 1,
                "errors": 1,
                "acceptance": {
                    "agent": {"n": 2, "agree": 2, "agreement": 1.0},
                    "assisted": {"n": 0, "agree": 0, "agreement": None},
                },
                "next_gate": None,
                "proposal": None,
                "last_decision": None,
                "hold": None,
                "ceiling": "L1",
                "mode": "auto",
            }
        },
    }
    doc = build_report(agreement, {}, source={"url": "u"}, generated_at=datetime.now(UTC))
    live_entry = doc["task_types"]["refund"]
    assert set(live_entry) & set(replay_entry) == SHARED
    assert set(live_entry) - set(replay_entry) == LIVE_ONLY
    assert live_entry["acceptance"].keys() == replay_entry["acceptance"].keys()
    for handled_by, a in live_entry["acceptance"].items():
        assert a.keys() == replay_entry["acceptance"][handled_by].keys()
    assert doc["totals"].keys() == totals_entry({}, 0.05).keys()
    assert doc["totals"]["acceptance"]["agent"] == {"n": 2, "agree": 2, "agreement": 1.0}
    assert live_entry["disagree"] == 1
    assert live_entry["adjudicated"] is None  # a sidecar without reviews: still the key


# -- HTML --------------------------------------------------------------------------------------


def adjudicated_doc(**adjudicated: Any) -> dict[str, Any]:
    entry = {
        "level": "L1",
        "agent_version": "<script>alert(1)</script>",
        "n": 40,
        "agree": 30,
        "agreement": 0.75,
        "lower": 0.55,
        "upper": 0.9,
        "critical": 0,
        "errors": 0,
        "acceptance": {},
        "next_gate": {
            "level": "L2",
            "agreement": 0.6,
            "min_samples": 10,
            "max_critical": None,
            "met": False,
            "evidence": "adjudicated",
            "agreements_needed": 4,
        },
        "proposal": None,
        "ceiling": "L2",
        "mode": "auto",
        "adjudicated": adjudicated or None,
    }
    agreement = {"frozen": True, "task_types": {"refund": entry}}
    return build_report(agreement, {}, source={"db": "x"}, generated_at=datetime.now(UTC))


def test_the_html_shows_the_adjudicated_estimate_once_there_are_reviews() -> None:
    page = render_html(
        adjudicated_doc(
            estimate=0.9712,
            lower=0.9105,
            upper=0.9934,
            reviewed={"agree": 12, "disagree": 30},
            acceptable={"agree": 12, "disagree": 18},
            reviewer_agreement={"cases": 5, "agree": 4, "rate": 0.8},
        )
    )
    assert "Estimate 97.12%, bounds [91.05%, 99.34%]" in page
    assert "12 agreements and 30 disagreements" in page
    assert "Reviewers agree on 4 of 5 cases" in page
    assert "<title>adjudicated 97.12%</title></polygon>" in page  # the chart's diamond
    assert "on the adjudicated bound (needs +4 agreeing)" in page
    assert "FROZEN" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)" in page


def test_the_html_says_no_reviews_yet_without_reviews() -> None:
    for doc in (
        adjudicated_doc(),
        adjudicated_doc(
            estimate=0.75,
            lower=0.0,
            upper=1.0,
            reviewed={"agree": 0, "disagree": 0},
            acceptable={"agree": 0, "disagree": 0},
            reviewer_agreement=None,
        ),
    ):
        page = render_html(doc)
        assert "No reviews yet" in page
        assert "<td>no reviews yet</td>" in page
        assert "<polygon" not in page


@pytest.mark.slow  # Chromium
async def test_the_html_renders_in_chromium_without_errors_or_network(
    running: Start,
    agent_server: AgentServerFactory,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from tests.replay.test_html import render

    one = await fed(running, agent_server)
    html = tmp_path / "live.html"
    assert (await report(capsys, "--url", one.sc.url, "--html", str(html))).code == 0
    refund = (await one.sc.agreement())["task_types"]["refund"]
    text, problems, network, svgs = await asyncio.to_thread(render, html)
    assert problems == []
    assert network == []
    assert "Live evidence report" in text
    row = re.search(r"refund\s+20\s+17\s+85\.00%\s+([\d.]+)%\s+([\d.]+)%\s+3\s+0\s+L1", text)
    assert row is not None, text[:2000]
    assert float(row.group(1)) == pytest.approx(refund["lower"] * 100, abs=0.005)
    assert float(row.group(2)) == pytest.approx(refund["upper"] * 100, abs=0.005)
    assert "no reviews yet" in text
    assert "Level history (newest" in text
    assert svgs == 1  # the agreement chart


# -- mistakes and refusals ----------------------------------------------------------------------


def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_shadow_env: None
) -> None:
    db = str(tmp_path / "x.duckdb")
    out = str(tmp_path / "r.json")
    assert_usage_error(run(capsys, "--db", db), "name at least one output")
    assert_usage_error(run(capsys, "--db", db, "--url", "http://x", "--json", out), "not allowed")
    assert_usage_error(run(capsys, "--db", db, "--json", out, "--history", "-1"), "--history")
    assert_usage_error(run(capsys, "--db", db, "--json", out, "--history", "x"), "invalid int")
    assert_usage_error(run(capsys, "--db", db, "--pdf", out), "unrecognized arguments")


def test_a_missing_or_unreadable_db_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_shadow_env: None
) -> None:
    import duckdb

    out = str(tmp_path / "r.json")
    missing = tmp_path / "none.duckdb"
    assert_usage_error(
        run(capsys, "--db", str(missing), "--json", out),
        f"no sidecar database at {missing}",
    )
    assert not missing.exists(), "report must not create the file it was asked to read"
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database\n" * 10)
    assert_usage_error(run(capsys, "--db", str(junk), "--json", out), "cannot open store")
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    assert_usage_error(run(capsys, "--db", str(empty), "--json", out), "not a sidecar's store")
    assert_usage_error(run(capsys, "--db", str(tmp_path), "--json", out), "no sidecar database")
    assert not Path(out).exists()


def test_an_unreachable_url_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_shadow_env: None
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = str(tmp_path / "r.json")
    assert_usage_error(
        run(capsys, "--url", url, "--json", out), f"cannot reach the sidecar at {url}"
    )
    assert not Path(out).exists()


async def test_an_answer_that_is_not_the_agreement_document_is_one_line(
    capsys: pytest.CaptureFixture[str], agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    agent = await agent_server(answer)  # a server, but not a sidecar: 404 for /v1/agreement
    base = agent.url.removesuffix("/decide")
    line = assert_usage_error(
        await report(capsys, "--url", base, "--json", str(tmp_path / "r.json")),
        f"GET {base}/v1/agreement: HTTP 404",
    )
    assert "Not Found" in line


async def test_a_refused_credential_prints_the_servers_reason(
    running: Start,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = tmp_path / "tokens.yaml"
    viewer = add_token(tokens, "dash", ["viewer"])
    ingest = add_token(tokens, "feeder", ["ingest"])
    one = await running(tokens_file=tokens, admin_token=None)
    out = tmp_path / "r.json"
    argv = ("--url", one.sc.url, "--json", str(out))
    assert_usage_error(await report(capsys, *argv), "HTTP 401", "no token", "viewer role")
    monkeypatch.setenv("SHADOW_TOKEN", "not-a-token-0123456789")
    assert_usage_error(await report(capsys, *argv), "HTTP 401", "unknown token")
    monkeypatch.setenv("SHADOW_TOKEN", ingest)
    assert_usage_error(
        await report(capsys, *argv), "HTTP 403", "feeder has the role(s) ingest; this needs viewer"
    )
    assert not out.exists()
    monkeypatch.setenv("SHADOW_TOKEN", viewer)
    res = await report(capsys, *argv)
    assert res.code == 0, res.err
    assert json.loads(out.read_text())["task_types"].keys() == {"refund", "appeal"}


async def test_an_output_that_cannot_be_written_is_one_line(
    running: Start, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one = await running()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = assert_usage_error(
        await report(capsys, "--url", one.sc.url, "--json", str(blocker / "r.json")),
        f"cannot write {blocker / 'r.json'}",
    )
    assert "Traceback" not in line
