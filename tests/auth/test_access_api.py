"""Token scopes and expiry, explicit admin-issued tokens, groups and template access, user management."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
from sqlalchemy import insert, update

from labhub.backends.fake import FakeBackend
from labhub.models import ApiToken, User, utcnow

pytestmark = pytest.mark.asyncio
WS = {"template": "jupyterlab", "name": "ws", "hours": 1}


@pytest.fixture
async def hub(start_hub, sqlite_url, tmp_path, echo_upstream):
    site = tmp_path / "templates"
    site.mkdir()
    (site / "gpu-lab.yaml").write_text("title: GPU lab\ncommand: [sleep, '3600']\ngroups: [gpu-users]\n")
    harness = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, templates_dir=site)
    return harness


async def token_for(hub, name, scopes, *, admin=False, expires_in_days=None):
    from labhub.services import credentials, users

    async with hub.hub.tx() as session:
        user = await users.get_user(session, name=name) or await users.create_user(session, name=name, admin=admin)
        _, secret = await credentials.issue_token(session, user=user, scopes=scopes, expires_in_days=expires_in_days)
    return hub.client(headers={"Authorization": f"Bearer {secret}"})


async def test_token_scopes(hub):
    launch = {"template": "jupyterlab", "name": "ws", "size": "small", "hours": 1}
    read = await token_for(hub, "alice", ["read"])
    assert (await read.get("/api/v1/me")).status_code == 200
    assert (await read.get("/api/v1/instances")).status_code == 200
    assert (await read.post("/api/v1/instances", json=launch)).status_code == 403
    assert (await read.post("/api/v1/tokens", json={})).status_code == 403
    inst = await token_for(hub, "alice", ["instances"])
    assert (await inst.post("/api/v1/instances", json=launch)).status_code == 201
    assert (await inst.get("/api/v1/me")).status_code == 403  # not the account itself
    jobs = await token_for(hub, "alice", ["jobs"])
    assert (await jobs.get("/api/v1/instances")).status_code == 403  # jobs is its own scope
    assert (await jobs.post("/api/v1/tokens", json={"scopes": ["jobs"]})).status_code == 403

    admin_read = await token_for(hub, "root", ["read"], admin=True)
    assert (await admin_read.get("/api/v1/me")).status_code == 200
    assert (await admin_read.get("/api/v1/users")).status_code == 403  # admin data needs the admin scope
    admin_scope = await token_for(hub, "root", ["admin"])
    assert (await admin_scope.get("/api/v1/users")).status_code == 200
    assert (await admin_scope.get("/api/v1/me")).status_code == 403
    full_user = await token_for(hub, "alice", ["*"])
    bad = await full_user.post("/api/v1/tokens", json={"scopes": ["admin"]})
    assert bad.status_code == 422 and "scopes" in bad.json()["fields"]
    unknown = await full_user.post("/api/v1/tokens", json={"scopes": ["root"]})
    assert unknown.status_code == 422 and "unknown" in unknown.json()["fields"]["scopes"]


async def test_expiry_last_use_revocation_and_audit(hub):
    alice = await hub.user("alice")
    made = (await alice.http.post("/api/v1/tokens", json={"note": "ci", "scopes": ["read"],
                                                          "expires_in_days": 1})).json()
    assert made["expires_at"] and made["last_used_at"] is None
    ci = hub.client(headers={"Authorization": f"Bearer {made['token']}"})
    assert (await ci.get("/api/v1/me")).status_code == 200
    listed = {t["id"]: t for t in (await alice.http.get("/api/v1/users/alice/tokens")).json()}
    assert listed[made["id"]]["last_used_at"] is not None
    async with hub.hub.tx() as session:
        await session.execute(update(ApiToken).where(ApiToken.id == made["id"])
                              .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    hub.hub.credentials_changed()
    assert (await ci.get("/api/v1/me")).status_code == 401  # expired

    other = (await alice.http.post("/api/v1/tokens", json={})).json()
    bob = await hub.user("bob")
    assert (await bob.http.delete(f"/api/v1/tokens/{other['id']}")).status_code == 404  # not his: no such token
    assert (await bob.http.delete(f"/api/v1/users/alice/tokens/{other['id']}")).status_code == 403
    admin = await hub.user("root", admin=True)
    assert (await admin.http.delete(f"/api/v1/users/bob/tokens/{other['id']}")).status_code == 404  # wrong owner
    assert (await admin.http.delete(f"/api/v1/users/alice/tokens/{other['id']}")).status_code == 204
    events = (await admin.http.get("/api/v1/audit", params={"action": "token.", "target": "alice"})).json()["events"]
    assert [(e["action"], e["actor"]) for e in events][:2] == [("token.revoke", "root"), ("token.create", "alice")]


async def test_an_admin_acts_for_a_user_only_through_the_explicit_endpoint(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    assert (await alice.http.post("/api/v1/users/alice/tokens", json={})).status_code == 403  # admins only
    made = await admin.http.post("/api/v1/users/alice/tokens", json={"note": "support", "scopes": ["instances"],
                                                                      "expires_in_days": 1})
    assert made.status_code == 201
    as_alice = hub.client(headers={"Authorization": f"Bearer {made.json()['token']}"})
    created = await as_alice.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws", "hours": 1})
    assert created.status_code == 201 and created.json()["owner"] == "alice"
    assert (await admin.http.post("/api/v1/users/alice/tokens", json={"scopes": ["admin"]})).status_code == 422
    events = (await admin.http.get("/api/v1/audit", params={"action": "token.create", "target": "alice"})).json()
    assert events["events"][0]["actor"] == "root"
    # without it, an admin's own launches are their own: no implicit "act as"; launching *for* alice is
    # explicit (``owner``), audited, and her token is not involved
    mine = await admin.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws2", "hours": 1})
    assert mine.status_code == 201 and mine.json()["owner"] == "root"
    for_her = await admin.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": "ws3", "hours": 1,
                                                               "owner": "alice"})
    assert for_her.status_code == 201 and for_her.json()["owner"] == "alice"
    events = (await admin.http.get("/api/v1/audit", params={"action": "instance.launch_for"})).json()["events"]
    assert [(e["actor"], e["target"]) for e in events] == [("root", "alice/ws3")]


async def test_groups_limit_templates_and_are_managed_by_admins(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    launch = {"template": "gpu-lab", "name": "g1", "hours": 1}
    assert "gpu-lab" not in [t["name"] for t in (await alice.http.get("/api/v1/templates")).json()]
    refused = await alice.http.post("/api/v1/instances", json=launch)
    assert refused.status_code == 422 and "template" in refused.json()["fields"]

    assert (await alice.http.post("/api/v1/groups", json={"name": "gpu-users"})).status_code == 403
    created = await admin.http.post("/api/v1/groups", json={"name": "gpu-users", "description": "GPU people"})
    assert created.status_code == 201
    assert (await admin.http.post("/api/v1/groups", json={"name": "gpu-users"})).status_code == 409
    bad = await admin.http.post("/api/v1/groups", json={"name": "GPU Users"})
    assert bad.status_code == 422 and "name" in bad.json()["fields"]
    assert (await admin.http.put("/api/v1/groups/gpu-users/members/alice")).json()["added"] is True
    assert (await admin.http.put("/api/v1/groups/gpu-users/members/alice")).json()["added"] is False
    assert (await admin.http.put("/api/v1/groups/gpu-users/members/nobody")).status_code == 404

    assert "gpu-lab" in [t["name"] for t in (await alice.http.get("/api/v1/templates")).json()]
    assert (await alice.http.post("/api/v1/instances", json=launch)).status_code == 201
    assert [g["name"] for g in (await alice.http.get("/api/v1/groups")).json()] == ["gpu-users"]
    detail = (await alice.http.get("/api/v1/groups/gpu-users")).json()
    assert detail["member_list"] == [{"name": "alice", "source": ""}]
    bob = await hub.user("bob")
    assert (await bob.http.get("/api/v1/groups")).json() == []
    assert (await bob.http.get("/api/v1/groups/gpu-users")).status_code == 404  # not his: not revealed
    changed = await admin.http.patch("/api/v1/groups/gpu-users", json={"description": "new"})
    assert changed.json()["description"] == "new"
    assert (await admin.http.delete("/api/v1/groups/gpu-users/members/alice")).status_code == 204
    assert (await admin.http.delete("/api/v1/groups/gpu-users/members/alice")).status_code == 404
    assert (await admin.http.delete("/api/v1/groups/gpu-users")).status_code == 204
    assert (await admin.http.get("/api/v1/groups")).json() == []


async def test_disable_stops_instances_with_the_reason_and_role_changes_apply_at_once(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json=WS)).json()
    await hub.wait_status(alice, inst["id"], {"running"})
    lab = hub.instance_client(alice, inst)
    assert (await lab.get("/api")).status_code == 200  # cached in the proxy now

    assert (await alice.http.get("/api/v1/users")).status_code == 403
    made = await admin.http.patch("/api/v1/users/alice", json={"admin": True})
    assert made.status_code == 200 and made.json()["is_admin"]
    assert (await alice.http.get("/api/v1/users")).status_code == 200  # the next request sees the new role
    assert (await admin.http.patch("/api/v1/users/alice", json={"admin": False})).status_code == 200
    assert (await alice.http.get("/api/v1/users")).status_code == 403
    assert (await admin.http.patch("/api/v1/users/root", json={"admin": False})).status_code == 409

    off = await admin.http.patch("/api/v1/users/alice", json={"status": "disabled", "reason": "left the lab"})
    assert off.status_code == 200 and off.json()["status_reason"] == "disabled by root: left the lab"
    assert (await alice.http.get("/api/v1/me")).status_code == 401
    assert (await lab.get("/api")).status_code == 401  # the proxy too, at once
    stopped = await hub.wait_status(admin, inst["id"], {"stopped"})
    assert stopped["reason"] == "user_disabled"
    events = (await admin.http.get(f"/api/v1/instances/{inst['id']}/events")).json()
    assert any("the account alice was disabled by admin root" in e["message"] for e in events)
    bad = await admin.http.patch("/api/v1/users/alice", json={"status": "gone"})
    assert bad.status_code == 422 and "status" in bad.json()["fields"]
    assert (await admin.http.patch("/api/v1/users/alice", json={"status": "active"})).json()["status"] == "active"


async def test_delete_stops_instances_then_removes_the_account_and_its_files(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    inst = (await alice.http.post("/api/v1/instances", json=WS)).json()
    await hub.wait_status(alice, inst["id"], {"running"})
    home = hub.hub.home_for("alice")
    home.mkdir(parents=True, exist_ok=True)
    (home / "notes.txt").write_text("x")
    resp = await admin.http.delete("/api/v1/users/alice")
    assert resp.status_code == 202 and resp.json()["stopping"] == [inst["id"]]
    assert (await alice.http.get("/api/v1/me")).status_code == 401
    deadline = time.monotonic() + 20
    while (await admin.http.get("/api/v1/users/alice")).status_code != 404:
        assert time.monotonic() < deadline, "alice was not deleted"
        await asyncio.sleep(0.1)
    assert not home.exists()
    bob = await hub.user("bob")
    assert (await admin.http.delete("/api/v1/users/bob")).status_code == 204
    assert (await admin.http.delete("/api/v1/users/root")).status_code == 409
    events = [e["action"] for e in (await admin.http.get("/api/v1/audit", params={"action": "user.delete"})).json()[
        "events"]]
    assert events.count("user.delete") == 2 and "user.delete_requested" in events
    assert bob


async def test_user_list_pages_stay_fast_with_10000_users(hub):
    admin = await hub.user("root", admin=True)
    now = utcnow()
    async with hub.hub.tx() as session:
        await session.execute(insert(User), [
            {"name": f"user{i:05d}", "email": f"user{i:05d}@lab.example", "role": "user",
             "status": "pending" if i % 10 == 0 else "active", "created_at": now, "status_reason": ""}
            for i in range(10_000)])
    started = time.perf_counter()
    first = (await admin.http.get("/api/v1/users", params={"limit": 100})).json()
    assert first["total"] == 10_001 and len(first["users"]) == 100
    cursor, pages = first["next_after"], 1
    while cursor and pages < 20:
        page = (await admin.http.get("/api/v1/users", params={"limit": 100, "after": cursor})).json()
        cursor, pages = page["next_after"], pages + 1
    deep = (await admin.http.get("/api/v1/users", params={"after": "user09900", "limit": 50})).json()
    assert deep["users"][0]["name"] == "user09901"
    pending = (await admin.http.get("/api/v1/users", params={"status": "pending", "q": "user099"})).json()
    assert pending["total"] == 10 and all(u["status"] == "pending" for u in pending["users"])
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"23 list requests over 10,000 users took {elapsed:.2f} s"
