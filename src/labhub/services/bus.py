"""Wake-ups for event streams: "instance X of owner Y has new events".

The events themselves are rows (the database is the only state, whichever
replica wrote them); a signal only tells a waiting Server-Sent Events stream
to read the rows after the last one it sent.  Signals come from this
replica's commits and from other replicas' notifications alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

Key = tuple[str, object]  # ("instance", id) | ("owner", user id) | ("all", None)


class Subscription:
    """What one stream waits on; a signal that comes while it reads is not lost."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 (a bounded wait is the point)
        """True when signalled (and re-armed), False after ``timeout`` s of quiet."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        fired = self._event.is_set()
        self._event.clear()
        return fired


class EventBus:
    """Fans signals out to the subscriptions of an instance, of an owner, or of everything."""

    def __init__(self) -> None:
        self._subs: dict[Key, set[Subscription]] = defaultdict(set)

    def publish(self, instance_id: str, owner_id: int) -> None:
        for key in (("instance", instance_id), ("owner", owner_id), ("all", None)):
            for sub in self._subs.get(key, ()):
                sub.set()

    def publish_all(self) -> None:
        """Everybody looks again (after this replica may have missed notifications)."""
        for subs in self._subs.values():
            for sub in subs:
                sub.set()

    @asynccontextmanager
    async def subscribe(self, *, instance_id: str | None = None,
                        owner_id: int | None = None) -> AsyncIterator[Subscription]:
        """Signals for one instance, one owner's instances, or (neither given) all instances."""
        key: Key = ("instance", instance_id) if instance_id is not None else (
            ("owner", owner_id) if owner_id is not None else ("all", None))
        sub = Subscription()
        self._subs[key].add(sub)
        try:
            yield sub
        finally:
            self._subs[key].discard(sub)
            if not self._subs[key]:
                del self._subs[key]
