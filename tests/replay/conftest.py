"""Fixtures for the replay tests: the known-agreement history in every format, the policy
file, and real loopback agent servers (the factory from tests/shadow/conftest.py).

Histories are real files under tmp_path: JSONL as the data contract says, Parquet written by
DuckDB's ``COPY``, and a sidecar DuckDB file written through the real
:class:`shadow.store.Store` (events redacted as the live pipeline stores them, plus the live
decisions of the baseline agent version).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shadow.model import Outcome, ShadowDecision, WorkEvent
from shadow.policy import parse_policy
from shadow.store import Store
from tests.replay import data
from tests.shadow.conftest import AgentServer, AgentServerFactory, Reply, agent_server

__all__ = ["agent_server"]

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(data.POLICY)
    return path


@pytest.fixture
def jsonl_history(tmp_path: Path) -> Path:
    return data.write_jsonl(tmp_path / "history.jsonl")


def write_parquet(
    path: Path, rows: list[dict[str, Any]], *, joined: bool = False, extra: tuple[str, ...] = ()
) -> Path:
    """Rows as Parquet through DuckDB (JSON columns as text). ``joined``: one case per row;
    ``extra``: more text columns (e.g. ``handled_by``)."""
    import json

    con = duckdb.connect()
    try:
        if joined:
            cols = ["event_id", "task_type", "payload", "occurred_at", "decision", "decided_at"]
        else:
            cols = [
                "kind",
                "event_id",
                "task_type",
                "payload",
                "occurred_at",
                "decision",
                "decided_by",
                "decided_at",
            ]
        cols += extra
        con.execute("CREATE TABLE t (" + ", ".join(f"{c} VARCHAR" for c in cols) + ")")
        values = []
        for r in rows:
            values.append(
                [
                    json.dumps(r[c]) if c in ("payload", "decision") and c in r else r.get(c)
                    for c in cols
                ]
            )
        if values:
            con.executemany(f"INSERT INTO t VALUES ({', '.join('?' for _ in cols)})", values)
        con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    finally:
        con.close()
    return path


def joined_rows() -> list[dict[str, Any]]:
    """The known history as one case per row."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in data.records():
        by_id.setdefault(r["event_id"], {}).update({k: v for k, v in r.items() if k != "kind"})
    return list(by_id.values())


Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


async def write_sidecar_history(
    path: Path,
    *,
    live: dict[str, Answer] | None = None,
    records: list[dict[str, Any]] | None = None,
) -> Path:
    """A sidecar DuckDB file with the history, and the live decisions of each named version
    (``{version: answer}``; failures stored as failed decisions, as the runner does)."""
    policy = parse_policy(data.POLICY)
    recs = records or data.records()
    events = []
    for r in recs:
        if r["kind"] == "event":
            e = WorkEvent.from_json(r)
            task = policy.for_task(e.task_type)
            assert task is not None
            events.append(
                WorkEvent(
                    e.event_id,
                    e.task_type,
                    task.redact_payload(e.payload),
                    e.occurred_at,
                    e.segment,
                )
            )
    outcomes = [Outcome.from_json(r) for r in recs if r["kind"] == "outcome"]
    async with Store(path) as store:
        await store.put_events(events, source="test", now=NOW, needs_agent=[False] * len(events))
        await store.put_outcomes(outcomes, source="test", now=NOW)
        for version, answer in (live or {}).items():
            decisions = []
            for e in events:
                request = {"event_id": e.event_id, "task_type": e.task_type, "payload": e.payload}
                status, body = answer(request)
                if status == 200:
                    d = ShadowDecision.from_agent_response(
                        e.event_id, body, default_version=version, latency_ms=1.0
                    )
                else:
                    d = ShadowDecision.failed(e.event_id, version, f"HTTP {status}")
                decisions.append((d, e.task_type))
            await store.put_decisions(decisions, now=NOW)
    return path


async def http_agent(factory: AgentServerFactory, answer: Answer) -> AgentServer:
    return await factory(lambda body: Reply(*answer(body)))


def replay_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m shadow.cli replay``: the repo importable (for the
    ``tests.replay.data`` agents), no developer SHADOW_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SHADOW_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


PYTHON = sys.executable
