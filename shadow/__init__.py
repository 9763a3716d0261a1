"""Shadow sidecar: let an AI agent earn autonomy on real work, one task type at a time.

The engine: parse records (:mod:`shadow.model`), load the policy (:mod:`shadow.policy`),
diff an agent's decision against the human's (:mod:`shadow.diff`), bound agreement
(:mod:`shadow.stats`), decide the ladder (:mod:`shadow.promotion`), persist everything
(:mod:`shadow.store`), join in any order (:mod:`shadow.joiner`) and apply autonomy changes
with audit (:mod:`shadow.autonomy`).
"""

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
