"""The kit's one error, and how the kit says what went wrong in one line.

::

    ShadowError (shadow.errors)
    └── ToolsError    a case's tools cannot be used: no tools URL, or the session did not open

A handler's own exceptions are not translated: the service answers the case with
``agent raised <Type>: <message>`` (:func:`describe`), which the sidecar records as the
decision's error.
"""

from __future__ import annotations

from shadow.errors import ShadowError

__all__ = ["ToolsError", "describe", "scrub"]

_DETAIL_CHARS = 300


class ToolsError(ShadowError):
    """A case's tools cannot be used: the case has no tools URL (its task type has no
    ``tools:`` policy), or its MCP session could not be opened."""


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` on one line (the message clipped). An exception group
    (a ``TaskGroup``'s, an anyio task group's) is described by its first leaf, depth first,
    and how many other leaves it holds: ``ValueError: amount missing (+1 more)``."""
    leaves = _leaves(exc)
    first = leaves[0]
    detail = " ".join(str(first).split())
    if len(detail) > _DETAIL_CHARS:
        detail = detail[:_DETAIL_CHARS] + "..."
    text = type(first).__name__ + (f": {detail}" if detail else "")
    return text + (f" (+{len(leaves) - 1} more)" if len(leaves) > 1 else "")


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup) or not exc.exceptions:
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


def scrub(text: str, url: str | None) -> str:
    """``text`` with the tools URL (a credential: it grants the case's tools) replaced by
    ``<tools URL>``."""
    return text.replace(url, "<tools URL>") if url else text
