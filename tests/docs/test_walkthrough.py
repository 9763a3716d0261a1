"""README's "Five-minute walkthrough", run as written: its shell blocks, in order, with only
what a test must change substituted (free ports instead of 8750 and 9000, a tmp directory
instead of /tmp/walkthrough, this interpreter instead of .venv/bin/, and ``--port`` or
``--url`` for the commands that would otherwise use the default port). The example agent
and the sidecar run as real processes; nothing is written to the repository."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shadow.policy import load_policy
from tests.conftest import require_tool
from tests.kafka_broker import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Five-minute walkthrough"
TRIES = 600  # x 0.05 s: a bound against hangs, not a timing assertion
TOOL_CACHES = {".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"}


def walkthrough() -> tuple[str, list[str]]:
    """The section's text and its ``sh`` blocks, in order."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = [
        "\n".join(line.removeprefix("   ") for line in block.splitlines())
        for block in re.findall(r"^ *```sh\n(.*?)^ *```", section, re.MULTILINE | re.DOTALL)
    ]
    return section, blocks


def commands(block: str) -> list[str]:
    """A block's commands, continuation lines joined."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


class Walk:
    """The substitutions, and the processes started in the background."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.agent_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp / "walkthrough"
        self.background: list[subprocess.Popen[bytes]] = []
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        self.env["PYTHONUNBUFFERED"] = "1"

    def local(self, command: str) -> str:
        python = shlex.quote(sys.executable)
        out = command.replace("127.0.0.1:8750", f"127.0.0.1:{self.port}")
        out = out.replace("127.0.0.1:9000", f"127.0.0.1:{self.agent_port}")
        out = out.replace("/tmp/walkthrough", str(self.dir))
        out = out.replace(".venv/bin/python", python)
        out = out.replace(".venv/bin/shadow", f"{python} -m shadow.cli")
        # run listens on the default port, status and autonomy ask it, unless told otherwise
        out = re.sub(r"(-m shadow\.cli run)\b", rf"\1 --port {self.port}", out)
        out = re.sub(r"(-m shadow\.cli (?:status|autonomy))\b", rf"\1 --url {self.url}", out)
        return re.sub(r"(docs/examples/refund_agent\.py)(?=\s|$)", rf"\1 {self.agent_port}", out)

    def start(self, command: str) -> None:
        log = (self.logs / f"bg-{len(self.background)}.log").open("wb")
        with log:
            proc = subprocess.Popen(
                ["bash", "-c", self.local(command)],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # bash and what it runs: one group to signal
            )
        self.background.append(proc)

    def run(self, block: str) -> str:
        script = "set -euo pipefail\n" + "\n".join(self.local(c) for c in commands(block))
        res = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert res.returncode == 0, f"{script}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
        for command in commands(block):  # the reader's shell keeps what a block exports
            if command.startswith("export "):
                name, _, value = shlex.split(command)[1].partition("=")
                self.env[name] = value
        return res.stdout

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.iterdir())


def json_values(text: str) -> list[Any]:
    """The JSON objects in a command's output (curl prints the answers back to back)."""
    decoder, at = json.JSONDecoder(), text.find("{")
    values: list[Any] = []
    while at != -1:
        value, end = decoder.raw_decode(text, at)
        values.append(value)
        at = text.find("{", end)
    return values


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def until(check: Callable[[], bool], what: str, walk: Walk) -> None:
    for _ in range(TRIES):
        if any(p.poll() is not None for p in walk.background):
            pytest.fail(f"a background command exited\n{walk.logs_text()}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n{walk.logs_text()}")


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    before = set(os.listdir(ROOT))
    w = Walk(tmp_path)
    try:
        yield w
    finally:
        for proc in reversed(w.background):
            w.stop(proc, signal.SIGKILL)
    new = sorted(set(os.listdir(ROOT)) - before - TOOL_CACHES)
    for name in new:  # appeared during this test: the walkthrough's, removed after the check
        path = ROOT / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert not new, f"the walkthrough wrote into the repository: {new}"


@pytest.mark.slow
def test_the_readme_walkthrough_works_as_written(walk: Walk) -> None:
    require_tool("curl")
    section, blocks = walkthrough()
    start, traffic, *admin, replay = blocks
    assert "make_traffic.py" in traffic, traffic
    assert "shadow replay" in replay, replay

    # 1. the agent and the sidecar, in the background
    agent_cmd, sidecar_cmd = commands(start)
    walk.start(agent_cmd)
    walk.start(sidecar_cmd)
    sidecar = walk.background[1]
    agent_up = f"http://127.0.0.1:{walk.agent_port}/"
    until(lambda: get(agent_up)[0] in (404, 405), "the example agent", walk)
    until(lambda: get(f"{walk.url}/readyz")[0] == 200, "the sidecar", walk)

    # 2. events and outcomes: stored, then (sent again) duplicates
    answers = json_values(walk.run(traffic))
    assert answers == [{"accepted": 200, "results": {"stored": 200}, "errors": []}] * 2
    again = json_values(walk.run(traffic))
    assert [a["results"] for a in again] == [{"duplicate": 200}] * 2

    # 3. the L1 gate is met and, in propose mode, waits for a human
    def proposed() -> bool:
        doc = json.loads(get(f"{walk.url}/v1/agreement")[1])
        return doc["task_types"]["refund_request"]["proposal"] is not None

    until(proposed, "the L1 proposal", walk)
    assert "L0 → L1?" in walk.run(".venv/bin/shadow status")
    assert "`L0 → L1?`" in section

    # 4. and 5. approve, route, history; freeze, list, unfreeze (each command exits 0)
    outputs = [walk.run(block) for block in admin]
    assert any("FROZEN" in out for out in outputs), outputs

    # 6. replay once the sidecar has stopped (Ctrl-C); answers are cached, --refresh-cache
    # calls the agent again
    walk.stop(sidecar)
    assert sidecar.returncode == 0, walk.logs_text()
    first = walk.run(replay)
    assert "200 agent calls, 0 cached answers" in first, first
    report = json.loads((walk.dir / "report.json").read_text())
    assert report["task_types"]["refund_request"]["n"] == 200
    assert (walk.dir / "report.html").stat().st_size > 0
    assert "0 agent calls, 200 cached answers" in walk.run(replay)
    assert "--refresh-cache" in section
    assert "200 agent calls, 0 cached answers" in walk.run(replay.rstrip() + " --refresh-cache")


def test_the_example_policy_comment_names_its_mode() -> None:
    """The example policy's header says how it promotes, and says it truly."""
    path = ROOT / "docs" / "examples" / "policy.yaml"
    text = path.read_text(encoding="utf-8")
    header = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    modes = {t.autonomy.mode.value for t in load_policy(path).task_types.values()}
    assert len(modes) == 1, modes
    (mode,) = modes
    assert f"in {mode} mode" in header, header
    if mode == "propose":
        assert "automatically" not in header, header
