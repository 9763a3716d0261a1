"""Calling the agent in shadow mode: transports, retries, a circuit breaker, bounded concurrency.

The contract (DESIGN.md, "Agent call (HTTP)"): the runner sends each (already redacted)
work event as ``{"event_id", "task_type", "payload", "shadow": true}``; over HTTP as a
``POST`` with ``Content-Type: application/json``, ``X-Shadow-Mode: true`` and
``X-Shadow-Event-Id: <event_id>``. The answer's ``decision`` is required; ``actions``,
``confidence``, ``agent_version`` and ``usage`` are optional. Proposed actions are recorded in
the :class:`~shadow.model.ShadowDecision`, never forwarded or executed.

:meth:`AgentRunner.decide` never raises for an agent problem. Every failure becomes
``ShadowDecision.failed`` with a reason a person can act on (``HTTP 503: <body>``,
``timeout after 5.0 s``, ``invalid JSON: ...``, ``invalid agent answer: decision: required...``,
``connection failed after 3 attempts: ...``, ``agent raised ValueError: ...``,
``circuit open: ...``), which the pipeline compares as ``agent_error``.

Knobs (``Settings.agent_*`` and ``breaker_*`` feed them):

``timeout``
    Seconds for one attempt, body included (HTTP and callables alike). A timeout is never
    retried: a slow agent must not get more load.
``max_response_bytes``
    Largest answer accepted (after decompression); a bigger one is a failed decision.
``concurrency``
    Agent calls in flight at once, across every caller of one runner (one semaphore).
    Callers beyond it wait, which is the backpressure sources feel.
``retries``, ``backoff``
    Extra attempts after a *transport* error (``AgentError.retriable``: connection refused or
    reset, DNS, server disconnected), sleeping ``backoff * 2**attempt`` between them. Safe
    because shadow calls have no side effects. HTTP errors, timeouts and bad answers are not
    retried. Retries stop early when the breaker opens meanwhile.
``failure_threshold``, ``reset_after``
    The :class:`CircuitBreaker`: after that many failed decisions in a row, calls are
    rejected at once (no agent call, ``latency_ms=None``) for ``reset_after`` seconds, then
    one trial call decides whether to close again.
``default_version``
    ``agent_version`` of failed decisions before any valid answer named a version; after
    that, the last version seen is used, so errors count against the version that made them.
``clock``, ``sleep``
    Injected monotonic clock (seconds) and sleep, for latency, breaker and backoff.

Layout: the transports are interchangeable implementations, one module each
(:mod:`~shadow.agent.http`, :mod:`~shadow.agent.inproc`), behind the
:class:`~shadow.agent.base.AgentTransport` protocol; :mod:`~shadow.agent.breaker` and
:mod:`~shadow.agent.runner` are used with either.

Errors: transports raise :class:`~shadow.errors.AgentError` (aiohttp's exceptions are
translated in :class:`HttpAgent`); bad specs and knobs raise
:class:`~shadow.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable

from shadow.agent.base import AgentTransport
from shadow.agent.breaker import CircuitBreaker
from shadow.agent.http import HttpAgent
from shadow.agent.inproc import CallableAgent
from shadow.agent.runner import AgentRunner, ToolSessions
from shadow.errors import ConfigError

__all__ = [
    "AgentRunner",
    "AgentTransport",
    "CallableAgent",
    "CircuitBreaker",
    "HttpAgent",
    "ToolSessions",
    "load_agent",
]


def load_agent(
    spec: str, *, timeout: float, traceparent: Callable[[str], str | None] | None = None
) -> AgentTransport:
    """``http(s)://...`` -> :class:`HttpAgent` (sending ``traceparent(event_id)`` as the W3C
    header when given); ``pkg.mod:fn`` -> :class:`CallableAgent`."""
    text = spec.strip()
    if text.lower().startswith(("http://", "https://")):
        return HttpAgent(text, timeout=timeout, traceparent=traceparent)
    if ":" in text and "://" not in text:
        return CallableAgent(text, timeout=timeout)
    raise ConfigError(f"agent must be an http(s) URL or module:callable, got {spec!r}")
