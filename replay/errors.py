"""Replay's errors, rooted in the sidecar's hierarchy so ``shadow``'s CLI prints them as one
line and exits 2 (a user or input mistake)::

    ShadowError (shadow.errors)
    └── ReplayError          a replay cannot start or go on (bad options, bad baseline)
        └── HistoryError     a history file is unreadable or breaks its layout; the message
                             names the file and the line, row or column

DuckDB errors are translated in :mod:`replay.history`, the only module that meets them.
"""

from __future__ import annotations

from shadow.errors import ShadowError

__all__ = ["HistoryError", "ReplayError"]


class ReplayError(ShadowError):
    """A replay cannot start or go on; the message says what to fix."""


class HistoryError(ReplayError):
    """A history file cannot be read: names the file and the line, row or column."""
