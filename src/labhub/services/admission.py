"""The admission queue: a launch over its owner's quota or over what its backend has free waits,
status ``queued`` with reason ``admission``, and starts by itself once it fits.

Order: higher group priority first, then first come, first served (launch time, then id).  One
owner's launches keep their order (a later one does not pass an earlier one waiting for that owner's
quota).  A launch waiting for a backend's capacity reserves what it asks for, so later, smaller ones
cannot starve it.  A launch that can never fit (more than the owner's quota allows at once, more
than the backend has) is refused at once (:func:`refusal`).

Every decision (a launch, a freed slot, a raised quota) runs :func:`run` after :func:`lock`, which
updates one row first: the decisions are serialised on SQLite and PostgreSQL and across replicas,
so 50 concurrent launches against a quota of 5 admit exactly 5, and queue positions (computed from
the order, :func:`positions`) never skip or repeat.  :func:`plan` is the pure part.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from labhub.backends.base import Backend, Capacity
from labhub.models import ACTIVE, AdmissionLock, Group, Instance, Membership, Status, User, awaits_admission
from labhub.services import quotas
from labhub.services.lifecycle import note, transition
from labhub.services.quotas import Limits, Usage
from labhub.settings import QuotaSettings

ACTIVE_VALUES = tuple(s.value for s in ACTIVE)
MAX_CONSIDERED = 2000  # queued launches one decision looks at (the rest keep their places)
REASON = "admission"


@dataclass(frozen=True, slots=True)
class Ask:
    """What one launch asks for."""

    id: str
    owner_id: int
    name: str
    backend: str
    cpus: float
    memory_mb: int
    gpus: int
    priority: int
    created_at: dt.datetime


def order_key(ask: Ask) -> tuple[int, dt.datetime, str]:
    return (-ask.priority, ask.created_at, ask.id)


@dataclass(frozen=True, slots=True)
class Verdict:
    id: str
    admit: bool
    why: str = ""  # plain words: what it waits for


@dataclass(slots=True)
class Free:
    """A backend's capacity less what admitted instances hold (``None``: not limited)."""

    cpus: float | None
    memory_mb: float | None
    gpus: float | None

    @classmethod
    def of(cls, capacity: Capacity, held: Usage | None) -> Free:
        held = held or Usage()
        return cls(cpus=None if capacity.cpus is None else capacity.cpus - held.cpus,
                   memory_mb=None if capacity.memory_mb is None else capacity.memory_mb - held.memory_mb,
                   gpus=None if capacity.gpus is None else capacity.gpus - held.gpus)


def _plural(n: float, unit: str) -> str:
    return f"{n:g} {unit}" + ("" if n == 1 else "s")


def quota_wait(ask: Ask, usage: Usage, limits: Limits) -> str | None:
    """What of ``limits`` keeps ``ask`` waiting, given ``usage`` (None: it fits)."""
    if limits.instances is not None and usage.instances + 1 > limits.instances:
        return f"waiting for your quota: {usage.instances} of {_plural(limits.instances, 'instance')} in use"
    for key, unit, need in (("gpus", "GPU", ask.gpus), ("cpus", "CPU", ask.cpus),
                            ("memory_mb", "MB of memory", ask.memory_mb)):
        limit = getattr(limits, key)
        if need and limit is not None and getattr(usage, key) + need > limit:
            used = getattr(usage, key)
            what = f"{need:g} {unit}" if key == "memory_mb" else _plural(need, unit)
            return f"waiting for your {unit.split()[0]} quota: this needs {what}, {used:g} of {limit:g} in use"
    return None


def capacity_wait(ask: Ask, free: Free, backend: str) -> str | None:
    """What the backend lacks for ``ask`` (None: it fits in what is free)."""
    for key, unit, need in (("gpus", "GPU", ask.gpus), ("cpus", "CPU", ask.cpus),
                            ("memory_mb", "MB of memory", ask.memory_mb)):
        have = getattr(free, key)
        if need and have is not None and need > have:
            what = f"{need:g} {unit}" if key == "memory_mb" else _plural(need, unit)
            return f"waiting for {what}: {max(have, 0):g} free on the {backend} backend"
    return None


def plan(asks: Iterable[Ask], *, usage: Mapping[int, Usage], limits: Mapping[int, Limits],
         free: Mapping[str, Free]) -> list[Verdict]:
    """Which of ``asks`` start now, in queue order (pure; ``usage`` and ``free`` are copied, not changed)."""
    usage = {k: replace(v) for k, v in usage.items()}
    free = {k: replace(v) for k, v in free.items()}
    waiting_owner: dict[int, str] = {}  # owner -> their first launch waiting for their quota
    verdicts = []
    for ask in sorted(asks, key=order_key):
        held = usage.setdefault(ask.owner_id, Usage())
        why = quota_wait(ask, held, limits.get(ask.owner_id, Limits()))
        if why is None and ask.owner_id in waiting_owner:
            why = f"waiting behind your earlier launch {waiting_owner[ask.owner_id]!r}"
        if why is not None:
            waiting_owner.setdefault(ask.owner_id, ask.name)
            verdicts.append(Verdict(ask.id, False, why))
            continue
        room = free.setdefault(ask.backend, Free(None, None, None))
        why = capacity_wait(ask, room, ask.backend)
        # Taken either way: what an admitted launch holds, or what a waiting one reserves.
        for key, need in (("cpus", ask.cpus), ("memory_mb", ask.memory_mb), ("gpus", ask.gpus)):
            if getattr(room, key) is not None:
                setattr(room, key, getattr(room, key) - need)
        if why is not None:
            verdicts.append(Verdict(ask.id, False, why))
        else:
            held.hold(ask.cpus, ask.memory_mb, ask.gpus)
            verdicts.append(Verdict(ask.id, True))
    return verdicts


def refusal(ask: Ask, *, limits: Limits, usage: Usage, capacity: Capacity, hours: float,
            period: str) -> dict[str, str]:
    """Why ``ask`` (for ``hours``) can never start, keyed by field; empty when it could (pure)."""
    fields: dict[str, str] = {}
    if limits.instances == 0:
        fields["quota"] = "your quota allows no instances"
    for key, unit, need in (("gpus", "GPU", ask.gpus), ("cpus", "CPU", ask.cpus),
                            ("memory_mb", "MB of memory", ask.memory_mb)):
        what = f"{need:g} {unit}" if key == "memory_mb" else _plural(need, unit)
        limit, have = getattr(limits, key), getattr(capacity, key)
        if need and limit is not None and need > limit:
            fields.setdefault("size", f"asks for {what}; your quota allows {limit:g} at once")
        elif need and have is not None and need > have:
            fields.setdefault("size", f"asks for {what}; the {ask.backend} backend has {have:g}")
    for key, unit, rate in (("gpu_hours", "GPU-hours", ask.gpus), ("cpu_hours", "CPU-hours", ask.cpus)):
        limit = getattr(limits, key)
        if limit is None or not rate:
            continue
        left = max(0.0, limit - getattr(usage, key))
        if rate * hours > left + 1e-9:
            fields.setdefault("hours", f"could use {rate * hours:g} {unit}; {left:.4g} of {limit:g} are left this "
                                       f"{period}")
    return fields


async def lock(session: AsyncSession | AsyncConnection) -> None:
    """Take the admission lock until the transaction ends (one row's update; created if missing)."""
    conn = await session.connection() if isinstance(session, AsyncSession) else session
    done = await conn.execute(LOCK)
    if done.rowcount == 0:
        await conn.execute(AdmissionLock.__table__.insert().values(id=1, generation=1))


LOCK = update(AdmissionLock).where(AdmissionLock.id == 1).values(generation=AdmissionLock.generation + 1)


def ask_of(instance: Instance) -> Ask:
    return Ask(id=instance.id, owner_id=instance.owner_id, name=instance.name, backend=instance.backend,
               cpus=instance.cpus, memory_mb=instance.memory_mb, gpus=instance.gpus, priority=instance.priority,
               created_at=instance.created_at)


@dataclass(slots=True)
class Situation:
    """What a decision looks at: the queue (in order) with each one's current message, usage and limits
    of their owners, what is free per backend."""

    queued: list[Ask]
    messages: dict[str, str]
    usage: dict[int, Usage]
    limits: dict[int, Limits]
    free: dict[str, Free]


QUEUE_COLUMNS = (Instance.id, Instance.owner_id, Instance.name, Instance.backend, Instance.cpus, Instance.memory_mb,
                 Instance.gpus, Instance.priority, Instance.created_at, Instance.message)


async def situation(session: AsyncSession, *, backends: Mapping[str, Backend], site: QuotaSettings,
                    now: dt.datetime, owners: Iterable[int] = ()) -> Situation:
    """Read the queue and what its owners (and ``owners``) hold, under :func:`lock` (columns, not ORM
    objects: a decision reads the whole queue and changes few of its rows)."""
    conn = await session.connection()  # Core statements: what a decision reads needs no ORM objects
    rows = (await conn.execute(
        select(*QUEUE_COLUMNS).where(Instance.status == Status.QUEUED, Instance.handle.is_(None))
        .order_by(Instance.priority.desc(), Instance.created_at, Instance.id).limit(MAX_CONSIDERED))).all()
    queued = [Ask(*row[:9]) for row in rows]
    messages = {row[0]: row[9] for row in rows}
    owners = {a.owner_id for a in queued} | set(owners)
    own: dict[int, Any] = {}
    groups: dict[int, list[tuple[str, Any]]] = {}
    found = await conn.execute(  # each owner's quota and their groups' (one query)
        select(User.id, User.quota, Group.name, Group.quota).outerjoin(Membership, Membership.user_id == User.id)
        .outerjoin(Group, Group.id == Membership.group_id).where(User.id.in_(owners)).order_by(Group.name))
    for user_id, quota, group, group_quota in found:
        own[user_id] = quota
        if group is not None:
            groups.setdefault(user_id, []).append((group, group_quota))
    limits = {o: quotas.effective(site, own[o], groups.get(o, [])) for o in owners if o in own}
    usage = await quotas.usage_of(conn, owners, now=now, period=site.period,
                                  hours=any(lim.counts_hours for lim in limits.values()))
    held: dict[str, Usage] = {}
    limited = [name for name, b in backends.items() if b.capacity() != Capacity()]
    if limited:
        found = await conn.execute(
            select(Instance.backend, Instance.status, Instance.handle, Instance.cpus, Instance.memory_mb,
                   Instance.gpus).where(Instance.backend.in_(limited), Instance.status.in_(ACTIVE_VALUES)))
        for backend, status, handle, cpus, memory_mb, gpus in found:
            if not awaits_admission(status, handle) and quotas.holds(status):
                held.setdefault(backend, Usage()).hold(cpus, memory_mb, gpus)
    free = {name: Free.of(b.capacity(), held.get(name)) for name, b in backends.items()}
    return Situation(queued=queued, messages=messages, usage=usage, limits=limits, free=free)


async def run(session: AsyncSession, *, backends: Mapping[str, Backend], site: QuotaSettings,
              now: dt.datetime) -> list[str]:
    """Take the lock and admit what fits of the queue (after a slot freed, a quota rose); the ids admitted."""
    if (await session.execute(select(Instance.id).where(Instance.status == Status.QUEUED,
                                                        Instance.handle.is_(None)).limit(1))).first() is None:
        return []  # nothing waits: no lock, no write
    await lock(session)
    return await decide(session, await situation(session, backends=backends, site=site, now=now), now=now)


async def decide(session: AsyncSession, seen: Situation, *, now: dt.datetime, new: Instance | None = None
                 ) -> list[str]:
    """Apply :func:`plan` to the queue ``seen`` (read under :func:`lock`) and ``new``, a launch being
    recorded as ``requested`` (not counted in ``seen``).

    Admitted queued instances go back to ``requested`` (their duration counts from now); ``new``
    stays ``requested`` when it fits, else it is queued; a waiting instance whose reason changed
    gets the new one.  Returns the ids admitted (``new``'s included)."""
    asks = list(seen.queued) + ([ask_of(new)] if new is not None else [])
    admitted = []
    for verdict in plan(asks, usage=seen.usage, limits=seen.limits, free=seen.free):
        if new is not None and verdict.id == new.id:
            if verdict.admit:
                new.admitted_at = now
                admitted.append(new.id)
            else:
                transition(session, new, Status.QUEUED, reason=REASON, message=verdict.why, now=now)
            continue
        if not verdict.admit and seen.messages.get(verdict.id) == verdict.why:
            continue  # nothing new to say: the row is not touched
        instance = await session.get(Instance, verdict.id)
        if instance is None:
            continue
        if verdict.admit:
            admitted.append(instance.id)
            instance.expires_at = now + dt.timedelta(hours=instance.hours)
            instance.admitted_at = now
            transition(session, instance, Status.REQUESTED, reason="admitted", message="admitted: it fits now", now=now)
        else:
            instance.message = verdict.why
            note(session, instance, reason=REASON, message=verdict.why, now=now)
    return admitted


async def positions(conn: AsyncSession | AsyncConnection, ids: Iterable[str] | None = None) -> dict[str, int]:
    """Queue positions (1 = next) of the instances waiting for admission (of ``ids``, when given)."""
    rows = (await conn.execute(
        select(Instance.id).where(Instance.status == Status.QUEUED, Instance.handle.is_(None))
        .order_by(Instance.priority.desc(), Instance.created_at, Instance.id).limit(MAX_CONSIDERED))).scalars()
    ranked = {iid: n for n, iid in enumerate(rows, start=1)}
    if ids is None:
        return ranked
    return {i: ranked[i] for i in ids if i in ranked}


async def priority_of(session: AsyncSession, user: User) -> int:
    """The highest priority of ``user``'s groups (0 without any)."""
    groups = (await quotas.groups_of(session, [user.id]))[user.id]
    return max((g.priority for g in groups), default=0)


def describe(message: str, position: int | None) -> str:
    """A queued instance's message with its place: "waiting for 2 GPUs: 1 free ... — you are 2nd"."""
    if position is None:
        return message
    return f"{message}; you are {ordinal(position)} in the queue"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
