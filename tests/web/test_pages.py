"""The HTML pages over HTTP (no browser): access, CSRF, field errors, live stream, admin actions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import httpx
import pytest

from labhub.backends.fake import FakeBackend
from labhub.services import views
from tests.conftest import page_csrf
from tests.web.conftest import PASSWORD

pytestmark = pytest.mark.asyncio
HTML = {"Accept": "text/html"}


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream):
    harness = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})
    harness.fake = harness.hub.backends["fake"]
    return harness


async def browser_login(hub, name: str, *, admin: bool = False) -> httpx.AsyncClient:
    """A logged-in HTML client (cookies, CSRF token in ``client.csrf``)."""
    await hub.user(name, password=PASSWORD, admin=admin)
    client = hub.client(headers=HTML)
    resp = await client.post("/login", data={"username": name, "password": PASSWORD,
                                             "csrf_token": await page_csrf(client), "next": "/"})
    assert resp.status_code == 303, resp.text
    client.csrf = await page_csrf(client, "/")  # bound to the new session
    return client


def field_errors(page: str) -> dict[str, str]:
    return dict(re.findall(r'<p class="field-error" id="([^"]+)-error">([^<]*)</p>', page))


async def launch(client, name: str = "ws1", **form: str) -> httpx.Response:
    data = {"csrf_token": client.csrf, "name": name, "size": "small", "hours": "2", **form}
    return await client.post("/launch/jupyterlab", data=data)


async def test_anonymous_visitors_are_sent_to_log_in(hub):
    anon = hub.client(headers=HTML)
    for path in ("/", "/launch", "/tokens", "/admin/users", f"/instances/{'0' * 32}"):
        resp = await anon.get(path)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login?next="), path
    page = await anon.get("/login")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<label for="username">' in page.text
    assert (await anon.get("/pending")).status_code == 200
    assert (await anon.get("/favicon.ico")).headers["content-type"] == "image/svg+xml"


async def test_wrong_password_and_forged_forms(hub):
    await hub.user("alice", password=PASSWORD)
    client = hub.client(headers=HTML)
    csrf = await page_csrf(client)
    bad = await client.post("/login", data={"username": "alice", "password": "nope", "csrf_token": csrf})
    assert bad.status_code == 401 and "Wrong user name or password." in bad.text
    forged = await client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": "x"})
    assert forged.status_code == 403
    offsite = await client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf,
                                                "next": "//evil.example/"})
    assert offsite.headers["location"] == "/"


async def test_launch_form_suggests_validates_and_launches(hub):
    alice = await browser_login(hub, "alice")
    home = await alice.get("/")
    assert "Nothing here yet" in home.text
    catalog = await alice.get("/launch")
    assert 'href="/launch/jupyterlab"' in catalog.text
    form = await alice.get("/launch/jupyterlab")
    assert 'value="jupyterlab-1"' in form.text
    assert re.search(r'id="size-gpu"[^>]* disabled', form.text) and "the fake backend has no GPUs" in form.text

    bad = await launch(alice, "Bad_Name", hours="100", size="huge")
    assert bad.status_code == 422
    assert set(field_errors(bad.text)) == {"name", "size", "hours"}
    assert 'aria-invalid="true"' in bad.text and 'id="error-summary"' in bad.text
    assert (await launch(alice, "ws1", hours="soon")).status_code == 422
    assert (await launch(alice, "ws1", csrf_token="forged")).status_code == 403  # noqa: S106
    assert (await alice.get("/api/v1/instances")).json() == []

    ok = await launch(alice)
    assert ok.status_code == 303 and re.fullmatch(r"/instances/[0-9a-f]{32}/progress", ok.headers["location"])
    progress = await alice.get(ok.headers["location"])
    assert progress.status_code == 200 and "JupyterLab requested" in progress.text
    again = await launch(alice)  # the name is in use now
    assert again.status_code == 409 and "already have an instance named" in field_errors(again.text)["name"]
    form = await alice.get("/launch/jupyterlab")
    assert 'value="jupyterlab-1"' in form.text and "&#34;ws1&#34;" in form.text  # taken names, for the script


async def test_home_details_stop_why_and_delete(hub):
    alice = await browser_login(hub, "alice")
    instance_id = (await launch(alice)).headers["location"].split("/")[2]
    caller = await hub.user("alice-api", admin=True)
    await hub.wait_status(caller, instance_id, {"running"})
    home = await alice.get("/")
    assert f'data-instance="{instance_id}"' in home.text and ">running<" in home.text
    details = await alice.get(f"/instances/{instance_id}")
    assert "ready after" in details.text and "http://ws1--alice.localhost:" in details.text  # its own origin

    stop = await alice.post(f"/instances/{instance_id}/stop", data={"csrf_token": alice.csrf, "next": "/"})
    assert stop.status_code == 303 and stop.headers["location"] == "/"
    await hub.wait_status(caller, instance_id, {"stopped"})
    details = await alice.get(f"/instances/{instance_id}")
    assert "Why it ended:</strong> Stopped by its owner." in details.text
    assert (await alice.get("/user/alice/ws1/")).status_code == 503  # the not-running page
    delete = await alice.post(f"/instances/{instance_id}/delete", data={"csrf_token": alice.csrf})
    assert delete.status_code == 303
    assert (await alice.get(f"/instances/{instance_id}")).status_code == 404


async def test_a_write_is_committed_before_its_answer_is_sent(hub, monkeypatch):
    """A client that follows a 303 (or reads right after a write) sees the write, however slow the
    commit: the request's transaction ends before the response leaves, not after."""
    alice = await browser_login(hub, "alice")
    instance_id = (await launch(alice)).headers["location"].split("/")[2]
    caller = await hub.user("alice-api", admin=True)
    await hub.wait_status(caller, instance_id, {"running"})
    await alice.post(f"/instances/{instance_id}/stop", data={"csrf_token": alice.csrf})
    await hub.wait_status(caller, instance_id, {"stopped"})
    tx = hub.hub.tx

    @contextlib.asynccontextmanager
    async def slow_commit():
        async with tx() as session:
            yield session
            await asyncio.sleep(0.5)  # the commit follows

    monkeypatch.setattr(hub.hub, "tx", slow_commit)
    delete = await alice.post(f"/instances/{instance_id}/delete", data={"csrf_token": alice.csrf})
    assert delete.status_code == 303
    monkeypatch.setattr(hub.hub, "tx", tx)
    assert (await alice.get(f"/instances/{instance_id}")).status_code == 404


async def test_403_for_someone_elses_404_for_missing(hub):
    alice = await browser_login(hub, "alice")
    bob = await browser_login(hub, "bob")
    instance_id = (await launch(alice)).headers["location"].split("/")[2]
    for path in (f"/instances/{instance_id}", f"/instances/{instance_id}/progress"):
        resp = await bob.get(path)
        assert resp.status_code == 403 and "Not allowed" in resp.text and "Log out" in resp.text
    assert (await bob.post(f"/instances/{instance_id}/stop", data={"csrf_token": bob.csrf})).status_code == 403
    assert (await bob.post(f"/instances/{instance_id}/retry", data={"csrf_token": bob.csrf})).status_code == 403
    missing = await bob.get(f"/instances/{'0' * 32}")
    assert missing.status_code == 404 and "Not found" in missing.text
    assert (await bob.get("/no/such/page")).status_code == 404
    for path in ("/admin/users", "/admin/instances", "/admin/system", "/live/instances?all=1"):
        assert (await bob.get(path)).status_code == 403, path


async def test_a_friendly_500(hub, monkeypatch):
    alice = await browser_login(hub, "alice")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(views, "suggest_name", broken)
    resp = await alice.get("/launch/jupyterlab")
    assert resp.status_code == 500 and "Something went wrong" in resp.text and "boom" not in resp.text


async def test_live_stream_has_only_my_instances(hub):
    alice = await browser_login(hub, "alice")
    bob = await browser_login(hub, "bob")
    mine = (await launch(alice)).headers["location"].split("/")[2]
    theirs = (await launch(bob)).headers["location"].split("/")[2]

    async def statuses(client, url: str, want: str) -> list[tuple[str, str]]:
        seen = []
        async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            async with asyncio.timeout(20):
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        seen.append((event["instance_id"], event["status"]))
                        if event["instance_id"] == want and event["status"] == "running":
                            return seen
        return seen

    seen = await statuses(alice, "/live/instances?after=0", mine)
    assert {iid for iid, _ in seen} == {mine}
    assert seen[0] == (mine, "requested") and seen[-1] == (mine, "running")
    root = await browser_login(hub, "root", admin=True)
    seen = await statuses(root, "/live/instances?all=1&after=0", theirs)
    assert {iid for iid, _ in seen} >= {mine, theirs}


async def test_tokens_page_shows_the_secret_once(hub):
    alice = await browser_login(hub, "alice")
    created = await alice.post("/tokens", data={"csrf_token": alice.csrf, "note": "ci", "scopes": ["read"],
                                                "expires": "7"})
    assert created.status_code == 200
    secret = re.search(r'id="new-token" readonly value="(lh_[^"]+)"', created.text).group(1)
    listed = await alice.get("/tokens")
    assert secret not in listed.text and secret[:8] in listed.text and "ci" in listed.text
    api = hub.client(headers={"Authorization": f"Bearer {secret}"})
    assert (await api.get("/api/v1/instances")).status_code == 200
    assert (await api.post("/api/v1/tokens", json={})).status_code == 403  # read only
    bad = await alice.post("/tokens", data={"csrf_token": alice.csrf, "scopes": ["admin"], "expires": "7"})
    assert bad.status_code == 422 and "scopes" in field_errors(bad.text)
    token_id = re.search(r'class="highlight">.*?action="/tokens/(\d+)/revoke"', created.text, re.S).group(1)
    revoked = await alice.post(f"/tokens/{token_id}/revoke", data={"csrf_token": alice.csrf})
    assert revoked.status_code == 303
    assert (await api.get("/api/v1/instances")).status_code == 401


async def test_admin_disables_a_user_and_their_instances_stop(hub):
    root = await browser_login(hub, "root", admin=True)
    alice = await browser_login(hub, "alice")
    instance_id = (await launch(alice)).headers["location"].split("/")[2]
    watcher = await hub.user("watcher", admin=True)
    await hub.wait_status(watcher, instance_id, {"running"})

    page = await root.get("/admin/users", params={"q": "ali"})
    assert 'data-user="alice"' in page.text and 'data-user="root"' not in page.text
    resp = await root.post("/admin/users/alice/disable", data={"csrf_token": root.csrf, "next": "/admin/users?q=ali"})
    assert resp.status_code == 303 and resp.headers["location"] == "/admin/users?q=ali&done=disabled&who=alice"
    stopped = await hub.wait_status(watcher, instance_id, {"stopped"})
    assert stopped["reason"] == "user_disabled"
    assert (await alice.get("/")).status_code == 303  # logged out
    details = await root.get(f"/instances/{instance_id}")
    assert "the owner&#39;s account was disabled by an admin" in details.text

    assert (await root.post("/admin/users/root/disable", data={"csrf_token": root.csrf})).status_code == 409
    assert (await root.post("/admin/users/root/role", data={"csrf_token": root.csrf})).status_code == 409
    assert (await root.post("/admin/users/alice/enable", data={"csrf_token": root.csrf})).status_code == 303
    made = await root.post("/admin/users/alice/role", data={"csrf_token": root.csrf, "make_admin": "1"})
    assert made.status_code == 303
    assert (await root.post("/admin/users/nobody/enable", data={"csrf_token": root.csrf})).status_code == 404
    added = await root.post("/admin/users", data={"csrf_token": root.csrf, "username": "x_y", "password": "1"})
    assert added.status_code == 422 and {"new-username", "new-password"} <= set(field_errors(added.text))
    system = await root.get("/admin/system")
    assert "healthy" in system.text and "fake" in system.text
    assert "not limited by LabHub (the backend queues by itself)" in system.text  # the fake backend's capacity
    listing = await root.get("/admin/instances", params={"owner": "alice", "status": "stopped"})
    assert f'data-instance="{instance_id}"' in listing.text
    assert (await root.get("/admin/instances", params={"status": "bogus"})).status_code == 422


async def test_template_parameters_are_rendered_from_their_schema(start_hub, sqlite_url, echo_upstream, tmp_path):
    site = tmp_path / "templates"
    site.mkdir()
    (site / "train.yaml").write_text("""
title: Training run
kind: job
command: [python3, train.py, "{param:epochs}", "{param:optimizer}"]
params:
  - {name: epochs, title: Epochs, type: integer, min: 1, max: 100, default: 10, help: Passes over the data}
  - {name: optimizer, type: choice, choices: [adam, sgd], default: adam}
  - {name: tag, type: string, pattern: "[a-z]+", required: true}
  - {name: fp16, title: Half precision, type: boolean, default: false}
""")
    hub = await start_hub(sqlite_url, templates_dir=site, backends={"fake": FakeBackend(url=echo_upstream.url)})
    alice = await browser_login(hub, "alice")
    form = await alice.get("/launch/train")
    assert re.search(r'<input type="number" id="param-epochs" name="param.epochs" value="10" step="1"\s+'
                     r'min="1" max="100"', form.text)
    assert '<option value="adam" selected>adam</option>' in form.text
    assert re.search(r'id="param-tag" name="param.tag" value="" maxlength="256"\s+pattern="\[a-z\]\+" required',
                     form.text)
    assert 'type="checkbox" id="param-fp16" name="param.fp16" value="1"' in form.text
    assert "Passes over the data" in form.text

    data = {"csrf_token": alice.csrf, "name": "run1", "size": "small", "hours": "1", "param.epochs": "500",
            "param.optimizer": "rmsprop", "param.tag": "Bad Tag"}
    bad = await alice.post("/launch/train", data=data)
    assert bad.status_code == 422
    assert field_errors(bad.text) == {"param-epochs": "must be at most 100",
                                      "param-optimizer": "must be one of: adam, sgd",
                                      "param-tag": "must match [a-z]+"}
    assert 'href="#param-epochs">Epochs: must be at most 100' in bad.text  # the summary links to the field
    ok = await alice.post("/launch/train", data={**data, "param.epochs": "5", "param.optimizer": "sgd",
                                                 "param.tag": "ok", "param.fp16": "1"})
    assert ok.status_code == 303
    instance_id = ok.headers["location"].split("/")[2]
    inst = (await alice.get(f"/api/v1/instances/{instance_id}", headers={"Accept": "application/json"})).json()
    assert inst["params"] == {"epochs": 5, "optimizer": "sgd", "tag": "ok", "fp16": True}
    again = await alice.get(f"/launch/train?again={instance_id}")  # "change settings" starts from the old ones
    assert 'value="5"' in again.text and '<option value="sgd" selected>' in again.text


async def test_the_system_page_runs_a_clean_up_dry_run_first(hub):
    root = await browser_login(hub, "root", admin=True)
    leftover = hub.hub.home_for("gone-user")
    leftover.mkdir(parents=True)
    page = await root.get("/admin/system")
    assert 'action="/admin/system/cleanup"' in page.text and "Remove these" not in page.text
    assert (await root.post("/admin/system/cleanup", data={"csrf_token": "forged", "apply": "1"})).status_code == 403
    dry = await root.post("/admin/system/cleanup", data={"csrf_token": root.csrf, "apply": "0"})
    assert dry.status_code == 200 and str(leftover) in dry.text and "nothing removed yet" in dry.text
    assert leftover.exists() and "Remove these 1" in dry.text
    done = await root.post("/admin/system/cleanup", data={"csrf_token": root.csrf, "apply": "1"})
    assert done.status_code == 200 and "Removed 1 of 1." in done.text and not leftover.exists()
    alice = await browser_login(hub, "alice")
    assert (await alice.post("/admin/system/cleanup", data={"csrf_token": alice.csrf})).status_code == 403
