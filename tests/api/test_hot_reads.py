"""The hot reads (/me, the instance listing, the templates): no User loaded per request, answers
serialised once, and still every change to an account or a token counts at once."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from labhub.backends.fake import FakeBackend
from labhub.catalog import load_catalog
from labhub.models import User, UserStatus

pytestmark = pytest.mark.asyncio
HOT = ("/api/v1/me", "/api/v1/instances", "/api/v1/templates")
WS = {"template": "jupyterlab", "hours": 1}


@pytest.fixture
async def hub(start_hub, database_url, echo_upstream, tmp_path):
    site = tmp_path / "templates"
    site.mkdir()
    (site / "gpu-lab.yaml").write_text("title: GPU lab\ncommand: [sleep, '3600']\ngroups: [gpu-users]\n")
    return await start_hub(database_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, templates_dir=site)


async def statuses(http) -> list[int]:  # noqa: ANN001
    return [(await http.get(path)).status_code for path in HOT]


async def test_a_disabled_account_and_a_revoked_token_stop_at_once(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    assert await statuses(alice.http) == [200, 200, 200]
    assert hub.hub.auth.cached("token", alice.token) != (False, None)  # what the hot reads answer from now on

    assert (await admin.http.patch("/api/v1/users/alice", json={"status": "disabled"})).status_code == 200
    assert await statuses(alice.http) == [401, 401, 401]
    assert (await admin.http.patch("/api/v1/users/alice", json={"status": "active"})).status_code == 200
    assert await statuses(alice.http) == [200, 200, 200]

    made = (await alice.http.post("/api/v1/tokens", json={"note": "ci"})).json()
    ci = hub.client(headers={"Authorization": f"Bearer {made['token']}"})
    assert await statuses(ci) == [200, 200, 200]
    assert (await alice.http.delete(f"/api/v1/tokens/{made['id']}")).status_code == 204
    assert await statuses(ci) == [401, 401, 401]

    other = (await alice.http.post("/api/v1/tokens", json={"note": "other"})).json()
    ci2 = hub.client(headers={"Authorization": f"Bearer {other['token']}"})
    assert await statuses(ci2) == [200, 200, 200]
    assert (await admin.http.delete(f"/api/v1/users/alice/tokens/{other['id']}")).status_code == 204
    assert await statuses(ci2) == [401, 401, 401]
    assert await statuses(alice.http) == [200, 200, 200]  # her other token is untouched


async def test_a_role_change_counts_at_once_in_the_listing(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    assert (await alice.http.get("/api/v1/instances", params={"all": "true"})).status_code == 403
    assert (await admin.http.patch("/api/v1/users/alice", json={"admin": True})).status_code == 200
    assert (await alice.http.get("/api/v1/instances", params={"all": "true"})).status_code == 200
    assert (await alice.http.get("/api/v1/me")).json()["is_admin"] is True
    assert "gpu-lab" in [t["name"] for t in (await alice.http.get("/api/v1/templates")).json()]
    assert (await admin.http.patch("/api/v1/users/alice", json={"admin": False})).status_code == 200
    assert (await alice.http.get("/api/v1/instances", params={"all": "true"})).status_code == 403
    assert "gpu-lab" not in [t["name"] for t in (await alice.http.get("/api/v1/templates")).json()]


async def test_me_reads_the_account_and_refuses_one_no_longer_active(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    await admin.http.patch("/api/v1/users/alice", json={"email": "alice@lab.example"})
    me = (await alice.http.get("/api/v1/me")).json()
    account = (await admin.http.get("/api/v1/users/alice")).json()
    assert me == {k: account[k] for k in ("name", "role", "status", "email", "is_admin", "created_at",
                                          "last_login_at")}
    assert list(me) == ["name", "role", "status", "email", "is_admin", "created_at", "last_login_at"]
    # a change this hub was not told of (another process's, on SQLite: the CLI's) is seen by /me at once,
    # though the cached principal stays until it expires
    async with hub.hub.engine.begin() as conn:
        await conn.execute(update(User).where(User.name == "alice").values(status=UserStatus.DISABLED))
    assert hub.hub.auth.cached("token", alice.token)[0]
    assert (await alice.http.get("/api/v1/me")).status_code == 401


async def test_the_listing_answers_what_each_instance_does_and_filters(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    bob = await hub.user("bob")
    first = (await alice.http.post("/api/v1/instances", json={**WS, "name": "ws1", "params": {}})).json()
    second = (await alice.http.post("/api/v1/instances", json={**WS, "name": "ws2"})).json()
    theirs = (await bob.http.post("/api/v1/instances", json={**WS, "name": "b1"})).json()
    for caller, inst in ((alice, first), (alice, second), (bob, theirs)):
        await hub.wait_status(caller, inst["id"], {"running"})
    await alice.http.delete(f"/api/v1/instances/{first['id']}")
    await hub.wait_status(alice, first["id"], {"stopped"})

    listed = (await alice.http.get("/api/v1/instances")).json()
    assert [i["id"] for i in listed] == [second["id"], first["id"]]  # newest first, hers only
    for item in listed:  # field for field (and in the same order) what the instance's own answer says
        one = (await alice.http.get(f"/api/v1/instances/{item['id']}")).json()
        assert item == one and list(item) == list(one)
    assert isinstance(listed[0]["resources"]["cpus"], float) and isinstance(listed[0]["hours"], float)

    def ids(resp) -> list[str]:  # noqa: ANN001
        assert resp.status_code == 200, resp.text
        return [i["id"] for i in resp.json()]

    get = alice.http.get
    assert ids(await get("/api/v1/instances", params={"name": "ws1"})) == [first["id"]]
    assert ids(await get("/api/v1/instances", params={"status": "stopped"})) == [first["id"]]
    assert ids(await get("/api/v1/instances", params={"active": "true"})) == [second["id"]]
    assert ids(await get("/api/v1/instances", params={"active": "false"})) == [first["id"]]
    assert ids(await get("/api/v1/instances", params={"limit": 1, "offset": 1})) == [first["id"]]
    assert ids(await get("/api/v1/instances", params={"owner": "alice"})) == [second["id"], first["id"]]
    assert (await get("/api/v1/instances", params={"owner": "bob"})).status_code == 403
    assert (await get("/api/v1/instances", params={"all": "true"})).status_code == 403
    assert ids(await get("/api/v1/instances", params={"owner": "nobody"})) == []  # says nothing to a non-admin

    everyone = await admin.http.get("/api/v1/instances", params={"all": "true", "limit": 1000})
    assert set(ids(everyone)) == {first["id"], second["id"], theirs["id"]}
    assert ids(await admin.http.get("/api/v1/instances", params={"owner": "bob"})) == [theirs["id"]]
    assert ids(await admin.http.get("/api/v1/instances")) == []  # the admin's own
    missing = await admin.http.get("/api/v1/instances", params={"owner": "nobody"})
    assert missing.status_code == 404 and missing.json()["fields"] == {"owner": "no user named 'nobody'"}


async def test_the_listing_in_path_mode(start_hub, sqlite_url, echo_upstream):
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, origins="path")
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json={**WS, "name": "ws1"})).json()
    [listed] = (await alice.http.get("/api/v1/instances")).json()
    assert listed["url"] == inst["url"] == f"{hub.url}/user/alice/ws1/"


async def test_templates_are_serialised_once_per_catalog_and_filtered_per_caller(hub, tmp_path):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    first = await alice.http.get("/api/v1/templates")
    assert [t["name"] for t in first.json()] == ["jupyterlab", "mlaas4hep", "model-service"]
    memo = hub.hub.catalog.memo["api.templates"]
    again = await alice.http.get("/api/v1/templates")
    assert again.content == first.content and hub.hub.catalog.memo["api.templates"] is memo
    assert [t["name"] for t in (await admin.http.get("/api/v1/templates")).json()] == [
        "gpu-lab", "jupyterlab", "mlaas4hep", "model-service"]

    # a group membership counts at once (it is read per request, only when some template is limited)
    await admin.http.post("/api/v1/groups", json={"name": "gpu-users"})
    await admin.http.put("/api/v1/groups/gpu-users/members/alice")
    lab = {t["name"]: t for t in (await alice.http.get("/api/v1/templates")).json()}
    assert list(lab) == ["gpu-lab", "jupyterlab", "mlaas4hep", "model-service"]
    assert lab["jupyterlab"]["sizes"][0] == {"name": "small", "cpus": 1.0, "memory_mb": 2048, "gpus": 0,
                                             "description": "1 CPU, 2 GiB", "allowed": True, "reason": ""}
    assert lab["gpu-lab"]["backends"] == ["fake"] and lab["gpu-lab"]["default_size"]

    # a reloaded catalog is a new object: its answer is made afresh
    site = tmp_path / "reloaded"
    site.mkdir()
    (site / "rstudio.yaml").write_text("title: RStudio\ncommand: [sleep, '3600']\n")
    hub.hub.catalog = load_catalog(site)
    assert [t["name"] for t in (await alice.http.get("/api/v1/templates")).json()] == [
        "jupyterlab", "mlaas4hep", "model-service", "rstudio"]


async def test_health_needs_nothing_and_says_the_version(hub):
    from labhub import __version__

    body = (await hub.client().get("/api/v1/health")).json()
    assert body["status"] == "ok" and body["version"] == __version__ and body["uptime_s"] >= 0
    assert list(body) == ["status", "version", "uptime_s"]
