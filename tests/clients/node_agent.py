"""The TypeScript SDK agent (tests/clients/ts/agent.mjs) as a Node process on a free loopback
port, for the gateway's client tests.

Its packages are installed by ``make tools`` (``npm ci`` in tests/clients/ts, from the
committed package-lock.json; node_modules is not committed). Missing Node.js or packages
skip the test locally and fail it under ``CI=true``, as :func:`tests.conftest.require_tool`
does for every external tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from tests.conftest import require_tool

__all__ = ["TS_DIR", "NodeAgent", "require_node_agent"]

TS_DIR = Path(__file__).resolve().parent / "ts"
_SDK = TS_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
_HINT = "make tools installs Node.js (apt) and the agent's packages (npm ci in tests/clients/ts)"


def require_node_agent() -> str:
    """The ``node`` binary, once the agent's packages are installed (else skip, or fail
    under CI)."""
    node = require_tool("node", hint=_HINT)
    if not _SDK.exists():
        message = f"{_SDK.relative_to(TS_DIR.parent.parent.parent)} is missing; {_HINT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return node


class NodeAgent:
    """The running agent: ``url`` to give the sidecar, and ``records``, one per request it
    answered (``{"event_id", "observed": {...}}`` or ``{"event_id", "error": "..."}``)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.url = ""
        self.records: list[dict[str, Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        # stderr is inherited: pytest shows what Node printed there with a failure.
        self._proc = await asyncio.create_subprocess_exec(
            self.node, str(TS_DIR / "agent.mjs"), cwd=TS_DIR, stdout=asyncio.subprocess.PIPE
        )
        assert self._proc.stdout is not None
        try:
            async with asyncio.timeout(30):  # a bound against hangs, not a timing
                first = await self._proc.stdout.readline()
            self.url = str(json.loads(first)["url"])
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read(self._proc.stdout))
        return self

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            self.records.append(json.loads(line))

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Idempotent: stops the process (SIGTERM, then SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
