"""Pages for sign-up, OIDC login and approvals; ``mount(app)`` wires them and the guards in.

* ``/signup`` (when ``signup = "open"``): ask for an account; the answer is
  the same whether or not the name was free, and the details go by mail.
* ``/oauth/{provider}/login`` and ``/callback``: the OIDC authorization code
  flow (:mod:`labhub.auth.oidc`); a new identity becomes a user (pending while
  approval is required).
* ``/approvals`` and ``/approvals/{name}``: where approval mails point; admins
  approve or reject there (forms with CSRF tokens).
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response

from labhub.api.deps import AddressDep, HubDep, SessionDep
from labhub.auth import audit, guards, identities
from labhub.auth.flow import FLOW_TTL, FlowState, OidcError
from labhub.models import UserStatus
from labhub.services import approval, users
from labhub.services.errors import ServiceError
from labhub.web.pages.auth import start_session
from labhub.web.pages.common import AdminPage, check_csrf, cookie_secure, error_page, render, safe_next

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

FLOW_COOKIE = "labhub_oidc"
OIDC_STATUS = {"bad_state": 400, "bad_response": 400, "bad_token": 400, "bad_nonce": 400, "token_refused": 400,
               "provider_refused": 403, "missing_group": 403, "no_account": 403, "disabled": 403,
               "provider_unreachable": 502, "provider_misconfigured": 502}
DONE = {"approved": "Approved {who}: they can use the hub now and were told by e-mail (if they gave an address).",
        "rejected": "Rejected {who}; they were told by e-mail (if they gave an address)."}


def mount(app: FastAPI) -> None:
    """Add the pages, the login-page hooks (provider buttons, sign-up link) and the guards."""
    hub = app.state.hub
    app.include_router(router)
    app.state.login_providers = [{"name": p.name, "title": p.title, "url": f"/oauth/{p.name}/login"}
                                 for p in hub.oidc.providers.values()]
    app.state.signup_url = "/signup" if hub.settings.signup == "open" else None
    guards.install(app)


# -- sign-up -------------------------------------------------------------------------------------------
@router.get("/signup")
async def signup_form(request: Request, hub: HubDep) -> Response:
    if hub.settings.signup != "open":
        return error_page(request, 404, "Sign-up is closed on this hub: ask an admin to add you.")
    return render(request, "auth_signup.html", approval=hub.settings.approval_required)


@router.post("/signup")
async def signup(
    request: Request, hub: HubDep, session: SessionDep, address: AddressDep,
    username: Annotated[str, Form(max_length=63)] = "", email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "", csrf_token: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(request, csrf_token)
    if hub.settings.signup != "open":
        return error_page(request, 404, "Sign-up is closed on this hub: ask an admin to add you.")
    form = {"username": username, "email": email}
    if (wait := hub.throttle.signup_wait(address)) > 0:
        audit.record(session, actor=None, action="user.signup_throttled", target=username[:63], address=address)
        response = render(request, "auth_signup.html", status=429, approval=hub.settings.approval_required, form=form,
                          error=f"Too many sign-ups from your address. Try again in {math.ceil(wait / 60)} minutes.")
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    hub.throttle.signup_attempted(address)
    try:
        result = await approval.signup(session, settings=hub.settings, name=username.strip().lower(),
                                       email=email.strip(), password=password, address=address)
    except ServiceError as exc:
        return render(request, "auth_signup.html", status=exc.status, approval=hub.settings.approval_required,
                      form=form, fields=exc.fields, error=None if exc.fields else exc.message)
    await session.commit()
    await hub.send_mails(result.mails)
    return render(request, "auth_signup_done.html", email=email.strip(), approval=hub.settings.approval_required)


# -- OIDC ------------------------------------------------------------------------------------------------
def _redirect_uri(hub: HubDep, provider: str) -> str:
    return f"{hub.settings.base_url}/oauth/{provider}/callback"


@router.get("/oauth/{provider}/login")
async def oidc_login(provider: str, request: Request, hub: HubDep, next: str = "/") -> Response:  # noqa: A002
    client = hub.oidc.get(provider)
    if client is None:
        return error_page(request, 404, f"There is no login provider called {provider!r}.")
    try:
        url, flow = await client.begin(redirect_uri=_redirect_uri(hub, provider), next_url=safe_next(next))
    except OidcError as exc:
        return error_page(request, OIDC_STATUS.get(exc.reason, 400), exc.message)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(FLOW_COOKIE, flow.seal(hub.secret_key), max_age=FLOW_TTL, path="/oauth/", httponly=True,
                        samesite="lax", secure=cookie_secure(request, hub))
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/oauth/{provider}/callback")
async def oidc_callback(provider: str, request: Request, hub: HubDep, address: AddressDep) -> Response:
    client = hub.oidc.get(provider)
    if client is None:
        return error_page(request, 404, f"There is no login provider called {provider!r}.")
    sealed = request.cookies.get(FLOW_COOKIE, "")
    flow = FlowState.unseal(sealed, hub.secret_key) if sealed else None
    claims: dict = {}
    try:
        if flow is None:
            raise OidcError("bad_state", "this login expired or was started in another browser; start again")
        # network calls first, outside any transaction
        claims = await client.finish(params=dict(request.query_params), flow=flow,
                                     redirect_uri=_redirect_uri(hub, provider))
        async with hub.tx() as session:
            result = await identities.login(session, settings=hub.settings, provider=client.provider, claims=claims,
                                            address=address)
            target = flow.next if result.user.status == UserStatus.ACTIVE else "/pending"
            response = await start_session(request, hub, session, result.user, target)
    except OidcError as exc:
        async with hub.tx() as session:
            subject = claims.get("sub")
            audit.record(session, actor=None, action="login.oidc_failed", address=address, reason=exc.reason,
                         target=f"{provider}:{subject}" if subject else provider)
        response = error_page(request, OIDC_STATUS.get(exc.reason, 400), exc.message)
        response.delete_cookie(FLOW_COOKIE, path="/oauth/")
        return response
    response.delete_cookie(FLOW_COOKIE, path="/oauth/")
    await hub.send_mails(result.mails)
    return response


# -- approvals ---------------------------------------------------------------------------------------------
@router.get("/approvals")
async def approvals(request: Request, _: AdminPage, session: SessionDep, done: str = "", who: str = "") -> Response:
    notice = DONE[done].format(who=who) if done in DONE and users.check_username(who) is None else ""
    return render(request, "auth_approvals.html", section="admin", pending=await approval.pending_users(session),
                  notice=notice)


@router.get("/approvals/{name}")
async def approval_page(name: str, request: Request, _: AdminPage, session: SessionDep) -> Response:
    user = await users.require_user(session, name)
    linked = await identities.identities_of(session, user)
    return render(request, "auth_approval.html", section="admin", subject=user,
                  identities=[i.provider for i in linked])


@router.post("/approvals/{name}/approve")
async def approve(name: str, request: Request, actor: AdminPage, session: SessionDep, hub: HubDep,
                  address: AddressDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    decision = await approval.approve(session, settings=hub.settings, actor=actor, name=name, address=address)
    await session.commit()
    hub.credentials_changed()
    await hub.send_mails(decision.mails)
    return RedirectResponse(f"/approvals?{urllib.parse.urlencode({'done': 'approved', 'who': name})}", status_code=303)


@router.post("/approvals/{name}/reject")
async def reject(name: str, request: Request, actor: AdminPage, session: SessionDep, hub: HubDep,
                 address: AddressDep, reason: Annotated[str, Form(max_length=200)] = "",
                 csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    decision = await approval.reject(session, settings=hub.settings, actor=actor, name=name, reason=reason.strip(),
                                     address=address)
    await session.commit()
    hub.credentials_changed()
    await hub.send_mails(decision.mails)
    return RedirectResponse(f"/approvals?{urllib.parse.urlencode({'done': 'rejected', 'who': name})}", status_code=303)
