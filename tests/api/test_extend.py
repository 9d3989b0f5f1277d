"""POST /api/v1/instances/{id}/extend on SQLite and PostgreSQL: within and beyond the template's
maximum, hostile input, someone else's instance, an ended one, racing extensions, and the hub
keeping the new expiry (an injected clock)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import update

from labhub.backends.fake import FakeBackend
from labhub.models import Instance, utcnow

pytestmark = pytest.mark.asyncio


class Clock:
    offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset


@pytest.fixture
async def hub(start_hub, database_url, echo_upstream):
    clock = Clock()
    harness = await start_hub(database_url, backends={"fake": FakeBackend(url=echo_upstream.url)}, clock=clock)
    harness.clock = clock
    return harness


async def running(hub, caller, name: str = "ws", hours: float = 4) -> dict:
    made = await caller.http.post("/api/v1/instances", json={"template": "jupyterlab", "name": name, "hours": hours})
    assert made.status_code == 201, made.text
    return await hub.wait_status(caller, made.json()["id"], {"running"})


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_extend_within_and_beyond_the_maximum(hub):
    alice = await hub.user("alice")
    root = await hub.user("root", admin=True)
    inst = await running(hub, alice)  # 4 h of JupyterLab's 24
    url = f"/api/v1/instances/{inst['id']}/extend"
    async with hub.hub.tx() as session:  # as if it had been warned: an extension clears the mark
        await session.execute(update(Instance).where(Instance.id == inst["id"]).values(expiry_warned_at=utcnow()))

    more = await alice.http.post(url, json={"hours": 6})
    assert more.status_code == 200, more.text
    body = more.json()
    assert body["hours"] == 10 and body["status"] == "running"
    assert at(body["expires_at"]) == at(inst["created_at"]) + dt.timedelta(hours=10)
    assert at(body["expires_at"]) == at(inst["expires_at"]) + dt.timedelta(hours=6)
    async with hub.hub.sessions() as session:
        assert (await session.get(Instance, inst["id"])).expiry_warned_at is None

    # beyond the maximum: refused, saying the most it can still get; nothing changes
    over = await alice.http.post(url, json={"hours": 14.5})
    assert over.status_code == 422
    assert over.json()["fields"] == {"hours": "at most 14 h more (JupyterLab runs at most 24 h in all; it has 10 h)"}
    assert (await alice.http.get(f"/api/v1/instances/{inst['id']}")).json()["hours"] == 10

    # an admin may extend anyone's; the event says who did
    by_admin = await root.http.post(url, json={"hours": 0.5})
    assert by_admin.status_code == 200 and by_admin.json()["hours"] == 10.5

    # exactly up to the maximum, then nothing more
    full = await alice.http.post(url, json={"hours": 13.5})
    assert full.status_code == 200 and full.json()["hours"] == 24
    assert at(full.json()["expires_at"]) == at(inst["created_at"]) + dt.timedelta(hours=24)
    none_left = await alice.http.post(url, json={"hours": 0.1})
    assert none_left.status_code == 422
    assert none_left.json()["fields"]["hours"] == ("it cannot be extended: it already has the maximum, 24 h "
                                                   "(JupyterLab)")

    events = (await alice.http.get(f"/api/v1/instances/{inst['id']}/events")).json()
    extended = [e["message"] for e in events if e["reason"] == "extended"]
    assert len(extended) == 3
    assert extended[0].startswith("extended by 6 h, to 10 h in all (at most 24 h); it now expires at ")
    assert extended[1].startswith("extended by admin root by 0.5 h, to 10.5 h in all")
    audit = (await root.http.get("/api/v1/audit", params={"action": "instance.extend"})).json()["events"]
    assert sorted((e["actor"], e["target"], e["detail"]["hours"]) for e in audit) == [
        ("alice", "alice/ws", 6), ("alice", "alice/ws", 13.5), ("root", "alice/ws", 0.5)]


async def test_bad_hours_other_users_and_ended_instances(hub):
    alice = await hub.user("alice")
    bob = await hub.user("bob")
    inst = await running(hub, alice)
    url = f"/api/v1/instances/{inst['id']}/extend"

    for hours in (0, -1, -0.0):
        resp = await alice.http.post(url, json={"hours": hours})
        assert resp.status_code == 422, hours
        assert resp.json()["fields"]["hours"].startswith("must be more than 0; at most 20 h more")
    for raw in (b'{"hours": "two"}', b'{"hours": null}', b"{}", b'{"hours": 1, "owner": "bob"}',
                b'{"hours": 1e309}', b'{"hours": NaN}', b'{"hours": "1\\u0000"}'):
        resp = await alice.http.post(url, content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 422, (raw, resp.text)
    huge = await alice.http.post(url, json={"hours": 1e300})
    assert huge.status_code == 422 and huge.json()["fields"]["hours"].startswith("at most 20 h more")

    # someone else's: 403, and nothing changes; no such instance: 404
    assert (await bob.http.post(url, json={"hours": 1})).status_code == 403
    assert (await bob.http.post(f"/api/v1/instances/{'0' * 32}/extend", json={"hours": 1})).status_code == 404
    assert (await hub.client().post(url, json={"hours": 1})).status_code == 401
    assert (await alice.http.get(f"/api/v1/instances/{inst['id']}")).json()["hours"] == 4

    # ended: 409
    await alice.http.delete(f"/api/v1/instances/{inst['id']}")
    await hub.wait_status(alice, inst["id"], {"stopped"})
    ended = await alice.http.post(url, json={"hours": 1})
    assert ended.status_code == 409 and ended.json()["detail"] == "ws cannot be extended: it has ended"


async def test_racing_extensions_never_pass_the_maximum(hub):
    alice = await hub.user("alice")
    inst = await running(hub, alice)  # 20 h of room: four extensions of 5 h fit, not ten
    url = f"/api/v1/instances/{inst['id']}/extend"
    answers = await asyncio.gather(*(alice.http.post(url, json={"hours": 5}) for _ in range(10)))
    assert sorted(r.status_code for r in answers) == [200] * 4 + [422] * 6
    assert (await alice.http.get(f"/api/v1/instances/{inst['id']}")).json()["hours"] == 24


async def test_the_hub_keeps_the_new_expiry(hub):
    alice = await hub.user("alice")
    inst = await running(hub, alice, hours=1)
    assert (await alice.http.post(f"/api/v1/instances/{inst['id']}/extend", json={"hours": 1})).status_code == 200
    hub.clock.offset = dt.timedelta(minutes=70)  # past the first expiry, not the second
    await hub.hub.reconciler.tick()
    assert (await alice.http.get(f"/api/v1/instances/{inst['id']}")).json()["status"] == "running"
    hub.clock.offset = dt.timedelta(minutes=121)
    await hub.hub.reconciler.tick()
    ended = await hub.wait_status(alice, inst["id"], {"expired"})
    assert ended["reason"] == "expired"
