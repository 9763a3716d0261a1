"""``shadow audit verify``: walk an audit log's hash chain (:mod:`shadow.audit_chain`) from
outside the sidecar, in a sidecar's DuckDB file or through its API.

- :func:`verify_store`: the file, opened read-only (a running sidecar holds its file, so
  that is refused in one line naming the holder: ask it with ``--url`` instead).
- :func:`verify_api`: the pages of ``GET /v1/audit``, checked here with the same
  :class:`~shadow.audit_chain.ChainWalk`, so the verdict does not rest on the server's own
  (``GET /v1/audit/verify``).

Problems reaching the log (no file, a held file, a sidecar that does not answer, an answer
that is not a page of the log) are :class:`~shadow.console.UsageError` or
:class:`~shadow.errors.StoreError`, which the command line prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import aiohttp

from shadow.audit_chain import ChainEntry, ChainState, ChainWalk
from shadow.console import UsageError
from shadow.errors import StoreInUseError

__all__ = ["PAGE", "add_audit_command", "verdict", "verify_api", "verify_store"]

PAGE = 1000  # entries per GET /v1/audit


def add_audit_command(sub: Any, *, url_help: str) -> None:
    """Add ``shadow audit verify [--db PATH | --url URL]`` to the ``shadow`` command's
    subparsers; it runs as the command's plugins do (``plugin(args, console)``), after the
    command line has filled in ``--url`` when ``--db`` is not given."""
    audit = sub.add_parser("audit", help="the audit log: verify its hash chain")
    actions = audit.add_subparsers(dest="action", required=True)
    verify = actions.add_parser(
        "verify",
        help="walk the hash chain; exit 0 when intact, 1 naming the first entry that is not",
    )
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--db", help="a sidecar's DuckDB file, read-only (not while it runs)")
    source.add_argument("--url", help=f"a running sidecar, verified here from its log; {url_help}")
    verify.set_defaults(plugin=_run)


def _run(args: argparse.Namespace, console: object) -> int:
    """Print the verdict's one line; its exit code. Over HTTP it sends the credential the
    other commands send (``SHADOW_TOKEN``, else ``SHADOW_ADMIN_TOKEN``) when one is set."""
    if args.db:
        state = asyncio.run(verify_store(args.db))
    else:
        token = os.environ.get("SHADOW_TOKEN") or os.environ.get("SHADOW_ADMIN_TOKEN")
        state = asyncio.run(verify_api(args.url, token=token))
    code, line = verdict(state)
    print(line)
    return code


def verdict(state: ChainState) -> tuple[int, str]:
    """The command's exit code and its one line: 0 when the chain is intact, 1 naming the
    first entry that does not match and why."""
    if state.first_bad is None:
        return 0, f"audit chain ok: {state.entries} entries, head {state.head}"
    bad = state.first_bad
    return 1, f"audit chain broken at entry {bad.id}: {bad.why}"


async def verify_store(path: str) -> ChainState:
    """The chain in the DuckDB file at ``path``, read-only."""
    from shadow.store import Store

    if not await asyncio.to_thread(os.path.exists, path):
        raise UsageError(f"no sidecar database at {path}")
    try:
        store = await Store(path, read_only=True).open()
    except StoreInUseError as exc:
        holder = f" (PID {exc.pid})" if exc.pid is not None else ""
        raise UsageError(
            f"{path} is in use by a running sidecar{holder}; verify through it with --url"
        ) from None
    async with store:
        return await store.audit_chain()


async def verify_api(base: str, *, page: int = PAGE, token: str | None = None) -> ChainState:
    """The chain behind the sidecar API at ``base``, walked page by page (``token``: sent
    as ``Authorization: Bearer``)."""
    walk = ChainWalk()
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            while True:
                after = walk.last_id or 0
                url = f"{base.rstrip('/')}/v1/audit?after={after}&limit={page}"
                entries, more = _page(url, await _get(session, url))
                walk.feed(entries)
                if not more or not entries or (walk.last_id or 0) <= after:
                    return walk.state
    except aiohttp.ClientError as exc:
        raise UsageError(f"cannot reach the sidecar at {base}: {exc}") from None


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        text = await resp.text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = {"error": text[:200]}
        if resp.status >= 400:
            shown = data.get("error", data) if isinstance(data, dict) else data
            raise UsageError(f"GET {url}: HTTP {resp.status}: {shown}")
        return data


def _page(url: str, data: Any) -> tuple[list[ChainEntry], bool]:
    """The entries of one ``GET /v1/audit`` answer, and whether another page follows."""
    try:
        entries = [ChainEntry.from_json(e) for e in data["entries"]]
        more = data["next"] is not None
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"GET {url}: not a page of the audit log ({exc!r})") from None
    return entries, more
