"""Sign-up and approval: who may ask for an account, who decides, who is told.

A new account (from the sign-up form or a first OIDC login) is ``pending``
while approval is required.  Approvers (``approval_emails`` plus every admin
with an e-mail address) get a mail linking to the approval page; an admin
approves or rejects it (web, API or CLI) and the user gets a mail with the
decision.  Functions here change the database and *return* the mails: the
caller sends them after the commit (no network call inside a transaction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth import audit
from labhub.auth.mail import Mail
from labhub.models import Role, User, UserStatus
from labhub.services import credentials, security, users
from labhub.services.errors import Conflict, Forbidden, Invalid
from labhub.settings import Settings


@dataclass
class SignupResult:
    """The sign-up form always gets the same answer; what happened is only mailed."""

    user: User | None
    mails: list[Mail] = field(default_factory=list)


@dataclass
class Decision:
    name: str
    status: str
    decided_by: str
    mails: list[Mail] = field(default_factory=list)


async def approvers(session: AsyncSession, settings: Settings) -> list[str]:
    """Who is asked: the configured addresses, then every active admin with an address."""
    rows = await session.execute(select(User.email).where(
        User.role == Role.ADMIN, User.status == UserStatus.ACTIVE, User.email.is_not(None)).order_by(User.name))
    out: list[str] = []
    for address in [*settings.approval_emails, *rows.scalars()]:
        if address and address.lower() not in {a.lower() for a in out}:
            out.append(address)
    return out


def approval_link(settings: Settings, name: str) -> str:
    return f"{settings.base_url}/approvals/{name}"


def request_mail(settings: Settings, user: User, to: list[str], *, via: str) -> Mail:
    return Mail(to=tuple(to), subject=f"[LabHub] {user.name} asks for an account", body=(
        f"{user.name} ({user.email or 'no e-mail address'}) signed up {via} and waits for approval.\n\n"
        f"Approve or reject the account here (you will be asked to log in as an admin):\n"
        f"  {approval_link(settings, user.name)}\n\n"
        f"or on the hub's machine: labhub user approve {user.name}\n"))


def received_mail(settings: Settings, user: User, *, pending: bool) -> Mail:
    assert user.email
    if pending:
        body = (f"Hello {user.name},\n\nyour request for a LabHub account was received. An admin will approve or\n"
                f"decline it; you will get an e-mail either way. Until then you can log in at\n"
                f"  {settings.base_url}/login\nbut there is nothing to use yet.\n")
    else:
        body = f"Hello {user.name},\n\nyour LabHub account is ready. Log in here:\n  {settings.base_url}/login\n"
    return Mail(to=(user.email,), subject="[LabHub] About your sign-up", body=body)


def decision_mail(settings: Settings, user: User, *, approved: bool, reason: str = "") -> Mail | None:
    if not user.email:
        return None
    if approved:
        body = (f"Hello {user.name},\n\nyour LabHub account was approved. Log in here:\n"
                f"  {settings.base_url}/login\n")
        subject = "[LabHub] Your account was approved"
    else:
        body = (f"Hello {user.name},\n\nyour request for a LabHub account was not approved."
                + (f"\nReason: {reason}" if reason else "")
                + "\n\nIf you think this is a mistake, contact your group's admins.\n")
        subject = "[LabHub] Your account request was declined"
    return Mail(to=(user.email,), subject=subject, body=body)


def needs_approval(settings: Settings, override: bool | None = None) -> bool:
    return settings.approval_required if override is None else override


async def signup(session: AsyncSession, *, settings: Settings, name: str, email: str, password: str,
                 address: str = "") -> SignupResult:
    """Ask for an account with the sign-up form.

    Malformed input is a 422 naming the field.  A name or address already in
    use is *not* revealed to the requester: the answer is the same as for a
    new account, and only the mailbox owner is told what happened.
    """
    if settings.signup != "open":
        raise Forbidden("sign-up is closed: ask an admin to add you")
    fields = {}
    if reason := users.check_username(name):
        fields["username"] = reason
    if reason := users.check_email(email):
        fields["email"] = reason
    if reason := users.check_password(password):
        fields["password"] = reason
    if fields:
        raise Invalid("invalid sign-up", fields=fields)
    password_hash = security.hash_password(password)  # paid whether or not the name is free
    taken = await users.get_user(session, name=name)
    same_email = (await session.execute(select(User).where(User.email == email).limit(1))).scalar_one_or_none()
    if taken is not None or same_email is not None:
        audit.record(session, actor=None, action="user.signup_refused", target=name, address=address,
                     reason="name taken" if taken is not None else "e-mail in use")
        what = "user name" if taken is not None else "e-mail address"
        return SignupResult(user=None, mails=[Mail(to=(email,), subject="[LabHub] About your sign-up", body=(
            f"Someone (perhaps you) asked for a LabHub account named {name!r} with this address.\n"
            f"That {what} is already in use, so no account was created. If you already have an account,\n"
            f"log in at {settings.base_url}/login; otherwise sign up again with another name.\n"))])
    pending = needs_approval(settings)
    user = await users.create_user(session, name=name, email=email,
                                   status=UserStatus.PENDING if pending else UserStatus.ACTIVE)
    user.password_hash = password_hash
    audit.record(session, actor=name, action="user.signup", target=name, address=address, via="form",
                 status=user.status)
    mails = [received_mail(settings, user, pending=pending)]
    if pending and (to := await approvers(session, settings)):
        mails.append(request_mail(settings, user, to, via="with the sign-up form"))
    return SignupResult(user=user, mails=mails)


async def approve(session: AsyncSession, *, settings: Settings, actor: User, name: str, address: str = "") -> Decision:
    """Activate a pending account; 409 once it was decided (approved, rejected or disabled)."""
    if not actor.is_admin:
        raise Forbidden("admins only")
    user = await users.require_user(session, name)
    if user.status != UserStatus.PENDING:
        raise Conflict(f"{name} is not waiting for approval (status: {user.status}"
                       + (f", {user.status_reason}" if user.status_reason else "") + ")")
    users.set_status(user, UserStatus.ACTIVE, f"approved by {actor.name}")
    audit.record(session, actor=actor, action="user.approve", target=name, address=address)
    mail = decision_mail(settings, user, approved=True)
    return Decision(name=name, status=user.status, decided_by=actor.name, mails=[mail] if mail else [])


async def reject(session: AsyncSession, *, settings: Settings, actor: User, name: str, reason: str = "",
                 address: str = "") -> Decision:
    """Refuse a pending account (it becomes ``disabled``, the reason recorded); 409 once decided."""
    if not actor.is_admin:
        raise Forbidden("admins only")
    if len(reason) > 200:
        raise Invalid("invalid reason", fields={"reason": "must be at most 200 characters"})
    user = await users.require_user(session, name)
    if user.status != UserStatus.PENDING:
        raise Conflict(f"{name} is not waiting for approval (status: {user.status}"
                       + (f", {user.status_reason}" if user.status_reason else "") + ")")
    users.set_status(user, UserStatus.DISABLED, f"rejected by {actor.name}" + (f": {reason}" if reason else ""))
    await credentials.end_sessions(session, user=user)
    audit.record(session, actor=actor, action="user.reject", target=name, address=address, reason=reason)
    mail = decision_mail(settings, user, approved=False, reason=reason)
    return Decision(name=name, status=user.status, decided_by=actor.name, mails=[mail] if mail else [])


async def pending_users(session: AsyncSession, *, limit: int = 500) -> list[User]:
    rows = await session.execute(select(User).where(User.status == UserStatus.PENDING)
                                 .order_by(User.created_at).limit(limit))
    return list(rows.scalars())
