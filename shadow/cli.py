"""The ``shadow`` command: run, demo, status, report, autonomy, audit, agent (names are a
contract; DESIGN.md).

This is the entry point: it is the only place that reads the environment (through
:func:`shadow.config.load_settings`) and the only place that turns errors into exit codes.
The serving commands (``run``, ``proxy``, ``demo --serve``) write log lines to stderr as
:mod:`shadow.logs` configures them; their start-up lines (``shadow: serving on ...``) are
printed on stdout. The commands that ask a running sidecar take ``--url``, by default
``SHADOW_URL``, else ``http://127.0.0.1:<SHADOW_PORT or 8750>``.
A user mistake prints one line (``shadow: error: ...``) and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
from rich.console import Console
from rich.table import Table

from shadow.agent_check_cli import add_check_command
from shadow.agent_serve_cli import add_serve_command
from shadow.audit_verify import add_audit_command
from shadow.console import UsageError, agreement_table, listen
from shadow.console import fmt as _fmt
from shadow.errors import ShadowError, StoreInUseError
from shadow.report_cli import add_report_command
from shadow.token_cli import add_token_command

if TYPE_CHECKING:
    from shadow.config import Settings

__all__ = ["listen", "main"]

EXIT_USAGE = 2
DEFAULT_URL = "http://127.0.0.1:8750"
URL_HELP = "the sidecar's API (default: SHADOW_URL, else http://127.0.0.1:<SHADOW_PORT or 8750>)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="shadow", description="Let an AI agent earn autonomy, one task type at a time."
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the sidecar (HTTP ingest API always on)")
    _run_options(run)
    run.add_argument(
        "--proxy-upstream",
        help="also run the mirroring proxy in front of this URL (env SHADOW_PROXY_UPSTREAM)",
    )
    run.add_argument(
        "--proxy-listen",
        help="the proxy's HOST:PORT (env SHADOW_PROXY_LISTEN, default 127.0.0.1:8760)",
    )
    proxy = sub.add_parser(
        "proxy", help="run the sidecar as a mirroring reverse proxy in front of the host"
    )
    proxy.add_argument("--upstream", required=True, help="the host's URL, http://HOST:PORT")
    proxy.add_argument(
        "--listen", help="the proxy's HOST:PORT (env SHADOW_PROXY_LISTEN, default 127.0.0.1:8760)"
    )
    _run_options(proxy)

    demo = sub.add_parser("demo", help="synthetic back office, built-in agent, real pipeline")
    demo.add_argument("--events", type=int, help="number of work events (default from the demo)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--db", help="DuckDB file (default: a fresh temporary file)")
    demo.add_argument("--serve", action="store_true", help="keep the API and /metrics up after")
    demo.add_argument("--port", type=int, default=8750)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument(
        "--late-share",
        type=float,
        default=None,
        help="share of the run in which the refund handbook changes (default 0.3; 0: none)",
    )

    status = sub.add_parser("status", help="agreement and autonomy per task type")
    where = status.add_mutually_exclusive_group()
    where.add_argument("--db", help="read a sidecar's DuckDB file (not while it runs)")
    where.add_argument("--url", help=f"ask a running sidecar; {URL_HELP}")
    status.add_argument("--json", action="store_true", help="print the /v1/agreement document")

    auto = sub.add_parser(
        "autonomy", help="list, set, approve, reject, reconsider, history, freeze, unfreeze"
    )
    auto.add_argument("--url", help=URL_HELP)
    auto_sub = auto.add_subparsers(dest="action", required=True, parser_class=_Parser)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = auto_sub.add_parser(name, help=help)
        # Also accepted after the action (`shadow autonomy list --url URL`); SUPPRESS keeps
        # the value given before the action when it is absent here.
        a.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)
        return a

    action("list", "level per task type")
    s = action("set", "set a level (token from SHADOW_ADMIN_TOKEN)")
    s.add_argument("task_type")
    s.add_argument("level", help="L0..L4")
    s.add_argument("--reason", default="")
    s.add_argument("--actor", default=None)
    for name, verb in (("approve", "approve"), ("reject", "reject")):
        a = action(name, f"{verb} the pending promotion you name")
        a.add_argument("task_type")
        a.add_argument("--to", help="the level the proposal promotes to (L1..L4)")
        a.add_argument("--from", dest="from_level", help="the level it promotes from")
        a.add_argument("--proposal", help="the proposal's id (shown by list and by this command)")
        a.add_argument("--reason", default="", help="why (required to reject)")
        a.add_argument("--actor", default=None)
    r = action("reconsider", "lift a rejection's hold so the gate may propose again")
    r.add_argument("task_type")
    r.add_argument("--reason", default="")
    r.add_argument("--actor", default=None)
    h = action("history", "audit log of a task type")
    h.add_argument("task_type")
    h.add_argument("--limit", type=int, default=20)
    for name in ("freeze", "unfreeze"):
        f = action(name, f"{name} every task type")
        f.add_argument("--reason", default="")
        f.add_argument("--actor", default=None)
    add_audit_command(sub, url_help=URL_HELP)
    add_report_command(sub, url_help=URL_HELP)
    add_token_command(sub)
    # `shadow agent ...`: commands for agent authors, one subcommand each.
    agent = sub.add_parser(
        "agent", help="for agent authors: check an agent against the contract, serve a kit agent"
    )
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, parser_class=_Parser)
    add_check_command(agent_sub)
    add_serve_command(agent_sub)
    ap = sub.add_parser("approvals", help="tool writes held for approval: list, approve, reject")
    ap.add_argument("--url", help=URL_HELP)
    ap_sub = ap.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ls = ap_sub.add_parser("list", help="held writes (token from SHADOW_ADMIN_TOKEN)")
    ls.add_argument("--status", default="pending", help="pending (default), all, forwarded, ...")
    for name in ("approve", "reject"):
        a = ap_sub.add_parser(name, help=f"{name} one held write")
        a.add_argument("approval_id")
        a.add_argument("--reason", default="", help="why (required to reject)")
        a.add_argument("--actor", default=None)
    for a in ap_sub.choices.values():
        a.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)
    _add_plugins(sub)
    return p


def _run_options(run: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``proxy`` share."""
    run.add_argument("--config", help="policy YAML (env SHADOW_CONFIG)")
    run.add_argument("--settings", help="YAML file with settings (env SHADOW_SETTINGS)")
    run.add_argument("--db", help="DuckDB file (env SHADOW_DB, default shadow.duckdb)")
    run.add_argument("--host", help="listen address (env SHADOW_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, help="listen port (env SHADOW_PORT, default 8750)")
    run.add_argument("--agent", help="agent URL or module:callable (env SHADOW_AGENT)")
    run.add_argument(
        "--source",
        action="append",
        help="file:PATH.jsonl or kafka://HOST:PORT?events=TOPIC&outcomes=TOPIC&group=GROUP "
        "(repeatable; Kafka settings: SHADOW_KAFKA_*, see docs/kafka.md)",
    )
    run.add_argument("--admin-token", help="bearer token for API writes (env SHADOW_ADMIN_TOKEN)")
    run.add_argument("--agent-concurrency", type=int, help="concurrent agent calls")
    run.add_argument("--agent-timeout", type=float, help="seconds per agent call")
    run.add_argument(
        "--header-timeout",
        type=float,
        help="seconds for a request line and headers (env SHADOW_HEADER_TIMEOUT, default 75)",
    )
    run.add_argument(
        "--body-timeout",
        type=float,
        help="seconds for a whole ingest body (env SHADOW_BODY_TIMEOUT, default 60)",
    )
    run.add_argument(
        "--mirror-port",
        type=int,
        help="mirror listener where every path is the host's path (env SHADOW_MIRROR_PORT)",
    )
    run.add_argument(
        "--ingest-signature-secret-file",
        help="HMAC-SHA256 key ingest bodies must be signed with (env "
        "SHADOW_INGEST_SIGNATURE_SECRET_FILE; tokens: SHADOW_INGEST_TOKENS)",
    )


def _add_plugins(sub: Any) -> None:
    """Subcommands from other packages (entry-point group ``shadow.commands``; ``replay``
    registers ``shadow replay`` this way, so ``shadow`` never imports it). Each entry
    point is ``register(subparsers)``: it adds its parser and sets ``plugin`` to a
    ``(args, console) -> exit code`` callable. A plugin that fails to load is skipped."""
    for ep in entry_points(group="shadow.commands"):
        try:
            ep.load()(sub)
        except Exception as exc:
            print(f"shadow: warning: command {ep.name!r} not loaded: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # Piped output (CI logs, files) gets a width that fits the tables instead of 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        args = _parser().parse_args(argv)
        if args.command in ("autonomy", "approvals"):
            _check_text(args)
        asks = ("status", "autonomy", "approvals", "audit", "report")
        if args.command in asks and not getattr(args, "db", None):
            args.url = _sidecar_url(args.url)
        plugin = getattr(args, "plugin", None)
        if plugin is not None:
            return int(plugin(args, console))
        if args.command in ("run", "proxy"):
            return _run(args)
        if args.command == "demo":
            from shadow.config import load_settings
            from shadow.demo_run import run_demo

            with _logging(load_settings()) if args.serve else contextlib.nullcontext():
                return asyncio.run(run_demo(args, console))
        if args.command == "status":
            return asyncio.run(_status(args, console))
        if args.command == "approvals":
            return asyncio.run(_approvals(args, console))
        return asyncio.run(_autonomy(args, console))
    except (UsageError, ShadowError) as exc:
        first = str(exc).strip().splitlines() or ["invalid input"]
        if isinstance(exc, StoreInUseError):  # it names the holder; here is what to do
            first[0] += "; stop that process first, or point --db at another file"
        detail = "\n".join(first[1:])
        print(f"shadow: error: {first[0]}", file=sys.stderr)
        if detail:
            print(detail, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


# The arguments of the API commands that the sidecar takes as identifiers, and as free text
# (the reason), by their attribute, with the name a user typed.
_IDENT_ARGS = {
    "task_type": "TASK_TYPE",
    "level": "LEVEL",
    "to": "--to",
    "from_level": "--from",
    "proposal": "--proposal",
    "actor": "--actor",
    "approval_id": "APPROVAL_ID",
    "status": "--status",
}
_TEXT_ARGS = {"reason": "--reason"}


def _sidecar_url(given: str | None) -> str:
    """``--url`` if given, else ``SHADOW_URL``, else loopback on ``SHADOW_PORT`` (or 8750)."""
    if given:
        return given
    from shadow.config import load_client_settings

    return load_client_settings().base_url


@contextlib.contextmanager
def _logging(settings: Settings) -> Iterator[None]:
    """Log lines to stderr as ``settings`` say, capabilities redacted, for the block."""
    from shadow.logs import logging_to_stderr
    from shadow.server import redact

    level, fmt, access = settings.log_level, settings.log_format, settings.log_access
    with logging_to_stderr(level, fmt, access=access, scrub=redact):
        yield


def _check_text(args: argparse.Namespace) -> None:
    """Refuse (exit 2, naming the argument) what the sidecar would refuse as text
    (:func:`shadow.checks.text_problem`) before anything is sent: a lone surrogate (bytes
    that are not UTF-8 reach Python's argv as one) anywhere, and a control character (NUL
    included) in an identifier."""
    from shadow.checks import text_problem

    for names, ident in ((_IDENT_ARGS, True), (_TEXT_ARGS, False)):
        for attr, shown in names.items():
            value = getattr(args, attr, None)
            problem = text_problem(value, shown, ident=ident) if isinstance(value, str) else None
            if problem is not None:
                raise UsageError(f"{problem[0]}: {problem[1]}")


def _run(args: argparse.Namespace) -> int:
    from shadow.config import load_settings

    if args.command == "proxy":
        upstream, proxy_listen = args.upstream, args.listen
    else:
        upstream, proxy_listen = args.proxy_upstream, args.proxy_listen
    settings = load_settings(
        config=args.config,
        settings=args.settings,
        db=args.db,
        host=args.host,
        port=args.port,
        agent=args.agent,
        source=args.source,
        admin_token=args.admin_token,
        agent_concurrency=args.agent_concurrency,
        agent_timeout=args.agent_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        mirror_port=args.mirror_port,
        ingest_signature_secret_file=args.ingest_signature_secret_file,
        proxy_upstream=upstream,
        proxy_listen=proxy_listen,
    )
    with _logging(settings):
        return _serve(settings, args)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from shadow.app import build_app, side_apps, tune_gc, tune_switching
    from shadow.keys import AUTH, KEYRING, STARTUP
    from shadow.server import run_server

    app = build_app(settings)
    tune_gc()
    tune_switching()
    socks = [listen(settings.host, settings.port)]
    beside = []
    try:
        port = socks[0].getsockname()[1]
        # Said once everything is open (the store, the sources, every listener): see serve().
        lines = [
            f"serving on http://{settings.host}:{port} (db {settings.db})",
            f"ingest: {app[AUTH].summary}",
            f"credentials: {app[KEYRING].summary}"
            + ("" if app[KEYRING].strict else "; reads open"),
            *(
                [f"kafka: {settings.kafka_role}"]
                if any(s.startswith("kafka://") for s in settings.source)
                else []
            ),
            *app.get(STARTUP, []),
        ]
        for what, other, where in side_apps(app):
            host, _, other_port = where.rpartition(":")
            sock = listen(host.strip("[]"), int(other_port))
            socks.append(sock)
            if what == "proxy" and settings.proxy_upstream is not None:
                from shadow.proxy import refuse_own_address

                refuse_own_address(settings.proxy_upstream, sock)  # ConfigError: exit 2
            beside.append((other, sock))
            shown = f"{host}:{sock.getsockname()[1]}"
            target = f" -> {settings.proxy_upstream}" if what == "proxy" else ""
            lines.append(f"{what} on http://{shown}{target}")
        code = run_server(app, socks[0], settings, beside, announce=lines)
    finally:
        for sock in socks:
            sock.close()  # idempotent; open still when start-up fails
    return code


# -- status -----------------------------------------------------------------------------------


async def _status(args: argparse.Namespace, console: Console) -> int:
    if args.db:
        doc = await _status_from_db(args.db)
    else:
        doc = await _http("GET", args.url, "/v1/agreement", token=_token())
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        console.print(agreement_table(doc))
    return 0


async def _status_from_db(path: str) -> dict[str, Any]:
    from shadow.errors import StoreInUseError
    from shadow.ladder import Ladder
    from shadow.policy import parse_policy
    from shadow.store import Store

    if not await asyncio.to_thread(os.path.exists, path):
        raise UsageError(f"no sidecar database at {path}")
    try:
        store = await Store(path).open()
    except StoreInUseError as exc:
        holder = f" (PID {exc.pid})" if exc.pid is not None else ""
        raise UsageError(
            f"{path} is in use by a running sidecar{holder}; use --url to ask it "
            f"(default {DEFAULT_URL})"
        ) from None
    async with store:
        text = await store.policy_text()
        if text is None:
            raise UsageError(f"{path} has no policy recorded; has a sidecar run on it?")
        policy = parse_policy(text, source=f"{path} (stored policy)")
        from shadow.app import utc_now

        ladder = Ladder(store, policy, utc_now)
        await ladder.load()
        return ladder.agreement()


# -- autonomy ---------------------------------------------------------------------------------


async def _http(
    method: str,
    base: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = base.rstrip("/") + path
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url, json=body, headers=headers) as resp,
        ):
            try:
                data = await resp.json(content_type=None)
            except (json.JSONDecodeError, aiohttp.ContentTypeError):
                data = {"error": (await resp.text())[:200]}
            if resp.status >= 400:
                raise UsageError(f"{method} {url}: HTTP {resp.status}: {data.get('error', data)}")
            if not isinstance(data, dict):
                raise UsageError(f"{method} {url}: unexpected answer {str(data)[:200]}")
            return data
    except aiohttp.ClientError as exc:
        raise UsageError(f"cannot reach the sidecar at {base}: {exc}") from None


def _proposal_text(p: dict[str, Any]) -> str:
    ev = p.get("evidence") or {}
    return (
        f"{p['id']} ({p['from_level']} → {p['to_level']}, agent {_fmt(p.get('agent_version'))}, "
        f"n={_fmt(ev.get('n'))}, lower={_fmt(ev.get('lower'))})"
    )


def _moved_text(name: str, out: dict[str, Any]) -> str:
    """What an operator's move did, in the level that is in effect now."""
    if not out["applied"]:
        return f"{name}: nothing changed ({out['reason']}); level {out['to']}"
    line = f"{name}: {out['move']} {out['from']} → {out['to']}"
    over = out.get("overridden")
    if over:
        line += (
            f" (set to {out.get('requested')}, then the ladder moved it: "
            f"{over['move']} to {over['to']}: {over['reason']})"
        )
    if any(step["move"] == "propose" for step in out.get("then") or []):
        line += "; the ladder proposes the next level now (`shadow autonomy list` shows it)"
    return line


async def _answer_proposal(
    args: argparse.Namespace, base: str, token: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Approve or reject: the body names the proposal the operator means (--proposal, or
    --to/--from). Without either, show what is pending and refuse: a retried command must
    never answer a proposal the operator has not seen."""
    if not args.proposal and not args.to:
        one = await _http("GET", base, f"/v1/autonomy/{args.task_type}", token=token)
        pending = one.get("proposal")
        if not pending:
            raise UsageError(f"{args.task_type} has no pending proposal")
        raise UsageError(
            f"name the proposal to {args.action}: pending is {_proposal_text(pending)}; "
            f"run again with --proposal {pending['id']} (or --to {pending['to_level']})"
        )
    if args.proposal:
        body["proposal_id"] = args.proposal
    if args.to:
        body["to"] = args.to
    if args.from_level:
        body["from"] = args.from_level
    if args.reason:
        body["reason"] = args.reason
    path = f"/v1/autonomy/{args.task_type}/{args.action}"
    return await _http("POST", base, path, body=body, token=token)


def _token() -> str | None:
    """The credential the commands send: ``SHADOW_TOKEN`` (a named token of a tokens file),
    else ``SHADOW_ADMIN_TOKEN``."""
    return os.environ.get("SHADOW_TOKEN") or os.environ.get("SHADOW_ADMIN_TOKEN")


async def _autonomy(args: argparse.Namespace, console: Console) -> int:
    token = _token()
    base = args.url
    if args.action == "list":
        doc = await _http("GET", base, "/v1/autonomy", token=token)
        table = Table(title="Autonomy" + (" (FROZEN)" if doc["frozen"] else ""))
        for col in ("task type", "level", "ceiling", "mode", "agent", "proposal"):
            table.add_column(col)
        for name, t in doc["task_types"].items():
            p = t.get("proposal")
            proposal = f"{p['from_level']} → {p['to_level']} {p['id']}" if p else "-"
            table.add_row(
                name, t["level"], t["ceiling"], t["mode"], _fmt(t["agent_version"]), proposal
            )
        console.print(table)
        return 0
    if args.action == "history":
        doc = await _http(
            "GET", base, f"/v1/autonomy/{args.task_type}/history?limit={args.limit}", token=token
        )
        table = Table(title=f"Audit log: {args.task_type}")
        for col in ("id", "at", "actor", "action", "from", "to", "reason", "n", "lower"):
            table.add_column(col)
        for e in doc["entries"]:
            ev = e.get("evidence") or {}
            table.add_row(
                str(e["id"]),
                e["at"][:19],
                e["actor"],
                e["action"],
                _fmt(e["from_level"]),
                _fmt(e["to_level"]),
                e["reason"],
                _fmt(ev.get("n")),
                _fmt(ev.get("lower")),
            )
        console.print(table)
        return 0
    if not token:
        raise UsageError(
            "set SHADOW_TOKEN (a token with the role this needs) or SHADOW_ADMIN_TOKEN for writes"
        )
    body: dict[str, Any] = {"actor": args.actor} if args.actor else {}
    if args.action == "set":
        body |= {"level": args.level, "reason": args.reason}
        out = await _http("PUT", base, f"/v1/autonomy/{args.task_type}", body=body, token=token)
        console.print(_moved_text(args.task_type, out))
    elif args.action in ("approve", "reject"):
        out = await _answer_proposal(args, base, token, body)
        console.print(_moved_text(args.task_type, out))
    elif args.action == "reconsider":
        body["reason"] = args.reason
        path = f"/v1/autonomy/{args.task_type}/reconsider"
        out = await _http("POST", base, path, body=body, token=token)
        console.print(_moved_text(args.task_type, out))
    else:
        body["reason"] = args.reason
        out = await _http("POST", base, f"/v1/{args.action}", body=body, token=token)
        console.print("frozen: every task type is at L0" if out["frozen"] else "unfrozen")
    return 0


async def _approvals(args: argparse.Namespace, console: Console) -> int:
    """``shadow approvals list|approve|reject`` against ``/v1/approvals`` (docs/gateway.md)."""
    token = _token()
    if not token:
        raise UsageError("set SHADOW_TOKEN (a token with the approver role) or SHADOW_ADMIN_TOKEN")
    if args.action == "list":
        doc = await _http("GET", args.url, f"/v1/approvals?status={args.status}", token=token)
        table = Table(title=f"Tool approvals ({args.status})")
        for col in ("id", "held at", "task type", "event", "tool", "status"):
            table.add_column(col, no_wrap=True)
        table.add_column("arguments (digest)", overflow="fold")
        for a in doc["approvals"]:
            digest = a.get("args_digest") or "-"
            table.add_row(
                a["id"], a["created_at"][:19], a["task_type"], a["event_id"], a["tool"],
                a["status"], f"{json.dumps(a['args'], sort_keys=True)}\n({digest[:19]})",
            )  # fmt: skip
        console.print(table)
        return 0
    if args.action == "reject" and not args.reason:
        raise UsageError("--reason is required to reject")
    body: dict[str, Any] = {"reason": args.reason} | ({"actor": args.actor} if args.actor else {})
    path = f"/v1/approvals/{args.approval_id}/{args.action}"
    out = await _http("POST", args.url, path, body=body, token=token)
    row = out["approval"]
    console.print(
        f"{row['id']}: {row['status']} ({row['tool']} {json.dumps(row['args'], sort_keys=True)} "
        f"for {row['event_id']}, {row.get('args_digest') or 'no digest'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
