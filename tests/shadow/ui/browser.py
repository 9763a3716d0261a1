"""A real headless Chromium driven by Playwright (async, on the test's own event loop, beside
the sidecar it browses): tabs that sign in through the console's form, record every console
error, page error and request, and an axe-core scan (tests/shadow/ui/axe, installed by
``make tools`` from its committed lockfile)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.shadow.ui.conftest import secret

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

AXE = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
# Where the screenshots go (kept out of git: .gitignore); docs/console/ holds a copy.
OUTPUT = Path(__file__).resolve().parents[2] / "output" / "console"


def axe_source() -> str:
    """axe-core's script. Missing: skip locally, fail under CI=true (as require_tool)."""
    if AXE.is_file():
        return AXE.read_text(encoding="utf-8")
    message = f"{AXE} not found; make tools installs it (npm ci in {AXE.parents[2]})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(eq=False)
class Tab:
    """One browser context and its page, signed in (or not) as one credential. ``problems``:
    console errors and page errors; ``requests``: every URL the page asked for."""

    context: BrowserContext
    page: Page
    origin: str
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    async def goto(self, path: str) -> None:
        response = await self.page.goto(self.origin + path)
        assert response is not None
        assert response.status == 200, (path, response.status, await self.page.content())
        await self.page.wait_for_load_state("load")

    async def sign_in(self, name: str) -> None:
        await self.goto("/ui/signin")
        await self.page.fill("#token", secret(name))
        await self.page.get_by_role("button", name="Sign in").click()
        await self.page.wait_for_url(self.origin + "/ui/")

    def foreign(self) -> list[str]:
        """Requests that left the sidecar's origin."""
        return [u for u in self.requests if not u.startswith(self.origin + "/")]

    async def text(self) -> str:
        return await self.page.inner_text("main")


@dataclass(eq=False)
class Chromium:
    """Opens tabs on one browser; every context is closed with it."""

    browser: Browser
    origin: str

    async def tab(self, *, width: int = 1400, bypass_csp: bool = False) -> Tab:
        context = await self.browser.new_context(
            viewport={"width": width, "height": 900}, bypass_csp=bypass_csp
        )
        page = await context.new_page()
        tab = Tab(context, page, self.origin)
        page.on("console", lambda m: tab.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: tab.problems.append(str(e)))
        page.on("request", lambda r: tab.requests.append(r.url))
        return tab

    async def signed_in(self, name: str, **kw: Any) -> Tab:
        tab = await self.tab(**kw)
        await tab.sign_in(name)
        return tab


async def axe_violations(tab: Tab, source: str) -> list[dict[str, Any]]:
    """The serious and critical violations axe-core finds on ``tab``'s page (its context
    must bypass the CSP, which otherwise refuses the injected script, rightly)."""
    await tab.page.add_script_tag(content=source)
    found = await tab.page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    bad = [v for v in found if v.get("impact") in ("serious", "critical")]
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n.get("target") for n in v.get("nodes", [])][:5],
        }
        for v in bad
    ]


def described(violations: list[dict[str, Any]]) -> str:
    return json.dumps(violations, indent=2)
