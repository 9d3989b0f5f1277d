"""Login sessions and API tokens: issue, look up, revoke."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth import audit
from labhub.models import ApiToken, LoginSession, User, UserStatus, utcnow
from labhub.services import security
from labhub.services.errors import Invalid, NotFound

SCOPES = frozenset({"*", "read", "instances", "jobs", "infer", "admin"})
"""``*``: everything the user can do; ``read``: safe methods only; ``instances``: launch, list, stop
and use instances; ``jobs``: jobs (reserved); ``admin``: admin actions (admins only)."""


async def create_session(
    session: AsyncSession, *, user: User, hours: float, user_agent: str = "", address: str = ""
) -> str:
    """Start a login session; returns the cookie value (only its digest is stored)."""
    secret = security.new_session_secret()
    session.add(
        LoginSession(
            id=security.digest(secret),
            user_id=user.id,
            expires_at=utcnow() + dt.timedelta(hours=hours),
            user_agent=user_agent[:255],
            address=address[:64],
        )
    )
    await session.flush()
    return secret


async def session_user(session: AsyncSession, *, secret: str) -> User | None:
    """The active user behind a session cookie, or None (expired, revoked, pending, disabled).

    This is what the proxy and the API authenticate with: only active users pass.
    """
    user = await session_owner(session, secret=secret)
    return user if user is not None and user.status == UserStatus.ACTIVE else None


async def session_owner(session: AsyncSession, *, secret: str) -> User | None:
    """The user behind a live session cookie whatever their status, except disabled.

    Pending users have sessions too (they log in and see the waiting page);
    use :func:`session_user` wherever access is decided.
    """
    row = await session.get(LoginSession, security.digest(secret))
    if row is None or row.expires_at <= utcnow() or row.user.status == UserStatus.DISABLED:
        return None
    return row.user


async def end_session(session: AsyncSession, *, secret: str) -> User | None:
    """Log out one session (and the instance origins it opened); returns whose it was."""
    row = await session.get(LoginSession, security.digest(secret))
    await session.execute(delete(LoginSession).where(LoginSession.id == security.digest(secret)))
    return row.user if row is not None else None


async def end_sessions(session: AsyncSession, *, user: User) -> None:
    """Log ``user`` out everywhere."""
    await session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))


async def issue_token(
    session: AsyncSession,
    *,
    user: User,
    note: str = "",
    scopes: list[str] | None = None,
    expires_in_days: float | None = None,
    issued_by: User | None = None,
    address: str = "",
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret (shown once, never stored).

    ``issued_by`` is an admin making a token for someone else: only the
    explicit admin API does that, and the token and the audit log say so.
    """
    scopes = scopes or ["*"]
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise Invalid("unknown scopes", fields={"scopes": f"unknown: {', '.join(unknown)}"})
    if "admin" in scopes and not user.is_admin:
        raise Invalid("only admins may hold the admin scope", fields={"scopes": "admin scope needs an admin"})
    if expires_in_days is not None and expires_in_days <= 0:
        raise Invalid("invalid expiry", fields={"expires_in_days": "must be positive"})
    secret = security.new_token()
    token = ApiToken(
        user_id=user.id,
        hash=security.digest(secret),
        prefix=secret[:8],
        note=note[:255],
        scopes=sorted(set(scopes)),
        expires_at=utcnow() + dt.timedelta(days=expires_in_days) if expires_in_days else None,
        issued_by=issued_by.name if issued_by is not None and issued_by.id != user.id else None,
    )
    session.add(token)
    await session.flush()
    token.user = user
    audit.record(session, actor=issued_by or user, action="token.create", target=user.name, address=address,
                 token_id=token.id, prefix=token.prefix, scopes=token.scopes,
                 expires_at=token.expires_at.isoformat() if token.expires_at else None)
    return token, secret


async def token_lookup(session: AsyncSession, *, secret: str) -> ApiToken | None:
    """The live token for ``secret`` (its user active), recording its last use."""
    if not secret.startswith(security.TOKEN_PREFIX):
        return None
    token = (
        await session.execute(select(ApiToken).where(ApiToken.hash == security.digest(secret)))
    ).scalar_one_or_none()
    if token is None or token.user.status != UserStatus.ACTIVE:
        return None
    now = utcnow()
    if token.expires_at is not None and token.expires_at <= now:
        return None
    if token.last_used_at is None or now - token.last_used_at > dt.timedelta(minutes=1):
        await session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
    return token


async def list_tokens(session: AsyncSession, *, user: User) -> list[ApiToken]:
    rows = await session.execute(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id))
    return list(rows.scalars())


async def revoke_token(session: AsyncSession, *, user: User, token_id: int, owner: User | None = None,
                       address: str = "") -> ApiToken:
    """Delete one of ``user``'s tokens (admins may delete anyone's).

    Someone else's token is "no such token" (404), so token ids reveal nothing.
    With ``owner``, the token must also belong to that user.
    """
    token = await session.get(ApiToken, token_id)
    if token is None or (token.user_id != user.id and not user.is_admin):
        raise NotFound("no such token")
    if owner is not None and token.user_id != owner.id:
        raise NotFound("no such token")
    await session.delete(token)
    audit.record(session, actor=user, action="token.revoke", target=token.user.name, address=address,
                 token_id=token.id, prefix=token.prefix)
    return token
