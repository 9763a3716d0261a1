"""The two-person rule (``autonomy.two_person``), adversarially, through the real app with a
tokens file: an approval to a listed level, and a manual set to one above what the evidence
earned, is recorded as a first approval and applied by a second, different approver; the same
credential twice, a credential that may not approve, a change in between (which voids the
first approval), concurrent approvals and a restart between the two are each tried."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from shadow.app import build_app
from shadow.errors import ConfigError, PolicyError
from shadow.ladder import Ladder
from shadow.model import AuditEntry, Level
from shadow.policy import parse_policy
from shadow.store import Store
from tests.conftest import FakeClock
from tests.shadow.conftest import (
    AgentServerFactory,
    Sidecar,
    SidecarFactory,
    clean_settings,
    secret_auth,
    write_tokens,
)
from tests.shadow.test_api_autonomy import answer

POLICY = """
task_types:
  appeal:
    compare: {fields: {action: {match: exact, critical: true}}, unlisted: ignore}
    autonomy:
      ceiling: L3
      mode: propose
      two_person: [L2, L3]
      gates:
        L1: {agreement: 0.5, min_samples: 5}
        L2: {agreement: 0.55, min_samples: 10}
        L3: {agreement: 0.6, min_samples: 15, max_critical: 0}
"""

ROLES = {
    "lead-1": ["operator", "approver"],
    "lead-2": ["operator", "approver"],
    "approver-1": ["approver"],
    "approver-2": ["approver"],
    "operator": ["operator"],
    "ingest": ["ingest"],
}


auth = secret_auth


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.yaml", {n: {"roles": r} for n, r in ROLES.items()})


@pytest.fixture
async def sc(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, tokens_file: Path
) -> Sidecar:
    agent = await agent_server(answer)
    return await sidecar(policy=POLICY, agent=agent.url, tokens_file=tokens_file, admin_token=None)


async def state(sc: Sidecar) -> dict[str, Any]:
    res = await sc.get("/v1/autonomy/appeal", headers=auth("lead-1"))
    assert res.status == 200, res.body
    return dict(res.body)


async def set_level(sc: Sidecar, who: str, level: str) -> Any:
    return await sc.put("/v1/autonomy/appeal", json_body={"level": level}, headers=auth(who))


async def audited(sc: Sidecar) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for _, e in reversed(await sc.pipeline.store.audit_log(limit=100))]


async def evidence(sc: Sidecar, count: int) -> None:
    ids = [f"appeal-{i}" for i in range(count)]
    events = [
        {"event_id": e, "task_type": "appeal", "payload": {"expect": {"action": "approve"}}}
        for e in ids
    ]
    outcomes = [{"event_id": e, "decision": {"action": "approve"}} for e in ids]
    for path, records in (("/v1/events", events), ("/v1/outcomes", outcomes)):
        res = await sc.post(path, json_body=records, headers=auth("ingest"))
        assert res.status == 202, res.body
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()


async def test_a_set_above_what_was_earned_needs_two_different_approvers(sc: Sidecar) -> None:
    res = await set_level(sc, "lead-1", "L2")
    assert res.status == 200, res.body
    assert res.body["applied"] is False
    assert res.body["partial"]["by"] == "lead-1"
    assert (res.body["partial"]["from"], res.body["partial"]["to"]) == ("L0", "L2")
    doc = await state(sc)
    assert doc["level"] == "L0"
    assert doc["partial_approval"]["by"] == "lead-1"

    res = await set_level(sc, "lead-1", "L2")  # the same credential again
    assert res.status == 403
    assert "different credential" in res.body["error"]
    res = await set_level(sc, "operator", "L2")  # may set, may not approve
    assert res.status == 403
    assert "may not approve" in res.body["error"]
    assert (await state(sc))["level"] == "L0"

    res = await set_level(sc, "lead-2", "L2")
    assert res.status == 200, res.body
    assert res.body["applied"] is True
    assert "two approvals: lead-1, lead-2" in res.body["reason"]
    doc = await state(sc)
    assert doc["level"] == "L2"
    assert doc["partial_approval"] is None
    assert await audited(sc) == [("partial_approval", "lead-1"), ("manual_set", "lead-2")]


async def test_a_set_the_rule_does_not_cover_needs_one(sc: Sidecar) -> None:
    res = await set_level(sc, "operator", "L1")  # L1 is not listed
    assert res.status == 200, res.body
    assert res.body["applied"] is True
    res = await set_level(sc, "operator", "L0")  # lowering never needs two
    assert res.body["applied"] is True


async def test_a_change_in_between_voids_the_first_approval(sc: Sidecar) -> None:
    assert (await set_level(sc, "lead-1", "L2")).body["applied"] is False
    assert (await set_level(sc, "operator", "L1")).body["applied"] is True
    assert (await state(sc))["partial_approval"] is None
    res = await set_level(sc, "lead-2", "L2")  # a first approval again, not a second
    assert res.body["applied"] is False
    assert res.body["partial"]["by"] == "lead-2"
    assert res.body["partial"]["from"] == "L1"
    assert (await state(sc))["level"] == "L1"


async def test_concurrent_approvals_apply_once(sc: Sidecar) -> None:
    both = await asyncio.gather(set_level(sc, "lead-1", "L2"), set_level(sc, "lead-2", "L2"))
    assert sorted(r.body["applied"] for r in both) == [False, True]
    assert (await state(sc))["level"] == "L2"
    actions = [a for a, _ in await audited(sc)]
    assert actions == ["partial_approval", "manual_set"]

    await set_level(sc, "operator", "L1")
    same = await asyncio.gather(*(set_level(sc, "lead-1", "L2") for _ in range(4)))
    assert sorted(r.status for r in same) == [200, 403, 403, 403]
    assert (await state(sc))["level"] == "L1"


async def test_a_proposal_to_a_listed_level_needs_two_approvers(sc: Sidecar) -> None:
    await evidence(sc, 10)
    pending = (await state(sc))["proposal"]
    assert (pending["from_level"], pending["to_level"]) == ("L0", "L1")
    res = await sc.post(
        "/v1/autonomy/appeal/approve", json_body={"to": "L1"}, headers=auth("approver-1")
    )
    assert res.body["applied"] is True  # L1 is not listed: one approver
    pending = (await state(sc))["proposal"]
    assert pending["to_level"] == "L2"
    body = {"proposal_id": pending["id"]}
    res = await sc.post("/v1/autonomy/appeal/approve", json_body=body, headers=auth("approver-1"))
    assert res.body["applied"] is False
    assert res.body["partial"]["key"] == pending["id"]
    res = await sc.post("/v1/autonomy/appeal/approve", json_body=body, headers=auth("approver-1"))
    assert res.status == 403
    res = await sc.post("/v1/autonomy/appeal/approve", json_body=body, headers=auth("approver-2"))
    assert res.status == 200, res.body
    assert res.body["applied"] is True
    assert (await state(sc))["level"] == "L2"


async def test_the_first_approval_survives_a_restart(
    tmp_path: Path, clock: FakeClock, no_shadow_env: None
) -> None:
    policy = parse_policy(POLICY)
    async with Store(tmp_path / "s.duckdb") as store:
        ladder = Ladder(store, policy, clock)
        await ladder.load()
        first = await ladder.set_level("appeal", Level.L2, actor="lead-1", reason="pilot")
        assert first.partial is not None
        assert not first.applied
    async with Store(tmp_path / "s.duckdb") as store:
        again = Ladder(store, policy, clock)
        await again.load()
        waiting = again.agreement()["task_types"]["appeal"]["partial_approval"]
        assert waiting["by"] == "lead-1"
        second = await again.set_level("appeal", Level.L2, actor="lead-2", reason="pilot")
        assert second.applied
        assert again.level("appeal") == Level.L2
    async with Store(tmp_path / "s.duckdb") as store:
        third = Ladder(store, policy, clock)
        await third.load()
        assert third.agreement()["task_types"]["appeal"]["partial_approval"] is None


async def test_a_first_approval_is_found_behind_any_number_of_other_audit_entries(
    tmp_path: Path, clock: FakeClock, no_shadow_env: None
) -> None:
    """The gateway's refusals and reviewers' verdicts are audited for the same task type;
    however many follow a first approval, a restart still finds it waiting."""
    policy = parse_policy(POLICY)
    async with Store(tmp_path / "s.duckdb") as store:
        ladder = Ladder(store, policy, clock)
        await ladder.load()
        first = await ladder.set_level("appeal", Level.L2, actor="lead-1", reason="pilot")
        assert first.partial is not None
        noise = [
            AuditEntry(clock(), "appeal", "agent", "tool_refused", None, None, f"call {i}")
            for i in range(120)
        ]
        await store.append_audit(noise)
    async with Store(tmp_path / "s.duckdb") as store:
        again = Ladder(store, policy, clock)
        await again.load()
        waiting = again.agreement()["task_types"]["appeal"]["partial_approval"]
        assert waiting is not None
        assert waiting["by"] == "lead-1"


def test_the_rule_without_named_credentials_is_refused_at_start(tmp_path: Path) -> None:
    settings = clean_settings(tmp_path, "two")
    with pytest.raises(ConfigError, match="two_person needs named credentials"):
        build_app(settings, policy=parse_policy(POLICY))


@pytest.mark.parametrize(
    ("value", "says"),
    [("L2", "expected a list"), (["L9"], "two_person[0]: unknown level"), (["L0"], "L0 needs")],
)
def test_a_wrong_two_person_list_is_named(value: object, says: str) -> None:
    text = POLICY.replace("two_person: [L2, L3]", f"two_person: {value!r}".replace("'", '"'))
    with pytest.raises(PolicyError, match=re.escape(says)):
        parse_policy(text)
