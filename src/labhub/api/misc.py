"""/api/v1: templates, me, tokens, health."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel
from pydantic_core import to_json
from sqlalchemy import bindparam, select

from labhub import __version__
from labhub.api.deps import CurrentCaller, CurrentUser, HubDep, SessionDep
from labhub.api.schemas import (
    MAX_INT32,
    SIGNED_IN,
    NewTokenOut,
    ParamOut,
    SizeOut,
    TemplateOut,
    TokenId,
    TokenOut,
    TokenRequest,
    UserOut,
    error,
    json_answer,
)
from labhub.catalog import Template
from labhub.hub import Hub
from labhub.models import Group, Membership, Role, User, UserStatus
from labhub.services import credentials

router = APIRouter()
TOKENS_LIMIT = 1000


class HealthOut(BaseModel):
    status: str
    version: str
    uptime_s: float


@router.get("/health", response_model=HealthOut, tags=["system"], summary="Liveness: answers once the hub can serve")
async def health(request: Request) -> Response:
    hub = request.app.state.hub  # no dependencies at all: the cheapest answer the app can give
    return json_answer(b'{"status":"ok","version":%s,"uptime_s":%s}' % (
        _VERSION, to_json(round(time.monotonic() - hub.started_monotonic, 3))))


_VERSION = to_json(__version__)


@router.get("/templates", response_model=list[TemplateOut], tags=["templates"], responses=SIGNED_IN,
            summary="The templates you may launch, with their sizes")
async def templates(caller: CurrentCaller, hub: HubDep) -> Response:
    parts = _serialised_templates(hub)
    if caller.is_admin or all(only is None for only, _ in parts):
        return json_answer(b"[" + b",".join(body for _, body in parts) + b"]")
    async with hub.engine.connect() as conn:
        member_of = set((await conn.execute(_GROUP_NAMES, {"user_id": caller.user_id})).scalars())
    return json_answer(b"[" + b",".join(body for only, body in parts if only is None or only & member_of) + b"]")


_GROUP_NAMES = select(Group.name).join(Membership, Membership.group_id == Group.id) \
    .where(Membership.user_id == bindparam("user_id"))


def _serialised_templates(hub: Hub) -> list[tuple[frozenset[str] | None, bytes]]:
    """Every template as its JSON answer, with the groups it is limited to (None: everyone).

    Made once per catalog (kept in its memo; a reload is a new catalog); what differs between
    callers is only which templates they may see (``services.instances.template_allowed``).
    """
    catalog = hub.catalog
    parts = catalog.memo.get("api.templates")
    if parts is None:
        parts = [(frozenset(tpl.groups) if tpl.groups else None, _template_out(hub, tpl).model_dump_json().encode())
                 for tpl in catalog]
        catalog.memo["api.templates"] = parts
    return parts


def _template_out(hub: Hub, tpl: Template) -> TemplateOut:
    allowed = tpl.sizes or list(hub.settings.sizes)
    sizes = []
    for name, size in hub.settings.sizes.items():
        reason = "" if name in allowed else "not offered by this template"
        if not reason and size.gpus:
            gpu_backends = [b for b in hub.backends.values() if "gpus" in b.capabilities]
            reason = "" if gpu_backends else "no GPUs on this hub's backends"
        sizes.append(SizeOut(name=name, cpus=size.cpus, memory_mb=size.memory_mb, gpus=size.gpus,
                             description=size.description, allowed=not reason, reason=reason))
    return TemplateOut(
        name=tpl.name, title=tpl.title, description=tpl.description, kind=tpl.kind, sizes=sizes,
        default_size=tpl.default_size or allowed[0], hours_default=tpl.hours.default, hours_max=tpl.hours.max,
        backends=[b for b in (tpl.backends or list(hub.backends)) if b in hub.backends],
        params=[ParamOut(**p.model_dump()) for p in tpl.params],
    )


@router.get("/me", response_model=UserOut, tags=["users"], responses=SIGNED_IN, summary="Who you are")
async def me(caller: CurrentCaller, hub: HubDep) -> Response:
    async with hub.engine.connect() as conn:
        row = (await conn.execute(_ME, {"user_id": caller.user_id})).first()
    if row is None:  # gone or no longer active (e.g. changed on the hub's machine with the CLI)
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    name, role, status, email, created_at, last_login_at = row
    return json_answer(to_json({"name": name, "role": role, "status": status, "email": email,
                                "is_admin": role == Role.ADMIN, "created_at": created_at,
                                "last_login_at": last_login_at}))


_ME = select(User.name, User.role, User.status, User.email, User.created_at, User.last_login_at) \
    .where(User.id == bindparam("user_id"), User.status == UserStatus.ACTIVE.value)


@router.post("/tokens", status_code=201, response_model=NewTokenOut, tags=["tokens"], responses=SIGNED_IN,
             summary="Create an API token (the secret is shown once)")
async def create_token(body: TokenRequest, user: CurrentUser, session: SessionDep) -> NewTokenOut:
    token, secret = await credentials.issue_token(session, user=user, note=body.note, scopes=body.scopes,
                                                  expires_in_days=body.expires_in_days)
    await session.commit()  # before the answer: the caller may use the token at once
    return NewTokenOut(**TokenOut.of(token).model_dump(), token=secret)


@router.get("/tokens", response_model=list[TokenOut], tags=["tokens"], responses=SIGNED_IN,
            summary="Your tokens, by id (pass the last id as `after` for the next page)")
async def list_tokens(
    user: CurrentUser, session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_INT32, description="a token id: only later ones")] = 0,
    limit: Annotated[int, Query(ge=1, le=TOKENS_LIMIT)] = TOKENS_LIMIT,
) -> list[TokenOut]:
    tokens = [t for t in await credentials.list_tokens(session, user=user) if t.id > after]
    return [TokenOut.of(t) for t in tokens[:limit]]


@router.delete("/tokens/{token_id}", status_code=204, tags=["tokens"], summary="Revoke one of your tokens",
               responses={**SIGNED_IN, **error(404, "No such token of yours")})
async def revoke_token(token_id: TokenId, user: CurrentUser, session: SessionDep, hub: HubDep) -> Response:
    await credentials.revoke_token(session, user=user, token_id=token_id)
    await session.commit()  # before dropping the cache: a lookup in between must not find the token
    hub.auth.clear()  # the cache is keyed by secret, which we no longer know: drop it all
    return Response(status_code=204)
