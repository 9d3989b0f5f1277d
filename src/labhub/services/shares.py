"""Sharing: an owner opens an instance to named users or a group's members; an admin opens a workspace
to every user or to anyone.

Whoever may use an instance uses it as it is: the proxy hands every request to it with the instance's
own secret, so someone it is shared with works in the owner's workspace, as the owner's account, with
the owner's files.  That is what sharing means here (ML front's shared JupyterLab), and why opening
one to everyone is an admin's decision alone.

Rules (each change audited, and noted on the instance's timeline):

* the owner and admins list, add and revoke shares; a share names an active user (not the owner) or
  a group, and an owner may name only a group they are in (others' groups are not theirs to know);
* jobs have no address, so they are not shared; an ended instance is not shared any more;
* a share belongs to one launch: it goes when the instance is deleted, and a relaunch starts unshared;
* ``open_to`` ("users": every active user; "anyone": without logging in; "": neither) is set by admins
  only, on workspaces only (a service's inference routes have their own ``public`` switch), and only
  where instances have origins of their own: on the hub's origin (path mode) an open workspace's
  pages would run with their visitors' hub sessions;
* revoking (or closing) ends access at once: the proxy's route changes with the commit (the caller
  refreshes it), and the origin cookies of those who lost access are deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth import audit
from labhub.models import (
    ACTIVE,
    TERMINAL,
    Group,
    Instance,
    Kind,
    Membership,
    OriginGrant,
    Role,
    Share,
    User,
    UserStatus,
    utcnow,
)
from labhub.proxy.routes import OPEN_TO_ANYONE, OPEN_TO_USERS, Audience
from labhub.services import changes
from labhub.services.errors import Conflict, Forbidden, Invalid, NotFound
from labhub.services.instances import get_instance
from labhub.services.lifecycle import note

OPEN_TO = {"": "only its owner and those it is shared with", OPEN_TO_USERS: "every user, logged in",
           OPEN_TO_ANYONE: "anyone, without logging in"}
OPEN_TO_RULE = 'must be "users" (every user), "anyone" (without logging in) or "" (neither)'
PATH_MODE = ("instances share the hub's origin here (LABHUB_ORIGINS=path): an open workspace's pages would run "
             "with its visitors' hub sessions; opening one needs origins of their own (subdomain mode)")
_ACTIVE = [s.value for s in ACTIVE]
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ShareInfo:
    """A share as the API and the pages show it."""

    id: int
    instance_id: str
    user: str | None
    group: str | None
    created_by: str
    created_at: dt.datetime


def _info(share: Share, user: str | None, group: str | None) -> ShareInfo:
    return ShareInfo(id=share.id, instance_id=share.instance_id, user=user, group=group,
                     created_by=share.created_by, created_at=share.created_at)


def _target(instance: Instance) -> str:
    return f"{instance.owner.name}/{instance.name}"


def _by(actor: User, instance: Instance) -> str:
    return "" if actor.id == instance.owner_id else f" (by admin {actor.name})"


async def list_shares(session: AsyncSession, *, actor: User, instance_id: str) -> list[ShareInfo]:
    """The instance's shares (:func:`shares_of`): its owner's or an admin's to see."""
    instance = await get_instance(session, user=actor, instance_id=instance_id)
    return await shares_of(session, instance.id)


async def access_of(session: AsyncSession, *, actor: User, instance_id: str) -> tuple[Instance, list[ShareInfo]]:
    """The instance (its ``open_to``) and its shares: its owner's or an admin's to see."""
    instance = await get_instance(session, user=actor, instance_id=instance_id)
    return instance, await shares_of(session, instance.id)


async def shares_of(session: AsyncSession, instance_id: str) -> list[ShareInfo]:
    """The instance's shares, users first then groups, by name (whoever asks has been checked)."""
    rows = await session.execute(
        select(Share, User.name, Group.name).outerjoin(User, User.id == Share.user_id)
        .outerjoin(Group, Group.id == Share.group_id).where(Share.instance_id == instance_id))
    found = [_info(share, user, group) for share, user, group in rows.all()]
    return sorted(found, key=lambda s: (s.user is None, s.user or s.group or ""))


async def share(session: AsyncSession, *, actor: User, instance_id: str, user: str | None = None,
                group: str | None = None, address: str = "", now: dt.datetime | None = None
                ) -> tuple[ShareInfo, bool]:
    """Share the instance with ``user`` or with ``group``'s members; ``(share, created)``.

    Idempotent: sharing again with the same user or group gives the existing share (``created``
    False).  Raises NotFound/Forbidden (the instance), Invalid (whom), Conflict (it has ended).
    """
    instance = await get_instance(session, user=actor, instance_id=instance_id)
    _shareable(instance)
    user, group = (user or "").strip() or None, (group or "").strip() or None
    if (user is None) == (group is None):
        raise Invalid("name whom to share it with", fields={"body": "give a user or a group (one of them)"})
    if user is not None:
        grantee = (await session.execute(select(User).where(User.name == user))).scalar_one_or_none()
        if grantee is None or grantee.status != UserStatus.ACTIVE:
            raise Invalid("no such user", fields={"user": f"no active user named {user!r}"})
        if grantee.id == instance.owner_id:
            raise Invalid("that is its owner", fields={"user": f"{user} owns it already"})
        user_id, group_id, where = grantee.id, None, Share.user_id == grantee.id
    else:
        found = (await session.execute(select(Group).where(Group.name == group))).scalar_one_or_none()
        member = found is not None and (await session.execute(select(Membership.id).where(
            Membership.group_id == found.id, Membership.user_id == actor.id))).first() is not None
        if found is None or not (member or actor.is_admin):
            # the same answer whether or not it exists: others' groups are not the owner's to know
            raise Invalid("no such group", fields={"group": f"you are in no group named {group!r}"})
        user_id, group_id, where = None, found.id, Share.group_id == found.id
    existing = (await session.execute(select(Share).where(Share.instance_id == instance.id, where))) \
        .scalar_one_or_none()
    if existing is not None:
        return _info(existing, user, group), False
    now = now or utcnow()
    row = Share(instance_id=instance.id, user_id=user_id, group_id=group_id, created_by=actor.name, created_at=now)
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:  # the same share, made meanwhile by a concurrent request
        raise Conflict("it was shared with them meanwhile; reload and look") from exc
    whom = user if user is not None else f"group {group}"
    audit.record(session, actor=actor, action="instance.share", target=_target(instance), address=address,
                 **({"user": user} if user is not None else {"group": group}))
    note(session, instance, reason="shared", message=f"shared with {whom}{_by(actor, instance)}", now=now)
    return _info(row, user, group), True


def _shareable(instance: Instance) -> None:
    if instance.kind == Kind.JOB:
        raise Invalid("a job has no address to share", fields={"instance": "only workspaces and services are shared"})
    if instance.status in TERMINAL:
        raise Conflict("the instance has ended", fields={"status": instance.status})


async def revoke(session: AsyncSession, *, actor: User, instance_id: str, share_id: int, address: str = "",
                 now: dt.datetime | None = None) -> ShareInfo:
    """End one share; those who lose access by it lose it at once (their origin cookies go)."""
    instance = await get_instance(session, user=actor, instance_id=instance_id)
    row = await session.get(Share, share_id)
    if row is None or row.instance_id != instance.id:
        raise NotFound("no such share", fields={"share_id": f"the instance has no share {share_id}"})
    user = (await session.get(User, row.user_id)).name if row.user_id is not None else None  # type: ignore[union-attr]
    group = (await session.get(Group, row.group_id)).name if row.group_id is not None else None  # type: ignore[union-attr]
    info = _info(row, user, group)
    await session.delete(row)
    await session.flush()
    await _end_lost_access(session, instance)
    audit.record(session, actor=actor, action="instance.unshare", target=_target(instance), address=address,
                 **({"user": user} if user is not None else {"group": group}))
    if instance.status not in TERMINAL:
        whom = user if user is not None else f"group {group}"
        note(session, instance, reason="unshared", message=f"no longer shared with {whom}{_by(actor, instance)}",
             now=now or utcnow())
    return info


async def set_open_to(session: AsyncSession, *, actor: User, instance_id: str, open_to: str, subdomains: bool,
                      address: str = "", now: dt.datetime | None = None) -> Instance:
    """Open a workspace to every user (``"users"``), to anyone (``"anyone"``), or to neither (``""``):
    admins only.  Closing it ends the access of those it is not shared with at once."""
    instance = await get_instance(session, user=actor, instance_id=instance_id)
    if not actor.is_admin:
        raise Forbidden("only admins open an instance to others (its owner shares it with users or groups)")
    if open_to not in OPEN_TO:
        raise Invalid("invalid access", fields={"open_to": OPEN_TO_RULE})
    if instance.kind != Kind.WORKSPACE:
        raise Invalid("only workspaces are opened to everyone", fields={
            "open_to": "a service's inference routes are made public with its own switch (PATCH its public)"})
    if instance.status in TERMINAL:
        raise Conflict("the instance has ended", fields={"status": instance.status})
    if open_to and not subdomains:
        raise Conflict("not on this hub", fields={"open_to": PATH_MODE})
    was = instance.open_to or ""
    if open_to == was:
        return instance
    instance.open_to = open_to
    await session.flush()
    await _end_lost_access(session, instance)
    audit.record(session, actor=actor, action="instance.open_to", target=_target(instance), address=address,
                 open_to=open_to, was=was)
    message = f"opened to {OPEN_TO[open_to]}" if open_to else "closed: only its owner and those it is shared with"
    note(session, instance, reason="access", message=message + _by(actor, instance), now=now or utcnow())
    return instance


async def _end_lost_access(session: AsyncSession, instance: Instance) -> None:
    """Delete the origin cookies (grants) of users who may no longer open ``instance``, and drop their
    cached principals on every replica."""
    if instance.open_to:
        return  # every user may still open it
    keep = (await audience(session, [instance.id])).get(instance.id, Audience()).users | {instance.owner_id}
    rows = await session.execute(select(OriginGrant.user_id, User.role).join(User, User.id == OriginGrant.user_id)
                                 .where(OriginGrant.instance_id == instance.id).distinct())
    lost = {uid for uid, role in rows.all() if uid not in keep and role != Role.ADMIN}
    if lost:
        await session.execute(delete(OriginGrant).where(OriginGrant.instance_id == instance.id,
                                                        OriginGrant.user_id.in_(lost)))
        for uid in lost:
            changes.credentials(session, uid)


async def may_open(session: AsyncSession, *, user: User, instance: Instance) -> bool:
    """Whether ``user`` may be granted ``instance``'s origin: an active owner or admin, anyone active
    when it is open, or someone it is shared with (by name, or as a member of a group)."""
    if user.status != UserStatus.ACTIVE:
        return False
    if instance.owner_id == user.id or user.is_admin or instance.open_to:
        return True
    groups = select(Membership.group_id).where(Membership.user_id == user.id)
    found = await session.execute(select(Share.id).where(
        Share.instance_id == instance.id, or_(Share.user_id == user.id, Share.group_id.in_(groups))).limit(1))
    return found.first() is not None


async def audience(session: AsyncSession, instance_ids: Iterable[str] | None = None, *,
                   open_allowed: bool = True) -> dict[str, Audience]:
    """Who may use each active instance besides its owner and admins (the proxy's view): the users it
    is shared with, groups resolved to their members now, and its ``open_to`` (ignored unless
    ``open_allowed``: path mode).  Of ``instance_ids``, or of every instance (None); instances
    nobody else may use are left out."""
    users: dict[str, set[int]] = {}
    opened: dict[str, str] = {}
    for chunk in _chunks(instance_ids):
        direct = select(Share.instance_id, Share.user_id).join(Instance, Instance.id == Share.instance_id) \
            .where(Share.user_id.is_not(None), Instance.status.in_(_ACTIVE))
        grouped = select(Share.instance_id, Membership.user_id) \
            .join(Membership, Membership.group_id == Share.group_id) \
            .join(Instance, Instance.id == Share.instance_id).where(Instance.status.in_(_ACTIVE))
        open_ = select(Instance.id, Instance.open_to).where(Instance.open_to != "", Instance.status.in_(_ACTIVE))
        if chunk is not None:
            direct, grouped = direct.where(Share.instance_id.in_(chunk)), grouped.where(Share.instance_id.in_(chunk))
            open_ = open_.where(Instance.id.in_(chunk))
        for query in (direct, grouped):
            for instance_id, user_id in (await session.execute(query)).all():
                users.setdefault(instance_id, set()).add(user_id)
        if open_allowed:
            opened.update((i, o) for i, o in (await session.execute(open_)).all())
    return {i: Audience(frozenset(users.get(i, ())), opened.get(i, "")) for i in users.keys() | opened.keys()}


def _chunks(ids: Iterable[str] | None) -> list[list[str] | None]:
    if ids is None:
        return [None]
    items = sorted(set(ids))
    return [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]


async def shared_ids(session: AsyncSession, instance_ids: Iterable[str]) -> set[str]:
    """Which of ``instance_ids`` are shared with someone (for the owner's badges)."""
    found: set[str] = set()
    for chunk in _chunks(instance_ids):
        found.update((await session.execute(select(Share.instance_id).where(Share.instance_id.in_(chunk or []))
                                            .distinct())).scalars())
    return found


@dataclass(frozen=True, slots=True)
class SharedInstance:
    """An active instance of someone else's that ``user`` may open, and why (for Home)."""

    instance: Instance
    how: str  # "you", "group NAME", "every user", "anyone"


async def shared_with(session: AsyncSession, *, user: User, limit: int = 200) -> list[SharedInstance]:
    """Others' active instances shared with ``user`` (by name or through a group) or open to everyone,
    newest first."""
    groups = select(Membership.group_id).where(Membership.user_id == user.id)
    rows = await session.execute(
        select(Instance, Group.name).join(Share, Share.instance_id == Instance.id)
        .outerjoin(Group, Group.id == Share.group_id)
        .where(Instance.owner_id != user.id, Instance.status.in_(_ACTIVE),
               or_(Share.user_id == user.id, Share.group_id.in_(groups)))
        .order_by(Instance.created_at.desc()).limit(limit))
    found: dict[str, tuple[Instance, list[str]]] = {}
    for inst, group in rows.all():
        found.setdefault(inst.id, (inst, []))[1].append("you" if group is None else f"group {group}")
    opened = await session.execute(
        select(Instance).where(Instance.owner_id != user.id, Instance.status.in_(_ACTIVE), Instance.open_to != "")
        .order_by(Instance.created_at.desc()).limit(limit))
    for inst in opened.scalars():
        found.setdefault(inst.id, (inst, []))[1].append("every user" if inst.open_to == OPEN_TO_USERS else "anyone")
    ordered = sorted(found.values(), key=lambda item: item[0].created_at, reverse=True)[:limit]
    return [SharedInstance(inst, ", ".join(sorted(set(how), key=how.index))) for inst, how in ordered]
