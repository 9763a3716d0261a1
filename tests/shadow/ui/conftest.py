"""Fixtures of the console's tests: a real sidecar (build_app, aiohttp on a loopback port, a
DuckDB file) with a tokens file of every role, a real fake agent, a real upstream MCP server
for held tool writes, and evidence ingested through the API: ``refund`` with disagreements to
review, ``appeal`` with a proposal waiting (its L2 and L3 need two approvers)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from shadow.roles import digest
from tests.shadow.conftest import AgentServerFactory, Reply, Sidecar, SidecarFactory, agree_reply
from tests.shadow.gateway.conftest import (  # noqa: F401 (fixtures used by the tests here)
    Upstream,
    UpstreamFactory,
    upstream,
    upstream_token,
)

ROLES: dict[str, dict[str, Any]] = {
    "viewer": {"roles": ["viewer"]},
    "reviewer": {"roles": ["reviewer"]},
    "approver-1": {"roles": ["approver"]},
    "approver-2": {"roles": ["approver"]},
    "refund-approver": {"roles": ["approver"], "task_types": ["refund"]},
    "operator": {"roles": ["operator"]},
    "ingest": {"roles": ["ingest"]},
    "host": {"roles": ["host"]},
    "boss": {"roles": ["admin"]},
}


def secret(name: str) -> str:
    return f"console-secret-of-{name}"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret(name)}"}


def policy(upstream_url: str) -> str:
    return f"""
tools:
  backoffice: {{url: "{upstream_url}", headers: {{Authorization: "env:BACKOFFICE_TOKEN"}}}}
task_types:
  refund:
    segments: [eu, us]
    redact: [payload.customer.email]
    compare:
      fields:
        action: {{match: exact, critical: true}}
        amount: {{match: number, abs: 0.01}}
      unlisted: ignore
    review:
      claim_ttl: 10m
      agreement_share: 0   # the keyboard test reviews disagreements only (no chance draw)
    autonomy:
      start: L0
      ceiling: L4
      mode: propose
      gates:
        L1: {{agreement: 0.5, min_samples: 1000}}
        L2: {{agreement: 0.5, min_samples: 1000}}
        L3: {{agreement: 0.5, min_samples: 1000}}
        L4: {{agreement: 0.5, min_samples: 1000}}
      audit_rate: 0.5
    tools:
      allow: [get_order, issue_refund, cancel_order]
      read: [get_*]
      write: [issue_refund]
  appeal:
    compare:
      fields:
        action: {{match: exact, critical: true}}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L3
      mode: propose
      two_person: [L2, L3]
      gates:
        L1: {{agreement: 0.5, min_samples: 5}}
        L2: {{agreement: 0.55, min_samples: 10}}
        L3: {{agreement: 0.9, min_samples: 500}}
"""


def answer(request: dict[str, Any]) -> Reply:
    """The agent decides what the event's payload says it will (``expect``)."""
    expect = request["payload"].get("expect") or {"action": "approve"}
    body = agree_reply(expect).body
    assert isinstance(body, dict)
    if request["task_type"] == "refund":
        body["actions"] = [{"tool": "issue_refund", "args": {"order_id": "o-1", "amount": 40}}]
    return Reply(200, body)


@dataclass(eq=False)
class Console:
    """A running sidecar with the console's data, and its upstream MCP server."""

    sc: Sidecar
    upstream: Upstream

    @property
    def url(self) -> str:
        return self.sc.url


async def ingest(sc: Sidecar, task_type: str, agree: int, disagree: int) -> None:
    """``agree`` compared cases where the human decided as the agent, then ``disagree``
    where the human denied what the agent approved (amount off too)."""
    ids = [f"{task_type}-{i}" for i in range(agree + disagree)]
    events = [
        {
            "event_id": e,
            "task_type": task_type,
            "segment": ("eu", "us", "apac")[k % 3],
            "payload": {
                "expect": {"action": "approve", "amount": 40},
                "customer": {"email": f"{e}@example.com", "tier": "gold"},
            },
        }
        for k, e in enumerate(ids)
    ]
    outcomes = [
        {
            "event_id": e,
            "decision": {"action": "approve", "amount": 40}
            if k < agree
            else {"action": "deny", "amount": 0},
            "actions": [{"tool": "issue_refund", "args": {"order_id": "o-1", "amount": 40}}]
            if k < agree
            else [],
            "decided_by": "ops/jane",
        }
        for k, e in enumerate(ids)
    ]
    for path, records in (("/v1/events", events), ("/v1/outcomes", outcomes)):
        res = await sc.post(path, json_body=records, headers=auth("ingest"))
        assert res.status == 202, res.body
    await sc.pipeline.drain()
    await sc.pipeline.evaluate()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "console-tokens.yaml"
    entries = [
        {"name": name, "sha256": digest(secret(name)), **body} for name, body in ROLES.items()
    ]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


@pytest.fixture
async def console(
    sidecar: SidecarFactory,
    agent_server: AgentServerFactory,
    upstream: UpstreamFactory,  # noqa: F811 (the fixture imported above)
    tokens_file: Path,
) -> Console:
    up = await upstream()
    agent = await agent_server(answer)
    sc = await sidecar(
        policy=policy(up.url),
        agent=agent.url,
        tokens_file=tokens_file,
        admin_token=None,
        gateway_approval_wait=0.0,
        metrics_open=True,
    )
    await ingest(sc, "refund", 30, 12)
    await ingest(sc, "appeal", 30, 0)
    bad = await sc.post(
        "/v1/events",
        data='{"event_id": "broken", "task_type": "refund"}\nnot json\n',
        headers={**auth("ingest"), "Content-Type": "application/x-ndjson"},
    )
    assert bad.status == 400, bad.body
    return Console(sc, up)


CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@dataclass(eq=False)
class Browserless:
    """A cookie-keeping HTTP client of the console (what a browser sends, by hand)."""

    url: str
    session: aiohttp.ClientSession

    async def get(self, path: str, **kw: Any) -> tuple[int, str, dict[str, str]]:
        async with self.session.get(self.url + path, allow_redirects=False, **kw) as res:
            return res.status, await res.text(), dict(res.headers)

    async def post(
        self, path: str, form: dict[str, str] | str | bytes, **kw: Any
    ) -> tuple[int, str, dict[str, str]]:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kw.pop("headers", {})}
        data = form if isinstance(form, str | bytes) else aiohttp.FormData(form)()
        async with self.session.post(
            self.url + path, data=data, headers=headers, allow_redirects=False, **kw
        ) as res:
            return res.status, await res.text(), dict(res.headers)

    async def csrf(self, path: str = "/ui/") -> str:
        status, body, _ = await self.get(path)
        assert status == 200, (status, body[:500])
        found = CSRF.search(body)
        assert found is not None, body[:2000]
        return found.group(1)

    async def sign_in(self, name: str) -> None:
        status, body, _ = await self.get("/ui/signin")
        assert status == 200
        token = CSRF.search(body)
        assert token is not None
        status, body, headers = await self.post(
            "/ui/signin", {"csrf": token.group(1), "token": secret(name)}
        )
        assert status == 303, (status, body[:500])
        assert headers["Location"] == "/ui/"


@pytest.fixture
async def browserless() -> AsyncIterator[Any]:
    """``browserless(url)`` opens a :class:`Browserless` client; all are closed after."""
    opened: list[aiohttp.ClientSession] = []

    def make(url: str) -> Browserless:
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        opened.append(session)
        return Browserless(url, session)

    yield make
    for session in opened:
        await session.close()
