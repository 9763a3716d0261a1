"""shadow/server.py: every answer of a real sidecar is JSON, including what aiohttp refuses
before any handler runs; slow and vanishing clients are cut off and logged as one line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest

from tests.conftest import wait_for
from tests.shadow.conftest import ADMIN_TOKEN, RawHttpFactory, SidecarFactory


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None or r.exc_text]


async def test_routing_and_body_errors_are_json(sidecar: SidecarFactory) -> None:
    sc = await sidecar(max_body_bytes=2048)
    res = await sc.get("/no/such/path")
    assert (res.status, res.content_type) == (404, "application/json")
    assert "GET /no/such/path" in res.body["error"]

    res = await sc.request("DELETE", "/v1/events")
    assert (res.status, res.content_type) == (405, "application/json")
    assert "use POST" in res.body["error"]

    # An admin write reads its body with aiohttp's limit, not ingest's: still JSON.
    big = json.dumps({"level": "L1", "reason": "x" * 5000})
    res = await sc.put("/v1/autonomy/refund", data=big, headers=sc.admin)
    assert (res.status, res.content_type) == (413, "application/json")
    assert "2048" in res.body["error"]


async def test_the_allow_header_survives_the_json_405(
    sidecar: SidecarFactory, raw_http: RawHttpFactory
) -> None:
    sc = await sidecar()
    conn = await raw_http(sc.url)
    await conn.send(b"DELETE /v1/events HTTP/1.1\r\nHost: sidecar\r\n\r\n")
    res = await conn.response()
    assert res.status == 405
    assert res.headers["allow"] == "POST"
    assert "error" in res.json()


@pytest.mark.parametrize(
    "request_head",
    [
        b"NOT A REQUEST LINE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nno colon in this header\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
        b"POST /v1/events HTTP/1.1\r\nHost: sidecar\r\nContent-Length: -5\r\n\r\n",
    ],
    ids=["request-line", "header-without-colon", "header-too-long", "negative-length"],
)
async def test_what_the_http_parser_refuses_is_a_json_400_and_one_log_line(
    sidecar: SidecarFactory,
    raw_http: RawHttpFactory,
    caplog: pytest.LogCaptureFixture,
    request_head: bytes,
) -> None:
    caplog.set_level(logging.INFO)
    sc = await sidecar()
    conn = await raw_http(sc.url)
    await conn.send(request_head)
    res = await conn.response()
    assert res.status == 400
    assert res.json()["error"].startswith("malformed request: ")
    assert await conn.closed_by_server()
    refused = [r for r in caplog.records if "refused a malformed request" in r.getMessage()]
    assert len(refused) == 1
    assert "\n" not in refused[0].getMessage()
    assert tracebacks(caplog) == []
    assert (await sc.get("/healthz")).status == 200


async def test_an_unknown_expectation_is_a_json_417(
    sidecar: SidecarFactory, raw_http: RawHttpFactory
) -> None:
    sc = await sidecar()
    conn = await raw_http(sc.url)
    await conn.send(
        b"PUT /v1/autonomy/refund HTTP/1.1\r\nHost: sidecar\r\nExpect: 200-ok\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    res = await conn.response()
    assert res.status == 417
    assert "200-ok" in res.json()["error"]


async def test_a_declared_body_over_the_limit_is_refused_before_100_continue_on_any_route(
    sidecar: SidecarFactory, raw_http: RawHttpFactory
) -> None:
    sc = await sidecar(max_body_bytes=2048)
    conn = await raw_http(sc.url)
    await conn.send(
        b"PUT /v1/autonomy/refund HTTP/1.1\r\nHost: sidecar\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 3000\r\n"
        + b"Expect: 100-continue\r\n\r\n"
    )
    res = await conn.response()
    assert res.status == 413
    assert "larger than 2048 bytes" in res.json()["error"]


async def test_a_client_that_sends_its_headers_slowly_is_cut_off(
    sidecar: SidecarFactory, raw_http: RawHttpFactory
) -> None:
    sc = await sidecar(header_timeout=1.0)
    conn = await raw_http(sc.url)

    async def dribble() -> None:
        await conn.send(b"POST /v1/events HTTP/1.1\r\nHost: sidecar\r\n")
        for i in range(3000):  # five minutes, unless the server cuts it off
            await conn.send(f"X-Slow-{i}: a\r\n".encode())
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(dribble())
    try:
        assert await conn.closed_by_server(within=60.0)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    assert (await sc.get("/healthz")).status == 200


async def test_a_client_that_disconnects_mid_body_is_one_log_line(
    sidecar: SidecarFactory, raw_http: RawHttpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sc = await sidecar()
    conn = await raw_http(sc.url)
    await conn.send(
        b"POST /v1/events HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/x-ndjson\r\n"
        b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    assert (await conn.response()).status == 100  # the handler is about to read the body
    await conn.send(b'{"event_id": "half')
    await conn.close()

    def disconnects() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if "disconnected during POST /v1/events" in r.getMessage()
        ]

    async def logged() -> bool:
        return bool(disconnects())

    await wait_for(logged, "the disconnect in the log")
    assert (await sc.get("/healthz")).status == 200
    [line] = disconnects()
    assert line.levelno == logging.WARNING
    assert "\n" not in line.getMessage()
    assert tracebacks(caplog) == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await sc.pipeline.store.count("events") == 0
