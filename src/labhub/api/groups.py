"""/api/v1/groups: admins create groups and manage members; users see their own groups.

A group a non-admin is not in answers 404, whether or not it exists.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from labhub.api.deps import AddressDep, AdminUser, ReadUser, SessionDep
from labhub.api.schemas import SIGNED_IN, RequestBody, Text, error
from labhub.services import groups
from labhub.services.errors import NotFound

router = APIRouter(prefix="/groups", tags=["groups"], responses=SIGNED_IN)
GROUPS_LIMIT = 1000
NO_GROUP = error(404, "No such group (or, for others than admins, not one of yours)")
NO_MEMBER = error(404, "No such group or user (or the user is not a member)")


class GroupOut(BaseModel):
    name: str
    description: str
    members: int
    created_at: dt.datetime


class MemberOut(BaseModel):
    name: str
    source: str = Field(description='"" when an admin added the member; "oidc:<provider>" when a claim did')


class GroupDetail(GroupOut):
    member_list: list[MemberOut]


class NewGroup(RequestBody):
    name: str = Field(min_length=1, max_length=63)
    description: str = Field(default="", max_length=255)


class GroupChange(RequestBody):
    description: str = Field(max_length=255)


class MembershipOut(BaseModel):
    group: str
    user: str
    added: bool


@router.get("", response_model=list[GroupOut],
            summary="Groups: all for admins, your own for others; by name (the last as `after` gives the next page)")
async def list_groups(
    user: ReadUser, session: SessionDep,
    after: Annotated[Text | None, Query(max_length=63, description="a group name: only later ones")] = None,
    limit: Annotated[int, Query(ge=1, le=GROUPS_LIMIT)] = GROUPS_LIMIT,
) -> list[GroupOut]:
    rows = [i for i in await groups.list_groups(session, user=None if user.is_admin else user)
            if after is None or i.group.name > after]
    return [GroupOut(name=i.group.name, description=i.group.description, members=i.members,
                     created_at=i.group.created_at) for i in rows[:limit]]


@router.post("", status_code=201, response_model=GroupOut, summary="Create a group (admins)",
             responses=error(409, "A group with this name exists"))
async def create_group(body: NewGroup, actor: AdminUser, session: SessionDep, address: AddressDep) -> GroupOut:
    group = await groups.create_group(session, actor=actor, name=body.name, description=body.description,
                                      address=address)
    await session.commit()
    return GroupOut(name=group.name, description=group.description, members=0, created_at=group.created_at)


@router.get("/{group}", response_model=GroupDetail, summary="A group and its members (admins and members)",
            responses=NO_GROUP)
async def get_group(group: Text, user: ReadUser, session: SessionDep) -> GroupDetail:
    if not user.is_admin and group not in await groups.names_of(session, user):
        raise NotFound(f"no group named {group!r}")
    row = await groups.get_group(session, name=group)
    members = await groups.members(session, group=row)
    return GroupDetail(name=row.name, description=row.description, members=len(members), created_at=row.created_at,
                       member_list=[MemberOut(name=u.name, source=src) for u, src in members])


@router.patch("/{group}", response_model=GroupOut, summary="Change a group's description (admins)",
              responses=NO_GROUP)
async def change_group(group: Text, body: GroupChange, actor: AdminUser, session: SessionDep,
                       address: AddressDep) -> GroupOut:
    row = await groups.update_group(session, actor=actor, name=group, description=body.description, address=address)
    count = len(await groups.members(session, group=row))
    await session.commit()
    return GroupOut(name=row.name, description=row.description, members=count, created_at=row.created_at)


@router.delete("/{group}", status_code=204, summary="Delete a group (admins); its members stay",
               responses=NO_GROUP)
async def delete_group(group: Text, actor: AdminUser, session: SessionDep, address: AddressDep) -> Response:
    await groups.delete_group(session, actor=actor, name=group, address=address)
    await session.commit()
    return Response(status_code=204)


@router.put("/{group}/members/{name}", response_model=MembershipOut, summary="Add a member (admins; idempotent)",
            responses=error(404, "No such group or user"))
async def add_member(group: Text, name: Text, actor: AdminUser, session: SessionDep,
                     address: AddressDep) -> MembershipOut:
    added = await groups.add_member(session, actor=actor, group=group, user=name, address=address)
    await session.commit()
    return MembershipOut(group=group, user=name, added=added)


@router.delete("/{group}/members/{name}", status_code=204, summary="Remove a member (admins)",
               responses=NO_MEMBER)
async def remove_member(group: Text, name: Text, actor: AdminUser, session: SessionDep,
                        address: AddressDep) -> Response:
    await groups.remove_member(session, actor=actor, group=group, user=name, address=address)
    await session.commit()
    return Response(status_code=204)
