"""Request signatures cover what a mirror rule reads (docs/mirroring.md, "What a signature
covers"): with only a signature secret guarding ingest, a signed request replayed on another
path, with another query or with another value of a header a rule reads is refused 401,
and the original is accepted.

Against the real sidecar on loopback (its mirror target and ``/v1/events``); the documented
openssl example is run as written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from shadow.ingest_auth import sign, string_to_sign
from shadow.policy import parse_policy
from shadow.sources.mirror import MIRROR
from tests.conftest import require_tool, wait_for
from tests.mirror_host import HOST_LOG, host_app
from tests.nginx import Nginx, free_port, nginx_config
from tests.shadow.conftest import RawHttpFactory, Sidecar, SidecarFactory, metric

SECRET = b"replay-test-secret"
JSON = {"Content-Type": "application/json"}
ROOT = Path(__file__).resolve().parents[2]

POLICY = """
task_types:
  refund_request:
    compare: {fields: {action: {match: exact}}, unlisted: ignore}
mirror:
  - match: {method: PUT, path: "/refunds/{id}/decision"}
    name: decision
    kind: outcome
    event_id: path.id
    decision: body.decision
    decided_by: header.X-User
  - match: {method: POST, path: "/decisions"}
    name: by query
    kind: outcome
    event_id: query.case
    decision: body.decision
  - match: {method: POST, path: "/refunds"}
    name: refund
    kind: event
    task_type: refund_request
    event_id: header.X-Refund-Id
    payload: body
"""


@pytest.fixture
async def signed(sidecar: SidecarFactory) -> Sidecar:
    """Signatures alone guard ingest: no tokens."""
    return await sidecar(policy=POLICY, ingest_signature_secret=SECRET.decode())


def signature(method: str, target: str, body: bytes, headers: dict[str, str]) -> str:
    """What the host's client sends, the rule's read headers named as the docs say."""
    found = [r for r in parse_policy(POLICY).mirror if r.pattern.match(target.split("?")[0])]
    read = found[0].request_headers if found else ()
    return sign(SECRET, method, target, body, headers, read=read)


async def results(sc: Sidecar, rule: str) -> tuple[float, float]:
    """(accepted, bad_signature) mirrored requests of ``rule``."""
    await sc.app[MIRROR].drained()
    samples = await sc.metrics()
    count = "shadow_mirror_requests_total"
    accepted = metric(samples, count, rule=rule, result="accepted") or 0
    return accepted, metric(samples, count, rule=rule, result="bad_signature") or 0


DECISION = json.dumps({"decision": {"action": "approve"}}).encode()


async def test_a_signed_decision_replayed_on_another_path_is_refused(signed: Sidecar) -> None:
    sc = signed
    headers = {**JSON, "X-User": "ops/jane"}
    headers["X-Shadow-Signature"] = signature("PUT", "/refunds/r-1/decision", DECISION, headers)
    ok = await sc.put("/v1/mirror/refunds/r-1/decision", data=DECISION, headers=headers)
    assert ok.status == 202, ok
    for path in ("/refunds/r-2/decision", "/refunds/r-1/decision/"):
        forged = await sc.put(f"/v1/mirror{path}", data=DECISION, headers=headers)
        assert forged.status == 401, (path, forged)
    # Another value of a header the rule reads (decided_by) is another request too.
    other_user = {**headers, "X-User": "ops/mallory"}
    res = await sc.put("/v1/mirror/refunds/r-1/decision", data=DECISION, headers=other_user)
    assert res.status == 401
    # The original again: accepted (a duplicate for the pipeline).
    again = await sc.put("/v1/mirror/refunds/r-1/decision", data=DECISION, headers=headers)
    assert again.status == 202
    assert await results(sc, "decision") == (2, 3)
    letters = await sc.pipeline.store.dead_letters()
    assert {d["location"] for d in letters} == {
        "PUT /refunds/r-2/decision",
        "PUT /refunds/r-1/decision/",
        "PUT /refunds/r-1/decision",
    }
    assert all("x-user" in d["reason"] for d in letters)  # names what was signed


async def test_a_signed_decision_replayed_with_another_query_is_refused(signed: Sidecar) -> None:
    sc = signed
    headers = {
        **JSON,
        "X-Shadow-Signature": signature("POST", "/decisions?case=c-1", DECISION, JSON),
    }
    ok = await sc.post("/v1/mirror/decisions?case=c-1", data=DECISION, headers=headers)
    assert ok.status == 202, ok
    for query in ("case=c-2", "case=c-1&case=c-2", "case=c-1&x=1", ""):
        res = await sc.post(f"/v1/mirror/decisions?{query}", data=DECISION, headers=headers)
        assert res.status == 401, (query, res)
    assert await results(sc, "by query") == (1, 4)


async def test_a_signed_event_replayed_with_another_rule_read_header_is_refused(
    signed: Sidecar,
) -> None:
    sc = signed
    body = json.dumps({"amount": 12}).encode()
    headers = {**JSON, "X-Refund-Id": "e-1", "User-Agent": "host-client/1"}
    headers["X-Shadow-Signature"] = signature("POST", "/refunds", body, headers)
    ok = await sc.post("/v1/mirror/refunds", data=body, headers=headers)
    assert ok.status == 202, ok
    forged = [
        {**headers, "X-Refund-Id": "e-2"},
        {**headers, "Content-Type": "application/x-www-form-urlencoded"},
    ]
    for hdrs in forged:
        assert (await sc.post("/v1/mirror/refunds", data=body, headers=hdrs)).status == 401
    # A header no rule reads is not signed: a proxy may add or change it.
    relayed = {**headers, "User-Agent": "nginx-mirror", "X-Forwarded-For": "10.0.0.1"}
    assert (await sc.post("/v1/mirror/refunds", data=body, headers=relayed)).status == 202
    assert await results(sc, "refund") == (2, 2)


async def test_the_path_is_signed_as_sent(signed: Sidecar, raw_http: RawHttpFactory) -> None:
    """``%2D`` is ``-`` once decoded (the rule matches either way), but not as sent."""
    sc = signed

    async def put(target: str, signed_target: str) -> int:
        conn = await raw_http(sc.url)
        sig = sign(SECRET, "PUT", signed_target, DECISION, JSON)
        await conn.send(
            f"PUT /v1/mirror{target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Shadow-Signature: {sig}\r\nContent-Length: {len(DECISION)}\r\n\r\n".encode()
            + DECISION
        )
        return (await conn.response()).status

    assert await put("/refunds/r%2D3/decision", "/refunds/r-3/decision") == 401
    assert await put("/refunds/r%2D3/decision", "/refunds/r%2D3/decision") == 202


async def test_ingest_signatures_cover_method_path_query_and_content_type(
    signed: Sidecar,
) -> None:
    sc = signed
    event = {"event_id": "s-1", "task_type": "refund_request", "payload": {"amount": 1}}
    data = json.dumps(event).encode()
    headers = {**JSON, "X-Shadow-Signature": sign(SECRET, "POST", "/v1/events", data, JSON)}
    assert (await sc.post("/v1/events", data=data, headers=headers)).status == 202
    assert (await sc.post("/v1/events?replayed=1", data=data, headers=headers)).status == 401
    ndjson = {**headers, "Content-Type": "application/x-ndjson"}
    assert (await sc.post("/v1/events", data=data, headers=ndjson)).status == 401
    outcome = json.dumps({"event_id": "s-1", "decision": {"action": "approve"}}).encode()
    signed_outcome = {
        **JSON,
        "X-Shadow-Signature": sign(SECRET, "POST", "/v1/events", outcome, JSON),
    }
    res = await sc.post("/v1/outcomes", data=outcome, headers=signed_outcome)
    assert res.status == 401
    assert "content-encoding, content-type" in res.body["error"]
    assert (await sc.post("/v1/events", data=data, headers=headers)).status == 202  # duplicate


def test_the_string_to_sign_is_one_line_per_component() -> None:
    headers = [("Content-Type", " application/json "), ("X-Tag", "a"), ("X-Tag", "b")]
    text = string_to_sign(
        "put", "/a%20b/c?z=1&a=2", b"", [*headers, ("X-Other", "no")], read=["x-tag"]
    )
    assert text.decode().split("\n") == [
        "shadow-signature-v1",
        "PUT",
        "/a%20b/c",
        "z=1&a=2",
        "content-type:application/json",
        "x-tag:a,b",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_documented_openssl_example_gives_what_sign_gives() -> None:
    doc = (ROOT / "docs" / "mirroring.md").read_text(encoding="utf-8")
    section = doc.split("### What a signature covers", 1)[1]
    script = re.search(r"```sh\n(.*?)```", section, re.S)
    assert script is not None
    out = subprocess.run(
        ["bash", "-c", script[1]], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    body = b'{"refund_id":"r-1","amount":12}'
    headers = {"Content-Type": "application/json", "X-Region": "eu"}
    expected = sign(b"s3cret", "POST", "/refunds?source=web", body, headers, read=["X-Region"])
    assert f"sha256={out}" == expected
    assert f"# {out}" in script[1]
    assert f"X-Shadow-Signature: {expected}" in section
    rules = {r.name: r for r in parse_policy(doc.split("```yaml", 1)[1].split("```")[0]).mirror}
    assert rules["POST /refunds"].request_headers == ("x-region",)


@pytest.mark.slow  # a real nginx
async def test_a_signature_made_by_the_hosts_client_holds_through_nginx(
    signed: Sidecar, tmp_path: Path
) -> None:
    """nginx's mirror (docs/mirroring.md's configuration) keeps the path, query and headers
    the host's client signed; a replay on another case's path reaches the host as always,
    and the sidecar refuses its copy."""
    binary = require_tool("nginx", hint="make test installs it (.ci/system-tools: nginx)")
    sc = signed
    host = host_app()
    runner = web.AppRunner(host, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = free_port()
    sidecar_port = int(sc.url.rsplit(":", 1)[1])
    config = nginx_config(
        tmp_path / "nginx", listen=port, host=runner.addresses[0][1], sidecar=sidecar_port
    )
    nginx = Nginx(binary, tmp_path / "nginx", config, port).start()
    try:
        headers = {**JSON, "X-User": "ops/jane"}
        target = "/refunds/r-7/decision?via=web%20form"
        headers["X-Shadow-Signature"] = signature("PUT", target, DECISION, headers)
        async with aiohttp.ClientSession() as client:
            for path in (target, "/refunds/r-8/decision?via=web%20form"):
                url = URL(nginx.url + path, encoded=True)  # sent as written
                async with client.put(url, data=DECISION, headers=headers) as resp:
                    assert resp.status == 200  # the host answers either way

        async def both_mirrored() -> bool:
            return sum(await results(sc, "decision")) == 2

        await wait_for(both_mirrored, "both copies to reach the sidecar")
        assert await results(sc, "decision") == (1, 1)
        assert [p for _, p in host[HOST_LOG].requests] == [
            "/refunds/r-7/decision",
            "/refunds/r-8/decision",
        ]
    finally:
        nginx.stop()
        await runner.cleanup()
