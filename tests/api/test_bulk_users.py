"""POST /api/v1/users:bulk (and the single POST /api/v1/users on the same lean path): all or none,
admins only, every field at fault named, bounded."""

from __future__ import annotations

import pytest

from labhub.backends.fake import FakeBackend
from labhub.services import admin as admin_svc

pytestmark = pytest.mark.asyncio
BULK = "/api/v1/users:bulk"
PASSWORD = "long enough"  # noqa: S105


@pytest.fixture
async def hub(start_hub, database_url):
    return await start_hub(database_url, backends={"fake": FakeBackend()})


async def names(admin) -> set[str]:  # noqa: ANN001
    return {u["name"] for u in (await admin.http.get("/api/v1/users", params={"limit": 500})).json()["users"]}


async def test_admins_add_many_users_in_one_call(hub):
    admin = await hub.user("root", admin=True)
    resp = await admin.http.post(BULK, json={"users": [
        {"name": "ann"}, {"name": "ben", "email": "ben@lab.example", "password": PASSWORD},
        {"name": "cat", "admin": True}]})
    assert resp.status_code == 201, resp.text
    made = resp.json()["users"]
    assert [u["name"] for u in made] == ["ann", "ben", "cat"]
    assert [(u["role"], u["is_admin"], u["status"]) for u in made] == [
        ("user", False, "active"), ("user", False, "active"), ("admin", True, "active")]
    assert made[1]["email"] == "ben@lab.example" and made[0]["email"] is None
    for u in made:  # what the account's own answer says
        account = (await admin.http.get(f"/api/v1/users/{u['name']}")).json()
        assert {k: account[k] for k in u} == u
    events = (await admin.http.get("/api/v1/audit", params={"action": "user.add"})).json()["events"]
    assert sorted((e["target"], e["actor"], e["detail"]) for e in events) == [
        ("ann", "root", {"admin": False}), ("ben", "root", {"admin": False}), ("cat", "root", {"admin": True})]

    from labhub.services import users

    async with hub.hub.tx() as session:  # the password was hashed; the others have none
        assert await users.authenticate(session, name="ben", password=PASSWORD) is not None
        assert (await users.get_user(session, name="ann")).password_hash is None


async def test_nothing_is_added_unless_every_entry_is_right(hub):
    admin = await hub.user("root", admin=True)
    before = await names(admin)
    bad = await admin.http.post(BULK, json={"users": [
        {"name": "ok-1"}, {"name": "Not Valid"}, {"name": "ok-1"}, {"name": "short", "password": "1234567"},
        {"name": "mail", "email": "not an address"}]})
    assert bad.status_code == 422
    fields = bad.json()["fields"]
    assert set(fields) == {"users.1.name", "users.2.name", "users.3.password", "users.4.email"}
    assert "users.0.name" in fields["users.2.name"]  # a repeated name says which entry it repeats
    taken = await admin.http.post(BULK, json={"users": [{"name": "fresh"}, {"name": "root"}]})
    assert taken.status_code == 409 and taken.json()["fields"] == {"users.1.name": "already exists"}
    assert await names(admin) == before  # "fresh" was not added either


async def test_the_batch_is_bounded(hub):
    admin = await hub.user("root", admin=True)
    over = await admin.http.post(BULK, json={"users": [{"name": f"u{i}"} for i in range(admin_svc.MAX_BATCH + 1)]})
    assert over.status_code == 422 and "users" in over.json()["fields"]
    empty = await admin.http.post(BULK, json={"users": []})
    assert empty.status_code == 422 and "users" in empty.json()["fields"]
    n = admin_svc.MAX_BATCH_PASSWORDS
    hashes = await admin.http.post(BULK, json={"users": [{"name": f"p{i}", "password": PASSWORD}
                                                         for i in range(n + 1)]})
    assert hashes.status_code == 422 and list(hashes.json()["fields"]) == [f"users.{n}.password"]
    for body in ({"users": [{"name": "x", "nick": "y"}]}, {"users": [{"name": "a\u0000"}]}, {"names": ["x"]},
                 {"users": [{"name": "y" * 64}]}, {"users": "x"}):
        resp = await admin.http.post(BULK, json=body)
        assert resp.status_code == 422 and resp.json()["fields"], (body, resp.text)
    full = await admin.http.post(BULK, json={"users": [{"name": f"u{i}"} for i in range(admin_svc.MAX_BATCH)]})
    assert full.status_code == 201 and len(full.json()["users"]) == admin_svc.MAX_BATCH


async def test_only_admins_add_users(hub):
    alice = await hub.user("alice")
    admin = await hub.user("root", admin=True)
    body = {"users": [{"name": "sneaky"}]}
    assert (await alice.http.post(BULK, json=body)).status_code == 403
    assert (await hub.client().post(BULK, json=body)).status_code == 401
    read_only = (await admin.http.post("/api/v1/tokens", json={"scopes": ["read", "instances"]})).json()["token"]
    weak = hub.client(headers={"Authorization": f"Bearer {read_only}"})
    assert (await weak.post(BULK, json=body)).status_code == 403  # an admin's token without the admin scope
    assert "sneaky" not in await names(admin)
    scoped = (await admin.http.post("/api/v1/tokens", json={"scopes": ["admin"]})).json()["token"]
    assert (await hub.client(headers={"Authorization": f"Bearer {scoped}"}).post(BULK, json=body)).status_code == 201


async def test_one_user_at_a_time_answers_as_before(hub):
    admin = await hub.user("root", admin=True)
    made = await admin.http.post("/api/v1/users", json={"name": "dora", "email": "dora@lab.example"})
    assert made.status_code == 201
    assert made.json() == {k: v for k, v in (await admin.http.get("/api/v1/users/dora")).json().items()
                           if k not in ("groups", "identities")}
    again = await admin.http.post("/api/v1/users", json={"name": "dora"})
    assert again.status_code == 409 and again.json() == {"detail": "user 'dora' already exists",
                                                        "fields": {"name": "already exists"}}
    bad = await admin.http.post("/api/v1/users", json={"name": "-x", "password": "short", "email": "x"})
    assert bad.status_code == 422 and set(bad.json()["fields"]) == {"name", "password", "email"}
    assert (await (await hub.user("alice")).http.post("/api/v1/users", json={"name": "eve"})).status_code == 403


async def test_the_bulk_operation_is_documented(hub):
    spec = (await (await hub.user("alice")).http.get("/api/openapi.json")).json()
    op = spec["paths"][BULK]["post"]
    assert {"201", "401", "403", "409", "413", "415", "422"} <= set(op["responses"])
    body = op["requestBody"]["content"]["application/json"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[-1]
    users = spec["components"]["schemas"][ref]["properties"]["users"]
    assert users["maxItems"] == admin_svc.MAX_BATCH and users["minItems"] == 1
