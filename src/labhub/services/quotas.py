"""Quotas: what each user may hold at once and use per period, and how much they hold now.

A limit comes from, in order: the user's own quota, else the most generous of their groups' quotas
that set it, else the site default (``LABHUB_QUOTA__*``); ``None`` is no limit.  Limits apply to the
next launch: lowering one never stops what runs (:func:`set_quota` says what is over).

What counts: every active instance the admission queue has let through (a queued one waiting for
admission holds nothing); a sleeping service counts as an instance but holds no CPUs, memory or GPUs.
GPU- and CPU-hours are the instance's size times the time since it first started (to its end), within
the current calendar period (UTC).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from labhub.auth import audit
from labhub.models import ACTIVE, Folder, Group, Instance, Membership, Status, User
from labhub.services.errors import Forbidden, Invalid
from labhub.settings import QuotaSettings

ACTIVE_VALUES = tuple(s.value for s in ACTIVE)


class QuotaValues(BaseModel):
    """A quota as stored for a user or a group and as the API takes it; an absent key inherits."""

    model_config = ConfigDict(extra="forbid")

    instances: int | None = Field(default=None, ge=0, le=100_000)
    cpus: float | None = Field(default=None, ge=0, le=1_000_000)
    memory_mb: int | None = Field(default=None, ge=0, le=1024**3)
    gpus: int | None = Field(default=None, ge=0, le=100_000)
    gpu_hours: float | None = Field(default=None, ge=0, le=1e9)
    cpu_hours: float | None = Field(default=None, ge=0, le=1e9)
    storage_mb: int | None = Field(default=None, ge=0, le=1024**4)  # folders and kept artifacts together


LIMITS = tuple(QuotaValues.model_fields)
UNITS = {"instances": "instances", "cpus": "CPUs", "memory_mb": "MB of memory", "gpus": "GPUs",
         "gpu_hours": "GPU-hours", "cpu_hours": "CPU-hours", "storage_mb": "MB of storage"}


def parse(given: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a quota (unset keys dropped); :class:`Invalid` with one error per field."""
    try:
        values = QuotaValues.model_validate(dict(given))
    except ValidationError as exc:
        raise Invalid("invalid quota", fields={
            ".".join(str(p) for p in err["loc"]) or "quota": err["msg"] for err in exc.errors()}) from exc
    return values.model_dump(exclude_none=True)


@dataclass(frozen=True, slots=True)
class Limits:
    """A user's effective limits (``None``: none), and where each came from (``user``, ``group:NAME``, ``site``)."""

    instances: int | None = None
    cpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    gpu_hours: float | None = None
    cpu_hours: float | None = None
    storage_mb: int | None = None
    source: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in LIMITS}

    @property
    def counts_hours(self) -> bool:
        return self.gpu_hours is not None or self.cpu_hours is not None


def effective(site: QuotaSettings, own: Mapping[str, Any] | None, groups: Iterable[tuple[str, Mapping[str, Any] | None]]
              ) -> Limits:
    """The limits of a user with quota ``own`` in ``groups`` (name, quota) on a site with defaults ``site`` (pure)."""
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    groups = list(groups)
    for key in LIMITS:
        if own and own.get(key) is not None:
            values[key], source[key] = own[key], "user"
            continue
        best: tuple[Any, str] | None = None
        for name, quota in groups:
            value = (quota or {}).get(key)
            if value is not None and (best is None or value > best[0]):
                best = (value, f"group:{name}")
        if best is not None:
            values[key], source[key] = best
        elif getattr(site, key, None) is not None:
            values[key], source[key] = getattr(site, key), "site"
    return Limits(**values, source=source)


def period_start(now: dt.datetime, period: str) -> dt.datetime:
    """The start (UTC) of the calendar ``period`` (day, week from Monday, month) holding ``now``."""
    day = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    if period == "day":
        return day
    if period == "week":
        return day - dt.timedelta(days=now.weekday())
    return day.replace(day=1)


def period_end(start: dt.datetime, period: str) -> dt.datetime:
    if period == "day":
        return start + dt.timedelta(days=1)
    if period == "week":
        return start + dt.timedelta(days=7)
    return (start + dt.timedelta(days=32)).replace(day=1)


@dataclass(slots=True)
class Usage:
    """What a user holds now, and has used this period."""

    instances: int = 0
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    storage_mb: float = 0.0  # counted by quota_report only (uploads check it themselves)

    def hold(self, cpus: float, memory_mb: int, gpus: int) -> None:
        self.instances += 1
        self.cpus += cpus
        self.memory_mb += memory_mb
        self.gpus += gpus

    def as_dict(self) -> dict[str, Any]:
        return {f.name: round(v, 3) if isinstance(v := getattr(self, f.name), float) else v for f in fields(self)}


def holds(status: str) -> bool:
    """Whether an admitted instance in ``status`` holds its CPUs, memory and GPUs."""
    return status != Status.SLEEPING


async def usage_of(session: AsyncSession | AsyncConnection, owner_ids: Iterable[int], *, now: dt.datetime,
                   period: str, hours: bool = True) -> dict[int, Usage]:
    """Each owner's :class:`Usage` (``hours=False`` skips the period's hours: one query fewer)."""
    ids = sorted(set(owner_ids))
    usage = {i: Usage() for i in ids}
    if not ids:
        return usage
    rows = await session.execute(
        select(Instance.owner_id, Instance.status, Instance.handle, Instance.cpus, Instance.memory_mb, Instance.gpus)
        .where(Instance.owner_id.in_(ids), Instance.status.in_(ACTIVE_VALUES)))
    for owner_id, status, handle, cpus, memory_mb, gpus in rows:
        if status == Status.QUEUED and handle is None:
            continue  # waiting for admission: holds nothing yet
        if holds(status):
            usage[owner_id].hold(cpus, memory_mb, gpus)
        else:
            usage[owner_id].instances += 1
    if hours:
        start = period_start(now, period)
        spent = await session.execute(
            select(Instance.owner_id, Instance.cpus, Instance.gpus, Instance.started_at, Instance.ended_at)
            .where(Instance.owner_id.in_(ids), Instance.started_at.is_not(None),
                   or_(Instance.ended_at.is_(None), Instance.ended_at > start)))
        for owner_id, cpus, gpus, started, ended in spent:
            seconds = max(0.0, (min(ended or now, now) - max(started, start)).total_seconds())
            usage[owner_id].gpu_hours += gpus * seconds / 3600
            usage[owner_id].cpu_hours += cpus * seconds / 3600
    return usage


async def groups_of(session: AsyncSession, user_ids: Iterable[int]) -> dict[int, list[Group]]:
    ids = sorted(set(user_ids))
    found: dict[int, list[Group]] = {i: [] for i in ids}
    if ids:
        rows = await session.execute(select(Membership.user_id, Group).join(Group, Group.id == Membership.group_id)
                                     .where(Membership.user_id.in_(ids)).order_by(Group.name))
        for user_id, group in rows:
            found[user_id].append(group)
    return found


def limits_of(site: QuotaSettings, user: User, groups: Iterable[Group]) -> Limits:
    return effective(site, user.quota, [(g.name, g.quota) for g in groups])


async def quota_report(session: AsyncSession, *, user: User, site: QuotaSettings, now: dt.datetime,
                       storage_mb: int | None = None) -> dict[str, Any]:
    """What Home and ``GET /api/v1/users/{name}/quota`` show: the stored quota, the limits in force with
    their sources, the usage, and the period.  ``storage_mb``: the site's storage limit per user
    (``LABHUB_STORAGE__MAX_USER_BYTES``), where no quota sets one."""
    groups = (await groups_of(session, [user.id]))[user.id]
    limits = limits_of(site, user, groups)
    if limits.storage_mb is None and storage_mb is not None:
        limits = replace(limits, storage_mb=storage_mb, source={**limits.source, "storage_mb": "site"})
    usage = (await usage_of(session, [user.id], now=now, period=site.period))[user.id]
    usage.storage_mb = round(await stored_bytes(session, user.id) / 2**20, 1)
    start = period_start(now, site.period)
    return {"user": user.name, "quota": user.quota or {}, "limits": limits.as_dict(), "source": dict(limits.source),
            "usage": usage.as_dict(), "period": site.period, "period_start": start,
            "period_end": period_end(start, site.period)}


async def stored_bytes(session: AsyncSession, owner_id: int) -> int:
    """What counts against a user's storage: their folders and their jobs' kept artifacts."""
    folders = await session.scalar(select(func.coalesce(func.sum(Folder.bytes), 0)).where(Folder.owner_id == owner_id))
    artifacts = await session.scalar(select(func.coalesce(func.sum(Instance.output_bytes), 0))
                                     .where(Instance.owner_id == owner_id))
    return int(folders or 0) + int(artifacts or 0)


async def storage_limit(session: AsyncSession, owner_id: int, *, site_bytes: int) -> int:
    """The most bytes ``owner_id`` may store: their quota's ``storage_mb``, else the most generous of
    their groups', else ``site_bytes``."""
    user = await session.get(User, owner_id)
    groups = (await groups_of(session, [owner_id]))[owner_id]
    limit = effective(QuotaSettings(), user.quota if user else None, [(g.name, g.quota) for g in groups]).storage_mb
    return site_bytes if limit is None else limit * 2**20


def over_limits(limits: Limits, usage: Usage) -> list[str]:
    """Plain words for each limit ``usage`` is over (what a lowered quota leaves running)."""
    return [f"{UNITS[k]}: {_num(getattr(usage, k))} in use, the limit is now {_num(getattr(limits, k))}"
            for k in LIMITS if getattr(limits, k) is not None and getattr(usage, k) > getattr(limits, k)]


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


async def set_user_quota(session: AsyncSession, *, actor: User, user: User, given: Mapping[str, Any],
                         site: QuotaSettings, now: dt.datetime, address: str = "") -> list[str]:
    """Replace ``user``'s own quota (admins only; audited); returns what their running instances are now
    over (they keep running: limits apply to the next launch)."""
    if not actor.is_admin:
        raise Forbidden("admins only")
    user.quota = parse(given) or None
    audit.record(session, actor=actor, action="quota.set", target=f"user:{user.name}", address=address,
                 quota=user.quota or {})
    groups = (await groups_of(session, [user.id]))[user.id]
    usage = (await usage_of(session, [user.id], now=now, period=site.period))[user.id]
    limits = limits_of(site, user, groups)
    if limits.storage_mb is not None:
        usage.storage_mb = round(await stored_bytes(session, user.id) / 2**20, 1)
    return over_limits(limits, usage)


async def set_group_quota(session: AsyncSession, *, actor: User, group: Group, given: Mapping[str, Any],
                          site: QuotaSettings, now: dt.datetime, address: str = "") -> list[str]:
    """Replace ``group``'s quota for its members (admins only; audited); returns, per member now over a
    limit, what (they keep running)."""
    if not actor.is_admin:
        raise Forbidden("admins only")
    group.quota = parse(given) or None
    audit.record(session, actor=actor, action="quota.set", target=f"group:{group.name}", address=address,
                 quota=group.quota or {})
    members = list((await session.execute(select(User).join(Membership, Membership.user_id == User.id)
                                          .where(Membership.group_id == group.id).limit(10_000))).scalars())
    groups = await groups_of(session, [m.id for m in members])
    usage = await usage_of(session, [m.id for m in members], now=now, period=site.period)
    over = []
    for member in members:
        limits = limits_of(site, member, groups[member.id])
        if limits.storage_mb is not None and limits.source.get("storage_mb") == f"group:{group.name}":
            usage[member.id].storage_mb = round(await stored_bytes(session, member.id) / 2**20, 1)
        over += [f"{member.name}: {line}" for line in over_limits(limits, usage[member.id])]
    return over
