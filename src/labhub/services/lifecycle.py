"""The one place an instance's status changes.

:func:`transition` checks the allowed-transition table, records an
:class:`~labhub.models.Event` with a reason code and a human-readable message,
and queues the event for live subscribers (published after commit by
:func:`labhub.hub.Hub.tx`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from labhub.models import TERMINAL, Event, Instance, Status, utcnow

log = logging.getLogger(__name__)

S = Status
ALLOWED: dict[Status, frozenset[Status]] = {
    S.REQUESTED: frozenset({S.QUEUED, S.STARTING, S.FAILED, S.STOPPING, S.STOPPED, S.EXPIRED}),
    S.QUEUED: frozenset({S.STARTING, S.RUNNING, S.FAILED, S.STOPPING, S.UNKNOWN, S.SUCCEEDED}),
    S.STARTING: frozenset({S.QUEUED, S.RUNNING, S.FAILED, S.STOPPING, S.UNKNOWN, S.SUCCEEDED}),
    S.RUNNING: frozenset({S.STOPPING, S.STOPPED, S.FAILED, S.SUCCEEDED, S.UNKNOWN}),
    S.UNKNOWN: frozenset({S.QUEUED, S.STARTING, S.RUNNING, S.FAILED, S.SUCCEEDED, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED, S.EXPIRED, S.FAILED, S.SUCCEEDED}),
    S.STOPPED: frozenset(),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
}

# Why an instance is being stopped -> the status it ends in.
FINAL_FOR_STOP_REASON = {"expired": S.EXPIRED}


class InvalidTransition(Exception):
    pass


def can_transition(current: str, to: Status) -> bool:
    return to in ALLOWED[Status(current)]


def transition(
    session: AsyncSession,
    instance: Instance,
    to: Status,
    *,
    reason: str,
    message: str,
    now: dt.datetime | None = None,
) -> Event:
    """Move ``instance`` to ``to``, recording why.  Raises :class:`InvalidTransition`."""
    current = Status(instance.status)
    if to not in ALLOWED[current]:
        raise InvalidTransition(f"{instance.id}: {current} -> {to} is not allowed")
    now = now or utcnow()
    instance.status = to
    instance.reason = reason
    instance.message = message
    if to == S.RUNNING and instance.started_at is None:
        instance.started_at = now
    if to in TERMINAL:
        instance.active_name = None
        instance.ended_at = now
    event = Event(instance_id=instance.id, at=now, status=to, reason=reason, message=message)
    session.add(event)
    record_event(session, event, owner_id=instance.owner_id)
    log.info("instance %s %s -> %s (%s): %s", instance.id, current, to, reason, message.splitlines()[0] if message else "")
    return event


def note(session: AsyncSession, instance: Instance, *, reason: str, message: str, now: dt.datetime | None = None) -> Event:
    """Record an event without changing the status (e.g. "waiting: Resources")."""
    event = Event(instance_id=instance.id, at=now or utcnow(), status=instance.status, reason=reason, message=message)
    session.add(event)
    record_event(session, event, owner_id=instance.owner_id)
    return event


def record_event(session: AsyncSession, event: Event, *, owner_id: int) -> None:
    session.info.setdefault("labhub_events", []).append((event, owner_id))


def event_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "instance_id": event.instance_id,
        "at": event.at.isoformat(),
        "status": event.status,
        "reason": event.reason,
        "message": event.message,
    }
