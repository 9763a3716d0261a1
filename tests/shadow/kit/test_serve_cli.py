"""``shadow agent serve MODULE:CALLABLE``: a kit handler served by the command as a real
process (found from the current directory, its version from ``--agent-version`` or the
module's ``AGENT_VERSION``), stopped by SIGTERM; and its mistakes, one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadow.cli import main
from tests.shadow.kit.conftest import INTEGRATIONS

SHADOW = Path(sys.executable).parent / "shadow"
AGENT = """
from shadow.kit import Case

AGENT_VERSION = "cli-agent@1"


async def decide(case: Case) -> dict:
    case.add_usage(7, 3)
    return {"action": "approve", "order": case.payload["order_id"]}


def not_async(case):
    return {}
"""


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    (tmp_path / "cli_agent.py").write_text(AGENT, encoding="utf-8")
    return tmp_path


class Served:
    def __init__(self, proc: subprocess.Popen[str], first: str) -> None:
        self.proc = proc
        self.first = first
        self.url = first.rsplit(" on ", 1)[1]


@pytest.fixture
def serve_process() -> Iterator[Any]:
    """``serve_process(cwd, *args)`` runs ``shadow agent serve *args --port 0`` in ``cwd``
    and waits for its first line; each is stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(cwd: Path, *args: str) -> Served:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(
            [str(SHADOW), "agent", "serve", *args, "--port", "0"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        return Served(proc, proc.stdout.readline().strip())

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + "/decide",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def test_the_command_serves_a_handler_until_sigterm(agent_dir: Path, serve_process: Any) -> None:
    served = serve_process(agent_dir, "cli_agent:decide")
    assert served.first.startswith("shadow agent: serving cli_agent:decide (version cli-agent@1)")
    body = {"event_id": "e-1", "task_type": "refund", "payload": {"order_id": "o-9"}}
    assert post(served.url, body) == (
        200,
        {
            "decision": {"action": "approve", "order": "o-9"},
            "agent_version": "cli-agent@1",
            "usage": {"input_tokens": 7, "output_tokens": 3},
        },
    )
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0


def test_the_version_flag_and_the_price_apply(agent_dir: Path, serve_process: Any) -> None:
    served = serve_process(
        agent_dir, "cli_agent:decide", "--agent-version", "cli-agent@2", "--price", "1,10"
    )
    body = {"event_id": "e-1", "task_type": "refund", "payload": {"order_id": "o-9"}}
    _, answer = post(served.url, body)
    assert answer["agent_version"] == "cli-agent@2"
    assert answer["usage"]["cost_usd"] == pytest.approx((7 * 1 + 3 * 10) / 1e6)


@pytest.mark.slow  # importing pydantic-ai takes seconds
def test_a_worked_example_is_served_by_the_command(serve_process: Any) -> None:
    served = serve_process(
        INTEGRATIONS, "refund_pydantic_ai:decide", "--agent-version", "refund-agent@7"
    )
    with urllib.request.urlopen(served.url + "/healthz", timeout=30) as resp:
        assert json.loads(resp.read()) == {"status": "ok", "agent_version": "refund-agent@7"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cli_agent"], "'cli_agent' is not MODULE:CALLABLE"),
        (["no_such_module:decide"], "module 'no_such_module' not found"),
        (["cli_agent:missing"], "module 'cli_agent' has no attribute 'missing'"),
        (["cli_agent:not_async"], "cli_agent:not_async is not an async function"),
        (["cli_agent:decide", "--price", "cheap"], "--price 'cheap': give IN,OUT"),
        (["cli_agent:decide", "--deadline", "0"], "--deadline must be a positive number"),
    ],
    ids=["no-colon", "no-module", "no-attribute", "sync", "price", "deadline"],
)
def test_mistakes_are_one_line_and_exit_2(
    agent_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(agent_dir)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    assert main(["agent", "serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"shadow: error: {message}"), err
    assert err.count("\n") == 1


def test_a_module_without_a_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "unversioned_agent.py").write_text(
        "async def decide(case):\n    return {}\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    assert main(["agent", "serve", "unversioned_agent:decide"]) == 2
    assert capsys.readouterr().err.startswith(
        "shadow: error: name the agent's version: --agent-version V"
    )
