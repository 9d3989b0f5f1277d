"""In a real browser: a site quota of one instance.  Home's "Your quota" panel; a second and a third launch
wait in the admission queue, their progress pages saying their place and what they wait for; stopping the
first starts the second (its page moves on to it by itself) and moves the third up (its page says so
without a reload).  An admin lowers the user's quota in Admin › Users and is told what is now over.
The fake backend serves the echo upstream of tests/conftest.py as the workspaces.
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
    return await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)},
                           quota={"instances": 1})


async def launch(page, base_url: str, name: str) -> str:  # noqa: ANN001
    """Launch JupyterLab as ``name`` through the form; the instance's id (on its progress page)."""
    await page.goto(f"{base_url}/launch/jupyterlab")
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_role("button", name="Launch", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/instances/[0-9a-f]{32}/progress$"))
    return page.url.split("/")[-2]


async def test_the_queue_on_home_and_progress_and_an_admin_lowering_a_quota(hub, browser):
    await hub.user("alice", password=PASSWORD)
    await hub.user("root", password=PASSWORD, admin=True)
    web = await browser.user(hub.url)
    home = await web.login("alice")
    panel = home.locator("#quota")
    await expect(panel.get_by_role("heading", name="Your quota")).to_be_visible()
    await expect(panel).to_contain_text("Instances 0 of 1")
    await expect(panel.get_by_role("meter", name="Instances 0 of 1")).to_have_attribute("value", "0")
    await audit(home)

    first = await web.page()
    await launch(first, hub.url, "ws1")
    await first.wait_for_url(re.compile(r"^http://ws1--alice\.localhost:\d+/"), timeout=30_000)  # opened by itself

    second = await web.page()
    second_id = await launch(second, hub.url, "ws2")
    await expect(second.locator("#queue-place")).to_have_text("You are 1st in the queue")
    await expect(second.locator("#now-text")).to_have_text("waiting for your quota: 1 of 1 instance in use")
    await expect(second.locator("#status")).to_have_text("queued")
    await audit(second)
    await screenshot(second, "progress-queued")

    third = await web.page()
    third_id = await launch(third, hub.url, "ws3")
    await expect(third.locator("#queue-place")).to_have_text("You are 2nd in the queue")

    await home.reload()
    await expect(panel).to_contain_text("Instances 1 of 1")
    await expect(home.locator(f'tr[data-instance="{second_id}"] [data-label="Status"]')).to_have_text("queued (1st)")
    await expect(home.locator(f'tr[data-instance="{third_id}"] [data-label="Status"]')).to_have_text("queued (2nd)")
    await audit(home)
    await screenshot(home, "home-quota")
    await home.get_by_role("link", name="Details of ws3").click()
    await expect(home.locator("#queue-notice")).to_contain_text(
        "waiting for your quota: 1 of 1 instance in use; you are 2nd in the queue")

    # the first stops: the second starts, and its page opens it; the third moves up, live
    await home.goto(f"{hub.url}/")
    await home.get_by_role("button", name="Stop ws1").click()
    await second.wait_for_url(re.compile(r"^http://ws2--alice\.localhost:\d+/"), timeout=30_000)
    await expect(third.locator("#queue-place")).to_have_text("You are 1st in the queue", timeout=15_000)
    await expect(home.locator(f'tr[data-instance="{second_id}"] [data-status]')).to_have_text("running",
                                                                                             timeout=15_000)
    await expect(home.locator(f'tr[data-instance="{second_id}"] [data-queue]')).to_have_count(0)
    await home.set_viewport_size(PHONE)
    await audit(home)

    # an admin lowers alice's quota below what runs: told what is over, and that it keeps running
    admin = await (await browser.user(hub.url)).login("root")
    await admin.get_by_role("link", name="Admin").click()
    await admin.locator('tr[data-user="alice"]').get_by_role("link", name="Quota of alice").click()
    await expect(admin.get_by_role("heading", name="Quota of alice")).to_be_visible()
    await expect(admin.locator("#q-instances-help")).to_contain_text("In force: 1 (the site's default); in use: 1")
    await audit(admin)
    await admin.get_by_label("Instances", exact=True).fill("0")
    await admin.get_by_role("button", name="Save quota").click()
    over = admin.locator("#quota-over")
    await expect(over).to_contain_text("instances: 1 in use, the limit is now 0")
    await expect(over).to_contain_text("They keep running; the new limits apply to the next launch.")
    await expect(admin.locator("#q-instances-help")).to_contain_text("In force: 0 (set for this user)")
    await audit(admin)
    await screenshot(admin, "admin-quota")
    await admin.get_by_label("Instances", exact=True).fill("-3")  # refused beside the field
    await admin.get_by_role("button", name="Save quota").click()
    await expect(admin.locator("#q-instances-error")).to_have_text("Input should be greater than or equal to 0")
    await expect(admin.get_by_label("Instances", exact=True)).to_have_attribute("aria-invalid", "true")

    assert [(e.url, e.text) for e in web.errors()] == []
    for user in browser.users:
        assert user.errors(statuses=(422,)) == [], user.errors(statuses=(422,))


async def test_a_groups_policy_offers_a_custom_size_and_one_instance_at_a_time(hub, browser):
    alice = await hub.user("alice", password=PASSWORD)
    root = await hub.user("root", password=PASSWORD, admin=True)
    assert (await root.http.post("/api/v1/groups", json={"name": "lab", "description": "The lab"})).status_code == 201
    assert (await root.http.put("/api/v1/groups/lab/members/alice")).is_success

    admin = await (await browser.user(hub.url)).login("root")
    await admin.goto(f"{hub.url}/admin/users")
    await admin.get_by_role("link", name="Groups", exact=True).click()
    await admin.get_by_role("link", name="Quota and policy of lab").click()
    await expect(admin.locator("#group-members")).to_have_text("Members (1): alice.")
    await admin.locator("#gq-instances").fill("2")
    await admin.get_by_role("button", name="Save quota").click()
    await expect(admin.locator("#group-saved")).to_have_text("Saved the quota of lab.")
    policy = admin.locator("#group-policy-form")
    await policy.get_by_label("Single instance").check()
    await policy.get_by_label("CPUs").fill("2")
    # the memory left blank: refused beside its field
    await policy.get_by_role("button", name="Save policy").click()
    await expect(admin.locator("#p-custom-memory_mb-error")).to_have_text("Field required")
    await policy.get_by_label("Memory (MB)").fill("3072")
    await policy.get_by_role("button", name="Save policy").click()
    await expect(admin.locator("#group-saved")).to_have_text("Saved the launch policy of lab.")
    await expect(policy.get_by_label("Single instance")).to_be_checked()
    await audit(admin)
    await screenshot(admin, "admin-group")

    web = await browser.user(hub.url)
    page = await web.login("alice")
    await page.goto(f"{hub.url}/launch/jupyterlab")
    custom = page.locator("#custom-size")
    await expect(custom).to_be_hidden()  # until "Custom" is chosen
    await page.get_by_role("radio", name=re.compile(r"^Custom up to 2 CPUs")).check()
    await expect(custom).to_be_visible()
    await expect(page.get_by_label("Custom CPUs")).to_have_attribute("max", "2")
    await page.get_by_label("Custom CPUs").fill("3")
    await expect(page.locator("#custom-cpus-error")).to_have_text("Must be at most 2.")  # as you type
    await page.get_by_label("Custom CPUs").fill("1.5")
    await page.get_by_label("Custom memory (MB)").fill("1536")
    await page.get_by_label("Name", exact=True).fill("big")
    await audit(page)
    await screenshot(page, "launch-custom")
    await page.get_by_role("button", name="Launch", exact=True).click()
    await page.wait_for_url(re.compile(r"^http://big--alice\.localhost:\d+/"), timeout=30_000)
    listed = (await alice.http.get("/api/v1/instances?name=big")).json()[0]
    assert listed["resources"] == {"cpus": 1.5, "memory_mb": 1536, "gpus": 0}

    # one at a time: the second launch is refused, with a way to open the first
    await page.goto(f"{hub.url}/launch/jupyterlab")
    await page.get_by_role("button", name="Launch", exact=True).click()
    refusal = page.locator("#single-instance")
    await expect(refusal).to_contain_text("You already have JupyterLab running as 'big': open it instead.")
    await audit(page)
    await refusal.get_by_role("link", name="Open big").click()
    await page.wait_for_url(re.compile(r"^http://big--alice\.localhost:\d+/"))

    for user in browser.users:
        assert user.errors(statuses=(409, 422)) == [], user.errors(statuses=(409, 422))


async def test_extend_and_restart_with_a_new_size_from_the_instance_page(hub, browser):
    await hub.user("alice", password=PASSWORD)
    web = await browser.user(hub.url)
    page = await web.login("alice")
    iid = await launch(page, hub.url, "ws1")
    await page.wait_for_url(re.compile(r"^http://ws1--alice\.localhost:\d+/"), timeout=30_000)
    await page.goto(f"{hub.url}/instances/{iid}")
    await expect(page.locator("#expires")).to_contain_text("(4 h chosen, at most 24 h)")
    await page.get_by_label("Extend by").fill("2")
    await page.get_by_role("button", name="Extend").click()
    await expect(page.locator("#expires")).to_contain_text("(6 h chosen, at most 24 h)")
    await page.get_by_label("Extend by").fill("30")
    await page.get_by_role("button", name="Extend").click()  # past the maximum: the browser's own check first
    await expect(page.locator("#expires")).to_contain_text("(6 h chosen")

    await page.get_by_label("Restart with size").select_option("medium")
    await page.get_by_role("button", name="Restart").click()
    await expect(page).to_have_url(re.compile(r"/instances/[0-9a-f]{32}$"))
    new_id = page.url.rsplit("/", 1)[1]
    assert new_id != iid
    await expect(page.locator("#resources")).to_contain_text("medium: 2 CPUs")
    await audit(page)
    await page.goto(f"{hub.url}/instances/{iid}")
    await expect(page.locator("#events")).to_contain_text("restarted with size medium as a new instance")
    assert [(e.url, e.text) for e in web.errors()] == []
