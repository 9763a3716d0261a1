"""A live tools session (``POST /v1/sessions``) means the agent works the item for real: its
outcome must never count as blind evidence, whatever the level or the audit sample says,
even when the host never asked ``GET /v1/route``."""

from __future__ import annotations

from typing import Any

import pytest

from shadow.model import Handling, Level
from tests.shadow.conftest import AgentServerFactory, Sidecar, SidecarFactory, agree_reply
from tests.shadow.gateway.conftest import UpstreamFactory, gateway_policy


async def set_level(sc: Sidecar, level: str) -> None:
    res = await sc.put("/v1/autonomy/refund", json_body={"level": level}, headers=sc.admin)
    assert res.status == 200, res.body


async def session(sc: Sidecar, event_id: str) -> Any:
    body = {"task_type": "refund", "event_id": event_id}
    return await sc.post("/v1/sessions", json_body=body, headers=sc.admin)


@pytest.mark.parametrize("level", ["L0", "L1", "L2", "L3", "L4"])
async def test_a_live_session_takes_its_item_out_of_the_evidence(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, upstream: UpstreamFactory, level: str
) -> None:
    up = await upstream()
    agent = await agent_server(lambda body: agree_reply({"action": "approve"}))
    sc = await sidecar(policy=gateway_policy(up.url), agent=agent.url)
    await set_level(sc, level)
    task = sc.policy.task_types["refund"]
    ids = [f"live-{i}" for i in range(12)]
    for e in ids:
        res = await session(sc, e)
        assert res.status == 200, res.body
    await sc.pipeline.handling.flush()
    found = await sc.pipeline.store.handling_of(ids)
    for e in ids:
        acts = Level.parse(level) >= Level.L3 and not task.audited(e, Level.parse(level))
        assert found[e] is (Handling.AGENT if acts else Handling.ASSISTED), (level, e)
    # Outcomes for them that claim "blind" are overruled: no evidence grows.
    events = [{"event_id": e, "task_type": "refund", "payload": {}} for e in ids]
    outcomes = [
        {"event_id": e, "decision": {"action": "approve"}, "handled_by": "blind"} for e in ids
    ]
    assert (await sc.post_ndjson("/v1/events", events)).status == 202
    assert (await sc.post_ndjson("/v1/outcomes", outcomes)).status == 202
    await sc.pipeline.drain()
    doc = (await sc.agreement())["task_types"]["refund"]
    assert doc["n"] == 0
    accepted = doc["acceptance"]["agent"]["n"] + doc["acceptance"]["assisted"]["n"]
    assert accepted == len(ids)  # compared, and reported as acceptance


async def test_a_session_for_an_event_id_with_control_characters_is_refused(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url))
    res = await session(sc, "a\nb")
    assert res.status == 400, res.body
    assert "control characters" in str(res.body)
    await sc.pipeline.handling.flush()
    assert await sc.pipeline.store.handling_of(["a\nb"]) == {}
