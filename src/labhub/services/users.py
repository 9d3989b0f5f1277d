"""Users: creation, lookup, password checks, names from identity providers, listing, deletion."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth import audit
from labhub.models import ACTIVE, Instance, Role, Status, User, UserStatus, utcnow
from labhub.services import changes, credentials, security
from labhub.services.errors import Conflict, Forbidden, Invalid, NotFound
from labhub.services.lifecycle import can_transition, transition

USERNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
EMAIL_RE = re.compile(r"^[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
MIN_PASSWORD = 8


def check_username(name: str) -> str | None:
    """A reason the name is unusable, or None."""
    if not USERNAME_RE.match(name):
        return "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    return None


def check_email(email: str) -> str | None:
    if len(email) > 320 or not EMAIL_RE.match(email):
        return "must be an e-mail address like name@example.org"
    return None


def sanitize_username(raw: str) -> str:
    """A valid user name made from what an identity provider calls the user.

    ``Jane.Doe@uni.example`` -> ``jane-doe``: the local part of an address,
    lower case, runs of other characters as one ``-``; at most 56 characters
    so a collision suffix still fits.  Never empty.
    """
    text = raw.strip().lower()
    if "@" in text:
        text = text.split("@", 1)[0]
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:56].strip("-")
    return text or "user"


async def available_username(session: AsyncSession, raw: str) -> str:
    """:func:`sanitize_username`, with ``-2``, ``-3``, ... appended while the name is taken."""
    base = sanitize_username(raw)
    taken = set((await session.execute(
        select(User.name).where((User.name == base) | User.name.startswith(f"{base}-", autoescape=True))
    )).scalars())
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


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
    """The user with this name and password, or None; disabled accounts never pass.

    A *pending* account does pass: it may log in, and then sees only the
    "waiting for approval" page (the API answers it 403; the proxy ignores it).
    Costs one argon2 verification whether or not the user exists, and answers
    the same for a wrong password, an unknown name and a disabled account.
    """
    user = await get_user(session, name=name)
    ok = security.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.status not in (UserStatus.ACTIVE, UserStatus.PENDING):
        return None
    if user.password_hash and security.needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    user.last_login_at = utcnow()
    return user


async def count_admins(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(User).where(User.role == Role.ADMIN))).scalar_one()


async def list_users(session: AsyncSession, *, search: str = "", status: str | None = None, offset: int = 0,
                     limit: int = 100) -> list[User]:
    if status is not None and status not in {s.value for s in UserStatus}:
        raise Invalid("unknown status", fields={"status": f"must be one of: {', '.join(s.value for s in UserStatus)}"})
    query = select(User).order_by(User.name).offset(offset).limit(limit)
    if search:
        query = query.where(User.name.contains(search, autoescape=True))
    if status is not None:
        query = query.where(User.status == status)
    return list((await session.execute(query)).scalars())


def set_status(user: User, status: UserStatus, reason: str) -> None:
    user.status = status
    user.status_reason = reason[:255]
    user.status_changed_at = utcnow()


async def require_user(session: AsyncSession, name: str) -> User:
    user = await get_user(session, name=name)
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


@dataclass
class Deletion:
    """What :func:`delete_user` did: deleted now, or stopping instances first."""

    name: str
    deleted: bool
    stopping: list[str] = field(default_factory=list)


async def delete_user(session: AsyncSession, *, actor: User, name: str, address: str = "") -> Deletion:
    """Delete an account and everything it owns, its instances first.

    With active instances the account is disabled at once (so nothing new
    starts), each instance is asked to stop (reason ``user_deleted``) and the
    result says ``deleted=False``; the account is marked (``deleting_by``) and
    the reconciler, on any replica, calls this again once they have ended.
    Without active instances the user row
    goes, and with it (by cascade) tokens, sessions, memberships, identities
    and ended instances with their events; the caller removes the home
    directory after the commit.  Nobody deletes themselves or the last admin.
    """
    if not actor.is_admin:
        raise Forbidden("admins only")
    user = await require_user(session, name)
    if user.id == actor.id:
        raise Conflict("you cannot delete your own account")
    if user.is_admin and await count_admins(session) <= 1:
        raise Conflict("the hub needs at least one admin")
    rows = await session.execute(select(Instance).where(
        Instance.owner_id == user.id, Instance.status.in_([s.value for s in ACTIVE])))
    active = list(rows.scalars())
    if active:
        if user.status != UserStatus.DISABLED or not user.status_reason.startswith("deleting"):
            set_status(user, UserStatus.DISABLED, f"deleting (requested by {actor.name})")
            audit.record(session, actor=actor, action="user.delete_requested", target=name, address=address,
                         instances=[i.id for i in active])
        if user.deleting_by != actor.name:
            user.deleting_by = actor.name
            changes.deletion(session)
        await credentials.end_sessions(session, user=user)
        for inst in active:
            if inst.status != Status.STOPPING and can_transition(inst.status, Status.STOPPING):
                transition(session, inst, Status.STOPPING, reason="user_deleted",
                           message=f"stop requested: the account {name} is being deleted by admin {actor.name}")
        return Deletion(name=name, deleted=False, stopping=[i.id for i in active])
    # A plain DELETE (the database cascades the rest): a deletion finished at the same moment elsewhere
    # (another request, the reconciler on any replica) deleted the row already, and that is success.
    gone = await session.execute(delete(User).where(User.id == user.id).execution_options(synchronize_session=False))
    session.expunge(user)
    if gone.rowcount:
        audit.record(session, actor=actor, action="user.delete", target=name, address=address)
    return Deletion(name=name, deleted=True)
