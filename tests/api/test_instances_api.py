"""The instances API on SQLite and PostgreSQL, with the fake backend serving a real HTTP upstream."""

from __future__ import annotations

import pytest

from labhub.backends.fake import FakeBackend

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def hub(start_hub, database_url, echo_upstream):
    fake = FakeBackend(url=echo_upstream.url)
    harness = await start_hub(database_url, backends={"fake": fake})
    harness.fake = fake
    return harness


async def launch(caller, name="ws1", **extra):
    body = {"template": "jupyterlab", "name": name, "size": "small", "hours": 2, "params": {}, **extra}
    return await caller.http.post("/api/v1/instances", json=body)


async def test_launch_runs_and_proxies_then_stops(hub, echo_upstream):
    alice = await hub.user("alice")
    resp = await launch(alice)
    assert resp.status_code == 201, resp.text
    inst = resp.json()
    assert inst["url"] == f"http://ws1--alice.localhost:{hub.running.proxy.port}/"  # an origin of its own
    assert inst["owner"] == "alice" and inst["kind"] == "workspace" and inst["status"] == "requested"
    assert {"id", "created_at", "expires_at"} <= inst.keys()

    running = await hub.wait_status(alice, inst["id"], {"running"})
    assert running["started_at"] is not None

    lab = hub.instance_client(alice, inst)
    through = await lab.get("/api/status?x=1", headers={"Cookie": "other=1"})
    assert through.status_code == 200
    seen = through.json()
    assert seen["path"] == "/api/status?x=1"
    assert seen["headers"]["authorization"] == f"token {hub.hub.instance_token(inst['id'])}"
    assert alice.token not in str(seen["headers"])
    assert seen["headers"]["cookie"] == "other=1"

    events = (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()
    statuses = [e["status"] for e in events]
    assert statuses == ["requested", "starting", "queued", "starting", "running"]
    assert all(e["message"] for e in events)

    stop = await alice.http.delete(f"/api/v1/instances/{inst['id']}")
    assert stop.status_code == 202
    stopped = await hub.wait_status(alice, inst["id"], {"stopped"})
    assert stopped["reason"] == "user"
    assert inst["id"] not in hub.fake.jobs
    after = await lab.get("/api/status", headers={"Accept": "application/json"})
    assert after.status_code == 503 and "stopped" in after.json()["detail"]

    again = await launch(alice)  # the name is free again once the old instance ended
    assert again.status_code == 201


async def test_event_stream_ends_after_terminal_status(hub):
    alice = await hub.user("alice")
    inst = (await launch(alice)).json()
    await hub.wait_status(alice, inst["id"], {"running"})
    await alice.http.delete(f"/api/v1/instances/{inst['id']}")
    await hub.wait_status(alice, inst["id"], {"stopped"})
    resp = await alice.http.get(f"/api/v1/instances/{inst['id']}/events", headers={"Accept": "text/event-stream"})
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.count("event: status") == len((await alice.http.get(
        f"/api/v1/instances/{inst['id']}/events")).json())
    assert resp.text.rstrip().endswith("event: end\ndata: {}")


async def test_other_users_get_403_and_anonymous_401_or_login(hub):
    alice = await hub.user("alice")
    bob = await hub.user("bob")
    admin = await hub.user("root-admin", admin=True)
    inst = (await launch(alice)).json()
    await hub.wait_status(alice, inst["id"], {"running"})

    assert (await bob.http.get(f"/api/v1/instances/{inst['id']}")).status_code == 403
    assert (await bob.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 403
    assert (await bob.http.get(f"/api/v1/instances/{inst['id']}/events")).status_code == 403
    assert (await bob.http.get(f"/api/v1/instances/{inst['id']}/logs")).status_code == 403
    assert (await bob.http.get("/api/v1/instances", params={"all": "true"})).status_code == 403
    assert (await bob.http.get("/api/v1/instances")).json() == []
    assert (await bob.http.get("/api/v1/instances/0123456789abcdef")).status_code == 404
    assert (await hub.instance_client(bob, inst).get("/api")).status_code == 403
    assert (await bob.http.get("/user/alice/ws1/api")).status_code == 403  # on the hub: no code for bob

    anon = hub.client()
    assert (await anon.get("/api/v1/instances")).status_code == 401
    assert (await hub.instance_client(None, inst).get("/api")).status_code == 401
    page = await hub.instance_client(None, inst).get("/lab", headers={"Accept": "text/html"})
    # to the hub, which logs the browser in (if needed) and hands it a code for this origin
    assert page.status_code == 302 and page.headers["location"] == f"{hub.url}/user/alice/ws1/lab"
    hub_page = await anon.get("/user/alice/ws1/lab", headers={"Accept": "text/html"})
    assert hub_page.status_code == 303 and hub_page.headers["location"].startswith("/login?next=")
    assert (await anon.get("/", headers={"Accept": "text/html"})).status_code == 303

    assert (await hub.instance_client(admin, inst).get("/api")).status_code == 200
    listed = (await admin.http.get("/api/v1/instances", params={"owner": "alice"})).json()
    assert [i["id"] for i in listed] == [inst["id"]]
    assert (await admin.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
    stopped = await hub.wait_status(alice, inst["id"], {"stopped"})
    assert stopped["reason"] == "admin"


async def test_scoped_token_cannot_launch_or_mint_tokens(hub):
    from labhub.services import credentials, users

    async with hub.hub.tx() as session:
        user = await users.create_user(session, name="carol", password="password123")
        _, secret = await credentials.issue_token(session, user=user, scopes=["read"])
    reader = hub.client(headers={"Authorization": f"Bearer {secret}"})
    assert (await reader.get("/api/v1/instances")).status_code == 200
    assert (await launch(type("C", (), {"http": reader})())).status_code == 403
    assert (await reader.post("/api/v1/tokens", json={})).status_code == 403


@pytest.mark.parametrize("body, field", [
    ({"template": "nope"}, "template"),
    ({"size": "huge"}, "size"),
    ({"hours": 1000}, "hours"),
    ({"hours": 0}, "hours"),
    ({"name": "Bad_Name"}, "name"),
    ({"name": "-lead"}, "name"),
    ({"name": "a" * 64}, "name"),
    ({"params": {"unknown": 1}}, "params.unknown"),
    ({"extra": 1}, "extra"),
])
async def test_bad_launch_requests_name_the_field_and_create_nothing(hub, body, field):
    alice = await hub.user("alice")
    resp = await launch(alice, **body)
    assert resp.status_code == 422, resp.text
    assert field in resp.json()["fields"], resp.json()
    assert (await alice.http.get("/api/v1/instances")).json() == []


async def test_duplicate_name_is_409(hub):
    alice = await hub.user("alice")
    assert (await launch(alice)).status_code == 201
    resp = await launch(alice)
    assert resp.status_code == 409
    assert "name" in resp.json()["fields"]
    assert len((await alice.http.get("/api/v1/instances")).json()) == 1


async def test_malformed_and_oversized_bodies(hub):
    alice = await hub.user("alice")
    bad = await alice.http.post("/api/v1/instances", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 422 and bad.json()["detail"] == "malformed JSON body"
    big = await alice.http.post("/api/v1/instances", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                                headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    assert (await alice.http.get("/api/v1/instances")).json() == []


async def test_tokens_are_shown_once_and_revocable(hub):
    alice = await hub.user("alice")
    created = await alice.http.post("/api/v1/tokens", json={"note": "ci", "expires_in_days": 1})
    assert created.status_code == 201
    secret = created.json()["token"]
    listed = (await alice.http.get("/api/v1/tokens")).json()
    assert all("token" not in t for t in listed) and any(t["note"] == "ci" for t in listed)
    other = hub.client(headers={"Authorization": f"Bearer {secret}"})
    assert (await other.get("/api/v1/me")).json()["name"] == "alice"
    assert (await alice.http.delete(f"/api/v1/tokens/{created.json()['id']}")).status_code == 204
    assert (await other.get("/api/v1/me")).status_code == 401
    assert (await hub.instance_client(None, {"url": f"http://ws1--alice.localhost:{hub.running.proxy.port}/"},
                                      headers={"Authorization": f"Bearer {secret}"}).get("/api")).status_code == 401


async def test_a_stop_asked_for_at_once_is_not_lost(hub):
    """DELETE right after the launch: the start already under way must not carry the instance on."""
    alice = await hub.user("alice")
    for n in range(5):
        inst = (await launch(alice, f"quick{n}")).json()
        assert (await alice.http.delete(f"/api/v1/instances/{inst['id']}")).status_code == 202
        await hub.wait_status(alice, inst["id"], {"stopped"})
        statuses = [e["status"] for e in (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()]
        after_stop = statuses[statuses.index("stopping"):]
        assert after_stop == ["stopping", "stopped"], statuses
        assert inst["id"] not in hub.fake.jobs  # nothing left running on the backend
