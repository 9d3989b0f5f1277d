"""/api/v1: templates, me, tokens, health."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from labhub import __version__
from labhub.api.deps import CurrentUser, HubDep, SessionDep
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
)
from labhub.services import credentials, groups
from labhub.services.instances import template_allowed

router = APIRouter()
TOKENS_LIMIT = 1000


class HealthOut(BaseModel):
    status: str
    version: str
    uptime_s: float


@router.get("/health", response_model=HealthOut, tags=["system"], summary="Liveness: answers once the hub can serve")
async def health(hub: HubDep) -> HealthOut:
    return HealthOut(status="ok", version=__version__, uptime_s=round(time.monotonic() - hub.started_monotonic, 3))


@router.get("/templates", response_model=list[TemplateOut], tags=["templates"], responses=SIGNED_IN,
            summary="The templates you may launch, with their sizes")
async def templates(user: CurrentUser, hub: HubDep, session: SessionDep) -> list[TemplateOut]:
    out = []
    member_of = await groups.names_of(session, user)
    for tpl in hub.catalog:
        if not template_allowed(tpl, user=user, groups=member_of):
            continue
        allowed = tpl.sizes or list(hub.settings.sizes)
        sizes = []
        for name, size in hub.settings.sizes.items():
            reason = "" if name in allowed else "not offered by this template"
            if not reason and size.gpus:
                gpu_backends = [b for b in hub.backends.values() if "gpus" in b.capabilities]
                reason = "" if gpu_backends else "no GPUs on this hub's backends"
            sizes.append(SizeOut(name=name, cpus=size.cpus, memory_mb=size.memory_mb, gpus=size.gpus,
                                 description=size.description, allowed=not reason, reason=reason))
        out.append(TemplateOut(
            name=tpl.name, title=tpl.title, description=tpl.description, kind=tpl.kind, sizes=sizes,
            default_size=tpl.default_size or allowed[0], hours_default=tpl.hours.default, hours_max=tpl.hours.max,
            backends=[b for b in (tpl.backends or list(hub.backends)) if b in hub.backends],
            params=[ParamOut(**p.model_dump()) for p in tpl.params],
        ))
    return out


@router.get("/me", response_model=UserOut, tags=["users"], responses=SIGNED_IN, summary="Who you are")
async def me(user: CurrentUser) -> UserOut:
    return UserOut.of(user)


@router.post("/tokens", status_code=201, response_model=NewTokenOut, tags=["tokens"], responses=SIGNED_IN,
             summary="Create an API token (the secret is shown once)")
async def create_token(body: TokenRequest, user: CurrentUser, session: SessionDep) -> NewTokenOut:
    token, secret = await credentials.issue_token(session, user=user, note=body.note, scopes=body.scopes,
                                                  expires_in_days=body.expires_in_days)
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
