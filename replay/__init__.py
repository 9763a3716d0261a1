"""Replay: recorded, human-decided history through an agent version before it sees live
traffic (the eval harness behind ``shadow replay``; see docs/replay.md).

``replay`` imports ``shadow`` (the diff, the verdict, the bounds, the agent transports) and
never the reverse: ``shadow``'s CLI finds ``shadow replay`` through the ``shadow.commands``
entry point. The stages, one module each:

- :mod:`replay.history` reads a history file (sidecar DuckDB, Parquet, JSONL) and keeps the
  response cache (the only module importing duckdb); :mod:`replay.jsonl` reads JSONL;
- :mod:`replay.cache` answers events from the cache, else from the agent;
- :mod:`replay.runner` scores every selected case with the live sidecar's rules;
- :mod:`replay.shard` runs the same loop in several worker processes and merges the result;
- :mod:`replay.report` (with :mod:`replay.cases`, the per-case results), :mod:`replay.gate`
  (with :mod:`replay.significance`, the paired and unpaired tests) and
  :mod:`replay.document` build the report, the gates and the regression gate;
  :mod:`replay.html` and :mod:`replay.terminal` show it;
- :mod:`replay.cli` is the command.
"""

from replay.cache import CachedAgent, RateLimiter, VersionChanged, agent_key, request_hash
from replay.cases import CaseLog
from replay.document import build_document, deterministic_view, load_report
from replay.errors import HistoryError, ReplayError
from replay.gate import compare_reports, gate_entry
from replay.history import History, HistoryStats, ResponseCache, detect_format
from replay.html import render_html
from replay.model import Case, Selection
from replay.report import SCHEMA, TaskStats
from replay.runner import AnswerSource, ReplayResult, ReplayRunner, StoreAnswers
from replay.shard import ShardJob, run_sharded
from replay.significance import mcnemar_midp, two_proportion_z

__all__ = [
    "SCHEMA",
    "AnswerSource",
    "CachedAgent",
    "Case",
    "CaseLog",
    "History",
    "HistoryError",
    "HistoryStats",
    "RateLimiter",
    "ReplayError",
    "ReplayResult",
    "ReplayRunner",
    "ResponseCache",
    "Selection",
    "ShardJob",
    "StoreAnswers",
    "TaskStats",
    "VersionChanged",
    "agent_key",
    "build_document",
    "compare_reports",
    "detect_format",
    "deterministic_view",
    "gate_entry",
    "load_report",
    "mcnemar_midp",
    "render_html",
    "request_hash",
    "run_sharded",
    "two_proportion_z",
]
