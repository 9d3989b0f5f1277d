"""Instance origins: their names, and access to them through single-use codes.

Every instance is served on an origin of its own, ``<label>.<apps domain>``,
so that one user's pages can never run with another user's (or the admin's)
hub session.  The label is ``<instance>--<owner>`` (instance names may not
contain ``--``, so the first ``--`` splits it unambiguously) or, when that does
not fit in a DNS label, the instance id.

A browser gets into an instance origin in two steps: the hub, where the user
is logged in, mints a grant and redirects to the origin with its single-use
code (:func:`mint`); the origin redeems it (:func:`redeem`, one conditional
UPDATE, so a code works once even with several hub replicas) for a cookie that
only that origin receives and that opens only that instance
(:func:`principal`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.models import ACTIVE, Instance, LoginSession, OriginGrant, User, utcnow
from labhub.services import security, shares

SEPARATOR = "--"
LABEL_MAX = 63  # one DNS label
CODE_TTL = dt.timedelta(seconds=60)


def label_for(*, owner: str, name: str, instance_id: str) -> str:
    """The first DNS label of an instance's origin; injective over instances.

    ``name--owner`` when it fits and the name has no ``--`` (older names may),
    else the instance id (32 hex digits, never containing ``--``).  ``xn`` is
    avoided as a name: ``xn--`` starts an internationalised (punycode) label.
    """
    label = f"{name}{SEPARATOR}{owner}"
    if SEPARATOR in name or name == "xn" or len(label) > LABEL_MAX:
        return instance_id
    return label


async def instance_for_label(session: AsyncSession, label: str) -> Instance | None:
    """The instance an origin label names: the active one, else the newest that had it."""
    if SEPARATOR in label:
        name, _, owner = label.partition(SEPARATOR)
        rows = await session.execute(
            select(Instance).join(User, Instance.owner_id == User.id)
            .where(User.name == owner, Instance.name == name)
            .order_by(Instance.active_name.is_(None), Instance.created_at.desc()).limit(1))
        inst = rows.scalar_one_or_none()
    else:
        inst = await session.get(Instance, label)
    if inst is None or label_for(owner=inst.owner.name, name=inst.name, instance_id=inst.id) != label:
        return None
    return inst


async def may_open(session: AsyncSession, *, user: User, instance: Instance) -> bool:
    """Who may be granted an instance's origin: its owner, admins, and those it is shared with or open
    to (:func:`labhub.services.shares.may_open`); active users only."""
    return await shares.may_open(session, user=user, instance=instance)


async def mint(session: AsyncSession, *, user: User, instance: Instance, login_secret: str | None,
               now: dt.datetime | None = None) -> str:
    """A single-use code granting ``user`` the origin of ``instance``; valid for a minute.

    ``login_secret`` is the hub session cookie the request came with: the grant
    (and the origin cookie it becomes) ends with that login.
    """
    now = now or utcnow()
    login_id = security.digest(login_secret) if login_secret else None
    expires = now + dt.timedelta(hours=12)
    if login_id is not None:
        login = await session.get(LoginSession, login_id)
        if login is not None:
            expires = login.expires_at
        else:
            login_id = None
    await session.execute(delete(OriginGrant).where(OriginGrant.user_id == user.id, OriginGrant.expires_at <= now))
    code = security.new_session_secret()
    session.add(OriginGrant(user_id=user.id, instance_id=instance.id, login_session_id=login_id,
                            code_hash=security.digest(code), code_expires_at=now + CODE_TTL,
                            created_at=now, expires_at=expires))
    await session.flush()
    return code


async def redeem(session: AsyncSession, *, code: str, instance: Instance, now: dt.datetime | None = None
                 ) -> tuple[str, dt.datetime] | None:
    """Trade a code for the origin cookie's value (and its expiry); ``None`` if it is not valid here.

    A code is valid once, within its minute, and only on the origin of the
    instance it was minted for.
    """
    now = now or utcnow()
    if not code or len(code) > 128:
        return None
    secret = security.new_session_secret()
    result = await session.execute(
        update(OriginGrant)
        .where(OriginGrant.code_hash == security.digest(code), OriginGrant.code_expires_at > now,
               OriginGrant.instance_id == instance.id, OriginGrant.expires_at > now)
        .values(code_hash=None, secret_hash=security.digest(secret))
        .returning(OriginGrant.expires_at))
    expires = result.scalar_one_or_none()
    if expires is None:
        return None
    return secret, expires


@dataclass(frozen=True, slots=True)
class Access:
    user: User
    instance_id: str


async def principal(session: AsyncSession, *, secret: str, now: dt.datetime | None = None) -> Access | None:
    """Who an origin cookie belongs to and which instance it opens, if it is still good.

    Checked again on every cache miss: the user must be active and still
    :func:`may_open` it, and the instance still active.
    """
    now = now or utcnow()
    rows = await session.execute(
        select(OriginGrant, Instance).join(Instance, OriginGrant.instance_id == Instance.id)
        .where(OriginGrant.secret_hash == security.digest(secret), OriginGrant.expires_at > now))
    row = rows.first()
    if row is None:
        return None
    grant, instance = row
    user = await session.get(User, grant.user_id)
    if user is None or instance.status not in ACTIVE or not await may_open(session, user=user, instance=instance):
        return None
    return Access(user=user, instance_id=instance.id)
