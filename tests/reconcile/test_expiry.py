"""The expiry warning, driven by tick() and an injected clock, with mail through a real SMTP server
(aiosmtpd on loopback, tests/auth/conftest.py): once per expiry, again after an extension, never for
an owner without an address, and exactly once when passes race."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from labhub.backends.fake import FakeBackend
from labhub.hub import Hub
from labhub.models import Event, Instance
from labhub.reconcile import expiry
from labhub.services import extend, instances, users
from tests.auth.conftest import free_port, smtp  # noqa: F401 - the SMTP server fixture
from tests.conftest import make_settings
from tests.reconcile.test_reconciler import Clock

pytestmark = pytest.mark.asyncio
ALICE = "alice@lab.example"
DESK = "title: Desk\nkind: workspace\ncommand: [desk]\nhours: {default: 1, max: 2}\n"



@pytest.fixture
async def world(tmp_path, database_url, echo_upstream, smtp):  # noqa: F811
    inbox, smtp_port = smtp
    clock = Clock()
    port = free_port()
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "desk.yaml").write_text(DESK)  # no idle time-out: it waits for its expiry
    settings = make_settings(tmp_path, database_url, bind=f"127.0.0.1:{port}", templates_dir=templates,
                             smtp={"host": "127.0.0.1", "port": smtp_port, "security": "none",
                                   "sender": "LabHub <hub@lab.example>"})
    hub = Hub(settings, clock=clock, backends={"fake": FakeBackend(url=echo_upstream.url)})
    await hub.start(reconcile=False)
    async with hub.tx() as session:
        await users.create_user(session, name="alice", email=ALICE)
        await users.create_user(session, name="bob")  # no address
    yield hub, clock, inbox, f"http://127.0.0.1:{port}"
    await hub.close()


async def launch(hub: Hub, owner: str, name: str, hours: float, template: str = "jupyterlab") -> str:
    async with hub.tx() as session:
        user = await users.get_user(session, name=owner)
        inst = await instances.launch(session, user=user, catalog=hub.catalog, sizes=hub.settings.sizes,
                                      backends=hub.backends, template=template, name=name, hours=hours,
                                      now=hub.clock())
        return inst.id


async def step(hub: Hub) -> None:
    await hub.reconciler.tick()
    await hub.reconciler.settle()


async def warnings(hub: Hub, iid: str) -> list[Event]:
    async with hub.sessions() as session:
        return list(await session.scalars(select(Event).where(Event.instance_id == iid,
                                                              Event.reason == "expiry_warning").order_by(Event.id)))


async def test_the_owner_is_warned_once_per_expiry_by_event_and_mail(world):
    hub, clock, inbox, base = world
    iid = await launch(hub, "alice", "ws", hours=1)
    await step(hub)
    async with hub.sessions() as session:
        assert (await session.get(Instance, iid)).status == "running"

    clock.advance(minutes=29)  # 31 min left: outside the 30 min window
    await step(hub)
    assert not await warnings(hub, iid) and not inbox.messages

    clock.advance(minutes=6)  # 25 min left
    await step(hub)
    [event] = await warnings(hub, iid)
    assert event.status == "running"
    assert event.message.startswith("ws expires in 25 min, at 2026-01-01 13:00 UTC, and is stopped then.")
    assert "at most 23 h more (JupyterLab runs at most 24 h in all; it has 1 h)" in event.message
    assert "`labhub extend ws --hours H`" in event.message
    [mail] = inbox.to(ALICE)
    assert mail.subject == "[LabHub] ws expires soon" and mail.mail_from == "hub@lab.example"
    assert mail.body.startswith("Hello alice,") and event.message in mail.body
    assert mail.link(base) == f"/instances/{iid}"  # its page, where the Extend button is

    clock.advance(minutes=10)  # still within the window: no second warning for the same expiry
    await step(hub)
    await step(hub)
    assert len(await warnings(hub, iid)) == 1 and len(inbox.messages) == 1

    # an extension moves the expiry and clears the mark: the new expiry is warned about in its turn
    async with hub.tx() as session:
        alice = await users.get_user(session, name="alice")
        inst = await extend.extend(session, user=alice, catalog=hub.catalog, instance_id=iid, hours=1,
                                   now=hub.clock())
        assert inst.expiry_warned_at is None and inst.hours == 2
    await step(hub)  # 75 min left
    assert len(await warnings(hub, iid)) == 1
    clock.advance(minutes=50)  # 25 min left of the new expiry (14:00)
    await step(hub)
    second = (await warnings(hub, iid))[-1]
    assert len(await warnings(hub, iid)) == 2 and "at 2026-01-01 14:00 UTC" in second.message
    assert len(inbox.to(ALICE)) == 2 and "at most 22 h more" in inbox.to(ALICE)[-1].body

    clock.advance(minutes=26)  # past the expiry: stopped as ever, with no further warning
    await step(hub)
    async with hub.sessions() as session:
        assert (await session.get(Instance, iid)).status == "expired"
    assert len(inbox.messages) == 2


async def test_no_mail_without_an_address_and_the_maximum_said_so(world):
    hub, clock, inbox, _ = world
    bobs = await launch(hub, "bob", "desk", hours=2, template="desk")  # its maximum: nothing more to give
    await step(hub)
    clock.advance(hours=1, minutes=45)
    await step(hub)
    [event] = await warnings(hub, bobs)
    assert "desk expires in 15 min" in event.message
    assert "it cannot be extended: it already has the maximum, 2 h (Desk)" in event.message
    assert "labhub extend" not in event.message
    assert not inbox.messages  # bob has no address: the event (and the page) warn him


async def test_racing_passes_warn_exactly_once(world):
    """Two passes at once (as two replicas' would be): the conditional mark lets one warn."""
    hub, clock, inbox, _ = world
    ids = [await launch(hub, "alice", f"ws{n}", hours=1) for n in range(3)]
    await step(hub)
    clock.advance(minutes=40)
    parts, tx = hub.reconciler.parts, hub.reconciler._tx
    counts = await asyncio.gather(*(expiry.warn_expiring(parts, tx, clock()) for _ in range(4)))
    assert sum(counts) == 3
    for iid in ids:
        assert len(await warnings(hub, iid)) == 1
    assert sorted(m.subject for m in inbox.to(ALICE)) == [f"[LabHub] ws{n} expires soon" for n in range(3)]


async def test_no_warnings_when_the_window_is_zero(tmp_path, sqlite_url, echo_upstream):
    clock = Clock()
    hub = Hub(make_settings(tmp_path, sqlite_url, expiry_warning_minutes=0), clock=clock,
              backends={"fake": FakeBackend(url=echo_upstream.url)})
    await hub.start(reconcile=False)
    try:
        async with hub.tx() as session:
            await users.create_user(session, name="alice", email=ALICE)
        iid = await launch(hub, "alice", "ws", hours=1)
        await step(hub)
        clock.advance(minutes=55)
        await step(hub)
        assert not await warnings(hub, iid)
    finally:
        await hub.close()
