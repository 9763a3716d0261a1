"""``shadow token add NAME --role R [--role R2] [--task-type T] --file F``: a new named
credential in a tokens file (:mod:`shadow.roles`). The secret is printed once, on stdout,
and kept nowhere: the file holds its sha256 digest. A running sidecar reads the new file
within a second (no restart)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shadow.roles import ROLES, add_token

__all__ = ["add_token_command"]


def add_token_command(sub: Any) -> None:
    """Add ``shadow token add`` to the ``shadow`` command's subparsers (run as its plugins
    are: ``plugin(args, console)``)."""
    token = sub.add_parser("token", help="named credentials and their roles (tokens file)")
    actions = token.add_subparsers(dest="action", required=True)
    add = actions.add_parser(
        "add", help="add a credential; prints its secret once (the file keeps its sha256)"
    )
    add.add_argument("name", help="the credential's name: the audit actor of what it does")
    add.add_argument(
        "--role",
        action="append",
        required=True,
        choices=ROLES,
        help="a role it carries (repeat for several)",
    )
    add.add_argument(
        "--task-type",
        action="append",
        default=[],
        dest="task_types",
        help="act only on this task type (repeat for several; default: every one)",
    )
    add.add_argument(
        "--file", required=True, type=Path, help="the tokens file (SHADOW_TOKENS_FILE)"
    )
    add.set_defaults(plugin=_add)


def _add(args: argparse.Namespace, console: object) -> int:
    secret = add_token(args.file, args.name, args.role, args.task_types)
    print(
        f"added {args.name} ({', '.join(dict.fromkeys(args.role))}) to {args.file}; its "
        "secret, shown only now:",
        file=sys.stderr,
    )
    print(secret)
    return 0
