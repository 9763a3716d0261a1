"""Replay honours how each item was handled, as the live sidecar does: only blind outcomes are
evidence; the outcomes of items the agent handled, or decided by a human shown its proposal,
are reported beside it as acceptance (``GET /v1/agreement``'s shape) and never move the
agreement, the gates or the regression test.

The sidecar history is made by a real sidecar (build_app on a DuckDB file, a real agent on
loopback) whose task type graduated L0 -> L1 -> L3 through its gates while a host routed
every item and posted what its handler decided (tests/replay/graduated.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from prometheus_client import CollectorRegistry

from replay.document import build_document, deterministic_view
from replay.history import History
from replay.model import Selection
from replay.runner import ReplayRunner, StoreAnswers
from shadow.app import build_app
from shadow.cli import main
from shadow.model import Level
from shadow.policy import parse_policy
from shadow.server import Listener
from tests.replay import graduated
from tests.replay.conftest import write_parquet, write_sidecar_history
from tests.shadow.conftest import (
    AgentServerFactory,
    Sidecar,
    agree_reply,
    clean_settings,
    no_shadow_env,
)

__all__ = ["no_shadow_env"]

NEAR_OLD = "tests.replay.graduated:near_old"
TRUTHFUL = "tests.replay.graduated:truthful"
OUTCOME_FIELDS = ("n", "agree", "agreement", "lower", "upper", "critical", "errors")


@contextlib.asynccontextmanager
async def running_sidecar(tmp_path: Path, agent_url: str) -> AsyncIterator[Sidecar]:
    """The real app on a DuckDB file, served as ``shadow run`` does; closed (the store
    too) when the block ends, so replay can open the file."""
    settings = clean_settings(
        tmp_path, "graduated", agent=agent_url, agent_version=graduated.OLD_VERSION
    )
    policy = parse_policy(graduated.POLICY)
    app = build_app(settings, policy=policy, registry=CollectorRegistry())
    sock = socket.create_server(("127.0.0.1", 0))
    async with (
        Listener(app, sock, settings, access_log=None, shutdown_timeout=1.0) as listener,
        aiohttp.ClientSession() as session,
    ):
        yield Sidecar(f"http://127.0.0.1:{listener.port}", app, settings, session, policy)


async def approve(sc: Sidecar, level: Level) -> None:
    await sc.pipeline.evaluate()
    res = await sc.post(
        "/v1/autonomy/refund/approve",
        json_body={"to": str(level), "actor": "ops/test", "reason": "gate met"},
        headers=sc.admin,
    )
    assert res.status == 200, res.body
    assert sc.pipeline.ladder.level("refund") == level


async def graduated_history(
    tmp_path: Path, agent_server: AgentServerFactory
) -> tuple[Path, dict[str, Any]]:
    """The sidecar's DuckDB file after the graduation, and its live ``/v1/agreement`` entry."""
    agent = await agent_server(
        lambda body: agree_reply(
            {"action": graduated.old(body["payload"]["amount"])}, graduated.OLD_VERSION
        )
    )
    items = graduated.items()
    async with running_sidecar(tmp_path, agent.url) as sc:
        res = await sc.post_ndjson("/v1/events", [graduated.event(i) for i in items])
        assert res.status == 202, res.body
        await sc.pipeline.drain()
        start = 0
        for level, count in graduated.PHASES:
            if level == Level.L1:
                await approve(sc, Level.L1)
            elif level == Level.L3:
                await approve(sc, Level.L2)
                await approve(sc, Level.L3)
            phase = items[start : start + count]
            start += count
            # The host asks where each item goes, then posts what its handler decided.
            for item in phase:
                answer = await sc.get(
                    f"/v1/route/refund?event_id={item.event_id}", headers=sc.admin
                )
                assert answer.status == 200, answer.body
                assert (answer.body["level"], answer.body["handled_by"]) == (
                    str(level),
                    item.handled_by.value,
                )
            outcomes = [graduated.outcome(i, stated=i.stated) for i in phase]
            assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
            await sc.pipeline.drain()
        rest = items[start:]
        outcomes = [graduated.outcome(i, stated=i.stated) for i in rest]
        assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
        await sc.pipeline.drain()
        await sc.pipeline.evaluate()
        live = (await sc.agreement())["task_types"]["refund"]
    assert live["agent_version"] == graduated.OLD_VERSION
    assert live["level"] == "L3"
    return Path(sc.settings.db), live


def replay_cli(
    capsys: pytest.CaptureFixture[str], history: Path, agent: str, tmp_path: Path, *extra: str
) -> tuple[int, str, str]:
    policy = tmp_path / "graduated.yaml"
    policy.write_text(graduated.POLICY)
    code = main(
        [
            "replay",
            "--history",
            str(history),
            "--agent",
            agent,
            "--config",
            str(policy),
            "--no-progress",
            "--no-cache",
            *extra,
        ]
    )
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_scored_on_blind_outcomes(doc: dict[str, Any], want: graduated.Expected) -> None:
    refund = doc["task_types"]["refund"]
    assert (refund["n"], refund["agree"]) == (want.n, want.agree)
    assert refund["agreement"] == want.agreement
    assert refund["acceptance"] == want.acceptance
    assert doc["totals"]["n"] == want.n
    assert doc["totals"]["acceptance"] == want.acceptance
    # Every case was still run and compared.
    assert doc["history"]["scored"] == want.all_n
    assert sum(refund["agent_versions"].values()) == want.all_n
    assert refund["gates"]["cleared"] == "L3"


async def test_a_graduated_sidecar_history_is_scored_on_its_blind_outcomes_only(
    tmp_path: Path,
    agent_server: AgentServerFactory,
    capsys: pytest.CaptureFixture[str],
    no_shadow_env: None,
) -> None:
    db, live = await graduated_history(tmp_path, agent_server)

    # The old agent's live decisions, re-scored by replay: exactly the live evidence and
    # acceptance of GET /v1/agreement (the same rule, from the same store).
    policy = parse_policy(graduated.POLICY)
    async with History(db) as history:
        result = await ReplayRunner(history, policy, StoreAnswers(history, "old@1")).run()
    stored = build_document(
        result,
        policy=policy,
        agent={"spec": "store:old@1"},
        history=str(db),
        selection=Selection(),
        alpha=0.05,
        run={},
    )["task_types"]["refund"]
    assert {k: stored[k] for k in (*OUTCOME_FIELDS, "acceptance")} == {
        k: live[k] for k in (*OUTCOME_FIELDS, "acceptance")
    }
    old = graduated.expected(graduated.old)
    assert (live["n"], live["agree"]) == (old.n, old.agree)
    assert live["acceptance"]["agent"]["n"] > 0
    assert live["acceptance"]["assisted"]["n"] > 0

    # A candidate close to the old agent: its agreement is the blind figure, not the one
    # the echoed outcomes inflate.
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    code, text, err = await asyncio.to_thread(
        replay_cli, capsys, db, NEAR_OLD, tmp_path, "--json", str(out), "--html", str(html)
    )
    assert code == 0, err
    doc = json.loads(out.read_text())
    want = graduated.expected(graduated.near_old_action)
    assert_scored_on_blind_outcomes(doc, want)
    assert want.agreement == 0.8667  # 130 of 150 blind outcomes
    # 474 of 510: what replay reported before it honoured how items were handled.
    assert want.all_agreement == 0.9294
    assert "acceptance (not evidence)" in text
    agent_acc = want.acceptance["agent"]
    assert f"agent {agent_acc['agreement']:.4f} of {agent_acc['n']}" in text
    page = html.read_text()
    assert "Acceptance (not evidence" in page
    assert f"agent {agent_acc['agreement'] * 100:.2f}% of {agent_acc['n']}" in page


async def test_the_regression_gate_compares_blind_evidence_only(
    tmp_path: Path,
    agent_server: AgentServerFactory,
    capsys: pytest.CaptureFixture[str],
    no_shadow_env: None,
) -> None:
    """The truthful candidate is right on every blind outcome (the old agent on 80%), but
    contradicts the old agent's echoes: counted over every outcome it would look
    significantly worse than the old agent and fail the CI gate."""
    db, live = await graduated_history(tmp_path, agent_server)
    out = tmp_path / "r.json"
    code, text, err = await asyncio.to_thread(
        replay_cli,
        capsys,
        db,
        TRUTHFUL,
        tmp_path,
        "--baseline-version",
        graduated.OLD_VERSION,
        "--fail-if-worse",
        "--json",
        str(out),
    )
    assert code == 0, text + err
    doc = json.loads(out.read_text())
    want = graduated.expected(graduated.truthful_action)
    assert_scored_on_blind_outcomes(doc, want)
    assert want.agreement == 1.0
    base = doc["task_types"]["refund"]["baseline"]
    assert (base["n"], base["agree"]) == (live["n"], live["agree"])
    assert base["significantly_better"] is True
    assert doc["regression"]["regression"] is False
    assert doc["baseline"]["blind_only"] is True
    # Over every outcome the verdict would have been the opposite.
    old = graduated.expected(graduated.old)
    assert want.all_agreement < old.all_agreement


@pytest.mark.parametrize("layout", ["jsonl", "parquet", "parquet-joined"])
def test_exported_histories_honour_handled_by(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    records = graduated.file_records()
    if layout == "jsonl":
        history = graduated.write_jsonl(tmp_path / "h.jsonl", records)
    elif layout == "parquet":
        history = write_parquet(tmp_path / "h.parquet", records, extra=("handled_by",))
    else:
        by_id: dict[str, dict[str, Any]] = {}
        for r in records:
            by_id.setdefault(r["event_id"], {}).update({k: v for k, v in r.items() if k != "kind"})
        history = write_parquet(
            tmp_path / "h.parquet", list(by_id.values()), joined=True, extra=("handled_by",)
        )
    assert any(r.get("handled_by") == "assisted" for r in records)
    assert any(r["kind"] == "outcome" and "handled_by" not in r for r in records)
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    code, text, err = replay_cli(
        capsys, history, NEAR_OLD, tmp_path, "--json", str(out), "--html", str(html)
    )
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert_scored_on_blind_outcomes(doc, graduated.expected(graduated.near_old_action))
    assert "acceptance (not evidence)" in text
    assert "Acceptance (not evidence" in html.read_text()
    if layout == "jsonl":
        # Sharded, the acceptance tallies merge to the single-process report.
        sharded = tmp_path / "s.json"
        code, _, err = replay_cli(
            capsys, history, NEAR_OLD, tmp_path, "--json", str(sharded), "--workers", "2"
        )
        assert code == 0, err
        assert deterministic_view(json.loads(sharded.read_text())) == deterministic_view(doc)


async def test_a_malformed_handled_by_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In every format, as the live ingest refuses it: exit 2, naming where it is."""
    item = graduated.items()[0]
    good = [graduated.event(item), graduated.outcome(item, stated=None)]
    bad = [good[0], good[1] | {"handled_by": "robot"}]
    cases: list[tuple[Path, str]] = [
        (
            graduated.write_jsonl(tmp_path / "bad.jsonl", bad),
            'bad.jsonl:2: handled_by: expected "agent", "assisted" or "blind"',
        ),
        (
            write_parquet(tmp_path / "bad.parquet", bad, extra=("handled_by",)),
            'bad.parquet: row 2, column handled_by: expected "agent", "assisted" or "blind"',
        ),
    ]
    typed = tmp_path / "typed.parquet"
    con = duckdb.connect()
    try:
        con.execute(
            "COPY (SELECT 'g-1' AS event_id, 'refund' AS task_type, '{}' AS payload, "
            f"'{{}}' AS decision, 1 AS handled_by) TO '{typed}' (FORMAT parquet)"
        )
    finally:
        con.close()
    cases.append((typed, "column handled_by has type INTEGER; expected VARCHAR"))
    # A sidecar file whose stored value was tampered with (the sidecar stores only valid ones).
    db = await write_sidecar_history(tmp_path / "bad.duckdb")
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE outcomes SET handled_by = 'robot' WHERE event_id = 'rf-003'")
    finally:
        con.close()
    cases.append((db, "table outcomes, event 'rf-003', column handled_by: expected"))
    for history, needle in cases:
        code, _, err = await asyncio.to_thread(replay_cli, capsys, history, NEAR_OLD, tmp_path)
        assert code == 2, (history, err)
        assert err.startswith("shadow: error: "), err
        assert needle in err, err


def test_a_baseline_report_written_before_blind_only_scoring_is_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A saved report without ``acceptance`` may have counted echoed outcomes: the
    comparison still runs, and says so."""
    history = graduated.write_jsonl(tmp_path / "h.jsonl", graduated.file_records())
    base = tmp_path / "base.json"
    code, _, err = replay_cli(capsys, history, NEAR_OLD, tmp_path, "--json", str(base))
    assert code == 0, err
    old_style = json.loads(base.read_text())
    for entry in old_style["task_types"].values():
        del entry["acceptance"]
    base.write_text(json.dumps(old_style))
    out = tmp_path / "r.json"
    code, text, err = replay_cli(
        capsys, history, NEAR_OLD, tmp_path, "--baseline", str(base), "--json", str(out)
    )
    assert code == 0, err
    assert json.loads(out.read_text())["baseline"]["blind_only"] is False
    assert "the baseline report predates blind-only scoring" in " ".join(text.split())
