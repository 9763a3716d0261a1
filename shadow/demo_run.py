"""``shadow demo``: the embedded default, end to end through the real sidecar.

It starts the demo back office (:class:`shadow.demo.backoffice.BackOffice`, an MCP server on
a free loopback port), builds the same application as ``shadow run``
(:func:`shadow.app.build_app`) with the demo policy naming that server under ``tools:`` and
the built-in agent (``shadow.demo.backoffice:tool_agent``: the reference agent, working a
sample of its cases through the tool gateway), serves it on loopback, and posts the synthetic
back office's events and — a little later, shuffled, as humans decide — their outcomes to its
HTTP ingest API as NDJSON batches. It then waits for every comparison and prints the agreement
and autonomy table, the tool calls per task type (reads forwarded, writes captured, the
comparisons made on captured writes) and what the back office received: a write there would
mean the gateway let a shadow write through, and the demo then exits 1. ``--serve`` keeps the
API, ``/metrics`` and the back office up afterwards.

With ``--serve`` the sidecar runs with named credentials (:mod:`shadow.roles`): a tokens file
in the demo's temporary directory holds the sha256 of a ``viewer`` token ``demo-viewer`` and
an ``admin`` token ``demo-admin``, whose secrets are printed once at the end, next to the
console's URL (``/ui/``), and kept nowhere. The demo posts its own traffic with the admin
token; ``/metrics`` stays open, as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from aiohttp import web
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shadow.api import PIPELINE
from shadow.app import build_app
from shadow.client import AsyncClient, ShadowAPIError
from shadow.config import load_settings
from shadow.console import UsageError, agreement_table, listen
from shadow.demo import (
    DEFAULT_EVENTS,
    DEFAULT_LATE_SHARE,
    TASK_TYPES,
    DemoCase,
    demo_policy,
    generate,
    timeline,
)
from shadow.demo.backoffice import BackOffice, tool_agent
from shadow.gateway import GATEWAY
from shadow.pipeline import Pipeline
from shadow.policy import parse_policy
from shadow.roles import add_token
from shadow.server import Listener

__all__ = ["AGENT", "DemoTokens", "report_back_office", "run_demo"]

BATCH = 250
# The demo's agent: the reference agent working a share of its cases through its tools.
AGENT = "shadow.demo.backoffice:tool_agent"


@dataclass(frozen=True, slots=True)
class DemoTokens:
    """The credentials of a served demo: the tokens file (digests only) and the two secrets,
    which exist only in this process and on the demo's output."""

    file: Path
    viewer: str
    admin: str

    @classmethod
    def create(cls, directory: Path) -> DemoTokens:
        """A fresh tokens file in ``directory`` with ``demo-viewer`` and ``demo-admin``."""
        file = directory / "tokens.yaml"
        viewer = add_token(file, "demo-viewer", ["viewer"])
        admin = add_token(file, "demo-admin", ["admin"])
        return cls(file, viewer, admin)

    def print(self, url: str, console: Console) -> None:
        """The console's URL and each token with what it may do."""
        say = partial(console.print, markup=False, highlight=False, soft_wrap=True)
        say(f"Console: {url}/ui/ (sign in by pasting a token)")
        say(
            f"Tokens, shown only now ({self.file} keeps their sha256; send one as "
            "'Authorization: Bearer <token>', or as SHADOW_TOKEN to the shadow CLI):"
        )
        say(
            "  viewer token (demo-viewer: reads the agreement, levels, cases and audit log; "
            f"every write refused): {self.viewer}"
        )
        say(
            "  admin token (demo-admin: may do everything: set levels, approve, freeze, "
            f"ingest): {self.admin}"
        )


async def run_demo(args: argparse.Namespace, console: Console) -> int:
    n_events = args.events if args.events is not None else DEFAULT_EVENTS
    if n_events < 1:
        raise UsageError("--events must be at least 1")
    late = DEFAULT_LATE_SHARE if args.late_share is None else args.late_share
    if not 0.0 <= late < 1.0:
        raise UsageError("--late-share must be at least 0 and below 1")
    db: str = args.db
    tokens: DemoTokens | None = None
    if args.db is None or args.serve:
        workdir = Path(tempfile.mkdtemp(prefix="shadow-demo-"))
        db = args.db or str(workdir / "demo.duckdb")
        if args.serve:
            # Served, the sidecar runs with named credentials (a tokens file); the demo's own
            # traffic goes in with the admin token.
            tokens = DemoTokens.create(workdir)
    port = args.port if args.serve else 0
    cases = generate(n_events, seed=args.seed, late_share=late)
    async with BackOffice(cases) as backoffice:
        settings = load_settings(
            db=db,
            agent=AGENT,
            host=args.host,
            port=port,
            agent_concurrency=4,
            expire_interval=3600.0,
            tokens_file=None if tokens is None else tokens.file,
            metrics_open=None if tokens is None else True,
        )
        policy = parse_policy(demo_policy(backoffice.url), source="shadow.demo policy")
        app = build_app(settings, policy=policy)
        listener = Listener(app, listen(settings.host, port), settings, access_log=None)
        await listener.start()
        try:
            url = f"http://{settings.host}:{listener.port}"
            token = None if tokens is None else tokens.admin
            await _run(app, url, token, db, cases, late, args, console)
            if not await _tools_report(app, backoffice, console):
                return 1
            console.print(
                f"Evidence, audit log and dead letters are in {db}; "
                f"`shadow status --db {db}` shows this table again."
            )
            if args.serve:
                console.print(f"Serving the API and /metrics on {url} (Ctrl-C to stop).")
                if tokens is not None:
                    tokens.print(url, console)
                await asyncio.Event().wait()
        finally:
            await listener.close()
    return 0


async def _run(
    app: web.Application,
    url: str,
    token: str | None,
    db: str,
    cases: list[DemoCase],
    late: float,
    args: argparse.Namespace,
    console: Console,
) -> None:
    """Feed the cases, wait for every comparison, print the table and the demotions."""
    pipeline = app[PIPELINE]
    console.print(
        f"shadow demo: {len(cases)} work events across "
        f"{len({c.event['task_type'] for c in cases})} task types, seed {args.seed}, "
        f"db {db}"
    )
    if late:
        console.print(
            f"Late phase: the last {late:.0%} of the work follows a revised refund handbook "
            "the agent was never taught (late deliveries refunded in full, 45 days to "
            "change one's mind)."
        )
    progress = Progress(
        TextColumn("[bold]comparisons"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
    )
    with progress:
        bar = progress.add_task("comparisons", total=len(cases))
        start = pipeline.comparisons
        async with AsyncClient(url, token=token, retries=0) as client:
            feeding = asyncio.create_task(_feed(client, cases, pipeline))
            while not feeding.done():
                progress.update(bar, completed=pipeline.comparisons - start)
                await asyncio.sleep(0.1)
            await feeding
        drained = asyncio.create_task(pipeline.drain())
        while not drained.done():
            progress.update(bar, completed=pipeline.comparisons - start)
            await asyncio.sleep(0.1)
        await drained
        await pipeline.repeats_done()  # the repeated cases' tries: self-consistency
        progress.update(bar, completed=pipeline.comparisons - start)
    await pipeline.evaluate()
    await pipeline.ladder.evaluate(health=True)  # the join health as it is now
    doc = pipeline.ladder.agreement()
    console.print(agreement_table(doc, title="shadow demo: agreement and autonomy"))
    for name in doc["task_types"]:
        entries = await pipeline.ladder.history(name, limit=10_000)
        for _, entry in reversed(entries):
            if entry.action == "demote":
                console.print(
                    f"audit: {name} demoted {entry.from_level} → {entry.to_level} at "
                    f"n={entry.evidence.get('n')}: {entry.reason}"
                )


async def _tools_report(app: web.Application, backoffice: BackOffice, console: Console) -> bool:
    """Print, per task type, the tool calls the gateway recorded and the comparisons whose
    actions were writes it captured; then what the back office itself received. False when
    a write reached the back office (the gateway let a shadow write through)."""
    await app[GATEWAY].flush()
    summary = await app[PIPELINE].store.tool_summary()
    share = tool_agent.share
    console.print(
        f"Tools: the agent worked {share:.0%} of the cases through the tool gateway "
        "(shadow sessions: reads forwarded to the demo back office, writes captured as the "
        "case's actions, never forwarded):"
    )
    for name in TASK_TYPES:
        counts = summary.get(name, {})
        others = sum(
            n
            for key, n in counts.items()
            if key not in ("read/forwarded", "write/captured", "compared")
        )
        console.print(
            f"  {name:15} {counts.get('read/forwarded', 0):5} reads forwarded  "
            f"{counts.get('write/captured', 0):5} writes captured  "
            f"{counts.get('compared', 0):5} comparisons on captured writes"
            + (f"  {others} other calls" if others else "")
        )
    return report_back_office(backoffice, console)


def report_back_office(backoffice: BackOffice, console: Console) -> bool:
    """Print what the back office received; False (and an error line) when any write did:
    in shadow every write must stop at the gateway."""
    writes = backoffice.writes_received
    console.print(
        f"Demo back office: {backoffice.reads_received} reads served, {writes} writes received."
    )
    if writes:
        console.print(
            f"[bold red]error:[/] {writes} writes reached the demo back office in shadow "
            f"mode: {backoffice.writes[:3]}"
        )
        return False
    return True


async def _feed(client: AsyncClient, cases: list[DemoCase], pipeline: Pipeline) -> None:
    """Post the back office's records in arrival order: events as work happens, outcomes
    when the humans decide (minutes to days later), in NDJSON batches. Each batch waits for
    the agent and the joins of the one before, as a sidecar keeps up with a back office
    whose work arrives over days: the ladder then decides on the evidence in the order it
    was made, so every run tells the same story (a faster poster would leave the agent's
    work to pile up and the ladder to judge it all at the end). It posts with the client a
    host system would use (:mod:`shadow.client`); a refused record stops the demo."""
    stream = timeline(cases)
    for i in range(0, len(stream), BATCH):
        chunk = stream[i : i + BATCH]
        events = [r for r in chunk if r["kind"] == "event"]
        outcomes = [r for r in chunk if r["kind"] == "outcome"]
        try:
            for sent in (
                await client.send_events(events) if events else None,
                await client.send_outcomes(outcomes) if outcomes else None,
            ):
                if sent is not None and sent.errors:
                    raise UsageError(f"demo ingest refused a record: {sent.errors[0]}")
        except ShadowAPIError as exc:
            raise UsageError(f"demo ingest refused a batch: {exc}") from None
        await pipeline.drain()
