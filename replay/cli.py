"""``shadow replay``: recorded history through an agent version, compared like live traffic.

Registered with ``shadow``'s CLI through the ``shadow.commands`` entry point
(:func:`register`), so ``shadow`` never imports ``replay``. Contract (DESIGN.md)::

    shadow replay --history PATH --agent URL|module:callable --config POLICY.yaml
        [--baseline REPORT.json | --baseline-version VERSION] [--json OUT.json]
        [--html OUT.html] [--fail-if-worse] ...

Exit codes: 0 done (no regression, or no ``--fail-if-worse``); 1 the regression gate
failed (:func:`replay.gate.compare_reports`: agreement, critical-miss rate, error rate,
mean cost or a segment significantly worse on some task type, or a budget of the policy
clearly exceeded, :mod:`replay.budgets`) and ``--fail-if-worse`` is set;
2 a usage or input error (one line on stderr, from ``shadow``'s CLI); 130 interrupted
(Ctrl-C / SIGTERM): the reports written hold the cases scored so far (``complete:
false``) and the cache lets the next run resume. The options are documented in
docs/replay.md; heavy imports wait until the command runs, since ``register`` runs for
every ``shadow`` invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replay.errors import ReplayError
from replay.gate import SEGMENT_MIN_CASES

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXIT_INTERRUPTED", "EXIT_WORSE", "register", "run"]

EXIT_WORSE = 1
# Left out of the report entry recorded as replay evidence: examples and per-case results.
_NOT_RECORDED = frozenset(
    {"critical_examples", "error_examples", "cases", "case_segments", "case_costs"}
)
EXIT_INTERRUPTED = 130
DEFAULT_CACHE = ".shadow-replay/cache.duckdb"


def register(sub: Any) -> None:
    """Add ``replay`` to ``shadow``'s subcommands (the ``shadow.commands`` entry point)."""
    p = sub.add_parser("replay", help="replay recorded history through an agent version")
    p.add_argument("--history", required=True, help="sidecar DuckDB file, Parquet or JSONL")
    p.add_argument("--agent", required=True, help="agent URL or module:callable")
    p.add_argument("--config", required=True, help="policy YAML (the live sidecar's rules)")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--baseline", help="a previous replay report (JSON) to compare with")
    base.add_argument(
        "--baseline-version", help="an agent version recorded in the history's sidecar file"
    )
    p.add_argument("--json", dest="json_out", help="write the JSON report here")
    p.add_argument("--html", dest="html_out", help="write the self-contained HTML report here")
    p.add_argument(
        "--fail-if-worse", action="store_true", help="exit 1 if significantly worse (CI gate)"
    )
    p.add_argument("--alpha", type=float, default=0.05, help="regression test level (0.05)")
    p.add_argument(
        "--segment-min-cases",
        type=int,
        default=SEGMENT_MIN_CASES,
        help=f"cases a segment needs to be tested on its own ({SEGMENT_MIN_CASES})",
    )
    p.add_argument("--task-type", action="append", help="only this task type (repeatable)")
    p.add_argument("--since", help="cases at or after this ISO-8601 time")
    p.add_argument("--until", help="cases before this ISO-8601 time")
    p.add_argument("--sample", type=float, default=1.0, help="stable fraction of cases (0, 1]")
    p.add_argument("--limit", type=int, help="at most this many cases (event_id order)")
    p.add_argument("--concurrency", type=int, default=8, help="agent calls in flight (8)")
    p.add_argument(
        "--rate", type=float, help="at most this many agent calls per second (all workers)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per agent call (30)")
    p.add_argument("--retries", type=int, default=2, help="retries after transport errors")
    p.add_argument("--agent-version", help="declare the agent's version (the cache key)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"answer cache ({DEFAULT_CACHE})")
    p.add_argument("--no-cache", action="store_true", help="keep no answers (in memory only)")
    p.add_argument("--refresh-cache", action="store_true", help="call again, replace answers")
    p.add_argument("--batch-size", type=int, default=500, help="cases per batch (500)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes (1); more split the history by event_id (no --limit)",
    )
    p.add_argument("--examples", type=int, default=5, help="example cases per task type (5)")
    p.add_argument(
        "--no-repeats",
        action="store_true",
        help="no repeated tries of the policy's repeat_rate cases (saves agent calls)",
    )
    p.add_argument(
        "--record-evidence",
        action="store_true",
        help="audit the results as replay evidence in a sidecar store (never live evidence)",
    )
    p.add_argument("--db", help="sidecar store for --record-evidence (default: the history)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(plugin=run)


def run(args: argparse.Namespace, console: Console) -> int:
    """Entry from ``shadow``'s CLI: errors raised here are printed as one line, exit 2."""
    return asyncio.run(_replay(args, console))


def _time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(
            f"--{name}: expected an ISO-8601 time like 2026-11-20T00:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise ReplayError(f"--{name}: {text!r} has no timezone; add Z or +00:00")
    return value


def _check(args: argparse.Namespace) -> None:
    if args.workers > 1 and args.limit is not None:
        raise ReplayError("--workers cannot be combined with --limit")
    if args.fail_if_worse and not (args.baseline or args.baseline_version):
        raise ReplayError("--fail-if-worse needs --baseline REPORT.json or --baseline-version")
    for name, ok in (
        ("concurrency", args.concurrency >= 1),
        ("batch-size", args.batch_size >= 1),
        ("examples", args.examples >= 0),
        ("timeout", args.timeout > 0),
        ("retries", args.retries >= 0),
        ("alpha", 0 < args.alpha < 1),
        ("sample", 0 < args.sample <= 1),
        ("limit", args.limit is None or args.limit >= 1),
        ("rate", args.rate is None or args.rate > 0),
        ("workers", args.workers >= 1),
        ("segment-min-cases", args.segment_min_cases >= 1),
    ):
        if not ok:
            raise ReplayError(f"--{name}: {getattr(args, name.replace('-', '_'))} is out of range")


@contextlib.contextmanager
def _interrupts(stop: asyncio.Event, console: Console) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: finish the answers in flight, write a partial report. A second
    one: the default behaviour (stop at once)."""
    loop = asyncio.get_running_loop()

    def first(sig: signal.Signals) -> None:
        console.print(
            f"[yellow]{sig.name}: stopping after the answers in flight; "
            "again to stop at once[/yellow]"
        )
        stop.set()
        loop.remove_signal_handler(sig)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, first, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _replay(args: argparse.Namespace, console: Console) -> int:
    from replay.cache import CachedAgent, CallStats
    from replay.document import build_document, load_report
    from replay.gate import compare_reports
    from replay.history import History, ResponseCache
    from replay.model import Selection
    from replay.runner import ReplayRunner, StoreAnswers
    from replay.shard import ShardJob, run_sharded
    from replay.terminal import Progress, print_report
    from shadow.agent import AgentRunner, load_agent
    from shadow.policy import load_policy

    _check(args)
    try:
        selection = Selection(
            frozenset(args.task_type) if args.task_type else None,
            _time(args.since, "since"),
            _time(args.until, "until"),
            args.sample,
            args.limit,
        )
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    policy = load_policy(args.config)
    unknown = sorted(set(args.task_type or ()) - set(policy.task_types))
    if unknown and policy.default is None:
        raise ReplayError(f"--task-type {unknown[0]!r} is not in the policy {args.config}")
    baseline_doc = load_report(args.baseline) if args.baseline else None
    transport = load_agent(args.agent, timeout=args.timeout)
    stop = asyncio.Event()
    from rich.console import Console as RichConsole

    err = RichConsole(stderr=True)  # the progress bar; stdout stays for the report
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    cache_path = ":memory:" if args.no_cache else args.cache
    sharded = args.workers > 1
    async with (
        History(args.history, selection, batch=args.batch_size) as history,
        # Sharded: the workers' cache is opened by replay.shard, not here.
        ResponseCache(":memory:" if sharded else cache_path) as cache,
        AgentRunner(
            transport,
            concurrency=args.concurrency,
            retries=args.retries,
            default_version=args.agent_version or "unknown",
        ) as agent_runner,
    ):
        if args.record_evidence and not args.db and history.format != "duckdb":
            raise ReplayError("--record-evidence needs --db STORE unless the history is one")
        if sharded:
            stats = CallStats()
            job = ShardJob(
                str(args.history),
                selection,
                policy,
                args.agent,
                cache=cache_path,
                timeout=args.timeout,
                concurrency=args.concurrency,
                retries=args.retries,
                declared_version=args.agent_version,
                refresh=args.refresh_cache,
                batch=args.batch_size,
                examples=args.examples,
                rate=args.rate,
                repeats=not args.no_repeats,
            )
            with (
                _interrupts(stop, console),
                Progress(err, history.total, stats, enabled=not args.no_progress) as bar,
            ):
                result, got = await run_sharded(
                    job, args.workers, stop=stop, progress=bar.advance, live=stats
                )
            stats.calls, stats.hits, stats.failed = got.calls, got.hits, got.failed
        else:
            source = CachedAgent(
                agent_runner,
                cache,
                spec=args.agent,
                declared_version=args.agent_version,
                refresh=args.refresh_cache,
                rate=args.rate,
                clock=time.monotonic,
                now=lambda: datetime.now(UTC),
            )
            await source.start()
            stats = source.stats
            with (
                _interrupts(stop, console),
                Progress(err, history.total, stats, enabled=not args.no_progress) as bar,
            ):
                runner = ReplayRunner(
                    history,
                    policy,
                    source,
                    examples=args.examples,
                    stop=stop,
                    progress=bar.advance,
                    repeats=not args.no_repeats,
                )
                result = await runner.run()
        if args.baseline_version and not stop.is_set():
            base_result = await ReplayRunner(
                history,
                policy,
                StoreAnswers(history, args.baseline_version),
                examples=args.examples,
                repeats=False,  # the live tries are the live noise floor's, not replayed
            ).run()
            baseline_doc = build_document(
                base_result,
                policy=policy,
                agent={"spec": f"store:{args.baseline_version}", "declared_version": None},
                history=str(args.history),
                selection=selection,
                alpha=args.alpha,
                run={},
            )
    seconds = time.monotonic() - t0
    doc = build_document(
        result,
        policy=policy,
        agent={"spec": args.agent, "declared_version": args.agent_version},
        history=str(args.history),
        selection=selection,
        alpha=args.alpha,
        run={
            "started_at": started_at.isoformat(),
            "seconds": round(seconds, 3),
            "agent_calls": stats.calls,
            "failed_calls": stats.failed,
            "cache_hits": stats.hits,
            "cache": cache_path,
            "passes": result.passes,
            "cases_per_second": round(result.scored / seconds, 1) if seconds > 0 else None,
        },
    )
    if baseline_doc is not None:
        doc["regression"] = compare_reports(
            doc, baseline_doc, alpha=args.alpha, segment_min=args.segment_min_cases
        )
        doc["baseline"] = {
            "source": args.baseline or f"store:{args.baseline_version}",
            "agent_version": baseline_doc.get("agent", {}).get("agent_version"),
            "complete": baseline_doc.get("complete", True),
            # A report written before replay scored blind outcomes only has no acceptance:
            # its agreement may count outcomes that echo the agent.
            "blind_only": all("acceptance" in t for t in baseline_doc["task_types"].values()),
        }
    _write_outputs(doc, args)
    print_report(console, doc)
    if args.record_evidence:
        if result.complete:
            await _record(doc, args, policy)
            console.print("replay evidence recorded (audited; live evidence untouched)")
        else:
            console.print("[yellow]partial run: no replay evidence recorded[/yellow]")
    if not result.complete:
        return EXIT_INTERRUPTED
    if args.fail_if_worse and doc["regression"] and doc["regression"]["regression"]:
        return EXIT_WORSE
    return 0


def _write_outputs(doc: dict[str, Any], args: argparse.Namespace) -> None:
    from replay.html import render_html

    if args.json_out:
        _atomic_write(Path(args.json_out), json.dumps(doc, indent=2, sort_keys=False) + "\n")
    if args.html_out:
        # An entry point reads the environment: the live sidecar's trace link template.
        link = os.environ.get("SHADOW_TRACE_URL") or None
        _atomic_write(Path(args.html_out), render_html(doc, trace_link=link))


def _atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never half (Ctrl-C safe)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ReplayError(f"cannot write {path}: {exc.strerror or exc}") from None


async def _record(doc: dict[str, Any], args: argparse.Namespace, policy: Any) -> None:
    from shadow.store import ReplayEvidence, Store

    entries = [
        ReplayEvidence(
            task_type=name,
            agent_version=t["agent_version"] or args.agent_version or "unknown",
            n=t["n"],
            agree=t["agree"],
            critical=t["critical"],
            errors=t["errors"],
            lower=t["lower"],
            upper=t["upper"],
            policy_hash=policy.task_types[name].hash if name in policy.task_types else None,
            report={k: v for k, v in t.items() if k not in _NOT_RECORDED},
        )
        for name, t in doc["task_types"].items()
    ]
    async with Store(args.db or args.history) as store:
        await store.put_replay_evidence(
            entries, run_id=uuid.uuid4().hex, history=str(args.history), now=datetime.now(UTC)
        )
