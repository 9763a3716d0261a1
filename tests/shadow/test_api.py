"""The HTTP API end to end: a real sidecar (build_app, aiohttp, DuckDB file) talking to a
real fake agent over loopback. Exact counts, bad input, agent failures, the autonomy API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE
from shadow.app import build_app
from shadow.model import Level
from shadow.policy import parse_policy
from shadow.store import Store
from tests.conftest import cells_holding, wait_for
from tests.shadow.conftest import (
    ADMIN_TOKEN,
    AGENT_VERSION,
    POLICY,
    AgentServerFactory,
    HttpResult,
    MetricKey,
    RawHttpFactory,
    Reply,
    Sidecar,
    SidecarFactory,
    agree_reply,
    clean_settings,
    metric,
)

EVENTS = "/v1/events"
OUTCOMES = "/v1/outcomes"
DECIDED_AT = "2026-11-20T10:07:00Z"


def ok_agent(request: dict[str, Any]) -> Reply:
    """Agrees with the human when the payload carries the human's answer (``expect``)."""
    payload = request["payload"]
    return agree_reply(payload.get("expect") or {"action": "approve"})


def event(event_id: str, task_type: str = "refund", **payload: Any) -> dict[str, Any]:
    return {"event_id": event_id, "task_type": task_type, "payload": payload}


def outcome(event_id: str, action: str = "approve", **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "decision": {"action": action}, **extra}


# -- 1. exact counts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    event_id: str
    task_type: str
    payload: dict[str, Any]
    human: dict[str, Any]
    agent_agrees: bool
    has_outcome: bool


def build_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    for i in range(300):
        task_type = "refund" if i < 180 else "appeal"
        amount = round(rng.uniform(5, 500), 2)
        action = rng.choice(["approve", "deny", "escalate"])
        human: dict[str, Any] = {"action": action}
        if task_type == "refund":
            human["amount"] = amount
        else:
            human["note"] = f"note {i}"  # unlisted and ignored by the appeal rules
        cases.append(
            Case(
                event_id=f"{task_type[0]}-{i:04d}",
                task_type=task_type,
                payload={
                    "amount": amount,
                    "customer": {"email": f"c{i}@example.com", "tier": rng.choice("abc")},
                },
                human=human,
                agent_agrees=rng.random() < 0.8,
                has_outcome=i % 37 != 5,
            )
        )
    return cases


def flipped(action: str) -> str:
    return {"approve": "deny", "deny": "escalate", "escalate": "approve"}[action]


@pytest.mark.slow  # a long randomised stream
async def test_exact_counts_with_shuffled_duplicated_batches(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    rng = random.Random(20261120)
    cases = build_cases(rng)
    by_id = {c.event_id: c for c in cases}

    def answer(request: dict[str, Any]) -> Reply:
        c = by_id[request["event_id"]]
        decision = dict(c.human)
        if c.agent_agrees:
            if "amount" in decision:
                decision["amount"] = round(decision["amount"] + 0.004, 3)  # within abs 0.01
            if "note" in decision:
                decision["note"] = "the agent words it differently"
        else:
            decision["action"] = flipped(decision["action"])  # a critical miss
        return agree_reply(decision)

    agent = await agent_server(answer)
    # Ceiling L1 for the auto task type keeps its final level independent of how the
    # comparisons happen to be batched (one promotion per evaluation).
    sc = await sidecar(policy=POLICY.replace("ceiling: L3", "ceiling: L1"), agent=agent.url)
    policy = sc.policy

    orphans = [outcome(f"orphan-{k}", "deny") for k in range(5)]  # outcomes with no event
    records: list[tuple[str, dict[str, Any]]] = []
    for c in cases:
        ev = {"event_id": c.event_id, "task_type": c.task_type, "payload": c.payload}
        records += [("event", ev)] * rng.choice((2, 3))
        if c.has_outcome:
            out = {
                "event_id": c.event_id,
                "decision": c.human,
                "decided_by": "ops/jane",
                "decided_at": DECIDED_AT,
            }
            records += [("outcome", out)] * rng.choice((2, 3))
    for o in orphans:
        records += [("outcome", o)] * 2
    rng.shuffle(records)
    first_seen: dict[tuple[str, str], int] = {}
    for pos, (kind, rec) in enumerate(records):
        first_seen.setdefault((kind, rec["event_id"]), pos)
    outcome_first = [
        c.event_id
        for c in cases
        if c.has_outcome and first_seen[("outcome", c.event_id)] < first_seen[("event", c.event_id)]
    ]
    assert len(outcome_first) > 20  # the shuffle really sends outcomes ahead of their events

    # Runs of one kind, up to 17 records, posted 4 at a time as NDJSON.
    chunks: list[tuple[str, list[dict[str, Any]]]] = []
    for kind, rec in records:
        if chunks and chunks[-1][0] == kind and len(chunks[-1][1]) < 17:
            chunks[-1][1].append(rec)
        else:
            chunks.append((kind, [rec]))
    for start in range(0, len(chunks), 4):
        group = chunks[start : start + 4]
        results = await asyncio.gather(
            *(sc.post_ndjson(EVENTS if k == "event" else OUTCOMES, recs) for k, recs in group)
        )
        for (_, recs), res in zip(group, results, strict=True):
            assert res.status == 202, res.body
            assert res.body["errors"] == []
            assert res.body["accepted"] == len(recs)
            assert set(res.body["results"]) <= {"stored", "duplicate"}

    await sc.pipeline.drain()

    sampled = {c.event_id for c in cases if policy.task_types[c.task_type].sampled(c.event_id)}
    assert 0 < len([e for e in sampled if e.startswith("r-")]) < 180  # sample_rate 0.8 bites
    compared = [c for c in cases if c.event_id in sampled and c.has_outcome]
    expected: dict[str, dict[str, int]] = {}
    for tt in ("refund", "appeal"):
        mine = [c for c in compared if c.task_type == tt]
        agree = sum(c.agent_agrees for c in mine)
        expected[tt] = {"n": len(mine), "agree": agree, "critical": len(mine) - agree}

    doc = await sc.agreement()
    assert doc["frozen"] is False
    for tt, exp in expected.items():
        got = doc["task_types"][tt]
        assert got["agent_version"] == AGENT_VERSION
        assert (got["n"], got["agree"], got["critical"], got["errors"]) == (
            exp["n"],
            exp["agree"],
            exp["critical"],
            0,
        ), tt
        assert got["agreement"] == round(exp["agree"] / exp["n"], 4)
    assert doc["task_types"]["refund"]["level"] == "L1"
    assert doc["task_types"]["refund"]["proposal"] is None
    assert doc["task_types"]["appeal"]["level"] == "L0"
    assert doc["task_types"]["appeal"]["proposal"]["to_level"] == "L1"

    m = await sc.metrics()
    for tt, exp in expected.items():
        labels = {"task_type": tt, "agent_version": AGENT_VERSION}
        assert metric(m, "shadow_evidence_comparisons", **labels) == exp["n"]
        assert metric(m, "shadow_evidence_agreements", **labels) == exp["agree"]
        assert metric(m, "shadow_evidence_critical_misses", **labels) == exp["critical"]
        assert metric(m, "shadow_comparisons_total", **labels, verdict="agree") == exp["agree"]
        assert (
            metric(m, "shadow_comparisons_total", **labels, verdict="disagree") == exp["critical"]
        )
        assert metric(m, "shadow_comparisons_total", **labels, verdict="agent_error") is None
        assert metric(m, "shadow_critical_misses_total", **labels) == exp["critical"]
        calls = len([e for e in sampled if by_id[e].task_type == tt])
        assert metric(m, "shadow_agent_calls_total", task_type=tt, result="ok") == calls
    assert metric(m, "shadow_autonomy_level", task_type="refund") == 1
    assert metric(m, "shadow_autonomy_level", task_type="appeal") == 0
    assert metric(m, "shadow_autonomy_proposal_level", task_type="appeal") == 1
    sent_events = sum(1 for k, _ in records if k == "event")
    assert (
        metric(m, "shadow_events_total", task_type="refund", source="http", result="stored") == 180
    )
    assert (
        metric(m, "shadow_events_total", task_type="appeal", source="http", result="stored") == 120
    )
    duplicates = sum(
        metric(m, "shadow_events_total", task_type=tt, source="http", result="duplicate") or 0
        for tt in ("refund", "appeal")
    )
    assert duplicates == sent_events - 300
    stored_outcomes = sum(c.has_outcome for c in cases) + len(orphans)
    assert metric(m, "shadow_outcomes_total", source="http", result="stored") == stored_outcomes
    assert metric(m, "shadow_outcomes_total", source="http", result="duplicate") == (
        sum(1 for k, _ in records if k == "outcome") - stored_outcomes
    )
    no_outcome = len([e for e in sampled if not by_id[e].has_outcome])
    assert metric(m, "shadow_pending_joins", waiting_for="awaiting_outcome") == no_outcome
    assert metric(m, "shadow_pending_joins", waiting_for="awaiting_event") == len(orphans)
    assert metric(m, "shadow_pending_joins", waiting_for="awaiting_agent") == 0

    # One agent call per distinct sampled event, whatever the re-deliveries.
    assert sorted(agent.event_ids) == sorted(sampled)
    for req in agent.requests:
        eid = req.body["event_id"]
        assert req.headers["X-Shadow-Mode"] == "true"
        assert req.headers["X-Shadow-Event-Id"] == eid
        assert req.headers["Content-Type"].startswith("application/json")
        assert req.body["shadow"] is True
        assert req.body["task_type"] == by_id[eid].task_type
        customer = req.body["payload"]["customer"]
        if by_id[eid].task_type == "refund":
            assert "email" not in customer  # redacted before the agent
            assert customer["tier"] == by_id[eid].payload["customer"]["tier"]
        else:
            assert customer["email"] == by_id[eid].payload["customer"]["email"]
    assert await sc.pipeline.store.count("comparisons") == sum(e["n"] for e in expected.values())


# -- 2. bad input -----------------------------------------------------------------------------

GOOD = {
    EVENTS: lambda i: event(f"good-{i}", amount=i),
    OUTCOMES: lambda i: outcome(f"good-{i}"),
}


async def still_serving(sc: Sidecar, path: str, i: int) -> None:
    res = await sc.post(path, json_body=GOOD[path](i))
    assert res.status == 202, res.body
    assert res.body["accepted"] == 1


def assert_error(res: HttpResult, status: int, *needles: str) -> dict[str, Any]:
    assert res.status == status, res.body
    assert res.content_type == "application/json"
    body: dict[str, Any] = res.body
    assert isinstance(body["error"], str)
    for needle in needles:
        assert needle in body["error"], (needle, body)
    return body


def field_errors(body: Mapping[str, Any]) -> set[tuple[int, str]]:
    return {(e["line"], e["path"]) for e in body["errors"]}


@pytest.mark.parametrize("path", [EVENTS, OUTCOMES])
async def test_bad_input_gets_clear_json_errors_and_the_server_keeps_serving(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, path: str
) -> None:
    agent = await agent_server(ok_agent)
    sc = await sidecar(agent=agent.url, max_body_bytes=4096, max_records=5)
    json_ct = {"Content-Type": "application/json"}
    ndjson_ct = {"Content-Type": "application/x-ndjson"}
    n = 0

    async def check_alive() -> None:
        nonlocal n
        n += 1
        await still_serving(sc, path, n)

    # Malformed JSON.
    res = await sc.post(path, data='{"event_id": "x",', headers=json_ct)
    assert_error(res, 400, "invalid JSON at line 1 column")
    await check_alive()

    # Wrong types and missing fields: every problem named with its path and line.
    if path == EVENTS:
        bad: dict[str, Any] = {"event_id": 5, "payload": "not an object"}
        want = {(1, "event_id"), (1, "task_type"), (1, "payload")}
    else:
        bad = {"event_id": "o-1", "decision": [1], "decided_at": "yesterday"}
        want = {(1, "decision"), (1, "decided_at")}
    body = assert_error(await sc.post(path, json_body=bad), 400, "no record was valid")
    assert field_errors(body) == want
    assert body["accepted"] == 0
    missing = next(e for e in body["errors"] if e["path"] in ("task_type", "decided_at"))
    assert missing["message"]
    await check_alive()

    # The same as a JSON array: "line" is the 1-based index.
    good = GOOD[path](100)
    res = await sc.post(path, json_body=[good, bad])
    assert res.status == 202, res.body
    assert {line for line, _ in field_errors(res.body)} == {2}
    await check_alive()

    # NDJSON with some bad lines: 202, per-line errors, the good lines stored.
    lines = [
        json.dumps(GOOD[path](200)),
        json.dumps(bad),
        "",  # blank lines are skipped but still counted
        '{"not": json}',
        json.dumps(GOOD[path](201)),
    ]
    res = await sc.post(path, data="\n".join(lines) + "\n", headers=ndjson_ct)
    assert res.status == 202, res.body
    assert res.body["accepted"] == 2
    assert res.body["results"] == {"stored": 2}
    assert {line for line, _ in field_errors(res.body)} == {2, 4}
    assert any("invalid JSON" in e["message"] for e in res.body["errors"] if e["line"] == 4)
    again = await sc.post_ndjson(path, [GOOD[path](200), GOOD[path](201)])
    assert again.body["results"] == {"duplicate": 2}  # they were stored
    await check_alive()

    # Oversized body.
    big = [GOOD[path](300), {"event_id": "x" * 5000}]
    res = await sc.post(path, json_body=big)
    assert_error(res, 413, "larger than 4096 bytes")
    await check_alive()

    # Too many records, as NDJSON and as a JSON array.
    six = [GOOD[path](400 + i) for i in range(6)]
    assert_error(await sc.post_ndjson(path, six), 413, "too many records", "at most 5")
    assert_error(await sc.post(path, json_body=six), 413, "too many records", "at most 5")
    await check_alive()

    # Wrong or missing content type, or a charset that is not UTF-8.
    payload = json.dumps(GOOD[path](500))
    assert_error(
        await sc.post(path, data=payload, headers={"Content-Type": "text/plain"}),
        415,
        "unsupported Content-Type 'text/plain'",
    )
    assert_error(
        await sc.post(
            path, data=payload, headers={"Content-Type": "application/json; charset=latin-1"}
        ),
        415,
        "charset",
    )
    assert_error(await sc.post(path, data=payload, skip_content_type=True), 415, "Content-Type")
    await check_alive()

    # Unknown task type (events only: outcomes carry none).
    if path == EVENTS:
        body = assert_error(
            await sc.post(path, json_body=event("u-1", "no_such_task")),
            422,
            "no record has a configured task type",
        )
        assert body["errors"][0]["path"] == "task_type"
        assert "'no_such_task'" in body["errors"][0]["message"]
        await check_alive()

    # Conflicting duplicate: 409 when it is the only record, and a dead letter is kept.
    first = event("dup-1", amount=1) if path == EVENTS else outcome("dup-1", "approve")
    second = event("dup-1", amount=2) if path == EVENTS else outcome("dup-1", "deny")
    assert (await sc.post(path, json_body=first)).status == 202
    body = assert_error(
        await sc.post(path, json_body=second), 409, "every record conflicts with one already stored"
    )
    assert body["errors"][0]["line"] == 1
    assert "conflicting duplicate" in body["errors"][0]["message"]
    letters = await sc.pipeline.store.dead_letters()
    assert [(d["event_id"], d["kind"]) for d in letters] == [
        ("dup-1", "event" if path == EVENTS else "outcome")
    ]
    assert "conflicting duplicate" in letters[0]["reason"]
    counted = metric(
        await sc.metrics(), "shadow_dead_letters_total", source="http", reason="conflict"
    )
    assert counted == 1
    await check_alive()

    # Not UTF-8.
    res = await sc.post(path, data=b'{"event_id": "\xff\xfe"}', headers=json_ct)
    assert_error(res, 400, "not UTF-8 at byte 14")
    await check_alive()

    # Deep nesting: beyond the parser, and beyond what a record may hold.
    res = await sc.post(path, data="[" * 2000 + "]" * 2000, headers=json_ct)
    assert_error(res, 400, "nested too deeply")
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"a": deep}
    nested = event("deep-1", **deep) if path == EVENTS else {"event_id": "d", "decision": deep}
    body = assert_error(await sc.post(path, json_body=nested), 400, "no record was valid")
    assert body["errors"][0]["path"].startswith("payload.a.a" if path == EVENTS else "decision.a")
    assert "nested deeper than 32 levels" in body["errors"][0]["message"]
    await check_alive()

    # Empty bodies.
    assert_error(await sc.post(path, data=b"", headers=json_ct), 400, "empty body")
    assert_error(await sc.post(path, data=b" \n\r\n", headers=ndjson_ct), 400, "empty body")
    assert_error(await sc.post(path, data=b"[]", headers=json_ct), 400, "empty array")
    assert_error(await sc.post(path, data=b'"text"', headers=json_ct), 400, "got a string")
    await check_alive()

    health = await sc.get("/healthz")
    assert health.status == 200


def rejected_total(samples: Mapping[MetricKey, float], kind: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "shadow_ingest_rejected_total" and ("kind", kind) in labels
    )


@pytest.mark.parametrize("path", [EVENTS, OUTCOMES])
async def test_bad_http_input_is_counted_in_a_metric(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, path: str
) -> None:
    agent = await agent_server(ok_agent)
    sc = await sidecar(agent=agent.url, max_body_bytes=2048, max_records=2)
    kind = "event" if path == EVENTS else "outcome"
    json_ct = {"Content-Type": "application/json"}
    bad_posts: list[dict[str, Any]] = [
        {"data": "{", "headers": json_ct},  # malformed
        {"json_body": {"event_id": 5}},  # invalid record
        {"data": "x" * 4000, "headers": json_ct},  # too large
        {"data": "{}\n{}\n{}\n", "headers": {"Content-Type": "application/x-ndjson"}},
        {"data": "{}", "headers": {"Content-Type": "text/plain"}},  # 415
        {"data": b"", "headers": json_ct},  # empty
    ]
    before = rejected_total(await sc.metrics(), kind)
    for post in bad_posts:
        res = await sc.post(path, **post)
        assert 400 <= res.status < 500, res.body
        after = rejected_total(await sc.metrics(), kind)
        assert after > before, post
        before = after


def rejected(samples: Mapping[MetricKey, float], kind: str, reason: str) -> float:
    return (
        metric(samples, "shadow_ingest_rejected_total", kind=kind, source="http", reason=reason)
        or 0
    )


async def test_one_record_with_several_bad_fields_is_one_rejection(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar()
    three_bad_fields = {"event_id": 5, "payload": "not an object"}  # event_id, task_type, payload
    lines = [json.dumps(three_bad_fields), json.dumps(event("ok-1")), "{not json"]
    res = await sc.post(
        EVENTS, data="\n".join(lines), headers={"Content-Type": "application/x-ndjson"}
    )
    assert res.status == 202, res.body
    assert len(res.body["errors"]) == 4  # every field is still named in the answer
    m = await sc.metrics()
    assert rejected(m, "event", "invalid") == 1
    assert rejected(m, "event", "malformed") == 1


NDJSON_CT = "application/x-ndjson"


def hundred_events() -> bytes:
    return b"".join(json.dumps(event(f"z-{i:03d}")).encode() + b"\n" for i in range(100))


def compressed(data: bytes, coding: str, *, cut_after: int | None = None) -> bytes:
    """``data`` gzip- or deflate-compressed; with ``cut_after``, the stream stops after that
    many lines (flushed, so they decompress) and never ends: no final block, no trailer."""
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    deflater = zlib.compressobj(wbits=wbits)
    if cut_after is None:
        return deflater.compress(data) + deflater.flush()
    head = b"".join(data.splitlines(keepends=True)[:cut_after])
    return deflater.compress(head) + deflater.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_truncated_compressed_body_is_refused_whole(
    sidecar: SidecarFactory, coding: str
) -> None:
    sc = await sidecar()
    headers = {"Content-Type": NDJSON_CT, "Content-Encoding": coding}
    cut = compressed(hundred_events(), coding, cut_after=50)
    assert_error(await sc.post(EVENTS, data=cut, headers=headers), 400, "truncated")
    assert await sc.pipeline.store.count("events") == 0
    assert rejected(await sc.metrics(), "event", "malformed") == 1

    whole = compressed(hundred_events(), coding)
    res = await sc.post(EVENTS, data=whole, headers=headers)
    assert res.status == 202, res.body
    assert res.body["accepted"] == 100
    assert await sc.pipeline.store.count("events") == 100


async def test_a_body_that_does_not_match_its_encoding_is_a_counted_json_error(
    sidecar: SidecarFactory,
) -> None:
    sc = await sidecar()
    plain = json.dumps(event("p-1")).encode()
    json_ct = {"Content-Type": "application/json"}
    res = await sc.post(EVENTS, data=plain, headers={**json_ct, "Content-Encoding": "gzip"})
    assert_error(res, 400, "not valid gzip data")
    res = await sc.post(OUTCOMES, data=b"\x1f\x8b", headers={**json_ct, "Content-Encoding": "gzip"})
    assert_error(res, 400, "truncated")
    res = await sc.post(EVENTS, data=plain, headers={**json_ct, "Content-Encoding": "br"})
    assert_error(res, 415, "unsupported Content-Encoding 'br'", "gzip or deflate")
    m = await sc.metrics()
    assert rejected(m, "event", "malformed") == 1
    assert rejected(m, "outcome", "malformed") == 1
    assert rejected(m, "event", "unsupported_media_type") == 1
    assert await sc.pipeline.store.count("events") == 0
    await still_serving(sc, EVENTS, 1)


def request_head(path: str, length: int, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: sidecar",
        f"Content-Type: {NDJSON_CT}",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_body_trickled_in_is_cut_off_with_408(
    sidecar: SidecarFactory, raw_http: RawHttpFactory
) -> None:
    sc = await sidecar(body_timeout=1.0)
    body = hundred_events()
    conn = await raw_http(sc.url)
    await conn.send(request_head(EVENTS, len(body)))

    async def trickle() -> None:
        for i in range(len(body)):  # 1 byte/s: never done within body_timeout
            await conn.send(body[i : i + 1])
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(trickle())
    try:
        res = await conn.response()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    assert res.status == 408
    assert "body_timeout" in res.json()["error"]
    assert res.headers.get("connection", "").lower() == "close"
    assert await sc.pipeline.store.count("events") == 0
    assert rejected(await sc.metrics(), "event", "timeout") == 1
    await still_serving(sc, EVENTS, 1)


@pytest.mark.parametrize("path", [EVENTS, OUTCOMES])
async def test_a_declared_body_over_the_limit_is_refused_before_100_continue(
    sidecar: SidecarFactory, raw_http: RawHttpFactory, path: str
) -> None:
    sc = await sidecar(max_body_bytes=4096)
    conn = await raw_http(sc.url)
    await conn.send(request_head(path, 5000, "Expect: 100-continue"))
    res = await conn.response()
    assert res.status == 413  # not 100: the client is told before it sends the body
    assert "larger than 4096 bytes" in res.json()["error"]
    assert res.headers.get("connection", "").lower() == "close"
    kind = "event" if path == EVENTS else "outcome"
    assert rejected(await sc.metrics(), kind, "too_large") == 1

    # A content type ingest does not read is refused before the body too.
    conn = await raw_http(sc.url)
    head = request_head(path, 10, "Expect: 100-continue").replace(NDJSON_CT.encode(), b"text/csv")
    await conn.send(head)
    res = await conn.response()
    assert res.status == 415
    assert "text/csv" in res.json()["error"]

    # Within the limit: 100 Continue, then the body, then the answer.
    body = json.dumps(GOOD[path](1)).encode()
    conn = await raw_http(sc.url)
    await conn.send(request_head(path, len(body), "Expect: 100-continue"))
    assert (await conn.response()).status == 100
    await conn.send(body)
    res = await conn.response()
    assert res.status == 202, res.body
    assert res.json()["accepted"] == 1


# -- 3. a slow or broken agent never slows ingest ----------------------------------------------


async def test_ingest_does_not_wait_for_a_slow_or_broken_agent(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    gate = asyncio.Event()  # held by the test: the slow answer waits on it

    async def answer(request: dict[str, Any]) -> Reply:
        kind = request["event_id"].split("-")[0]
        if kind == "slow":
            await gate.wait()
            return agree_reply({"action": "approve"})
        if kind == "garbage":
            return Reply(200, b"this is not json {")
        if kind == "nodecision":
            return Reply(200, {"agent_version": AGENT_VERSION, "actions": []})
        if kind == "boom":
            return Reply(500, {"error": "the agent fell over"})
        raise AssertionError(request)

    agent = await agent_server(answer)
    sc = await sidecar(agent=agent.url, agent_timeout=0.5, breaker_failures=100)
    appeal = "appeal"  # sample_rate 1.0: every event goes to the agent

    res = await sc.post(EVENTS, json_body=event("slow-1", appeal))
    assert res.status == 202
    await agent.wait_for_requests(1)
    assert agent.event_ids == ["slow-1"]
    # The agent is blocked on our gate; ingest answers anyway, for events and outcomes.
    res = await sc.post_ndjson(
        EVENTS,
        [event(f"{k}-1", appeal) for k in ("garbage", "nodecision", "boom")],
    )
    assert res.status == 202
    assert res.body["accepted"] == 3
    res = await sc.post_ndjson(
        OUTCOMES, [outcome(f"{k}-1") for k in ("slow", "garbage", "nodecision", "boom")]
    )
    assert res.status == 202
    assert not gate.is_set()
    assert "slow-1" not in agent.done  # still blocked while ingest answered

    await sc.pipeline.drain()  # the sidecar gave up on the slow one (timeout)
    assert "slow-1" not in agent.done
    assert sorted(agent.event_ids) == ["boom-1", "garbage-1", "nodecision-1", "slow-1"]

    doc = (await sc.agreement())["task_types"]["appeal"]
    assert (doc["n"], doc["agree"], doc["errors"], doc["critical"]) == (4, 0, 4, 0)
    assert doc["agent_version"] == AGENT_VERSION
    m = await sc.metrics()
    labels = {"task_type": appeal, "agent_version": AGENT_VERSION}
    assert metric(m, "shadow_comparisons_total", **labels, verdict="agent_error") == 4
    assert metric(m, "shadow_agent_calls_total", task_type=appeal, result="error") == 4
    assert metric(m, "shadow_evidence_comparisons", **labels) == 4
    assert metric(m, "shadow_evidence_agreements", **labels) == 0

    gate.set()  # the late answer must not change the recorded verdict
    await asyncio.sleep(0)
    await sc.pipeline.drain()
    again = (await sc.agreement())["task_types"]["appeal"]
    assert (again["n"], again["errors"]) == (4, 4)
    assert len(agent.requests) == 4  # an agent error is final: no re-send


# -- 4. the autonomy API ----------------------------------------------------------------------


async def test_writes_are_refused_without_a_configured_token(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(ok_agent)
    sc = await sidecar(agent=agent.url, admin_token=None)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for method, path, body in [
        ("PUT", "/v1/autonomy/refund", {"level": "L1"}),
        ("POST", "/v1/autonomy/appeal/approve", None),
        ("POST", "/v1/freeze", None),
        ("POST", "/v1/unfreeze", None),
    ]:
        res = await sc.request(method, path, json_body=body, headers=headers)
        assert_error(res, 403, "SHADOW_ADMIN_TOKEN")
    assert (await sc.get("/v1/autonomy")).status == 200
    assert (await sc.get("/v1/autonomy/refund")).body["level"] == "L0"


async def route(sc: Sidecar, task_type: str, event_id: str) -> dict[str, Any]:
    res = await sc.get(f"/v1/route/{task_type}?event_id={event_id}", headers=sc.admin)
    assert res.status == 200, res.body
    return dict(res.body)


async def set_level(sc: Sidecar, task_type: str, level: str, **extra: Any) -> HttpResult:
    return await sc.put(
        f"/v1/autonomy/{task_type}", json_body={"level": level, **extra}, headers=sc.admin
    )


async def test_autonomy_api(sidecar: SidecarFactory, agent_server: AgentServerFactory) -> None:
    agent = await agent_server(ok_agent)
    sc = await sidecar(agent=agent.url)

    # Token checks: missing, wrong scheme, wrong token.
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
    ):
        res = await sc.put("/v1/autonomy/refund", json_body={"level": "L1"}, headers=headers)
        assert_error(res, 401, "admin token")
        assert_error(await sc.post("/v1/freeze", headers=headers), 401, "admin token")
    assert (await sc.get("/v1/autonomy/refund")).body["level"] == "L0"

    # Above the ceiling: 409, nothing changes.
    body = assert_error(await set_level(sc, "appeal", "L3"), 409, "above the ceiling L2")
    assert body
    assert (await sc.get("/v1/autonomy/appeal")).body["level"] == "L0"
    # Bad bodies.
    assert_error(await set_level(sc, "refund", "L9"), 400, "unknown level")
    res = await sc.put("/v1/autonomy/refund", data="{", headers={**sc.admin})
    assert_error(res, 400, "not valid JSON")
    res = await sc.put(
        "/v1/autonomy/refund", json_body={"level": "L1", "reason": 5}, headers=sc.admin
    )
    assert_error(res, 400, "reason must be a string")

    # A valid set is audited with actor and reason (header actor, then body actor).
    res = await sc.put(
        "/v1/autonomy/refund",
        json_body={"level": "L1", "reason": "pilot week"},
        headers={**sc.admin, "X-Shadow-Actor": "ops/jane"},
    )
    assert res.status == 200, res.body
    assert {k: res.body[k] for k in ("task_type", "move", "applied", "from", "to")} == {
        "task_type": "refund",
        "move": "manual_set",
        "applied": True,
        "from": "L0",
        "to": "L1",
    }
    assert (res.body["requested"], res.body["overridden"]) == ("L1", None)
    res = await set_level(sc, "refund", "L2", actor="ops/bob", reason="second step")
    assert res.status == 200
    hist = await sc.get("/v1/autonomy/refund/history")
    assert hist.status == 200
    entries = hist.body["entries"]
    assert [(e["actor"], e["reason"], e["action"], e["to_level"]) for e in entries[:2]] == [
        ("ops/bob", "second step", "manual_set", "L2"),
        ("ops/jane", "pilot week", "manual_set", "L1"),
    ]
    assert "n" in entries[0]["evidence"]
    m = await sc.metrics()
    assert metric(m, "shadow_autonomy_level", task_type="refund") == 2
    assert (await sc.get("/v1/autonomy/refund/history?limit=1")).body["entries"] == entries[:1]
    assert_error(await sc.get("/v1/autonomy/refund/history?limit=x"), 400, "limit")
    assert_error(await sc.get("/v1/autonomy/refund/history?limit=0"), 400, "limit")

    # Approve with nothing pending, and an approval that names nothing.
    res = await sc.post("/v1/autonomy/appeal/approve", json_body={"to": "L1"}, headers=sc.admin)
    assert_error(res, 409, "no pending proposal")
    res = await sc.post("/v1/autonomy/appeal/approve", headers=sc.admin)
    assert_error(res, 400, "name the proposal")

    # Enough agreeing evidence makes the propose-mode task type propose L1.
    events = [event(f"ap-{i}", "appeal", expect={"action": "approve"}) for i in range(8)]
    assert (await sc.post_ndjson(EVENTS, events)).status == 202
    assert (await sc.post_ndjson(OUTCOMES, [outcome(f"ap-{i}") for i in range(8)])).status == 202
    await sc.pipeline.drain()
    one = (await sc.get("/v1/autonomy/appeal")).body
    assert one["level"] == "L0"
    assert one["n"] == 8
    assert one["agree"] == 8
    assert one["proposal"]["to_level"] == "L1"
    assert one["proposal"]["evidence"]["n"] == 8
    listing = (await sc.get("/v1/autonomy")).body
    assert listing["task_types"]["appeal"]["proposal"]["to_level"] == "L1"
    assert (await route(sc, "appeal", "ap-1"))["handler"] == "human"

    res = await sc.post(
        "/v1/autonomy/appeal/approve", json_body={"actor": "ops/lead", "to": "L1"}, headers=sc.admin
    )
    assert res.status == 200, res.body
    assert {k: res.body[k] for k in ("task_type", "move", "applied", "from", "to")} == {
        "task_type": "appeal",
        "move": "approve",
        "applied": True,
        "from": "L0",
        "to": "L1",
    }
    assert (await sc.get("/v1/autonomy/appeal")).body["level"] == "L1"
    actions = [
        (e["action"], e["actor"])
        for e in (await sc.get("/v1/autonomy/appeal/history")).body["entries"]
    ]
    assert actions[0] == ("approve", "ops/lead")
    assert ("propose", "promoter") in actions
    res = await sc.post("/v1/autonomy/appeal/approve", json_body={"to": "L1"}, headers=sc.admin)
    assert res.status == 200, res.body
    assert (res.body["applied"], res.body["to"]) == (False, "L1")
    m = await sc.metrics()
    assert metric(m, "shadow_autonomy_level", task_type="appeal") == 1
    assert metric(m, "shadow_autonomy_proposal_level", task_type="appeal") == 0

    # Freeze: every task type at L0, routed to humans; raising a level is refused.
    res = await sc.post("/v1/freeze", json_body={"reason": "incident 42"}, headers=sc.admin)
    assert res.status == 200
    assert res.body == {"frozen": True}
    listing = (await sc.get("/v1/autonomy")).body
    assert listing["frozen"] is True
    assert {k: v["level"] for k, v in listing["task_types"].items()} == {
        "refund": "L0",
        "appeal": "L0",
    }
    for tt in ("refund", "appeal"):
        r = await route(sc, tt, "any-1")
        assert (r["handler"], r["level"], r["audit"]) == ("human", "L0", False)
    assert_error(await set_level(sc, "refund", "L2"), 409, "frozen")
    res = await sc.post("/v1/autonomy/appeal/approve", json_body={"to": "L2"}, headers=sc.admin)
    assert_error(res, 409, "frozen")
    freeze_entry = (await sc.get("/v1/autonomy/refund/history")).body["entries"][0]
    assert (freeze_entry["action"], freeze_entry["reason"]) == ("freeze", "incident 42")
    m = await sc.metrics()
    assert metric(m, "shadow_frozen") == 1
    assert metric(m, "shadow_autonomy_level", task_type="refund") == 0

    res = await sc.post("/v1/unfreeze", headers={**sc.admin, "X-Shadow-Actor": "ops/lead"})
    assert res.status == 200
    assert res.body == {"frozen": False}
    listing = (await sc.get("/v1/autonomy")).body
    assert listing["frozen"] is False
    # Levels are re-earned from L0: the evidence still supports appeal's L1, so it is
    # proposed again (propose mode) rather than restored.
    assert listing["task_types"]["appeal"]["level"] == "L0"
    assert listing["task_types"]["appeal"]["proposal"]["to_level"] == "L1"
    assert listing["task_types"]["refund"]["level"] == "L0"
    unfreeze_entries = (await sc.get("/v1/autonomy/refund/history")).body["entries"]
    assert (unfreeze_entries[0]["action"], unfreeze_entries[0]["actor"]) == (
        "unfreeze",
        "ops/lead",
    )
    assert metric(await sc.metrics(), "shadow_frozen") == 0

    # Unknown task types: 404 with a JSON error everywhere.
    for method, path in [
        ("GET", "/v1/autonomy/nope"),
        ("GET", "/v1/autonomy/nope/history"),
        ("GET", "/v1/route/nope?event_id=x"),
        ("PUT", "/v1/autonomy/nope"),
        ("POST", "/v1/autonomy/nope/approve"),
    ]:
        body_json = {"level": "L1"} if method == "PUT" else None
        res = await sc.request(method, path, json_body=body_json, headers=sc.admin)
        assert_error(res, 404, "unknown task type 'nope'")

    # Routing per level; from L1 up the blind audit sample follows the stable hash of the
    # event id: those items go to a human without the agent's answer.
    task = sc.policy.task_types["refund"]
    ids = [f"r-{i}" for i in range(40)]
    audited = [e for e in ids if task.audited(e, Level.L1)]
    assert 0 < len(audited) < len(ids)
    blind = {
        "handler": "human",
        "audit": True,
        "approval_required": False,
        "suggestion": False,
        "handled_by": "blind",
    }
    expected = {
        "L0": ("human", False, False, "blind"),
        "L1": ("human", False, True, "assisted"),
        "L2": ("agent", True, False, "assisted"),
        "L3": ("agent", False, False, "agent"),
    }
    for level, (handler, approval, suggestion, handled_by) in expected.items():
        assert (await set_level(sc, "refund", level)).status == 200
        for eid in ids:
            r = await route(sc, "refund", eid)
            if level != "L0" and task.audited(eid, Level.parse(level)):
                assert r == {**blind, "level": level}, (level, eid)
                continue
            assert r == {
                "handler": handler,
                "level": level,
                "audit": False,
                "approval_required": approval,
                "suggestion": suggestion,
                "handled_by": handled_by,
            }, (level, eid)
    assert Level.parse((await sc.get("/v1/autonomy/refund")).body["level"]) == Level.L3
    assert_error(await sc.get("/v1/route/refund", headers=sc.admin), 400, "event_id")
    assert_error(await sc.get("/v1/route/refund?event_id=", headers=sc.admin), 400, "event_id")


# -- 5. health and the API description ---------------------------------------------------------


async def test_health_ready_and_openapi(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    agent = await agent_server(ok_agent)
    sc = await sidecar(agent=agent.url)
    health = await sc.get("/healthz")
    assert (health.status, health.body) == (200, {"status": "ok"})
    ready = await sc.get("/readyz")
    assert (ready.status, ready.body) == (200, {"status": "ready"})
    spec = await sc.get("/openapi.json")
    assert spec.status == 200
    assert spec.body["openapi"].startswith("3.")
    assert "/v1/events" in spec.body["paths"]
    metrics = await sc.get("/metrics")
    assert metrics.status == 200
    assert "shadow_autonomy_level" in metrics.body


# -- 6. redaction ---------------------------------------------------------------------------------


async def test_http_ingest_never_stores_or_logs_a_redacted_value(
    tmp_path: Path,
    agent_server: AgentServerFactory,
    caplog: pytest.LogCaptureFixture,
    no_shadow_env: None,
) -> None:
    """Bad records answer with field paths and messages; what is stored (events, a
    conflicting duplicate's dead letter) and what is logged holds no redacted value, also
    when it sits in lists."""
    caplog.set_level(logging.DEBUG)
    secret = "zq7-jane.doe@example.com"
    agent = await agent_server(ok_agent)
    customers = [{"email": secret, "tier": "gold"}, [[{"email": secret}]]]
    settings = clean_settings(tmp_path, "redact", agent=agent.url)
    policy = parse_policy(POLICY)
    good = next(f"s-{i}" for i in range(100) if policy.task_types["refund"].sampled(f"s-{i}"))
    app = build_app(settings, policy=policy, registry=CollectorRegistry())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        records = [
            event(good, customer=customers, amount=1),
            event(good, customer=customers, amount=2),  # conflicting duplicate
            event("s-2", "unheard_of", customer=customers),  # unknown task type
            {**event("s-3", customer=customers), "occurred_at": "soon"},
            {**event("s-4", customer={"email": {secret: 1}}), "surprise": True},
        ]
        body = "".join(json.dumps(r) + "\n" for r in records)
        async with aiohttp.ClientSession() as session:
            async with session.post(
                url + EVENTS, data=body, headers={"Content-Type": "application/x-ndjson"}
            ) as resp:
                answer = await resp.json()
            assert resp.status == 202, answer
            async with session.post(url + OUTCOMES, json=outcome(good)) as resp:
                assert resp.status == 202
        assert answer["accepted"] == 1
        assert len(answer["errors"]) >= 4
        assert secret not in json.dumps(answer)  # paths and messages, never values
        store = app[PIPELINE].store
        await wait_for(lambda: _has_comparison(store), "the good event compared")
        (letter,) = await store.dead_letters()  # the conflict; bad records are answered
        assert letter["raw"] is not None
        assert "conflicting duplicate" in letter["reason"]
        sent = [r.body["payload"] for r in agent.requests]
        assert sent == [{"customer": [{"tier": "gold"}, [[{}]]], "amount": 1}]
    finally:
        await runner.cleanup()
    rows, hits = cells_holding(settings.db, secret)
    assert rows > 0
    assert hits == []
    assert secret not in caplog.text


async def _has_comparison(store: Store) -> bool:
    return await store.count("comparisons") == 1
