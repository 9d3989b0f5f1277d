"""Quotas, the admission queue and group launch policy through the API, on SQLite and PostgreSQL,
with the fake backend (its capacity set where GPUs are the point)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from labhub.backends.base import Capacity
from labhub.backends.fake import FakeBackend
from labhub.models import AuditEvent

pytestmark = pytest.mark.asyncio

SIZES = {"small": {"cpus": 1, "memory_mb": 512}, "gpu": {"cpus": 1, "memory_mb": 512, "gpus": 1},
         "medium": {"cpus": 1, "memory_mb": 512, "gpus": 2}, "large": {"cpus": 1, "memory_mb": 512, "gpus": 3}}


@pytest.fixture
async def hub(start_hub, database_url, echo_upstream):
    fake = FakeBackend(url=echo_upstream.url, gpus=True, capacity=Capacity(gpus=2))
    harness = await start_hub(database_url, backends={"fake": fake}, sizes=SIZES, quota={"instances": 5})
    harness.fake = fake
    return harness


async def launch(caller, name, size="small", **extra):
    body = {"template": "jupyterlab", "name": name, "size": size, "hours": 2, **extra}
    return await caller.http.post("/api/v1/instances", json=body)


async def active(caller) -> list[dict]:
    return (await caller.http.get("/api/v1/instances", params={"active": "true"})).json()


async def wait_for(predicate, caller, timeout=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        listed = await active(caller)
        if predicate(listed):
            return listed
        if loop.time() > deadline:
            raise AssertionError(f"never true: {[(i['name'], i['status'], i['queue_position']) for i in listed]}")
        await asyncio.sleep(0.05)


def waiting(listed):
    return [i for i in listed if i["status"] == "queued" and i["reason"] == "admission"]


async def test_fifty_concurrent_launches_admit_exactly_the_quota(hub):
    alice = await hub.user("alice")
    answers = await asyncio.gather(*(launch(alice, f"ws{n}") for n in range(50)))
    assert [a.status_code for a in answers] == [201] * 50, [a.text for a in answers if a.status_code != 201]
    admitted = [a.json() for a in answers if a.json()["status"] != "queued"]
    assert len(admitted) == 5

    listed = await wait_for(lambda got: sum(i["status"] == "running" for i in got) == 5, alice)
    queue = sorted(waiting(listed), key=lambda i: i["queue_position"])
    assert [i["queue_position"] for i in queue] == list(range(1, 46))  # no gaps, no repeats
    assert all("waiting for your quota: 5 of 5 instances in use" in i["message"] for i in queue)
    # first come, first served: the queue is in launch order
    assert [i["created_at"] for i in queue] == sorted(i["created_at"] for i in queue)

    first = queue[0]
    running = [i for i in listed if i["status"] == "running"]
    assert (await alice.http.delete(f"/api/v1/instances/{running[0]['id']}")).status_code == 202
    listed = await wait_for(lambda got: len(waiting(got)) == 44 and sum(i["status"] == "running" for i in got) == 5,
                            alice)
    assert first["id"] in {i["id"] for i in listed if i["status"] == "running"}  # exactly the next one
    assert sorted(i["queue_position"] for i in waiting(listed)) == list(range(1, 45))
    events = (await alice.http.get(f"/api/v1/instances/{first['id']}/events")).json()
    assert [e["reason"] for e in events][:3] == ["requested", "admission", "admitted"]


async def test_gpus_are_exclusive_and_a_launch_that_never_fits_is_refused(hub):
    alice = await hub.user("alice")
    never = await launch(alice, "big", "large")
    assert never.status_code == 422
    assert never.json()["fields"]["size"] == "asks for 3 GPUs; the fake backend has 2"
    assert await active(alice) == []  # nothing recorded

    one, two, three = [(await launch(alice, f"g{n}", "gpu")).json() for n in range(3)]
    assert one["status"] == two["status"] == "requested"
    assert three["status"] == "queued" and three["queue_position"] == 1
    assert three["message"] == "waiting for 1 GPU: 0 free on the fake backend"
    await hub.wait_status(alice, one["id"], {"running"})
    await alice.http.delete(f"/api/v1/instances/{one['id']}")
    assert (await hub.wait_status(alice, three["id"], {"running"}))["queue_position"] is None


async def test_a_waiting_big_launch_is_not_starved_by_later_small_ones(hub):
    alice, bob, carol = await hub.user("alice"), await hub.user("bob"), await hub.user("carol")
    first = (await launch(alice, "one", "gpu")).json()
    big = (await launch(bob, "big", "medium")).json()  # 2 GPUs, 1 free: waits, and reserves them
    assert big["status"] == "queued" and big["message"] == "waiting for 2 GPUs: 1 free on the fake backend"
    small = (await launch(carol, "small", "gpu")).json()  # 1 would fit, but bob came first
    assert small["status"] == "queued" and small["queue_position"] == 2
    await alice.http.delete(f"/api/v1/instances/{first['id']}")
    await hub.wait_status(bob, big["id"], {"running"})
    assert (await carol.http.get(f"/api/v1/instances/{small['id']}")).json()["queue_position"] == 1


async def test_quota_report_and_edits_that_leave_running_instances_alone(hub):
    alice = await hub.user("alice")
    admin = await hub.user("root", admin=True)
    ids = [(await launch(alice, f"ws{n}")).json()["id"] for n in range(3)]
    for iid in ids:
        await hub.wait_status(alice, iid, {"running"})

    report = (await alice.http.get("/api/v1/users/alice/quota")).json()
    assert report["limits"]["instances"] == 5 and report["source"]["instances"] == "site"
    assert report["usage"]["instances"] == 3 and report["usage"]["cpus"] == 3.0
    assert report["period"] == "month" and report["period_start"] < report["period_end"]
    assert (await alice.http.put("/api/v1/users/alice/quota", json={"instances": 50})).status_code == 403
    bob = await hub.user("bob")
    assert (await bob.http.get("/api/v1/users/alice/quota")).status_code == 403

    bad = await admin.http.put("/api/v1/users/alice/quota", json={"instances": -1, "gpus": "x", "nope": 1})
    assert bad.status_code == 422 and {"instances", "gpus", "nope"} <= set(bad.json()["fields"])

    lowered = await admin.http.put("/api/v1/users/alice/quota", json={"instances": 1})
    assert lowered.status_code == 200
    assert lowered.json()["over"] == ["instances: 3 in use, the limit is now 1"]
    assert {i["status"] for i in await active(alice)} == {"running"}  # nothing was stopped
    queued = (await launch(alice, "next")).json()
    assert queued["status"] == "queued"
    assert (await alice.http.get("/api/v1/users/alice/quota")).json()["source"]["instances"] == "user"

    raised = await admin.http.put("/api/v1/users/alice/quota", json={"instances": 10})
    assert raised.json()["over"] == []
    await hub.wait_status(alice, queued["id"], {"running"})  # a raised limit admits what waited
    async with hub.hub.sessions() as session:
        actions = (await session.execute(select(AuditEvent.detail).where(AuditEvent.action == "quota.set"))).all()
    assert len(actions) == 2


async def test_group_quota_priority_and_hour_limits(hub):
    admin = await hub.user("root", admin=True)
    alice, bob = await hub.user("alice"), await hub.user("bob")
    assert (await admin.http.post("/api/v1/groups", json={"name": "vip"})).status_code == 201
    await admin.http.put("/api/v1/groups/vip/members/bob")
    put = await admin.http.put("/api/v1/groups/vip/quota", json={"gpus": 2, "gpu_hours": 3})
    assert put.status_code == 200
    assert (await bob.http.get("/api/v1/users/bob/quota")).json()["source"]["gpus"] == "group:vip"
    assert (await alice.http.get("/api/v1/groups/vip/quota")).status_code == 404  # not a member: not told it exists

    too_long = await launch(bob, "long", "gpu", hours=4)  # 4 GPU-hours of 3
    assert too_long.status_code == 422
    assert too_long.json()["fields"]["hours"] == "could use 4 GPU-hours; 3 of 3 are left this month"

    # both GPUs busy (alice), then alice queues one more, then bob (priority 10) queues: bob goes first
    held = [(await launch(alice, f"a{n}", "gpu")).json() for n in range(2)]
    waits = (await launch(alice, "a-waits", "gpu")).json()
    assert (await admin.http.put("/api/v1/groups/vip/policy", json={"priority": 10})).status_code == 200
    vip = (await launch(bob, "b-waits", "gpu")).json()
    assert vip["queue_position"] == 1
    listed = {i["name"]: i for i in await active(alice)}
    assert listed["a-waits"]["queue_position"] == 2
    await alice.http.delete(f"/api/v1/instances/{held[0]['id']}")
    await hub.wait_status(bob, vip["id"], {"running"})
    assert (await alice.http.get(f"/api/v1/instances/{waits['id']}")).json()["queue_position"] == 1


async def test_self_service_admin_launches_single_instance_custom_sizes_and_durations(hub):
    admin = await hub.user("root", admin=True)
    alice = await hub.user("alice")
    await admin.http.post("/api/v1/groups", json={"name": "class"})
    await admin.http.put("/api/v1/groups/class/members/alice")

    policy = {"self_service": False, "single_instance": True, "max_hours": 1,
              "custom_size": {"cpus": 2, "memory_mb": 2048}}
    bad = await admin.http.put("/api/v1/groups/class/policy", json={"max_hours": -1, "custom_size": {"cpus": 0}})
    assert bad.status_code == 422
    assert (await alice.http.put("/api/v1/groups/class/policy", json=policy)).status_code == 403
    assert (await admin.http.put("/api/v1/groups/class/policy", json=policy)).status_code == 200

    refused = await launch(alice, "mine", hours=1)
    assert refused.status_code == 403 and "self-service is off" in refused.json()["detail"]
    for_her = await launch(admin, "for-alice", hours=1, owner="alice")
    assert for_her.status_code == 201 and for_her.json()["owner"] == "alice"
    assert (await launch(alice, "x", owner="root")).status_code == 403  # only admins launch for others
    assert (await launch(admin, "x", owner="nobody")).status_code == 422

    await admin.http.put("/api/v1/groups/class/policy", json={**policy, "self_service": True})
    second = await launch(alice, "second", hours=1)
    assert second.status_code == 409
    assert "'for-alice'" in second.json()["fields"]["template"]  # single instance: open the first
    await alice.http.delete(f"/api/v1/instances/{for_her.json()['id']}")
    await hub.wait_status(alice, for_her.json()["id"], {"stopped"})

    too_long = await launch(alice, "long", hours=2)
    assert too_long.status_code == 422 and too_long.json()["fields"]["hours"] == "must be more than 0 and at most 1"
    big = await launch(alice, "big", "custom", hours=1, custom={"cpus": 3, "memory_mb": 1024})
    assert big.status_code == 422 and big.json()["fields"]["custom.cpus"] == "must be 0.1 to 2"
    custom = await launch(alice, "custom", "custom", hours=1, custom={"cpus": 1.5, "memory_mb": 1024})
    assert custom.status_code == 201, custom.text
    assert custom.json()["size"] == "custom" and custom.json()["resources"] == {"cpus": 1.5, "memory_mb": 1024,
                                                                               "gpus": 0}
    extend = await alice.http.post(f"/api/v1/instances/{custom.json()['id']}/extend", json={"hours": 1})
    assert extend.status_code == 422  # the group's maximum, 1 h, not the template's
    async with hub.hub.sessions() as session:
        launched_for = (await session.execute(select(AuditEvent.target)
                                              .where(AuditEvent.action == "instance.launch_for"))).scalars().all()
    assert launched_for == ["alice/for-alice"]


async def test_restart_with_a_new_size_replaces_the_instance_under_the_same_name(hub):
    alice, bob = await hub.user("alice"), await hub.user("bob")
    old = (await launch(alice, "ws", "small")).json()
    await hub.wait_status(alice, old["id"], {"running"})
    assert (await bob.http.post(f"/api/v1/instances/{old['id']}/restart", json={"size": "gpu"})).status_code == 403
    bad = await alice.http.post(f"/api/v1/instances/{old['id']}/restart", json={"size": "huge"})
    assert bad.status_code == 422 and "size" in bad.json()["fields"]
    assert (await hub.wait_status(alice, old["id"], {"running"}))["name"] == "ws"  # a refusal changes nothing

    new = await alice.http.post(f"/api/v1/instances/{old['id']}/restart", json={"size": "gpu"})
    assert new.status_code == 201, new.text
    assert new.json()["name"] == "ws" and new.json()["resources"]["gpus"] == 1 and new.json()["id"] != old["id"]
    stopped = await hub.wait_status(alice, old["id"], {"stopped"})
    assert stopped["reason"] == "restart" and new.json()["id"] in stopped["message"]
    await hub.wait_status(alice, new.json()["id"], {"running"})
    again = await alice.http.post(f"/api/v1/instances/{old['id']}/restart", json={"size": "small"})
    assert again.status_code == 409  # the old one has ended


@pytest.mark.postgres
async def test_two_replicas_admit_exactly_the_quota_between_them(start_hub, postgres_url, echo_upstream):
    fake = FakeBackend(url=echo_upstream.url)
    a = await start_hub(postgres_url, backends={"fake": fake}, sizes=SIZES, quota={"instances": 5}, replica_id="a")
    b = await start_hub(postgres_url, backends={"fake": fake}, sizes=SIZES, quota={"instances": 5}, replica_id="b")
    alice = await a.user("alice")
    on_b = b.client(headers={"Authorization": f"Bearer {alice.token}"})
    bodies = [{"template": "jupyterlab", "name": f"ws{n}", "size": "small"} for n in range(50)]
    answers = await asyncio.gather(*((alice.http if n % 2 else on_b).post("/api/v1/instances", json=body)
                                     for n, body in enumerate(bodies)))
    assert [r.status_code for r in answers] == [201] * 50
    assert sum(r.json()["status"] != "queued" for r in answers) == 5
    listed = await wait_for(lambda got: sum(i["status"] == "running" for i in got) == 5, alice)
    assert sorted(i["queue_position"] for i in waiting(listed)) == list(range(1, 46))
    first = min(waiting(listed), key=lambda i: i["queue_position"])
    running = next(i for i in listed if i["status"] == "running")
    assert (await on_b.delete(f"/api/v1/instances/{running['id']}")).status_code == 202
    listed = await wait_for(lambda got: len(waiting(got)) == 44 and sum(i["status"] == "running" for i in got) == 5,
                            alice)
    assert first["id"] in {i["id"] for i in listed if i["status"] == "running"}
