"""Sharing through the proxy: an owner shares an instance with a user or a group and revokes it; an admin
opens a workspace to every user or to anyone.

Abuse first: another user (with a token, and with a browser's origin cookie) before, during and after a
share; a group's non-member and a member removed from it; an owner trying to open an instance to
anyone; anonymous callers of an instance open only to logged-in users; shares of someone else's
instance; a revoked share's cookie; another replica's change.  The upstream is the echo server of
tests/conftest.py: what reached it shows that the caller's credentials never do.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from labhub.backends.fake import FakeBackend
from labhub.models import Instance, Share, Status, User, UserStatus
from labhub.services import changes, groups, shares, users
from tests.conftest import page_csrf

pytestmark = pytest.mark.asyncio
PASSWORD = "correct horse battery"  # noqa: S105
JSON = {"Accept": "application/json"}


@pytest.fixture
async def hub(start_hub, sqlite_url, echo_upstream):
    return await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)})


async def browser_for(hub, name: str):
    """A logged-in browser (hub session cookie) of an existing user with PASSWORD."""
    browser = hub.client(headers={"Accept": "text/html"})
    done = await browser.post("/login", data={"username": name, "password": PASSWORD,
                                              "csrf_token": await page_csrf(browser)})
    assert done.status_code == 303, done.text
    return browser


async def origin_cookie_client(hub, browser, path: str = "/user/alice/ws/api"):
    """What a browser gets on the instance's origin by the hub's grant flow: a client holding that origin's
    cookie, or the hub's refusal (its status) when it may not open the instance."""
    hop = await browser.get(path)
    if hop.status_code != 303:
        return hop.status_code
    target = urlsplit(hop.headers["location"])
    origin = hub.client(headers={"Host": target.netloc, "Accept": "application/json"})
    redeemed = await origin.get(f"{target.path}?{target.query}", headers={"Accept": "text/html"})
    assert redeemed.status_code == 303, redeemed.text
    return origin


async def running(hub, owner, name: str = "ws") -> dict:
    made = await owner.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": name, "hours": 1})
    assert made.status_code == 201, made.text
    return await hub.wait_status(owner, made.json()["id"], {"running"})


async def eventually(check) -> None:
    """``check()`` (async, returning bool) turns true within 5 s: what follows a commit in the background."""
    for _ in range(100):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("it did not happen within 5 s")


async def test_bob_opens_alices_shared_instance_until_it_is_revoked(hub, echo_upstream):
    alice = await hub.user("alice")
    bob = await hub.user("bob", password=PASSWORD)
    carol = await hub.user("carol")
    inst = await running(hub, alice)
    api = f"/api/v1/instances/{inst['id']}/shares"
    as_bob, as_carol = hub.instance_client(bob, inst), hub.instance_client(carol, inst)
    bob_browser = await browser_for(hub, "bob")

    # not shared: bob's token and bob's browser are refused
    assert (await as_bob.get("/api/status")).status_code == 403
    assert await origin_cookie_client(hub, bob_browser) == 403
    assert (await bob.http.post(api, json={"user": "bob"})).status_code == 403  # not his to share

    made = await alice.http.post(api, json={"user": "bob"})
    assert made.status_code == 201, made.text
    share = made.json()
    assert share["user"] == "bob" and share["group"] is None and share["created_by"] == "alice"
    again = await alice.http.post(api, json={"user": "bob"})
    assert again.status_code == 200 and again.json()["id"] == share["id"]  # idempotent

    # bob's token, at once
    seen = await as_bob.get("/api/status?x=1")
    assert seen.status_code == 200, seen.text
    assert seen.json()["path"] == "/api/status?x=1"
    assert seen.json()["headers"]["authorization"] == f"token {hub.hub.instance_token(inst['id'])}"  # never bob's
    # bob's browser: the hub grants him the origin, whose cookie opens it
    origin = await origin_cookie_client(hub, bob_browser)
    assert not isinstance(origin, int), origin
    assert (await origin.get("/api/contents")).status_code == 200
    # nobody else
    assert (await as_carol.get("/api/status")).status_code == 403
    listed = (await alice.http.get(api)).json()
    assert [(s["id"], s["user"]) for s in listed] == [(share["id"], "bob")]
    assert (await bob.http.get(api)).status_code == 403  # who has access is the owner's to see
    assert (await carol.http.get(f"/api/v1/instances/{inst['id']}/access")).status_code == 403

    # revoked: 403 for his token at once, and his origin cookie is dead (his browser is sent round and refused)
    gone = await alice.http.delete(f"{api}/{share['id']}")
    assert gone.status_code == 204
    assert (await as_bob.get("/api/status")).status_code == 403
    assert (await origin.get("/api/contents")).status_code == 401
    assert await origin_cookie_client(hub, bob_browser) == 403
    assert (await alice.http.delete(f"{api}/{share['id']}")).status_code == 404
    assert (await alice.http.get(api)).json() == []

    events = [e["message"] for e in (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()]
    assert "shared with bob" in events and "no longer shared with bob" in events
    root = await hub.user("root", admin=True)
    audit = (await root.http.get("/api/v1/audit", params={"target": "alice/ws"})).json()["events"]
    assert [(e["action"], e["actor"], e["detail"]) for e in audit if e["action"].startswith("instance.")] == [
        ("instance.unshare", "alice", {"user": "bob"}), ("instance.share", "alice", {"user": "bob"})]


async def test_a_group_share_opens_to_its_members_while_they_are_members(hub):
    alice, bob, carol = await hub.user("alice"), await hub.user("bob"), await hub.user("carol")
    root = await hub.user("root", admin=True)
    inst = await running(hub, alice)
    api = f"/api/v1/instances/{inst['id']}/shares"
    as_bob, as_carol = hub.instance_client(bob, inst), hub.instance_client(carol, inst)
    assert (await root.http.post("/api/v1/groups", json={"name": "physics"})).status_code == 201
    assert (await root.http.post("/api/v1/groups", json={"name": "secret"})).status_code == 201
    for name in ("alice", "bob"):
        assert (await root.http.put(f"/api/v1/groups/physics/members/{name}")).status_code in (200, 201)

    # an owner names only groups she is in; one she is not in reads as one that does not exist
    for group in ("secret", "nope"):
        refused = await alice.http.post(api, json={"group": group})
        assert refused.status_code == 422 and refused.json()["fields"] == {
            "group": f"you are in no group named {group!r}"}
    made = await alice.http.post(api, json={"group": "physics"})
    assert made.status_code == 201 and made.json()["group"] == "physics" and made.json()["user"] is None
    assert (await as_bob.get("/api/status")).status_code == 200  # a member
    assert (await as_carol.get("/api/status")).status_code == 403  # not one
    listed = (await bob.http.get("/api/v1/shared")).json()
    assert [(s["id"], s["owner"], s["how"], s["url"]) for s in listed] == [(inst["id"], "alice", "group physics",
                                                                            inst["url"])]
    assert (await carol.http.get("/api/v1/shared")).json() == []
    assert (await alice.http.get("/api/v1/shared")).json() == []  # her own are not "shared with her"

    # membership changes reach the proxy right after they commit
    assert (await root.http.put("/api/v1/groups/physics/members/carol")).status_code in (200, 201)
    await eventually(lambda: _status_is(as_carol, 200))
    assert (await root.http.delete("/api/v1/groups/physics/members/bob")).status_code == 204
    await eventually(lambda: _status_is(as_bob, 403))

    assert (await alice.http.delete(f"{api}/{made.json()['id']}")).status_code == 204
    assert (await as_carol.get("/api/status")).status_code == 403

    # a group deleted takes its shares along
    again = await alice.http.post(api, json={"group": "physics"})
    assert again.status_code == 201
    assert (await as_carol.get("/api/status")).status_code == 200
    assert (await root.http.delete("/api/v1/groups/physics")).status_code == 204
    await eventually(lambda: _status_is(as_carol, 403))
    assert (await alice.http.get(api)).json() == []


async def _status_is(client, status: int) -> bool:
    return (await client.get("/api/status")).status_code == status


async def test_only_an_admin_opens_a_workspace_and_anyone_means_no_login(hub):
    alice, carol = await hub.user("alice"), await hub.user("carol", password=PASSWORD)
    root = await hub.user("root", admin=True)
    inst = await running(hub, alice)
    access = f"/api/v1/instances/{inst['id']}/access"
    anonymous = hub.instance_client(None, inst, headers=JSON)
    as_carol = hub.instance_client(carol, inst)
    assert (await anonymous.get("/api/status")).status_code == 401

    # the owner may not open her own instance to others, not even to logged-in users
    for value in ("anyone", "users", ""):
        refused = await alice.http.put(access, json={"open_to": value})
        assert refused.status_code == 403, value
    assert (await anonymous.get("/api/status")).status_code == 401
    bad = await root.http.put(access, json={"open_to": "everybody"})
    assert bad.status_code == 422 and "open_to" in bad.json()["fields"]

    # every user: any logged-in user's token (and browser), still nobody anonymous
    opened = await root.http.put(access, json={"open_to": "users"})
    assert opened.status_code == 200 and opened.json() == {"instance_id": inst["id"], "open_to": "users",
                                                           "shares": []}
    assert (await as_carol.get("/api/status")).status_code == 200
    assert (await anonymous.get("/api/status")).status_code == 401
    navigation = hub.instance_client(None, inst, headers={"Accept": "text/html"})
    sent = await navigation.get("/lab")
    assert sent.status_code == 302 and "/user/alice/ws/lab" in sent.headers["location"]  # to log in first
    carol_origin = await origin_cookie_client(hub, await browser_for(hub, "carol"))
    assert (await carol_origin.get("/api/contents")).status_code == 200

    # anyone: without any credential at all, pages and writes alike
    assert (await root.http.put(access, json={"open_to": "anyone"})).status_code == 200
    seen = await anonymous.get("/api/status")
    assert seen.status_code == 200 and seen.json()["headers"]["authorization"].startswith("token ")
    assert (await navigation.get("/lab")).status_code == 200
    assert (await anonymous.post("/api/contents", json={})).status_code == 200
    assert (await alice.http.get(access)).json()["open_to"] == "anyone"

    # closed again: at once, and carol's cookie from the open days is dead
    assert (await root.http.put(access, json={"open_to": ""})).status_code == 200
    assert (await anonymous.get("/api/status")).status_code == 401
    assert (await as_carol.get("/api/status")).status_code == 403
    assert (await carol_origin.get("/api/contents")).status_code == 401

    events = [e["message"] for e in (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()
              if e["reason"] == "access"]
    assert events == ["opened to every user, logged in (by admin root)",
                      "opened to anyone, without logging in (by admin root)",
                      "closed: only its owner and those it is shared with (by admin root)"]
    audit = (await root.http.get("/api/v1/audit", params={"action": "instance.open_to"})).json()["events"]
    assert [e["detail"] for e in audit] == [{"open_to": "", "was": "anyone"}, {"open_to": "anyone", "was": "users"},
                                           {"open_to": "users", "was": ""}]


async def test_what_may_not_be_shared(hub):
    alice, bob = await hub.user("alice"), await hub.user("bob")
    root = await hub.user("root", admin=True)
    inst = await running(hub, alice)
    api = f"/api/v1/instances/{inst['id']}/shares"
    async with hub.hub.tx() as session:
        await users.create_user(session, name="waiting", status=UserStatus.PENDING)

    cases = [({"user": "alice"}, {"user": "alice owns it already"}),
             ({"user": "nobody"}, {"user": "no active user named 'nobody'"}),
             ({"user": "waiting"}, {"user": "no active user named 'waiting'"}),
             ({"user": "bob", "group": "g"}, {"body": "give a user or a group (one of them)"}),
             ({}, {"body": "give a user or a group (one of them)"})]
    for body, fields in cases:
        refused = await alice.http.post(api, json=body)
        assert refused.status_code == 422 and refused.json()["fields"] == fields, body
    assert (await alice.http.post(api, json={"users": ["bob"]})).status_code == 422  # unknown field
    assert (await alice.http.post("/api/v1/instances/nope/shares", json={"user": "bob"})).status_code == 404

    # an admin may share (and says so on the timeline); services cannot be opened, jobs not shared
    made = await root.http.post(api, json={"user": "bob"})
    assert made.status_code == 201 and made.json()["created_by"] == "root"
    events = [e["message"] for e in (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()]
    assert "shared with bob (by admin root)" in events
    other = await running(hub, bob, "mine")
    foreign = await alice.http.delete(f"/api/v1/instances/{other['id']}/shares/{made.json()['id']}")
    assert foreign.status_code == 403
    wrong_instance = await bob.http.delete(f"/api/v1/instances/{other['id']}/shares/{made.json()['id']}")
    assert wrong_instance.status_code == 404  # a share id names a share of this instance only

    async with hub.hub.tx() as session:
        row = await session.get(Instance, other["id"])
        row.kind = "job"
    job = await bob.http.post(f"/api/v1/instances/{other['id']}/shares", json={"user": "alice"})
    assert job.status_code == 422 and "job" in job.json()["detail"]
    async with hub.hub.tx() as session:
        (await session.get(Instance, other["id"])).kind = "service"
    service = await root.http.put(f"/api/v1/instances/{other['id']}/access", json={"open_to": "users"})
    assert service.status_code == 422 and "public" in service.json()["fields"]["open_to"]

    # an ended instance is shared no more
    assert (await alice.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
    await hub.wait_status(alice, inst["id"], {"stopped"})
    ended = await alice.http.post(api, json={"user": "bob"})
    assert ended.status_code == 409
    assert (await root.http.put(f"/api/v1/instances/{inst['id']}/access", json={"open_to": "users"})).status_code == 409


async def test_another_replicas_share_reaches_this_proxy_by_its_notification(hub):
    """A share committed elsewhere (here: straight in the database, with the notification another replica
    would send) changes this replica's route when the notification arrives."""
    alice, bob = await hub.user("alice"), await hub.user("bob")
    inst = await running(hub, alice)
    as_bob = hub.instance_client(bob, inst)
    async with hub.hub.tx() as session:
        actor = (await session.execute(select(User).where(User.name == "alice"))).scalar_one()
        await shares.share(session, actor=actor, instance_id=inst["id"], user="bob")
    assert (await as_bob.get("/api/status")).status_code == 403  # this replica was not told (no refresh)
    owner_id = actor.id
    for payload in changes.encode(changes.Changes(instances={inst["id"]: owner_id}), "another-replica"):
        hub.hub._notified(payload)
    await eventually(lambda: _status_is(as_bob, 200))

    # a membership change elsewhere: every audience is read again
    async with hub.hub.tx() as session:
        group = await groups.create_group(session, actor=_admin(), name="team")
        await groups.add_member(session, actor=_admin(), group="team", user="alice")
    async with hub.hub.tx() as session:
        actor = await session.get(User, owner_id)
        await shares.share(session, actor=actor, instance_id=inst["id"], group="team")
    carol = await hub.user("carol")
    as_carol = hub.instance_client(carol, inst)
    async with hub.hub.sessions() as session, session.begin():
        await groups.add_member(session, actor=_admin(), group="team", user="carol")
        await session.flush()
        session.info.pop(changes.KEY, None)  # as if another replica made it: nothing applied here...
    assert (await as_carol.get("/api/status")).status_code == 403
    for payload in changes.encode(changes.Changes(memberships=True), "another-replica"):
        hub.hub._notified(payload)  # ...until its notice comes
    await eventually(lambda: _status_is(as_carol, 200))
    assert group.id is not None


def _admin() -> User:
    from labhub.models import Role

    return User(id=-1, name="admin", role=Role.ADMIN)


async def test_membership_changes_survive_the_wire():
    for payload in changes.encode(changes.Changes(memberships=True), "r1"):
        replica, decoded = changes.decode(payload)
        assert replica == "r1" and decoded.memberships and bool(decoded)
    assert not changes.decode(changes.encode(changes.Changes(users={1}), "r1")[0])[1].memberships


async def test_path_mode_shares_open_to_tokens_only_and_nothing_is_opened(start_hub, sqlite_url, echo_upstream):
    """On the hub's own origin a shared instance's pages would run with the visitor's hub session: the
    visitor's browser is refused (saying why), a token opens it, and no workspace is opened to everyone."""
    hub = await start_hub(sqlite_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, origins="path")
    alice = await hub.user("alice")
    bob = await hub.user("bob", password=PASSWORD)
    root = await hub.user("root", admin=True)
    inst = await running(hub, alice)
    assert (await alice.http.post(f"/api/v1/instances/{inst['id']}/shares", json={"user": "bob"})).status_code == 201
    assert (await bob.http.get("/user/alice/ws/api")).status_code == 200
    bob_browser = await browser_for(hub, "bob")
    refused = await bob_browser.get("/user/alice/ws/api", headers=JSON)
    assert refused.status_code == 403 and "API token" in refused.json()["detail"]
    opened = await root.http.put(f"/api/v1/instances/{inst['id']}/access", json={"open_to": "anyone"})
    assert opened.status_code == 409 and "path" in opened.json()["fields"]["open_to"]
    async with hub.hub.tx() as session:  # set behind the API's back: the proxy still ignores it here
        (await session.get(Instance, inst["id"])).open_to = "anyone"
    await hub.hub.refresh_routes({inst["id"]})
    assert (await hub.client(headers=JSON).get("/user/alice/ws/api")).status_code == 401


async def test_shares_go_with_their_instance(hub):
    alice, bob = await hub.user("alice"), await hub.user("bob")
    inst = await running(hub, alice)
    assert (await alice.http.post(f"/api/v1/instances/{inst['id']}/shares", json={"user": "bob"})).status_code == 201
    assert (await alice.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
    await hub.wait_status(alice, inst["id"], {"stopped"})
    assert (await alice.http.delete(f"/api/v1/instances/{inst['id']}/record")).status_code == 204
    async with hub.hub.sessions() as session:
        assert (await session.execute(select(Share))).first() is None
        assert (await session.execute(select(Instance).where(Instance.status == Status.RUNNING))).first() is None
    again = await running(hub, alice)  # the same name, a new launch: unshared
    assert (await hub.instance_client(bob, again).get("/api/status")).status_code == 403
