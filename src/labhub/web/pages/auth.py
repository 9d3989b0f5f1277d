"""Log in, log out, first-admin setup, and the hooks sign-up and OIDC will use.

Hooks for identity providers (another module fills them in):

* ``app.state.login_providers``: a list of ``{"name", "title", "url"}``; each
  becomes a "Log in with …" button on the login page (``providers`` block).
* ``app.state.signup_url``: when set, the login page links to sign-up.
* ``/pending``: where a new account waits for an admin's approval.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.api.deps import HubDep, SessionDep
from labhub.hub import Hub
from labhub.models import User
from labhub.services import credentials, security, users
from labhub.services.errors import ServiceError
from labhub.web.pages.common import check_csrf, error_page, render, safe_next

router = APIRouter(include_in_schema=False)


def login_hooks(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"providers": list(getattr(state, "login_providers", []) or []),
            "signup_url": getattr(state, "signup_url", None)}


@router.get("/login")
async def login_form(request: Request, hub: HubDep, next: str = "/") -> Response:  # noqa: A002
    if hub.setup_token is not None:  # only until the first admin: then the token is gone for good
        async with hub.sessions() as session:
            if await users.count_admins(session):
                hub.setup_token = None
    return render(request, "login.html", next=safe_next(next), setup_needed=hub.setup_token is not None,
                  **login_hooks(request))


@router.post("/login")
async def login(
    request: Request, hub: HubDep, session: SessionDep,
    username: Annotated[str, Form(max_length=63)] = "", password: Annotated[str, Form(max_length=1024)] = "",
    csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",  # noqa: A002
) -> Response:
    check_csrf(request, csrf_token)
    user = await users.authenticate(session, name=username.strip().lower(), password=password)
    if user is None:
        return render(request, "login.html", status=401, next=safe_next(next), username=username,
                      error="Wrong user name or password.", **login_hooks(request))
    return await start_session(request, hub, session, user, safe_next(next))


async def start_session(request: Request, hub: Hub, session: AsyncSession, user: User, target: str) -> Response:
    """Log ``user`` in (a fresh session id) and redirect to ``target``."""
    old = request.cookies.get(hub.cookies.session)
    if old:  # rotate: a session id known before login never becomes a logged-in one
        await credentials.end_session(session, secret=old)
        hub.auth.invalidate("session", old)
    secret = await credentials.create_session(
        session, user=user, hours=hub.settings.session_hours, user_agent=request.headers.get("user-agent", ""),
        address=request.client.host if request.client else "",
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(hub.cookies.session, secret, httponly=True, samesite="lax", secure=hub.cookies.secure,
                        max_age=int(hub.settings.session_hours * 3600), path="/")
    return response


@router.post("/logout")
async def logout(request: Request, hub: HubDep, session: SessionDep,
                 csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    cookie = request.cookies.get(hub.cookies.session)
    if cookie:
        user = await credentials.end_session(session, secret=cookie)
        hub.auth.invalidate("session", cookie)
        if user is not None:  # its instance origins' cookies end with it (their grants cascade)
            hub.auth.invalidate_user(user.id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(hub.cookies.session, path="/", secure=hub.cookies.secure, httponly=True)
    return response


@router.get("/pending")
async def pending(request: Request) -> Response:
    """Shown to an account that exists but waits for an admin's approval."""
    return render(request, "pending.html")


@router.get("/setup")
async def setup_form(request: Request, hub: HubDep, session: SessionDep, token: str = "") -> Response:
    # The link dies the moment any admin exists, however it was made (`labhub user add --admin` in
    # another process, the API, OIDC): ask the database, not only this process's memory.
    if hub.setup_token is not None and await users.count_admins(session):
        hub.setup_token = None
    if hub.setup_token is None or not security.same(token, hub.setup_token):
        return error_page(request, 404, "This setup link is not valid (it works once, until the first admin exists).")
    return render(request, "setup.html", token=token)


@router.post("/setup")
async def setup(
    request: Request, hub: HubDep, session: SessionDep,
    token: Annotated[str, Form()] = "", username: Annotated[str, Form(max_length=63)] = "",
    password: Annotated[str, Form(max_length=1024)] = "", csrf_token: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(request, csrf_token)
    if hub.setup_token is not None and await users.count_admins(session):
        hub.setup_token = None
    expected = hub.setup_token
    if expected is None or not security.same(token, expected):
        return error_page(request, 404, "This setup link is not valid any more.")
    hub.setup_token = None  # claimed before the next await: two posts at once make one admin, not two
    try:
        user = await users.create_user(session, name=username.strip().lower(), password=password, admin=True)
    except ServiceError as exc:
        hub.setup_token = expected  # a refused form does not use the link up
        return render(request, "setup.html", status=422, token=token, username=username, fields=exc.fields)
    return await start_session(request, hub, session, user, "/")
