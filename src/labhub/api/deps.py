"""Dependencies shared by routers: the hub, a DB session, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth import csrf
from labhub.hub import Hub
from labhub.models import User
from labhub.proxy.routes import Principal

CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = csrf.SAFE_METHODS


async def get_hub(request: Request) -> Hub:
    # async (as every dependency here): FastAPI runs a plain ``def`` dependency in a worker thread
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


async def get_session(hub: HubDep) -> AsyncIterator[AsyncSession]:
    async with hub.tx() as session:
        yield session


# scope="function": the transaction commits when the endpoint returns, *before* the response is
# sent (FastAPI's default ends a dependency after sending): a client that follows a 303 or reads
# right after a write must see it, and a streaming response must not hold a connection open.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


def csrf_token(request: Request, hub: Hub) -> tuple[str, str | None]:
    """The CSRF token for this request's session (and a new nonce cookie value to set, before login)."""
    return csrf.expected_token(request, key=hub.secret_key, session_cookie=hub.cookies.session,
                               nonce_cookie=hub.cookies.csrf)


def csrf_valid(request: Request, hub: Hub, sent: str | None) -> bool:
    """A cookie-authenticated write: from the hub's own origin, with the session's token."""
    return csrf.valid(request, sent, key=hub.secret_key, session_cookie=hub.cookies.session,
                      nonce_cookie=hub.cookies.csrf, public_url=hub.public_url)


async def get_principal(request: Request, hub: HubDep) -> Principal | None:
    """The caller from a bearer token, else from the session cookie.

    Cookie-authenticated requests that change state must come from the hub's
    own origin and carry the session's CSRF token in the X-CSRF-Token header
    (the web UI's fetch() sends it, from the page's ``csrf-token`` meta tag).
    """
    if (token := bearer_token(request)) is not None:
        return await hub.auth.authenticate("token", token)
    cookie = request.cookies.get(hub.cookies.session)
    if not cookie:
        return None
    principal = await hub.auth.authenticate("session", cookie)
    if principal is not None and request.method not in SAFE_METHODS:
        if not csrf_valid(request, hub, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "missing or wrong CSRF token, or another site's page (send the "
                                     "X-CSRF-Token header from the hub's own pages)")
    return principal


PrincipalDep = Annotated[Principal | None, Depends(get_principal)]


def _unauthenticated() -> HTTPException:
    return HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})


async def get_caller(principal: PrincipalDep, session: SessionDep, hub: HubDep) -> tuple[Principal, User]:
    if principal is None:
        raise _unauthenticated()
    user = await hub.active_user(session, principal.user_id)
    if user is None:
        raise _unauthenticated()
    return principal, user


def _check_scopes(request: Request, principal: Principal, needed: tuple[str, ...], read_passes: bool) -> None:
    scopes = principal.scopes
    if "*" in scopes or scopes & set(needed) or (
            read_passes and "read" in scopes and request.method in SAFE_METHODS):
        return
    raise HTTPException(403, f"this token lacks the scope: {' or '.join(needed)}")


def scoped(*needed: str, read_passes: bool = True):  # noqa: ANN201 - returns a dependency
    """A dependency giving the caller's User if the credential carries one of ``needed``.

    ``*`` (a full session or unscoped token) passes everything; ``read``
    passes safe methods unless ``read_passes`` is False (admin routes: an
    admin's read-only token does not read admin data).
    """

    async def dependency(request: Request, caller: Annotated[tuple[Principal, User], Depends(get_caller)]) -> User:
        principal, user = caller
        _check_scopes(request, principal, needed, read_passes)
        return user

    return dependency


def scoped_principal(*needed: str, read_passes: bool = True):  # noqa: ANN201 - returns a dependency
    """Like :func:`scoped`, giving the caller's :class:`Principal` without opening a transaction.

    For hot reads that need no more of the caller than who they are.  The
    principal comes from the authenticator's cache, which holds active users
    only: the hub drops a user's entries when their status, role or
    credentials change (``Hub.credentials_changed``), so a disabled account or
    a revoked token stops here at once, as it does in the proxy.
    """

    async def dependency(request: Request, principal: PrincipalDep) -> Principal:
        if principal is None:
            raise _unauthenticated()
        _check_scopes(request, principal, needed, read_passes)
        return principal

    return dependency


CurrentUser = Annotated[User, Depends(scoped("*"))]
InstancesUser = Annotated[User, Depends(scoped("instances"))]
JobsUser = Annotated[User, Depends(scoped("jobs"))]
ReadUser = Annotated[User, Depends(scoped("read", "instances"))]
CurrentCaller = Annotated[Principal, Depends(scoped_principal("*"))]
InstancesCaller = Annotated[Principal, Depends(scoped_principal("instances"))]


async def get_admin(user: Annotated[User, Depends(scoped("admin", read_passes=False))]) -> User:
    if not user.is_admin:
        raise HTTPException(403, "admins only")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


async def client_address(request: Request) -> str:
    """The caller's address as the hub's proxy reported it (it overwrites any X-Forwarded-For a client sends)."""
    return request.client.host if request.client else ""


AddressDep = Annotated[str, Depends(client_address)]
