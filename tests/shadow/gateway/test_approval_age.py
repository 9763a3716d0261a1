"""The oldest held write's age (``shadow_tool_approval_oldest_seconds``, what the
ShadowToolApprovalsWaiting alert reads) grows while the write waits and nothing else happens,
and drops to 0 once it is decided."""

from __future__ import annotations

import asyncio

from tests.shadow.conftest import Sidecar, SidecarFactory, metric
from tests.shadow.gateway.conftest import UpstreamFactory, gateway_policy
from tests.shadow.gateway.test_gateway import live_url, refund, set_level


async def oldest(sc: Sidecar) -> float:
    value = metric(await sc.metrics(), "shadow_tool_approval_oldest_seconds", task_type="refund")
    assert value is not None
    return value


async def test_the_oldest_approvals_age_grows_while_it_waits_and_clears_when_decided(
    sidecar: SidecarFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    sc = await sidecar(policy=gateway_policy(up.url), gateway_approval_wait=0.0)
    await set_level(sc, "L2")
    held = await refund(await live_url(sc, "e-1"), 10.0)
    approval_id = held.structured_content["approval_id"]
    first = await oldest(sc)
    # No call, no decision from here on: only the clock moves. Bounded polling (at most
    # 30 s), a guard against a hang, not a timing.
    later = first
    for _ in range(300):
        await asyncio.sleep(0.1)
        later = await oldest(sc)
        if later >= first + 0.5:
            break
    assert later >= first + 0.5, (first, later)
    rejected = await sc.post(
        f"/v1/approvals/{approval_id}/reject", json_body={"reason": "no"}, headers=sc.admin
    )
    assert rejected.status == 200
    assert await oldest(sc) == 0.0
    samples = await sc.metrics()
    assert metric(samples, "shadow_tool_approvals_pending", task_type="refund") == 0
    assert up.writes() == []
