"""The mirror target (``/v1/mirror/...`` and the mirror listener) and signed, authenticated
ingest, against the real sidecar on loopback: bad mirrored input is counted and
dead-lettered, never a crash; what is refused stores nothing of its body."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE
from shadow.app import build_app, side_apps
from shadow.ingest_auth import TOKEN_HEADER, sign
from shadow.policy import parse_policy
from shadow.server import Listener
from shadow.sources.mirror import MIRROR
from tests.conftest import cells_holding, wait_for
from tests.mirror_host import POLICY
from tests.shadow.conftest import (
    AgentServerFactory,
    Sidecar,
    SidecarFactory,
    agree_reply,
    clean_settings,
    metric,
)

SECRET = "mirror-signing-key"
SECRET_EMAIL = "jane.secret@example.com"
JSON = {"Content-Type": "application/json"}


async def settled(sc: Sidecar) -> None:
    await sc.app[MIRROR].drained()


async def mirror_count(sc: Sidecar, rule: str, result: str) -> float:
    return metric(await sc.metrics(), "shadow_mirror_requests_total", rule=rule, result=result) or 0


async def test_mirrored_requests_become_events_outcomes_and_comparisons(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    sc = await sidecar(policy=POLICY, agent=agent.url)
    body = {"refund_id": "r-1", "amount": 12, "customer": {"email": SECRET_EMAIL}}
    res = await sc.post("/v1/mirror/refunds", json_body=body, headers={"X-Region": "eu"})
    assert (res.status, res.body) == (202, {"queued": True})
    res = await sc.put(
        "/v1/mirror/refunds/r-1/decision",
        json_body={"decision": {"action": "approve"}},
        headers={"X-User": "ops/jane"},
    )
    assert res.status == 202

    async def compared() -> bool:
        return bool((await sc.agreement())["task_types"]["refund_request"]["n"] == 1)

    await wait_for(compared, "the mirrored case to be compared")
    assert agent.requests[0].body["payload"] == {"refund_id": "r-1", "amount": 12, "customer": {}}
    assert await mirror_count(sc, "POST /refunds", "accepted") == 1
    assert await mirror_count(sc, "PUT /refunds/{id}/decision", "accepted") == 1
    samples = await sc.metrics()
    stored = {"task_type": "refund_request", "source": "mirror", "result": "stored"}
    assert metric(samples, "shadow_events_total", **stored) == 1


async def test_bad_mirrored_input_is_counted_and_dead_lettered_never_a_crash(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar(policy=POLICY, max_body_bytes=64 * 1024)
    cases: list[tuple[str, str, bytes, dict[str, str], str, str]] = [
        # (method, path, body, headers, rule label, result)
        ("POST", "/refunds", b"{not json", JSON, "POST /refunds", "malformed"),
        ("POST", "/refunds", json.dumps({"amount": 1}).encode(), JSON, "POST /refunds", "invalid"),
        ("POST", "/nowhere", b"{}", JSON, "none", "unmatched"),
        ("DELETE", "/refunds", b"", {}, "none", "unmatched"),
        ("POST", "/refunds", b"x" * (65 * 1024), JSON, "POST /refunds", "too_large"),
        ("POST", "/refunds", gzip.compress(b"{}")[:-4], {**JSON, "Content-Encoding": "gzip"},
         "POST /refunds", "malformed"),
        ("PUT", "/refunds/r-9/decision", b'{"decision": "approve"}', JSON,
         "PUT /refunds/{id}/decision", "invalid"),
        ("POST", "/refunds", b"\xff\xfe", JSON, "POST /refunds", "encoding"),
        ("POST", "/refunds", b"a=1", {"Content-Type": "text/plain"}, "POST /refunds",
         "unsupported_media_type"),
    ]  # fmt: skip
    for method, path, data, headers, _, _ in cases:
        res = await sc.request(method, "/v1/mirror" + path, data=data, headers=headers)
        assert res.status in (202, 413), res
    await settled(sc)
    expected: dict[tuple[str, str], int] = {}
    for *_, rule, result in cases:
        expected[rule, result] = expected.get((rule, result), 0) + 1
    for (rule, result), count in expected.items():
        assert await mirror_count(sc, rule, result) == count, (rule, result)
    letters = await sc.pipeline.store.dead_letters()
    assert len(letters) == len(cases)
    assert {d["source"] for d in letters} == {"mirror"}
    reasons = " | ".join(d["reason"] for d in letters)
    assert "no mirror rule matches POST /nowhere" in reasons
    assert "event_id: nothing at body.refund_id" in reasons
    assert "body larger than 65536 bytes" in reasons
    assert all(d["location"] for d in letters)
    # Still serving.
    res = await sc.post("/v1/mirror/refunds", json_body={"refund_id": "ok-1"})
    await settled(sc)
    assert await mirror_count(sc, "POST /refunds", "accepted") == 1


async def test_a_redacted_field_never_reaches_a_dead_letter_from_a_mirror(
    tmp_path: Path, no_shadow_env: None
) -> None:
    settings = clean_settings(tmp_path, "redact")
    app = build_app(settings, policy=parse_policy(POLICY), registry=CollectorRegistry())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    bodies: list[object] = [
        {"amount": 1, "customer": {"email": SECRET_EMAIL}},  # no event id
        {"refund_id": "r-2", "customer": [{"email": SECRET_EMAIL}], "n": float("inf")},
        {"refund_id": ["x"], "customer": {"email": SECRET_EMAIL}},
    ]
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/mirror"
        async with aiohttp.ClientSession() as session:
            for body in bodies:
                async with session.post(f"{url}/refunds", data=json.dumps(body), headers=JSON) as r:
                    assert r.status == 202
            # Unmatched paths keep their body, redacted by every task type's paths.
            for body in ({"payload": {"customer": {"email": SECRET_EMAIL}}}, bodies[0]):
                async with session.post(f"{url}/other", data=json.dumps(body), headers=JSON) as r:
                    assert r.status == 202
        await app[MIRROR].drained()
        letters = await app[PIPELINE].store.dead_letters()
        assert len(letters) == 5
        assert sum(1 for d in letters if d["raw"]) >= 3
    finally:
        await runner.cleanup()
    rows, hits = cells_holding(settings.db, SECRET_EMAIL)
    assert rows > 0
    assert hits == []


async def test_the_mirror_listener_takes_the_hosts_own_paths(sidecar: SidecarFactory) -> None:
    sc = await sidecar(policy=POLICY, mirror_port=0)
    ((what, app, _),) = side_apps(sc.app)
    assert what == "mirror"
    sock = socket.create_server(("127.0.0.1", 0))
    async with (
        Listener(app, sock, sc.settings, access_log=None, shutdown_timeout=1.0) as listener,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{listener.port}"
        # Envoy and Istio append -shadow to the Host; the path is the host's.
        headers = {**JSON, "Host": "refunds.internal-shadow"}
        async with session.post(
            f"{base}/refunds?x=1", json={"refund_id": "l-1"}, headers=headers
        ) as r:
            assert r.status == 202
        async with session.put(
            f"{base}/refunds/l-1/decision", json={"decision": {"action": "deny"}}
        ) as r:
            assert r.status == 202
        async with session.get(f"{base}/v1/events") as r:  # the host's path, not the API's
            assert r.status == 202
        await settled(sc)
    assert await mirror_count(sc, "POST /refunds", "accepted") == 1
    assert await mirror_count(sc, "PUT /refunds/{id}/decision", "accepted") == 1
    assert await mirror_count(sc, "none", "unmatched") == 1


async def test_a_full_queue_drops_and_counts_and_answers_at_once(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar(policy=POLICY, mirror_queue=3)
    # Many at once: the consumer cannot take them as fast as they arrive on one loop step.
    results = await asyncio.gather(
        *(sc.post("/v1/mirror/refunds", json_body={"refund_id": f"q-{i}"}) for i in range(60))
    )
    assert {r.status for r in results} == {202}
    queued = sum(1 for r in results if r.body["queued"])
    await settled(sc)
    accepted = await mirror_count(sc, "POST /refunds", "accepted")
    dropped = await mirror_count(sc, "POST /refunds", "dropped")
    assert (accepted, dropped) == (queued, 60 - queued)
    assert len(await sc.pipeline.store.dead_letters()) == 0


# -- tokens and signatures --------------------------------------------------------------------


@pytest.fixture
async def signed(sidecar: SidecarFactory) -> Sidecar:
    return await sidecar(
        policy=POLICY, ingest_tokens=["tok-a", "tok-b"], ingest_signature_secret=SECRET
    )


def signed_headers(data: bytes, target: str, token: str = "tok-b") -> dict[str, str]:
    """JSON headers, a token and the signature of a POST of ``data`` to ``target`` (the
    host's path for a mirrored request)."""
    signature = sign(SECRET.encode(), "POST", target, data, JSON)
    return {**JSON, TOKEN_HEADER: token, "X-Shadow-Signature": signature}


EVENT = {"event_id": "s-1", "task_type": "refund_request", "payload": {"amount": 1}}
EVENTS = "/v1/events"


async def test_ingest_needs_a_token_and_a_matching_signature(signed: Sidecar) -> None:
    sc = signed
    data = json.dumps(EVENT).encode()
    bad: list[tuple[dict[str, str], str]] = [
        (JSON, "unauthorized"),
        ({**JSON, TOKEN_HEADER: "tok-c"}, "unauthorized"),
        ({**JSON, "Authorization": "Bearer tok-a"}, "bad_signature"),  # token ok, unsigned
        (
            {**signed_headers(data, EVENTS), "X-Shadow-Signature": "sha256=" + "0" * 64},
            "bad_signature",
        ),
        (signed_headers(data + b" ", EVENTS), "bad_signature"),  # signed another body
        ({**signed_headers(data, EVENTS), "X-Shadow-Signature": "md5=abc"}, "bad_signature"),
    ]
    for headers, _ in bad:
        res = await sc.post("/v1/events", data=data, headers=headers)
        assert res.status == 401, res
        assert "nothing was stored" in res.body["error"] or "required" in res.body["error"]
    samples = await sc.metrics()
    for reason in ("unauthorized", "bad_signature"):
        want = sum(1 for _, r in bad if r == reason)
        got = metric(
            samples, "shadow_ingest_rejected_total", kind="event", source="http", reason=reason
        )
        assert got == want
    assert await sc.pipeline.store.awaiting_agent() == 0
    ok = await sc.post(EVENTS, data=data, headers=signed_headers(data, EVENTS))
    assert ok.status == 202, ok
    outcome = json.dumps({"event_id": "s-1", "decision": {"action": "approve"}}).encode()
    headers = {**signed_headers(outcome, "/v1/outcomes"), "Authorization": "Bearer tok-a"}
    del headers[TOKEN_HEADER]
    assert (await sc.post("/v1/outcomes", data=outcome, headers=headers)).status == 202


async def test_the_mirror_target_checks_the_token_header_and_signature(signed: Sidecar) -> None:
    sc = signed
    data = json.dumps({"refund_id": "m-1"}).encode()
    # A mirrored request's Authorization is the host's own: it is never taken as a token.
    res = await sc.post(
        "/v1/mirror/refunds", data=data, headers={**JSON, "Authorization": "Bearer tok-a"}
    )
    assert res.status == 401
    other = sign(b"other-key", "POST", "/refunds", data, JSON)
    wrong = {**signed_headers(data, "/refunds"), "X-Shadow-Signature": other}
    assert (await sc.post("/v1/mirror/refunds", data=data, headers=wrong)).status == 401
    good = signed_headers(data, "/refunds")
    assert (await sc.post("/v1/mirror/refunds", data=data, headers=good)).status == 202
    await settled(sc)
    assert await mirror_count(sc, "POST /refunds", "unauthorized") == 1
    assert await mirror_count(sc, "POST /refunds", "bad_signature") == 1
    assert await mirror_count(sc, "POST /refunds", "accepted") == 1
    letters = await sc.pipeline.store.dead_letters()
    assert sorted(d["reason"][:20] for d in letters) == sorted(
        ["an ingest token is r", "X-Shadow-Signature d"]
    )
    assert all(d["raw"] is None for d in letters)  # nothing of a refused body is kept
