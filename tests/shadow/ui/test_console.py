"""The console in a real headless Chromium (Debian ``chromium``, driven by Playwright) against
a real sidecar with a tokens file: what each role sees and may do, the review queue worked
blind from the keyboard, approvals (the two-person rule included), a freeze that the gateway
enforces, and on every page: no console error, no request off the sidecar's origin, no serious
or critical axe-core violation, and a screenshot at 1400 and 390 pixels wide
(``tests/output/console/``)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client, MCPError

from tests.conftest import require_tool
from tests.replay.test_html import CHROMIUM_ARGS
from tests.shadow.conftest import Sidecar, metric
from tests.shadow.ui.browser import OUTPUT, Chromium, Tab, axe_source, axe_violations, described
from tests.shadow.ui.conftest import Console, auth

pytestmark = pytest.mark.slow  # Chromium


@pytest.fixture
async def chromium(console: Console) -> AsyncIterator[Chromium]:
    path = require_tool("chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield Chromium(browser, console.url)
        finally:
            await browser.close()


async def api(sc: Sidecar, method: str, path: str, who: str, body: Any = None) -> Any:
    res = await sc.request(method, path, json_body=body, headers=auth(who))
    assert res.status == 200, (path, res.status, res.body)
    return res.body


async def level(sc: Sidecar, task_type: str) -> str:
    return str((await api(sc, "GET", f"/v1/autonomy/{task_type}", "viewer"))["level"])


def clean(tab: Tab) -> None:
    assert tab.problems == []
    assert tab.foreign() == []


# -- roles ------------------------------------------------------------------------------------


async def test_a_viewer_sees_the_overview_with_no_button_and_a_forged_post_is_refused(
    console: Console, chromium: Chromium
) -> None:
    sc = console.sc
    tab = await chromium.signed_in("viewer")
    text = await tab.text()
    assert "appeal" in text
    assert "refund" in text
    assert "waits for an approver" in text
    assert "Proposal waiting" in text
    buttons = [b.strip() for b in await tab.page.get_by_role("button").all_inner_texts()]
    assert buttons == ["Sign out"]  # no approve, reject or freeze
    assert await tab.page.locator("form[action*='approve']").count() == 0

    before = metric(await sc.metrics(), "shadow_auth_refusals_total", role="approver", status="403")
    proposal = (await api(sc, "GET", "/v1/autonomy/appeal", "viewer"))["proposal"]["id"]
    csrf = await tab.page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf
    forged = await tab.page.request.post(
        console.url + "/ui/task/appeal/approve",
        form={"csrf": csrf, "proposal_id": proposal},
        max_redirects=0,
    )
    assert forged.status == 403
    assert "viewer has the role(s) viewer; this needs approver" in await forged.text()
    after = metric(await sc.metrics(), "shadow_auth_refusals_total", role="approver", status="403")
    assert (after or 0) == (before or 0) + 1
    assert await level(sc, "appeal") == "L0"
    clean(tab)


# -- the review queue -------------------------------------------------------------------------


async def test_a_reviewer_works_the_queue_blind_with_the_keyboard_and_the_estimate_moves(
    console: Console, chromium: Chromium
) -> None:
    sc = console.sc
    doc = await api(sc, "GET", "/v1/agreement", "viewer")
    before = doc["task_types"]["refund"]["adjudicated"]
    assert before["reviewed"] == {"agree": 0, "disagree": 0}
    tab = await chromium.signed_in("reviewer")
    await tab.goto("/ui/review?task_type=refund")
    page = tab.page
    for _done in range(3):
        await page.wait_for_selector("#verdict-form")
        text = await tab.text()
        # Blind: nothing names the case, the agent's version or the human.
        for secret in ("refund-", "agent@1", "ops/jane", "example.com"):
            assert secret not in text, secret
        a = await page.locator(".pair > div").nth(0).inner_text()
        # The agent approved every case; on a disagreement the human denied it.
        await page.keyboard.press("1" if '"approve"' in a else "2")
        assert await page.locator("input[name=verdict]:checked").count() == 1
        await page.keyboard.press("r")
        assert await page.evaluate("document.activeElement.id") == "reason"
        await page.keyboard.press("ArrowDown")
        await page.keyboard.press("ArrowDown")  # human_error
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#next-case")
        answered = await tab.text()
        assert "Recorded: agent right" in answered
        assert "A was the agent" in answered or "A was the human" in answered
        async with page.expect_navigation():
            await page.keyboard.press("n")
        assert await page.locator("#verdict-form").count() == 1
    doc = await api(sc, "GET", "/v1/agreement", "viewer")
    after = doc["task_types"]["refund"]["adjudicated"]
    assert after["reviewed"]["disagree"] == 3
    assert after["estimate"] != before["estimate"]
    assert after["estimate"] > doc["task_types"]["refund"]["agreement"]
    stats = await tab.page.locator("table.stats").inner_text()
    assert f"{after['estimate'] * 100:.2f}%" in stats
    clean(tab)


# -- approvals --------------------------------------------------------------------------------


async def approve_on_overview(tab: Tab, task_type: str) -> None:
    await tab.goto("/ui/")
    card = tab.page.locator("section.card", has_text=task_type)
    async with tab.page.expect_navigation():
        await card.get_by_role("button", name=re.compile(r"^Approve L\d")).click()


async def test_an_approver_approves_a_proposal_and_the_level_changes_in_their_name(
    console: Console, chromium: Chromium
) -> None:
    sc = console.sc
    tab = await chromium.signed_in("approver-1")
    await approve_on_overview(tab, "appeal")
    assert "appeal: approved; level now L1" in await tab.text()
    assert await level(sc, "appeal") == "L1"
    entries = (await api(sc, "GET", "/v1/audit", "viewer"))["entries"]
    approval = [e for e in entries if e["action"] == "approve"]
    assert [(e["actor"], e["to_level"]) for e in approval] == [("approver-1", "L1")]
    await tab.goto("/ui/audit")
    row = tab.page.locator("tr", has_text="approver-1")
    assert "approve" in await row.first.inner_text()
    assert "Hash chain: intact" in await tab.text()
    clean(tab)


async def test_a_two_person_promotion_needs_a_second_approver(
    console: Console, chromium: Chromium
) -> None:
    sc = console.sc
    first = await chromium.signed_in("approver-1")
    await approve_on_overview(first, "appeal")  # L0 -> L1 (one approver)
    assert await level(sc, "appeal") == "L1"
    proposal = (await api(sc, "GET", "/v1/autonomy/appeal", "viewer"))["proposal"]
    assert (proposal["from_level"], proposal["to_level"]) == ("L1", "L2")

    await approve_on_overview(first, "appeal")
    assert "needs a second approver" in await first.text()
    assert await level(sc, "appeal") == "L1"
    await approve_on_overview(first, "appeal")  # the same credential again
    assert "different credential" in await first.page.inner_text("main")
    assert await level(sc, "appeal") == "L1"

    second = await chromium.signed_in("approver-2")
    await approve_on_overview(second, "appeal")
    assert "appeal: approved; level now L2" in await second.text()
    assert await level(sc, "appeal") == "L2"
    entries = (await api(sc, "GET", "/v1/audit", "viewer"))["entries"]
    moves = [(e["action"], e["actor"]) for e in entries if e["task_type"] == "appeal"]
    assert moves[-2:] == [("partial_approval", "approver-1"), ("approve", "approver-2")]
    clean(second)


# -- held writes and the freeze ---------------------------------------------------------------


async def held_write(console: Console, event_id: str, amount: float) -> Any:
    """A live session's issue_refund at refund's level: the result or its MCPError."""
    res = await console.sc.post(
        "/v1/sessions",
        json_body={"task_type": "refund", "event_id": event_id},
        headers=auth("host"),
    )
    assert res.status == 200, res.body
    async with Client(str(res.body["tools_url"]), mode="auto") as client:
        try:
            return await client.call_tool("issue_refund", {"order_id": "o-9", "amount": amount})
        except MCPError as exc:
            return exc


async def test_an_approver_sends_a_held_write_exactly_as_shown(
    console: Console, chromium: Chromium
) -> None:
    sc = console.sc
    await api(sc, "PUT", "/v1/autonomy/refund", "operator", {"level": "L2", "reason": "pilot"})
    held = await held_write(console, "live-1", 12.5)
    assert held.structured_content["status"] == "pending"
    tab = await chromium.signed_in("approver-1")
    await tab.goto("/ui/approvals")
    shown = await tab.page.locator("pre.json").first.inner_text()
    assert '"amount": 12.5' in shown
    assert '"order_id": "o-9"' in shown
    async with tab.page.expect_navigation():
        await tab.page.get_by_role("button", name="Approve issue_refund").click()
    assert "issue_refund for live-1: approved" in await tab.text()
    assert console.upstream.writes() == [("issue_refund", {"order_id": "o-9", "amount": 12.5})]
    clean(tab)


async def test_an_operators_freeze_from_the_console_makes_the_gateway_refuse_writes(
    console: Console, chromium: Chromium
) -> None:
    sc = console.sc
    await api(sc, "PUT", "/v1/autonomy/refund", "operator", {"level": "L2", "reason": "pilot"})
    waiting = await held_write(console, "live-2", 7.0)
    approval = waiting.structured_content["approval_id"]
    tab = await chromium.signed_in("operator")
    await tab.page.fill("#freeze-reason", "incident 42")
    async with tab.page.expect_navigation():
        await tab.page.get_by_role("button", name="Freeze everything").click()
    assert "Frozen" in await tab.text()
    assert await tab.page.get_by_role("button", name="Unfreeze").count() == 1
    refused = await held_write(console, "live-3", 8.0)
    assert isinstance(refused, MCPError), refused
    assert "frozen" in str(refused).lower()
    row = await api(sc, "GET", f"/v1/approvals/{approval}", "viewer")
    assert row["status"] == "refused"
    assert console.upstream.writes() == []
    entries = (await api(sc, "GET", "/v1/audit", "viewer"))["entries"]
    assert any(e["action"] == "freeze" and e["actor"] == "operator" for e in entries)
    clean(tab)


# -- every page -------------------------------------------------------------------------------

PAGES = [
    ("signin", "/ui/signin"),
    ("overview", "/ui/"),
    ("task-type", "/ui/task/refund"),
    ("case", "/ui/case/refund-35"),
    ("review", "/ui/review?task_type=refund"),
    ("approvals", "/ui/approvals"),
    ("dead-letters", "/ui/dead-letters"),
    ("audit", "/ui/audit"),
]


async def test_every_page_is_clean_accessible_and_photographed(
    console: Console, chromium: Chromium
) -> None:
    source = axe_source()
    sc = console.sc
    # Something on every page: a held write and a proposal waiting, a level history.
    await api(sc, "PUT", "/v1/autonomy/refund", "operator", {"level": "L2", "reason": "pilot"})
    await held_write(console, "live-4", 12.5)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for width in (1400, 390):
        tab = await chromium.tab(width=width)
        scan = await chromium.tab(width=width, bypass_csp=True)
        for name, path in PAGES:
            for one in (tab, scan):
                if name != "signin" and "shadow_session" not in {
                    c["name"] for c in await one.context.cookies()
                }:
                    await one.sign_in("boss")
                await one.goto(path)
            shot = OUTPUT / f"{name}-{width}.png"
            await tab.page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
            violations = await axe_violations(scan, source)
            assert violations == [], f"{path} at {width}px:\n{described(violations)}"
        clean(tab)
        assert scan.problems == []
        await tab.context.close()
        await scan.context.close()
    print(f"console screenshots: {OUTPUT}")
