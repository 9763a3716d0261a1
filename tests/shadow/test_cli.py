"""The ``shadow`` command line: user mistakes, the demo, status and autonomy against a real
``shadow run``, and settings precedence (flag > ``SHADOW_*`` environment > default).

User mistakes must print exactly one line starting with ``shadow: error:`` on stderr and
exit 2, never a traceback. Most cases call :func:`shadow.cli.main` in process (fast, and a
stray exception fails the test); whatever has to serve, or must be seen from outside (the
real entry point, ``run`` reaching aiohttp), runs ``python -m shadow.cli`` as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shadow.cli import main
from tests.shadow import crash_agent

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cli-test-token"
AGENT_SPEC = "tests.shadow.crash_agent:agent"
READY_TRIES = 300  # x 0.05 s
DEMO_TYPES = ("refund_request", "invoice_match", "claim_appeal")

POLICY = """\
defaults:
  unknown_task_types: reject
task_types:
  refund_request:
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L3
      mode: propose
      gates:
        L1: {agreement: 0.90, min_samples: 30}
        L2: {agreement: 0.95, min_samples: 100}
        L3: {agreement: 0.98, min_samples: 400, max_critical: 0}
  ticket_routing:
    compare:
      fields:
        action: {match: exact, critical: true}
      unlisted: ignore
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SHADOW_* setting leaks in from the environment the tests run in."""
    for key in list(os.environ):
        if key.startswith("SHADOW_"):
            monkeypatch.delenv(key)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """``shadow ARGV...`` in process."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli_proc(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    """``python -m shadow.cli ARGV...`` as a subprocess (the real entry point)."""
    proc = subprocess.run(
        [sys.executable, "-m", "shadow.cli", *argv],
        cwd=ROOT,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_usage_error(res: Result, *needles: str) -> str:
    """Exit 2, exactly one stderr line ``shadow: error: ...`` containing every needle."""
    assert res.code == 2, res
    assert "Traceback" not in res.err, res.err
    lines = res.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{res.err}"
    assert lines[0].startswith("shadow: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- user mistakes ------------------------------------------------------------------------------


def test_no_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(cli(capsys), "required", "command")


@pytest.mark.slow  # a subprocess; the in-process test above covers the logic
def test_no_subcommand_through_the_real_entry_point() -> None:
    res = cli_proc()
    assert_usage_error(res, "required")
    assert res.out == ""


def test_unknown_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(cli(capsys, "bogus"), "invalid choice", "'bogus'")


def test_unknown_autonomy_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(cli(capsys, "autonomy", "promote"), "invalid choice", "'promote'")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (("run", "--port", "abc"), ("--port", "invalid int value", "'abc'")),
        (("demo", "--events", "many"), ("--events", "'many'")),
        (("run", "--agent-timeout", "soon"), ("--agent-timeout",)),
        (("autonomy", "history", "refund_request", "--limit", "x"), ("--limit",)),
    ],
)
def test_bad_flag_type(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert_usage_error(cli(capsys, *argv), *needles)


@pytest.mark.slow  # a subprocess; the in-process test above covers the logic
def test_bad_flag_type_through_the_real_entry_point() -> None:
    assert_usage_error(cli_proc("run", "--port", "abc"), "--port", "'abc'")


def test_unknown_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(cli(capsys, "status", "--colour"), "unrecognized arguments", "--colour")


def test_status_db_and_url_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(cli(capsys, "status", "--db", "x", "--url", "y"), "not allowed")


def test_run_without_a_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(cli(capsys, "run"), "policy file is required", "--config")


def test_run_with_a_missing_policy_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_usage_error(cli(capsys, "run", "--config", str(missing)), str(missing), "cannot read")


def test_policy_error_names_the_key_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("task_types:\n  refund_request:\n    sample_rate: 2.0\n", encoding="utf-8")
    line = assert_usage_error(
        cli(capsys, "run", "--config", str(bad)),
        str(bad),
        "task_types.refund_request.sample_rate",
    )
    assert "2.0" in line


def test_policy_with_invalid_yaml_names_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("task_types:\n  refund_request: [\n", encoding="utf-8")
    assert_usage_error(cli(capsys, "run", "--config", str(bad)), str(bad), "line 3")


def test_policy_with_several_errors_leads_with_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Several problems: the first line is the ``shadow: error:`` line, every further line
    names the file and its key path too; still exit 2 and no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "task_types:\n  refund_request:\n    sample_rate: 2.0\n"
        "    compare:\n      fields:\n        action: {match: exakt}\n",
        encoding="utf-8",
    )
    res = cli(capsys, "run", "--config", str(bad))
    assert res.code == 2
    lines = res.err.splitlines()
    assert lines[0].startswith("shadow: error: ")
    assert "task_types.refund_request.sample_rate" in lines[0]
    assert any("task_types.refund_request.compare.fields.action.match" in x for x in lines[1:])
    assert all(x.startswith(str(bad)) for x in lines[1:])


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("nope:x", ("unknown source", "'nope:x'", "file:PATH.jsonl")),
        ("file:", ("has no path",)),
        ("file://host/x.jsonl", ("with a host",)),
        # Kafka sources exist now (docs/kafka.md): an unreachable broker is refused clearly.
        ("kafka://broker.invalid:9092?events=e&outcomes=o&group=g", ("cannot reach the broker",)),
    ],
)
def test_unknown_source_spec(
    capsys: pytest.CaptureFixture[str],
    policy: Path,
    tmp_path: Path,
    spec: str,
    needles: tuple[str, ...],
) -> None:
    db = str(tmp_path / "s.duckdb")  # the Kafka case opens the store before the broker
    # port 0: the Kafka case gets as far as listening, and the default port may be taken
    res = cli(capsys, "run", "--config", str(policy), "--db", db, "--port", "0", "--source", spec)
    assert_usage_error(res, *needles)


def test_missing_source_file(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "none.jsonl"
    res = cli(capsys, "run", "--config", str(policy), "--source", f"file:{missing}")
    assert_usage_error(res, str(missing), "does not exist")


def test_bad_agent_spec(policy: Path, tmp_path: Path) -> None:
    db = tmp_path / "agent.duckdb"
    res = cli_proc(
        "run", "--config", str(policy), "--db", str(db), "--agent", "nonsense", "--port", "0"
    )
    assert_usage_error(res, "agent must be an http(s) URL or module:callable", "'nonsense'")


def test_agent_module_not_found(policy: Path, tmp_path: Path) -> None:
    db = tmp_path / "agent.duckdb"
    res = cli_proc("run", "--config", str(policy), "--db", str(db), "--agent", "no_such_mod:fn")
    assert_usage_error(res, "'no_such_mod' not found")


def test_bad_agent_spec_fails_before_claiming_to_serve_or_touching_the_db(
    policy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "sub" / "agent.duckdb"
    res = cli_proc(
        "run", "--config", str(policy), "--db", str(db), "--agent", "nonsense", "--port", "0"
    )
    assert res.code == 2
    assert "serving on" not in res.out, res.out
    assert not db.exists(), "a rejected configuration created the database file"


def test_status_db_on_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "none.duckdb"
    assert_usage_error(cli(capsys, "status", "--db", str(missing)), "no sidecar database")
    assert not missing.exists(), "status must not create the file it was asked to read"


def test_status_db_on_a_file_that_is_not_duckdb(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database\n" * 10)
    assert_usage_error(cli(capsys, "status", "--db", str(junk)), "cannot open store")


def test_status_db_on_a_database_no_sidecar_ran_on(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import duckdb

    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    assert_usage_error(cli(capsys, "status", "--db", str(empty)), "has no policy recorded")


def test_status_db_on_a_file_a_running_sidecar_holds(
    capsys: pytest.CaptureFixture[str], servers: list[Server], policy: Path, tmp_path: Path
) -> None:
    """DuckDB lets one process open the file: status --db says who holds it and what to use
    instead, in one line, not DuckDB's lock error."""
    port = free_port()
    db = tmp_path / "held.duckdb"
    argv = ["--config", str(policy), "--db", str(db), "--port", str(port)]
    server = start_server(tmp_path, argv, clean_env(), port=port)
    servers.append(server)
    line = assert_usage_error(
        cli(capsys, "status", "--db", str(db)),
        f"{db} is in use by a running sidecar (PID {server.proc.pid}); use --url",
    )
    assert "lock" not in line.lower(), line
    assert stop_server(server) == 0, server.log_text()
    assert cli(capsys, "status", "--db", str(db)).code == 0


def test_status_url_to_a_closed_port(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_usage_error(cli(capsys, "status", "--url", url), "cannot reach the sidecar", url)


def test_autonomy_list_to_a_closed_port(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    res = cli(capsys, "autonomy", "--url", url, "list")
    assert_usage_error(res, "cannot reach the sidecar")


@pytest.mark.parametrize(
    "argv",
    [
        ("set", "refund_request", "L1"),
        ("approve", "refund_request"),
        ("reject", "refund_request", "--to", "L1", "--reason", "no"),
        ("reconsider", "refund_request"),
        ("freeze",),
        ("unfreeze",),
    ],
)
def test_autonomy_writes_without_admin_token(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    # a closed port: the token check must come before any request
    url = f"http://127.0.0.1:{free_port()}"
    res = cli(capsys, "autonomy", "--url", url, *argv)
    assert_usage_error(res, "SHADOW_ADMIN_TOKEN")


def test_shadow_port_not_a_number(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, policy: Path
) -> None:
    monkeypatch.setenv("SHADOW_PORT", "notanumber")
    assert_usage_error(cli(capsys, "run", "--config", str(policy)), "SHADOW_PORT", "integer")


@pytest.mark.slow  # a subprocess; the in-process test above covers the logic
def test_shadow_port_not_a_number_through_the_real_entry_point(policy: Path) -> None:
    res = cli_proc("run", "--config", str(policy), env=clean_env(SHADOW_PORT="notanumber"))
    assert_usage_error(res, "SHADOW_PORT")


@pytest.mark.parametrize(
    ("env", "argv", "needles"),
    [
        ({"SHADOW_SOURCE": "[bad"}, (), ("SHADOW_SOURCE",)),
        ({"SHADOW_AGENT_CONCURRENCY": "0"}, (), ("SHADOW_AGENT_CONCURRENCY",)),
        ({}, ("--port", "70000"), ("SHADOW_PORT", "65535")),
        ({}, ("--settings", "/nonexistent/settings.yaml"), ("settings file",)),
    ],
)
def test_bad_settings(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    policy: Path,
    env: dict[str, str],
    argv: tuple[str, ...],
    needles: tuple[str, ...],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert_usage_error(cli(capsys, "run", "--config", str(policy), *argv), *needles)


def test_demo_with_no_events(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(cli(capsys, "demo", "--events", "0"), "--events")


def test_run_on_a_port_in_use(policy: Path, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli_proc(
            "run", "--config", str(policy), "--db", str(tmp_path / "x.duckdb"), "--port", str(port)
        )
    assert_usage_error(res, "cannot listen", str(port))


def test_run_on_the_default_port_in_use(policy: Path, tmp_path: Path) -> None:
    """The session keeps 127.0.0.1:8750 busy (tests/conftest.py), as a developer's own sidecar
    would; a run without --port says so in one line, and every other test copes with it."""
    from shadow.config import DEFAULT_PORT

    res = cli_proc("run", "--config", str(policy), "--db", str(tmp_path / "x.duckdb"))
    assert_usage_error(res, "cannot listen", f"127.0.0.1:{DEFAULT_PORT}")
    assert not (tmp_path / "x.duckdb").exists()


def test_demo_serve_on_a_port_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli(
            capsys,
            "demo",
            "--events",
            "10",
            "--serve",
            "--port",
            str(port),
            "--no-progress",
            "--db",
            str(tmp_path / "d.duckdb"),
        )
    assert_usage_error(res, "cannot listen", str(port))


# -- demo, then status --------------------------------------------------------------------------


def demo_table(out: str) -> dict[str, tuple[str, int]]:
    """``task type -> (level, n)`` from the demo's (or status') rich table."""
    rows: dict[str, tuple[str, int]] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        # The first table only (the evidence beside agreement follows it, per task type too).
        if len(cells) > 4 and cells[1] in DEMO_TYPES and cells[1] not in rows:
            rows[cells[1]] = (cells[2].split()[0], int(cells[3]))
    return rows


def test_demo_then_status_then_demo_again_is_idempotent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "demo.duckdb"
    argv = ("demo", "--events", "600", "--seed", "3", "--no-progress", "--db", str(db))
    first = cli(capsys, *argv)
    assert first.code == 0, first.err
    assert first.err == ""
    table = demo_table(first.out)
    assert set(table) == set(DEMO_TYPES), first.out
    assert sum(n for _, n in table.values()) == 600
    assert "600 work events across 3 task types, seed 3" in first.out

    status = cli(capsys, "status", "--db", str(db), "--json")
    assert status.code == 0, status.err
    doc = json.loads(status.out)
    assert doc["frozen"] is False
    assert set(doc["task_types"]) == set(DEMO_TYPES)
    assert {k: (v["level"], v["n"]) for k, v in doc["task_types"].items()} == table
    for entry in doc["task_types"].values():
        assert 0 <= entry["agree"] <= entry["n"]
        assert entry["lower"] <= entry["agreement"] <= entry["upper"]

    # the table form of status shows the same rows
    plain = cli(capsys, "status", "--db", str(db))
    assert plain.code == 0
    assert demo_table(plain.out) == table

    # the same traffic again on the same file: every record is a duplicate, nothing counted
    again = cli(capsys, *argv)
    assert again.code == 0, again.err
    assert demo_table(again.out) == table
    doc2 = json.loads(cli(capsys, "status", "--db", str(db), "--json").out)
    assert doc2["task_types"] == doc["task_types"]


@pytest.mark.slow  # a demo run in a subprocess
def test_demo_through_the_real_entry_point(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    res = cli_proc("demo", "--events", "60", "--seed", "1", "--no-progress", "--db", str(db))
    assert res.code == 0, res.err
    assert set(demo_table(res.out)) == set(DEMO_TYPES)
    status = cli_proc("status", "--db", str(db), "--json")
    assert status.code == 0, status.err
    assert sum(t["n"] for t in json.loads(status.out)["task_types"].values()) == 60


# -- shadow run in a subprocess + status/autonomy against it ------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def http(method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def start_server(
    tmp: Path, argv: list[str], env: dict[str, str], *, port: int, name: str = "server"
) -> Server:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shadow.cli", "run", *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(proc, url, Path(), log)
    for _ in range(READY_TRIES):
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError):
            if http("GET", f"{url}/readyz")[0] == 200:
                return server
        time.sleep(0.05)
    stop_server(server)
    pytest.fail(f"shadow run did not become ready; its log:\n{server.log_text()}")


def stop_server(server: Server) -> int:
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers started by a test; every one is stopped (then killed) afterwards."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait()


def post_ndjson(url: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    body = "\n".join(json.dumps(r) for r in records).encode()
    status, doc = http("POST", url, body, **{"Content-Type": "application/x-ndjson"})
    assert status == 202, doc
    assert isinstance(doc, dict)
    return doc


def agreeing_refunds(count: int) -> list[int]:
    """Indices the crash agent agrees on, all refund_request (even indices)."""
    out: list[int] = []
    i = 0
    while len(out) < count:
        if crash_agent.TASK_TYPES[i % 2] == "refund_request" and (
            crash_agent.expected_verdict(i) == "agree"
        ):
            out.append(i)
        i += 1
    return out


def history_rows(out: str) -> list[list[str]]:
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 5 and cells[1].isdigit():
            rows.append(cells[1:-1])
    return rows


def levels(capsys: pytest.CaptureFixture[str], url: str) -> tuple[bool, dict[str, str]]:
    res = cli(capsys, "status", "--url", url, "--json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    return doc["frozen"], {k: v["level"] for k, v in doc["task_types"].items()}


def test_autonomy_commands_against_a_running_sidecar(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    servers: list[Server],
    policy: Path,
    tmp_path: Path,
) -> None:
    port = free_port()
    db = tmp_path / "run.duckdb"
    argv = ["--config", str(policy), "--db", str(db), "--port", str(port), "--agent", AGENT_SPEC]
    server = start_server(tmp_path, argv, clean_env(SHADOW_ADMIN_TOKEN=TOKEN), port=port)
    servers.append(server)
    url = server.url
    assert "serving on" in server.log_text()

    # reads need no token
    listing = cli(capsys, "autonomy", "--url", url, "list")
    assert listing.code == 0, listing.err
    assert "refund_request" in listing.out
    assert "ticket_routing" in listing.out
    assert levels(capsys, url) == (False, {"refund_request": "L0", "ticket_routing": "L0"})

    # writes with the wrong token are refused
    monkeypatch.setenv("SHADOW_ADMIN_TOKEN", "wrong")
    assert_usage_error(cli(capsys, "autonomy", "--url", url, "freeze"), "HTTP 401")
    monkeypatch.setenv("SHADOW_ADMIN_TOKEN", TOKEN)

    # evidence: agreeing refunds until the L1 gate is met, proposed (mode: propose)
    picks = agreeing_refunds(60)
    post_ndjson(f"{url}/v1/events", [crash_agent.event(i) for i in picks])
    post_ndjson(f"{url}/v1/outcomes", [crash_agent.outcome(i) for i in picks])
    doc: dict[str, Any] = {}
    for _ in range(READY_TRIES):
        doc = json.loads(cli(capsys, "status", "--url", url, "--json").out)
        if doc["task_types"]["refund_request"]["proposal"]:
            break
        time.sleep(0.05)
    refund = doc["task_types"]["refund_request"]
    assert refund["n"] == 60
    assert refund["agree"] == 60
    assert refund["proposal"]["to_level"] == "L1", refund
    assert refund["level"] == "L0"

    # An approval names what it approves: without --to or --proposal the command shows what
    # is pending and changes nothing.
    pid = refund["proposal"]["id"]
    unnamed = cli(capsys, "autonomy", "--url", url, "approve", "refund_request")
    assert_usage_error(unnamed, "name the proposal to approve", pid, "L0 → L1", "--to L1")
    assert levels(capsys, url)[1]["refund_request"] == "L0"
    listed = cli(capsys, "autonomy", "list", "--url", url)  # --url after the action too
    assert listed.code == 0, listed.err
    assert pid in listed.out

    # The README's command, run twice (a retry): promoted once.
    approve_l1 = ("autonomy", "approve", "refund_request", "--to", "L1", "--url", url)
    approve = cli(capsys, *approve_l1, "--actor", "carol")
    assert approve.code == 0, approve.err
    assert "approve L0 → L1" in approve.out
    assert levels(capsys, url)[1]["refund_request"] == "L1"
    again = cli(capsys, *approve_l1, "--actor", "carol")
    assert again.code == 0, again.err
    assert "nothing changed" in again.out
    assert "already approved" in again.out
    assert levels(capsys, url)[1]["refund_request"] == "L1"

    # a proposal that is not pending: the API's 409 becomes one error line
    res = cli(capsys, "autonomy", "--url", url, "approve", "refund_request", "--proposal", "p-0")
    assert_usage_error(res, "HTTP 409")

    setting = cli(
        capsys,
        *("autonomy", "--url", url, "set", "refund_request", "L2"),
        *("--actor", "ops/bob", "--reason", "pilot week"),
    )
    assert setting.code == 0, setting.err
    assert "L1 → L2" in setting.out
    assert levels(capsys, url) == (False, {"refund_request": "L2", "ticket_routing": "L0"})

    # operator mistakes against the API: one line, exit 2
    bad = ("autonomy", "--url", url, "set")
    assert_usage_error(cli(capsys, *bad, "refund_request", "L9"), "HTTP 400", "L9")
    assert_usage_error(cli(capsys, *bad, "nosuch", "L1"), "HTTP 404", "nosuch")
    assert_usage_error(cli(capsys, *bad, "ticket_routing", "L1"), "HTTP 409", "ceiling")
    assert_usage_error(
        cli(capsys, "autonomy", "--url", url, "history", "nosuch"), "HTTP 404", "nosuch"
    )

    # status --db cannot read a file the running sidecar holds: one line, exit 2
    assert_usage_error(cli(capsys, "status", "--db", str(db)), "in use by a running sidecar")

    freeze = cli(
        capsys, "autonomy", "--url", url, "freeze", "--actor", "alice", "--reason", "incident"
    )
    assert freeze.code == 0, freeze.err
    assert "frozen" in freeze.out
    assert levels(capsys, url) == (True, {"refund_request": "L0", "ticket_routing": "L0"})
    frozen_list = cli(capsys, "autonomy", "--url", url, "list")
    assert "FROZEN" in frozen_list.out
    status, route = http(
        "GET", f"{url}/v1/route/refund_request?event_id=x", Authorization=f"Bearer {TOKEN}"
    )
    assert (status, route["level"], route["handler"]) == (200, "L0", "human")

    unfreeze = cli(capsys, "autonomy", "--url", url, "unfreeze", "--actor", "alice")
    assert unfreeze.code == 0, unfreeze.err
    assert "unfrozen" in unfreeze.out
    frozen, _ = levels(capsys, url)
    assert frozen is False

    hist = cli(capsys, "autonomy", "--url", url, "history", "refund_request", "--limit", "50")
    assert hist.code == 0, hist.err
    rows = history_rows(hist.out)
    # columns: id, at, actor, action, from, to, reason, n, lower (newest first)
    actions = [(r[2], r[3], r[4], r[5]) for r in rows]
    assert ("ops/bob", "manual_set", "L1", "L2") in actions, hist.out
    assert ("carol", "approve", "L0", "L1") in actions, hist.out
    assert ("alice", "freeze", "L2", "L0") in actions, hist.out
    assert any(a[:2] == ("alice", "unfreeze") for a in actions), hist.out
    manual = next(r for r in rows if r[3] == "manual_set")
    assert manual[6] == "pilot week"
    assert manual[7] == "60"
    ids = [int(r[0]) for r in rows]
    assert ids == sorted(ids, reverse=True)

    assert stop_server(server) == 0, server.log_text()

    # after the sidecar stopped, status --db reads the same state from its file
    offline = cli(capsys, "status", "--db", str(db), "--json")
    assert offline.code == 0, offline.err
    doc = json.loads(offline.out)
    assert doc["frozen"] is False
    assert doc["task_types"]["refund_request"]["n"] == 60


# -- settings precedence ------------------------------------------------------------------------


@pytest.mark.slow  # two sidecar subprocesses
def test_env_is_used_when_the_flag_is_absent_and_the_flag_beats_it(
    servers: list[Server], policy: Path, tmp_path: Path
) -> None:
    env_db = tmp_path / "from-env.duckdb"
    flag_db = tmp_path / "from-flag.duckdb"
    port = free_port()
    env = clean_env(SHADOW_DB=str(env_db), SHADOW_PORT=str(port), SHADOW_CONFIG=str(policy))

    # SHADOW_DB, SHADOW_PORT and SHADOW_CONFIG with no flags at all
    server = start_server(tmp_path, [], env, port=port, name="env")
    servers.append(server)
    assert f"http://127.0.0.1:{port} (db {env_db})" in server.log_text()
    assert stop_server(server) == 0, server.log_text()
    assert env_db.exists()
    assert not flag_db.exists()
    env_db.unlink()

    # --db and --port beat SHADOW_DB and SHADOW_PORT
    other = free_port()
    argv = ["--db", str(flag_db), "--port", str(other)]
    server = start_server(tmp_path, argv, env, port=other, name="flag")
    servers.append(server)
    assert f"http://127.0.0.1:{other} (db {flag_db})" in server.log_text()
    assert stop_server(server) == 0, server.log_text()
    assert flag_db.exists()
    assert not env_db.exists()


def test_env_precedence_in_process(
    monkeypatch: pytest.MonkeyPatch, policy: Path, tmp_path: Path
) -> None:
    """The same rule for every option, read by ``load_settings`` (what ``_run`` calls)."""
    from shadow.config import DEFAULT_DB, DEFAULT_PORT, load_settings

    assert load_settings(config=str(policy)).db == DEFAULT_DB
    assert load_settings(config=str(policy)).port == DEFAULT_PORT
    monkeypatch.setenv("SHADOW_DB", "env.duckdb")
    monkeypatch.setenv("SHADOW_AGENT_CONCURRENCY", "3")
    monkeypatch.setenv("SHADOW_SOURCE", "file:a.jsonl, file:b.jsonl")
    s = load_settings(config=str(policy), db=None, agent_concurrency=None)
    assert (s.db, s.agent_concurrency, s.source) == (
        "env.duckdb",
        3,
        ["file:a.jsonl", "file:b.jsonl"],
    )
    s = load_settings(config=str(policy), db="flag.duckdb", agent_concurrency=5, source=["file:c"])
    assert (s.db, s.agent_concurrency, s.source) == ("flag.duckdb", 5, ["file:c"])

    # a settings file sits below the environment and above the defaults
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("db: file.duckdb\nport: 9999\n", encoding="utf-8")
    s = load_settings(config=str(policy), settings=str(settings_file))
    assert (s.db, s.port) == ("env.duckdb", 9999)


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["run", "--help"], ["demo", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert re.search(r"usage: shadow", out), out


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Whatever a test does to the garbage collector is undone."""
    import gc

    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_run_tunes_the_garbage_collector_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gc_state: None
) -> None:
    """``shadow run`` freezes what start-up made and raises the young-generation threshold
    (shadow.app.tune_gc) before it serves; the server loop is replaced here by one that
    records the collector's state and returns."""
    import gc

    from shadow import server
    from shadow.app import GC_THRESHOLDS

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    seen: list[tuple[tuple[int, int, int], int]] = []

    def serving(*args: object, **kwargs: object) -> int:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        return 0

    monkeypatch.setattr(server, "run_server", serving)
    gc.set_threshold(700, 10, 10)
    code = main(["run", "--config", str(policy), "--db", str(tmp_path / "s.duckdb"), "--port", "0"])
    assert code == 0
    [(thresholds, frozen)] = seen
    assert thresholds == GC_THRESHOLDS
    assert frozen > 0


def test_the_default_demo_shows_a_drift_demotion_in_its_table_and_audit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The late phase (a refund handbook the agent was never taught) costs refund_request
    the level it earned: the final table has it below L2 and the audit lines say drift."""
    db = tmp_path / "demo.duckdb"
    res = cli(capsys, "demo", "--no-progress", "--db", str(db))
    assert res.code == 0, res.err
    assert "Late phase" in res.out
    levels = demo_table(res.out)
    assert levels["refund_request"][0] in ("L0", "L1"), res.out
    audit = [line for line in res.out.splitlines() if line.startswith("audit: refund_request")]
    assert audit, res.out
    assert "demoted L2 → L1" in audit[0]
    assert "drift" in audit[0]
    # Without the late phase the same seed keeps refund_request at L2 (README's first table).
    calm = cli(capsys, "demo", "--no-progress", "--late-share", "0", "--db", str(tmp_path / "c"))
    assert calm.code == 0, calm.err
    assert demo_table(calm.out)["refund_request"][0] == "L2"
    assert "audit: refund_request" not in calm.out
    bad = cli(capsys, "demo", "--late-share", "1.5")
    assert_usage_error(bad, "--late-share")


# -- ingest credentials at start-up ----------------------------------------------------------


@pytest.mark.parametrize("tokens", ["", " , ,", '[""]'])
def test_an_ingest_token_list_set_but_empty_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, policy: Path, tokens: str
) -> None:
    """Set but holding no token, it would leave ingest open without a word. (The bad agent
    spec only keeps a run that accepted the list from serving forever.)"""
    monkeypatch.setenv("SHADOW_INGEST_TOKENS", tokens)
    res = cli(capsys, "run", "--config", str(policy), "--port", "0", "--agent", "nonsense")
    assert_usage_error(res, "SHADOW_INGEST_TOKENS", "token")


def test_an_empty_ingest_token_list_is_refused_by_the_real_entry_point(
    policy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "x.duckdb"
    argv = ("run", "--config", str(policy), "--db", str(db), "--port", "0", "--agent", "nonsense")
    res = cli_proc(*argv, env=clean_env(SHADOW_INGEST_TOKENS=" , "))
    line = assert_usage_error(res, "SHADOW_INGEST_TOKENS", "set but holds no token")
    assert "serving on" not in res.out
    assert not db.exists()
    assert line.count("\n") == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "ingest: open (no SHADOW_INGEST_TOKENS, no signature secret)"),
        ({"SHADOW_INGEST_TOKENS": "a, b,c"}, "ingest: tokens (3)"),
        (
            {"SHADOW_INGEST_TOKENS": "a", "SHADOW_INGEST_SIGNATURE_SECRET": "k"},
            "ingest: tokens (1) + signatures (X-Shadow-Signature)",
        ),
    ],
)
def test_run_says_once_at_start_up_how_ingest_is_guarded(
    servers: list[Server], policy: Path, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    port = free_port()
    argv = ["--config", str(policy), "--db", str(tmp_path / "s.duckdb"), "--port", str(port)]
    server = start_server(tmp_path, argv, clean_env(**env), port=port)
    servers.append(server)
    assert stop_server(server) == 0
    lines = [ln for ln in server.log.read_text().splitlines() if ln.startswith("shadow: ingest:")]
    assert lines == [f"shadow: {expected}"], server.log_text()


# -- where the API commands find the sidecar ---------------------------------------------------


@pytest.mark.slow  # a sidecar subprocess
def test_status_and_autonomy_find_the_sidecar_from_shadow_url_or_shadow_port(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    servers: list[Server],
    policy: Path,
    tmp_path: Path,
) -> None:
    """Without --url: SHADOW_URL, else 127.0.0.1 on SHADOW_PORT (the default port is kept busy
    by another process in this session, so a command that ignored both would fail)."""
    port = free_port()
    argv = ["--config", str(policy), "--db", str(tmp_path / "u.duckdb"), "--port", str(port)]
    server = start_server(tmp_path, argv, clean_env(), port=port)
    servers.append(server)

    monkeypatch.setenv("SHADOW_PORT", str(port))
    res = cli(capsys, "status", "--json")
    assert res.code == 0, res.err
    assert set(json.loads(res.out)["task_types"]) == {"refund_request", "ticket_routing"}
    listing = cli(capsys, "autonomy", "list")
    assert listing.code == 0, listing.err
    assert "ticket_routing" in listing.out

    monkeypatch.setenv("SHADOW_PORT", str(free_port()))  # closed: SHADOW_URL must win
    monkeypatch.setenv("SHADOW_URL", server.url + "/")
    res = cli_proc("status", "--json", env=clean_env(SHADOW_URL=server.url))
    assert res.code == 0, res.err
    assert "refund_request" in json.loads(res.out)["task_types"]
    assert cli(capsys, "autonomy", "list").code == 0

    # --url beats both
    closed = f"http://127.0.0.1:{free_port()}"
    assert_usage_error(cli(capsys, "status", "--url", closed), "cannot reach", closed)


@pytest.mark.parametrize(
    ("env", "needle"),
    [({"SHADOW_URL": "sidecar:8750"}, "SHADOW_URL"), ({"SHADOW_PORT": "many"}, "SHADOW_PORT")],
)
def test_a_bad_shadow_url_or_port_is_refused_by_the_api_commands(
    env: dict[str, str], needle: str
) -> None:
    for argv in (("status",), ("autonomy", "list"), ("approvals", "list")):
        res = cli_proc(*argv, env=clean_env(SHADOW_ADMIN_TOKEN=TOKEN, **env))
        assert_usage_error(res, needle)


def test_run_says_it_serves_only_once_everything_is_open(tmp_path: Path) -> None:
    """A store that is not a DuckDB file, a directory as the store path, a mirror port that
    is taken: each refuses start-up in one line, and nothing ever said it was serving."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    damaged = tmp_path / "damaged.duckdb"
    damaged.write_text("not a database\n" * 100)
    a_dir = tmp_path / "a-directory"
    a_dir.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = str(taken.getsockname()[1])
        cases = [
            (["--db", str(damaged)], "not a valid DuckDB database"),
            (["--db", str(a_dir)], str(a_dir)),
            (["--db", str(tmp_path / "ok.duckdb"), "--mirror-port", busy], busy),
        ]
        for extra, needle in cases:
            res = cli_proc("run", "--config", str(policy), "--port", "0", *extra)
            assert res.code != 0, res
            assert "Traceback" not in res.err, res.err
            assert needle in res.err, res.err
            assert "serving on" not in res.out, (extra, res.out)
