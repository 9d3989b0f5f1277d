"""In-process publish/subscribe of instance events, for Server-Sent Events."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class EventBus:
    """Fan out event dicts to subscribers of an instance, or of all instances.

    Each subscriber has a bounded queue; a subscriber that falls behind loses
    its oldest events rather than slowing publishers (it can re-read the
    database, which is the source of truth).
    """

    def __init__(self, maxsize: int = 1000) -> None:
        self._subs: dict[str | None, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._maxsize = maxsize

    def publish(self, event: dict[str, Any]) -> None:
        for key in (event.get("instance_id"), None):
            for queue in self._subs.get(key, ()):
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, instance_id: str | None = None) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subs[instance_id].add(queue)
        try:
            yield queue
        finally:
            self._subs[instance_id].discard(queue)
            if not self._subs[instance_id]:
                del self._subs[instance_id]
