"""services/admin.py on SQLite and PostgreSQL: user pages that stay fast at 10,000 users, and the guards."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import insert, select

from labhub import db
from labhub.models import AuditEvent, Instance, LoginSession, Role, Status, User, UserStatus, utcnow
from labhub.services import admin, users
from labhub.services.errors import Conflict, Forbidden

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def sessions(database_url):
    engine = db.make_engine(database_url)
    await db.upgrade(engine)
    yield db.make_sessionmaker(engine)
    await engine.dispose()


async def test_ten_thousand_users_page_by_page(sessions):
    now = utcnow()
    async with sessions() as session, session.begin():
        await session.execute(insert(User), [
            {"name": f"user{n:05d}", "email": f"u{n}@lab.example", "role": Role.USER, "status": UserStatus.ACTIVE,
             "created_at": now} for n in range(10_000)])

    async with sessions() as session:
        timings = {}
        start = time.perf_counter()
        first = await admin.search_users(session)
        timings["first"] = time.perf_counter() - start
        assert first.total == 10_000 and len(first.users) == admin.PAGE_SIZE
        assert first.users[0].name == "user00000" and first.prev_before is None and first.next_after == "user00049"

        start = time.perf_counter()
        deep = await admin.search_users(session, after="user09900")
        timings["deep"] = time.perf_counter() - start
        assert deep.users[0].name == "user09901" and deep.prev_before == "user09901"

        last = await admin.search_users(session, after="user09949")
        assert last.users[-1].name == "user09999" and last.next_after is None
        back = await admin.search_users(session, before=last.prev_before)
        assert back.users[0].name == "user09900" and back.users[-1].name == "user09949"
        assert back.next_after == "user09949" and back.prev_before == "user09900"

        start = time.perf_counter()
        found = await admin.search_users(session, q="user0999")
        timings["search"] = time.perf_counter() - start
        assert found.total == 10 and [u.name for u in found.users][:2] == ["user09990", "user09991"]
        assert (await admin.search_users(session, q="u42@")).total == 1  # e-mail addresses too
        assert (await admin.search_users(session, q="%")).total == 0  # LIKE wildcards are literal
    assert max(timings.values()) < 0.5, timings


async def test_disable_stops_instances_ends_sessions_and_is_audited(sessions):
    async with sessions() as session, session.begin():
        root = await users.create_user(session, name="root", admin=True)
        alice = await users.create_user(session, name="alice")
        now = utcnow()
        for n, status in enumerate([Status.RUNNING, Status.STARTING, Status.STOPPED]):
            session.add(Instance(id=f"{n:032d}", owner_id=alice.id, name=f"ws{n}", active_name=f"ws{n}",
                                 template="jupyterlab", kind="workspace", size="small", cpus=1, memory_mb=2048,
                                 gpus=0, hours=1, params={}, backend="fake", status=status, created_at=now,
                                 expires_at=now))
        session.add(LoginSession(id="x" * 64, user_id=alice.id, expires_at=now))

    async with sessions() as session, session.begin():
        root = await users.get_user(session, name="root")
        stopping = await admin.disable_user(session, actor=root, name="alice")
        assert sorted(stopping) == [f"{0:032d}", f"{1:032d}"]
        with pytest.raises(Conflict):
            await admin.disable_user(session, actor=root, name="root")

    async with sessions() as session:
        rows = {i.id: i for i in (await session.execute(select(Instance))).scalars()}
        assert rows[f"{0:032d}"].status == Status.STOPPING and rows[f"{0:032d}"].reason == "user_disabled"
        assert "disabled by admin root" in rows[f"{1:032d}"].message
        assert rows[f"{2:032d}"].status == Status.STOPPED
        assert (await session.execute(select(LoginSession))).first() is None
        assert (await users.get_user(session, name="alice")).status == UserStatus.DISABLED
        audit = (await session.execute(select(AuditEvent))).scalars().one()
        assert (audit.actor, audit.action, audit.target) == ("root", "user.disable", "alice")


async def test_admin_role_guards(sessions):
    async with sessions() as session, session.begin():
        root = await users.create_user(session, name="root", admin=True)
        bob = await users.create_user(session, name="bob")
        with pytest.raises(Forbidden):
            await admin.set_admin(session, actor=bob, name="root", admin=False)
        with pytest.raises(Conflict):
            await admin.set_admin(session, actor=root, name="root", admin=False)
        await admin.set_admin(session, actor=root, name="bob", admin=True)
        assert bob.is_admin
        await admin.set_admin(session, actor=bob, name="root", admin=False)  # another admin may
        with pytest.raises(Conflict):  # so one admin always remains
            await admin.set_admin(session, actor=bob, name="bob", admin=False)
        page = await admin.all_instances(session, actor=bob, owner="nobody")
        assert page.total == 0 and page.instances == []


async def test_pending_accounts_are_not_enabled_here(sessions):
    async with sessions() as session, session.begin():
        root = await users.create_user(session, name="root", admin=True)
        await users.create_user(session, name="newbie", status=UserStatus.PENDING)
        with pytest.raises(Conflict, match="approve or reject"):
            await admin.enable_user(session, actor=root, name="newbie")
