"""Users: creation, lookup, password checks, listing."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.models import Role, User, UserStatus, utcnow
from labhub.services import security
from labhub.services.errors import Conflict, Invalid

USERNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MIN_PASSWORD = 8


def check_username(name: str) -> str | None:
    """A reason the name is unusable, or None."""
    if not USERNAME_RE.match(name):
        return "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    return None


def check_password(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"must be at least {MIN_PASSWORD} characters"
    if len(password) > 1024:
        return "must be at most 1024 characters"
    return None


async def create_user(
    session: AsyncSession,
    *,
    name: str,
    password: str | None = None,
    admin: bool = False,
    email: str | None = None,
    status: UserStatus = UserStatus.ACTIVE,
) -> User:
    fields = {}
    if reason := check_username(name):
        fields["name"] = reason
    if password is not None and (reason := check_password(password)):
        fields["password"] = reason
    if fields:
        raise Invalid("invalid user", fields=fields)
    if await get_user(session, name=name) is not None:
        raise Conflict(f"user {name!r} already exists", fields={"name": "already exists"})
    user = User(
        name=name,
        email=email,
        password_hash=security.hash_password(password) if password is not None else None,
        role=Role.ADMIN if admin else Role.USER,
        status=status,
    )
    session.add(user)
    await session.flush()
    return user


async def get_user(session: AsyncSession, *, name: str) -> User | None:
    return (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()


async def set_password(session: AsyncSession, *, user: User, password: str) -> None:
    if reason := check_password(password):
        raise Invalid("invalid password", fields={"password": reason})
    user.password_hash = security.hash_password(password)


async def authenticate(session: AsyncSession, *, name: str, password: str) -> User | None:
    """The active user with this name and password, or None.

    Costs one argon2 verification whether or not the user exists.
    """
    user = await get_user(session, name=name)
    ok = security.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.status != UserStatus.ACTIVE:
        return None
    if user.password_hash and security.needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    user.last_login_at = utcnow()
    return user


async def count_admins(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(User).where(User.role == Role.ADMIN))).scalar_one()


async def list_users(session: AsyncSession, *, search: str = "", offset: int = 0, limit: int = 100) -> list[User]:
    query = select(User).order_by(User.name).offset(offset).limit(limit)
    if search:
        query = query.where(User.name.contains(search, autoescape=True))
    return list((await session.execute(query)).scalars())
