"""In a real browser: the instance page's Share section (share with a user, a refusal beside the form, the
list with Revoke), the recipient's "Shared with you" on Home and the instance opening at its own origin
(and not after the revocation), and an admin opening a workspace to anyone, with its badge, for a browser
that never logged in.  The fake backend serves the echo upstream of tests/conftest.py as the workspace.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from labhub.backends.fake import FakeBackend
from tests.web.conftest import PASSWORD, PHONE, audit, screenshot

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream):
    return await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})


async def test_the_share_dialog_and_what_the_recipient_sees(hub, browser):
    alice = await hub.user("alice", password=PASSWORD)
    await hub.user("bob", password=PASSWORD)
    await hub.user("root", password=PASSWORD, admin=True)
    made = await alice.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws", "size": "small"})
    assert made.status_code == 201, made.text
    inst = await hub.wait_status(alice, made.json()["id"], {"running"})

    owner = await browser.user(hub.url)
    page = await owner.login("alice")
    await page.goto(f"{hub.url}/instances/{inst['id']}")
    sharing = page.locator("#sharing")
    await expect(sharing.get_by_role("heading", name="Share")).to_be_visible()
    await expect(page.locator("#shares-empty")).to_contain_text("Not shared with anyone")
    await expect(page.locator("h1 .chip.shared")).to_have_count(0)
    await audit(page)

    # a name nobody has: said beside the field, with what was typed kept
    await sharing.get_by_label("Whom to share it with").fill("nobody")
    await sharing.get_by_role("button", name="Share", exact=True).click()
    await expect(page.locator("#share-name-error")).to_have_text("no active user named 'nobody'")
    await expect(page.locator("#share-name")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#share-name")).to_have_value("nobody")

    await sharing.get_by_label("Whom to share it with").fill("bob")
    await sharing.get_by_role("button", name="Share", exact=True).click()
    await expect(page).to_have_url(re.compile(r"#sharing$"))
    rows = page.locator("#shares-table tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator("th")).to_have_text("bob")
    await expect(rows.first.locator("td").first).to_have_text("alice")
    await expect(page.locator("h1 .chip.shared")).to_have_text("shared")
    await expect(page.locator("#events")).to_contain_text("shared with bob")
    await audit(page)
    await screenshot(page, "share")
    await page.goto(hub.url + "/")
    await expect(page.locator("#instances .chip.shared")).to_have_text("shared")  # her Home says so too

    # bob: Home lists it under "Shared with you"; Open takes him to its own origin, through the hub's grant
    recipient = await browser.user(hub.url)
    bob = await recipient.login("bob")
    shared = bob.locator("#shared-table tbody tr")
    await expect(shared).to_have_count(1)
    await expect(shared.first.locator("td")).to_contain_text(["alice", "jupyterlab", "running", "you"])
    await audit(bob)
    await shared.first.get_by_role("link", name="Open alice's ws").click()
    await expect(bob).to_have_url(inst["url"])
    await expect(bob.locator("body")).to_contain_text('"path": "/"')  # the workspace answered him

    # revoked by its owner: his next visit is refused (the origin sends him to the hub, which says no)
    await page.goto(f"{hub.url}/instances/{inst['id']}")
    await page.get_by_role("button", name="Revoke bob's access").click()
    await expect(page.locator("#shares-empty")).to_be_visible()
    await expect(page.locator("#shares-table")).to_have_count(0)
    answer = await bob.goto(inst["url"] + "lab")
    assert answer.status == 403 and bob.url == f"{hub.url}/user/alice/ws/lab"
    await bob.goto(hub.url + "/")
    await expect(bob.locator("#shared-with-me")).to_have_count(0)

    # the owner has no switch to open it to everyone; an admin has, and its badge says so
    await expect(page.locator("#access-form")).to_have_count(0)
    admin = await (await browser.user(hub.url)).login("root")
    await admin.goto(f"{hub.url}/instances/{inst['id']}")
    await admin.get_by_label("Who may open it").select_option("anyone")
    await admin.get_by_role("button", name="Apply").click()
    await expect(admin.locator("#open-notice")).to_contain_text("Anyone who has the address may open it")
    await expect(admin.locator("h1 .chip.public")).to_have_text("open to anyone")
    await audit(admin)
    await screenshot(admin, "share-open")

    # a browser that never logged in opens it; bob's Home lists it again, as open to anyone
    stranger = await (await browser.user(hub.url)).page()
    opened = await stranger.goto(inst["url"])
    assert opened.status == 200 and stranger.url == inst["url"]
    await expect(stranger.locator("body")).to_contain_text('"path": "/"')
    await bob.reload()
    await expect(bob.locator("#shared-table tbody tr").first.locator("td")).to_contain_text(["anyone"])
    await expect(bob.locator("#shared-table .chip.public")).to_have_text("open to anyone")

    await admin.set_viewport_size(PHONE)
    await audit(admin)
    await page.goto(f"{hub.url}/instances/{inst['id']}")
    await page.set_viewport_size(PHONE)
    await audit(page)
    for web in browser.users:
        assert web.errors(statuses=(403, 422)) == [], web.errors(statuses=(403, 422))
