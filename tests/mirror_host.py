"""The host system of the mirroring tests and bench: a small back office with its own API
(``POST /refunds``, ``PUT /refunds/{id}/decision``, ``GET /refunds/{id}``, and
``POST /upload`` echoing the size of a body of any size), knowing nothing of the sidecar.
It records the requests it served. Run as ``python -m tests.mirror_host PORT`` for a
process of its own (the bench)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["HOST_LOG", "HostLog", "host_app"]


@dataclass(eq=False)
class HostLog:
    requests: list[tuple[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


HOST_LOG = web.AppKey("host_log", HostLog)


async def _refund(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[HOST_LOG].requests.append((request.method, request.path))
    request.app[HOST_LOG].headers.append(dict(request.headers))
    return web.json_response({"created": True, "bytes": len(body)}, status=201)


async def _decision(request: web.Request) -> web.Response:
    await request.read()
    request.app[HOST_LOG].requests.append((request.method, request.path))
    return web.json_response({"id": request.match_info["id"], "decided": True})


async def _show(request: web.Request) -> web.Response:
    request.app[HOST_LOG].requests.append((request.method, request.path))
    return web.json_response({"id": request.match_info["id"]}, headers={"X-Host": "yes"})


async def _upload(request: web.Request) -> web.StreamResponse:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    request.app[HOST_LOG].requests.append((request.method, request.path))
    return web.json_response({"bytes": size})


async def _download(request: web.Request) -> web.StreamResponse:
    """``n`` chunks of 64 KiB, streamed without a Content-Length."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    for i in range(int(request.query.get("n", "16"))):
        await resp.write(bytes([i % 256]) * 65536)
    await resp.write_eof()
    return resp


def host_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[HOST_LOG] = HostLog()
    app.router.add_post("/refunds", _refund)
    app.router.add_put("/refunds/{id}/decision", _decision)
    app.router.add_get("/refunds/{id}", _show)
    app.router.add_post("/upload", _upload)
    app.router.add_get("/download", _download)
    return app


if __name__ == "__main__":
    web.run_app(host_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


# -- the scenario's traffic -------------------------------------------------------------------

POLICY = """
task_types:
  refund_request:
    redact: [payload.customer.email]
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
mirror:
  - match: {method: POST, path: "/refunds"}
    kind: event
    task_type: refund_request
    event_id: body.refund_id
    payload: body
    segment: header.X-Region
  - match: {method: PUT, path: "/refunds/{id}/decision"}
    kind: outcome
    event_id: path.id
    decision: body.decision
    decided_by: header.X-User
"""
"""The host's API as mirror rules (docs/mirroring.md's example)."""

HostRequest = tuple[str, str, dict[str, object], dict[str, str]]


def traffic(ids: list[str], *, seed: int, repeat: float = 0.3) -> list[HostRequest]:
    """For each id a ``POST /refunds`` and a decision ``PUT``, a share of them sent twice,
    all shuffled (so many decisions arrive before their refund). Even-numbered ids are
    approved, odd ones denied."""
    import random

    rng = random.Random(seed)
    out: list[HostRequest] = []
    for n, rid in enumerate(ids):
        event: HostRequest = (
            "POST",
            "/refunds",
            {"refund_id": rid, "amount": 10 + n, "customer": {"email": "c@x"}},
            {"X-Region": "eu"},
        )
        action = "approve" if n % 2 == 0 else "deny"
        outcome: HostRequest = (
            "PUT",
            f"/refunds/{rid}/decision",
            {"decision": {"action": action}},
            {"X-User": "ops/jane"},
        )
        for req in (event, outcome):
            out.extend([req, req] if rng.random() < repeat else [req])
    rng.shuffle(out)
    return out
