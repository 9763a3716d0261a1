"""Every PromQL expression we ship, proven against real data.

A real sidecar (:func:`shadow.app.build_app`, real DuckDB file, served on loopback) is fed
the demo back office's traffic over its HTTP API; a real ``prometheus`` binary scrapes it
every second and evaluates ``dashboards/prometheus/shadow-rules.yaml``. The feed is shaped so
that every series exists: an agent that sometimes fails (agent errors), conflicting
duplicates (dead letters), a promotion to L3, then a bad agent release (critical misses at
L3, a falling lower bound, a demotion), a promotion waiting for approval (``mode:
propose``). Then every panel target, annotation and variable query of both dashboards (with
Grafana's variable substitution) and every recording and alerting expression is evaluated
through ``/api/v1/query`` and must return at least one series; finally the sidecar is
stopped and the "sidecar down" alert expression must return one too.

Kafka lag expressions need a Kafka source in the sidecar; without one they are only checked
to be valid PromQL (Prometheus accepts them), and the printed table says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadow.api import PIPELINE
from shadow.app import build_app
from shadow.config import load_settings
from shadow.demo import DEMO_POLICY, generate, timeline
from shadow.pipeline import Pipeline
from shadow.policy import Policy, parse_policy
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

pytestmark = pytest.mark.slow

JOB = 'up{job="shadow-sidecar"}'
KAFKA_LAG = ("shadow_kafka_consumer_lag_messages", "topic:shadow_kafka_consumer_lag_messages")
SIDECAR_DOWN = "rules / shadow-sidecar.alerts / ShadowSidecarDown"


def feed_policy() -> Policy:
    """The demo policy with gates a few hundred events can clear: refunds climb to L3 (and
    hold L3 only while critical misses stay within 5); invoices wait for approval of L1."""
    doc = yaml.safe_load(DEMO_POLICY)
    refund = doc["task_types"]["refund_request"]["autonomy"]
    refund["gates"] = {
        "L1": {"agreement": 0.80, "min_samples": 20},
        "L2": {"agreement": 0.85, "min_samples": 40},
        "L3": {"agreement": 0.90, "min_samples": 80, "max_critical": 5},
    }
    invoice = doc["task_types"]["invoice_match"]["autonomy"]
    invoice["mode"] = "propose"
    invoice["gates"]["L1"] = {"agreement": 0.70, "min_samples": 30}
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
        before = (await pipeline.registry.agreement())["task_types"]
        await pipeline.evaluate()
        after = (await pipeline.registry.agreement())["task_types"]
        if {k: v["level"] for k, v in before.items()} == {k: v["level"] for k, v in after.items()}:
            return


async def test_every_panel_and_rule_returns_series(tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    AGENT.degraded = False
    settings = load_settings(
        db=str(tmp_path / "shadow.duckdb"),
        agent="tests.dashboards.feed_agent:AGENT",
        host="127.0.0.1",
        port=0,
        agent_concurrency=8,
        agent_retries=0,
        expire_interval=3600.0,
    )
    app = build_app(settings, policy=feed_policy(), registry=CollectorRegistry())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    prometheus: Prometheus | None = None
    stopped = False
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        prometheus = await Prometheus(
            binary, tmp_path / "prometheus", [f"127.0.0.1:{port}"]
        ).start()
        prom = prometheus

        async def scraped_twice() -> bool:
            return bool(await prom.query(f"count_over_time({JOB}[1m]) >= 2 and {JOB} == 1"))

        # Traffic starts after Prometheus has seen the counters, so increase() sees it all.
        await poll(scraped_twice, what="two scrapes of the sidecar", within=30.0)
        pipeline = app[PIPELINE]
        async with aiohttp.ClientSession() as session:
            await feed(session, base, timeline(generate(240, seed=7)))
            await settle(pipeline)
            doc = await pipeline.registry.agreement()
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
            # A bad agent release.
            AGENT.degraded = True
            await feed(session, base, timeline(generate(160, seed=8)))
            await settle(pipeline)
        doc = await pipeline.registry.agreement()
        refund = doc["task_types"]["refund_request"]
        # Demoted from L3 by critical misses beyond max_critical; the upper bound still
        # clears the L2 gate, the lower bound is under it (the near-gate alert's case).
        assert (refund["level"], refund["critical"] > 5) == ("L2", True), refund
        assert refund["lower"] < 0.85 < refund["upper"], refund

        live = [q for q in all_queries() if q.where != SIDECAR_DOWN]
        counts = await evaluate_all(prom, live)
        rules = await prom.api("rules")
        broken = [
            (r["name"], r.get("lastError"))
            for g in rules["groups"]
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert not broken, broken

        await runner.cleanup()
        stopped = True

        async def down() -> bool:
            return bool(await prom.query(f"{JOB} == 0"))

        await poll(down, what="Prometheus to see the sidecar down", within=30.0)
        down_query = next(q for q in all_queries() if q.where == SIDECAR_DOWN)
        counts.update(await evaluate_all(prom, [down_query]))
        print_table(counts)
        missing = [where for where, n in counts.items() if n == 0]
        assert not missing, f"expressions that returned no series: {missing}"
    finally:
        AGENT.degraded = False
        if not stopped:
            await runner.cleanup()
        if prometheus is not None:
            await prometheus.close()


def all_queries() -> list[Query]:
    out: list[Query] = []
    for path in sorted(GRAFANA_DIR.glob("*.json")):
        panels, _ = dashboard_queries(path)
        out.extend(panels)
    out.extend(q for _, q in rule_exprs())
    return out


def is_kafka_lag(q: Query) -> bool:
    return any(name in q.expr for name in KAFKA_LAG)


async def evaluate_all(prom: Prometheus, queries: list[Query]) -> dict[str, int]:
    """Series count per query (-1: valid PromQL, no Kafka data to prove it with). Polls
    until every data-backed query has series (recording rules need an evaluation or two)."""
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
            counts[q.where] = len(result) if result or not is_kafka_lag(q) else -1
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
        shown = "valid PromQL; no Kafka source, no data" if n == -1 else str(n)
        print(f"  {shown:>8}  {where}")
