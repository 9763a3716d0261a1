"""The gateway's catalog: which tools a case sees, and which of them are reads.

- **Catalog.** ``tools/list`` lists the tools of every upstream (one listing shared by every
  session, reused for ``class_ttl`` seconds) and keeps those the task type's allowlist admits,
  under their own names, prefixed ``<server>.`` only where two upstreams share a name. A call
  must name a listed tool *exactly* (no case folding, no Unicode normalisation): anything
  else is refused, recorded and audited, never forwarded; what is forwarded is the
  upstream's own name from the catalog, never the agent's string.
- **Class (fails closed).** A tool is a read only when the policy lists it under ``read:``
  (and not under ``write:``), or when its upstream is marked ``trust_read_only_hint: true``
  and marks it ``readOnlyHint: true`` in a listing at most ``class_ttl`` seconds old. Every
  other tool is a write. A tool once seen as a write stays one for the life of the process.

:class:`Catalog` holds this state for one :class:`~shadow.gateway.core.Gateway`, which owns
it; the refusing, recording and forwarding are the gateway's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shadow.errors import UpstreamError
from shadow.gateway.upstream import UpstreamClient
from shadow.policy import Policy
from shadow.tools_policy import TaskTools, ToolClass

__all__ = ["Catalog", "ToolEntry"]

log = logging.getLogger("shadow.gateway")

Listings = dict[str, list[dict[str, Any]]]
"""Every upstream's tools, by upstream name (an upstream whose listing failed lists none)."""


@dataclass(frozen=True, slots=True)
class ToolEntry:
    exposed: str  # the name the agent sees and calls
    upstream: str
    name: str  # the upstream's own name
    tool: Mapping[str, Any]  # the upstream's Tool object, with ``name`` = exposed

    @property
    def read_only_hint(self) -> bool | None:
        hint = (self.tool.get("annotations") or {}).get("readOnlyHint")
        return hint if isinstance(hint, bool) else None


def _catalog(lists: Mapping[str, list[dict[str, Any]]], rules: TaskTools) -> dict[str, ToolEntry]:
    owners: dict[str, int] = {}
    for tools in lists.values():
        for named in {str(t["name"]) for t in tools if isinstance(t.get("name"), str)}:
            owners[named] = owners.get(named, 0) + 1
    out: dict[str, ToolEntry] = {}
    for server, tools in lists.items():
        for tool in tools:
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                continue
            exposed = name if owners[name] == 1 else f"{server}.{name}"
            if exposed in out or not (rules.allowed(exposed) or rules.allowed(name)):
                continue
            out[exposed] = ToolEntry(exposed, server, name, {**tool, "name": exposed})
    return out


class Catalog:
    """See the module docstring. Owns the upstream listings (the last one and the one in
    flight), the per-task catalogs, the tools ever seen as writes and the read hints of
    trusted upstreams. ``monotonic`` is the clock ``class_ttl`` is measured on."""

    def __init__(
        self,
        *,
        policy: Policy,
        upstreams: Mapping[str, UpstreamClient],
        class_ttl: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.policy = policy
        self.upstreams = upstreams
        self._class_ttl = class_ttl
        self._monotonic = monotonic
        self._writes_seen: set[tuple[str, str]] = set()  # (upstream, name) ever seen as write
        # Per upstream (trusted hints only): (when listed, the tools marked readOnlyHint).
        self._read_hints: dict[str, tuple[float, frozenset[str]]] = {}
        # Per upstream: the listing in flight for classes, and when it started.
        self._listing: dict[str, tuple[float, asyncio.Future[Any]]] = {}
        # Every upstream's tools: the last full listing (when it started) and the one in flight.
        self._listed: tuple[float, Listings] | None = None
        self._listing_all: asyncio.Future[Listings] | None = None
        # Per task type, the catalog of the last listing (routing only; refreshed by a call
        # naming a tool it does not hold).
        self._catalogs: dict[str, dict[str, ToolEntry]] = {}

    async def listed(self, task_type: str, rules: TaskTools) -> dict[str, ToolEntry]:
        """``task_type``'s catalog for ``tools/list``, from a listing at most ``class_ttl``
        seconds old; kept as the task type's catalog for routing its calls."""
        entries = _catalog(await self._listings(self._class_ttl), rules)
        self._catalogs[task_type] = entries
        return entries

    async def entry(self, task_type: str, rules: TaskTools, name: str) -> ToolEntry | None:
        """The catalog entry a call naming ``name`` routes to, ``None`` when no listed tool
        has exactly that name (the catalog is listed afresh when it does not hold it)."""
        entries = self._catalogs.get(task_type)
        if entries is None or name not in entries:
            entries = _catalog(await self._listings(0.0), rules)
            self._catalogs[task_type] = entries
        return entries.get(name)

    async def classify(self, rules: TaskTools, entry: ToolEntry) -> ToolClass:
        """``entry``'s class (fails closed: see the module docstring)."""
        listed = rules.listed_class(entry.exposed)
        if listed is None and entry.exposed != entry.name:
            listed = rules.listed_class(entry.name)
        if listed is not None:
            return listed
        upstream = self.policy.upstreams.get(entry.upstream)
        if upstream is None or not upstream.trust_read_only_hint:
            return "write"  # fails closed: an upstream's own word is not enough
        if (entry.upstream, entry.name) in self._writes_seen:
            return "write"
        reads = await self._reads_of(entry.upstream)
        if entry.name in reads and (entry.upstream, entry.name) not in self._writes_seen:
            return "read"
        self._writes_seen.add((entry.upstream, entry.name))
        return "write"

    async def _lists(self, only: str | None = None) -> Listings:
        names = [only] if only is not None else list(self.upstreams)
        started = self._monotonic()

        async def one(name: str) -> list[dict[str, Any]]:
            listed_at = self._monotonic()
            try:
                tools = await self.upstreams[name].list_tools()
            except UpstreamError as exc:
                log.warning("gateway: %s", exc)
                return []
            self._learn(name, tools, listed_at)
            return tools

        got = dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))
        if only is None and (self._listed is None or self._listed[0] <= started):
            self._listed = (started, got)
        return got

    async def _listings(self, max_age: float) -> Listings:
        """Every upstream's tools, listed at most ``max_age`` seconds ago (one listing at a
        time, shared by every session waiting for it)."""
        held = self._listed
        if held is not None and self._monotonic() - held[0] <= max_age:
            return held[1]
        if self._listing_all is None:
            self._listing_all = asyncio.ensure_future(self._lists())
            self._listing_all.add_done_callback(self._listed_all)
        return await asyncio.shield(self._listing_all)

    def _listed_all(self, listing: asyncio.Future[Any]) -> None:
        if self._listing_all is listing:
            self._listing_all = None

    def _learn(self, upstream: str, tools: list[dict[str, Any]], listed_at: float) -> None:
        """Keep a listing's read hints; every tool it does not mark read-only is a write
        from now on."""
        reads = set()
        for tool in tools:
            name = tool.get("name")
            if not isinstance(name, str):
                continue
            if (tool.get("annotations") or {}).get("readOnlyHint") is True:
                reads.add(name)
            else:
                self._writes_seen.add((upstream, name))
        held = self._read_hints.get(upstream)
        if held is None or held[0] <= listed_at:  # a slower, older listing does not win
            self._read_hints[upstream] = (listed_at, frozenset(reads))

    async def _reads_of(self, upstream: str) -> frozenset[str]:
        """The tools ``upstream`` marks read-only, listed at most ``class_ttl`` s ago."""
        held = self._read_hints.get(upstream)
        if held is not None and self._monotonic() - held[0] <= self._class_ttl:
            return held[1]
        running = self._listing.get(upstream)
        if running is None:
            running = (self._monotonic(), asyncio.ensure_future(self._lists(upstream)))
            self._listing[upstream] = running
            running[1].add_done_callback(lambda _: self._listing.pop(upstream, None))
        started, listing = running
        await asyncio.shield(listing)  # a caller that gives up leaves the listing to the rest
        held = self._read_hints.get(upstream)
        if held is None or held[0] < started:  # the listing failed: nothing is a read
            return frozenset()
        return held[1]
