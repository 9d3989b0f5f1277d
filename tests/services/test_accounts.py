"""System accounts: one per user, forever, also for names that differ only after many characters."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from labhub import db
from labhub.models import SystemAccount
from labhub.services import accounts, users
from labhub.services.accounts import candidates


# Under the old scheme (20 characters + 5 hex digits of a hash) these two had to be told apart by the
# hash alone; two names chosen to collide there got one account.  Now both are stored and unique.
LONG_A = "a" * 30 + "-one"
LONG_B = "a" * 30 + "-two"


def test_candidates_fit_and_start_with_the_plain_name():
    assert next(candidates("labhub-", "alice")) == "labhub-alice"
    for name in ("b" * 63, LONG_A):
        first = [c for _, c in zip(range(50), candidates("labhub-", name), strict=False)]
        assert all(len(c) <= 32 and c.startswith("labhub-") for c in first)
        assert len(set(first)) == len(first)  # a fresh name each time


@pytest.fixture
async def session(tmp_path):
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.sqlite'}")
    await db.upgrade(engine)
    maker = db.make_sessionmaker(engine)
    async with maker() as s:
        yield s
    await engine.dispose()


async def test_two_users_never_share_an_account_and_each_keeps_theirs(session, monkeypatch):
    # Force the worst case: every user's first candidate is the same name.
    original = accounts.candidates
    monkeypatch.setattr(accounts, "candidates", lambda prefix, user: iter(
        ["labhub-shared", *original(prefix, user)]))
    a = await users.create_user(session, name=LONG_A, password="x" * 12)
    b = await users.create_user(session, name=LONG_B, password="x" * 12)
    name_a = await accounts.assign(session, user=a, prefix="labhub-")
    name_b = await accounts.assign(session, user=b, prefix="labhub-")
    assert name_a == "labhub-shared" and name_b != name_a
    assert await accounts.assign(session, user=a, prefix="labhub-") == name_a  # stable
    await session.commit()


async def test_a_deleted_users_account_is_never_handed_on(session):
    alice = await users.create_user(session, name="alice", password="x" * 12)
    first = await accounts.assign(session, user=alice, prefix="labhub-")
    assert first == "labhub-alice"
    await session.delete(alice)
    await session.flush()
    retired = (await session.execute(select(SystemAccount).where(SystemAccount.name == first))).scalar_one()
    assert retired.user_id is None
    again = await users.create_user(session, name="alice", password="x" * 12)  # a new person, same name
    second = await accounts.assign(session, user=again, prefix="labhub-")
    assert second != first and second.startswith("labhub-alice-")


async def test_reserved_names_are_skipped(session):
    user = await users.create_user(session, name="instances", password="x" * 12)
    assert await accounts.assign(session, user=user, prefix="lh_", reserved=frozenset({"lh_instances"})) != \
        "lh_instances"
