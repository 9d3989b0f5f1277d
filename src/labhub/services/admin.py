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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub import __version__
from labhub.backends.base import Backend
from labhub.models import ACTIVE, AuditEvent, Instance, LoginSession, Role, Status, User, UserStatus
from labhub.services import users
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
                             isolation=backend.describe_isolation())

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
