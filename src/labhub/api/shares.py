"""/api/v1/instances/{id}/shares and /access: who besides its owner may use an instance.

The owner (or an admin) shares an instance with a user or a group and revokes it; an admin opens a
workspace to every user or to anyone.  Rules: :mod:`labhub.services.shares`.  Each change is in this
replica's proxy when the answer comes (the others follow the change's notice).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from labhub.api.deps import AddressDep, HubDep, InstancesUser, SessionDep
from labhub.api.schemas import MAX_INT32, SIGNED_IN, RequestBody, Text, errors
from labhub.services import shares

router = APIRouter(prefix="/instances", tags=["sharing"], responses=SIGNED_IN)
ONE = errors(404)
ShareId = Annotated[int, Path(ge=1, le=MAX_INT32)]
SHARES_LIMIT = 1000


class ShareRequest(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"user": "bob"}, {"group": "physics"}]})

    user: str | None = Field(default=None, min_length=1, max_length=63, description="an active user's name")
    group: str | None = Field(default=None, min_length=1, max_length=63,
                              description="a group's name (one you are in, unless you are an admin)")


class ShareOut(BaseModel):
    id: int
    instance_id: str
    user: str | None = Field(description="the user it is shared with, or null for a group share")
    group: str | None = Field(description="the group whose members it is shared with, or null")
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, info: shares.ShareInfo) -> ShareOut:
        return cls(id=info.id, instance_id=info.instance_id, user=info.user, group=info.group,
                   created_by=info.created_by, created_at=info.created_at)


class AccessRequest(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"open_to": "users"}, {"open_to": ""}]})

    open_to: str = Field(max_length=8, description='"users": every active user; "anyone": without logging '
                                                   'in; "": neither (its owner and those it is shared with)')


class AccessOut(BaseModel):
    instance_id: str
    open_to: str = Field(description='"users", "anyone" or ""')
    shares: list[ShareOut]


@router.get("/{instance_id}/shares", response_model=list[ShareOut], summary="Whom an instance is shared with",
            responses=ONE)
async def list_shares(instance_id: Text, user: InstancesUser, session: SessionDep,
                      limit: Annotated[int, Query(ge=1, le=SHARES_LIMIT)] = SHARES_LIMIT) -> list[ShareOut]:
    listed = await shares.list_shares(session, actor=user, instance_id=instance_id)
    return [ShareOut.of(s) for s in listed[:limit]]


@router.post("/{instance_id}/shares", status_code=201, response_model=ShareOut,
             summary="Share an instance with a user or a group (201; 200 when it already was)",
             responses={**ONE, **errors(409, 422)})
async def add_share(instance_id: Text, body: ShareRequest, user: InstancesUser, session: SessionDep, hub: HubDep,
                    address: AddressDep, response: Response) -> ShareOut:
    info, created = await shares.share(session, actor=user, instance_id=instance_id, user=body.user,
                                       group=body.group, address=address, now=hub.clock())
    if not created:
        response.status_code = 200
    await session.commit()
    await hub.refresh_routes({info.instance_id})  # this replica's proxy at once
    return ShareOut.of(info)


@router.delete("/{instance_id}/shares/{share_id}", status_code=204, summary="Revoke a share (at once)",
               responses=errors(404))
async def revoke_share(instance_id: Text, share_id: ShareId, user: InstancesUser, session: SessionDep, hub: HubDep,
                       address: AddressDep) -> Response:
    info = await shares.revoke(session, actor=user, instance_id=instance_id, share_id=share_id, address=address,
                               now=hub.clock())
    await session.commit()
    await hub.refresh_routes({info.instance_id})
    return Response(status_code=204)


@router.get("/{instance_id}/access", response_model=AccessOut,
            summary="Who besides its owner may use an instance: open_to and its shares", responses=ONE)
async def get_access(instance_id: Text, user: InstancesUser, session: SessionDep) -> AccessOut:
    inst, listed = await shares.access_of(session, actor=user, instance_id=instance_id)
    return AccessOut(instance_id=inst.id, open_to=inst.open_to or "", shares=[ShareOut.of(s) for s in listed])


@router.put("/{instance_id}/access", response_model=AccessOut,
            summary="Open a workspace to every user or to anyone, or close it (admins)",
            responses={**ONE, **errors(409, 422)})
async def set_access(instance_id: Text, body: AccessRequest, user: InstancesUser, session: SessionDep, hub: HubDep,
                     address: AddressDep) -> AccessOut:
    inst = await shares.set_open_to(session, actor=user, instance_id=instance_id, open_to=body.open_to,
                                    subdomains=hub.subdomains, address=address, now=hub.clock())
    _, listed = await shares.access_of(session, actor=user, instance_id=inst.id)
    await session.commit()
    await hub.refresh_routes({inst.id})
    return AccessOut(instance_id=inst.id, open_to=inst.open_to or "", shares=[ShareOut.of(s) for s in listed])


shared_router = APIRouter(prefix="/shared", tags=["sharing"], responses=SIGNED_IN)


class SharedOut(BaseModel):
    id: str
    name: str
    owner: str
    kind: str
    template: str
    status: str
    url: str = Field(description="where it is served (its own origin, or /user/<owner>/<name>/ in path mode)")
    how: str = Field(description='why you may open it: "you", "group NAME", "every user" or "anyone"')


@shared_router.get("", response_model=list[SharedOut], summary="Others' active instances you may open, newest first")
async def shared_with_me(user: InstancesUser, session: SessionDep, hub: HubDep,
                         limit: Annotated[int, Query(ge=1, le=SHARES_LIMIT)] = 200) -> list[SharedOut]:
    found = await shares.shared_with(session, user=user, limit=limit)
    return [SharedOut(id=s.instance.id, name=s.instance.name, owner=s.instance.owner.name, kind=s.instance.kind,
                      template=s.instance.template, status=s.instance.status, url=hub.instance_url(s.instance),
                      how=s.how) for s in found]
