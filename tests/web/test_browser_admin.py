"""In a real browser: other users' instances stay private; admins stop them, manage users, see the system.

The fake backend (serving a trivial HTTP upstream) keeps these fast; the real
JupyterLab flow is in test_browser_launch.py.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from labhub.backends.fake import FakeBackend
from labhub.services import users
from tests.web.conftest import PASSWORD, PHONE, audit, screenshot

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream):
    return await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})


async def launch(caller, name: str) -> dict:
    resp = await caller.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": name, "size": "small"})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_other_users_cannot_see_or_open_it_and_an_admin_stops_it(hub, browser):
    alice = await hub.user("alice", password=PASSWORD)
    await hub.user("bob", password=PASSWORD)
    await hub.user("root", password=PASSWORD, admin=True)
    inst = await launch(alice, "ws1")
    await hub.wait_status(alice, inst["id"], {"running"})

    bob = await browser.user(hub.url)
    page = await bob.login("bob")
    await expect(page.get_by_role("heading", name="Nothing here yet")).to_be_visible()
    assert "ws1" not in await page.locator("main").inner_text()
    for path in (f"/instances/{inst['id']}", f"/instances/{inst['id']}/progress"):
        resp = await page.goto(f"{hub.url}{path}")
        assert resp.status == 403
        await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    await audit(page)
    await screenshot(page, "error-403")
    resp = await page.goto(f"{hub.url}/user/alice/ws1/")  # no access to her instance's origin either
    assert resp.status == 403
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    resp = await page.goto(inst["url"])  # straight to its origin: sent to the hub, which refuses
    assert resp.status == 403 and page.url == f"{hub.url}/user/alice/ws1/"
    await audit(page)
    await screenshot(page, "error-403-instance")
    resp = await page.goto(f"{hub.url}/instances/{'0' * 32}")
    assert resp.status == 404
    await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    await audit(page)
    await screenshot(page, "error-404")
    resp = await page.goto(f"{hub.url}/admin/instances")
    assert resp.status == 403
    assert [(e.url, e.text) for e in bob.errors(statuses={403, 404})] == []

    admin = await browser.user(hub.url)
    page = await admin.login("root")
    await page.get_by_role("link", name="Admin", exact=True).click()
    await expect(page.get_by_role("heading", name="Users")).to_be_visible()
    await page.get_by_role("link", name="Instances", exact=True).click()
    await page.get_by_label("User", exact=True).fill("alice")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"owner=alice"))
    row = page.locator(f'tr[data-instance="{inst["id"]}"]')
    await expect(row.locator("[data-status]")).to_have_text("running")
    await audit(page)
    await screenshot(page, "admin")
    await row.get_by_role("button", name="Stop ws1").click()
    await expect(page).to_have_url(re.compile(r"/admin/instances\?owner=alice"))  # back where we were
    stopped = await hub.wait_status(alice, inst["id"], {"stopped"}, timeout=30)
    assert stopped["reason"] == "admin"
    await expect(row.locator("[data-status]")).to_have_text("stopped")  # live, no reload

    await row.get_by_role("link", name="Details of ws1").click()
    await expect(page.locator("#why")).to_have_text("Why it ended: Stopped by an admin (root).")
    await audit(page)
    await screenshot(page, "instance-stopped")
    await page.goto(f"{hub.url}/admin/system")
    await expect(page.get_by_role("cell", name="healthy", exact=True)).to_be_visible()
    await expect(page.get_by_text("none (fake backend: nothing runs)")).to_be_visible()
    await audit(page)
    await screenshot(page, "admin-system")
    assert [(e.url, e.text) for e in admin.errors()] == []
    assert admin.blocked == bob.blocked == []


async def test_tokens_and_user_management(hub, browser):
    alice = await hub.user("alice", password=PASSWORD)
    await hub.user("root", password=PASSWORD, admin=True)
    async with hub.hub.tx() as session:  # more than a page of users (no passwords: hashing is slow)
        for n in range(60):
            await users.create_user(session, name=f"user{n:03d}")
    inst = await launch(alice, "ws1")
    await hub.wait_status(alice, inst["id"], {"running"})

    web = await browser.user(hub.url)
    page = await web.login("alice")
    await page.get_by_role("link", name="Tokens").click()
    await page.get_by_label("Note").fill("laptop")
    await page.get_by_role("button", name="Create token").click()
    secret = await page.get_by_role("textbox", name="New token").input_value()
    assert secret.startswith("lh_")
    await page.get_by_role("button", name="Copy").click()
    await expect(page.locator("[data-copy-status]")).not_to_be_empty()
    row = page.locator("tr", has_text="laptop")
    await expect(row).to_contain_text("never")  # not used yet
    await audit(page)
    await screenshot(page, "tokens")
    http = hub.client(headers={"Authorization": f"Bearer {secret}"})
    assert (await http.get("/api/v1/me")).json()["name"] == "alice"
    await page.goto(f"{hub.url}/tokens")  # shown once: not again, and the list has its last use
    await expect(page.get_by_role("textbox", name="New token")).to_have_count(0)
    await expect(row).not_to_contain_text("never")
    await row.get_by_role("button", name=re.compile("^Revoke")).click()
    await expect(page.locator("tr", has_text="laptop")).to_have_count(0)
    assert (await http.get("/api/v1/me")).status_code == 401

    phone = await browser.user(hub.url, viewport=PHONE)  # the same person on a phone
    small = await phone.login("alice")
    await expect(small.locator(f'tr[data-instance="{inst["id"]}"] [data-status]')).to_have_text("running")
    await audit(small)  # includes "no sideways scrolling"
    await screenshot(small, "home-phone")
    await small.goto(f"{hub.url}/launch/jupyterlab")
    await audit(small)
    await screenshot(small, "launch-phone")

    admin = await browser.user(hub.url)
    page = await admin.login("root")
    await page.goto(f"{hub.url}/admin/users")
    await expect(page.locator("#users tbody tr")).to_have_count(50)  # a page at a time
    await page.get_by_role("link", name="Next →").click()
    await expect(page.locator("#users tbody tr")).to_have_count(12)  # 62 users
    await page.get_by_role("link", name="← Previous").click()
    await expect(page.locator("#users tbody tr").first).to_contain_text("alice")

    await page.get_by_label("User name").fill("Carol!")
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Add user").click()
    await expect(page.locator("#new-username-error")).to_contain_text("a-z, 0-9")
    await expect(page.locator("#new-password-error")).to_contain_text("at least 8")
    await page.get_by_label("User name").fill("carol")
    await page.get_by_label("Password").fill("long enough")
    await page.get_by_role("button", name="Add user").click()
    await expect(page.get_by_role("status")).to_have_text("Added carol.")
    await page.get_by_role("button", name="Make admin carol").click()
    await expect(page.locator('tr[data-user="carol"]')).to_contain_text("admin")

    await page.get_by_label("Search users").fill("alice")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#users tbody tr")).to_have_count(1)
    await audit(page)
    await screenshot(page, "admin-users")
    await page.get_by_role("button", name="Disable alice").click()
    await expect(page.get_by_role("status")).to_contain_text("Disabled alice")
    await expect(page.locator('tr[data-user="alice"]')).to_contain_text("disabled")
    stopped = await hub.wait_status(await hub.user("helper", admin=True), inst["id"], {"stopped"})
    assert stopped["reason"] == "user_disabled"
    await small.reload()  # her session ended with the account
    await expect(small).to_have_url(re.compile(r"/login"))

    for person in (web, phone, admin):
        assert [(e.url, e.text) for e in person.errors(statuses={422})] == []  # the form with field errors
        assert person.blocked == []
