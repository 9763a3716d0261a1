"""The audit log over HTTP: ``GET /v1/audit`` (pages with the hash chain),
``GET /v1/audit/verify`` (the server's own walk) and ``shadow audit verify --url``, which
walks the pages itself, against the real app (the ``sidecar`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from aiohttp import web

from shadow.audit_chain import ChainEntry, verify_chain
from shadow.audit_verify import verify_api
from shadow.cli import main
from shadow.keys import LADDER
from shadow.model import AuditEntry
from tests.shadow.conftest import Sidecar, SidecarFactory

ROOT = Path(__file__).resolve().parents[2]


async def busy(sc: Sidecar) -> int:
    """Entries of several kinds through the API and the gateway's own writer: their count."""
    admin = sc.admin
    assert (
        await sc.put("/v1/autonomy/refund", json_body={"level": "L1"}, headers=admin)
    ).status == 200
    assert (
        await sc.post("/v1/freeze", json_body={"reason": "incident"}, headers=admin)
    ).status == 200
    assert (await sc.post("/v1/unfreeze", json_body={}, headers=admin)).status == 200
    await sc.app[LADDER].store.append_audit(
        [
            AuditEntry(
                at=datetime(2026, 5, 1, 12, 0, 0, n, tzinfo=UTC),
                task_type="refund",
                actor="gateway",
                action="tool_refused",
                from_level=None,
                to_level=None,
                reason=f"call {n}: \x00 \ud800",
                evidence={"tool": "wipe", "n": n},
            )
            for n in range(5)
        ]
    )
    return await sc.app[LADDER].store.count("audit_log")


async def pages(sc: Sidecar, limit: int) -> list[dict[str, Any]]:
    """Every entry of ``GET /v1/audit``, following ``next``."""
    out: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        res = await sc.get(f"/v1/audit?after={after}&limit={limit}")
        assert res.status == 200, res.body
        assert len(res.body["entries"]) <= limit
        out += res.body["entries"]
        after = res.body["next"]
    return out


async def cli(*argv: str) -> tuple[int, str, str]:
    """``shadow ARGV`` in process, on a thread (it runs its own event loop)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(main, list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_the_log_pages_with_its_hashes_and_both_walks_agree(sidecar: SidecarFactory) -> None:
    sc = await sidecar()
    total = await busy(sc)
    assert total >= 8

    entries = await pages(sc, limit=3)
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert len(entries) == total
    stored = await sc.app[LADDER].store.audit_entries(limit=10_000)
    assert [ChainEntry.from_json(e) for e in entries] == stored
    assert {e["action"] for e in entries} >= {"manual_set", "freeze", "unfreeze", "tool_refused"}
    assert entries[0]["recorded_at"].endswith("+00:00")

    mine = verify_chain(ChainEntry.from_json(e) for e in entries)
    assert mine.ok
    res = await sc.get("/v1/audit/verify")
    assert res.status == 200
    assert res.body == {
        "ok": True,
        "entries": total,
        "head": entries[-1]["entry_hash"],
        "first_bad": None,
    }
    assert await verify_api(sc.url, page=2) == mine

    code, out, err = await cli("audit", "verify", "--url", sc.url)
    assert (code, err) == (0, "")
    assert out == f"audit chain ok: {total} entries, head {mine.head}\n"


async def test_one_full_page_and_then_an_empty_last_page(sidecar: SidecarFactory) -> None:
    sc = await sidecar()
    total = await busy(sc)
    first = await sc.get(f"/v1/audit?limit={total}")
    assert len(first.body["entries"]) == total
    assert first.body["next"] == first.body["entries"][-1]["id"]
    last = await sc.get(f"/v1/audit?after={first.body['next']}&limit={total}")
    assert last.body == {"entries": [], "next": None}
    assert (await sc.get("/v1/audit")).body["next"] is None  # the default page holds them all


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("after=-1", "after must be between 0 and 9223372036854775807"),
        ("after=x", "after must be a whole number"),
        ("after=1.5", "after must be a whole number"),
        ("limit=0", "limit must be between 1 and 10000"),
        ("limit=10001", "limit must be between 1 and 10000"),
        ("limit=", "limit must be a whole number"),
    ],
)
async def test_bad_paging_parameters_are_refused(
    sidecar: SidecarFactory, query: str, message: str
) -> None:
    sc = await sidecar()
    res = await sc.get(f"/v1/audit?{query}")
    assert (res.status, res.body["error"]) == (400, message)


async def test_an_edit_behind_the_running_sidecar_is_named_by_both_walks(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar()
    await busy(sc)
    target = (await sc.app[LADDER].store.audit_entries(limit=10_000))[2].id
    # this process shares the sidecar's DuckDB database: the edit is seen at once
    con = duckdb.connect(sc.settings.db)
    try:
        con.execute("UPDATE audit_log SET reason = 'nothing happened' WHERE id = ?", [target])
    finally:
        con.close()

    res = await sc.get("/v1/audit/verify")
    assert res.status == 200
    assert res.body["ok"] is False
    assert res.body["first_bad"]["id"] == target
    assert res.body["first_bad"]["kind"] == "edited"
    code, out, _ = await cli("audit", "verify", "--url", sc.url)
    assert code == 1
    assert out == f"audit chain broken at entry {target}: {res.body['first_bad']['why']}\n"


# -- a server that lies ------------------------------------------------------------------------

Handler = Callable[[web.Request], Any]


@pytest.fixture
async def fake_sidecar() -> AsyncIterator[Callable[[Handler, Handler], Any]]:
    """``await fake_sidecar(pages, verdict)``: a loopback server answering ``GET /v1/audit``
    and ``GET /v1/audit/verify`` with the given handlers; its URL."""
    runners: list[web.AppRunner] = []

    async def start(audit: Handler, verify: Handler) -> str:
        app = web.Application()
        app.add_routes([web.get("/v1/audit", audit), web.get("/v1/audit/verify", verify)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_the_url_verifier_checks_the_entries_not_the_servers_verdict(
    sidecar: SidecarFactory, fake_sidecar: Callable[[Handler, Handler], Any]
) -> None:
    """A server that serves an edited log and claims it is intact is caught client-side."""
    sc = await sidecar()
    await busy(sc)
    entries = await pages(sc, limit=1000)
    entries[3] = {**entries[3], "reason": "rewritten"}

    async def audit(request: web.Request) -> web.Response:
        after, limit = int(request.query["after"]), int(request.query["limit"])
        page = [e for e in entries if e["id"] > after][:limit]
        return web.json_response(
            {"entries": page, "next": page[-1]["id"] if len(page) == limit else None}
        )

    async def verify(request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "entries": len(entries), "head": "0" * 64, "first_bad": None}
        )

    url = await fake_sidecar(audit, verify)
    code, out, _ = await cli("audit", "verify", "--url", url)
    assert code == 1
    assert out.startswith(f"audit chain broken at entry {entries[3]['id']}: its contents do not")


async def test_the_url_verifier_sends_the_commands_credential(
    fake_sidecar: Callable[[Handler, Handler], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    async def audit(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"entries": [], "next": None})

    url = await fake_sidecar(audit, audit)
    for key in ("SHADOW_TOKEN", "SHADOW_ADMIN_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert (await cli("audit", "verify", "--url", url))[0] == 0
    monkeypatch.setenv("SHADOW_ADMIN_TOKEN", "adm")
    assert (await cli("audit", "verify", "--url", url))[0] == 0
    monkeypatch.setenv("SHADOW_TOKEN", "viewer-1")
    code, out, _ = await cli("audit", "verify", "--url", url)
    assert (code, out) == (0, f"audit chain ok: 0 entries, head {'0' * 64}\n")
    assert seen == [None, "Bearer adm", "Bearer viewer-1"]


async def test_an_answer_that_is_not_a_page_is_one_line_and_exit_2(
    fake_sidecar: Callable[[Handler, Handler], Any],
) -> None:
    async def audit(request: web.Request) -> web.Response:
        return web.json_response({"entries": [{"id": 1}], "next": None})

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "no"}, status=401)

    url = await fake_sidecar(audit, refuse)
    code, out, err = await cli("audit", "verify", "--url", url)
    assert (code, out) == (2, "")
    assert err.startswith(f"shadow: error: GET {url}/v1/audit?after=0&limit=1000: not a page")
    assert err.count("\n") == 1

    url = await fake_sidecar(refuse, refuse)
    code, _, err = await cli("audit", "verify", "--url", url)
    assert code == 2
    assert err == f"shadow: error: GET {url}/v1/audit?after=0&limit=1000: HTTP 401: no\n"


# -- the real entry point ----------------------------------------------------------------------


def shadow_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    return subprocess.run(
        [sys.executable, "-m", "shadow.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow  # subprocesses; the in-process tests above cover the logic
async def test_the_command_exits_0_1_and_2(sidecar: SidecarFactory) -> None:
    sc = await sidecar()
    await busy(sc)
    ok = await asyncio.to_thread(shadow_cli, "audit", "verify", "--url", sc.url)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("audit chain ok: ")

    # the running sidecar holds its file: --db says so in one line and exits 2
    held = await asyncio.to_thread(shadow_cli, "audit", "verify", "--db", sc.settings.db)
    assert (held.returncode, held.stdout) == (2, "")
    assert held.stderr == (
        f"shadow: error: {sc.settings.db} is in use by a running sidecar (PID {os.getpid()}); "
        "verify through it with --url\n"
    )

    con = duckdb.connect(sc.settings.db)
    try:
        con.execute("DELETE FROM audit_log WHERE id = (SELECT min(id) + 1 FROM audit_log)")
    finally:
        con.close()
    broken = await asyncio.to_thread(shadow_cli, "audit", "verify", "--url", sc.url)
    assert (broken.returncode, broken.stderr) == (1, "")
    assert broken.stdout.startswith("audit chain broken at entry ")
    assert broken.stdout.count("\n") == 1

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = await asyncio.to_thread(
        shadow_cli, "audit", "verify", "--url", f"http://127.0.0.1:{port}"
    )
    assert down.returncode == 2
    assert down.stderr.startswith("shadow: error: cannot reach the sidecar at ")
    assert down.stderr.count("\n") == 1
