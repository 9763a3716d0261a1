"""``shadow replay`` end to end: exit codes, the regression gate, a baseline from the store,
replay evidence, and the real entry point killed (-9) or interrupted (SIGINT) mid-run."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from replay.document import deterministic_view
from shadow.cli import main
from shadow.store import Store
from tests.replay import data
from tests.replay.conftest import PYTHON, replay_env, write_sidecar_history
from tests.shadow.conftest import AgentServer, AgentServerFactory, Reply

CANDIDATE = "tests.replay.data:candidate"
BASELINE = "tests.replay.data:baseline"


def replay(
    capsys: pytest.CaptureFixture[str], history: Path, agent: str, policy: Path, *extra: str
) -> tuple[int, str, str]:
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
            *extra,
        ]
    )
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines, err
    assert lines[0].startswith("shadow: error: "), err
    return err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--fail-if-worse"], "--fail-if-worse needs --baseline"),
        (["--sample", "0"], "--sample: 0.0 is out of range"),
        (["--concurrency", "0"], "--concurrency: 0 is out of range"),
        (["--since", "2026-11-01"], "has no timezone"),
        (["--since", "last week"], "--since: expected an ISO-8601 time"),
        (["--task-type", "nope"], "--task-type 'nope' is not in the policy"),
        (["--baseline", "missing.json"], "cannot read baseline missing.json"),
        (["--baseline", "x.json", "--baseline-version", "v1"], "not allowed with argument"),
        (["--record-evidence"], "--record-evidence needs --db STORE"),
        (["--workers", "0"], "--workers: 0 is out of range"),
        (["--workers", "2", "--limit", "5"], "--workers cannot be combined with --limit"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
    jsonl_history: Path,
    policy_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = replay(capsys, jsonl_history, CANDIDATE, policy_file, "--no-cache", *extra)
    assert code == 2
    assert needle in one_error(err)


def test_required_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--history", "h.jsonl"]) == 2
    assert "the following arguments are required: --agent, --config" in capsys.readouterr().err


def test_bad_inputs_exit_2_naming_the_problem(
    capsys: pytest.CaptureFixture[str], policy_file: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(data.refund_event(1)) + '\n{"kind": "event"\n')
    code, _, err = replay(capsys, bad, CANDIDATE, policy_file, "--no-cache")
    assert code == 2
    assert f"{bad}:2: invalid JSON" in one_error(err)
    code, _, err = replay(capsys, bad, "no-colon", policy_file, "--no-cache")
    assert code == 2
    assert "agent must be an http(s) URL or module:callable" in one_error(err)
    code, _, err = replay(capsys, bad, CANDIDATE, tmp_path / "nope.yaml", "--no-cache")
    assert code == 2
    assert "cannot read file" in one_error(err)
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"schema": "shadow-replay-report/1", "task_types": {"a": {}}}))
    code, _, err = replay(capsys, bad, CANDIDATE, policy_file, "--baseline", str(baseline))
    assert code == 2
    assert "task_types.a.n: expected a whole number" in one_error(err)


def test_fail_if_worse_gates_on_a_significant_regression(
    capsys: pytest.CaptureFixture[str], jsonl_history: Path, policy_file: Path, tmp_path: Path
) -> None:
    base, cand, same = (tmp_path / f"{n}.json" for n in ("base", "cand", "same"))
    cache = str(tmp_path / "cache.duckdb")
    code, _, _ = replay(
        capsys, jsonl_history, BASELINE, policy_file, "--cache", cache, "--json", str(base)
    )
    assert code == 0
    code, out, _ = replay(
        capsys,
        jsonl_history,
        CANDIDATE,
        policy_file,
        "--cache",
        cache,
        "--baseline",
        str(base),
        "--fail-if-worse",
        "--json",
        str(cand),
    )
    assert code == 1
    assert "REGRESSION vs baseline on: refund" in out
    doc = json.loads(cand.read_text())
    assert doc["regression"]["worse"] == ["refund"]
    assert doc["regression"]["compared"] == [
        "refund",
        "ticket",
    ]
    refund = doc["task_types"]["refund"]["baseline"]
    assert refund["n"] == 60
    assert refund["agree"] == 60
    assert refund["significantly_worse"]
    assert refund["delta"]["agreement"] == -0.2
    assert "significantly worse" in refund["statement"]
    ticket = doc["task_types"]["ticket"]["baseline"]
    assert ticket["agree"] == 39
    assert not ticket["significantly_worse"]
    # The baseline against itself: no regression, exit 0.
    code, out, _ = replay(
        capsys,
        jsonl_history,
        BASELINE,
        policy_file,
        "--cache",
        cache,
        "--baseline",
        str(base),
        "--fail-if-worse",
        "--json",
        str(same),
    )
    assert code == 0
    assert "no significant regression" in out
    # Without --fail-if-worse the regression is reported, not an exit code.
    code, _, _ = replay(
        capsys, jsonl_history, CANDIDATE, policy_file, "--cache", cache, "--baseline", str(base)
    )
    assert code == 0


@pytest.mark.slow  # worker processes
def test_workers_give_the_single_process_report(
    capsys: pytest.CaptureFixture[str], jsonl_history: Path, policy_file: Path, tmp_path: Path
) -> None:
    one, two, rated = tmp_path / "one.json", tmp_path / "two.json", tmp_path / "rated.json"
    runs = ((one, ()), (two, ("--workers", "2")), (rated, ("--workers", "2", "--rate", "1000")))
    for out, extra in runs:
        cache = str(tmp_path / f"{out.stem}.duckdb")
        code, _, err = replay(
            capsys,
            jsonl_history,
            CANDIDATE,
            policy_file,
            "--cache",
            cache,
            "--json",
            str(out),
            *extra,
        )
        assert code == 0, err
    doc_one, doc_two = json.loads(one.read_text()), json.loads(two.read_text())
    assert deterministic_view(doc_two) == deterministic_view(doc_one)
    assert doc_two["run"]["agent_calls"] == 100
    assert doc_two["run"]["cache_hits"] == 0
    # --rate with --workers: one limit over the workers (tests/replay/test_shard.py).
    assert deterministic_view(json.loads(rated.read_text())) == deterministic_view(doc_one)


async def run_cli(*argv: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "shadow.cli",
        "replay",
        *argv,
        "--no-progress",
        cwd=cwd,
        env=replay_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_baseline_version_from_the_store_and_replay_evidence(
    tmp_path: Path, policy_file: Path
) -> None:
    db = await write_sidecar_history(
        tmp_path / "sidecar.duckdb", live={data.BASELINE_VERSION: data.baseline_answer}
    )
    out = tmp_path / "r.json"
    proc = await run_cli(
        "--history",
        str(db),
        "--agent",
        CANDIDATE,
        "--config",
        str(policy_file),
        "--baseline-version",
        data.BASELINE_VERSION,
        "--fail-if-worse",
        "--record-evidence",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    code, stdout, err = await finish(proc)
    assert code == 1, err
    doc = json.loads(out.read_text())
    assert doc["baseline"]["source"] == f"store:{data.BASELINE_VERSION}"
    assert doc["baseline"]["agent_version"] == data.BASELINE_VERSION
    assert doc["regression"]["worse"] == ["refund"]
    assert "replay evidence recorded" in stdout
    async with Store(db) as store:
        rows = await store.replay_evidence()
        assert [(r["task_type"], r["agent_version"], r["n"], r["agree"]) for r in rows] == [
            ("refund", data.AGENT_VERSION, 60, 48),
            ("ticket", data.AGENT_VERSION, 40, 36),
        ]
        # Live evidence is the baseline's live comparisons only (none were joined here).
        assert await store.evidence() == {}
        assert await store.count("comparisons") == 0
        assert {e.action for _, e in await store.audit_log()} == {"replay_evidence"}


def blocking_after(limit: dict[str, int]) -> Any:
    """An agent answer that follows the candidate but holds every request past ``limit``
    until the server's ``release`` (so a run can be stopped at a known point)."""

    async def answer(body: dict[str, Any]) -> Reply:
        if len(server_of[0].requests) > limit["n"]:
            await server_of[0].release.wait()
        return Reply(*data.candidate_answer(body))

    server_of: list[AgentServer] = []
    answer.server_of = server_of  # type: ignore[attr-defined]
    return answer


async def blocked_server(factory: AgentServerFactory, limit: dict[str, int]) -> AgentServer:
    answer = blocking_after(limit)
    server = await factory(answer)
    answer.server_of.append(server)
    return server


@pytest.mark.slow  # kill -9 of a replay process
async def test_kill_9_mid_run_resumes_without_calling_twice_and_reports_the_same(
    agent_server: AgentServerFactory, jsonl_history: Path, policy_file: Path, tmp_path: Path
) -> None:
    limit = {"n": 24}  # batches of 8: three batches answered, the fourth held
    server = await blocked_server(agent_server, limit)
    args = (
        "--history",
        str(jsonl_history),
        "--agent",
        server.url,
        "--config",
        str(policy_file),
        "--batch-size",
        "8",
        "--concurrency",
        "4",
    )
    cache, resumed, straight = tmp_path / "c.duckdb", tmp_path / "r.json", tmp_path / "s.json"
    proc = await run_cli(*args, "--cache", str(cache), "--json", str(resumed), cwd=tmp_path)
    await server.wait_for_requests(25)  # a 4th-batch call: the 3rd batch is committed
    proc.kill()
    assert await proc.wait() == -signal.SIGKILL
    answered = list(server.done)
    assert len(answered) == 24
    assert not resumed.exists()
    limit["n"] = 10**9
    server.release.set()
    start = len(server.requests)
    code, _, err = await finish(
        await run_cli(*args, "--cache", str(cache), "--json", str(resumed), cwd=tmp_path)
    )
    assert code == 0, err
    again = server.event_ids[start:]
    assert not set(again) & set(answered)  # nothing answered before was asked again
    assert len(again) == len(set(again)) == 76
    assert sorted(answered + again) == sorted(
        [f"rf-{i:03d}" for i in range(60)] + [f"tk-{i:03d}" for i in range(40)]
    )
    code, _, err = await finish(
        await run_cli(
            *args, "--cache", str(tmp_path / "other.duckdb"), "--json", str(straight), cwd=tmp_path
        )
    )
    assert code == 0, err
    doc_r, doc_s = json.loads(resumed.read_text()), json.loads(straight.read_text())
    assert doc_r["run"]["cache_hits"] == 24
    assert doc_r["run"]["agent_calls"] == 76
    assert deterministic_view(doc_r) == deterministic_view(doc_s)
    assert doc_r["task_types"]["refund"]["agree"] == 48


async def test_sigint_writes_a_consistent_partial_report(
    agent_server: AgentServerFactory, jsonl_history: Path, policy_file: Path, tmp_path: Path
) -> None:
    server = await blocked_server(agent_server, {"n": 20})
    out, html = tmp_path / "partial.json", tmp_path / "partial.html"
    proc = await run_cli(
        "--history",
        str(jsonl_history),
        "--agent",
        server.url,
        "--config",
        str(policy_file),
        "--batch-size",
        "16",
        "--concurrency",
        "4",
        "--cache",
        str(tmp_path / "c.duckdb"),
        "--json",
        str(out),
        "--html",
        str(html),
        cwd=tmp_path,
    )
    await server.wait_for_requests(21)
    proc.send_signal(signal.SIGINT)
    code, stdout, err = await finish(proc)
    assert code == 130, err
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert doc["totals"]["n"] == sum(t["n"] for t in doc["task_types"].values()) == 20
    assert doc["task_types"]["refund"]["agree"] == 19
    assert doc["run"]["agent_calls"] - doc["run"]["failed_calls"] >= 20
    assert "PARTIAL" in stdout
    assert "PARTIAL: interrupted run" in html.read_text()
    h = doc["history"]
    assert h["scored"] == 20
    assert h["unscored"] == h["read"] - 20 > 0
    assert f"partial: 20 cases scored, {h['read']} read" in " ".join(stdout.split())
    assert f"partial: 20 cases scored, {h['read']} read" in html.read_text()


def test_bad_parquet_history_exits_2_naming_row_and_column(
    capsys: pytest.CaptureFixture[str], policy_file: Path, tmp_path: Path
) -> None:
    from tests.replay.conftest import write_parquet

    rows = [{k: v for k, v in r.items() if k != "task_type"} for r in data.records()[:4]]
    path = write_parquet(tmp_path / "h.parquet", rows)
    code, _, err = replay(capsys, path, CANDIDATE, policy_file, "--no-cache")
    assert code == 2
    # Cases are read in event_id order: rf-058 (its event is row 4 of the file) comes first.
    assert "h.parquet: row 4, column task_type: required" in one_error(err)
