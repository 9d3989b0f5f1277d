"""What admins do to users and see of the whole hub.

User management (add, disable/enable, make/remove admin), listings that stay
fast with 10,000 users (keyset pagination on the unique, indexed user name),
every user's instances with filters, and the system report.  Every change is
written to the audit log.  Instances a change stops are woken after commit
(see :mod:`labhub.services.changes`); callers drop cached credentials after a
change to a user.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from labhub import __version__
from labhub.backends.base import Backend
from labhub.models import ACTIVE, AuditEvent, Instance, LoginSession, Role, Status, User, UserStatus, utcnow
from labhub.services import security, users
from labhub.services.errors import Conflict, Forbidden, Invalid, NotFound
from labhub.services.lifecycle import can_transition, transition

PAGE_SIZE = 50


def _audit(session: AsyncSession, *, actor: User, action: str, target: str, **detail: Any) -> None:
    session.add(AuditEvent(actor=actor.name, action=action, target=target, detail=detail))


def _require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden("admins only")


# -- users -------------------------------------------------------------------------------------
@dataclass
class UserPage:
    """One page of a user listing, with keyset cursors for the neighbours."""

    users: list[User]
    total: int
    active_instances: dict[int, int] = field(default_factory=dict)
    next_after: str | None = None  # the last name on this page, when there is a next page
    prev_before: str | None = None  # the first name on this page, when there is a previous page


async def search_users(session: AsyncSession, *, q: str = "", status: str | None = None, after: str | None = None,
                       before: str | None = None, limit: int = PAGE_SIZE) -> UserPage:
    """Users ordered by name, ``limit`` at a time, after (or before) a name.

    Keyset pagination: each page is one index range scan however deep it is.
    ``q`` matches a part of the name or e-mail address.
    """
    limit = max(1, min(limit, 500))
    filters = []
    if q:
        filters.append(or_(User.name.contains(q, autoescape=True), User.email.contains(q, autoescape=True)))
    if status:
        filters.append(User.status == status)
    query = select(User).where(*filters)
    if before is not None:
        query = query.where(User.name < before).order_by(User.name.desc())
    else:
        if after is not None:
            query = query.where(User.name > after)
        query = query.order_by(User.name)
    rows = list((await session.execute(query.limit(limit + 1))).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    if before is not None:
        rows.reverse()
    total = (await session.execute(select(func.count()).select_from(User).where(*filters))).scalar_one()
    page = UserPage(users=rows, total=total)
    if rows:
        has_next = more if before is None else True
        has_prev = (after is not None) if before is None else more
        page.next_after = rows[-1].name if has_next else None
        page.prev_before = rows[0].name if has_prev else None
    if rows:
        counts = await session.execute(
            select(Instance.owner_id, func.count()).where(
                Instance.owner_id.in_([u.id for u in rows]), Instance.status.in_([s.value for s in ACTIVE]))
            .group_by(Instance.owner_id))
        page.active_instances = {owner: n for owner, n in counts.all()}
    return page


async def _target(session: AsyncSession, name: str) -> User:
    user = await users.get_user(session, name=name)
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


async def add_user(session: AsyncSession, *, actor: User, name: str, password: str, admin: bool = False,
                   email: str | None = None) -> User:
    _require_admin(actor)
    user = await users.create_user(session, name=name, password=password, admin=admin, email=email or None)
    _audit(session, actor=actor, action="user.add", target=name, admin=admin)
    return user


MAX_BATCH = 1000
"""The most accounts one :func:`add_users` call creates (the bulk API's bound)."""
MAX_BATCH_PASSWORDS = 20
"""The most of them that may come with a password: each costs an argon2 hash (~0.1 s of CPU)."""


@dataclass(frozen=True)
class NewAccount:
    name: str
    email: str | None = None
    password: str | None = None
    admin: bool = False


async def add_users(session: AsyncSession, *, actor: User, accounts: Sequence[NewAccount], address: str = "",
                    field_prefix: str = "users") -> list[dict[str, Any]]:
    """Create active accounts in one batch, all or none; each is audited (``user.add``).

    The lean path: every entry is checked first (names, duplicates within the
    batch, passwords, addresses; all problems at once, keyed
    ``<field_prefix>.<index>.<field>``, or just ``<field>`` with an empty prefix),
    then one query finds names already taken (409), passwords are hashed in a
    worker thread (only those given), and the users and their audit rows go in
    as two multi-row INSERTs; the unique name constraint still settles a race
    with a concurrent creation (409).  Returns the accounts as the API lists
    them (``AccountOut``'s fields).
    """
    _require_admin(actor)

    def key(i: int, name: str) -> str:
        return f"{field_prefix}.{i}.{name}" if field_prefix else name

    if not accounts:
        raise Invalid("no users given", fields={field_prefix or "name": "give at least one user"})
    if len(accounts) > MAX_BATCH:
        raise Invalid("too many users", fields={field_prefix or "name": f"at most {MAX_BATCH} users per request"})
    fields: dict[str, str] = {}
    first: dict[str, int] = {}
    for i, account in enumerate(accounts):
        if reason := users.check_username(account.name):
            fields[key(i, "name")] = reason
        elif account.name in first:
            fields[key(i, "name")] = f"the same name as {key(first[account.name], 'name')}"
        else:
            first[account.name] = i
        if account.password is not None and (reason := users.check_password(account.password)):
            fields[key(i, "password")] = reason
        if account.email is not None and (reason := users.check_email(account.email)):
            fields[key(i, "email")] = reason
    with_password = [i for i, a in enumerate(accounts) if a.password is not None]
    if len(with_password) > MAX_BATCH_PASSWORDS:
        fields[key(with_password[MAX_BATCH_PASSWORDS], "password")] = (
            f"at most {MAX_BATCH_PASSWORDS} users per request may come with a password")
    if fields:
        raise Invalid("invalid user" if len(accounts) == 1 and not field_prefix else "invalid users", fields=fields)
    names = [a.name for a in accounts]
    taken: set[str] = set()
    for i in range(0, len(names), 500):
        taken.update((await session.execute(select(User.name).where(User.name.in_(names[i:i + 500])))).scalars())
    if taken:
        raise _exists(accounts, taken, key)
    hashes: list[str | None] = [None] * len(accounts)
    if with_password:
        hashed = await asyncio.to_thread(lambda: [security.hash_password(accounts[i].password)  # type: ignore[arg-type]
                                                  for i in with_password])
        for i, digest in zip(with_password, hashed, strict=True):
            hashes[i] = digest
    now = utcnow()
    rows = [{"name": a.name, "email": a.email, "password_hash": digest, "role": Role.ADMIN if a.admin else Role.USER,
             "status": UserStatus.ACTIVE, "status_reason": "", "created_at": now}
            for a, digest in zip(accounts, hashes, strict=True)]
    audit_rows = [{"at": now, "actor": actor.name[:63], "action": "user.add", "target": a.name, "address": address[:64],
                   "detail": {"admin": a.admin}} for a in accounts]
    conn = await session.connection()
    try:
        await conn.execute(insert(User.__table__), rows)
    except IntegrityError:  # a concurrent creation took a name meanwhile (the transaction is rolled back)
        if len(accounts) == 1:
            raise _exists(accounts, set(names), key) from None
        raise Conflict("a user with one of these names was added meanwhile; none was added",
                       fields={field_prefix: "a name was taken meanwhile: try again"}) from None
    await conn.execute(insert(AuditEvent.__table__), audit_rows)
    return [{"name": a.name, "role": row["role"].value, "status": UserStatus.ACTIVE.value, "status_reason": "",
             "email": a.email, "is_admin": a.admin, "created_at": now, "last_login_at": None,
             "status_changed_at": None} for a, row in zip(accounts, rows, strict=True)]


def _exists(accounts: Sequence[NewAccount], taken: set[str], key: Callable[[int, str], str]) -> Conflict:
    if len(accounts) == 1:
        return Conflict(f"user {accounts[0].name!r} already exists", fields={key(0, "name"): "already exists"})
    return Conflict(f"{len(taken)} of these users exist already; none was added",
                    fields={key(i, "name"): "already exists" for i, a in enumerate(accounts) if a.name in taken})


async def disable_user(session: AsyncSession, *, actor: User, name: str) -> list[str]:
    """Disable an account: end its sessions and stop its active instances (reason ``user_disabled``).

    Returns the ids of the instances asked to stop.  Tokens stop working at
    once because every credential lookup checks the account status.
    """
    _require_admin(actor)
    user = await _target(session, name)
    if user.id == actor.id:
        raise Conflict("you cannot disable your own account")
    user.status = UserStatus.DISABLED
    await session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    rows = await session.execute(select(Instance).where(
        Instance.owner_id == user.id, Instance.status.in_([s.value for s in ACTIVE])))
    stopping = []
    for inst in rows.scalars():
        if inst.status != Status.STOPPING and can_transition(inst.status, Status.STOPPING):
            transition(session, inst, Status.STOPPING, reason="user_disabled",
                       message=f"stop requested: the account {name} was disabled by admin {actor.name}")
        stopping.append(inst.id)
    _audit(session, actor=actor, action="user.disable", target=name, instances=stopping)
    return stopping


async def enable_user(session: AsyncSession, *, actor: User, name: str) -> User:
    """Make a disabled account active again (a pending one is approved or rejected instead)."""
    _require_admin(actor)
    user = await _target(session, name)
    if user.status == UserStatus.PENDING:
        raise Conflict(f"{name} waits for approval: approve or reject the account instead")
    user.status = UserStatus.ACTIVE
    _audit(session, actor=actor, action="user.enable", target=name)
    return user


async def set_admin(session: AsyncSession, *, actor: User, name: str, admin: bool) -> User:
    """Grant or remove the admin role; nobody removes their own, and one admin always remains."""
    _require_admin(actor)
    user = await _target(session, name)
    if not admin and user.id == actor.id:
        raise Conflict("you cannot remove your own admin role; ask another admin")
    if not admin and user.is_admin and await users.count_admins(session) <= 1:
        raise Conflict("the hub needs at least one admin")
    user.role = Role.ADMIN if admin else Role.USER
    _audit(session, actor=actor, action="user.admin" if admin else "user.unadmin", target=name)
    return user


# -- instances -----------------------------------------------------------------------------------
@dataclass
class InstancePage:
    instances: list[Instance]
    total: int
    offset: int
    limit: int


async def all_instances(session: AsyncSession, *, actor: User, owner: str | None = None,
                        template: str | None = None, status: str | None = None, active: bool | None = None,
                        offset: int = 0, limit: int = PAGE_SIZE) -> InstancePage:
    """Every user's instances, newest first, filtered by owner name, template and status."""
    _require_admin(actor)
    filters = []
    if owner:
        filters.append(Instance.owner_id == select(User.id).where(User.name == owner).scalar_subquery())
    if template:
        filters.append(Instance.template == template)
    if status:
        if status not in {s.value for s in Status}:
            raise Invalid("unknown status", fields={"status": f"no status named {status!r}"})
        filters.append(Instance.status == status)
    if active is True:
        filters.append(Instance.status.in_([s.value for s in ACTIVE]))
    elif active is False:
        filters.append(Instance.status.not_in([s.value for s in ACTIVE]))
    rows = await session.execute(select(Instance).where(*filters)
                                 .order_by(Instance.created_at.desc(), Instance.id).offset(offset).limit(limit))
    total = (await session.execute(select(func.count()).select_from(Instance).where(*filters))).scalar_one()
    return InstancePage(instances=list(rows.scalars()), total=total, offset=offset, limit=limit)


# -- system ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendHealth:
    name: str
    ok: bool
    message: str
    capabilities: list[str]
    isolation: str
    capacity: str = ""  # what the admission queue may hand out there


async def backend_health(backends: Mapping[str, Backend], *, limit_s: float = 5.0) -> list[BackendHealth]:
    """Ask every backend whether it can be used (concurrently; each call outside any transaction)."""

    async def one(backend: Backend) -> BackendHealth:
        try:
            await asyncio.wait_for(backend.health(), limit_s)
            ok, message = True, "healthy"
        except TimeoutError:
            ok, message = False, f"no answer within {limit_s:g} s"
        except Exception as exc:  # any failure is what the admin needs to see
            ok, message = False, str(exc) or type(exc).__name__
        return BackendHealth(name=backend.name, ok=ok, message=message,
                             capabilities=sorted(str(c) for c in backend.capabilities),
                             isolation=backend.describe_isolation(), capacity=backend.describe_capacity())

    return list(await asyncio.gather(*(one(b) for b in backends.values())))


def versions() -> dict[str, str]:
    """Versions of LabHub and the software it is built on."""
    out = {"LabHub": __version__, "Python": platform.python_version()}
    for dist in ("fastapi", "uvicorn", "sqlalchemy", "jupyterlab"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


async def database_summary(session: AsyncSession) -> dict[str, Any]:
    """The database engine and how many users and instances it holds, by status."""
    bind = session.get_bind()
    dialect = bind.dialect
    server = ".".join(str(p) for p in (dialect.server_version_info or ()))
    user_counts = dict((await session.execute(select(User.status, func.count()).group_by(User.status))).all())
    instance_counts = dict((await session.execute(
        select(Instance.status, func.count()).group_by(Instance.status))).all())
    return {"engine": f"{dialect.name} {server}".strip(), "users": user_counts, "instances": instance_counts}
