"""The tool gateway: the sidecar as the MCP endpoint an agent's tools go through, where the
autonomy level is enforced on each call that reaches it (docs/gateway.md). A call the agent
makes to a tool server any other way is never seen here: the deployment must leave it no other
way (upstream credentials only in the sidecar, ``env:NAME`` headers; tool servers that accept
only those; the agent's pods allowed to reach only the sidecar: the Helm chart's optional
``networkPolicy``, docs/operating.md "Only through the gateway").

::

    agent ──MCP──► /mcp/{capability} ──reads──► upstream MCP servers (the policy's ``tools``)
                        │ shadow: writes captured as the case's actions, never forwarded
                        │ live L0-L1 refused · L2 held for approval · L3 forwarded (audit
                        │ items held) · L4 forwarded · frozen: every write refused
                        └ allowlist per task type; every call a row, counted and audited

Modules: :mod:`~shadow.gateway.rules` (the pure per-call decision),
:mod:`~shadow.gateway.capability` (tools URLs bound to one case),
:mod:`~shadow.gateway.upstream` (the official MCP SDK's client to each upstream),
:mod:`~shadow.gateway.catalog` (which tools a case sees, and which are reads),
:mod:`~shadow.gateway.core` (enforcement, retries, shadow capture),
:mod:`~shadow.gateway.records` (call rows and the gateway's audit entries),
:mod:`~shadow.gateway.results` (shadow results checked against a tool's ``outputSchema``),
:mod:`~shadow.gateway.synth` (the value synthesis behind them),
:mod:`~shadow.gateway.approvals` (held writes), :mod:`~shadow.gateway.mcp` (the
agent-facing Streamable HTTP endpoint), :mod:`~shadow.gateway.api` (sessions and approvals
over the sidecar's HTTP API).
"""

from __future__ import annotations

from collections.abc import Mapping

from shadow.config import Settings
from shadow.errors import ConfigError
from shadow.gateway.approvals import Approvals, Settled
from shadow.gateway.capability import Capabilities, Grant, McpSessions
from shadow.gateway.core import CallRefused, Gateway, ToolEntry, describe_gateway
from shadow.gateway.rules import Decision, decide
from shadow.gateway.upstream import UpstreamClient
from shadow.keys import GATEWAY  # its app key, for existing imports
from shadow.policy import Policy

__all__ = [
    "GATEWAY",
    "Approvals",
    "CallRefused",
    "Capabilities",
    "Decision",
    "Gateway",
    "Grant",
    "McpSessions",
    "Settled",
    "ToolEntry",
    "UpstreamClient",
    "build_gateway",
    "decide",
    "describe_gateway",
]


def build_gateway(
    policy: Policy, settings: Settings, environ: Mapping[str, str]
) -> dict[str, UpstreamClient]:
    """The SDK clients of the policy's upstreams, credentials resolved from ``environ``
    (ConfigError names a header whose ``env:NAME`` is not set). Nothing connects yet."""
    out: dict[str, UpstreamClient] = {}
    for name, upstream in policy.upstreams.items():
        try:
            headers = upstream.resolved_headers(environ)
        except KeyError as exc:
            raise ConfigError(
                f"tools.{name}.headers: environment variable {exc.args[0]} is not set"
            ) from None
        out[name] = UpstreamClient(
            name, upstream.url, headers, timeout=settings.gateway_upstream_timeout
        )
    return out
