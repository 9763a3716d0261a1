"""``shadow demo``: the embedded default, end to end through the real sidecar.

It builds the same application as ``shadow run`` (:func:`shadow.app.build_app`) with the
demo policy and the built-in reference agent (``shadow.demo:reference_agent``), serves it on
loopback, and posts the synthetic back office's events and — a little later, shuffled, as
humans decide — their outcomes to its HTTP ingest API as NDJSON batches. It then waits for
every comparison and prints the agreement and autonomy table. ``--serve`` keeps the API and
``/metrics`` up afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shadow.api import PIPELINE
from shadow.app import build_app
from shadow.cli import UsageError, agreement_table, listen
from shadow.config import load_settings
from shadow.demo import (
    DEFAULT_EVENTS,
    DEFAULT_LATE_SHARE,
    DEMO_POLICY,
    DemoCase,
    generate,
    timeline,
)
from shadow.policy import parse_policy
from shadow.server import Listener

__all__ = ["run_demo"]

BATCH = 250


async def run_demo(args: argparse.Namespace, console: Console) -> int:
    n_events = args.events if args.events is not None else DEFAULT_EVENTS
    if n_events < 1:
        raise UsageError("--events must be at least 1")
    db = args.db or str(Path(tempfile.mkdtemp(prefix="shadow-demo-")) / "demo.duckdb")
    port = args.port if args.serve else 0
    settings = load_settings(
        db=db,
        agent="shadow.demo:reference_agent",
        host=args.host,
        port=port,
        agent_concurrency=4,
        expire_interval=3600.0,
    )
    policy = parse_policy(DEMO_POLICY, source="shadow.demo policy")
    app = build_app(settings, policy=policy)
    listener = Listener(app, listen(settings.host, port), settings, access_log=None)
    await listener.start()
    try:
        url = f"http://{settings.host}:{listener.port}"
        pipeline = app[PIPELINE]
        late = DEFAULT_LATE_SHARE if args.late_share is None else args.late_share
        if not 0.0 <= late < 1.0:
            raise UsageError("--late-share must be at least 0 and below 1")
        cases = generate(n_events, seed=args.seed, late_share=late)
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
            async with aiohttp.ClientSession() as session:
                feeding = asyncio.create_task(_feed(session, url, cases))
                while not feeding.done():
                    progress.update(bar, completed=pipeline.comparisons - start)
                    await asyncio.sleep(0.1)
                await feeding
            drained = asyncio.create_task(pipeline.drain())
            while not drained.done():
                progress.update(bar, completed=pipeline.comparisons - start)
                await asyncio.sleep(0.1)
            await drained
            progress.update(bar, completed=pipeline.comparisons - start)
        await pipeline.evaluate()
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
        console.print(
            f"Evidence, audit log and dead letters are in {db}; "
            f"`shadow status --db {db}` shows this table again."
        )
        if args.serve:
            console.print(f"Serving the API and /metrics on {url} (Ctrl-C to stop).")
            await asyncio.Event().wait()
    finally:
        await listener.close()
    return 0


async def _post(session: aiohttp.ClientSession, url: str, records: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(r) for r in records).encode()
    async with session.post(
        url, data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as resp:
        if resp.status != 202:
            raise UsageError(
                f"demo ingest refused a batch: HTTP {resp.status}: {(await resp.text())[:300]}"
            )


async def _feed(session: aiohttp.ClientSession, url: str, cases: list[DemoCase]) -> None:
    """Post the back office's records in arrival order: events as work happens, outcomes
    when the humans decide (minutes to days later), in NDJSON batches."""
    stream = timeline(cases)
    for i in range(0, len(stream), BATCH):
        chunk = stream[i : i + BATCH]
        events = [r for r in chunk if r["kind"] == "event"]
        outcomes = [r for r in chunk if r["kind"] == "outcome"]
        if events:
            await _post(session, f"{url}/v1/events", events)
        if outcomes:
            await _post(session, f"{url}/v1/outcomes", outcomes)
