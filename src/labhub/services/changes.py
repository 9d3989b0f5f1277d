"""What a transaction changed, recorded in the session and announced after commit.

Services do not call the reconciler, the proxy or the event streams: they
record here what they changed (an instance moved, a user's credentials or
role changed, an account deletion is pending).  The hub reads the record when
the transaction commits, acts on it in this replica and sends it to the other
replicas (PostgreSQL ``NOTIFY``, inside the same transaction, so a change is
announced exactly when it is visible).  A rolled-back transaction announces
nothing.

The wire form is small JSON (PostgreSQL caps a notification at 8,000 bytes):
:func:`encode` splits a large change into several messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

KEY = "labhub_changes"
MAX_IDS_PER_MESSAGE = 100  # 100 instance ids of 32 characters and their owners: well under 8,000 bytes


@dataclass(slots=True)
class Changes:
    """One transaction's changes.

    ``instances`` maps instance id to owner id.  ``wake``: the reconciler
    should look at those instances (a launch or stop request); false for the
    reconciler's own moves, which only update routes and event streams.
    ``users``: users whose cached principals must go; ``everyone``: every
    cached principal must go (a role change, a new approval).  ``memberships``:
    a group's members changed, so instances shared with groups have new audiences.
    """

    instances: dict[str, int] = field(default_factory=dict)
    wake: bool = False
    users: set[int] = field(default_factory=set)
    everyone: bool = False
    deletions: bool = False
    memberships: bool = False

    def __bool__(self) -> bool:
        return bool(self.instances or self.users or self.everyone or self.deletions or self.memberships)


def _of(session: AsyncSession) -> Changes:
    changes = session.info.get(KEY)
    if changes is None:
        changes = session.info[KEY] = Changes()
    return changes


def quiet(session: AsyncSession) -> None:
    """Mark the session's instance changes as the reconciler's own (nobody needs waking)."""
    session.info["labhub_quiet"] = True


def instance(session: AsyncSession, instance_id: str, owner_id: int) -> None:
    """``instance_id`` changed (status, address, handle) in this transaction."""
    changes = _of(session)
    changes.instances[instance_id] = owner_id
    if not session.info.get("labhub_quiet"):
        changes.wake = True


def credentials(session: AsyncSession, user_id: int | None = None) -> None:
    """A user's status, role or credentials changed (None: anybody's may have)."""
    changes = _of(session)
    if user_id is None:
        changes.everyone = True
    else:
        changes.users.add(user_id)


def deletion(session: AsyncSession) -> None:
    """An account deletion was asked for (the reconciler drives it)."""
    _of(session).deletions = True


def memberships(session: AsyncSession) -> None:
    """Who is in a group changed (a member added or removed, a group deleted)."""
    _of(session).memberships = True


def take(session: AsyncSession) -> Changes | None:
    """Remove and return the session's record (after commit or rollback)."""
    session.info.pop("labhub_quiet", None)
    changes = session.info.pop(KEY, None)
    return changes if changes else None


def encode(changes: Changes, replica: str) -> list[str]:
    """``changes`` as one or more notification payloads, each naming the sending replica."""
    items = list(changes.instances.items())
    chunks = [items[i:i + MAX_IDS_PER_MESSAGE] for i in range(0, len(items), MAX_IDS_PER_MESSAGE)] or [[]]
    users = sorted(changes.users)
    messages = []
    for n, chunk in enumerate(chunks):
        body: dict[str, Any] = {"r": replica, "i": dict(chunk)}
        if changes.wake:
            body["w"] = 1
        if n == 0:
            if users:
                body["u"] = users[:MAX_IDS_PER_MESSAGE]
            if changes.everyone or len(users) > MAX_IDS_PER_MESSAGE:
                body["e"] = 1
            if changes.deletions:
                body["d"] = 1
            if changes.memberships:
                body["g"] = 1
        messages.append(json.dumps(body, separators=(",", ":")))
    return messages


def decode(payload: str) -> tuple[str, Changes] | None:
    """The sending replica and its changes, or None for a payload that is not ours."""
    try:
        body = json.loads(payload)
        replica = str(body["r"])
        instances = {str(k): int(v) for k, v in dict(body.get("i", {})).items()}
        users = {int(u) for u in body.get("u", [])}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return replica, Changes(instances=instances, wake=bool(body.get("w")), users=users,
                            everyone=bool(body.get("e")), deletions=bool(body.get("d")),
                            memberships=bool(body.get("g")))
