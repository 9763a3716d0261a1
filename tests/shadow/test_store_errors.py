"""Store failures reach people as one line that says what to do (shadow/store/base.py's
``store_error``, at the one boundary where the store's thread hands a result back): a
damaged file, a file another process holds, a store a newer sidecar wrote, a read that
fails on an open store, a full disk. The CLI prints ``shadow: error: ...`` and never a
traceback; the API answers 503 with the same line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from shadow.errors import (
    StoreDamagedError,
    StoreError,
    StoreFullError,
    StoreInUseError,
    StoreTooNewError,
)
from shadow.model import WorkEvent
from shadow.schema import SCHEMA_VERSION
from shadow.store import Store
from tests.shadow.conftest import SidecarFactory

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
POLICY = """\
task_types:
  refund_request:
    compare:
      fields:
        action: {match: exact, critical: true}
"""
DAMAGED = "it is not a valid DuckDB database file or it is damaged"


def shadow_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m shadow.cli ARGV...`` as a subprocess (the real entry point)."""
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


def error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one ``shadow: error:`` line on stderr, exit 2, no traceback or driver error."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("shadow: error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0]), proc.stderr  # nothing after it
    for raw in ("IO Error", "_duckdb", "duckdb.", "Catalog Error"):
        assert raw not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def run_args(tmp_path: Path, db: Path) -> list[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    return [
        "run",
        "--config",
        str(policy),
        "--db",
        str(db),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--agent",
        "tests.shadow.crash_agent:agent",
    ]


def ev(i: int, size: int = 10) -> WorkEvent:
    return WorkEvent(f"e{i}", "refund_request", {"i": i, "text": os.urandom(size).hex()})


# -- a damaged file ------------------------------------------------------------------------------


@pytest.mark.slow  # two subprocesses
@pytest.mark.parametrize("kind", ["random bytes", "text"])
def test_a_damaged_file_is_one_line_from_status_and_run(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "shadow.duckdb"
    content = os.urandom(64 * 1024) if kind == "random bytes" else b"not a database\n" * 100
    db.write_bytes(content)
    status = shadow_cli("status", "--db", str(db))
    error_line(status, str(db), DAMAGED, "restore it from a backup or move it aside")
    run = shadow_cli(*run_args(tmp_path, db))
    error_line(run, str(db), DAMAGED, "restore it from a backup or move it aside")
    assert db.read_bytes() == content  # left as it was found


def _corrupt_after_headers(path: Path) -> None:
    """Overwrite every block after DuckDB's three header blocks (3 x 4 KiB) with random
    bytes: the header says 'DuckDB', the catalog's checksum does not match."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(3 * 4096)
        f.write(os.urandom(size - 3 * 4096))


async def test_a_corrupt_store_is_store_damaged_error(tmp_path: Path) -> None:
    db = tmp_path / "shadow.duckdb"
    async with Store(db) as store:
        await store.put_events([ev(i, 200) for i in range(2000)], source="t", now=T0)
    _corrupt_after_headers(db)
    with pytest.raises(StoreDamagedError) as err:
        await Store(db).open()
    message = str(err.value)
    assert message == (
        f"cannot open store {db}: {DAMAGED}; restore it from a backup or move it aside"
    )


@pytest.mark.slow  # a subprocess
def test_a_corrupt_store_is_one_line_from_status(tmp_path: Path) -> None:
    db = tmp_path / "shadow.duckdb"

    async def fill() -> None:
        async with Store(db) as store:
            await store.put_events([ev(i, 200) for i in range(2000)], source="t", now=T0)

    asyncio.run(fill())
    _corrupt_after_headers(db)
    error_line(shadow_cli("status", "--db", str(db)), str(db), DAMAGED)


# -- a store another process holds ---------------------------------------------------------------


@contextlib.contextmanager
def held(path: Path) -> Iterator[int]:
    """A second process holding ``path`` open as a Store; yields its PID."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from shadow.store import Store\n"
            "async def hold():\n"
            "    async with Store(sys.argv[1]):\n"
            "        print('open', flush=True)\n"
            "        sys.stdin.read()\n"
            "asyncio.run(hold())",
            str(path),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "open\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.stdout.close()
        assert holder.wait(timeout=60) == 0


@pytest.mark.slow  # three subprocesses
def test_a_held_store_is_one_line_naming_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "shadow.duckdb"
    with held(db) as pid:
        run = shadow_cli(*run_args(tmp_path, db))
        error_line(run, str(db), f"in use by process {pid}", "stop that process first")
        status = shadow_cli("status", "--db", str(db))
        error_line(status, str(db), f"PID {pid}", "--url")


# -- a store a newer sidecar wrote ----------------------------------------------------------------


def _newer(path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
        con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 3])
    finally:
        con.close()


async def test_a_newer_schema_is_refused_naming_the_version_needed(tmp_path: Path) -> None:
    db = tmp_path / "newer.duckdb"
    _newer(db)
    with pytest.raises(StoreTooNewError) as err:
        await Store(db).open()
    assert (err.value.found, err.value.supported) == (SCHEMA_VERSION + 3, SCHEMA_VERSION)
    assert f"schema version {SCHEMA_VERSION + 3} or later" in str(err.value)
    con = duckdb.connect(str(db))  # refused before anything was written or migrated
    try:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION + 3,)
        ]
    finally:
        con.close()


@pytest.mark.slow  # a subprocess
def test_a_newer_schema_is_one_line_from_status(tmp_path: Path) -> None:
    db = tmp_path / "newer.duckdb"
    _newer(db)
    error_line(
        shadow_cli("status", "--db", str(db)),
        str(db),
        f"schema version {SCHEMA_VERSION + 3} or later",
    )


# -- a read that fails on an open store -----------------------------------------------------------


async def test_a_failing_read_is_a_store_error_not_duckdbs(tmp_path: Path) -> None:
    """The agreement view renamed behind the store's back (a second connection of the same
    process shares DuckDB's database): evidence() raises StoreError, one line."""
    db = tmp_path / "shadow.duckdb"
    async with Store(db) as store:
        con = duckdb.connect(str(db))
        try:
            con.execute("ALTER VIEW agreement RENAME TO agreement_moved")
            with pytest.raises(StoreError) as err:
                await store.evidence()
            assert not isinstance(err.value, duckdb.Error)
            message = str(err.value)
            assert "\n" not in message
            assert message.startswith(f"store {db}: DuckDB failed: ")
            assert "restart the sidecar" in message
            con.execute("ALTER VIEW agreement_moved RENAME TO agreement")
            assert await store.evidence() == {}
        finally:
            con.close()


async def test_the_api_answers_503_with_the_line(sidecar: SidecarFactory) -> None:
    sc = await sidecar()
    con = duckdb.connect(sc.settings.db)
    try:
        con.execute("ALTER TABLE audit_log RENAME TO audit_log_moved")
        res = await sc.get("/v1/autonomy/refund/history", headers=sc.admin)
        assert res.status == 503, res.body
        message = res.body["error"]
        assert message.startswith(f"store {sc.settings.db}: DuckDB failed: "), message
        assert "\n" not in message
        con.execute("ALTER TABLE audit_log_moved RENAME TO audit_log")
        res = await sc.get("/v1/autonomy/refund/history", headers=sc.admin)
        assert res.status == 200, res.body
    finally:
        con.close()


# -- a full disk ---------------------------------------------------------------------------------


def _need_root(what: str) -> None:
    message = f"{what}; the suite runs it as root (CI does)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's form: ``2m``) mounted at ``where`` (made), unmounted
    after; skipped without root (a failure under CI)."""
    if os.geteuid() != 0:
        _need_root("mounting a small tmpfs needs root")
    where.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        _need_root(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted under tmp_path (unmounted after)."""
    with tmpfs(tmp_path / "small", "2m") as where:
        yield where


async def _fill(store: Store) -> None:
    for batch in range(1000):  # ~100 MB at most: far past the disk's 2 MiB
        await store.put_events([ev(batch * 100 + i, 500) for i in range(100)], source="t", now=T0)


async def test_a_full_disk_is_store_full_error(small_disk: Path) -> None:
    db = small_disk / "shadow.duckdb"
    store = await Store(db).open()
    try:
        with pytest.raises(StoreFullError) as err:
            await _fill(store)
        message = str(err.value)
        assert message == (
            f"store {db}: the disk holding {db} is full; free space on it (or move the "
            "store to a larger disk) and retry"
        )
    finally:
        with contextlib.suppress(StoreFullError):  # its checkpoint may not fit either
            await store.close()


async def test_a_store_in_use_error_is_still_a_store_error() -> None:
    """The hierarchy: every store failure is caught as StoreError."""
    for cls in (StoreDamagedError, StoreFullError, StoreInUseError, StoreTooNewError):
        assert issubclass(cls, StoreError)
