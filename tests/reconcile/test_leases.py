"""Two replicas (two Hubs on one database and one compute) and the leases between them.

The replicas share an injected clock and one fake backend; passes are driven by
``tick()``.  On PostgreSQL the replicas also notify each other (LISTEN/NOTIFY):
those tests are marked and wait for the notification, with a bound.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from labhub.backends.fake import FakeBackend
from labhub.hub import Hub
from labhub.models import Instance
from labhub.services import credentials, instances, users
from tests.conftest import make_settings
from tests.reconcile.test_reconciler import Clock, launch, state

pytestmark = pytest.mark.asyncio

LEASE_S = 3.0


@pytest.fixture
async def replicas(tmp_path, database_url, echo_upstream):
    clock = Clock()
    fake = FakeBackend(url=echo_upstream.url)
    hubs = []
    for name in ("a", "b"):
        hub = Hub(make_settings(tmp_path, database_url, replica_id=name, lease_seconds=LEASE_S), clock=clock,
                  backends={"fake": fake})
        await hub.start(reconcile=False)
        hubs.append(hub)
    async with hubs[0].tx() as session:
        await users.create_user(session, name="alice", password="password123")  # noqa: S106
    yield hubs[0], hubs[1], fake, clock
    for hub in hubs:
        await hub.close()


async def claimed_by(hub: Hub, iid: str) -> str | None:
    async with hub.sessions() as session:
        return (await session.execute(select(Instance.claimed_by).where(Instance.id == iid))).scalar_one()


async def step(hub: Hub) -> None:
    await hub.reconciler.tick()
    await hub.reconciler.settle()


async def test_one_replica_works_on_an_instance_until_its_lease_lapses(replicas):
    a, b, fake, clock = replicas
    iid = await launch(a)
    await step(a)
    assert (await state(a, iid))[0].status == "running"
    assert await claimed_by(a, iid) == "a"

    await step(b)  # a's lease holds: b leaves it alone
    assert await claimed_by(b, iid) == "a"
    fake.finish(iid, 1)
    await step(b)
    assert (await state(b, iid))[0].status == "running"  # b did not even look

    clock.advance(seconds=LEASE_S + 0.1)  # a stopped renewing (it died)
    await step(b)
    assert await claimed_by(b, iid) == "b"
    inst, events = await state(b, iid)
    assert inst.status == "failed"  # b took the work over and saw the job end
    assert [e.status for e in events].count("failed") == 1
    await step(a)  # a, back, finds nothing of its own to do
    assert [e.status for e in (await state(a, iid))[1]].count("failed") == 1


async def test_a_job_submitted_by_a_replica_that_died_is_adopted_not_started_again(replicas, monkeypatch):
    a, b, fake, clock = replicas
    iid = await launch(a)
    submit = fake.submit

    async def submit_then_die(spec):  # the job exists; the replica dies before it records the handle
        await submit(spec)
        raise asyncio.CancelledError

    monkeypatch.setattr(fake, "submit", submit_then_die)
    await a.reconciler.tick()
    await asyncio.gather(*a.reconciler._tasks.values(), return_exceptions=True)
    inst, _ = await state(a, iid)
    assert (inst.status, inst.handle, inst.claimed_by) == ("requested", None, "a")
    assert fake.submits == 1

    submitted_again = []

    async def counted(spec):
        submitted_again.append(spec.instance_id)
        return await submit(spec)

    monkeypatch.setattr(fake, "submit", counted)
    await step(b)
    assert (await state(b, iid))[0].status == "requested"  # a's lease still holds
    clock.advance(seconds=LEASE_S + 0.1)
    await step(b)
    inst, _ = await state(b, iid)
    assert inst.status == "running" and inst.claimed_by == "b"
    assert submitted_again == []  # adopted: b found a's job and did not submit another
    assert fake.submits == 1


async def test_a_replica_that_lost_its_lease_stops_working_on_the_instance(replicas):
    a, b, fake, _ = replicas
    fake.mode = "never"  # starts forever: a's watcher keeps working on it
    iid = await launch(a)
    await a.reconciler.tick()
    await asyncio.sleep(0.1)
    assert iid in a.reconciler._tasks
    async with b.tx() as session:  # b took it over while a was too slow to renew
        await session.execute(update(Instance).where(Instance.id == iid).values(claimed_by="b"))
    await a.reconciler.renew()
    await asyncio.wait_for(a.reconciler.settle(), 5)
    assert iid not in a.reconciler._tasks
    assert await claimed_by(a, iid) == "b"


async def test_a_stop_asked_of_one_replica_is_done_by_the_lease_holder(replicas):
    a, b, fake, _ = replicas
    iid = await launch(a)
    await step(a)
    async with b.sessions() as session:
        alice = await users.get_user(session, name="alice")
    await instances.stop(b.tx, user_id=alice.id, instance_id=iid)
    await step(b)
    assert (await state(b, iid))[0].status == "stopping"  # b may not: a holds the lease
    assert iid in fake.jobs
    await step(a)
    assert (await state(a, iid))[0].status == "stopped"
    assert iid not in fake.jobs


async def test_an_account_deletion_is_finished_by_any_replica(replicas):
    a, b, _, _ = replicas
    iid = await launch(a)
    await step(a)
    async with a.tx() as session:
        root = await users.create_user(session, name="root", password="password123", admin=True)  # noqa: S106
        result = await users.delete_user(session, actor=root, name="alice")
    assert not result.deleted
    await step(b)  # b may not stop the instance (a holds the lease), so the account stays
    assert (await state(b, iid))[0] is not None
    async with b.sessions() as session:
        assert await users.get_user(session, name="alice") is not None
    await step(a)  # a stops it; then whichever replica looks next deletes the account
    await step(b)
    await step(a)
    async with b.sessions() as session:
        assert await users.get_user(session, name="alice") is None
    assert (await state(b, iid))[0] is None


@pytest.mark.postgres
async def test_notifications_keep_the_other_replicas_routes_and_credentials_current(replicas, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas notify each other on PostgreSQL only")
    a, b, _, _ = replicas
    iid = await launch(a)
    async with b.bus.subscribe(instance_id=iid) as signal:
        await step(a)
        assert await signal.wait(timeout=5)  # b's event streams hear of a's events
    for _ in range(250):
        if b.routes.get("alice", "ws1") is not None:
            break
        await asyncio.sleep(0.02)
    assert b.routes.get("alice", "ws1").instance_id == iid  # b's proxy routes a's instance

    async with a.tx() as session:
        alice = await users.get_user(session, name="alice")
        token, secret = await credentials.issue_token(session, user=alice)
    assert await b.auth.authenticate("token", secret) is not None  # cached on b now
    async with a.tx() as session:
        await credentials.revoke_token(session, user=await users.get_user(session, name="alice"), token_id=token.id)
    # nobody calls hub.credentials_changed(): the commit itself tells every replica (as for the CLI)
    for _ in range(250):
        if not b.auth.cached("token", secret)[0]:
            break
        await asyncio.sleep(0.02)
    assert b.auth.cached("token", secret) == (False, None)  # dropped on b too
    assert await b.auth.authenticate("token", secret) is None

    await instances.stop(a.tx, user_id=alice.id, instance_id=iid)
    await step(a)
    for _ in range(250):
        if b.routes.get("alice", "ws1") is None:
            break
        await asyncio.sleep(0.02)
    assert b.routes.get("alice", "ws1") is None
