"""Shared fixtures: factories that clean up what they made."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socketserver
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shadow.config import DEFAULT_PORT
from shadow.store import Store


def require_tool(name: str, *, hint: str = "make test installs it (.ci/system-tools)") -> str:
    """The path of an external tool a test needs. Missing: skip locally, fail under CI=true
    (CI must never pass by skipping what it was meant to run)."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"required tool {name!r} not found on PATH; {hint}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


# Fixtures that start a real Kafka broker process (tests/shadow/sources/conftest.py): every
# test using one is an integration test, marked ``slow`` here so that none is forgotten.
BROKER_FIXTURES = frozenset({"broker_factory"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``make test-fast`` runs ``-m "not slow"``: mark the tests that start a broker."""
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class _HangUp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        """Accept and close at once: a test that talks to the default port by mistake fails
        quickly instead of hanging or reading a stranger's answers."""


class _Listener(socketserver.TCPServer):
    allow_reuse_address = True  # a closed socket in TIME_WAIT must not leave the port free


@pytest.fixture(scope="session", autouse=True)
def default_port_in_use() -> Iterator[None]:
    """Keep 127.0.0.1:DEFAULT_PORT (8750) busy for the whole session, as a developer's own
    sidecar (or the README walkthrough) would: no test may depend on the default port being
    free, and the suite proves it on every run. Already taken by someone else is just as good."""
    try:
        server = _Listener(("127.0.0.1", DEFAULT_PORT), _HangUp)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        yield
        return
    thread = threading.Thread(target=server.serve_forever, name="default-port", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class FakeClock:
    """A settable clock (time is injected everywhere; tests move it by hand)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture
async def store_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """``await store_factory()`` opens a real DuckDB file under tmp_path; all are closed after."""
    opened: list[Store] = []

    async def make(name: str = "shadow.duckdb") -> Store:
        store = await Store(tmp_path / name).open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, *, tries: int = 1200, every: float = 0.05
) -> None:
    """Poll ``check`` until true; fail naming ``what`` (no wall-clock assertion: the bound
    only keeps a hung test from hanging)."""
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def cells_holding(db: str | Path, needle: str) -> tuple[int, list[str]]:
    """Scan every cell of every table of a store's DuckDB file (closed by its owner first)
    for ``needle``: the number of rows scanned, and each hit as ``table.column: value``."""
    import duckdb

    rows = 0
    hits: list[str] = []
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [
            str(r[0])
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' ORDER BY table_name"
            ).fetchall()
        ]
        for table in tables:
            cursor = con.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description or ()]
            for row in cursor.fetchall():
                rows += 1
                for column, cell in zip(columns, row, strict=True):
                    if needle in str(cell):
                        hits.append(f"{table}.{column}: {cell}")
    return rows, hits
