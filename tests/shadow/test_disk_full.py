"""A full disk under a running sidecar: ingest refuses without acknowledging, ``/readyz`` is
not ready, the log says so once (no traceback per request), every acknowledged event is in
the store afterwards, and the sidecar serves again once there is room. A real sidecar
(in-process, real HTTP) whose DuckDB file lives on a small tmpfs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shadow.conftest import SidecarFactory
from tests.shadow.test_store_errors import tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted under tmp_path (unmounted after): room for the store to
    checkpoint once the test's filler is gone."""
    with tmpfs(tmp_path / "disk", "16m") as where:
        yield where


async def test_a_full_disk_refuses_ingest_says_so_once_and_recovers(
    disk: Path, sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sc = await sidecar(db=str(disk / "shadow.duckdb"))
    assert (await sc.get("/readyz")).status == 200
    filler = disk / "filler"
    with filler.open("wb") as out:  # leave the store a little room
        free = 0
        try:
            while True:
                out.write(b"x" * 65_536)
                free += 1
        except OSError:
            pass
    filler.write_bytes(filler.read_bytes()[: -512 * 1024])  # give 512 KiB back
    caplog.set_level(logging.WARNING)
    caplog.clear()
    accepted: list[str] = []
    refused = 0
    for batch in range(200):
        body = "\n".join(
            f'{{"event_id": "e-{batch}-{i}", "task_type": "refund", '
            f'"payload": {{"note": "{"n" * 2000}"}}}}'
            for i in range(20)
        )
        res = await sc.post(
            "/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
        )
        if res.status == 202:
            accepted += [f"e-{batch}-{i}" for i in range(20)]
            continue
        assert res.status == 503, res.body
        refused += 1
        if refused >= 5:
            break
    assert refused == 5, "the disk never filled"
    ready = await sc.get("/readyz")
    assert ready.status == 503
    assert "store failing" in ready.body["error"]
    assert "full" in ready.body["error"]
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) <= 1, [r.getMessage() for r in tracebacks]
    failing = [r for r in caplog.records if "store failing" in r.getMessage()]
    assert len(failing) == 1  # one line for the state change, not one per refused request

    filler.unlink()  # room again
    res = await sc.post(
        "/v1/events", json_body={"event_id": "after", "task_type": "refund", "payload": {}}
    )
    assert res.status == 202, res.body
    assert (await sc.get("/readyz")).status == 200
    stored = await sc.pipeline.store.count("events")
    assert stored == len(accepted) + 1  # every acknowledged event, and nothing else
