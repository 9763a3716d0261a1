"""Shadow sidecar: let an AI agent earn autonomy on real work, one task type at a time.

The engine: parse records (:mod:`shadow.model`), load the policy (:mod:`shadow.policy`),
diff an agent's decision against the human's (:mod:`shadow.diff`), bound agreement
(:mod:`shadow.stats`), decide the ladder (:mod:`shadow.promotion`), persist everything
(:mod:`shadow.store`), join in any order (:mod:`shadow.joiner`) and apply autonomy changes
with audit (:mod:`shadow.autonomy`).

The names below are imported on first use (PEP 562), so importing one light module of the
package (``shadow.client`` for a host, ``shadow.kit`` for an agent) does not load the store,
DuckDB or the broker client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadow.diff import Differ, DiffResult, diff
    from shadow.errors import (
        AutonomyError,
        ConflictError,
        FieldError,
        PolicyError,
        ShadowError,
        StoreError,
        ValidationError,
    )
    from shadow.joiner import Joiner, compare
    from shadow.ladder import Ladder
    from shadow.model import (
        Action,
        AuditEntry,
        Comparison,
        Evidence,
        FieldResult,
        Level,
        Outcome,
        ShadowDecision,
        Usage,
        Verdict,
        WorkEvent,
    )
    from shadow.policy import Policy, TaskPolicy, load_policy, parse_policy
    from shadow.promotion import LadderState, Move, Proposal, Snapshot, Step, decide
    from shadow.stats import lower_bound, upper_bound
    from shadow.store import DeadLetter, PutResult, PutStatus, Store

_LAZY = {
    "Action": "shadow.model",
    "AuditEntry": "shadow.model",
    "AutonomyError": "shadow.errors",
    "Comparison": "shadow.model",
    "ConflictError": "shadow.errors",
    "DeadLetter": "shadow.store",
    "DiffResult": "shadow.diff",
    "Differ": "shadow.diff",
    "Evidence": "shadow.model",
    "FieldError": "shadow.errors",
    "FieldResult": "shadow.model",
    "Joiner": "shadow.joiner",
    "Ladder": "shadow.ladder",
    "LadderState": "shadow.promotion",
    "Level": "shadow.model",
    "Move": "shadow.promotion",
    "Outcome": "shadow.model",
    "Policy": "shadow.policy",
    "PolicyError": "shadow.errors",
    "Proposal": "shadow.promotion",
    "PutResult": "shadow.store",
    "PutStatus": "shadow.store",
    "ShadowDecision": "shadow.model",
    "ShadowError": "shadow.errors",
    "Snapshot": "shadow.promotion",
    "Step": "shadow.promotion",
    "Store": "shadow.store",
    "StoreError": "shadow.errors",
    "TaskPolicy": "shadow.policy",
    "Usage": "shadow.model",
    "ValidationError": "shadow.errors",
    "Verdict": "shadow.model",
    "WorkEvent": "shadow.model",
    "compare": "shadow.joiner",
    "decide": "shadow.promotion",
    "diff": "shadow.diff",
    "load_policy": "shadow.policy",
    "lower_bound": "shadow.stats",
    "parse_policy": "shadow.policy",
    "upper_bound": "shadow.stats",
}

__all__ = [
    "Action",
    "AuditEntry",
    "AutonomyError",
    "Comparison",
    "ConflictError",
    "DeadLetter",
    "DiffResult",
    "Differ",
    "Evidence",
    "FieldError",
    "FieldResult",
    "Joiner",
    "Ladder",
    "LadderState",
    "Level",
    "Move",
    "Outcome",
    "Policy",
    "PolicyError",
    "Proposal",
    "PutResult",
    "PutStatus",
    "ShadowDecision",
    "ShadowError",
    "Snapshot",
    "Step",
    "Store",
    "StoreError",
    "TaskPolicy",
    "Usage",
    "ValidationError",
    "Verdict",
    "WorkEvent",
    "compare",
    "decide",
    "diff",
    "load_policy",
    "lower_bound",
    "parse_policy",
    "upper_bound",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shadow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
