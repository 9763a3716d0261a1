"""Console sign-in, sessions, CSRF and the refusals, over HTTP without a browser (a real
sidecar with a tokens file on loopback): a bad token, the cookie's attributes, a missing or
wrong CSRF token, another origin, a role that may not, a revoked token, hostile form text,
the security headers, and that neither the API takes the cookie nor the log holds the id."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadow.roles import Credential
from shadow.ui.render import CSP
from shadow.ui.session import Sessions
from tests.shadow.conftest import (
    ADMIN_TOKEN,
    AgentServerFactory,
    SidecarFactory,
    agree_reply,
    metric,
)
from tests.shadow.ui.conftest import CSRF, Browserless, Console, auth, secret

Client = Any  # the browserless factory


async def signed_in(browserless: Client, console: Console, name: str) -> Browserless:
    b: Browserless = browserless(console.url)
    await b.sign_in(name)
    return b


async def refusals(console: Console, role: str, status: str) -> float:
    return (
        metric(await console.sc.metrics(), "shadow_auth_refusals_total", role=role, status=status)
        or 0.0
    )


async def appeal_level(console: Console) -> str:
    res = await console.sc.get("/v1/autonomy/appeal", headers=auth("viewer"))
    return str(res.body["level"])


async def proposal(console: Console) -> str:
    res = await console.sc.get("/v1/autonomy/appeal", headers=auth("viewer"))
    return str(res.body["proposal"]["id"])


# -- signing in -------------------------------------------------------------------------------


async def test_a_wrong_token_is_a_401_page_and_counted(
    console: Console, browserless: Client
) -> None:
    b: Browserless = browserless(console.url)
    _, body, _ = await b.get("/ui/signin")
    token = CSRF.search(body)
    assert token is not None
    before = await refusals(console, "viewer", "401")
    status, body, _ = await b.post("/ui/signin", {"csrf": token.group(1), "token": "nope"})
    assert status == 401
    assert "unknown token" in body
    assert await refusals(console, "viewer", "401") == before + 1
    assert "shadow_session" not in {c.key for c in b.session.cookie_jar}


async def test_an_ingest_or_host_token_cannot_sign_in(
    console: Console, browserless: Client
) -> None:
    for name in ("ingest", "host"):
        b: Browserless = browserless(console.url)
        _, body, _ = await b.get("/ui/signin")
        token = CSRF.search(body)
        assert token is not None
        status, body, _ = await b.post(
            "/ui/signin", {"csrf": token.group(1), "token": secret(name)}
        )
        assert status == 403, name
        assert "the console needs one that reads" in body


async def test_the_sign_in_form_needs_its_own_cookie(console: Console, browserless: Client) -> None:
    b: Browserless = browserless(console.url)
    _, body, _ = await b.get("/ui/signin")
    token = CSRF.search(body)
    assert token is not None
    b.session.cookie_jar.clear()
    status, body, _ = await b.post("/ui/signin", {"csrf": token.group(1), "token": secret("boss")})
    assert status == 403
    assert "expired" in body


async def test_the_session_cookie_is_httponly_strict_and_scoped_to_the_console(
    console: Console, browserless: Client
) -> None:
    for proto, secure in (("http", False), ("https", True)):
        b: Browserless = browserless(console.url)
        _, body, _ = await b.get("/ui/signin")
        token = CSRF.search(body)
        assert token is not None
        status, _, _headers = await b.post(
            "/ui/signin",
            {"csrf": token.group(1), "token": secret("viewer")},
            headers={"X-Forwarded-Proto": proto},
        )
        assert status == 303
        cookie = next(c for c in b.session.cookie_jar if c.key == "shadow_session")
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/ui/"
        assert bool(cookie["secure"]) is secure
        assert len(cookie.value) >= 40


async def test_pages_redirect_to_sign_in_and_posts_without_a_session_are_401(
    console: Console, browserless: Client
) -> None:
    b: Browserless = browserless(console.url)
    for path in ("/ui/", "/ui/task/refund", "/ui/audit", "/ui/review"):
        status, _, headers = await b.get(path)
        assert (status, headers["Location"]) == (303, "/ui/signin"), path
    before = await refusals(console, "operator", "401")
    status, body, _ = await b.post("/ui/freeze", {"csrf": "0" * 64, "reason": "x"})
    assert status == 401
    assert "sign in again" in body
    assert await refusals(console, "operator", "401") == before + 1


async def test_sign_out_ends_the_session(console: Console, browserless: Client) -> None:
    b = await signed_in(browserless, console, "viewer")
    old = next(c.value for c in b.session.cookie_jar if c.key == "shadow_session")
    csrf = await b.csrf()
    status, _, headers = await b.post("/ui/signout", {"csrf": csrf})
    assert (status, headers["Location"]) == (303, "/ui/signin")
    b.session.cookie_jar.update_cookies({"shadow_session": old})  # replayed: ended anyway
    status, _, _ = await b.get("/ui/")
    assert status == 303


def revoke(tokens_file: Path, name: str) -> None:
    doc = yaml.safe_load(tokens_file.read_text())
    doc["tokens"] = [t for t in doc["tokens"] if t["name"] != name]
    tokens_file.write_text(yaml.safe_dump(doc))


async def test_a_revoked_token_ends_its_sessions(
    console: Console, browserless: Client, tokens_file: Path
) -> None:
    b = await signed_in(browserless, console, "approver-1")
    assert (await b.get("/ui/"))[0] == 200
    revoke(tokens_file, "approver-1")
    for _ in range(100):  # the keyring re-reads within a second: a bound, not a timing
        if (await b.get("/ui/"))[0] == 303:
            break
        await asyncio.sleep(0.05)
    status, _, headers = await b.get("/ui/")
    assert (status, headers["Location"]) == (303, "/ui/signin")


async def test_the_api_never_takes_the_cookie(console: Console, browserless: Client) -> None:
    b = await signed_in(browserless, console, "boss")
    async with b.session.get(console.url + "/v1/agreement") as res:
        assert res.status == 401
    async with b.session.post(console.url + "/v1/freeze", json={"reason": "x"}) as res:
        assert res.status == 401
    assert await appeal_level(console) == "L0"


async def test_the_session_id_is_never_logged(
    console: Console, browserless: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    b = await signed_in(browserless, console, "approver-1")
    csrf = await b.csrf()
    await b.post("/ui/task/appeal/approve", {"csrf": csrf, "proposal_id": await proposal(console)})
    await b.post("/ui/task/appeal/approve", {"csrf": "f" * 64, "proposal_id": "p-x"})
    session_id = next(c.value for c in b.session.cookie_jar if c.key == "shadow_session")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "autonomy move=approve" in logged  # the move itself is logged, with its actor
    assert session_id not in logged
    assert csrf not in logged


# -- CSRF, origin, roles ----------------------------------------------------------------------


async def test_a_post_without_the_right_csrf_token_is_refused(
    console: Console, browserless: Client
) -> None:
    b = await signed_in(browserless, console, "approver-1")
    pid = await proposal(console)
    for form in (
        {"proposal_id": pid},
        {"proposal_id": pid, "csrf": "0" * 64},
        {"proposal_id": pid, "csrf": ""},
    ):
        status, body, _ = await b.post("/ui/task/appeal/approve", form)
        assert status == 403, form
        assert "CSRF" in body
    other = await signed_in(browserless, console, "approver-2")  # another session's token
    status, _, _ = await b.post(
        "/ui/task/appeal/approve", {"proposal_id": pid, "csrf": await other.csrf()}
    )
    assert status == 403
    assert await appeal_level(console) == "L0"


async def test_a_post_from_another_origin_is_refused(console: Console, browserless: Client) -> None:
    b = await signed_in(browserless, console, "approver-1")
    csrf = await b.csrf()
    pid = await proposal(console)
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": console.url.replace("127.0.0.1", "localhost")},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        status, body, _ = await b.post(
            "/ui/task/appeal/approve", {"csrf": csrf, "proposal_id": pid}, headers=headers
        )
        assert status == 403, headers
        assert "nothing was done" in body
    assert await appeal_level(console) == "L0"
    status, _, _ = await b.post(
        "/ui/task/appeal/approve",
        {"csrf": csrf, "proposal_id": pid},
        headers={"Origin": console.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert status == 303
    assert await appeal_level(console) == "L1"


async def test_a_role_that_may_not_is_refused_and_counted(
    console: Console, browserless: Client
) -> None:
    viewer = await signed_in(browserless, console, "viewer")
    csrf = await viewer.csrf()
    pid = await proposal(console)
    cases = [
        ("/ui/task/appeal/approve", {"proposal_id": pid}, "approver"),
        ("/ui/task/appeal/reject", {"proposal_id": pid, "reason": "no"}, "approver"),
        ("/ui/task/appeal/level", {"level": "L2", "reason": "x"}, "operator"),
        ("/ui/freeze", {"reason": "x"}, "operator"),
        ("/ui/approvals/a-1/approve", {}, "approver"),
        ("/ui/review/c-1", {"verdict": "a_right", "reason": "other"}, "reviewer"),
    ]
    for path, form, role in cases:
        before = await refusals(console, role, "403")
        status, body, _ = await viewer.post(path, {"csrf": csrf, **form})
        assert status == 403, path
        assert f"this needs {role}" in body
        assert await refusals(console, role, "403") == before + 1, path
    # Scoped to refund: may approve there, not on appeal (and the page shows no button).
    scoped = await signed_in(browserless, console, "refund-approver")
    _, page, _ = await scoped.get("/ui/")
    assert "/ui/task/appeal/approve" not in page
    status, body, _ = await scoped.post(
        "/ui/task/appeal/approve", {"csrf": await scoped.csrf(), "proposal_id": pid}
    )
    assert status == 403
    assert "acts only on refund" in body
    assert await appeal_level(console) == "L0"


# -- hostile forms ----------------------------------------------------------------------------


async def test_hostile_form_text_is_a_400_and_nothing_happens(
    console: Console, browserless: Client
) -> None:
    b = await signed_in(browserless, console, "boss")
    csrf = await b.csrf()
    pid = await proposal(console)
    bodies: list[tuple[bytes | str, int, str]] = [
        (f"csrf={csrf}&reason=%ED%A0%80", 400, "not URL-encoded UTF-8"),  # a lone surrogate
        (f"csrf={csrf}&reason=caf%C3", 400, "not URL-encoded UTF-8"),  # cut UTF-8
        (f"csrf={csrf}&reason=ok".encode() + b"\xff", 400, "not URL-encoded UTF-8"),
        (f"csrf={csrf}&back=/ui/%01", 400, "back: "),
        (f"csrf={csrf}&reason=a&reason=b", 400, "sent twice"),
        (f"csrf={csrf}&actor=someone-else", 400, "unknown field"),
        ("&".join(f"f{i}=1" for i in range(50)), 400, "too many fields"),
    ]
    for body, status, said in bodies:
        got, page, _ = await b.post("/ui/freeze", body)
        assert (got, said in page) == (status, True), (body, page[:600])
    got, page, _ = await b.post("/ui/task/appeal/approve", f"csrf={csrf}&proposal_id={pid}%00")
    assert got == 400
    assert "proposal_id: " in page
    assert "\\u0000" in page
    got, _, _ = await b.post(
        "/ui/freeze", f"csrf={csrf}&reason=x", headers={"Content-Type": "text/plain"}
    )
    assert got == 415
    got, _, _ = await b.post("/ui/freeze", f"csrf={csrf}&reason=" + "x" * 70_000)
    assert got == 413
    assert await appeal_level(console) == "L0"
    frozen = await console.sc.get("/v1/agreement", headers=auth("viewer"))
    assert frozen.body["frozen"] is False
    # A reason's control characters become spaces, as the API records them.
    got, _, _ = await b.post("/ui/freeze", f"csrf={csrf}&reason=line%0Abreak%00here")
    assert got == 303
    entries = (await console.sc.get("/v1/audit", headers=auth("viewer"))).body["entries"]
    assert entries[-1]["action"] == "freeze"
    assert entries[-1]["reason"] == "line break here"
    assert entries[-1]["actor"] == "boss"


async def test_a_case_id_with_a_control_character_is_a_400_page(
    console: Console, browserless: Client
) -> None:
    b = await signed_in(browserless, console, "viewer")
    status, page, _ = await b.get("/ui/case/a%01b")
    assert status == 400
    status, page, _ = await b.get("/ui/case/no-such-case")
    assert status == 404
    assert "holds nothing" in page
    status, page, _ = await b.get("/ui/task/no-such-task")
    assert status == 404
    status, page, _ = await b.get("/ui/audit?before=x")
    assert status == 400


# -- headers ----------------------------------------------------------------------------------


async def test_every_console_answer_carries_the_security_headers(
    console: Console, browserless: Client
) -> None:
    b = await signed_in(browserless, console, "viewer")
    for path in ("/ui/", "/ui/signin", "/ui/static/console.css", "/ui/no-such-page", "/ui/case/x"):
        _, _, headers = await b.get(path)
        assert headers["Content-Security-Policy"] == CSP, path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Frame-Options"] == "DENY"
        if "static" not in path:
            assert headers["Cache-Control"] == "no-store", path
    _, _, headers = await b.get("/v1/agreement", headers=auth("viewer"))
    assert "Content-Security-Policy" not in headers  # the API is not the console


# -- sessions ---------------------------------------------------------------------------------


def test_sessions_expire_and_are_bounded() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0], max_age=100.0, max_sessions=3)
    who = Credential("v", frozenset({"viewer"}))
    first = sessions.start(who, "d" * 64)
    assert sessions.get(first.id) is first
    now[0] = 101.0
    assert sessions.get(first.id) is None
    opened = [sessions.start(who, "d" * 64) for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.get(opened[0].id) is None
    assert sessions.get(opened[-1].id) is opened[-1]
    assert sessions.get("not an id!") is None
    assert sessions.csrf_ok(opened[-1].id, sessions.csrf(opened[-1].id))
    assert not sessions.csrf_ok(opened[-1].id, sessions.csrf(opened[-2].id))
    assert not sessions.signin_ok("short", sessions.signin_token("short"))


async def test_the_simple_mode_signs_in_the_admin_token_only(
    sidecar: SidecarFactory, agent_server: AgentServerFactory, browserless: Client
) -> None:
    agent = await agent_server(lambda _: agree_reply({"action": "approve"}))
    sc = await sidecar(agent=agent.url)  # no tokens file: SHADOW_ADMIN_TOKEN alone
    b: Browserless = browserless(sc.url)
    _, body, _ = await b.get("/ui/signin")
    token = CSRF.search(body)
    assert token is not None
    status, _, _ = await b.post("/ui/signin", {"csrf": token.group(1), "token": ADMIN_TOKEN})
    assert status == 303
    status, page, _ = await b.get("/ui/")
    assert status == 200
    assert "Freeze everything" in page
    status, _, _ = await b.post("/ui/freeze", {"csrf": await b.csrf(), "reason": "drill"})
    assert status == 303
    entries = (await sc.get("/v1/audit")).body["entries"]
    frozen = [(e["actor"], e["reason"]) for e in entries if e["action"] == "freeze"]
    assert frozen  # one entry per task type
    assert set(frozen) == {("admin", "drill")}
