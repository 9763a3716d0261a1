"""The console's store reads (shadow.store.console) and ``GET /v1/dead-letters``, through the
real app (a DuckDB file, a fake agent on loopback): the evidence over time ends at the figures
``GET /v1/agreement`` shows, disagreements are found field by field and newest first, the audit
log reads newest first page by page, and dead letters page by page with their credential."""

from __future__ import annotations

from typing import Any

from tests.shadow.conftest import AgentServerFactory, Sidecar, SidecarFactory
from tests.shadow.test_api_autonomy import POLICY, answer, evidence


async def started(sidecar: SidecarFactory, agent_server: AgentServerFactory) -> Sidecar:
    agent = await agent_server(answer)
    return await sidecar(policy=POLICY, agent=agent.url)


async def test_the_series_ends_at_the_agreement_document(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    await evidence(sc, "appeal", 0, 150, wrong=20)
    store = sc.pipeline.store
    doc = (await sc.agreement())["task_types"]["appeal"]
    version = doc["agent_version"]
    series = await store.agreement_series("appeal", version)
    assert 1 < len(series) <= 60
    assert (series[-1].n, series[-1].agree) == (doc["n"], doc["agree"]) == (150, 130)
    assert [p.n for p in series] == sorted({p.n for p in series})
    assert all(0 <= p.agree <= p.n for p in series)
    # The first 20 cases disagree: the cumulative agreement climbs from 0.
    assert series[0].agree == 0
    few = await store.agreement_series("appeal", version, points=3)
    assert [p.n for p in few] == [50, 100, 150]
    assert await store.agreement_series("appeal", "no-such-version") == []


async def test_disagreements_field_by_field_and_newest_first(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    await evidence(sc, "appeal", 0, 30, wrong=4)
    store = sc.pipeline.store
    version = (await sc.agreement())["task_types"]["appeal"]["agent_version"]
    fields = await store.disagreeing_fields("appeal", version)
    assert [(f.path, f.misses, f.critical) for f in fields] == [("action", 4, 4)]
    recent = await store.recent_disagreements("appeal", version, limit=3)
    assert len(recent) == 3
    assert [r.at for r in recent] == sorted((r.at for r in recent), reverse=True)
    assert all(r.verdict == "disagree" and r.critical for r in recent)
    assert recent[0].fields[0][0] == "action"
    assert "deny" in recent[0].fields[0][1]


async def test_the_audit_log_newest_first_page_by_page(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    for reason in ("one", "two", "three"):
        res = await sc.post("/v1/freeze", json_body={"reason": reason}, headers=sc.admin)
        assert res.status == 200
    store = sc.pipeline.store
    everything = await store.audit_entries(limit=1000)
    newest = await store.audit_newest(limit=2)
    assert [e.id for e in newest] == [e.id for e in everything[::-1][:2]]
    older = await store.audit_newest(before=newest[-1].id, limit=1000)
    assert [e.id for e in newest + older] == [e.id for e in everything[::-1]]
    assert newest[0].entry_hash == everything[-1].entry_hash
    assert await store.audit_newest(before=everything[0].id) == []


async def dead_letters(sc: Sidecar, query: str = "", **kw: Any) -> Any:
    return await sc.get(f"/v1/dead-letters{query}", **kw)


async def test_dead_letters_page_by_page_with_the_admin_token(
    sidecar: SidecarFactory, agent_server: AgentServerFactory
) -> None:
    sc = await started(sidecar, agent_server)
    lines = "\n".join(
        f'{{"event_id": "bad-{i}", "task_type": "nope", "payload": {{}}}}' for i in range(3)
    )
    res = await sc.post(
        "/v1/events", data=lines + "\nnot json\n", headers={"Content-Type": "application/x-ndjson"}
    )
    assert res.status in (400, 422), res.body
    for i in range(3):  # conflicts are dead-lettered
        event = {"event_id": "same", "task_type": "appeal", "payload": {"v": i}}
        await sc.post("/v1/events", json_body=event)
    res = await dead_letters(sc, headers=sc.admin)
    assert res.status == 200, res.body
    total = res.body["total"]
    assert total == len(res.body["dead_letters"]) >= 2
    assert res.body["next"] is None
    ids = [d["id"] for d in res.body["dead_letters"]]
    assert ids == sorted(ids, reverse=True)
    first = res.body["dead_letters"][0]
    assert set(first) == {
        "id",
        "recorded_at",
        "source",
        "kind",
        "reason",
        "event_id",
        "location",
        "raw",
    }
    assert "conflict" in first["reason"] or "differ" in first["reason"]
    page = await dead_letters(sc, "?limit=1", headers=sc.admin)
    assert [d["id"] for d in page.body["dead_letters"]] == ids[:1]
    assert page.body["next"] == ids[0]
    rest = await dead_letters(sc, f"?before={ids[0]}&limit=1000", headers=sc.admin)
    assert [d["id"] for d in rest.body["dead_letters"]] == ids[1:]
    for bad in ("?limit=0", "?limit=1001", "?before=0", "?before=x", "?limit=1.5"):
        refused = await dead_letters(sc, bad, headers=sc.admin)
        assert refused.status == 400, bad
    # The simple mode keeps them from the open reads: they show what records held.
    assert (await dead_letters(sc)).status == 401
