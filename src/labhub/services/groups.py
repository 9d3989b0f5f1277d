"""Groups: sets of users sharing template access, quotas and launch policy.

Admins create groups and add members; an OIDC provider's group claim can
also add and remove memberships, marked with the provider as their
``source`` so a sync never touches what an admin set by hand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth import audit
from labhub.models import Group, Instance, Membership, Status, User
from labhub.services import policy as launch_policy
from labhub.services.errors import Conflict, Forbidden, Invalid, NotFound
from labhub.services.users import USERNAME_RE, require_user

NAME_RULE = "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"


def _require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden("admins only")


def check_name(name: str) -> str | None:
    return None if USERNAME_RE.match(name) else NAME_RULE


def sanitize(raw: str) -> str | None:
    """A group name from a claim value (``/cms/users`` -> ``cms-users``), or None when nothing is left."""
    text = re.sub(r"[^a-z0-9]+", "-", raw.strip().lower()).strip("-")[:63].strip("-")
    return text or None


@dataclass
class GroupInfo:
    group: Group
    members: int


async def get_group(session: AsyncSession, *, name: str) -> Group:
    group = (await session.execute(select(Group).where(Group.name == name))).scalar_one_or_none()
    if group is None:
        raise NotFound(f"no group named {name!r}")
    return group


async def list_groups(session: AsyncSession, *, user: User | None = None) -> list[GroupInfo]:
    """Every group with its member count (only ``user``'s groups when given)."""
    counts = (select(Membership.group_id, func.count().label("n")).group_by(Membership.group_id).subquery())
    query = select(Group, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.group_id == Group.id)
    if user is not None:
        query = query.where(Group.id.in_(select(Membership.group_id).where(Membership.user_id == user.id)))
    rows = await session.execute(query.order_by(Group.name))
    return [GroupInfo(group=g, members=n) for g, n in rows.all()]


async def create_group(session: AsyncSession, *, actor: User, name: str, description: str = "",
                       address: str = "") -> Group:
    _require_admin(actor)
    if reason := check_name(name):
        raise Invalid("invalid group", fields={"name": reason})
    if len(description) > 255:
        raise Invalid("invalid group", fields={"description": "must be at most 255 characters"})
    if (await session.execute(select(Group.id).where(Group.name == name))).first() is not None:
        raise Conflict(f"group {name!r} already exists", fields={"name": "already exists"})
    group = Group(name=name, description=description)
    session.add(group)
    await session.flush()
    audit.record(session, actor=actor, action="group.create", target=name, address=address)
    return group


async def update_group(session: AsyncSession, *, actor: User, name: str, description: str, address: str = "") -> Group:
    _require_admin(actor)
    if len(description) > 255:
        raise Invalid("invalid group", fields={"description": "must be at most 255 characters"})
    group = await get_group(session, name=name)
    group.description = description
    audit.record(session, actor=actor, action="group.update", target=name, address=address)
    return group


async def delete_group(session: AsyncSession, *, actor: User, name: str, address: str = "") -> None:
    _require_admin(actor)
    group = await get_group(session, name=name)
    await session.delete(group)
    audit.record(session, actor=actor, action="group.delete", target=name, address=address)


async def members(session: AsyncSession, *, group: Group) -> list[tuple[User, str]]:
    """``(user, source)`` for each member, by name."""
    rows = await session.execute(select(User, Membership.source).join(Membership, Membership.user_id == User.id)
                                 .where(Membership.group_id == group.id).order_by(User.name))
    return [(u, src) for u, src in rows.all()]


async def add_member(session: AsyncSession, *, actor: User, group: str, user: str, address: str = "") -> bool:
    """Add ``user`` to ``group``; False when already a member (idempotent).

    A membership an OIDC sync made becomes a manual one: the admin's word wins.
    """
    _require_admin(actor)
    target_group = await get_group(session, name=group)
    target = await require_user(session, user)
    existing = (await session.execute(select(Membership).where(
        Membership.group_id == target_group.id, Membership.user_id == target.id))).scalar_one_or_none()
    if existing is not None:
        if existing.source == "":
            return False
        existing.source = ""
    else:
        session.add(Membership(group_id=target_group.id, user_id=target.id, source=""))
    audit.record(session, actor=actor, action="group.add_member", target=group, address=address, user=user)
    return True


async def remove_member(session: AsyncSession, *, actor: User, group: str, user: str, address: str = "") -> None:
    _require_admin(actor)
    target_group = await get_group(session, name=group)
    target = await require_user(session, user)
    result = await session.execute(delete(Membership).where(
        Membership.group_id == target_group.id, Membership.user_id == target.id))
    if result.rowcount == 0:
        raise NotFound(f"{user!r} is not a member of {group!r}")
    audit.record(session, actor=actor, action="group.remove_member", target=group, address=address, user=user)


async def names_of(session: AsyncSession, user: User) -> set[str]:
    """The names of ``user``'s groups (what templates are limited by)."""
    rows = await session.execute(select(Group.name).join(Membership, Membership.group_id == Group.id)
                                 .where(Membership.user_id == user.id))
    return set(rows.scalars())


async def sync_from_claim(session: AsyncSession, *, user: User, names: set[str],
                          source: str) -> tuple[set[str], set[str]]:
    """Make ``user``'s ``source`` memberships exactly ``names`` (groups are created as needed).

    Memberships with another source (an admin's) are left alone.  Returns
    ``(added, removed)`` group names.
    """
    rows = await session.execute(select(Membership, Group.name).join(Group, Group.id == Membership.group_id)
                                 .where(Membership.user_id == user.id))
    current = {name: m for m, name in rows.all()}
    added, removed = set(), set()
    for name, membership in current.items():
        if membership.source == source and name not in names:
            await session.delete(membership)
            removed.add(name)
    for name in sorted(names - set(current)):
        group = (await session.execute(select(Group).where(Group.name == name))).scalar_one_or_none()
        if group is None:
            group = Group(name=name, description=f"from {source}")
            session.add(group)
            await session.flush()
            audit.record(session, actor=source, action="group.create", target=name)
        session.add(Membership(group_id=group.id, user_id=user.id, source=source))
        added.add(name)
    if added or removed:
        audit.record(session, actor=source, action="group.sync", target=user.name, added=sorted(added),
                     removed=sorted(removed))
    return added, removed


async def set_policy(session: AsyncSession, *, actor: User, group: Group, priority: int | None,
                     self_service: bool | None, policy: Mapping[str, Any], address: str = "") -> Group:
    """Replace ``group``'s launch policy (``policy``: labhub.services.policy.PolicyValues), and its
    priority and self-service where given (admins only; audited).  A new priority reorders its members'
    queued launches (the highest of each owner's groups)."""
    _require_admin(actor)
    group.policy = launch_policy.parse(policy) or None
    if self_service is not None:
        group.self_service = self_service
    if priority is not None and priority != group.priority:
        group.priority = priority
        await session.flush()
        members = select(Membership.user_id).where(Membership.group_id == group.id)
        best = (select(func.max(Group.priority)).join(Membership, Membership.group_id == Group.id)
                .where(Membership.user_id == Instance.owner_id).scalar_subquery())
        await session.execute(update(Instance).where(Instance.owner_id.in_(members), Instance.status == Status.QUEUED,
                                                     Instance.handle.is_(None))
                              .values(priority=func.coalesce(best, 0)).execution_options(synchronize_session=False))
    audit.record(session, actor=actor, action="group.policy", target=group.name, address=address,
                 policy=group.policy or {}, priority=group.priority, self_service=group.self_service)
    return group
