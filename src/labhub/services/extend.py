"""Extending an instance: more time before it expires, within its template's maximum.

An instance's duration is ``hours``, measured from its admission (``admitted_at``, the moment the
admission queue let it through; ``created_at`` for instances older than the queue): ``expires_at`` is
that plus ``hours``; the launch (or admission) sets both, an extension moves both.  The maximum (its
template's ``hours.max``, or its owner's group policy's ``max_hours``) caps that total, launch and
extensions together: an instance launched for 4 h of a template's 24 h may be extended by 20 h more,
in one step or several.  Time spent in the admission queue does not count; time spent starting does.

Who may extend: the owner and admins (as anything else done to one instance).  What may
be extended: an instance that has not ended and is not stopping.  On a backend that fixes
a job's time limit when it submits it (Slurm's ``--time``), a submitted instance cannot be
extended: the scheduler would end it at the old limit whatever the hub says.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.catalog import Catalog, Template
from labhub.models import TERMINAL, AuditEvent, Instance, Status, User
from labhub.services import policy, quotas
from labhub.services.errors import Conflict, Invalid
from labhub.services.instances import get_instance
from labhub.services.lifecycle import note

FIXED_TIME_LIMIT = frozenset({"slurm"})  # backends whose jobs keep the time limit they were submitted with
EXTENDABLE = frozenset({Status.REQUESTED, Status.QUEUED, Status.STARTING, Status.RUNNING, Status.UNKNOWN,
                        Status.SLEEPING})  # active and not stopping
EPSILON = 1e-9  # hours: 4 + 20 is 24 whatever the floating point says
ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Room:
    """How much longer an instance may get: ``left`` hours more, of ``max_hours`` in all."""

    hours: float  # its duration so far (launch and extensions)
    max_hours: float
    why_not: str = ""  # why it cannot be extended at all (ended, stopping, a fixed time limit, ...)

    @property
    def left(self) -> float:
        return 0.0 if self.why_not else max(0.0, self.max_hours - self.hours)


def room(instance: Instance, template: Template | None, max_hours: float | None = None) -> Room:
    """What :func:`extend` would allow for ``instance`` now (pure); ``max_hours``: its owner's policy's maximum,
    instead of the template's."""
    if max_hours is None:
        max_hours = template.hours.max if template is not None else instance.hours
    if instance.status not in EXTENDABLE:
        why = "it is stopping" if instance.status == Status.STOPPING else "it has ended"
    elif template is None:
        why = f"its template {instance.template!r} no longer exists (its maximum is not known)"
    elif instance.backend in FIXED_TIME_LIMIT and instance.handle is not None:
        why = f"the {instance.backend} backend keeps the time limit it was submitted with ({instance.hours:g} h)"
    else:
        why = ""
    return Room(hours=instance.hours, max_hours=max_hours, why_not=why)


def expires_soon(instance: Instance, *, now: dt.datetime, warning_minutes: float) -> bool:
    """Whether the instance is active and expires within the warning window (``warning_minutes``; 0: never)."""
    if warning_minutes <= 0 or instance.status == Status.STOPPING or instance.status in TERMINAL:
        return False
    return instance.expires_at - now <= dt.timedelta(minutes=warning_minutes)


def describe_room(r: Room, template_title: str) -> str:
    """``at most 20 h more (… runs at most 24 h in all; it has 4 h)`` and the like, for people."""
    if r.why_not:
        return f"it cannot be extended: {r.why_not}"
    if r.left <= EPSILON:
        return f"it cannot be extended: it already has the maximum, {r.max_hours:g} h ({template_title})"
    return f"at most {r.left:g} h more ({template_title} runs at most {r.max_hours:g} h in all; it has {r.hours:g} h)"


async def max_hours_of(session: AsyncSession, instance: Instance, template: Template | None) -> float | None:
    """The longest ``instance`` may run in all under its owner's group policy (None: the template's)."""
    if template is None:
        return None
    groups = (await quotas.groups_of(session, [instance.owner_id]))[instance.owner_id]
    return policy.of_groups(groups).hours(template.hours.default, template.hours.max)[1]


async def extend(session: AsyncSession, *, user: User, catalog: Catalog, instance_id: str, hours: float,
                 now: dt.datetime) -> Instance:
    """Give ``instance_id`` ``hours`` more before it expires; the instance as it now is.

    Raises NotFound/Forbidden (not the caller's, and the caller no admin), Conflict (409:
    ended, stopping, a fixed time limit, its template gone), Invalid (422, field ``hours``:
    not more than 0, or beyond the maximum; the message says the most it can still get).
    Records an event (``extended``) and an audit row; the expiry warning is due again for
    the new expiry.  The write is a compare-and-set on the duration and status it read, so
    two extensions at once cannot together pass the maximum.
    """
    inst = await get_instance(session, user=user, instance_id=instance_id)
    most = await max_hours_of(session, inst, catalog.get(inst.template))
    for _ in range(ATTEMPTS):
        tpl = catalog.get(inst.template)
        r = room(inst, tpl, most)
        title = tpl.title if tpl is not None else inst.template
        if r.why_not:
            raise Conflict(f"{inst.name} {describe_room(r, title).removeprefix('it ')}", fields={"status": inst.status})
        if not math.isfinite(hours) or hours <= 0:
            raise Invalid("invalid extension", fields={"hours": f"must be more than 0; {describe_room(r, title)}"})
        if hours > r.left + EPSILON:
            raise Invalid("beyond the maximum", fields={"hours": describe_room(r, title)})
        total = min(r.max_hours, inst.hours + hours)
        expires = (inst.admitted_at or inst.created_at) + dt.timedelta(hours=total)
        done = await session.execute(
            update(Instance).where(Instance.id == inst.id, Instance.status == inst.status, Instance.hours == inst.hours)
            .values(hours=total, expires_at=expires, expiry_warned_at=None)
            .execution_options(synchronize_session=False))
        await session.refresh(inst)  # what it is now: extended, or as someone else changed it meanwhile
        if done.rowcount == 1:
            break
    else:
        raise Conflict("the instance keeps changing; try again")
    by = "" if user.id == inst.owner_id else f" by admin {user.name}"
    note(session, inst, reason="extended", now=now,
         message=f"extended{by} by {hours:g} h, to {total:g} h in all (at most {r.max_hours:g} h); "
                 f"it now expires at {expires:%Y-%m-%d %H:%M} UTC")
    session.add(AuditEvent(at=now, actor=user.name, action="instance.extend",
                           target=f"{inst.owner.name}/{inst.name}",
                           detail={"instance": inst.id, "hours": hours, "total_hours": total,
                                   "expires_at": expires.isoformat()}))
    return inst
