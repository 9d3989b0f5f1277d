"""Quotas and the admission queue on the HTML pages, over HTTP (no browser): Home's "Your quota" panel, a
queued launch's place on Home, its progress and its page, the admin quota and group forms (CSRF, admins
only, field errors, the "over" notice), and the launch form's custom size and single-instance refusal."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from labhub.backends.fake import FakeBackend
from tests.conftest import Caller, page_csrf
from tests.web.conftest import PASSWORD

pytestmark = pytest.mark.asyncio
HTML = {"Accept": "text/html"}


async def login(hub, name: str, *, admin: bool = False) -> tuple[httpx.AsyncClient, Caller]:
    """A logged-in HTML client (CSRF token in ``client.csrf``) and the same user's API caller."""
    caller = await hub.user(name, password=PASSWORD, admin=admin)
    client = hub.client(headers=HTML)
    resp = await client.post("/login", data={"username": name, "password": PASSWORD,
                                             "csrf_token": await page_csrf(client), "next": "/"})
    assert resp.status_code == 303, resp.text
    client.csrf = await page_csrf(client, "/")
    return client, caller


def text_of(page: str) -> str:
    """The page's text, tags dropped and white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def field_errors(page: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in re.findall(r'<p class="field-error" id="([^"]+)-error">([^<]*)</p>', page)}


async def launch(caller: Caller, name: str, **body: object) -> dict:
    made = await caller.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": name, "size": "small",
                                                             **body})
    assert made.status_code == 201, made.text
    return made.json()


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream):
    return await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)},
                           quota={"instances": 1, "gpu_hours": 40})


async def test_home_shows_the_quota_and_a_queued_launchs_place(hub):
    alice, api = await login(hub, "alice")
    home = text_of((await alice.get("/")).text)
    assert "Your quota" in home and "Instances 0 of 1" in home and "GPU-hours 0 of 40 this month" in home
    assert "No limits" not in home
    assert '<meter min="0" max="1" value="0"' in (await alice.get("/")).text

    first = await launch(api, "ws1")
    await hub.wait_status(api, first["id"], {"running"})
    second = await launch(api, "ws2")
    assert second["status"] == "queued" and second["queue_position"] == 1

    page = (await alice.get("/")).text
    assert "Instances 1 of 1" in text_of(page)
    row = re.search(rf'<tr data-instance="{second["id"]}".*?</tr>', page, re.S).group(0)
    assert "queued (1st)" in text_of(row)

    progress = (await alice.get(f"/instances/{second['id']}/progress")).text
    assert "You are 1st in the queue" in text_of(progress)
    assert "waiting for your quota: 1 of 1 instance in use" in text_of(progress)
    assert 'data-waiting="1"' in progress
    details = text_of((await alice.get(f"/instances/{second['id']}")).text)
    assert "Waiting to start: waiting for your quota: 1 of 1 instance in use; you are 1st in the queue." in details

    # the running one's progress page has no place in the queue
    assert 'id="queue" role="status" hidden' in (await alice.get(f"/instances/{first['id']}/progress")).text


async def test_home_without_a_quota_shows_the_storage_limit_only(start_hub, sqlite_url):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend()}, storage={"max_user_bytes": 2 * 1024**3})
    alice, _ = await login(hub, "alice")
    page = (await alice.get("/")).text
    home = text_of(page)
    assert "Your quota" in home and "Storage 0 MB of 2 GiB" in home  # the site's, always set
    assert "Instances" not in home and "GPU-hours" not in home and page.count("<meter") == 1


async def test_the_admin_quota_form(hub):
    admin, _ = await login(hub, "root", admin=True)
    alice, api = await login(hub, "alice")
    running = await launch(api, "ws1")
    await hub.wait_status(api, running["id"], {"running"})

    page = await admin.get("/admin/users/alice/quota")
    assert page.status_code == 200
    assert "Quota of alice" in text_of(page.text)
    assert re.search(r'In force: <strong data-limit="instances">1</strong> <span class="muted">\(the site.s default\)',
                     html.unescape(page.text))
    assert '<strong data-limit="cpus">no limit</strong>' in page.text
    assert '<strong data-limit="storage_mb">51200</strong> <span class="muted">(the site&#39;s default)' in page.text
    assert 'href="/admin/users/alice/quota"' in (await admin.get("/admin/users")).text  # from the users' list

    # without the form's token: refused, nothing saved
    forged = await admin.post("/admin/users/alice/quota", data={"instances": "0"})
    assert forged.status_code == 403
    assert (await api.http.get("/api/v1/users/alice/quota")).json()["quota"] == {}
    # not an admin (with her own valid token): refused
    assert (await alice.post("/admin/users/alice/quota",
                             data={"instances": "9", "csrf_token": alice.csrf})).status_code == 403
    assert (await alice.get("/admin/users/alice/quota")).status_code == 403

    bad = await admin.post("/admin/users/alice/quota", data={"instances": "-1", "cpus": "lots", "gpus": "2",
                                                             "csrf_token": admin.csrf})
    assert bad.status_code == 422
    errors = field_errors(bad.text)
    assert errors["q-instances"] == "Input should be greater than or equal to 0"
    assert errors["q-cpus"] == "must be a number, e.g. 4 or 2.5"
    assert 'value="lots"' in bad.text and 'value="-1"' in bad.text  # what was typed is kept
    assert (await api.http.get("/api/v1/users/alice/quota")).json()["quota"] == {}

    # lowered below what runs: saved, and the page says what is over (it keeps running)
    saved = await admin.post("/admin/users/alice/quota", data={"instances": "0", "gpus": "", "gpu_hours": "12.5",
                                                               "csrf_token": admin.csrf})
    assert saved.status_code == 200, saved.text
    shown = text_of(saved.text)
    assert "Saved the quota of alice." in shown
    assert "instances: 1 in use, the limit is now 0" in shown
    assert "They keep running; the new limits apply to the next launch." in shown
    assert re.search(r'In force: <strong data-limit="instances">0</strong> <span class="muted">\(set for this user\)',
                     saved.text)
    assert (await api.http.get("/api/v1/users/alice/quota")).json()["quota"] == {"instances": 0, "gpu_hours": 12.5}
    assert (await api.http.get(f"/api/v1/instances/{running['id']}")).json()["status"] == "running"

    # blank again: inherited from the site
    await admin.post("/admin/users/alice/quota", data={"csrf_token": admin.csrf})
    assert (await api.http.get("/api/v1/users/alice/quota")).json()["quota"] == {}
    assert (await admin.get("/admin/users/nobody/quota")).status_code == 404


async def test_a_raised_quota_admits_what_waits(hub):
    admin, _ = await login(hub, "root", admin=True)
    _, api = await login(hub, "alice")
    first = await launch(api, "ws1")
    await hub.wait_status(api, first["id"], {"running"})
    second = await launch(api, "ws2")
    assert second["status"] == "queued"
    saved = await admin.post("/admin/users/alice/quota", data={"instances": "2", "csrf_token": admin.csrf})
    assert saved.status_code == 200 and "Now over" not in saved.text
    await hub.wait_status(api, second["id"], {"running"})  # the reconciler was woken: no wait for its pass


async def test_the_groups_tab_quota_and_policy(hub):
    admin, root = await login(hub, "root", admin=True)
    alice, api = await login(hub, "alice")
    assert "No groups yet" in (await admin.get("/admin/groups")).text
    assert (await root.http.post("/api/v1/groups", json={"name": "lab"})).status_code == 201
    assert (await root.http.put("/api/v1/groups/lab/members/alice")).status_code in (200, 201)

    listing = await admin.get("/admin/groups")
    assert 'href="/admin/groups/lab"' in listing.text and 'aria-current="page">Groups' in listing.text
    assert (await alice.get("/admin/groups")).status_code == 403
    page = await admin.get("/admin/groups/lab")
    assert page.status_code == 200 and "Members (1): alice." in text_of(page.text)

    assert (await admin.post("/admin/groups/lab/quota", data={"instances": "3"})).status_code == 403  # no token
    assert (await alice.post("/admin/groups/lab/quota", data={"instances": "3", "csrf_token": alice.csrf})
            ).status_code == 403
    bad = await admin.post("/admin/groups/lab/quota", data={"gpus": "-2", "csrf_token": admin.csrf})
    assert bad.status_code == 422 and field_errors(bad.text)["gq-gpus"].startswith("Input should be greater")
    saved = await admin.post("/admin/groups/lab/quota", data={"instances": "3", "csrf_token": admin.csrf})
    assert saved.status_code == 200 and "Saved the quota of lab." in text_of(saved.text)
    report = (await api.http.get("/api/v1/users/alice/quota")).json()
    assert report["limits"]["instances"] == 3 and report["source"]["instances"] == "group:lab"

    assert (await admin.post("/admin/groups/lab/policy", data={"priority": "5"})).status_code == 403
    bad = await admin.post("/admin/groups/lab/policy", data={
        "priority": "high", "self_service": "1", "custom.cpus": "2", "csrf_token": admin.csrf})
    assert bad.status_code == 422
    assert field_errors(bad.text)["p-priority"] == "must be a whole number from -1000 to 1000"
    bad = await admin.post("/admin/groups/lab/policy", data={
        "priority": "5", "self_service": "1", "custom.cpus": "2", "max_hours": "0", "csrf_token": admin.csrf})
    errors = field_errors(bad.text)
    assert bad.status_code == 422 and errors["p-custom-memory_mb"] == "Field required" and "p-max_hours" in errors
    saved = await admin.post("/admin/groups/lab/policy", data={
        "priority": "5", "self_service": "1", "max_hours": "6", "single_instance": "1", "custom.cpus": "2",
        "custom.memory_mb": "2048", "csrf_token": admin.csrf})
    assert saved.status_code == 200, saved.text
    assert "Saved the launch policy of lab." in text_of(saved.text)
    group = (await root.http.get("/api/v1/groups/lab/quota")).json()
    assert group["priority"] == 5 and group["self_service"] is True
    assert group["policy"] == {"max_hours": 6, "single_instance": True,
                               "custom_size": {"cpus": 2, "memory_mb": 2048}}
    assert 'id="p-single_instance" name="single_instance" value="1" checked' in saved.text

    # the launch form now offers a custom size within the policy's maximum
    form = await alice.get("/launch/jupyterlab")
    assert 'id="size-custom" name="size" value="custom"' in form.text
    assert re.search(r'id="custom-cpus" name="custom.cpus"[^>]*max="2"', form.text)
    assert re.search(r'id="custom-memory_mb" name="custom.memory_mb"[^>]*max="2048"', form.text)
    too_big = await alice.post("/launch/jupyterlab", data={
        "csrf_token": alice.csrf, "name": "big", "size": "custom", "hours": "2", "custom.cpus": "8",
        "custom.memory_mb": "x"})
    assert too_big.status_code == 422
    errors = field_errors(too_big.text)
    assert errors["custom-memory_mb"] == "must be a number, e.g. 4 or 2.5"
    too_big = await alice.post("/launch/jupyterlab", data={
        "csrf_token": alice.csrf, "name": "big", "size": "custom", "hours": "2", "custom.cpus": "8",
        "custom.memory_mb": "1024"})
    assert too_big.status_code == 422 and field_errors(too_big.text)["custom-cpus"] == "must be 0.1 to 2"
    made = await alice.post("/launch/jupyterlab", data={
        "csrf_token": alice.csrf, "name": "mine", "size": "custom", "hours": "2", "custom.cpus": "1.5",
        "custom.memory_mb": "1024"})
    assert made.status_code == 303, made.text
    listed = (await api.http.get("/api/v1/instances?name=mine")).json()[0]
    assert listed["size"] == "custom" and listed["resources"] == {"cpus": 1.5, "memory_mb": 1024, "gpus": 0}

    # single-instance mode: a second launch is refused with a link to the first
    again = await alice.post("/launch/jupyterlab", data={
        "csrf_token": alice.csrf, "name": "other", "size": "small", "hours": "2"})
    assert again.status_code == 409
    refusal = re.search(r'<div class="notice bad" role="alert" id="single-instance">.*?</div>\s*</div>', again.text,
                        re.S).group(0)
    assert "You already have JupyterLab running as &#39;mine&#39;: open it instead." in refusal
    assert 'href="/user/alice/mine/">Open mine</a>' in refusal
    again_form = await alice.get(f"/launch/jupyterlab?again={listed['id']}")
    assert re.search(r'id="custom-cpus" name="custom.cpus"[^>]*value="1.5"', again_form.text)
