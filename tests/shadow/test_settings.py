"""Settings out of bounds are refused at start-up, through the real entry point (``python -m
shadow.cli``): exit 2, one line naming the setting, never a traceback, nothing served.

Every duration is finite and at most its documented maximum (shadow.config ``MAX_*``); the
public URL is a base URL; the gateway secret is long enough; a mirror rule's path names each
``{segment}`` once. ``--agent nonsense`` makes a run that wrongly accepted the setting stop
at once with another error (instead of serving), so such a run fails the test quickly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shadow.config import MAX_JOIN_TTL_S, MAX_SESSION_TTL_S, load_settings
from tests.shadow.test_cli import POLICY, assert_usage_error, clean_env, cli_proc

MIRROR_TWICE = """
mirror:
  - match: {method: POST, path: "/refunds/{id}/items/{id}"}
    kind: event
    task_type: refund_request
    event_id: path.id
    payload: body
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SHADOW_"):
            monkeypatch.delenv(key)


def run_refused(tmp_path: Path, env: dict[str, str], policy: str = POLICY) -> str:
    """``shadow run`` with ``env``: refused in one line (returned), no database made."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy, encoding="utf-8")
    db = tmp_path / "x.duckdb"
    argv = ("run", "--config", str(path), "--db", str(db), "--port", "0", "--agent", "nonsense")
    res = cli_proc(*argv, env=clean_env(**env))
    line = assert_usage_error(res, *env)
    assert "serving on" not in res.out
    assert not db.exists()
    return line


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SHADOW_JOIN_TTL": "inf"}, "finite"),
        ({"SHADOW_JOIN_TTL": "nan"}, "finite"),
        ({"SHADOW_JOIN_TTL": str(MAX_JOIN_TTL_S + 1)}, str(int(MAX_JOIN_TTL_S))),
        ({"SHADOW_GATEWAY_SESSION_TTL": "Infinity"}, "finite"),
        ({"SHADOW_GATEWAY_SESSION_TTL": str(2 * MAX_SESSION_TTL_S)}, "86400"),
        ({"SHADOW_GATEWAY_APPROVAL_TIMEOUT": str(2 * MAX_SESSION_TTL_S)}, "86400"),
        ({"SHADOW_GATEWAY_APPROVAL_TIMEOUT": "inf"}, "finite"),
        ({"SHADOW_GATEWAY_APPROVAL_WAIT": "-inf"}, "finite"),
        ({"SHADOW_GATEWAY_APPROVAL_WAIT": "7200"}, "3600"),
        ({"SHADOW_EXPIRE_INTERVAL": "inf"}, "finite"),
        ({"SHADOW_AGENT_TIMEOUT": "1e12"}, "3600"),
        ({"SHADOW_RETENTION": "inf"}, "finite"),
        ({"SHADOW_PUBLIC_URL": "ftp://sidecar.internal"}, "http"),
        ({"SHADOW_PUBLIC_URL": "sidecar.internal:8750"}, "http"),
        ({"SHADOW_PUBLIC_URL": "http://"}, "http"),
        ({"SHADOW_PUBLIC_URL": "https://sidecar.internal/base?x=1"}, "query"),
        ({"SHADOW_PUBLIC_URL": "https://sidecar.internal/#top"}, "fragment"),
        ({"SHADOW_PUBLIC_URL": "http://sidecar.internal:99999"}, "Port out of range"),
        ({"SHADOW_GATEWAY_SECRET": "k"}, "16 characters"),
        ({"SHADOW_GATEWAY_SECRET": "fifteen-chars!!"}, "16 characters"),
        ({"SHADOW_LOG_LEVEL": "loud"}, "'debug', 'info', 'warning' or 'error'"),
        ({"SHADOW_LOG_FORMAT": "xml"}, "'text' or 'json'"),
    ],
)
def test_a_setting_out_of_bounds_is_refused_naming_it(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    line = run_refused(tmp_path, env)
    assert needle in line, line


def test_a_mirror_path_naming_a_segment_twice_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY + MIRROR_TWICE, encoding="utf-8")
    argv = ("run", "--config", str(path), "--db", str(tmp_path / "x.duckdb"), "--port", "0")
    res = cli_proc(*argv, "--agent", "nonsense", env=clean_env())
    assert_usage_error(res, "mirror[0].match.path", "{name} appears twice")


def test_settings_within_bounds_are_taken(tmp_path: Path) -> None:
    """The maxima themselves, a level in capitals and a public URL with a path prefix."""
    s = load_settings(
        join_ttl=MAX_JOIN_TTL_S,
        gateway_session_ttl=MAX_SESSION_TTL_S,
        gateway_approval_timeout=MAX_SESSION_TTL_S,
        gateway_approval_wait=3600.0,
        gateway_secret="0123456789abcdef",
        public_url="https://sidecar.example.com:8443/shadow/",
        log_level="WARNING",
        log_format="json",
    )
    assert s.public_url == "https://sidecar.example.com:8443/shadow"
    assert (s.log_level, s.log_format) == ("warning", "json")
