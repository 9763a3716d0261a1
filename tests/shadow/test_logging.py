"""Log lines on stderr (shadow.logs, configured by the entry point): a real ``shadow run``
writes the ladder's ``autonomy move=...`` line when an operator moves a level through the
API, in text or JSON as ``SHADOW_LOG_FORMAT`` says, and not below ``SHADOW_LOG_LEVEL``; the
formatters in process for what a subprocess cannot easily show (a traceback, a capability)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadow.logs import JsonFormatter, TextFormatter, logging_to_stderr
from shadow.server import redact
from tests.shadow.test_cli import (
    POLICY,
    TOKEN,
    Server,
    clean_env,
    free_port,
    http,
    start_server,
    stop_server,
)

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<logger>\S+): "
)
CAPABILITY = "v1.eyJ0IjoicmVmdW5kIn0.c2VjcmV0LW1hYy12YWx1ZQ"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SHADOW_"):
            monkeypatch.delenv(key)


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait()


def move_level(sidecar: list[Server], tmp_path: Path, **env: str) -> list[str]:
    """Start ``shadow run`` with ``env``, set refund_request to L1 through the API, stop it;
    the lines it wrote (stdout and stderr)."""
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    port = free_port()
    argv = ["--config", str(tmp_path / "policy.yaml"), "--db", str(tmp_path / "l.duckdb")]
    server = start_server(
        tmp_path,
        [*argv, "--port", str(port)],
        clean_env(SHADOW_ADMIN_TOKEN=TOKEN, **env),
        port=port,
    )
    sidecar.append(server)
    body = json.dumps({"level": "L1", "reason": "trial run"}).encode()
    status, answer = http(
        "PUT",
        f"{server.url}/v1/autonomy/refund_request",
        body,
        Authorization=f"Bearer {TOKEN}",
        **{"Content-Type": "application/json"},
    )
    assert status == 200, answer
    assert stop_server(server) == 0, server.log_text()
    return server.log.read_text(errors="replace").splitlines()


@pytest.mark.slow  # a sidecar subprocess
def test_json_format_writes_the_autonomy_move_as_one_object_per_line(
    sidecar: list[Server], tmp_path: Path
) -> None:
    lines = move_level(sidecar, tmp_path, SHADOW_LOG_FORMAT="json")
    assert any(line.startswith("shadow: serving on ") for line in lines), lines
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    moves = [d for d in logged if "move=manual_set" in d["message"]]
    assert len(moves) == 1, lines
    move = moves[0]
    assert set(move) == {"ts", "level", "logger", "message"}
    assert (move["level"], move["logger"]) == ("INFO", "shadow.autonomy")
    assert "task_type=refund_request from=L0 to=L1" in move["message"]
    assert 'reason="trial run"' in move["message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", move["ts"])
    # Every line is either a start-up line (stdout) or one JSON object.
    assert all(line.startswith(("shadow: ", "{")) for line in lines), lines


@pytest.mark.slow  # a sidecar subprocess
def test_text_format_writes_the_autonomy_move_at_info(
    sidecar: list[Server], tmp_path: Path
) -> None:
    lines = move_level(sidecar, tmp_path)
    moves = [line for line in lines if "autonomy move=manual_set" in line]
    assert len(moves) == 1, lines
    found = TEXT_LINE.match(moves[0])
    assert found is not None, moves[0]
    assert (found["level"], found["logger"]) == ("INFO", "shadow.autonomy")
    assert "task_type=refund_request from=L0 to=L1" in moves[0]


@pytest.mark.slow  # a sidecar subprocess
def test_log_level_warning_hides_the_info_line(sidecar: list[Server], tmp_path: Path) -> None:
    lines = move_level(sidecar, tmp_path, SHADOW_LOG_LEVEL="warning")
    assert any(line.startswith("shadow: serving on ") for line in lines), lines
    assert not [line for line in lines if "move=" in line], lines


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise RuntimeError(f"upstream at /mcp/{CAPABILITY} failed")
        except RuntimeError:
            info = sys.exc_info()
    return logging.LogRecord("shadow.gateway", logging.ERROR, __file__, 1, message, args, info)


def test_json_carries_the_traceback_as_exc_and_no_capability() -> None:
    line = JsonFormatter(redact).format(record("call to %s failed", f"/mcp/{CAPABILITY}", exc=True))
    doc = json.loads(line)
    assert "\n" not in line
    assert set(doc) == {"ts", "level", "logger", "message", "exc"}
    assert doc["level"] == "ERROR"
    assert doc["message"].startswith("call to /mcp/v1.…")
    assert doc["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: upstream at /mcp/v1.…" in doc["exc"]
    assert CAPABILITY not in line


def test_text_puts_the_traceback_after_the_line_and_no_capability() -> None:
    text = TextFormatter(redact).format(record("call to %s failed", CAPABILITY, exc=True))
    first, *rest = text.splitlines()
    found = TEXT_LINE.match(first)
    assert found is not None, first
    assert (found["level"], found["logger"]) == ("ERROR", "shadow.gateway")
    assert rest[0] == "Traceback (most recent call last):"
    assert CAPABILITY not in text


def test_logging_to_stderr_writes_while_configured_and_restores_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, own = logging.getLogger(), logging.getLogger("shadow")
    before = (root.level, own.level, list(root.handlers))
    log = logging.getLogger("shadow.test")
    with logging_to_stderr("info", "json"):
        log.info("inside %d", 1)
        log.debug("not at info")
        logging.getLogger("aiohttp.access").info("an access line, off by default")
    log.warning("outside")
    err = capsys.readouterr().err
    assert [json.loads(line)["message"] for line in err.splitlines() if line.startswith("{")] == [
        "inside 1"
    ]
    assert (root.level, own.level, list(root.handlers)) == before
