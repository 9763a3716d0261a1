"""``shadow agent serve MODULE:CALLABLE [--port P] [--host H] [--agent-version V]
[--deadline S] [--price IN,OUT] [--log-format text|json]``: serve a :mod:`shadow.kit`
handler (``async def handler(case)``) as an agent over HTTP, following the agent contract
(docs/integrations/README.md). Point the sidecar's ``--agent`` at the printed URL.

``MODULE`` is imported as ``python -m`` would from the current directory (it is put first on
``sys.path``). The version its answers carry is ``--agent-version``, else the module's
``AGENT_VERSION``; there is no default, since evidence is kept per agent version. The first
line on stdout is ``shadow agent: serving MODULE:CALLABLE (version V) on http://HOST:PORT``
(``--port 0`` picks a free port); log lines (each failed case with its reason) go to stderr.
SIGINT or SIGTERM stops it (exit 0). A mistake (a spec that does not load, a handler that is
not an async function, no version, a port that cannot be bound) is one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from types import ModuleType
from typing import Any

from shadow.console import UsageError
from shadow.kit import DEFAULT_DEADLINE, Handler, Price, serve
from shadow.logs import logging_to_stderr

__all__ = ["add_serve_command", "load_handler"]


def add_serve_command(agent_sub: Any) -> None:
    """Add ``serve`` to the ``shadow agent`` group's subparsers; it runs as the command's
    plugins do (``plugin(args, console)``)."""
    serve_ = agent_sub.add_parser(
        "serve", help="serve a shadow.kit handler (async def handler(case)) as an HTTP agent"
    )
    serve_.add_argument("handler", metavar="MODULE:CALLABLE", help="e.g. refund_agent:decide")
    serve_.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    serve_.add_argument("--port", type=int, default=9000, help="listen port (9000; 0: any)")
    serve_.add_argument(
        "--agent-version",
        help="the version its answers carry (default: the module's AGENT_VERSION)",
    )
    serve_.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE,
        help=f"seconds a case may take before it is answered as an error ({DEFAULT_DEADLINE}; "
        "keep it below the sidecar's agent timeout)",
    )
    serve_.add_argument(
        "--price",
        help="IN,OUT: USD per million input and output tokens, for runs that report no cost",
    )
    serve_.add_argument("--log-format", choices=("text", "json"), default="text")
    serve_.set_defaults(plugin=_serve)


def load_handler(spec: str) -> tuple[Handler, ModuleType]:
    """The handler named ``module:callable`` (dotted attributes allowed) and its module;
    :class:`UsageError` saying what is wrong otherwise."""
    module_name, colon, attr = spec.partition(":")
    if (
        not colon
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in attr.split("."))
    ):
        raise UsageError(f"{spec!r} is not MODULE:CALLABLE, e.g. refund_agent:decide")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(
                f"module {module_name!r} not found (looked in {here} and the installed packages)"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not (
        inspect.iscoroutinefunction(target)
        or (callable(target) and inspect.iscoroutinefunction(type(target).__call__))
    ):
        raise UsageError(f"{spec} is not an async function: async def {attr}(case) -> decision")
    handler: Handler = target
    return handler, module


def _version(args: argparse.Namespace, module: ModuleType) -> str:
    version = args.agent_version or getattr(module, "AGENT_VERSION", None)
    if not isinstance(version, str) or not version.strip():
        raise UsageError(
            "name the agent's version: --agent-version V (e.g. refund-agent@7), or "
            "AGENT_VERSION in the module"
        )
    return version


def _price(text: str | None) -> Price | None:
    if text is None:
        return None
    try:
        given, taken = (float(part) for part in text.split(","))
        return Price(input=given, output=taken)
    except ValueError:
        raise UsageError(
            f"--price {text!r}: give IN,OUT, USD per million input and output tokens, e.g. 0.25,2.0"
        ) from None


def _serve(args: argparse.Namespace, console: object) -> int:
    if not (args.deadline > 0 and args.deadline < float("inf")):
        raise UsageError(f"--deadline must be a positive number of seconds, got {args.deadline}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    price = _price(args.price)
    handler, module = load_handler(args.handler)
    version = _version(args, module)

    def ready(url: str) -> None:
        print(f"shadow agent: serving {args.handler} (version {version}) on {url}", flush=True)

    with logging_to_stderr("info", args.log_format):
        try:
            serve(
                handler,
                version=version,
                host=args.host,
                port=args.port,
                price=price,
                deadline=args.deadline,
                ready=ready,
            )
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {why}") from None
    return 0
