"""The one place an instance's status changes.

:func:`transition` checks the allowed-transition table, records an
:class:`~labhub.models.Event` with a reason code and a human-readable message,
and queues the event for live subscribers (published after commit by
:func:`labhub.hub.Hub.tx`).  Every message stored here, by :func:`transition`
or :func:`note`, goes through :func:`bound_message` first: a message may carry
an instance's last log lines, and those are whatever the instance printed.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from labhub.models import TERMINAL, Event, Instance, Status, utcnow
from labhub.services import changes

log = logging.getLogger(__name__)

S = Status
ALLOWED: dict[Status, frozenset[Status]] = {
    S.REQUESTED: frozenset({S.QUEUED, S.STARTING, S.FAILED, S.STOPPING, S.STOPPED, S.EXPIRED}),
    S.QUEUED: frozenset({S.REQUESTED, S.STARTING, S.RUNNING, S.FAILED, S.STOPPING, S.UNKNOWN, S.SUCCEEDED}),
    S.STARTING: frozenset({S.QUEUED, S.RUNNING, S.FAILED, S.STOPPING, S.UNKNOWN, S.SUCCEEDED}),
    S.RUNNING: frozenset({S.STOPPING, S.STOPPED, S.FAILED, S.SUCCEEDED, S.UNKNOWN}),
    S.UNKNOWN: frozenset({S.QUEUED, S.STARTING, S.RUNNING, S.FAILED, S.SUCCEEDED, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED, S.EXPIRED, S.FAILED, S.SUCCEEDED, S.SLEEPING}),
    S.SLEEPING: frozenset({S.REQUESTED, S.STOPPING}),  # woken by a request; stopped, deleted or expired
    S.STOPPED: frozenset(),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
}

# Stored messages (the instance's and each event's) are at most this many bytes of UTF-8, so
# that listing instances or events stays small whatever an instance writes to its log.
MESSAGE_LIMIT = 8 * 1024
MESSAGE_HEAD_LIMIT = 1024  # of those, for what happened (before LOG_MARKER) when it must be cut
LOG_MARKER = "\n--- last log lines ---\n"  # what labhub.services.views.LOG_MARKER splits off for display
MESSAGE_CUT = "[… earlier output cut]\n"  # where the start of a message's log lines was left out

# Why an instance is being stopped -> the status it ends in.
FINAL_FOR_STOP_REASON = {"expired": S.EXPIRED, "scale_to_zero": S.SLEEPING}


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
    message = bound_message(message)
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
    log.info("instance %s %s -> %s (%s): %s", instance.id, current, to, reason,
             message.splitlines()[0] if message else "")
    return event


def note(session: AsyncSession, instance: Instance, *, reason: str, message: str,
         now: dt.datetime | None = None) -> Event:
    """Record an event without changing the status (e.g. "waiting: Resources")."""
    event = Event(instance_id=instance.id, at=now or utcnow(), status=instance.status, reason=reason,
                  message=bound_message(message))
    session.add(event)
    record_event(session, event, owner_id=instance.owner_id)
    return event


def bound_message(message: str, *, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` as it is stored: at most ``limit`` bytes of valid UTF-8, without NUL characters.

    A longer message keeps its end, after :data:`MESSAGE_CUT`.  One with log
    lines (after :data:`LOG_MARKER`) keeps what happened (its first
    :data:`MESSAGE_HEAD_LIMIT` bytes) and the marker, and the end of the lines.
    Copies at most a few times ``limit`` bytes, however long ``message`` is.
    """
    if len(message) <= limit and len(raw := _utf8(message)) <= limit:
        return raw.decode()
    head, start = "", 0
    at = message.find(LOG_MARKER)
    if at >= 0:
        head_limit = min(MESSAGE_HEAD_LIMIT, limit // 4)
        raw = _utf8(message[: min(at, head_limit + 1)])
        head = raw.decode() if len(raw) <= head_limit else raw[: head_limit - 3].decode(errors="ignore") + "…"
        head += LOG_MARKER
        start = at + len(LOG_MARKER)
    room = limit - len(head.encode())
    keep = max(start, len(message) - room)  # a character is at least a byte: enough characters for the room
    raw = _utf8(message[keep:])
    if keep == start and len(raw) <= room:
        return head + raw.decode()
    room -= len(MESSAGE_CUT.encode())
    return head + MESSAGE_CUT + raw[max(0, len(raw) - room) :].decode(errors="ignore")


def _utf8(text: str) -> bytes:
    # NUL is valid UTF-8 but PostgreSQL's text refuses it; lone surrogates are not UTF-8 at all.
    return text.replace("\x00", "").encode(errors="replace")


def record_event(session: AsyncSession, event: Event, *, owner_id: int) -> None:
    """The instance changed: announced after commit (event streams, routes, the reconciler)."""
    changes.instance(session, event.instance_id, owner_id)


def event_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "instance_id": event.instance_id,
        "at": event.at.isoformat(),
        "status": event.status,
        "reason": event.reason,
        "message": event.message,
    }
