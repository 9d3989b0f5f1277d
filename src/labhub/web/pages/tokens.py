"""API tokens: create (the secret is shown once), list with last use, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from labhub.api.deps import HubDep, SessionDep
from labhub.services import credentials
from labhub.services.errors import ServiceError
from labhub.web.pages.common import PageUser, check_csrf, render

router = APIRouter(include_in_schema=False)

SCOPE_HELP = {
    "*": "everything you can do",
    "read": "look, never change",
    "instances": "launch, list and stop instances",
    "jobs": "submit and manage jobs",
    "infer": "only call your services' inference routes (for a script or app that asks a model)",
    "admin": "admin actions (admins only)",
}
EXPIRY_CHOICES = {"": "never", "1": "1 day", "7": "7 days", "30": "30 days", "90": "90 days", "365": "1 year"}


async def _page(request: Request, session, user, *, status: int = 200, **context) -> Response:  # noqa: ANN001
    tokens = await credentials.list_tokens(session, user=user)
    scopes = {k: v for k, v in SCOPE_HELP.items() if k != "admin" or user.is_admin}
    return render(request, "tokens.html", status=status, section="tokens", tokens=tokens, scopes=scopes,
                  expiries=EXPIRY_CHOICES, **context)


@router.get("/tokens")
async def tokens(request: Request, user: PageUser, session: SessionDep) -> Response:
    return await _page(request, session, user)


@router.post("/tokens")
async def create(
    request: Request, user: PageUser, session: SessionDep,
    note: Annotated[str, Form(max_length=255)] = "", scopes: Annotated[list[str] | None, Form()] = None,
    expires: Annotated[str, Form(max_length=8)] = "", csrf_token: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(request, csrf_token)
    form = {"note": note, "scopes": scopes or ["*"], "expires": expires}
    if expires not in EXPIRY_CHOICES:
        return await _page(request, session, user, status=422, form=form, fields={"expires": "pick one of the choices"})
    try:
        token, secret = await credentials.issue_token(session, user=user, note=note.strip(), scopes=scopes or ["*"],
                                                      expires_in_days=float(expires) if expires else None)
    except ServiceError as exc:
        return await _page(request, session, user, status=exc.status, form=form, fields=exc.fields)
    # Shown in this response only (no redirect, not cached): the hub keeps just its digest.
    return await _page(request, session, user, new_token=secret, new_id=token.id)


@router.post("/tokens/{token_id}/revoke")
async def revoke(token_id: int, request: Request, user: PageUser, session: SessionDep, hub: HubDep,
                 csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    await credentials.revoke_token(session, user=user, token_id=token_id)
    await session.commit()  # before dropping the cache, so no request can cache the token again
    hub.auth.clear()  # the cache is keyed by secret, which we no longer know: drop it all
    return RedirectResponse("/tokens", status_code=303)
