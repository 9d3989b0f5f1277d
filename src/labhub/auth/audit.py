"""The audit log: one row per security decision (who did what to whom, from where).

Every approval, rejection, role change, token issued or revoked, failed or
refused login is recorded with :func:`record` in the same transaction as the
change it describes, so a change and its record commit (or fail) together.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.models import AuditEvent, User

ANONYMOUS = "-"


def actor_name(actor: User | str | None) -> str:
    if actor is None:
        return ANONYMOUS
    return actor if isinstance(actor, str) else actor.name


def record(session: AsyncSession, *, actor: User | str | None, action: str, target: str = "", address: str = "",
           **detail: Any) -> AuditEvent:
    """Add an audit event to ``session`` (committed with the caller's transaction)."""
    event = AuditEvent(actor=actor_name(actor)[:63], action=action[:64], target=target[:255],
                       address=address[:64], detail=detail)
    session.add(event)
    return event


@dataclass
class AuditPage:
    events: list[AuditEvent]
    total: int
    next_before: int | None  # pass as ``before`` for the next (older) page


async def search(session: AsyncSession, *, actor: str | None = None, action: str | None = None,
                 target: str | None = None, before: int | None = None, limit: int = 100) -> AuditPage:
    """Newest first; ``action`` matches a prefix (``user.`` gives every user decision)."""
    limit = max(1, min(limit, 1000))
    filters = []
    if actor:
        filters.append(AuditEvent.actor == actor)
    if action:
        filters.append(AuditEvent.action.startswith(action, autoescape=True))
    if target:
        filters.append(AuditEvent.target == target)
    query = select(AuditEvent).where(*filters)
    if before is not None:
        query = query.where(AuditEvent.id < before)
    rows = list((await session.execute(query.order_by(AuditEvent.id.desc()).limit(limit + 1))).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    total = (await session.execute(select(func.count()).select_from(AuditEvent).where(*filters))).scalar_one()
    return AuditPage(events=rows, total=total, next_before=rows[-1].id if more and rows else None)


def describe(event: AuditEvent) -> dict[str, Any]:
    at: dt.datetime = event.at
    return {"id": event.id, "at": at.isoformat(), "actor": event.actor, "action": event.action,
            "target": event.target, "address": event.address, "detail": event.detail or {}}
