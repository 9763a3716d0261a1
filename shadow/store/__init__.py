"""The DuckDB store: every durable fact the sidecar keeps. The only package importing duckdb.

Contract:

- **Durable before acknowledged.** Each ``put_*`` call is one transaction; when it returns,
  the records survive a ``kill -9`` (DuckDB's WAL is synced on commit).
- **Idempotent.** Re-delivering an event, outcome or decision is a no-op (``duplicate``).
  A *conflicting* duplicate (same id, different content) is never an overwrite: it becomes
  a dead letter with its reason (``conflict``). An outcome with a *later* ``decided_at``
  is a reversal (a new current revision); an older one is kept as ``superseded`` history.
- **One comparison per (event_id, agent_version)**, re-done only when the current outcome
  revision changes (reversal) or an expired join finally completes.
- **Rows, not RAM.** Pending joins are rows; :meth:`Store.expire` turns the ones older than
  the TTL into ``expired`` comparisons.
- **Off the event loop.** Every call runs on one dedicated thread, which also serialises
  writers (DuckDB allows one writing connection per file).

Schema changes are versioned migrations in :mod:`shadow.schema`.

Why a package: the store is one pipeline stage that owns every DuckDB call (no module
outside ``shadow.store`` imports duckdb, and every call runs on the store's one thread), but
as one module it outgrew our size guide, so its SQL is split by the tables it owns:
:mod:`~shadow.store.base` (connection, thread, transactions, migrations),
:mod:`~shadow.store.cases` (one case, whole: what ``GET /v1/cases/{event_id}`` shows),
:mod:`~shadow.store.console` (the console's reads: evidence over time, disagreements, dead
letters page by page),
:mod:`~shadow.store.handling` (how each item was routed: the evidence's independence),
:mod:`~shadow.store.health` (join health: outcome coverage and what failed to join),
:mod:`~shadow.store.ingest`, :mod:`~shadow.store.joins`, :mod:`~shadow.store.ladder`,
:mod:`~shadow.store.noise` (second opinions and the agent's repeated tries),
:mod:`~shadow.store.outbox`, :mod:`~shadow.store.gateway` (tool calls and held approvals),
:mod:`~shadow.store.positions` (where Kafka records came
from, and how far each partition may be committed) and :mod:`~shadow.store.retention`
(what leaves the store, and when), combined into :class:`Store`.
"""

from __future__ import annotations

from shadow.store.cases import CasePart, CaseView
from shadow.store.console import ConsolePart, Disagreement, FieldMisses, SeriesPoint
from shadow.store.gateway import ApprovalRow, GatewayPart, ToolCallRow
from shadow.store.handling import HandlingPart, Routed
from shadow.store.health import HealthPart
from shadow.store.ingest import IngestPart
from shadow.store.joins import JoinPart
from shadow.store.ladder import LadderPart
from shadow.store.noise import NoisePart
from shadow.store.outbox import OutboxPart
from shadow.store.positions import PositionPart
from shadow.store.records import DeadLetter, JoinRow, PutResult, PutStatus, ReplayEvidence, Reversal
from shadow.store.retention import Purged, RetentionPart
from shadow.store.review import AdjudicationRow, ClaimRow, ReviewConflict, ReviewPart, ReviewRefused

__all__ = [
    "AdjudicationRow",
    "ApprovalRow",
    "CaseView",
    "ClaimRow",
    "DeadLetter",
    "Disagreement",
    "FieldMisses",
    "JoinRow",
    "Purged",
    "PutResult",
    "PutStatus",
    "ReplayEvidence",
    "Reversal",
    "ReviewConflict",
    "ReviewRefused",
    "Routed",
    "SeriesPoint",
    "Store",
    "ToolCallRow",
]


class Store(
    CasePart,
    ConsolePart,
    GatewayPart,
    HandlingPart,
    HealthPart,
    IngestPart,
    JoinPart,
    LadderPart,
    NoisePart,
    OutboxPart,
    PositionPart,
    RetentionPart,
    ReviewPart,
):
    """Async facade over one DuckDB file. Use as ``async with Store(path) as store``.

    Every method runs its DuckDB work on the store's single thread (see the package
    docstring for the contract)."""
