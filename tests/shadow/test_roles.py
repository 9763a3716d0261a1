"""Roles bound to credentials (shadow.roles, shadow.credentials) through the real app: a
tokens file of named credentials, each request checked for the role it needs and the task
type it acts on (401 unknown, 403 missing role or task type, each counted), the audit actor
is the credential's name (a request naming another is refused, nothing recorded), the file
is re-read on change (a broken one keeps the last good tokens, says so on /readyz and once in
the log), ``shadow token add`` prints a secret once and keeps only its digest. The simple
mode (only SHADOW_ADMIN_TOKEN) is covered by the rest of the suite, which runs in it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadow.errors import ConfigError
from shadow.roles import Credential, Keyring, add_token, digest, parse_tokens
from tests.conftest import wait_for
from tests.shadow.conftest import RawHttpFactory, Sidecar, SidecarFactory
from tests.shadow.test_api import event

SECRETS = {
    "viewer": "viewer-secret-0123456789",
    "reviewer": "reviewer-secret-0123456789",
    "operator": "operator-secret-0123456789",
    "refund-operator": "refund-operator-secret-0123456789",
    "approver": "approver-secret-0123456789",
    "host": "host-secret-0123456789",
    "ingest": "ingest-secret-0123456789",
    "admin": "admin-secret-0123456789",
}


def tokens_doc() -> dict[str, Any]:
    roles = {
        "viewer": ["viewer"],
        "reviewer": ["reviewer"],
        "operator": ["operator"],
        "refund-operator": ["operator"],
        "approver": ["approver"],
        "host": ["host"],
        "ingest": ["ingest"],
        "admin": ["admin"],
    }
    entries: list[dict[str, Any]] = []
    for name, secret in SECRETS.items():
        entry: dict[str, Any] = {"name": name, "roles": roles[name], "sha256": digest(secret)}
        if name == "refund-operator":
            entry["task_types"] = ["refund"]
        entries.append(entry)
    return {"tokens": entries}


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}"}


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(tokens_doc()))
    return path


@pytest.fixture
async def strict(sidecar: SidecarFactory, tokens_file: Path) -> Sidecar:
    return await sidecar(tokens_file=tokens_file, admin_token=None)


async def refusals(sc: Sidecar, role: str, status: int) -> float:
    res = await sc.get("/metrics", headers=bearer("viewer"))
    assert res.status == 200, res.body
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(str(res.body)):
        for sample in family.samples:
            if sample.name == "shadow_auth_refusals_total" and sample.labels == {
                "role": role,
                "status": str(status),
            }:
                return float(sample.value)
    return 0.0


# -- the tokens file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (
            {"tokens": [{"name": "a", "roles": ["approve"], "sha256": "0" * 64}]},
            "tokens[0].roles[0]: unknown role 'approve'",
        ),
        (
            {"tokens": [{"name": "a", "roles": ["viewer"], "sha256": "xyz"}]},
            "tokens[0].sha256: expected the 64",
        ),
        ({"tokens": [{"name": "a", "roles": ["viewer"], "sha256": "A" * 64}]}, "tokens[0].sha256"),
        (
            {"tokens": [{"name": "a", "roles": [], "sha256": "0" * 64}]},
            "tokens[0].roles: expected a non-empty list",
        ),
        ({"tokens": [{"name": "a\nb", "roles": ["viewer"], "sha256": "0" * 64}]}, "tokens[0].name"),
        (
            {"tokens": [{"name": "a", "roles": ["viewer"], "sha256": "0" * 64, "secret": "x"}]},
            "tokens[0]: unknown key(s) secret",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "roles": ["viewer"], "sha256": "0" * 64},
                    {"name": "a", "roles": ["viewer"], "sha256": "1" * 64},
                ]
            },
            "tokens[1].name: 'a' is used twice",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "roles": ["viewer"], "sha256": "0" * 64},
                    {"name": "b", "roles": ["viewer"], "sha256": "0" * 64},
                ]
            },
            "tokens[1].sha256: the same secret as 'a'",
        ),
        (
            {
                "tokens": [
                    {
                        "name": "a",
                        "roles": ["viewer"],
                        "sha256": "0" * 64,
                        "task_types": ["no such!"],
                    }
                ]
            },
            "tokens[0].task_types[0]",
        ),
        (
            {"tokens": [{"name": "a", "roles": ["viewer"], "sha256": "0" * 64, "task_types": []}]},
            "tokens[0].task_types",
        ),
        ({"tokens": "all"}, "tokens: expected a list"),
        ({"users": []}, "expected a mapping with one key"),
    ],
)
def test_a_tokens_file_mistake_is_named_by_its_key_path(doc: Any, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tokens(doc, "tokens.yaml")
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_role_but_ingest_and_host_reads_and_admin_does_everything() -> None:
    def c(*roles: str, types: set[str] | None = None) -> Credential:
        return Credential("x", frozenset(roles), None if types is None else frozenset(types))

    for role in ("reviewer", "approver", "operator", "admin", "viewer"):
        assert c(role).has("viewer")
    assert not c("ingest").has("viewer")
    assert not c("host").has("viewer")
    assert not c("operator").has("approver")
    assert all(c("admin").has(r) for r in ("operator", "approver", "host", "ingest", "reviewer"))
    limited = c("operator", types={"refund"})
    assert limited.acts_on("refund")
    assert not limited.acts_on("appeal")
    assert not limited.acts_on(None)  # every task type: a freeze
    assert c("operator").acts_on(None)


def test_a_secret_is_looked_up_by_its_digest_and_never_kept(tokens_file: Path) -> None:
    ring = Keyring(tokens_file=tokens_file)
    found = ring.identify(SECRETS["approver"])
    assert found is not None
    assert found.name == "approver"
    assert ring.identify("approver") is None
    assert ring.identify("") is None
    assert ring.identify(SECRETS["approver"] + " ") is None
    assert ring.identify("\udcff\x00") is None  # undecodable bytes, NUL: no credential, no error
    text = tokens_file.read_text()
    assert all(secret not in text for secret in SECRETS.values())


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_good_tokens(
    tokens_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    ring = Keyring(tokens_file=tokens_file, clock=lambda: now[0])
    secret = add_token(tokens_file, "late-viewer", ["viewer"])
    assert ring.identify(secret) is None  # not looked at again within a second
    now[0] += 2
    found = ring.identify(secret)
    assert found is not None
    assert found.name == "late-viewer"

    caplog.set_level(logging.ERROR, logger="shadow.roles")
    tokens_file.write_text("tokens: [{name: broken")
    for _ in range(3):
        now[0] += 2
        assert ring.identify(secret) is not None  # the last good tokens stay in force
    problem = ring.not_ready()
    assert problem is not None
    assert "not valid YAML" in problem
    assert len([r for r in caplog.records if r.name == "shadow.roles"]) == 1  # once per change

    tokens_file.write_text(yaml.safe_dump(tokens_doc()))  # late-viewer revoked
    now[0] += 2
    assert ring.identify(secret) is None
    assert ring.not_ready() is None


def test_token_add_writes_a_digest_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "new" / "tokens.yaml"
    secret = add_token(path, "refunds-approver", ["approver"], ["refund"])
    doc = yaml.safe_load(path.read_text())
    assert doc == {
        "tokens": [
            {
                "name": "refunds-approver",
                "roles": ["approver"],
                "sha256": hashlib.sha256(secret.encode()).hexdigest(),
                "task_types": ["refund"],
            }
        ]
    }
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ConfigError, match="used twice"):
        add_token(path, "refunds-approver", ["viewer"])
    assert len(yaml.safe_load(path.read_text())["tokens"]) == 1  # the refused one left no trace


def test_the_token_add_command_prints_the_secret_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    shadow = [sys.executable, "-m", "shadow.cli"]
    done = subprocess.run(
        [
            *shadow,
            "token",
            "add",
            "night-ops",
            "--role",
            "operator",
            "--role",
            "approver",
            "--file",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")},
    )
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip()
    assert len(secret) >= 32
    assert secret not in path.read_text()
    found = Keyring(tokens_file=path).identify(secret)
    assert found == Credential("night-ops", frozenset({"operator", "approver"}))
    bad = subprocess.run(
        [*shadow, "token", "add", "x", "--role", "root", "--file", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "invalid choice: 'root'" in bad.stderr


# -- through the app --------------------------------------------------------------------------


async def test_reads_need_a_viewer_and_say_what_is_missing(strict: Sidecar) -> None:
    for path in ("/v1/autonomy", "/v1/agreement", "/v1/autonomy/refund/history", "/metrics"):
        res = await strict.get(path)
        assert res.status == 401, (path, res.body)
        assert "viewer" in res.body["error"]
        res = await strict.get(path, headers={"Authorization": "Bearer not-a-token"})
        assert res.status == 401
        assert "unknown token" in res.body["error"]
        for name in ("viewer", "reviewer", "operator", "approver", "admin"):
            res = await strict.get(path, headers=bearer(name))
            assert res.status == 200, (path, name, res.body)
        for name in ("ingest", "host"):
            res = await strict.get(path, headers=bearer(name))
            assert res.status == 403, (path, name)
            assert "needs viewer" in res.body["error"]
    # Health and the API's own description stay open (probes, clients generating code).
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await strict.get(path)).status == 200, path
    assert await refusals(strict, "viewer", 401) >= 8
    assert await refusals(strict, "viewer", 403) >= 8


async def test_metrics_can_be_left_open_for_the_scraper(
    sidecar: SidecarFactory, tokens_file: Path
) -> None:
    sc = await sidecar(tokens_file=tokens_file, admin_token=None, metrics_open=True)
    assert (await sc.get("/metrics")).status == 200
    assert (await sc.get("/v1/autonomy")).status == 401


async def test_each_write_needs_its_role(strict: Sidecar) -> None:
    level = {"level": "L1", "reason": "pilot"}
    for name in ("viewer", "reviewer", "approver", "host", "ingest"):
        res = await strict.put("/v1/autonomy/refund", json_body=level, headers=bearer(name))
        assert res.status == 403, (name, res.body)
        assert "this needs operator" in res.body["error"]
    res = await strict.post(
        "/v1/autonomy/refund/approve", json_body={"to": "L1"}, headers=bearer("operator")
    )
    assert res.status == 403
    assert "this needs approver" in res.body["error"]
    assert (await strict.post("/v1/freeze", json_body={}, headers=bearer("approver"))).status == 403
    assert (
        await strict.get("/v1/route/refund?event_id=e-1", headers=bearer("operator"))
    ).status == 403
    assert (await strict.get("/v1/route/refund?event_id=e-1", headers=bearer("host"))).status == 200
    assert (await strict.get("/v1/route/refund?event_id=e-2")).status == 401
    doc = await strict.get("/v1/autonomy/refund", headers=bearer("viewer"))
    assert doc.body["level"] == "L0"  # nothing moved
    assert await strict.pipeline.store.audit_log(limit=100) == []
    assert await refusals(strict, "operator", 403) >= 5


async def test_the_audit_actor_is_the_credentials_name_and_no_other(strict: Sidecar) -> None:
    body = {"level": "L1", "reason": "pilot"}
    res = await strict.put(
        "/v1/autonomy/refund", json_body={**body, "actor": "alice"}, headers=bearer("operator")
    )
    assert res.status == 400, res.body
    assert "the credential's name (operator)" in res.body["error"]
    res = await strict.put(
        "/v1/autonomy/refund",
        json_body=body,
        headers={**bearer("operator"), "X-Shadow-Actor": "alice"},
    )
    assert res.status == 400
    assert await strict.pipeline.store.audit_log(limit=100) == []  # nothing recorded
    assert await refusals(strict, "actor", 400) == 2
    res = await strict.put(
        "/v1/autonomy/refund", json_body={**body, "actor": "operator"}, headers=bearer("operator")
    )
    assert res.status == 200, res.body
    res = await strict.put("/v1/autonomy/appeal", json_body=body, headers=bearer("admin"))
    assert res.status == 200, res.body
    actors = sorted(e.actor for _, e in await strict.pipeline.store.audit_log(limit=100))
    assert actors == ["admin", "operator"]


async def test_a_credential_limited_to_task_types_acts_on_them_only(strict: Sidecar) -> None:
    body = {"level": "L1", "reason": "pilot"}
    res = await strict.put("/v1/autonomy/refund", json_body=body, headers=bearer("refund-operator"))
    assert res.status == 200, res.body
    res = await strict.put("/v1/autonomy/appeal", json_body=body, headers=bearer("refund-operator"))
    assert res.status == 403
    assert "acts only on refund" in res.body["error"]
    res = await strict.post("/v1/freeze", json_body={}, headers=bearer("refund-operator"))
    assert res.status == 403
    assert "every task type" in res.body["error"]
    assert not (await strict.get("/v1/autonomy", headers=bearer("viewer"))).body["frozen"]
    # Reads are not limited.
    assert (
        await strict.get("/v1/autonomy/appeal", headers=bearer("refund-operator"))
    ).status == 200


async def test_ingest_needs_a_credential_with_the_ingest_role(strict: Sidecar) -> None:
    one = [event("e-1")]
    res = await strict.post("/v1/events", json_body=one)
    assert res.status == 401
    res = await strict.post("/v1/events", json_body=one, headers=bearer("viewer"))
    assert res.status == 401
    assert "ingest needs the ingest role" in res.body["error"]
    res = await strict.post("/v1/events", json_body=one, headers=bearer("ingest"))
    assert res.status in (200, 202), res.body
    res = await strict.post("/v1/events", json_body=[event("e-2")], headers=bearer("admin"))
    assert res.status in (200, 202), res.body
    assert await strict.pipeline.store.count("events") == 2


async def test_a_token_added_while_running_works_within_seconds_and_a_revoked_one_stops(
    strict: Sidecar, tokens_file: Path
) -> None:
    secret = add_token(tokens_file, "new-viewer", ["viewer"])
    auth = {"Authorization": f"Bearer {secret}"}

    async def accepted() -> bool:
        return (await strict.get("/v1/autonomy", headers=auth)).status == 200

    await wait_for(accepted, "the new token accepted", tries=200)
    rewrite(tokens_file, "tokens: [")

    async def says_so() -> bool:
        res = await strict.get("/readyz")
        return res.status == 503 and "tokens file not reloaded" in res.body["error"]

    await wait_for(says_so, "/readyz naming the broken tokens file", tries=200)
    assert await accepted()  # the last good tokens are still in force
    rewrite(tokens_file, yaml.safe_dump(tokens_doc()))

    async def revoked() -> bool:
        return (await strict.get("/v1/autonomy", headers=auth)).status == 401

    await wait_for(revoked, "the revoked token refused", tries=200)
    assert (await strict.get("/readyz")).status == 200


async def test_hostile_credentials_get_a_clear_refusal(
    strict: Sidecar, raw_http: RawHttpFactory
) -> None:
    for value in ("Bearer", "Bearer  ", "Basic dmlld2VyOnNlY3JldA==", "Bearer viewer"):
        res = await strict.get("/v1/autonomy", headers={"Authorization": value})
        assert res.status == 401, value
    # What a client library will not send: control characters, bytes that are not UTF-8,
    # a NUL, the right secret with a control character after it.
    secret = SECRETS["viewer"].encode()
    for token in (b"\x7f", b"\xff\xfe", b"a\x00b", secret + b"\x01", b"\xed\xb3\xbf"):
        conn = await raw_http(strict.url)
        await conn.send(
            b"GET /v1/autonomy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token
            + b"\r\nConnection: close\r\n\r\n"
        )
        answer = await conn.response()
        assert answer.status in (400, 401), (token, answer)
    # A very long token is looked up like any other (one digest), not echoed back.
    res = await strict.get("/v1/autonomy", headers={"Authorization": "Bearer " + "x" * 6000})
    assert res.status == 401
    assert "x" * 100 not in res.body["error"]
    # Many refusals at once: each answered, each counted.
    before = await refusals(strict, "viewer", 401)
    results = await asyncio.gather(
        *(
            strict.get("/v1/autonomy", headers={"Authorization": f"Bearer wrong-{i}"})
            for i in range(50)
        )
    )
    assert {r.status for r in results} == {401}
    assert await refusals(strict, "viewer", 401) == before + 50
