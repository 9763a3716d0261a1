"""What the gateway does with one tool call: a pure function of the call's class, the
session and the ladder's answer at that moment (no I/O, no clock).

=========  ==========================  ==============================================
session    level                       a write
=========  ==========================  ==============================================
shadow     any                         captured as the case's action, never forwarded
live       frozen                      refused at once
live       L0                          refused (shadow only)
live       L1                          refused (suggestions only)
live       L2                          held for a human's approval
live       L3                          forwarded; held when the item is in the audit sample
live       L4                          forwarded
=========  ==========================  ==============================================

Reads are forwarded in every row. Tools outside the task type's allowlist never reach this
function: they are refused before anything is classified.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shadow.model import Level
from shadow.tools_policy import ToolClass

__all__ = ["Action", "Decision", "decide", "write_digest"]

Action = Literal["forward", "capture", "refuse", "hold"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""


def decide(
    *,
    task_type: str,
    tool_class: ToolClass,
    shadow: bool,
    level: Level,
    frozen: bool,
    audit: bool,
) -> Decision:
    """The table in the module docstring."""
    if tool_class == "read":
        return Decision("forward")
    if shadow:
        return Decision("capture", "shadow session: writes are recorded, never forwarded")
    if frozen:
        return Decision("refuse", "the sidecar is frozen: every tool write is refused")
    if level == Level.L0:
        return Decision("refuse", f"{task_type} is at L0: shadow only, no writes")
    if level == Level.L1:
        return Decision("refuse", f"{task_type} is at L1: suggestions only")
    if level == Level.L2:
        return Decision("hold", f"{task_type} is at L2: each write waits for a human's approval")
    if level == Level.L3 and audit:
        return Decision("hold", f"{task_type} is at L3 and this item is in the audit sample")
    return Decision("forward")


def write_digest(tool: str, args: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the tool and its arguments in canonical JSON (sorted keys, no
    spaces, UTF-8): two calls are the same write exactly when their digests are equal (and
    their repeat keys, see docs/gateway.md)."""
    text = json.dumps(
        {"tool": tool, "args": args}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
