"""From verified OIDC claims to a LabHub user: find, link or create, and check group rules.

Called by the OIDC callback with claims whose signature, issuer, audience
and nonce were already checked (:mod:`labhub.auth.oidc`).  An identity is the
pair (provider, subject) -- never the e-mail or user name a provider sends,
which users may be able to choose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth import audit
from labhub.auth.flow import OidcError
from labhub.auth.mail import Mail
from labhub.auth.providers import Provider
from labhub.models import Identity, User, UserStatus, utcnow
from labhub.services import approval, groups, users
from labhub.services.errors import Conflict
from labhub.settings import Settings


@dataclass
class OidcLogin:
    user: User
    created: bool
    mails: list[Mail] = field(default_factory=list)


def claim_values(claims: dict[str, Any], name: str | None) -> list[str]:
    """A claim as a list of strings: JSON lists as they are, strings split on spaces and commas."""
    if not name:
        return []
    value = claims.get(name)
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def synced_group_names(provider: Provider, values: Iterable[str]) -> set[str]:
    names = set()
    for value in values:
        if provider.group_prefix:
            if not value.startswith(provider.group_prefix):
                continue
            value = value[len(provider.group_prefix):]
        if (name := groups.sanitize(value)) is not None:
            names.add(name)
    return names


async def login(session: AsyncSession, *, settings: Settings, provider: Provider, claims: dict[str, Any],
                address: str = "") -> OidcLogin:
    """The user for these claims (created if new and allowed).

    Raises OidcError when the login must stop (a required group missing, no
    account and none may be created, the account disabled); the caller
    records that in the audit log, outside this (rolled back) transaction.
    """
    subject = claims["sub"]
    member_of = claim_values(claims, provider.groups_claim)
    if provider.required_groups and not provider.required_groups.intersection(member_of):
        raise OidcError("missing_group", f"your {provider.title} account is not in a group allowed to use this hub "
                        f"({', '.join(sorted(provider.required_groups))}); ask your group's admin")
    email = claims.get(provider.email_claim) if claims.get("email_verified", True) is not False else None
    email = email if isinstance(email, str) and users.check_email(email) is None else None
    identity = (await session.execute(select(Identity).where(
        Identity.provider == provider.name, Identity.subject == subject))).scalar_one_or_none()
    created = False
    mails: list[Mail] = []
    if identity is not None:
        user = await session.get(User, identity.user_id)
        assert user is not None
    else:
        if not provider.create_users:
            raise OidcError("no_account", f"there is no LabHub account for your {provider.title} identity; "
                            "ask an admin to add you")
        raw = claims.get(provider.username_claim)
        name = await users.available_username(session, raw if isinstance(raw, str) and raw else subject)
        pending = approval.needs_approval(settings, provider.approval_required)
        user = await users.create_user(session, name=name, email=email,
                                       status=UserStatus.PENDING if pending else UserStatus.ACTIVE)
        identity = Identity(user_id=user.id, provider=provider.name, subject=subject, email=email)
        session.add(identity)
        created = True
        audit.record(session, actor=name, action="user.signup", target=name, address=address,
                     via=f"oidc:{provider.name}", subject=subject, status=user.status)
        if pending and (to := await approval.approvers(session, settings)):
            mails.append(approval.request_mail(settings, user, to, via=f"with {provider.title}"))
    if user.status == UserStatus.DISABLED:
        raise OidcError("disabled", "this LabHub account is disabled; ask an admin")
    now = utcnow()
    identity.last_login_at = now
    if email and identity.email != email:
        identity.email = email
    if email and not user.email:
        user.email = email
    user.last_login_at = now
    if provider.sync_groups:
        await groups.sync_from_claim(session, user=user, names=synced_group_names(provider, member_of),
                                     source=provider.source)
    audit.record(session, actor=user, action="login.ok", target=user.name, address=address,
                 via=f"oidc:{provider.name}", status=user.status)
    return OidcLogin(user=user, created=created, mails=mails)


async def link(session: AsyncSession, *, actor: User | str, user: str, provider: str, subject: str) -> Identity:
    """Let (provider, subject) log in as ``user`` (for providers with ``create_users = false``)."""
    target = await users.require_user(session, user)
    existing = (await session.execute(select(Identity).where(
        Identity.provider == provider, Identity.subject == subject))).scalar_one_or_none()
    if existing is not None:
        raise Conflict(f"{provider}:{subject} is already linked")
    identity = Identity(user_id=target.id, provider=provider, subject=subject)
    session.add(identity)
    audit.record(session, actor=actor, action="identity.link", target=user, provider=provider, subject=subject)
    return identity


async def identities_of(session: AsyncSession, user: User) -> list[Identity]:
    rows = await session.execute(select(Identity).where(Identity.user_id == user.id).order_by(Identity.id))
    return list(rows.scalars())
