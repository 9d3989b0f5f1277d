"""In a real browser: log in, launch a real JupyterLab from the catalog, use it, stop it; a failing launch."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.web.conftest import PASSWORD, audit, screenshot

pytestmark = [pytest.mark.asyncio, pytest.mark.browser, pytest.mark.jupyter]


async def test_launch_jupyterlab_run_code_and_stop(start_hub, sqlite_url, shared_tmp, browser):
    hub = await start_hub(sqlite_url, data_dir=shared_tmp / "data")
    await hub.user("alice", password=PASSWORD)
    web = await browser.user(hub.url)

    page = await web.page()
    await page.goto(f"{hub.url}/")  # not logged in: to the login page, and back after it
    await expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    await audit(page)
    await screenshot(page, "login")
    await web.login("alice", page=page)
    await expect(page).to_have_url(f"{hub.url}/")
    await expect(page.get_by_role("heading", name="Nothing here yet")).to_be_visible()
    await audit(page)
    await screenshot(page, "home-empty")

    await page.get_by_role("link", name="Launch", exact=True).last.click()  # the page's button, not the menu
    await expect(page).to_have_url(f"{hub.url}/launch")
    await expect(page.locator(".template")).to_have_count(3)  # JupyterLab, MLaaS4HEP training, a model service
    await audit(page)
    await screenshot(page, "catalog")
    await page.get_by_role("link", name="Choose JupyterLab").click()

    await expect(page.get_by_role("heading", name="Launch JupyterLab")).to_be_visible()
    name = page.get_by_label("Name", exact=True)
    await expect(name).to_have_value("jupyterlab-1")  # suggested
    await expect(page.get_by_label("small")).to_be_checked()
    await expect(page.get_by_label("gpu")).to_be_disabled()  # no GPUs here, and the form says why
    await expect(page.locator("#size-gpu-why")).to_contain_text("Not available")
    await name.fill("My Lab")  # validated as you type
    await expect(page.locator("#name-error")).to_have_text("Use lower-case letters only.")
    await expect(name).to_have_attribute("aria-invalid", "true")
    await name.fill("ws1")
    await expect(page.locator("#name-error")).to_be_hidden()
    await expect(page.locator("#name-preview")).to_have_text("ws1")
    await page.get_by_label("Duration (hours)").fill("2")
    await audit(page)
    await screenshot(page, "launch")

    await page.get_by_role("button", name="Launch", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/instances/[0-9a-f]{32}/progress$"))
    instance_id = page.url.split("/")[-2]
    await expect(page.locator("#events li").first).to_contain_text("requested")
    await audit(page)
    await screenshot(page, "progress")
    # It opens JupyterLab by itself once the hub says it is ready.
    await page.wait_for_url(re.compile(r"^http://ws1--alice\.localhost:\d+/lab"), timeout=90_000)  # its own origin
    assert [e.text for e in web.errors()] == []

    launcher = page.locator('.jp-LauncherCard[data-category="Notebook"]').first
    await expect(launcher).to_be_visible(timeout=60_000)
    await launcher.click()  # "Python 3 (ipykernel)": a new notebook
    # Execution requested before the kernel is connected is dropped: wait until it is idle.
    await expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
    news = page.get_by_role("alert").filter(has_text="official Jupyter news")  # JupyterLab asks once
    if await news.count():
        await news.get_by_role("button", name="No").click()
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    await cell.click()
    await page.keyboard.type("print(6*7)")
    await page.keyboard.press("Shift+Enter")
    await expect(page.locator(".jp-OutputArea-output").first).to_have_text("42", timeout=60_000)
    await screenshot(page, "jupyterlab", full_page=False)

    await page.goto(f"{hub.url}/")
    row = page.locator(f'tr[data-instance="{instance_id}"]')
    await expect(row.locator("[data-status]")).to_have_text("running")
    await expect(row.get_by_role("link", name="Open ws1")).to_be_visible()
    await expect(row.locator("[data-relative]")).to_contain_text(re.compile(r"in 1 h 5\d min|in 2 h"))
    await audit(page)
    await screenshot(page, "home")

    await row.get_by_role("link", name="Details of ws1").click()
    await expect(page.locator("#log-output")).to_contain_text("Jupyter Server", timeout=10_000)
    await expect(page.locator("#events li").last).to_contain_text("ready after")
    await audit(page)
    await screenshot(page, "instance")

    await page.goto(f"{hub.url}/")
    await row.get_by_role("button", name="Stop ws1").click()
    await expect(page).to_have_url(f"{hub.url}/")
    await expect(row.locator("[data-status]")).to_have_text("stopped", timeout=30_000)  # live, no reload
    await expect(row.get_by_role("link", name="Open ws1")).to_be_hidden()
    await expect(row.get_by_role("button", name="Stop ws1")).to_be_hidden()
    await screenshot(page, "home-stopped")

    assert [(e.url, e.text) for e in web.errors()] == []
    assert [(e.url, e.text) for e in web.errors(jupyterlab=True)] == []
    assert web.blocked == []


async def test_failing_template_shows_its_error_on_the_progress_page(start_hub, sqlite_url, tmp_path, browser):
    site = tmp_path / "templates"
    site.mkdir()
    (site / "broken.yaml").write_text(
        "title: Broken\ndescription: Exits at once, to show what a failed start looks like.\n"
        "command: [python3, -c, \"import sys; print('boom: no GPU driver'); sys.exit(3)\"]\n")
    hub = await start_hub(sqlite_url, templates_dir=site)
    await hub.user("alice", password=PASSWORD)
    web = await browser.user(hub.url)
    page = await web.login("alice")

    await page.goto(f"{hub.url}/launch")
    await page.get_by_role("link", name="Choose Broken").click()
    await page.get_by_role("button", name="Launch", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/progress$"))
    first = page.url
    failure = page.locator("#failure")
    await expect(failure).to_be_visible(timeout=30_000)
    await expect(failure).to_contain_text("exited with code 3")
    await expect(page.locator("#failure-logs")).to_contain_text("boom: no GPU driver")
    await expect(page.locator("#status")).to_have_text("failed")
    await expect(page.locator(".steps li.failed")).to_have_count(1)
    await audit(page)
    await screenshot(page, "progress-failed")

    await page.get_by_role("button", name="Retry").click()  # the same launch again, on a new progress page
    await expect(page).to_have_url(re.compile(r"/progress$"))
    assert page.url != first
    await expect(page.locator("#failure")).to_be_visible(timeout=30_000)
    await page.reload()  # and after a reload the page still explains it
    await expect(page.locator("#failure")).to_contain_text("exited with code 3")
    await expect(page.locator("#failure-logs")).to_contain_text("boom: no GPU driver")

    assert [(e.url, e.text) for e in web.errors()] == []
    assert web.blocked == []
