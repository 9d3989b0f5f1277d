"""Browser tests: Playwright driving Debian's Chromium against a hub running in the test's event loop.

Every browser context blocks requests that do not go to 127.0.0.1 (the
machine has no network), records console errors and page errors on every
page, and saves screenshots under ``test-artifacts/screenshots/``; the ones
the README shows are copied to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
README_SCREENSHOTS = ROOT / "docs" / "screenshots"
README_PAGES = {"home", "launch", "progress", "admin", "service"}
PASSWORD = "correct-horse-battery"  # noqa: S105 - test accounts
# the hub (127.0.0.1) and instances on origins of their own (*.localhost, which Chromium resolves to loopback)
LOCAL = re.compile(r"^(?!(?:https?|wss?)://(?:127\.0\.0\.1|[a-z0-9-]+\.localhost)[:/]).*")
DESKTOP = {"width": 1280, "height": 800}
# JupyterLab console noise we accept, and why (nothing else is ignored, on any page):
JUPYTERLAB_NOISE = [
    # The built-in template turns off the jupyter_lsp server extension (it spawns `npm` probes at start),
    # but JupyterLab's LSP front-end plugin still asks the server for its status once and logs the 404.
    ("Failed to load resource: the server responded with a status of 404 (Not Found)",
     re.compile(r"^http://[a-z0-9-]+\.localhost:\d+/lsp/status\?")),
]
PHONE = {"width": 390, "height": 844}

# Checks run on every hub page: labelled controls, one h1, alt texts, no sideways scrolling.
PAGE_AUDIT = """() => {
  const problems = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
      problems.push('unlabelled control: ' + (el.id || el.name));
  }
  const h1 = document.querySelectorAll('h1').length;
  if (h1 !== 1) problems.push(h1 + ' h1 elements');
  for (const img of document.querySelectorAll('img:not([alt])')) problems.push('img without alt: ' + img.src);
  for (const b of document.querySelectorAll('button, a.button')) {
    if (!(b.textContent.trim() || b.getAttribute('aria-label'))) problems.push('button without a name');
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    problems.push('scrolls sideways: ' + document.documentElement.scrollWidth + ' > ' + window.innerWidth);
  if (!document.documentElement.lang) problems.push('no lang attribute');
  return problems;
}"""


@dataclass
class Problem:
    url: str  # the page's
    kind: str  # console | pageerror
    text: str
    source: str = ""  # the resource the message is about

    def is_document_status(self, statuses: Collection[int]) -> bool:
        """Chromium logs an error for a page whose own response has an error status."""
        match = re.match(r"Failed to load resource: the server responded with a status of (\d+) ", self.text)
        return bool(match) and int(match.group(1)) in statuses and self.source == self.url


@dataclass
class WebUser:
    """One browser context (one logged-in person) on a hub."""

    context: object
    base_url: str
    problems: list[Problem] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    async def page(self):  # noqa: ANN201 - playwright Page
        return await self.context.new_page()

    async def login(self, name: str, password: str = PASSWORD, page=None):  # noqa: ANN001, ANN201
        """Log in through the form, by keyboard; returns the page (on Home)."""
        page = page or await self.page()
        await page.goto(f"{self.base_url}/login")
        await page.locator("#username").focus()
        await page.keyboard.type(name)
        await page.keyboard.press("Tab")
        await page.keyboard.type(password)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        return page

    def errors(self, *, jupyterlab: bool = False, statuses: Collection[int] = ()) -> list[Problem]:
        """Console and page errors on hub pages (default), or on JupyterLab's pages less its known noise.

        ``statuses``: error statuses the test asked for (a 403 page, a form answered 422 with its
        field errors); Chromium's console line about such a page's own status is left out.
        """
        if not jupyterlab:
            return [p for p in self.problems if not _in_jupyterlab(p.url) and not p.is_document_status(statuses)]
        return [p for p in self.problems
                if _in_jupyterlab(p.url) and not any(p.text == text and source.match(p.source)
                                                     for text, source in JUPYTERLAB_NOISE)]


def _in_jupyterlab(url: str) -> bool:
    return bool(re.match(r"^http://[a-z0-9-]+\.localhost:\d+/lab", url))


class BrowserHelper:
    def __init__(self, browser) -> None:  # noqa: ANN001
        self.browser = browser
        self.users: list[WebUser] = []

    async def user(self, base_url: str, *, viewport: dict | None = None) -> WebUser:
        context = await self.browser.new_context(viewport=viewport or DESKTOP, locale="en-GB", timezone_id="UTC")
        context.set_default_timeout(15_000)
        web = WebUser(context, base_url)

        async def block(route) -> None:  # noqa: ANN001
            web.blocked.append(route.request.url)
            await route.abort("blockedbyclient")

        await context.route(LOCAL, block)

        def watch(page) -> None:  # noqa: ANN001
            def console(msg) -> None:  # noqa: ANN001
                if msg.type == "error":
                    web.problems.append(Problem(page.url, "console", msg.text, msg.location.get("url", "")))

            page.on("console", console)
            page.on("pageerror", lambda exc: web.problems.append(Problem(page.url, "pageerror", str(exc))))

        context.on("page", watch)
        self.users.append(web)
        return web


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[BrowserHelper]:
    """A headless Chromium; contexts are made per user with :meth:`BrowserHelper.user`."""
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("LABHUB_TEST_BROWSER") == "skip":
            pytest.skip(f"{CHROMIUM} is not installed")
        pytest.fail(f"browser tests need Debian's Chromium at {CHROMIUM}: `make system` (as root) installs it, "
                    "or set LABHUB_TEST_BROWSER=skip")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        helper = BrowserHelper(chromium)
        try:
            yield helper
        finally:
            for web in helper.users:  # close the pages first: their live streams hold hub connections
                await web.context.close()
            await chromium.close()


async def audit(page) -> None:  # noqa: ANN001
    """Fail on accessibility basics the page gets wrong."""
    problems = await page.evaluate(PAGE_AUDIT)
    assert problems == [], f"{page.url}: {problems}"


async def screenshot(page, name: str, *, full_page: bool = True) -> Path:  # noqa: ANN001
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="initial")
    if name in README_PAGES:
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOTS / f"{name}.png")
    return path
