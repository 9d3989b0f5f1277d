"""/api/v1/users/{name}/quota, /api/v1/groups/{name}/quota and /api/v1/groups/{name}/policy.

Users read their own quota report (limits in force, where each comes from, usage this period);
admins read and replace anyone's, and a group's.  A replaced quota applies to the next launch: the
answer lists what running instances are now over it (they keep running), and the admission queue is
looked at again at once (a raised limit starts what waited).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from labhub.api.deps import AddressDep, AdminUser, HubDep, ReadUser, SessionDep
from labhub.api.schemas import SIGNED_IN, RequestBody, Text, errors
from labhub.services import groups, policy, quotas, users
from labhub.services.errors import Forbidden, NotFound
from labhub.services.quotas import QuotaValues

router = APIRouter(tags=["quotas"], responses=SIGNED_IN)


class QuotaIn(QuotaValues, RequestBody):
    """A quota: each key is a limit (absent or null: inherited from the groups, then the site)."""


class QuotaReport(BaseModel):
    user: str
    quota: dict[str, Any] = Field(description="the user's own limits, as set")
    limits: dict[str, float | int | None] = Field(description="the limits in force (null: none)")
    source: dict[str, str] = Field(description="where each limit in force comes from: user, group:NAME or site")
    usage: dict[str, float | int] = Field(description="held now (instances, cpus, memory_mb, gpus) and used this "
                                                      "period (gpu_hours, cpu_hours)")
    period: str
    period_start: dt.datetime
    period_end: dt.datetime


class QuotaSet(BaseModel):
    quota: dict[str, Any]
    over: list[str] = Field(description="what running instances are now over (they keep running; the new limits "
                                        "apply to the next launch)")


class GroupQuota(BaseModel):
    group: str
    quota: dict[str, Any]
    priority: int
    self_service: bool
    policy: dict[str, Any]


class PolicyIn(policy.PolicyValues, RequestBody):
    priority: int | None = Field(default=None, ge=-1000, le=1000, description="queued launches of higher "
                                                                              "priority go first")
    self_service: bool | None = Field(default=None, description="members may launch for themselves")


@router.get("/users/{name}/quota", response_model=QuotaReport, summary="A user's limits and usage (theirs, admins)",
            responses=errors(404))
async def user_quota(name: Text, caller: ReadUser, session: SessionDep, hub: HubDep) -> QuotaReport:
    if caller.name != name and not caller.is_admin:
        raise Forbidden("only admins may see other users' quotas")
    user = await users.require_user(session, name)
    return QuotaReport.model_validate(await quotas.quota_report(
        session, user=user, site=hub.settings.quota, now=hub.clock(),
        storage_mb=hub.settings.storage.max_user_bytes // 2**20))


@router.put("/users/{name}/quota", response_model=QuotaSet, summary="Replace a user's own limits (admins)",
            responses=errors(404, 422))
async def set_user_quota(name: Text, body: QuotaIn, actor: AdminUser, session: SessionDep, hub: HubDep,
                         address: AddressDep) -> QuotaSet:
    user = await users.require_user(session, name)
    over = await quotas.set_user_quota(session, actor=actor, user=user, given=body.model_dump(exclude_none=True),
                                       site=hub.settings.quota, now=hub.clock(), address=address)
    await session.commit()
    hub.reconciler.wake_all()  # a raised limit admits what waited
    return QuotaSet(quota=user.quota or {}, over=over)


def _group_out(group: Any) -> GroupQuota:
    return GroupQuota(group=group.name, quota=group.quota or {}, priority=group.priority,
                      self_service=group.self_service, policy=group.policy or {})


@router.get("/groups/{group}/quota", response_model=GroupQuota,
            summary="A group's limits and policy (admins, members)", responses=errors(404))
async def group_quota(group: Text, caller: ReadUser, session: SessionDep) -> GroupQuota:
    if not caller.is_admin and group not in await groups.names_of(session, caller):
        raise NotFound(f"no group named {group!r}")  # as for the group itself: others do not learn it exists
    return _group_out(await groups.get_group(session, name=group))


@router.put("/groups/{group}/quota", response_model=QuotaSet,
            summary="Replace a group's limits for its members (admins)", responses=errors(404, 422))
async def set_group_quota(group: Text, body: QuotaIn, actor: AdminUser, session: SessionDep, hub: HubDep,
                          address: AddressDep) -> QuotaSet:
    row = await groups.get_group(session, name=group)
    over = await quotas.set_group_quota(session, actor=actor, group=row, given=body.model_dump(exclude_none=True),
                                        site=hub.settings.quota, now=hub.clock(), address=address)
    await session.commit()
    hub.reconciler.wake_all()
    return QuotaSet(quota=row.quota or {}, over=over)


@router.put("/groups/{group}/policy", response_model=GroupQuota,
            summary="Set a group's launch policy (admins): priority, self-service, durations, single instance, "
                    "custom sizes", responses=errors(404, 422))
async def set_group_policy(group: Text, body: PolicyIn, actor: AdminUser, session: SessionDep, hub: HubDep,
                           address: AddressDep) -> GroupQuota:
    row = await groups.get_group(session, name=group)
    await groups.set_policy(session, actor=actor, group=row, priority=body.priority,
                            self_service=body.self_service,
                            policy=body.model_dump(exclude_none=True, exclude={"priority", "self_service"}),
                            address=address)
    await session.commit()
    hub.reconciler.wake_all()  # a new priority reorders the queue
    return _group_out(row)
