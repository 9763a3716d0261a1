"""The TypeScript recipe (docs/integrations/refund_agent.mjs) run as written by Node.js with
the official TypeScript MCP SDK (the copy ``make tools`` installs in tests/clients/ts), as the
agent of a real sidecar: one case scores exactly, its one write captured through the case's
tools URL, nothing written upstream; a request that is not the contract's is a one-line
400."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.clients.backoffice import typed_backoffice, typed_policy
from tests.clients.node_agent import TS_DIR, require_node_agent
from tests.shadow.conftest import SidecarFactory
from tests.shadow.gateway.conftest import UpstreamFactory
from tests.shadow.kit.conftest import INTEGRATIONS, SLOW_OK, assert_scores_exactly, refund_case

pytestmark = pytest.mark.slow

RECIPE = INTEGRATIONS / "refund_agent.mjs"


@contextlib.asynccontextmanager
async def recipe(node: str, tmp: Path) -> AsyncIterator[str]:
    """The recipe served by Node on a free port (``PORT=0``) from a copy next to a link to
    the SDK's packages (ESM resolves packages from the file's directory); its URL."""
    shutil.copy(RECIPE, tmp / RECIPE.name)
    (tmp / "node_modules").symlink_to(TS_DIR / "node_modules", target_is_directory=True)
    proc = await asyncio.create_subprocess_exec(
        node,
        str(tmp / RECIPE.name),
        cwd=tmp,
        env={"PATH": "/usr/bin:/bin", "PORT": "0"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):  # a bound against hangs, not a timing
            first = (await proc.stdout.readline()).decode().strip()
        assert first.startswith("listening on http://"), first
        yield first.removeprefix("listening on ") + "/decide"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_the_typescript_recipe_scores_a_typed_write_exactly(
    sidecar: SidecarFactory, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    node = require_node_agent()
    up = await upstream(typed_backoffice())
    async with recipe(node, tmp_path) as url:
        sc = await sidecar(policy=typed_policy(up.url), agent=url, **SLOW_OK)
        await refund_case(sc)
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=b"{not json") as resp:
                assert resp.status == 400
                assert (await resp.text()).startswith("request body is not JSON: SyntaxError")
            async with session.post(url, json={"event_id": "x"}) as resp:
                assert (resp.status, await resp.text()) == (
                    400,
                    "invalid request: task_type: required, a non-empty string; payload: "
                    "required, a JSON object",
                )

    await assert_scores_exactly(sc, up)
