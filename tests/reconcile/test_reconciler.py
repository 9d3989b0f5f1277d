"""The reconciler against the fault-injecting fake backend, driven by tick() and an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select

from labhub.backends.fake import FakeBackend
from labhub.hub import Hub
from labhub.models import Event, Instance
from labhub.services import instances, users
from tests.conftest import make_settings

pytestmark = pytest.mark.asyncio


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += dt.timedelta(**kwargs)


@pytest.fixture
async def world(tmp_path, sqlite_url, echo_upstream):
    clock = Clock()
    fake = FakeBackend(url=echo_upstream.url)
    hub = Hub(make_settings(tmp_path, sqlite_url), clock=clock, backends={"fake": fake})
    await hub.start(reconcile=False)
    async with hub.tx() as session:
        await users.create_user(session, name="alice", password="password123")
    yield hub, fake, clock
    await hub.close()


async def launch(hub: Hub, name: str = "ws1", **kwargs) -> str:
    async with hub.tx() as session:
        alice = await users.get_user(session, name="alice")
        inst = await instances.launch(session, user=alice, catalog=hub.catalog, sizes=hub.settings.sizes,
                                      backends=hub.backends, template="jupyterlab", name=name, now=hub.clock(),
                                      **kwargs)
        return inst.id


async def state(hub: Hub, iid: str) -> tuple[Instance, list[Event]]:
    async with hub.sessions() as session:
        inst = await session.get(Instance, iid)
        events = list((await session.execute(select(Event).where(Event.instance_id == iid).order_by(Event.id))).scalars())
        return inst, events


async def step(hub: Hub) -> None:
    await hub.reconciler.tick()
    await hub.reconciler.settle()


async def test_launch_reaches_running_and_route(world):
    hub, fake, _ = world
    iid = await launch(hub)
    await step(hub)
    inst, events = await state(hub, iid)
    assert inst.status == "running"
    assert [e.reason for e in events] == ["requested", "submitted", "queued", "allocated", "ready"]
    assert hub.routes.get("alice", "ws1").instance_id == iid
    await step(hub)
    assert fake.submits == 1  # idempotent: further passes never submit again


async def test_expires_at_its_deadline(world):
    hub, fake, clock = world
    iid = await launch(hub, hours=1)
    await step(hub)
    clock.advance(minutes=59)
    await step(hub)
    assert (await state(hub, iid))[0].status == "running"
    clock.advance(minutes=2)
    await step(hub)
    inst, events = await state(hub, iid)
    assert inst.status == "expired"
    assert events[-1].message == "expired: its duration ran out"
    assert iid not in fake.jobs and hub.routes.get("alice", "ws1") is None


async def test_start_timeout_shows_the_backends_own_words(world):
    hub, fake, clock = world
    fake.mode = "never"
    iid = await launch(hub)
    await hub.reconciler.tick()
    while (await state(hub, iid))[0].start_deadline is None:  # submitted: its deadline is set
        await asyncio.sleep(0.01)
    clock.advance(seconds=121)  # the template's start_timeout is 120 s
    await hub.reconciler.settle()
    inst, events = await state(hub, iid)
    assert inst.status == "failed" and inst.reason == "start_timeout"
    assert "within 120 s" in inst.message and "fake: still starting" in inst.message
    assert "fake: starting" in events[-1].message  # the log tail
    assert iid not in fake.jobs


async def test_crash_during_start_and_submit_refusal(world):
    hub, fake, _ = world
    fake.mode = "fail"
    crashed = await launch(hub, name="crash")
    await step(hub)
    fake.mode = "reject"
    refused = await launch(hub, name="refused")
    await step(hub)
    inst, events = await state(hub, crashed)
    assert inst.status == "failed" and "exited with code 1" in inst.message and "fake: crashed" in inst.message
    inst, _ = await state(hub, refused)
    assert inst.status == "failed" and inst.reason == "submit_failed"
    assert "the fake engine refused the job" in inst.message


async def test_unreachable_backend_makes_instances_unknown_then_recovers(world):
    hub, fake, _ = world
    iid = await launch(hub)
    await step(hub)
    fake.unreachable = True
    await step(hub)
    inst, _ = await state(hub, iid)
    assert inst.status == "unknown"
    assert hub.routes.get("alice", "ws1") is not None  # not killed, not forgotten
    await step(hub)
    assert iid in fake.jobs
    fake.unreachable = False
    await step(hub)
    inst, events = await state(hub, iid)
    assert inst.status == "running" and events[-1].reason == "recovered"


async def test_stop_waits_for_the_backend_while_unreachable(world):
    hub, fake, _ = world
    iid = await launch(hub)
    await step(hub)
    async with hub.tx() as session:
        inst = await session.get(Instance, iid)
        instances.request_stop(session, inst, actor=None)
    fake.unreachable = True
    await step(hub)
    inst, events = await state(hub, iid)
    assert inst.status == "stopping" and events[-1].reason == "stop_retry"
    fake.unreachable = False
    await step(hub)
    assert (await state(hub, iid))[0].status == "stopped"


async def test_idle_instances_are_culled(world):
    hub, _, clock = world
    iid = await launch(hub)
    await step(hub)
    route = hub.routes.get("alice", "ws1")
    route.last_activity = clock.now.timestamp()
    clock.advance(hours=1, minutes=59)
    await step(hub)
    assert (await state(hub, iid))[0].status == "running"
    clock.advance(minutes=2)
    await step(hub)
    inst, events = await state(hub, iid)
    assert inst.status == "stopped" and inst.reason == "idle"
    assert inst.last_activity_at is not None


async def test_the_sites_idle_minimum_overrides_a_shorter_template_timeout(world):
    hub, _, clock = world
    hub.settings.idle_min_hours = 3  # the admin's floor; the template says 2 h
    iid = await launch(hub)
    await step(hub)
    hub.routes.get("alice", "ws1").last_activity = clock.now.timestamp()
    clock.advance(hours=2, minutes=30)
    await step(hub)
    assert (await state(hub, iid))[0].status == "running"
    clock.advance(minutes=31)
    await step(hub)
    assert (await state(hub, iid))[0].reason == "idle"


async def test_a_workspace_that_exits_on_its_own(world):
    hub, fake, _ = world
    iid = await launch(hub)
    await step(hub)
    fake.finish(iid, 0)
    await step(hub)
    inst, _ = await state(hub, iid)
    assert inst.status == "stopped" and inst.reason == "exited"
    other = await launch(hub, name="ws2")
    await step(hub)
    fake.finish(other, 137)
    await step(hub)
    inst, _ = await state(hub, other)
    assert inst.status == "failed" and "exited with code 137" in inst.message


async def test_orphans_are_terminated(world):
    hub, fake, _ = world
    from labhub.backends.base import LaunchSpec, Resources

    spec = LaunchSpec(instance_id="orphan", owner="x", name="x", kind="workspace", command=["x"], env={},
                      resources=Resources(1, 100), base_url="/user/x/x/", token="t", time_limit_s=60)
    await fake.submit(spec)
    await step(hub)  # the first pass scans for orphans
    assert "orphan" not in fake.jobs
