"""``shadow report (--url URL | --db PATH) [--html OUT.html] [--json OUT.json]``: the live
evidence report (:mod:`shadow.report`) of a running sidecar, or of a stopped sidecar's
DuckDB file, written as JSON and/or self-contained HTML (docs/report.md).

- :func:`read_url`: ``GET /v1/agreement`` and each task type's
  ``GET /v1/autonomy/{task_type}/history``, sending ``Authorization: Bearer`` with
  ``SHADOW_TOKEN`` (else ``SHADOW_ADMIN_TOKEN``) when one is set, as the other commands do.
- :func:`read_db`: the same two documents computed offline from the file, opened read-only,
  with the policy the sidecar stored in it (as ``shadow status --db`` reads it), by the
  same :class:`~shadow.ladder.Ladder` code the API answers with.

Problems reaching the evidence (no file, a held file, a file that is not a sidecar's, a
sidecar that does not answer or refuses the credential, an answer that is not the document)
and a file that cannot be written are :class:`~shadow.console.UsageError` or
:class:`~shadow.errors.StoreError`: one line from the command line, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from shadow.console import UsageError, agreement_table
from shadow.errors import StoreInUseError
from shadow.report import build_report, dumps, render_html

__all__ = ["HISTORY", "add_report_command", "read_db", "read_url"]

HISTORY = 20  # level history entries per task type, by default
_TIMEOUT = 30.0  # seconds for the whole read from a sidecar

Histories = dict[str, list[dict[str, Any]]]


def add_report_command(sub: Any, *, url_help: str) -> None:
    """Add ``shadow report`` to the ``shadow`` command's subparsers; it runs as the
    command's plugins do (``plugin(args, console)``), after the command line has filled in
    ``--url`` when ``--db`` is not given."""
    report = sub.add_parser(
        "report", help="the live evidence report (JSON and/or self-contained HTML)"
    )
    source = report.add_mutually_exclusive_group()
    source.add_argument("--db", help="a sidecar's DuckDB file, read-only (not while it runs)")
    source.add_argument("--url", help=f"a running sidecar; {url_help}")
    report.add_argument("--html", dest="html_out", help="write the HTML report here")
    report.add_argument("--json", dest="json_out", help="write the JSON report here")
    report.add_argument(
        "--history",
        type=int,
        default=HISTORY,
        help=f"level history entries per task type ({HISTORY}; 0: none)",
    )
    report.set_defaults(plugin=_run)


def _run(args: argparse.Namespace, console: Any) -> int:
    if not args.html_out and not args.json_out:
        raise UsageError("name at least one output: --html OUT.html and/or --json OUT.json")
    if not 0 <= args.history <= 10_000:
        raise UsageError("--history must be between 0 and 10000")
    if args.db:
        agreement, histories = asyncio.run(read_db(args.db, history=args.history))
        source = {"db": args.db}
    else:
        token = os.environ.get("SHADOW_TOKEN") or os.environ.get("SHADOW_ADMIN_TOKEN")
        agreement, histories = asyncio.run(read_url(args.url, token=token, history=args.history))
        source = {"url": args.url}
    doc = build_report(agreement, histories, source=source, generated_at=datetime.now(UTC))
    if args.json_out:
        _atomic_write(Path(args.json_out), dumps(doc))
    if args.html_out:
        _atomic_write(Path(args.html_out), render_html(doc))
    console.print(agreement_table(doc, title="Live evidence"))
    for out in (args.json_out, args.html_out):
        if out:
            console.print(f"wrote {out}")
    return 0


def _atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


async def read_db(path: str, *, history: int = HISTORY) -> tuple[dict[str, Any], Histories]:
    """The agreement document and level histories of the sidecar file at ``path``."""
    from shadow.ladder import Ladder
    from shadow.policy import parse_policy
    from shadow.store import Store

    if not await asyncio.to_thread(os.path.isfile, path):
        raise UsageError(f"no sidecar database at {path}")
    try:
        store = await Store(path, read_only=True).open()
    except StoreInUseError as exc:
        holder = f" (PID {exc.pid})" if exc.pid is not None else ""
        raise UsageError(
            f"{path} is in use by a running sidecar{holder}; report through it with --url"
        ) from None
    async with store:
        text = await store.policy_text()
        if text is None:
            raise UsageError(f"{path} has no policy recorded; has a sidecar run on it?")
        policy = parse_policy(text, source=f"{path} (stored policy)")
        ladder = Ladder(store, policy, lambda: datetime.now(UTC))
        await ladder.load()
        doc = await ladder.current_agreement()
        histories: Histories = {}
        for name in doc["task_types"] if history else ():
            entries = await ladder.history(name, limit=history)
            histories[name] = [{"id": i, **entry.to_json()} for i, entry in entries]
        return doc, histories


async def read_url(
    base: str, *, token: str | None = None, history: int = HISTORY
) -> tuple[dict[str, Any], Histories]:
    """The agreement document and level histories of the sidecar API at ``base``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    root = base.rstrip("/")
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_TIMEOUT), headers=headers
        ) as session:
            url = f"{root}/v1/agreement"
            doc = _agreement(url, await _get(session, url))
            histories: Histories = {}
            for name in doc["task_types"] if history else ():
                url = f"{root}/v1/autonomy/{quote(name, safe='')}/history?limit={history}"
                histories[name] = _entries(url, await _get(session, url))
            return doc, histories
    except (aiohttp.ClientError, TimeoutError) as exc:
        why = str(exc) or f"no answer within {_TIMEOUT:g} s"
        raise UsageError(f"cannot reach the sidecar at {base}: {why}") from None


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        text = await resp.text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = {"error": " ".join(text.split())[:200]}
        if resp.status >= 400:
            shown = data.get("error", data) if isinstance(data, dict) else data
            raise UsageError(f"GET {url}: HTTP {resp.status}: {shown}")
        return data


# The evidence fields every task type entry of /v1/agreement has, as whole numbers / bounds.
_COUNTS = ("n", "agree", "critical", "errors")
_BOUNDS = ("lower", "upper")


def _agreement(url: str, data: Any) -> dict[str, Any]:
    """``data`` checked to be an agreement document, enough to build the report from."""
    tasks = data.get("task_types") if isinstance(data, dict) else None
    if not isinstance(tasks, dict):
        raise UsageError(f"GET {url}: not an agreement document (no task_types object)")
    for name, t in tasks.items():
        problem = _entry_problem(t)
        if problem is not None:
            raise UsageError(f"GET {url}: task_types.{name}: {problem}")
    return dict(data)


def _entry_problem(t: Any) -> str | None:
    if not isinstance(t, Mapping):
        return "expected an object"
    for key in _COUNTS:
        value = t.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key}: expected a whole number >= 0"
    for key in _BOUNDS:
        value = t.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key}: expected a number"
    return None


def _entries(url: str, data: Any) -> list[dict[str, Any]]:
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(x, dict) for x in entries):
        raise UsageError(f"GET {url}: not a level history (no entries list)")
    return entries
