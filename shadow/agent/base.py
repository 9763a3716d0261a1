"""What every transport and the runner share: the transport protocol, failure-reason
helpers and the timeout check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from shadow.errors import ConfigError

_SNIPPET_CHARS = 200  # of an error body or exception text kept in a failure reason
_SNIPPET_BYTES = 4096


def _clip(text: str) -> str:
    """The first 200 characters, on one line (reasons end up in logs, metrics and the API)."""
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "..."


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` on one line (message clipped). An exception group
    (``TaskGroup``, ``asyncio.gather``-style) is described by its first leaf, depth first,
    and how many other leaves it holds: ``ValueError: amount missing (+1 more)``."""
    leaves = _leaves(exc)
    first = leaves[0]
    detail = _clip(str(first))
    text = type(first).__name__ + (f": {detail}" if detail else "")
    return text + (f" (+{len(leaves) - 1} more)" if len(leaves) > 1 else "")


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup) or not exc.exceptions:
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


def _kind(value: object) -> str:
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return type(value).__name__


def _never() -> bool:
    return False


def _check_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ConfigError(f"agent timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class AgentTransport(Protocol):
    """Sends one request dict to the agent and returns its answer object.

    Raises :class:`AgentError` for every failure (``retriable`` only for transport errors).
    ``close`` is idempotent."""

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]: ...

    async def close(self) -> None: ...
