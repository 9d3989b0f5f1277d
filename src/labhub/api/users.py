"""/api/v1/users: admins manage accounts (list, add, change, delete, approve, reject, tokens); /api/v1/audit.

Users may read their own account and manage their own tokens here; every
other operation is for admins.  A non-admin asking about another account
gets 403 before any lookup, so the answer never tells whether it exists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from labhub.api.deps import AddressDep, AdminUser, HubDep, ReadUser, SessionDep, scoped
from labhub.api.schemas import (
    MAX_INT32,
    SIGNED_IN,
    NewTokenOut,
    RequestBody,
    Text,
    TokenId,
    TokenOut,
    TokenRequest,
    error,
    errors,
    json_answer,
)
from labhub.auth import audit, identities
from labhub.hub import Hub
from labhub.models import User, UserStatus
from labhub.services import admin, approval, credentials, groups, users
from labhub.services.errors import Conflict, Forbidden, Invalid

log = logging.getLogger(__name__)
router = APIRouter(prefix="/users", tags=["users"], responses=SIGNED_IN)
audit_router = APIRouter(tags=["audit"], responses=SIGNED_IN)
SelfUser = Annotated[User, Depends(scoped("*"))]
TOKENS_LIMIT = 1000
NO_USER = errors(404)
DECIDED = error(409, "The account is not waiting for approval (already decided)")


class AccountOut(BaseModel):
    name: str
    role: str
    status: str
    status_reason: str
    email: str | None
    is_admin: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None
    status_changed_at: dt.datetime | None

    @classmethod
    def of(cls, user: User) -> AccountOut:
        return cls(name=user.name, role=user.role, status=user.status, status_reason=user.status_reason or "",
                   email=user.email, is_admin=user.is_admin, created_at=user.created_at,
                   last_login_at=user.last_login_at, status_changed_at=user.status_changed_at)


class AccountDetail(AccountOut):
    groups: list[str]
    identities: list[str]  # "provider" for each linked OIDC identity


class UserPageOut(BaseModel):
    users: list[AccountOut]
    total: int
    next_after: str | None = Field(description="pass as `after` for the next page")
    prev_before: str | None = Field(description="pass as `before` for the previous page")


class NewUser(RequestBody):
    name: str = Field(min_length=1, max_length=63)
    email: str | None = Field(default=None, max_length=320)
    password: str | None = Field(default=None, max_length=1024, description="none: the user logs in with OIDC only")
    admin: bool = False


class NewUsers(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"users": [{"name": "alice"}, {"name": "bob"}]}]})

    users: list[NewUser] = Field(
        min_length=1, max_length=admin.MAX_BATCH,
        description=f"1 to {admin.MAX_BATCH} accounts, at most {admin.MAX_BATCH_PASSWORDS} of them with a password "
                    "(each costs an argon2 hash)")


class NewUsersOut(BaseModel):
    users: list[AccountOut] = Field(description="the accounts, in the order given")


class UserChange(RequestBody):
    admin: bool | None = None
    status: Literal["active", "disabled"] | None = Field(
        default=None, description="disabled: sessions end, tokens stop working, instances stop")
    reason: str = Field(default="", max_length=200, description="recorded with a status change")
    email: str | None = Field(default=None, max_length=320)


class RejectRequest(RequestBody):
    reason: str = Field(default="", max_length=200)


class DecisionOut(BaseModel):
    name: str
    status: str
    decided_by: str
    notified: bool = Field(description="the user was mailed the decision")


class DeletionOut(BaseModel):
    name: str
    deleted: bool
    stopping: list[str] = Field(description="instances stopping first; the account goes once they ended")


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    address: str
    detail: dict


class AuditPageOut(BaseModel):
    events: list[AuditOut]
    total: int
    next_before: int | None


def _self_or_admin(caller: User, name: str) -> None:
    if caller.name != name and not caller.is_admin:
        raise Forbidden("you may only see your own account")


@router.get("", response_model=UserPageOut, summary="List users (admins): search, filter by status, keyset pages")
async def list_users(
    _: AdminUser, session: SessionDep,
    q: Annotated[Text, Query(max_length=100, description="part of the name or e-mail address")] = "",
    status: Annotated[UserStatus | None, Query()] = None,
    after: Annotated[Text | None, Query(max_length=63)] = None,
    before: Annotated[Text | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> UserPageOut:
    page = await admin.search_users(session, q=q.strip(), status=status.value if status else None, after=after,
                                    before=before, limit=limit)
    return UserPageOut(users=[AccountOut.of(u) for u in page.users], total=page.total,
                       next_after=page.next_after, prev_before=page.prev_before)


@router.post("", status_code=201, response_model=AccountOut, summary="Add a user (admins); active at once",
             responses=error(409, "A user with this name exists"))
async def add_user(body: NewUser, actor: AdminUser, session: SessionDep, address: AddressDep) -> Response:
    account = admin.NewAccount(name=body.name, email=body.email, password=body.password, admin=body.admin)
    [created] = await admin.add_users(session, actor=actor, accounts=[account], address=address, field_prefix="")
    await session.commit()
    return json_answer(to_json(created), status_code=201)


@router.post(":bulk", status_code=201, response_model=NewUsersOut,
             summary=f"Add up to {admin.MAX_BATCH} users at once (admins): all or none, each active at once",
             description="Every entry is checked before anything is written; the answer names each field at fault "
                         "as `users.<index>.<field>` (422: invalid or repeated names, short passwords, bad "
                         "addresses, too many entries; 409: names that exist). Each account is audited as "
                         "`user.add`.",
             responses=error(409, "Some of the names exist (`fields` names each); none was added"))
async def add_users(body: NewUsers, actor: AdminUser, session: SessionDep, address: AddressDep) -> Response:
    accounts = [admin.NewAccount(name=u.name, email=u.email, password=u.password, admin=u.admin) for u in body.users]
    created = await admin.add_users(session, actor=actor, accounts=accounts, address=address)
    await session.commit()
    return json_answer(to_json({"users": created}), status_code=201)


@router.get("/{name}", response_model=AccountDetail, summary="One account (yours, or any for admins)",
            responses=NO_USER)
async def get_user(name: Text, caller: ReadUser, session: SessionDep) -> AccountDetail:
    _self_or_admin(caller, name)
    user = await users.require_user(session, name)
    linked = await identities.identities_of(session, user)
    return AccountDetail(**AccountOut.of(user).model_dump(), groups=sorted(await groups.names_of(session, user)),
                         identities=[i.provider for i in linked])


@router.patch("/{name}", response_model=AccountOut, summary="Change role, status or e-mail (admins)",
              responses={**NO_USER, **error(409, "Not possible now: the account waits for approval, or the change "
                                                  "is to your own account, or would leave the hub without an admin")})
async def change_user(name: Text, body: UserChange, actor: AdminUser, session: SessionDep, hub: HubDep,
                      address: AddressDep) -> AccountOut:
    user = await users.require_user(session, name)
    if body.email is not None:
        if reason := users.check_email(body.email):
            raise Invalid("invalid change", fields={"email": reason})
        user.email = body.email
        audit.record(session, actor=actor, action="user.email", target=name, address=address)
    if body.status is not None and body.status != user.status:
        if user.status == UserStatus.PENDING:
            raise Conflict(f"{name} waits for approval: approve or reject instead",
                           fields={"status": "use /approve or /reject for a pending account"})
        if body.status == UserStatus.DISABLED:
            await admin.disable_user(session, actor=actor, name=name)
            users.set_status(user, UserStatus.DISABLED, f"disabled by {actor.name}"
                             + (f": {body.reason}" if body.reason else ""))
        else:
            await admin.enable_user(session, actor=actor, name=name)
            users.set_status(user, UserStatus.ACTIVE, f"enabled by {actor.name}"
                             + (f": {body.reason}" if body.reason else ""))
    if body.admin is not None and body.admin != user.is_admin:
        await admin.set_admin(session, actor=actor, name=name, admin=body.admin)
    await session.commit()
    hub.credentials_changed(user.id)
    return AccountOut.of(user)


@router.delete("/{name}", status_code=204, summary="Delete a user (admins): instances stop, then everything goes",
               responses={202: {"model": DeletionOut, "description": "instances are stopping; deletion follows"},
                          **NO_USER, **error(409, "Your own account, or the last admin")})
async def delete_user(name: Text, actor: AdminUser, session: SessionDep, hub: HubDep, address: AddressDep) -> Response:
    result = await users.delete_user(session, actor=actor, name=name, address=address)
    await session.commit()
    hub.credentials_changed()
    if result.deleted:
        await _remove_home(hub, name)
        return Response(status_code=204)
    return JSONResponse(DeletionOut(name=name, deleted=False, stopping=result.stopping).model_dump(), status_code=202)


async def _remove_home(hub: Hub, name: str) -> None:
    home = hub.home_for(name)
    if home.exists():
        await asyncio.to_thread(shutil.rmtree, home, ignore_errors=True)


@router.post("/{name}/approve", response_model=DecisionOut,
             summary="Approve a pending account (admins); 409 if decided", responses={**NO_USER, **DECIDED})
async def approve(name: Text, actor: AdminUser, session: SessionDep, hub: HubDep, address: AddressDep) -> DecisionOut:
    decision = await approval.approve(session, settings=hub.settings, actor=actor, name=name, address=address)
    await session.commit()
    hub.credentials_changed()
    notified = await hub.send_mails(decision.mails)
    return DecisionOut(name=decision.name, status=decision.status, decided_by=decision.decided_by, notified=notified)


@router.post("/{name}/reject", response_model=DecisionOut, summary="Reject a pending account (admins); 409 if decided",
             responses={**NO_USER, **DECIDED})
async def reject(name: Text, actor: AdminUser, session: SessionDep, hub: HubDep, address: AddressDep,
                 body: RejectRequest | None = None) -> DecisionOut:
    decision = await approval.reject(session, settings=hub.settings, actor=actor, name=name,
                                     reason=body.reason if body else "", address=address)
    await session.commit()
    hub.credentials_changed()
    notified = await hub.send_mails(decision.mails)
    return DecisionOut(name=decision.name, status=decision.status, decided_by=decision.decided_by, notified=notified)


@router.get("/{name}/tokens", response_model=list[TokenOut], responses=NO_USER,
            summary="A user's tokens (yours, or any for admins), by id (the last id as `after` gives the next page)")
async def list_tokens(
    name: Text, caller: SelfUser, session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_INT32, description="a token id: only later ones")] = 0,
    limit: Annotated[int, Query(ge=1, le=TOKENS_LIMIT)] = TOKENS_LIMIT,
) -> list[TokenOut]:
    _self_or_admin(caller, name)
    user = await users.require_user(session, name)
    tokens = [t for t in await credentials.list_tokens(session, user=user) if t.id > after]
    return [TokenOut.of(t) for t in tokens[:limit]]


@router.post("/{name}/tokens", status_code=201, response_model=NewTokenOut,
             summary="An admin makes a token for a user: the one explicit way to act for someone else",
             responses={**NO_USER, **error(409, "The account is not active")})
async def issue_token(name: Text, body: TokenRequest, actor: AdminUser, session: SessionDep,
                      address: AddressDep) -> NewTokenOut:
    user = await users.require_user(session, name)
    if user.status != UserStatus.ACTIVE:
        raise Conflict(f"{name} is {user.status}: tokens would not work", fields={"name": f"account is {user.status}"})
    token, secret = await credentials.issue_token(session, user=user, note=body.note, scopes=body.scopes,
                                                  expires_in_days=body.expires_in_days, issued_by=actor,
                                                  address=address)
    await session.commit()
    return NewTokenOut(**TokenOut.of(token).model_dump(), token=secret)


@router.delete("/{name}/tokens/{token_id}", status_code=204, summary="Revoke a token (its owner or an admin)",
               responses=error(404, "No such user, or no such token of theirs"))
async def revoke_token(name: Text, token_id: TokenId, caller: SelfUser, session: SessionDep, hub: HubDep,
                       address: AddressDep) -> Response:
    _self_or_admin(caller, name)
    owner = await users.require_user(session, name)
    await credentials.revoke_token(session, user=caller, token_id=token_id, owner=owner, address=address)
    await session.commit()
    hub.credentials_changed(owner.id)
    return Response(status_code=204)


@audit_router.get("/audit", response_model=AuditPageOut, summary="The audit log, newest first (admins)")
async def audit_log(
    _: AdminUser, session: SessionDep,
    actor: Annotated[Text | None, Query(max_length=63)] = None,
    action: Annotated[Text | None, Query(max_length=64, description="a prefix: `user.` or `login.failed`")] = None,
    target: Annotated[Text | None, Query(max_length=255)] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_INT32, description="an event id: only earlier ones")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPageOut:
    page = await audit.search(session, actor=actor, action=action, target=target, before=before, limit=limit)
    return AuditPageOut(events=[AuditOut(**audit.describe(e)) for e in page.events], total=page.total,
                        next_before=page.next_before)
